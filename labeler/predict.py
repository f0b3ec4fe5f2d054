"""Classify faces in new photos: the stream of ``labeler run`` (decode, upright check,
detection, crops as stored, batched features), then the trained model(s).

:func:`predict_files` is ``labeler predict``: detect threads cut each photo's faces
(:func:`labeler.detect.pipeline.cut_faces`, as ``labeler run`` does), the main thread
computes the features of batches of faces from several photos at once
(:class:`labeler.embeddings.embed.FeatureBlocks`, the blocks the model was trained on,
computed from the crops as the workspace stores them, so exactly as in training) and
classifies them. :func:`predict_image` is the same for one photo (the app's Try it page). A
model per label field (``labeler.train.load_model``) may be passed together; each adds a
predicted label and confidence per face.

>>> det = get_detector("mediapipe")                                   # doctest: +SKIP
>>> model = load_model(ws)                                           # doctest: +SKIP
>>> [(p.box, p.labels) for p in predict_image(rgb, model, det)]      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labeler.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from labeler.faces.records import FaceCrops

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FacePrediction:
    """One face of a photo: box (x0, y0, x1, y1) in source pixels, detector score, the
    aligned crop (256, 256, 3) uint8, upright (a photo stored sideways or upside down is
    turned by the upright check), and per field the label, confidence and all probs."""

    face_index: int
    box: tuple[float, float, float, float]
    score: float
    whole_image: bool
    crop: np.ndarray
    labels: dict
    confidence: dict
    probs: dict


class Classifier:
    """The features every model of ``models`` needs, computed once per batch of faces by one
    :class:`~labeler.embeddings.embed.FeatureBlocks` (a backbone per input size, the cues),
    then each model's class probabilities: the one feature path of new faces (``labeler
    predict``, the app's Try it and :meth:`labeler.train.LoadedModel.predict_proba`)."""

    def __init__(self, models: Sequence[Any], *, batch_size: int = 64) -> None:
        from labeler.embeddings import get_backbone
        from labeler.embeddings.backbones import workspace_precision
        from labeler.embeddings.embed import FeatureBlocks
        from labeler.embeddings.store import parse_key
        from labeler.faces.regions import get_region

        self.models = list(models)
        backbones: dict[tuple[str, int | None], Any] = {}
        regions: dict[tuple[str, int | None], list[str]] = {}
        self.columns: list[list[tuple[tuple[str, int | None] | None, str]]] = []
        self._box_block: str | None = None  # "model RUN (block KEY)": the first box reader
        cues = False
        for m in self.models:
            cols: list[tuple[tuple[str, int | None] | None, str]] = []
            if m.mode in ("head", "ensemble"):
                for block in m.meta["feature_blocks"]:
                    if block["key"].startswith("cues"):
                        cues = True
                        cols.append((None, "cues"))
                        continue
                    if not block.get("backbone"):
                        raise InputError(
                            f"feature block {block['key']!r} of model {m.run_id} cannot be "
                            "computed for new photos (no backbone recorded); train with "
                            "--mode finetune or on embeddings made by 'labeler embed'"
                        )
                    if get_region(block["region"]).crop == "box" and self._box_block is None:
                        self._box_block = f"model {m.run_id} (block {block['key']})"
                    _, size, _ = parse_key(block["key"])
                    g = (block["backbone"], size)
                    if g not in backbones:
                        # the precision the head was trained on (int8 or float features)
                        device, precision = workspace_precision([block["key"]], block["backbone"])
                        backbones[g] = get_backbone(
                            block["backbone"], device=device, precision=precision, input_size=size
                        )
                    regions.setdefault(g, [])
                    if block["region"] not in regions[g]:
                        regions[g].append(block["region"])
                    cols.append((g, block["region"]))
            self.columns.append(cols)
        self._groups = list(backbones)
        self.blocks = FeatureBlocks(
            [(backbones[g], regions[g]) for g in self._groups], cues=cues, batch_size=batch_size
        )
        self.kinds = tuple(
            sorted(set(self.blocks.kinds) | {"aligned"})
        )  # finetuned models read aligned crops

    def _key(self, col: tuple[tuple[str, int | None] | None, str]) -> str:
        from labeler.embeddings.store import embedding_key
        from labeler.faces.cues import CUES_KEY

        g, region = col
        if g is None:
            return CUES_KEY
        i = self._groups.index(g)
        return embedding_key(self.blocks.groups[i][0].config.key_name, region)

    def predict_proba(self, faces: Sequence[Any] | np.ndarray) -> list[np.ndarray]:
        """Per model, (len(faces), classes) probabilities for ``faces``: :class:`FaceCrops`
        records or the cuts of :func:`labeler.detect.pipeline.cut_faces` (aligned and box
        crops as stored); aligned crops (N, S, S, 3) uint8 alone when no block reads the box
        crop (else :class:`InputError` naming the fix)."""
        if len(faces) == 0:
            return [np.zeros((0, len(m.classes))) for m in self.models]
        records = face_records(faces)
        if self._box_block is not None:
            lacking = [f.face_id for f in records if f.box is None]
            if lacking:
                got = (
                    f"aligned crops only (an array of shape {tuple(faces.shape)})"
                    if isinstance(faces, np.ndarray)
                    else f"{len(lacking)} of {len(records)} faces without a box crop "
                    f"(e.g. {lacking[0]})"
                )
                raise InputError(
                    f"{self._box_block} reads each face's box crop (the detector box + 20 %, "
                    f"upright), but got {got}; pass faces with their box crops (FaceCrops "
                    "records, or the cuts of labeler.detect.pipeline.cut_faces(..., box=True)), "
                    "or use labeler.predict.predict_image"
                )
        X = self.blocks.compute(records) if self.blocks.keys else {}
        out = []
        for m, cols in zip(self.models, self.columns, strict=True):
            if m.mode in ("head", "ensemble"):
                Xm = np.concatenate([X[self._key(c)] for c in cols], 1).astype(np.float32)
                P = m.head.predict_proba(Xm)
                if m.mode == "ensemble":
                    P = m.combine(P, np.stack([f.aligned for f in records]))
                out.append(P)
            else:
                out.append(m.predict_proba(records))
        return out


