"""MediaPipe's BlazeFace short-range detector re-implemented in PyTorch, for batched GPU runs.

The network is rebuilt from the ``face_detection_short_range.tflite`` that ships inside the
installed ``mediapipe`` wheel by the small TFLite executor of :mod:`labeler.detect.tflite_torch`
(:func:`tflite_module`), which walks the flatbuffer's operators in order and runs them with
``torch.nn.functional``, keeping 4-D tensors in NCHW. Post-processing follows MediaPipe's ``FaceDetection`` graph (read from the
wheel): SSD anchors (4 layers, strides 8/16/16/16, fixed anchor size -> 896 anchors), box and
keypoint decoding with scale 128, ``sigmoid(clip(raw, -100, 100))`` scores and *weighted*
non-maximum suppression at IoU 0.3.

>>> det = BlazeFaceTorch(device="cuda")  # doctest: +SKIP
>>> det.detect_batch(x)  # x: (N, 3, 128, 128) in [-1, 1]  # doctest: +SKIP

On a 128x128 image :meth:`BlazeFaceTorch.detect` agrees with ``get_detector("mediapipe",
model="short")`` to a small fraction of a pixel (see ``tests/test_blazeface.py``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from labeler._deps import require
from labeler.detect import Detection, finalize
from labeler.errors import InputError, NotFoundError

log = logging.getLogger(__name__)

SHORT_RANGE_INPUT = 128

# MediaPipe's face_detection.pbtxt + face_detection_short_range.pbtxt options.
_NUM_KEYPOINTS = 6
_NUM_COORDS = 16
_COORD_SCALE = 128.0
_SCORE_CLIP = 100.0
_NMS_IOU = 0.3


def short_range_model_path() -> Path:
    """The short-range BlazeFace ``.tflite`` inside the installed ``mediapipe`` package."""
    mp = require("mediapipe", purpose="the BlazeFace model file")
    path = (
        Path(mp.__file__).resolve().parent
        / "modules/face_detection/face_detection_short_range.tflite"
    )
    if not path.is_file():
        raise NotFoundError(f"{path} is missing from the installed mediapipe package")
    return path


def ssd_anchors_short_range() -> np.ndarray:
    """``(896, 2)`` float32 anchor centres ``(x, y)`` in [0, 1] (all anchors have w = h = 1).

    SsdAnchorsCalculator with strides ``[8, 16, 16, 16]`` and 2 anchors per cell and layer
    (aspect ratio 1 plus the interpolated scale): consecutive layers of equal stride share a
    grid, so 16x16 cells x 2 anchors, then 8x8 cells x 6 anchors; row-major over cells.
    """
    strides = [8, 16, 16, 16]
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = 2 * (last - layer)
        grid = math.ceil(SHORT_RANGE_INPUT / strides[layer])
        for y in range(grid):
            for x in range(grid):
                centres.extend([((x + 0.5) / grid, (y + 0.5) / grid)] * per_cell)
        layer = last
    return np.asarray(centres, dtype=np.float32)


def tflite_module(path: str | Path) -> Any:
    """A ``torch.nn.Module`` running the float TFLite model at ``path`` (subgraph 0); see
    :mod:`labeler.detect.tflite_torch` (imported here, so that this module needs no torch)."""
    from labeler.detect.tflite_torch import TfliteModule

    return TfliteModule(path)


# --- post-processing -----------------------------------------------------------------------------


def _iou_matrix(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(cands: np.ndarray, iou_threshold: float = _NMS_IOU) -> np.ndarray:
    """MediaPipe's WEIGHTED non-max suppression on ``(K, 17)`` rows ``[score, x0, y0, x1, y1,
    keypoints...]``: the best remaining row and every remaining row with IoU > threshold to it
    (itself included) merge into their score-weighted mean, keeping the best row's score."""
    if len(cands) <= 1:
        return np.array(cands, dtype=np.float32).reshape(-1, cands.shape[1])
    order = np.argsort(-cands[:, 0], kind="stable")
    rest = cands[order].astype(np.float64)
    out = []
    while len(rest):
        top = rest[0]
        hit = _iou_matrix(top[1:5], rest[:, 1:5]) > iou_threshold
        hit[0] = True
        cluster = rest[hit]
        weights = cluster[:, :1]
        merged = (cluster[:, 1:] * weights).sum(0) / weights.sum()
        out.append(np.concatenate([top[:1], merged]))
        rest = rest[~hit]
    return np.asarray(out, dtype=np.float32).reshape(-1, cands.shape[1])


