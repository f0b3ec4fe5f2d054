"""Decode -> detect -> align for one image, and the resumable ``labeler detect`` step.

Speed comes from decoding no larger than needed: detection runs on a JPEG decoded at a
reduced DCT scale (longest side >= ``detect_side``, 512 by default; BlazeFace looks at
128-192 px anyway), and each crop is warped from that same decode when the face's eye
distance there is at least the crop's (74 px in a 256 crop). Only images whose faces are too
small for that are decoded again, at the scale the smallest face needs.

Small faces in big photos: when an image is at least ``SCENE_MIN_SIDE`` (768) px and the
whole-frame passes found no face of at least ``BIG_FACE_FRACTION`` (1/5) of its short side,
a detector that has ``detect_small_faces`` (MediaPipe: tiled short-range passes) also runs
on a decode of about ``SCENE_SIDE`` (1024) px. ``min_size`` is in original pixels.

The workspace step is resumable and incremental. ``detect_log.parquet`` holds one row per
processed image (``n_faces`` may be 0, ``error`` says why an image failed to decode), so
images with no face are recorded and never re-run. Both tables are rewritten atomically
every ``chunk_size`` images, faces first: a crash (even ``kill -9``) loses at most the chunk
in flight, and faces of images missing from the log (a crash between the two writes) are
dropped and redone on the next run. ``faces.parquet`` rows are sorted by the image's
position in ``images.parquet`` and then ``face_index``, whatever the worker count or chunk
size.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labeler._io import remove_stale_temps
from labeler.detect import (
    DEFAULT_DETECTOR,
    MIN_FACE_SIDE,
    Detection,
    Detector,
    finalize,
    get_detector,
    looks_like_face_crop,
    whole_image_detection,
)
from labeler.detect.upright import detect_rotated
from labeler.errors import InputError, NotFoundError
from labeler.faces.align import CROP_EYE_DISTANCE, align_face
from labeler.faces.records import FaceCrops, FaceQueue
from labeler.faces.regions import CROP_SIZE
from labeler.imageio import (
    DecodedImage,
    ImageDecodeError,
    decode_crop_bytes,
    decode_image,
    encode_jpeg,
    load_rgb,
    write_bytes,
)
from labeler.workspace import (
    FACES_SCHEMA,
    Workspace,
    empty_table,
    face_id_for,
    iter_batches,
    write_table,
)

log = logging.getLogger(__name__)

#: Detection decodes JPEGs at the cheapest DCT scale keeping the longest side >= this.
DETECT_SIDE = 512
#: Images at least this large (original px) with no big face found get a small-face pass
#: (tiled detection) on a decode of about ``SCENE_SIDE`` px.
SCENE_MIN_SIDE = 768
SCENE_SIDE = 1024
#: A face whose box side is at least this fraction of the image's short side is "big".
BIG_FACE_FRACTION = 0.2
JPEG_QUALITY = 92

DETECT_LOG_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("n_faces", pa.int32()),  # 0: no face found (and no whole-image fallback)
        ("whole_image", pa.bool_()),  # the whole image stood in as the face
        ("error", pa.string()),  # one-line reason when the image could not be decoded
        ("note", pa.string()),  # why a decoded image gave no face to label (too small)
    ]
)


# --- one image -------------------------------------------------------------------------------


def _detection_input(dec: DecodedImage, detect_side: int) -> tuple[np.ndarray, float]:
    """The decode, shrunk when it is over twice ``detect_side`` (big non-JPEG files)."""
    rgb = dec.rgb
    long_side = max(rgb.shape[:2])
    if long_side <= 2 * detect_side:
        return rgb, 1.0
    import cv2

    f = detect_side / long_side
    size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return small, rgb.shape[1] / size[0]


def _decoded(
    source: str | os.PathLike[str] | np.ndarray,
    detect_side: int,
    dec: DecodedImage | None = None,
) -> tuple[Path | None, DecodedImage]:
    """(path or None, the decoded image) of a path (decoded at ``detect_side``, JPEG
    DCT-scaled, unless ``dec`` is already given) or an ``(H, W, 3)`` uint8 RGB array."""
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB array, got {source.shape} {source.dtype}"
            )
        h, w = source.shape[:2]
        return None, DecodedImage(source, (1.0, 1.0), w, h, "array")
    path = Path(source)
    return path, dec or decode_image(path, min_side=detect_side)


def detect_and_align(
    source: str | os.PathLike[str] | np.ndarray,
    detector: Detector,
    *,
    size: int = CROP_SIZE,
    detect_side: int = DETECT_SIDE,
    fallback: bool = True,
    min_size: float = 0.0,
    small_faces: bool = True,
    rotate: bool = True,
) -> list[tuple[Detection, np.ndarray]]:
    """Detect faces in one image and align each to a ``(size, size, 3)`` uint8 crop.

    ``source``: an image path or an ``(H, W, 3)`` uint8 RGB array. Detections come back in
    original-image pixels, left to right. With ``fallback`` and no face found, an image that
    :func:`labeler.detect.looks_like_face_crop` is returned whole as one face
    (``whole_image=True``, template landmarks). With ``rotate``, photos stored sideways or
    upside down are searched turned too (``Detection.rotation``; crops come out upright).
    Raises ``ImageDecodeError`` for undecodable
    files.

    >>> pairs = detect_and_align("photo.jpg", get_detector("mediapipe"))  # doctest: +SKIP
    >>> [(d.box, crop.shape) for d, crop in pairs]  # doctest: +SKIP
    """
    path, dec = _decoded(source, detect_side)
    return _align_from(
        path,
        dec,
        detector,
        size=size,
        detect_side=detect_side,
        fallback=fallback,
        min_size=min_size,
        small_faces=small_faces,
        rotate=rotate,
    )


# --- the workspace step ----------------------------------------------------------------------


class DetectEngine(Protocol):
    """Processes one chunk of ``(image_id, path)`` for :func:`detect_workspace`.

    Returns one :class:`ImageOutcome` per item, in item order, with the crops written.
    ``cpu(item)`` submits an item to the step's thread pool (the plain CPU path) and returns
    its future: an engine hands over whatever it cannot handle itself.
    """

    def __call__(
        self,
        ws: Workspace,
        items: list[tuple[str, Path]],
        cfg: DetectConfig,
        cpu: Callable[[tuple[str, Path]], Future[ImageOutcome]],
    ) -> list[ImageOutcome]: ...


@dataclass(frozen=True)
class DetectConfig:
    """The resolved options of a ``labeler detect`` run (saved as ``steps/detect.json``)."""

    detector: str = DEFAULT_DETECTOR
    min_size: float = 20.0
    score_threshold: float = 0.5
    detect_side: int = DETECT_SIDE
    crop_size: int = CROP_SIZE
    jpeg_quality: int = JPEG_QUALITY
    fallback: bool = True
    small_faces: bool = True
    rotate: bool = True
    detector_options: dict[str, object] = field(default_factory=dict)

    def build_detector(self) -> Detector:
        # min_size is applied by the pipeline in original pixels, not by the detector
        opts: dict[str, object] = dict(self.detector_options)
        if self.detector != "none":
            opts.setdefault("score_threshold", self.score_threshold)
        return get_detector(self.detector, **opts)

    def same_faces_as(self, other: dict[str, object]) -> bool:
        mine = asdict(self)
        return all(mine[k] == other.get(k) for k in mine)


@dataclass(frozen=True)
class DetectResult:
    """What a ``labeler detect`` run did. Times are per processed image, one worker's view."""

    processed: int  # images detected in this run
    skipped_done: int  # images already in detect_log from earlier runs
    faces: int  # faces found in this run (whole-image fallbacks included)
    no_face: int  # processed images with no face and no fallback (too_small included)
    whole_image: int  # processed images where the whole image stood in as the face
    errors: int  # images that failed to decode
    total_faces: int  # rows of faces.parquet after the run
    seconds: float
    decode_ms: float  # mean per processed image
    detect_ms: float  # mean per processed image (detector + crop warp + JPEG write)
    config: DetectConfig
    too_small: int = 0  # images too small to stand in whole for a face (detect_log.note)
    stale_temps: int = 0  # temporary files of killed runs removed before this one