class ClassifierActor:
    """Ray actor of ``labeler predict --engine ray`` (:func:`labeler.ray_stream.stream_photos`):
    the :class:`Classifier` of ``models``, built once; adds each photo's class probabilities
    (one array per model, pickled) to its row."""

    def __init__(self, models: list[Any], batch_size: int) -> None:
        self.clf = Classifier(models, batch_size=batch_size)

    def __call__(self, batch: Any) -> Any:
        import pickle

        from labeler.ray_stream import face_crops, with_results

        photos = [pickle.loads(p) for p in batch.column("payload").to_pylist()]
        probs = self.clf.predict_proba([f for ph in photos for f in face_crops(ph)])
        return with_results(batch, photos, lambda a, b: [P[a:b] for P in probs])


def face_records(faces: Sequence[Any] | np.ndarray, *, tag: str = "face") -> list[FaceCrops]:
    """``faces`` as :class:`~labeler.faces.records.FaceCrops`: records as they are; the cuts
    of :func:`labeler.detect.pipeline.cut_faces` (anything with ``aligned`` and ``box``) and
    aligned crops (N, S, S, 3) uint8 (no box crop) named ``{tag}_{i}``."""
    from labeler.faces.records import FaceCrops

    if isinstance(faces, np.ndarray):
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
            raise InputError(
                f"expected aligned crops (N, S, S, 3) uint8 or FaceCrops records, got an "
                f"array of shape {faces.shape}"
            )
        return [FaceCrops(f"{tag}_{i}", c) for i, c in enumerate(faces)]
    return [
        f if isinstance(f, FaceCrops) else FaceCrops(f"{tag}_{i}", f.aligned, f.box)
        for i, f in enumerate(faces)
    ]


