"""OpenCV Haar cascade (frontal face), shipped with ``opencv-python`` (``cv2.data``).

A fallback with no learned landmarks: the 4 points are placed at their typical positions in
a Haar frontal-face box (measured as fractions of the box, eyes at 30%/70% across and 38%
down, nose tip 58%, mouth 78%), so alignment is only as good as the box. Haar has no
calibrated score: every face gets ``score = 1.0`` and ``score_threshold`` is ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labeler._deps import require
from labeler.detect import Detection, finalize
from labeler.errors import NotFoundError

# (x, y) fractions of the Haar box, LANDMARK_NAMES order.
BOX_LANDMARKS = np.array([[0.30, 0.38], [0.70, 0.38], [0.50, 0.58], [0.50, 0.78]], np.float32)


class HaarDetector:
    """``haarcascade_frontalface_default`` via ``cv2.CascadeClassifier.detectMultiScale``."""

    name = "haar"

    def __init__(
        self,
        *,
        min_size: float = 20.0,
        score_threshold: float = 0.0,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        cascade: str = "haarcascade_frontalface_default.xml",
    ) -> None:
        cv2 = require("cv2", purpose="the haar face detector")
        path = Path(cv2.data.haarcascades) / cascade
        self._cv2 = cv2
        self._clf = cv2.CascadeClassifier(str(path))
        if self._clf.empty():
            raise NotFoundError(
                f"cannot load the Haar cascade {path}; install opencv-python-headless<5 "
                "(5.x ships no cascade files)"
            )
        self.min_size = float(min_size)
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in ``rgb`` ``(H, W, 3)`` uint8, left to right."""
        cv2 = self._cv2
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        m = max(1, int(self.min_size))
        boxes = self._clf.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(m, m)
        )
        dets = []
        for x, y, w, h in np.asarray(boxes).reshape(-1, 4):
            lm = BOX_LANDMARKS * np.float32([w, h]) + np.float32([x, y])
            dets.append(Detection(float(x), float(y), float(x + w), float(y + h), 1.0, lm))
        return finalize(dets, min_size=self.min_size)
