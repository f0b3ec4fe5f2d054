"""The fused GPU pass of ``labeler run`` on CUDA: read -> nvJPEG decode -> BlazeFace -> align
-> crop JPEGs + embeddings, one batch of photos at a time, pixels never leaving the GPU.

Why: the CPU path (:mod:`labeler.detect.pipeline`) spends about 10 ms of CPU per 1024 px
photo on decode, detection and alignment; on a GPU box that, not the model, sets the pace.
Here the CPU only reads files and JPEG headers (threads) and does per-face bookkeeping:

1. ``torchvision.io.decode_jpeg(device="cuda")`` decodes the batch (nvJPEG);
2. the photos are letterboxed to 128 px (antialiased) and MediaPipe's short-range BlazeFace,
   rebuilt in torch from the model file inside the mediapipe wheel
   (:mod:`labeler.detect.blazeface`), runs on the whole batch;
3. each face is warped to the crop template with ``grid_sample`` from a box-filtered level
   of the photo (powers of two, like the CPU path's DCT-scaled decodes) at twice the crop
   size, then averaged down: no aliasing on big faces;
4. crops are JPEG-encoded (on the GPU where torchvision can) and written where the CPU path
   writes them; the JPEG bytes are decoded again on the GPU and each region the run needs is
   cut, resized and embedded, exactly as ``labeler embed --decode cuda`` does from the files
   (vectors do not depend on which path found a face; the key's config says ``decode: cuda``).

Photos the GPU pass cannot settle take the CPU path unchanged, in the step's thread pool,
while the GPU goes on: non-JPEG, CMYK or EXIF-rotated files, files nvJPEG refuses (the CPU
path records the error), and photos where short-range BlazeFace found no face of at least a
quarter of the short side (MediaPipe's "auto" mode then adds the full-range model, a padded
retry and the tiled small-face pass; the CPU path does all that). Faces found there are
embedded by the run's closing embed pass. The results equal the CPU path's up to resize
kernels: ``tests/test_fused.py`` compares the two on real photos.

>>> from labeler.detect.fused import FusedEngine  # doctest: +SKIP
>>> detect_workspace(ws, engine=FusedEngine(backbone, regions=["face"]))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labeler.detect import Detection, finalize
from labeler.detect.mediapipe import needs_full_range
from labeler.detect.upright import is_sure
from labeler.faces.align import alignment_matrix
from labeler.faces.regions import get_region
from labeler.imageio import write_bytes

if TYPE_CHECKING:
    from labeler.detect.pipeline import DetectConfig, ImageOutcome
    from labeler.embeddings import Backbone
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

#: Pyramid levels (box-filter factors) a face may be warped from.
_LEVELS = (1, 2, 4, 8)


@dataclass(frozen=True)
class FusedStats:
    """Counts of one engine's life (``labeler run`` logs them)."""

    images_gpu: int
    images_cpu: int
    faces_gpu: int
    embedded: int
    seconds_gpu: float
    phases: dict[str, float]  # seconds per phase: read_wait, decode, detect, align, encode, embed


@dataclass(frozen=True)
class _Read:
    """A file's bytes and whether nvJPEG may decode it as the CPU path would."""

    data: bytes | None
    gpu_ok: bool


#: Files larger than this (bytes) are never read whole for nvJPEG: the CPU path decodes
#: them from the file, so memory does not depend on file sizes.
GPU_READ_MAX_BYTES = 64 * 2**20


def read_for_gpu(path: Path) -> _Read:
    """Bytes of ``path`` and whether the GPU decode gives the CPU path's pixels: a JPEG in
    RGB or grayscale with no EXIF rotation (nvJPEG ignores EXIF; CMYK needs PIL's handling),
    at most :data:`GPU_READ_MAX_BYTES` (bigger: not read, left to the CPU path)."""
    try:
        if Path(path).stat().st_size > GPU_READ_MAX_BYTES:
            return _Read(None, False)
        data = path.read_bytes()
    except OSError:
        return _Read(None, False)
    if data[:2] != b"\xff\xd8":
        return _Read(data, False)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return _Read(data, False)
            if im.getexif().get(0x0112, 1) not in (0, 1):
                return _Read(data, False)
            if im.width * im.height > (Image.MAX_IMAGE_PIXELS or 1 << 62):
                return _Read(data, False)
    except Exception:  # undecodable: the CPU path records why
        return _Read(data, False)
    return _Read(data, True)