def _predictions(
    cuts: Sequence[Any], per_model: Sequence[tuple[Any, np.ndarray]], start: int
) -> list[FacePrediction]:
    out = []
    for i, cut in enumerate(cuts):
        labels, conf, probs = {}, {}, {}
        for m, P in per_model:
            row = P[start + i]
            j = int(row.argmax())
            labels[m.field] = m.classes[j]
            conf[m.field] = float(row[j])
            probs[m.field] = {c: float(p) for c, p in zip(m.classes, row, strict=True)}
        d = cut.detection
        out.append(
            FacePrediction(
                face_index=i,
                box=tuple(float(v) for v in d.box),
                score=float(d.score),
                whole_image=bool(d.whole_image),
                crop=cut.aligned,
                labels=labels,
                confidence=conf,
                probs=probs,
            )
        )
    return out


def _models(model: Any | Sequence[Any]) -> list[Any]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def predict_image(
    image: np.ndarray | str | os.PathLike[str],
    model: Any | Sequence[Any],
    detector: Any,
) -> list[FacePrediction]:
    """Detect + align + classify every face of one image, as ``labeler predict`` does.

    image: (H, W, 3) uint8 RGB or a path. model: a ``LoadedModel`` or a list of them (one
    per field). detector: from ``labeler.detect.get_detector``. Faces left to right; each
    ``crop`` is upright (the upright check turns sideways and upside-down photos).
    """
    from labeler.detect.pipeline import DetectConfig, cut_faces

    clf = Classifier(_models(model))
    cfg = DetectConfig(detector=getattr(detector, "name", "mediapipe"))
    source = image if isinstance(image, np.ndarray) else Path(image)
    cuts = cut_faces(source, detector, cfg, box="box" in clf.kinds)
    if not cuts:
        return []
    probs = clf.predict_proba(cuts)
    return _predictions(cuts, list(zip(clf.models, probs, strict=True)), 0)


def predictions_frame(
    path: str, preds: Sequence[FacePrediction], fields: Sequence[str]
) -> pd.DataFrame:
    """Rows for one image: path, face_index, x0, y0, x1, y1, det_score, whole_image, and per
    field ``<field>`` and ``<field>_confidence``."""
    rows = []
    for p in preds:
        row = {
            "path": path,
            "face_index": p.face_index,
            "x0": round(p.box[0], 2),
            "y0": round(p.box[1], 2),
            "x1": round(p.box[2], 2),
            "y1": round(p.box[3], 2),
            "det_score": round(p.score, 4),
            "whole_image": p.whole_image,
        }
        for f in fields:
            row[f] = p.labels.get(f, "")
            row[f"{f}_confidence"] = round(p.confidence.get(f, float("nan")), 4)
        rows.append(row)
    cols = ["path", "face_index", "x0", "y0", "x1", "y1", "det_score", "whole_image"]
    cols += [c for f in fields for c in (f, f"{f}_confidence")]
    return pd.DataFrame(rows, columns=cols)


def list_images(
    inputs: Iterable[str | os.PathLike[str]], *, follow_links: bool = False
) -> list[tuple[Path, str]]:
    """(path to read, display path) of the image files named or found in folders (sorted).

    Folders are scanned as ``labeler ingest`` scans them (:func:`labeler.ingest.scan_images`)
    and each file found passes the folder's fence (:mod:`labeler.fence`): a symlink leading
    out of the folder (unless ``follow_links``), a device or a FIFO is skipped with a
    warning and never opened. A file named on the command line is read as named.
    """
    from labeler.fence import Fence
    from labeler.ingest import scan_images

    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            fence = Fence(p, follow_links)
            for rel in scan_images(p, follow_links=follow_links):
                shown = Path(rel).as_posix()
                try:
                    out.append((fence.resolve(rel), shown))
                except OSError as exc:  # FenceError: refused; else broken link, no access
                    log.warning("skipping %s: %s", shown, getattr(exc, "strerror", None) or exc)
        elif p.is_file():
            out.append((p, str(item)))
        else:
            raise NotFoundError(f"{p} is neither an image file nor a folder")
    return out


