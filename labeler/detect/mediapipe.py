"""MediaPipe BlazeFace (legacy ``solutions.face_detection``, shipped inside the wheel).

Two models: short-range (``model_selection=0``, 128 px input, faces filling a good part of
the frame) and full-range (``1``, 192 px input, small faces in scenes). ``model="auto"``
(default) runs short-range, adds full-range when short-range found nothing or only faces
that are small for the frame, and, when both found nothing, retries short-range on the image
padded with a replicated border: BlazeFace misses faces that fill the whole frame (tight
face crops), and the padding shrinks them back into its range.

BlazeFace's 6 keypoints are eyes, nose tip, mouth centre and the two ear tragions; the first
four become ``LANDMARK_NAMES`` (eyes ordered by x).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import numpy as np

from labeler._deps import require
from labeler.detect import Detection, finalize
from labeler.errors import InputError

log = logging.getLogger(__name__)

_MODELS = {"short": 0, "full": 1}
# A face whose box side is below this fraction of the image's shorter side counts as small:
# then the full-range model also runs in "auto" mode.
SMALL_FACE_FRACTION = 0.25
_PAD_FRACTION = 0.4
#: Tile side (pixels) of :meth:`MediaPipeDetector.detect_small_faces`.
TILE_SIDE = 320


#: Lines the TFLite/MediaPipe C++ runtime prints on stderr when an interpreter starts; they
#: are not the user's business (GLOG_minloglevel does not reach them: TFLite's own logger and
#: absl print them before any log setup).
NATIVE_NOISE = (
    "Created TensorFlow Lite XNNPACK delegate",
    "inference_feedback_manager",
    "Feedback manager requires",
    "All log messages before absl::InitializeLog()",
)

_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_state: tuple[int, object] | None = None


def _flush_c_stdio() -> None:
    """``fflush(NULL)``: C stdio output still buffered goes to the current fd 2 now."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Around native code that starts a TFLite interpreter: file descriptor 2 goes to a
    temporary file, and on leaving, the lines of it that are not :data:`NATIVE_NOISE` are
    written back to the real stderr (nothing another thread printed meanwhile is lost).
    Re-entrant across threads: the first to enter redirects, the last to leave restores."""
    global _quiet_depth, _quiet_state
    import sys
    import tempfile

    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
                tmp = tempfile.TemporaryFile()
                os.dup2(tmp.fileno(), 2)
            except (OSError, ValueError):  # no fd 2 (embedded interpreters): leave it be
                saved, tmp = -1, None
            _quiet_state = (saved, tmp)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_state is not None:
                saved, tmp = _quiet_state
                _quiet_state = None
                if saved >= 0 and tmp is not None:
                    with contextlib.suppress(ValueError, OSError):
                        sys.stderr.flush()
                    _flush_c_stdio()
                    os.dup2(saved, 2)
                    os.close(saved)
                    tmp.seek(0)  # type: ignore[attr-defined]
                    text = tmp.read().decode("utf-8", "replace")  # type: ignore[attr-defined]
                    tmp.close()  # type: ignore[attr-defined]
                    kept = [
                        line
                        for line in text.splitlines(keepends=True)
                        if not any(n in line for n in NATIVE_NOISE)
                    ]
                    if kept:
                        os.write(2, "".join(kept).encode())


def tile_origins(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners of ``tile``-sided squares covering ``width x height`` with at least
    ``overlap`` (fraction of ``tile``) between neighbours; the last row/column is flush with
    the border."""
    stride = max(1, int(tile * (1 - overlap)))

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        xs = list(range(0, n - tile + 1, stride))
        if xs[-1] + tile < n:
            xs.append(n - tile)
        return xs

    return [(x, y) for y in starts(height) for x in starts(width)]


def needs_full_range(short_range: list[Detection], short_side: float) -> bool:
    """Whether "auto" mode adds the full-range model: short-range found no face, or only faces
    smaller than ``SMALL_FACE_FRACTION`` of the image's shorter side."""
    return not short_range or max(min(d.width, d.height) for d in short_range) < (
        SMALL_FACE_FRACTION * short_side
    )