def rows_to_detections(
    rows: np.ndarray, scale: float, offset: tuple[float, float]
) -> list[Detection]:
    """:meth:`BlazeFaceTorch.detect_batch` rows of one image -> :class:`Detection` in image
    pixels, where image pixel = normalised input coordinate * ``scale`` + ``offset``;
    landmarks are the first 4 keypoints (eyes, nose tip, mouth)."""
    dets = []
    for row in rows:
        pts = row[1:].reshape(-1, 2).astype(np.float64) * scale + offset
        (x0, y0), (x1, y1) = pts[0], pts[1]
        dets.append(Detection(float(x0), float(y0), float(x1), float(y1), float(row[0]), pts[2:6]))
    return dets


class BlazeFaceTorch:
    """BlazeFace short-range in PyTorch (CPU or CUDA), batched; not thread-safe.

    ``score_threshold`` (0..1, default 0.5) is MediaPipe's ``min_score_thresh``: candidates
    below it are dropped before the weighted NMS. (MediaPipe's legacy Python solution ignores
    its ``min_detection_confidence`` and always uses 0.5 there; ``MediaPipeDetector`` applies
    its threshold afterwards, in ``finalize``. The two agree at the default 0.5.)
    """

    name = "blazeface"

    def __init__(self, *, device: str = "cpu", score_threshold: float = 0.5) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise InputError(f"score_threshold must be in 0..1, got {score_threshold}")
        torch = require("torch", purpose="the torch BlazeFace detector")
        self.score_threshold = float(score_threshold)
        self.input_size = SHORT_RANGE_INPUT
        self.device = torch.device(device)
        self.net = tflite_module(short_range_model_path()).to(self.device).eval()
        self._anchors = torch.from_numpy(ssd_anchors_short_range()).to(self.device)
        log.debug("BlazeFaceTorch on %s", self.device)

    def _decode(self, regressors: Any, classificators: Any) -> tuple[Any, Any]:
        """Raw outputs -> ``(N, 896)`` scores, ``(N, 896, 16)`` [x0, y0, x1, y1, kx, ky...]."""
        import torch

        r = regressors / _COORD_SCALE
        anchor_xy = self._anchors  # w = h = 1 (fixed anchor size)
        centre = r[..., 0:2] + anchor_xy
        half = r[..., 2:4] / 2
        kps = r[..., 4:].reshape(*r.shape[:2], _NUM_KEYPOINTS, 2) + anchor_xy[:, None, :]
        boxes = torch.cat([centre - half, centre + half, kps.flatten(2)], dim=-1)
        scores = torch.sigmoid(classificators[..., 0].clamp(-_SCORE_CLIP, _SCORE_CLIP))
        return scores, boxes

    def _forward(self, x: Any) -> dict[str, Any]:
        import torch

        if self.device.type != "cuda":
            return self.net(x, nchw=True)
        # TF32 convolutions (PyTorch's default on CUDA) move boxes by ~0.2 px: stay in fp32.
        # No cudnn.benchmark (an embedding backbone may have switched it on): tuning each new
        # batch shape costs seconds, this small net runs fine on cuDNN's heuristics.
        cudnn = torch.backends.cudnn
        tf32, bench = cudnn.allow_tf32, cudnn.benchmark
        try:
            cudnn.allow_tf32, cudnn.benchmark = False, False
            return self.net(x, nchw=True)
        finally:
            cudnn.allow_tf32, cudnn.benchmark = tf32, bench

    def detect_batch(self, x: Any) -> list[np.ndarray]:
        """x: torch float tensor (N, 3, 128, 128) in [-1, 1] on self.device (RGB, NCHW).
        Returns per image an array (K, 17) float32: [score, x0, y0, x1, y1, kx0, ky0, ..., kx5, ky5]
        in normalized [0, 1] coordinates of the 128x128 input, rows by score descending."""
        import torch

        if x.dim() != 4 or tuple(x.shape[1:]) != (3, SHORT_RANGE_INPUT, SHORT_RANGE_INPUT):
            raise ValueError(f"expected (N, 3, 128, 128) input, got {tuple(x.shape)}")
        if len(x) == 0:
            return []
        with torch.inference_mode():
            out = self._forward(x.to(self.device, torch.float32))
            scores, boxes = self._decode(out["regressors"], out["classificators"])
            keep = (scores >= self.score_threshold) & (boxes[..., 2] >= boxes[..., 0])
            keep &= boxes[..., 3] >= boxes[..., 1]  # MediaPipe drops negative widths/heights
            rows = torch.cat([scores[..., None], boxes], dim=-1)
            keep_np = keep.cpu().numpy()
            rows_np = rows[keep].cpu().numpy()
        counts = keep_np.sum(1)
        splits = np.split(rows_np, np.cumsum(counts)[:-1])
        return [weighted_nms(c) for c in splits]

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Letterbox ``rgb`` into a float32 ``(3, 128, 128)`` array in [-1, 1] exactly as
        MediaPipe's CPU ImageToTensorCalculator does; also ``(left, top, side)``: the square
        region of the image that the input covers, so that a normalised input coordinate
        ``u`` is image pixel ``left + u * side`` (MediaPipe's DetectionProjection).

        MediaPipe pads the image to a centred square of side ``max(h, w)`` and maps its
        corners onto the corners of the tensor with ``cv::warpPerspective`` (bilinear, zero
        border): output pixel ``i`` samples the image at ``left + i * side / 128``, with no
        half-pixel shift. On a large image this is a point sampling (no smoothing) that sits
        up to half a source block off ``cv2.resize``'s, which moves boxes by several pixels.
        """
        import cv2

        h, w = rgb.shape[:2]
        n = SHORT_RANGE_INPUT
        side = float(max(h, w))
        left, top = (w - side) / 2, (h - side) / 2
        if (h, w) == (n, n):
            tensor = np.ascontiguousarray(rgb)
        else:
            # cv::boxPoints order for an unrotated rect, as in MediaPipe
            src = np.float32([[left, top + side], [left, top], [left + side, top]])
            src = np.vstack([src, np.float32([[left + side, top + side]])])
            dst = np.float32([[0, n], [0, 0], [n, 0], [n, n]])
            matrix = cv2.getPerspectiveTransform(src, dst)
            tensor = cv2.warpPerspective(
                np.ascontiguousarray(rgb),
                matrix,
                (n, n),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        x = tensor.astype(np.float32).transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)
        return np.ascontiguousarray(x), (left, top, side)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Detector protocol on one (H, W, 3) uint8 image: letterbox to 128 (keep aspect, pad with
        zeros i.e. -1 after normalisation, centred, like MediaPipe's FIT scale mode; sampled as
        MediaPipe does, see :meth:`preprocess`), run, map back to image pixels, landmarks = first
        4 keypoints (eyes, nose tip, mouth), then
        labeler.detect.finalize(dets, score_threshold=self.score_threshold)."""
        import torch

        x, (left, top, side) = self.preprocess(np.asarray(rgb)[..., :3])
        rows = self.detect_batch(torch.from_numpy(x)[None].to(self.device))[0]
        dets = rows_to_detections(rows, side, (left, top))
        return finalize(dets, score_threshold=self.score_threshold)