def predict_files(
    inputs: Iterable[str | os.PathLike[str]],
    models: Sequence[Any],
    detector: Any = "mediapipe",
    *,
    workers: int | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
    follow_links: bool = False,
    engine: str = "local",
    address: str | None = None,
) -> pd.DataFrame:
    """Predictions for every image under ``inputs`` (files or folders); unreadable files are
    logged and skipped, and so are the files the folder's fence refuses (``follow_links``:
    symlinks may lead out of a folder; see :func:`list_images`). Columns as in
    :func:`predictions_frame`, photos in input order.

    ``detector``: a name (one detector per detect thread, ``workers`` threads, default
    ``min(4, cpu count)`` as ``labeler run``) or a built detector (then one thread). Faces of
    several photos are classified together, ``batch_size`` at a time. ``engine="ray"``: the
    same stream on Ray Data (:func:`labeler.ray_stream.stream_photos`, the cluster at
    ``address``; a detector name only), with the same rows.
    """
    from labeler._io import progress_bar
    from labeler.detect.pipeline import DetectConfig, cut_faces, default_workers
    from labeler.embeddings.embed import prefetch
    from labeler.imageio import ImageDecodeError

    models = list(models)
    fields = [m.field for m in models]
    clf = Classifier(models, batch_size=batch_size)
    if isinstance(detector, str):
        cfg = DetectConfig(detector=detector)
        cfg.build_detector()  # fail fast on an unknown name / missing package
        n_workers = workers or default_workers()
        local = threading.local()
        made: list[Any] = []
        lock = threading.Lock()

        def det_of_thread() -> Any:
            det = getattr(local, "detector", None)
            if det is None:
                det = local.detector = cfg.build_detector()
                with lock:
                    made.append(det)
            return det

    else:
        cfg = DetectConfig(detector=getattr(detector, "name", "mediapipe"))
        n_workers, made = 1, []

        def det_of_thread() -> Any:
            return detector

    box = "box" in clf.kinds
    images = list_images(inputs, follow_links=follow_links)
    if engine == "ray":
        if not isinstance(detector, str):
            raise InputError("engine='ray' takes a detector name (each worker builds its own)")
        from labeler.ray_stream import stream_photos

        frames = [predictions_frame("", [], fields)]
        for shown, cuts, probs in stream_photos(
            images, cfg, ClassifierActor, (models, batch_size), box=box, batch_size=batch_size,
            address=address, progress=progress,
        ):  # fmt: skip
            if cuts is not None:
                per_model = list(zip(clf.models, probs, strict=True))
                frames.append(predictions_frame(shown, _predictions(cuts, per_model, 0), fields))
        return pd.concat(frames, ignore_index=True)
    if engine != "local":
        raise InputError(f"engine must be local or ray, got {engine!r}")

    def cut(item: tuple[Path, str]) -> tuple[str, list[Any] | None]:
        path, shown = item
        try:
            return shown, cut_faces(path, det_of_thread(), cfg, box=box)
        except ImageDecodeError as exc:
            log.warning("skipping %s", exc)
            return shown, None

    frames = [predictions_frame("", [], fields)]
    pending: list[tuple[str, list[Any]]] = []  # photos whose faces wait for a full batch
    n_waiting = 0

    def flush() -> None:
        nonlocal n_waiting
        cuts = [c for _, cs in pending for c in cs]
        probs = clf.predict_proba(cuts)
        per_model = list(zip(clf.models, probs, strict=True))
        start = 0
        for shown, cs in pending:
            frames.append(predictions_frame(shown, _predictions(cs, per_model, start), fields))
            start += len(cs)
        pending.clear()
        n_waiting = 0

    bar = progress_bar(len(images), desc="predict", enabled=progress)
    bar.unit = "img"
    try:
        # the detect threads run up to two batches of photos ahead, so they keep cutting
        # faces while the model works on a batch (as labeler run's detect threads do)
        depth = max(4 * n_workers, 2 * batch_size)
        for shown, cuts in prefetch(images, cut, workers=n_workers, depth=depth):
            bar.update(1)
            if cuts is None:
                continue
            pending.append((shown, cuts))
            n_waiting += len(cuts)
            if n_waiting >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
        for det in made:
            close = getattr(det, "close", None)
            if close is not None:
                close()
    return pd.concat(frames, ignore_index=True)