def letterbox(images: Any, side: int) -> tuple[Any, float, float, float]:
    """``(N, 3, H, W)`` float 0..255 -> ``(N, 3, side, side)`` in [-1, 1], the image scaled
    to fit (antialiased) and centred, the rest -1 (black), as MediaPipe's FIT mode does.
    Returns ``(batch, scale, left, top)``: input pixel = (image pixel) * scale + (left, top)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(images, size=(nh, nw), mode="bilinear", antialias=True)
    out = torch.full((n, 3, side, side), -1.0, device=images.device, dtype=torch.float32)
    top, left = (side - nh) // 2, (side - nw) // 2
    out[:, :, top : top + nh, left : left + nw] = small / 127.5 - 1.0
    # the exact scale per axis after rounding, so boxes map back without drift
    return out, nw / w, float(left), float(top)


def warp_theta(m: np.ndarray, level: int, level_hw: tuple[int, int], crop: int) -> np.ndarray:
    """``affine_grid`` matrix (2, 3) (``align_corners=False``) sampling crop pixels from a
    ``level``-times box-filtered image of size ``level_hw``, for the image->crop matrix ``m``."""
    cs = float(crop)
    out_to_crop = np.array([[cs / 2, 0, cs / 2 - 0.5], [0, cs / 2, cs / 2 - 0.5], [0, 0, 1]])
    crop_to_img = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    off = -(level - 1) / (2 * level)
    img_to_level = np.array([[1 / level, 0, off], [0, 1 / level, off], [0, 0, 1]])
    hl, wl = level_hw
    level_to_norm = np.array([[2 / wl, 0, 1 / wl - 1], [0, 2 / hl, 1 / hl - 1], [0, 0, 1]])
    return (level_to_norm @ img_to_level @ crop_to_img @ out_to_crop)[:2]


def warp_level(m: np.ndarray) -> int:
    """The coarsest pyramid level that still has at least one source pixel per crop pixel."""
    shrink = 1.0 / math.hypot(m[0, 0], m[0, 1])
    return max(lv for lv in _LEVELS if lv <= max(shrink, 1.0))


def align_batch(images: Any, faces: Sequence[tuple[int, np.ndarray]], *, size: int) -> Any:
    """Aligned crops ``(F, 3, size, size)`` float 0..255 of ``faces`` = ``(image index in
    images, (4, 2) landmarks in image pixels)`` from ``images`` ``(N, 3, H, W)`` float."""
    import torch
    import torch.nn.functional as F

    out = torch.empty((len(faces), 3, size, size), device=images.device, dtype=torch.float32)
    mats = [alignment_matrix(lm, size=size) for _, lm in faces]
    by_level: dict[int, list[int]] = {}
    for i, m in enumerate(mats):
        by_level.setdefault(warp_level(m), []).append(i)
    for level, idx in by_level.items():
        src = images if level == 1 else F.avg_pool2d(images, level)
        hw = (int(src.shape[2]), int(src.shape[3]))
        theta = torch.as_tensor(
            np.stack([warp_theta(mats[i], level, hw, size) for i in idx]),
            dtype=torch.float32,
            device=images.device,
        )
        pick = torch.as_tensor([faces[i][0] for i in idx], device=images.device)
        grid = F.affine_grid(theta, [len(idx), 3, 2 * size, 2 * size], align_corners=False)
        big = F.grid_sample(
            src.index_select(0, pick),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        out[torch.as_tensor(idx, device=images.device)] = F.avg_pool2d(big, 2)
    return out


def detections_from(
    rows: np.ndarray, scale: float, left: float, top: float, side: int
) -> list[Detection]:
    """BlazeFace rows ``(K, 17)`` of a :func:`letterbox` view -> :class:`Detection` in image
    pixels (``scale``, ``left``, ``top`` as :func:`letterbox` returned them)."""
    from labeler.detect.blazeface import rows_to_detections

    return rows_to_detections(rows, side / scale, (-left / scale, -top / scale))


class FusedEngine:
    """A :class:`labeler.detect.pipeline.DetectEngine` doing the GPU pass; see the module doc.

    ``backbone``: embeds ``regions`` of each GPU-aligned crop (None: crops only).
    ``device``: where decode/detect/align run (``"cuda"``; ``"cpu"`` runs the same code,
    for tests). ``batch_size``: photos per GPU batch. ``read_workers``: file-reading threads.
    """

    def __init__(
        self,
        backbone: Backbone | None = None,
        *,
        regions: Sequence[str] = (),
        device: str | None = None,
        batch_size: int = 128,
        read_workers: int | None = None,
        embed_batch: int = 256,
    ) -> None:
        from labeler.detect.blazeface import BlazeFaceTorch

        self.backbone = backbone
        # regions of the aligned crop only; box-crop regions are embedded after the pass
        self.regions = (
            [r for r in regions if get_region(r).crop == "aligned"] if backbone is not None else []
        )
        self.device = device or (backbone.config.device if backbone is not None else "cuda")
        self.batch_size = int(batch_size)
        self.embed_batch = int(embed_batch)
        self.read_workers = read_workers or min(32, 2 * (os.cpu_count() or 1))
        self._detector: BlazeFaceTorch | None = None
        self._detector_threshold: float | None = None
        self._writers: dict[str, Any] = {}
        self._io = ThreadPoolExecutor(self.read_workers, thread_name_prefix="labeler-fused")
        self._stats = {"images_gpu": 0, "images_cpu": 0, "faces_gpu": 0, "embedded": 0}
        self._seconds_gpu = 0.0
        self._phases: dict[str, float] = {}
        self._gpu_encode: bool | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def stats(self) -> FusedStats:
        return FusedStats(**self._stats, seconds_gpu=self._seconds_gpu, phases=dict(self._phases))

    def _tick(self, phase: str, since: float, *, sync: bool = True) -> float:
        """Add the time since ``since`` to ``phase`` (after the device caught up); now."""
        if sync and self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        self._phases[phase] = self._phases.get(phase, 0.0) + now - since
        return now

    def close(self) -> None:
        self._io.shutdown(wait=True)

    def __call__(
        self,
        ws: Workspace,
        items: list[tuple[str, Path]],
        cfg: DetectConfig,
        cpu: Callable[[tuple[str, Path]], Future[ImageOutcome]],
    ) -> list[ImageOutcome]:
        if cfg.detector != "mediapipe" or cfg.detector_options.get("model", "auto") != "auto":
            # only MediaPipe's auto mode has a GPU twin here
            return [f.result() for f in [cpu(it) for it in items]]
        self._prepare(ws, cfg)
        results: dict[str, ImageOutcome | Future[ImageOutcome]] = {}
        writes: list[Future[None]] = []
        reads = [self._io.submit(read_for_gpu, p) for _, p in items]
        batch: list[tuple[tuple[str, Path], bytes]] = []
        for item, fut in zip(items, reads, strict=True):
            t = time.perf_counter()
            got = fut.result()
            self._tick("read_wait", t, sync=False)
            if got.gpu_ok and got.data is not None:
                batch.append((item, got.data))
            else:
                results[item[0]] = cpu(item)
            if len(batch) >= self.batch_size:
                self._run_batch(ws, cfg, batch, results, writes, cpu)
                batch = []
        if batch:
            self._run_batch(ws, cfg, batch, results, writes, cpu)
        t = time.perf_counter()
        for w in writes:
            w.result()
        for writer in self._writers.values():
            writer.close()  # this chunk's vectors are on disk before its faces are committed
        self._tick("write_wait", t)
        out = []
        for image_id, _ in items:
            r = results[image_id]
            out.append(r.result() if isinstance(r, Future) else r)
        self._stats["images_cpu"] += sum(isinstance(results[i], Future) for i, _ in items)
        return out

    # -- internals ------------------------------------------------------------------------

    def _prepare(self, ws: Workspace, cfg: DetectConfig) -> None:
        from labeler.detect.blazeface import BlazeFaceTorch
        from labeler.embeddings.embed import ShardWriter, make_config, prepare_key

        if self._detector is None or self._detector_threshold != cfg.score_threshold:
            self._detector = BlazeFaceTorch(device=self.device, score_threshold=cfg.score_threshold)
            self._detector_threshold = cfg.score_threshold
        if self.backbone is not None and not self._writers:
            decode = "cuda" if self.device.startswith("cuda") else "cpu"
            for region in self.regions:
                config = make_config(
                    self.backbone,
                    region=region,
                    batch_size=self.embed_batch,
                    shard_size=1 << 30,  # flushed per chunk
                    decode=decode,
                )
                prepare_key(ws, config)
                self._writers[region] = ShardWriter(ws, config.key, config.shard_size)

    def _decode(self, datas: list[bytes]) -> list[Any]:
        """nvJPEG decode; a file it refuses is None (the CPU path takes it)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            out: list[Any] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _run_batch(
        self,
        ws: Workspace,
        cfg: DetectConfig,
        batch: list[tuple[tuple[str, Path], bytes]],
        results: dict[str, Any],
        writes: list[Future[None]],
        cpu: Callable[[tuple[str, Path]], Future[ImageOutcome]],
    ) -> None:
        import torch

        from labeler.detect.pipeline import ImageOutcome, face_row

        assert self._detector is not None
        t0 = time.perf_counter()
        decoded = self._decode([d for _, d in batch])
        self._tick("decode", t0)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(decoded):
            if im is None:
                results[batch[i][0][0]] = cpu(batch[i][0])
            else:
                groups.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(i)
        side = self._detector.input_size
        for (h, w), idx in groups.items():
            t = time.perf_counter()
            images = torch.stack([decoded[i] for i in idx]).float()
            x, scale, left, top = letterbox(images, side)
            if x.device.type == "cuda" and len(x) < self.batch_size:
                # one batch shape: cudnn.benchmark tunes its kernels once per shape
                pad = x.new_full((self.batch_size - len(x), *x.shape[1:]), -1.0)
                x = torch.cat([x, pad])
            found = self._detector.detect_batch(x)[: len(idx)]
            t = self._tick("detect", t)
            faces: list[tuple[int, np.ndarray]] = []
            owners: list[tuple[int, list[Detection]]] = []
            for j, rows in enumerate(found):
                item = batch[idx[j]][0]
                dets = detections_from(rows, scale, left, top, side)
                dets = self._settle(dets, h, w, cfg)
                if dets is None:
                    results[item[0]] = cpu(item)
                    continue
                owners.append((j, dets))
                faces.extend((j, d.landmarks) for d in dets)
            crops = align_batch(images, faces, size=cfg.crop_size) if faces else None
            t = self._tick("align", t)
            k = 0
            face_ids: list[str] = []
            for j, dets in owners:
                image_id = batch[idx[j]][0][0]
                rows_out = [face_row(ws, image_id, n, d, "mediapipe") for n, d in enumerate(dets)]
                face_ids.extend(r["face_id"] for r in rows_out)  # type: ignore[misc]
                results[image_id] = ImageOutcome(image_id, rows_out, False, None, 0.0, 0.0)
                k += len(dets)
            if crops is not None:
                datas = self._encode(crops, cfg.jpeg_quality)
                t = self._tick("encode", t)
                paths = [ws.crop_path(f) for f in face_ids]
                writes.extend(
                    self._io.submit(write_bytes, p, d) for p, d in zip(paths, datas, strict=True)
                )
                self._embed(datas, face_ids)
                self._tick("embed", t)
            self._stats["images_gpu"] += len(owners)
            self._stats["faces_gpu"] += k
        self._seconds_gpu += time.perf_counter() - t0

    def _settle(
        self, dets: list[Detection], h: int, w: int, cfg: DetectConfig
    ) -> list[Detection] | None:
        """The faces the CPU path would keep, or None when it would look further (full-range
        model, padded retry, tiles): only when short-range found a big face are both equal."""
        if needs_full_range(dets, min(h, w)):
            return None
        dets = finalize(dets, score_threshold=cfg.score_threshold)
        dets = [d for d in dets if min(d.width, d.height) >= cfg.min_size]
        if cfg.rotate and not is_sure(dets):
            return None  # may be sideways or upside down: the CPU path checks which way up

        return dets or None

    def _encode(self, crops: Any, quality: int) -> list[bytes]:
        """JPEG bytes of float crops: nvJPEG where torchvision can, else OpenCV in threads."""
        import torch

        u8 = crops.round().clamp_(0, 255).to(torch.uint8)
        if u8.device.type == "cuda" and self._gpu_encode is not False:
            from torchvision.io import encode_jpeg

            try:
                enc = encode_jpeg(list(u8), quality=quality)
                self._gpu_encode = True
                flat = torch.cat(enc).cpu().numpy()  # one copy to the host, then split
                lens = np.array([len(e) for e in enc])
                ends = np.cumsum(lens)
                return [flat[e - n : e].tobytes() for e, n in zip(ends, lens, strict=True)]
            except (RuntimeError, TypeError) as exc:
                log.info("GPU JPEG encode unavailable (%s); encoding crops on the CPU", exc)
                self._gpu_encode = False
        from labeler.imageio import encode_jpeg as encode_cpu

        hwc = u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return list(self._io.map(lambda a: encode_cpu(a, quality=quality), hwc))

    def _embed(self, datas: list[bytes], face_ids: list[str]) -> None:
        """Embed the crops from their JPEG bytes, exactly as ``labeler embed --decode cuda``
        does from the files: vectors do not depend on which path found the face."""
        from labeler.embeddings.gpu import decode_crops_cuda

        if self.backbone is None:
            return
        size = self.backbone.input_size
        for s in range(0, len(face_ids), self.embed_batch):
            part = datas[s : s + self.embed_batch]
            for region in self.regions:
                pixels = decode_crops_cuda(part, region=region, size=size, device=self.device)
                X = self.backbone.embed(pixels)
                self._writers[region].add(face_ids[s : s + self.embed_batch], X)
        self._stats["embedded"] += len(face_ids)