def default_workers() -> int:
    """Detect threads when none are asked for: ``min(4, cpu count)``."""
    return min(4, os.cpu_count() or 1)


def default_chunk_size(n_images: int) -> int:
    """Images per commit: small on small folders (later steps can start early), at most ~100
    commits on big ones (each commit rewrites faces.parquet: a fixed chunk would cost
    O(N^2) at a million images)."""
    return max(32, min(n_images // 8, max(500, n_images // 100)))


def detect_log_path(ws: Workspace) -> Path:
    return ws.root / "detect_log.parquet"


def read_detect_log(ws: Workspace) -> pd.DataFrame:
    """One row per image ``labeler detect`` has processed (``DETECT_LOG_SCHEMA``)."""
    path = detect_log_path(ws)
    if not path.exists():
        return empty_table(DETECT_LOG_SCHEMA)
    return pq.read_table(path, schema=DETECT_LOG_SCHEMA).to_pandas()


@dataclass
class ImageOutcome:
    """What detection did with one image: its ``faces.parquet`` rows (crops written)."""

    image_id: str
    rows: list[dict[str, object]]
    whole_image: bool
    error: str | None
    decode_s: float
    detect_s: float
    note: str | None = None  # why a decoded image gave no face (too small to stand in whole)


@dataclass(frozen=True, eq=False)
class FaceCut:
    """One face of a photo as the stream carries it: the detection (original pixels), the
    aligned crop's JPEG bytes (what the workspace stores) and, when asked, its box crop's;
    ``aligned``/``box``: those crops as stored (decoded from the bytes), or the raw warp
    when not asked for (``stored=False``)."""

    detection: Detection
    aligned_jpeg: bytes
    aligned: np.ndarray
    box_jpeg: bytes | None = None
    box: np.ndarray | None = None


def cut_faces(
    source: Path | np.ndarray,
    detector: Detector,
    cfg: DetectConfig,
    *,
    box: bool | None = None,
    stored: bool = True,
    dec: DecodedImage | None = None,
) -> list[FaceCut]:
    """Decode -> detect (upright check included) -> align -> crops, for one photo: the one
    path of ``labeler run``, ``labeler detect``, ``labeler predict`` and the app's Try it.

    ``source``: a path (decoded at ``cfg.detect_side``, JPEG DCT-scaled) or an ``(H, W, 3)``
    uint8 RGB array. ``box``: True cuts every face's box crop (a larger decode when this one
    is too small for it), None only when this decode is the one the box-crop step would
    make (:mod:`labeler.faces.boxcrops`), False never. ``stored``: the crops come back as the
    workspace stores them (JPEG at ``cfg.jpeg_quality``, decoded again in memory), so
    features computed from them equal those from the crop files. Raises ``ImageDecodeError``.
    """
    from labeler.faces.boxcrops import JPEG_QUALITY, MIN_DECODE_SIDE, box_crops_from, needed_side

    path, dec = _decoded(source, cfg.detect_side, dec)
    pairs = _align_from(
        path,
        dec,
        detector,
        size=cfg.crop_size,
        detect_side=cfg.detect_side,
        fallback=cfg.fallback,
        min_size=cfg.min_size,
        small_faces=cfg.small_faces,
        rotate=cfg.rotate,
    )
    if not pairs:
        return []
    dets = [d for d, _ in pairs]
    boxes: list[np.ndarray] | None = None
    if box is not False:
        rects = [(d.x0, d.y0, d.x1, d.y1) for d in dets]
        side = needed_side(dec.width, dec.height, rects, CROP_SIZE)
        src: DecodedImage | None = None
        if path is None or (cfg.detect_side == MIN_DECODE_SIDE and side == MIN_DECODE_SIDE):
            src = dec
        elif box:
            src = decode_image(path, min_side=side)
        if src is not None:
            boxes = box_crops_from(src.rgb, src.scale, rects, [d.landmarks for d in dets])
    out = []
    for i, (d, crop) in enumerate(pairs):
        data = encode_jpeg(crop, quality=cfg.jpeg_quality)
        bdata = encode_jpeg(boxes[i], quality=JPEG_QUALITY) if boxes is not None else None
        out.append(
            FaceCut(
                d,
                data,
                decode_crop_bytes(data) if stored else crop,
                bdata,
                None
                if boxes is None
                else decode_crop_bytes(bdata)
                if stored and bdata is not None
                else boxes[i],
            )
        )
    return out


def _fenced_items(
    ws: Workspace, roots: list[Path], todo: list
) -> tuple[list[tuple[str, Path]], list[ImageOutcome]]:
    """The (image_id, path) work items of ``todo`` (images.parquet rows), and an error outcome
    for each photo the folder's fence (:mod:`labeler.fence`) refuses now: a link swapped in
    after ingest that leads out of the folder, a device or a FIFO is never opened. Costs an
    ``lstat`` and a ``stat`` per photo; the path as ingested is kept (messages name it)."""
    from labeler.fence import Fence, FenceError

    fences = {i: Fence(root, follow_links=ws.follows_links(i)) for i, root in enumerate(roots)}
    items, refused = [], []
    for r in todo:
        i = int(r.root)
        try:
            fences[i].resolve(r.path)
        except FenceError as exc:
            refused.append(ImageOutcome(r.image_id, [], False, f"{r.path}: {exc}", 0.0, 0.0))
            continue
        except OSError:
            pass  # missing or unreadable: the decode records why
        items.append((r.image_id, roots[i] / r.path))
    return items, refused


@dataclass(frozen=True, eq=False)
class PhotoCut:
    """One photo through :func:`cut_photo`: its faces (none when ``error``), why it gave none
    when it decoded (``note``) and the seconds decode and the rest took."""

    cuts: list[FaceCut]
    error: str | None
    note: str | None
    decode_s: float
    detect_s: float


def cut_photo(
    path: Path, detector: Detector, cfg: DetectConfig, *, box: bool | None, stored: bool
) -> PhotoCut:
    """Decode one photo and :func:`cut_faces` it, an undecodable file recorded (never
    raised): the per-photo work of ``labeler run``, on a thread of this process or on a Ray
    worker (:mod:`labeler.ray_stream`)."""
    t0 = time.perf_counter()
    try:
        dec = decode_image(path, min_side=cfg.detect_side)
    except ImageDecodeError as exc:
        return PhotoCut([], str(exc), None, time.perf_counter() - t0, 0.0)
    t1 = time.perf_counter()
    try:
        cuts = cut_faces(path, detector, cfg, box=box, stored=stored, dec=dec)
    except ImageDecodeError as exc:  # the re-decode at a larger size failed
        return PhotoCut([], str(exc), None, t1 - t0, time.perf_counter() - t1)
    note = None if cuts else too_small_note(dec.width, dec.height, cfg)
    return PhotoCut(cuts, None, note, t1 - t0, time.perf_counter() - t1)


def _process_image(
    ws: Workspace,
    image_id: str,
    path: Path,
    detector: Detector,
    cfg: DetectConfig,
    sink: FaceQueue | None = None,
) -> ImageOutcome:
    """One photo of the workspace step: :func:`cut_photo`, its files written (one writer
    per crop file: this thread), the crops' pixels put on ``sink`` for the embedder."""
    need_box = sink is not None and "box" in sink.kinds
    got = cut_photo(path, detector, cfg, box=True if need_box else None, stored=sink is not None)
    if got.error is not None:
        return ImageOutcome(image_id, [], False, got.error, got.decode_s, got.detect_s)
    cuts = got.cuts
    rows = [
        store_face(ws, image_id, i, c.detection, detector.name, c.aligned_jpeg, c.box_jpeg)
        for i, c in enumerate(cuts)
    ]
    if sink is not None and cuts:
        # the crops as stored (the files' pixels, decoded from the bytes just written, not
        # read back): features equal those of `labeler embed` on the files
        sink.put(
            [
                FaceCrops(str(row["face_id"]), cut.aligned, cut.box)
                for row, cut in zip(rows, cuts, strict=True)
            ]
        )
    whole = any(c.detection.whole_image for c in cuts)
    return ImageOutcome(image_id, rows, whole, None, got.decode_s, got.detect_s, got.note)


def too_small_note(width: int, height: int, cfg: DetectConfig) -> str | None:
    """Why an image of ``width`` x ``height`` px in which no face was kept does not stand in
    whole for one (``detect_log.note``), or None when it would not have anyway."""
    whole = cfg.detector == "none" or (cfg.fallback and looks_like_face_crop(width, height))
    floor = max(MIN_FACE_SIDE, cfg.min_size) if cfg.detector == "none" else MIN_FACE_SIDE
    if not whole or min(width, height) >= floor:
        return None
    return (
        f"image is {width}x{height} px, below the smallest face side ({floor:g} px): not "
        "offered for labeling"
    )


def store_face(
    ws: Workspace,
    image_id: str,
    index: int,
    d: Detection,
    detector: str,
    aligned_jpeg: bytes,
    box_jpeg: bytes | None,
) -> dict[str, object]:
    """Write face ``index`` of ``image_id``'s crop files (one writer per file: the caller's
    thread) and return its ``faces.parquet`` row (:func:`face_row`)."""
    row = face_row(ws, image_id, index, d, detector)
    write_bytes(ws.root / str(row["crop_path"]), aligned_jpeg)
    if box_jpeg is not None:
        write_bytes(ws.box_crop_path(str(row["face_id"])), box_jpeg)
    return row


def face_row(
    ws: Workspace, image_id: str, index: int, d: Detection, detector: str
) -> dict[str, object]:
    """The ``faces.parquet`` row of face ``index`` of ``image_id`` (crop at ``ws.crop_path``)."""
    fid = face_id_for(image_id, index)
    return {
        "face_id": fid,
        "image_id": image_id,
        "face_index": index,
        "x0": d.x0,
        "y0": d.y0,
        "x1": d.x1,
        "y1": d.y1,
        "score": d.score,
        "landmarks": d.landmarks.reshape(-1).astype(np.float32).tolist(),
        "detector": detector,
        "whole_image": d.whole_image,
        "rotation": d.rotation,
        "crop_path": ws.crop_path(fid).relative_to(ws.root).as_posix(),
    }


def _has_big_face(dets: list[Detection], shape: tuple[int, ...]) -> bool:
    return any(min(d.width, d.height) >= BIG_FACE_FRACTION * min(shape[:2]) for d in dets)


def _align_from(
    path: Path | None,
    dec: DecodedImage,
    detector: Detector,
    *,
    size: int,
    detect_side: int,
    fallback: bool,
    min_size: float = 0.0,
    small_faces: bool = True,
    rotate: bool = True,
) -> list[tuple[Detection, np.ndarray]]:
    """Detect on ``dec`` (decoded from ``path``, or an array when ``path`` is None) and warp
    each face from ``dec`` or, when a face is too small there, from a larger decode.

    Detections are kept in ``dec`` pixels until the end, then mapped to original pixels.
    With ``rotate``, an image with no convincing upright face is also searched turned by 180
    or by 90/180/270 degrees (:mod:`labeler.detect.upright`); faces found so keep ``rotation``.
    """
    det_rgb, det_scale = _detection_input(dec, detect_side)
    dets = [d.scaled(det_scale, det_scale) for d in detector.detect(det_rgb)]
    larger: np.ndarray | None = None  # a second, larger decode of ``path`` when one is made
    small_pass = getattr(detector, "detect_small_faces", None)
    if (
        small_faces
        and small_pass is not None
        and max(dec.width, dec.height) >= SCENE_MIN_SIDE
        and not _has_big_face(dets, dec.rgb.shape)
    ):
        scene = dec.rgb
        want = min(SCENE_SIDE, max(dec.width, dec.height))
        if path is not None and max(dec.rgb.shape[:2]) < want:
            larger = scene = decode_image(path, min_side=want).rgb
        small, shrink = _detection_input(DecodedImage(scene, (1.0, 1.0), 0, 0, ""), SCENE_SIDE)
        fx = shrink * dec.rgb.shape[1] / scene.shape[1]
        fy = shrink * dec.rgb.shape[0] / scene.shape[0]
        dets = finalize(dets + [d.scaled(fx, fy) for d in small_pass(small)])
    sx0, sy0 = dec.scale
    dets = [d for d in dets if min(d.width * sx0, d.height * sy0) >= min_size]
    if rotate and detector.name != "none":  # sideways / upside-down photos (no EXIF turn)
        inv = 1.0 / det_scale
        turned, extra = detect_rotated(detector, det_rgb, [d.scaled(inv, inv) for d in dets])
        if any(d.rotation for d in turned):
            log.debug("%s: faces found turned by %d degrees", path, turned[0].rotation)
            dets = [
                d
                for d in (t.scaled(det_scale, det_scale) for t in turned)
                if min(d.width * sx0, d.height * sy0) >= min_size
            ]
    if not dets and fallback and looks_like_face_crop(dec.width, dec.height):
        dets = [whole_image_detection(dec.rgb.shape[1], dec.rgb.shape[0])]
    # the whole image (fallback or detector "none") is a face only when big enough for one
    dets = [
        d for d in dets if not d.whole_image or min(d.width * sx0, d.height * sy0) >= MIN_FACE_SIDE
    ]
    if not dets:
        return []
    # Warp from a larger decode only when a face is too small in this one for a sharp crop.
    src = dec.rgb
    need = max(CROP_EYE_DISTANCE * size / CROP_SIZE / max(d.eye_distance, 1e-3) for d in dets)
    if path is not None and need > 1.05 and max(dec.scale) > 1.0:
        target = min(math.ceil(max(dec.rgb.shape[:2]) * need), max(dec.width, dec.height))
        if larger is None or max(larger.shape[:2]) < target:
            larger = decode_image(path, min_side=target).rgb
        src = larger
    sx, sy = src.shape[1] / dec.rgb.shape[1], src.shape[0] / dec.rgb.shape[0]
    return [
        (d.scaled(sx0, sy0), align_face(src, d.landmarks * np.float32([sx, sy]), size=size))
        for d in dets
    ]


def _sorted_faces(faces: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    """Faces ordered by (image position in images.parquet, face_index); unknown images last."""
    if faces.empty:
        return faces.reset_index(drop=True)
    pos = faces["image_id"].map(order).fillna(len(order)).astype(np.int64)
    key = pd.DataFrame({"pos": pos, "image_id": faces["image_id"], "fi": faces["face_index"]})
    idx = key.sort_values(["pos", "image_id", "fi"], kind="stable").index
    return faces.loc[idx].reset_index(drop=True)


def _sorted_log(log_df: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    if log_df.empty:
        return log_df.reset_index(drop=True)
    pos = log_df["image_id"].map(order).fillna(len(order)).astype(np.int64)
    key = pd.DataFrame({"pos": pos, "image_id": log_df["image_id"]})
    return log_df.loc[key.sort_values(["pos", "image_id"], kind="stable").index].reset_index(
        drop=True
    )


def detect_workspace(
    ws: Workspace,
    *,
    detector: str = DEFAULT_DETECTOR,
    min_size: float = 20.0,
    score_threshold: float = 0.5,
    workers: int | None = None,
    chunk_size: int | None = None,
    detect_side: int = DETECT_SIDE,
    fallback: bool = True,
    small_faces: bool = True,
    rotate: bool = True,
    redo: bool = False,
    detector_options: dict[str, object] | None = None,
    progress: bool | None = False,
    on_chunk: Callable[[int, int], None] | None = None,
    engine: DetectEngine | None = None,
    face_sink: FaceQueue | None = None,
) -> DetectResult:
    """Detect and align the faces of every ingested image that has no detect record yet.

    Writes ``faces.parquet`` (``FACES_SCHEMA``), ``detect_log.parquet`` (one row per image,
    ``n_faces`` 0 for images without a face), crops at ``ws.crop_path(face_id)`` (256x256
    JPEG) and ``steps/detect.json``. ``workers`` threads (default ``min(4, cpu count)``)
    decode and detect, one detector per thread. ``chunk_size`` images are committed at a
    time (default :func:`default_chunk_size`); ``on_chunk(done, total)`` is called after
    each commit. ``rotate`` also searches photos with no convincing face turned by
    90/270/180 degrees (sideways phone photos; ``faces.rotation`` records the turn).
    ``redo`` forgets earlier results (and crops) and detects everything again.
    ``face_sink`` receives each face's crops as pixels, the ones written
    (:class:`labeler.faces.records.FaceQueue`: ``labeler run`` embeds them from memory). ``engine`` replaces the thread pool for whole chunks
    (:class:`DetectEngine`, e.g. the fused CUDA pass of :mod:`labeler.detect.fused`);
    commits, the log and resuming stay the same.

    >>> res = detect_workspace(Workspace.open("ws"), detector="mediapipe")  # doctest: +SKIP
    >>> res.faces, res.no_face  # doctest: +SKIP
    """
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    cfg = DetectConfig(
        detector=detector,
        min_size=float(min_size),
        score_threshold=float(score_threshold),
        detect_side=int(detect_side),
        fallback=bool(fallback),
        small_faces=bool(small_faces),
        rotate=bool(rotate),
        detector_options=dict(detector_options or {}),
    )
    cfg.build_detector()  # fail fast on an unknown name / missing package, before any work
    t_start = time.perf_counter()
    images = ws.images()
    ok = images[images["status"] == "ok"].drop_duplicates("image_id")
    order = {iid: i for i, iid in enumerate(ok["image_id"])}
    roots = ws.roots()

    # crops (and tables) a killed run was writing: temporary files of dead processes
    stale_temps = len(remove_stale_temps(ws.crops_dir, recursive=True))
    stale_temps += len(remove_stale_temps(ws.root))
    if stale_temps:
        log.info("removed %d temporary files left by killed runs in %s", stale_temps, ws.root)
    cfg_path = ws.step_config_path("detect")
    if redo:
        detect_log_path(ws).unlink(missing_ok=True)
        ws.faces_path.unlink(missing_ok=True)
        shutil.rmtree(ws.crops_dir, ignore_errors=True)
    elif cfg_path.exists() and detect_log_path(ws).exists():
        from labeler.workspace import read_json

        previous = read_json(cfg_path).get("config", {})
        if not cfg.same_faces_as(previous):
            log.warning(
                "earlier faces in %s were detected with other options (%s); only new images "
                "use the new ones. Pass --force to detect everything again.",
                ws.root,
                {k: previous.get(k) for k in ("detector", "min_size", "score_threshold")},
            )
    done_log = read_detect_log(ws)
    faces = ws.faces()
    stale = ~done_log["image_id"].isin(order)
    dirty = bool(stale.any())
    if dirty:  # images whose file changed (new image_id) or became errors/duplicates
        log.info("forgetting %d images no longer in the images table", int(stale.sum()))
        done_log = done_log[~stale]
        faces = faces[faces["image_id"].isin(order)]
    done = set(done_log["image_id"])
    orphans = ~faces["image_id"].isin(done)
    dirty = dirty or bool(orphans.any())
    if orphans.any():  # a crash between writing faces and the log: redo those images
        log.info("dropping %d faces of images missing from the detect log", int(orphans.sum()))
        faces = faces[~orphans]
    todo = [r for r in ok.itertuples(index=False) if r.image_id not in done]
    log.info("detect: %d images to process, %d already done", len(todo), len(done))
    chunk_size = chunk_size or default_chunk_size(len(ok))

    local = threading.local()
    made: list[Detector] = []
    lock = threading.Lock()

    def work(item: tuple[str, Path]) -> ImageOutcome:
        det = getattr(local, "detector", None)
        if det is None:
            det = local.detector = cfg.build_detector()
            with lock:
                made.append(det)
        return _process_image(ws, item[0], item[1], det, cfg, face_sink)

    # the photo folder's fence (labeler.fence), as ingest applied it: a photo swapped for a
    # link out of its folder (or a FIFO) after ingest is recorded as an error, never opened
    items, refused = _fenced_items(ws, roots, todo)
    start = getattr(engine, "start", None)
    if start is not None and items:  # an engine that streams the whole run (labeler.ray_stream)
        start(ws, items, cfg)

    n_workers = workers or default_workers()
    outcomes: list[ImageOutcome] = []
    bar = None
    if todo and progress is not False:
        from labeler._io import progress_bar

        bar = progress_bar(len(todo), desc="detect", enabled=progress, unit="img")
    faces_parts = [faces]
    log_parts = [done_log]
    try:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="detect") as pool:
            chunks = list(iter_batches(items, chunk_size)) or ([[]] if refused else [])
            for chunk in chunks:
                if not chunk:
                    got = []
                elif engine is None:
                    got = list(pool.map(work, chunk))
                else:
                    got = engine(ws, chunk, cfg, lambda item: pool.submit(work, item))
                got, refused = refused + list(got), []
                outcomes.extend(got)
                rows = [row for o in got for row in o.rows]
                if rows:
                    faces_parts.append(pd.DataFrame(rows, columns=FACES_SCHEMA.names))
                log_parts.append(
                    pd.DataFrame(
                        {
                            "image_id": [o.image_id for o in got],
                            "n_faces": [len(o.rows) for o in got],
                            "whole_image": [o.whole_image for o in got],
                            "error": [o.error for o in got],
                            "note": [o.note for o in got],
                        }
                    )
                )
                faces = _sorted_faces(_concat(faces_parts, FACES_SCHEMA), order)
                log_df = _sorted_log(_concat(log_parts, DETECT_LOG_SCHEMA), order)
                faces_parts, log_parts = [faces], [log_df]
                ws.write_faces(faces)  # faces first: see the module docstring
                write_table(detect_log_path(ws), log_df, DETECT_LOG_SCHEMA)
                if bar is not None:
                    bar.update(len(got))
                if on_chunk is not None:
                    on_chunk(len(outcomes), len(todo))
    finally:
        if bar is not None:
            bar.close()
        for det in made:
            close = getattr(det, "close", None)
            if close is not None:
                close()

    if not todo and (dirty or not ws.faces_path.exists()):
        ws.write_faces(faces)
        write_table(detect_log_path(ws), _sorted_log(done_log, order), DETECT_LOG_SCHEMA)
    n = len(outcomes)
    result = DetectResult(
        processed=n,
        skipped_done=len(ok) - len(todo),
        faces=sum(len(o.rows) for o in outcomes),
        no_face=sum(1 for o in outcomes if not o.rows and o.error is None),
        whole_image=sum(o.whole_image for o in outcomes),
        errors=sum(o.error is not None for o in outcomes),
        total_faces=len(faces),
        seconds=time.perf_counter() - t_start,
        decode_ms=1000 * sum(o.decode_s for o in outcomes) / max(n, 1),
        detect_ms=1000 * sum(o.detect_s for o in outcomes) / max(n, 1),
        config=cfg,
        too_small=sum(o.note is not None for o in outcomes),
        stale_temps=stale_temps,
    )
    final_log = read_detect_log(ws)
    ws.save_step_config(
        "detect",
        {
            "config": cfg,
            "workers": n_workers,
            "chunk_size": chunk_size,
            "last_run": {k: v for k, v in asdict(result).items() if k != "config"},
            "images_logged": len(final_log),
            "no_face_image_ids": final_log.loc[
                (final_log["n_faces"] == 0) & final_log["error"].isna(), "image_id"
            ].tolist(),
            "error_image_ids": final_log.loc[final_log["error"].notna(), "image_id"].tolist(),
            "too_small_image_ids": final_log.loc[final_log["note"].notna(), "image_id"].tolist(),
        },
    )
    log.info(
        "detect: %d images, %d faces, %d without a face (%d too small), %d whole-image, "
        "%d errors (%.1fs)",
        result.processed,
        result.faces,
        result.no_face,
        result.too_small,
        result.whole_image,
        result.errors,
        result.seconds,
    )
    return result


def _concat(parts: list[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty_table(schema)
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts, ignore_index=True)


def iter_crops(
    ws: Workspace, faces: pd.DataFrame | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(face_id, crop)`` (``(256, 256, 3)`` uint8) in ``faces`` order (default: all)."""
    faces = ws.require_faces() if faces is None else faces
    for fid in faces["face_id"]:
        path = ws.crop_path(fid)
        if not path.exists():
            raise NotFoundError(
                f"crop {path} of face {fid} is missing; re-run 'labeler detect -w {ws.root} --force'"
            )
        yield fid, load_rgb(path)