class MediaPipeDetector:
    """BlazeFace detector; not thread-safe (make one per thread).

    ``model``: ``"auto"`` | ``"short"`` | ``"full"``. ``score_threshold`` (0..1, default 0.5)
    is passed to MediaPipe. ``min_size`` drops faces smaller than that many pixels.
    :meth:`detect_small_faces` is the tiled pass for small faces in big photos.
    """

    name = "mediapipe"

    def __init__(
        self,
        *,
        model: str = "auto",
        score_threshold: float = 0.5,
        min_size: float = 0.0,
        pad_retry: bool = True,
        tile_score_threshold: float = 0.6,
    ) -> None:
        if model not in ("auto", *_MODELS):
            raise InputError(f"model must be 'auto', 'short' or 'full', got {model!r}")
        if not 0.0 <= score_threshold <= 1.0:
            raise InputError(f"score_threshold must be in 0..1, got {score_threshold}")
        self.model = model
        self.score_threshold = float(score_threshold)
        self.min_size = float(min_size)
        self.pad_retry = pad_retry
        self.tile_score_threshold = float(tile_score_threshold)
        self._graphs: dict[int, object] = {}

    def _graph(self, selection: int) -> object:
        graph = self._graphs.get(selection)
        if graph is None:
            # quieten MediaPipe's C++ INFO/WARNING lines unless the user configured glog
            os.environ.setdefault("GLOG_minloglevel", "2")
            fd = require(
                "mediapipe.python.solutions.face_detection",
                purpose="the mediapipe face detector",
            )
            # One guarded block from the graph's start to its first frame: the graph opens its
            # calculators (and the TFLite interpreter logs) on its own threads after the
            # constructor returns, so the guard ends only once a frame has gone through.
            with quiet_native_stderr():
                graph = fd.FaceDetection(
                    model_selection=selection, min_detection_confidence=self.score_threshold
                )
                graph.process(np.zeros((64, 64, 3), np.uint8))  # type: ignore[attr-defined]
            self._graphs[selection] = graph
        return graph

    def _run(self, rgb: np.ndarray, selection: int) -> list[Detection]:
        h, w = rgb.shape[:2]
        graph = self._graph(selection)
        result = graph.process(np.ascontiguousarray(rgb))  # type: ignore[attr-defined]
        out: list[Detection] = []
        for det in result.detections or ():
            loc = det.location_data
            bb = loc.relative_bounding_box
            kps = loc.relative_keypoints
            if len(kps) < 4:
                continue
            lm = np.array([[kps[i].x * w, kps[i].y * h] for i in range(4)], dtype=np.float32)
            out.append(
                Detection(
                    bb.xmin * w,
                    bb.ymin * h,
                    (bb.xmin + bb.width) * w,
                    (bb.ymin + bb.height) * h,
                    float(det.score[0]),
                    lm,
                )
            )
        return out

    def _padded(self, rgb: np.ndarray) -> list[Detection]:
        import cv2

        h, w = rgb.shape[:2]
        p = int(round(_PAD_FRACTION * max(h, w)))
        big = cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_REPLICATE)
        return [
            Detection(d.x0 - p, d.y0 - p, d.x1 - p, d.y1 - p, d.score, d.landmarks - np.float32(p))
            for d in self._run(big, 0)
        ]

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in ``rgb`` ``(H, W, 3)`` uint8, left to right."""
        if self.model != "auto":
            dets = self._run(rgb, _MODELS[self.model])
        else:
            dets = self._run(rgb, 0)
            if needs_full_range(dets, min(rgb.shape[:2])):
                dets = dets + self._run(rgb, 1)
            if not dets and self.pad_retry:
                dets = self._padded(rgb)
        return finalize(dets, min_size=self.min_size, score_threshold=self.score_threshold)

    def detect_small_faces(
        self, rgb: np.ndarray, *, tile: int = TILE_SIDE, overlap: float = 0.3
    ) -> list[Detection]:
        """Short-range BlazeFace on overlapping ``tile``-pixel squares of ``rgb``.

        For faces too small for the whole-frame passes (BlazeFace sees the frame at
        128-192 px): a face of about 1/10 of a tile's side is found. Costs one short-range
        run per tile (12 tiles for a 1024x768 image), so the pipeline calls it only for
        large images where the whole-frame passes found no big face. Many looks at one image
        mean more chances of a false positive, so tiles use a stricter score threshold
        (``tile_score_threshold``, default 0.6: on noise images, tile false positives scored
        0.50-0.55; real small faces mostly scored 0.65-0.95).
        """
        h, w = rgb.shape[:2]
        out: list[Detection] = []
        for x, y in tile_origins(w, h, tile, overlap):
            part = np.ascontiguousarray(rgb[y : y + tile, x : x + tile])
            shift = np.float32([x, y])
            out.extend(
                Detection(d.x0 + x, d.y0 + y, d.x1 + x, d.y1 + y, d.score, d.landmarks + shift)
                for d in self._run(part, 0)
            )
        threshold = max(self.score_threshold, self.tile_score_threshold)
        return finalize(out, min_size=self.min_size, score_threshold=threshold)

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()  # type: ignore[attr-defined]
        self._graphs.clear()
