"""Face detectors behind one registry, all reporting 4 landmarks in ``LANDMARK_NAMES`` order.

>>> det = get_detector("mediapipe", score_threshold=0.5)  # doctest: +SKIP
>>> [d.box for d in det.detect(rgb)]  # doctest: +SKIP

Registering a detector imports nothing: :data:`DETECTORS` maps a name to
``"module:Class"`` and :func:`get_detector` imports the module on first use. A detector is
any object with ``name: str`` and ``detect(rgb) -> list[Detection]``; ``rgb`` is
``(H, W, 3)`` uint8. Detectors are not thread-safe: make one per worker thread.

Conventions shared by every detector (enforced by :func:`finalize`):

* ``left_eye`` is the eye with the smaller x in the image, ``right_eye`` the other one.
* Faces narrower or shorter than ``min_size`` pixels, or scoring below ``score_threshold``,
  are dropped; overlapping boxes (IoU > 0.45) keep the higher score.
* Faces are ordered by box centre x, then y (left to right), which fixes ``face_index``.
* An image stands in whole for a face only when its shorter side is at least
  :data:`MIN_FACE_SIDE` (8) pixels.

The per-image pipeline (decode at reduced size, detect, align, crop) and the workspace step
live in :mod:`labeler.detect.pipeline`; ``detect_and_align``, ``detect_workspace`` and
``iter_crops`` are importable from here too (loaded on first use).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from labeler.errors import InputError
from labeler.faces.regions import TEMPLATE

N_LANDMARKS = len(TEMPLATE)  # == len(labeler.workspace.LANDMARK_NAMES); no pandas import here

#: name -> "module:Class"; add entries with :func:`register_detector`.
DETECTORS: dict[str, str] = {
    "mediapipe": "labeler.detect.mediapipe:MediaPipeDetector",
    "mtcnn": "labeler.detect.mtcnn:MtcnnDetector",
    "haar": "labeler.detect.haar:HaarDetector",
    "none": "labeler.detect:WholeImageDetector",
}

DEFAULT_DETECTOR = "mediapipe"

#: Images whose longest side is at most this, or whose sides are within this ratio, may be
#: face crops already; see :func:`looks_like_face_crop`.
CROP_LIKE_MAX_SIDE = 256
CROP_LIKE_MAX_ASPECT = 1.5
CROP_LIKE_MAX_SQUARE_SIDE = 640
#: The whole image stands in for a face (the fallback, or ``--detector none``) only when its
#: shorter side is at least this many pixels: a smaller image is no face anyone can label
#: (a 1x1 px file became one). Measured on ``realmasks`` (2,009 real web face crops, box +
#: 20 %, not resized): masks still show in its 9x11, 9x16 and 9x18 px crops, so the floor
#: sits below them; 1 crop (4x11 px, a sliver) is under it, 22 would be under 16 px.
#: Detected faces have their own floor, ``min_size`` (``labeler detect --min-size``, 20).
MIN_FACE_SIDE = 8


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in source-image pixels.

    ``landmarks`` is ``(4, 2)`` float32 in ``LANDMARK_NAMES`` order (left eye = smaller x,
    right eye, nose tip, mouth centre). ``whole_image`` marks the fallback where no face was
    found and the whole (crop-like) image stands in for one. ``rotation`` (0, 90, 180, 270)
    is how many degrees clockwise the photo was turned for the detector to find this face
    upright (a sideways phone photo without EXIF rotation): box and landmarks are still in the
    photo's own pixels, the eyes ordered as in the upright view, so the alignment (a
    similarity transform from the landmarks) yields an upright crop from the photo itself.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    landmarks: np.ndarray
    whole_image: bool = False
    rotation: int = 0

    def __post_init__(self) -> None:
        lm = np.array(self.landmarks, dtype=np.float32).reshape(N_LANDMARKS, 2)
        lm.setflags(write=False)
        object.__setattr__(self, "landmarks", lm)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    def scaled(self, sx: float, sy: float) -> Detection:
        """The same detection in an image scaled by ``(sx, sy)`` (new = old * s)."""
        return Detection(
            self.x0 * sx,
            self.y0 * sy,
            self.x1 * sx,
            self.y1 * sy,
            self.score,
            self.landmarks * np.array([sx, sy], dtype=np.float32),
            self.whole_image,
            self.rotation,
        )


class Detector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


def register_detector(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name`` (nothing is imported now)."""
    if ":" not in target:
        raise ValueError(f"detector target must look like 'package.module:Class', got {target!r}")
    DETECTORS[name] = target


def available_detectors() -> list[str]:
    """Registered detector names (whether or not their dependencies are installed)."""
    return list(DETECTORS)


def get_detector(name: str = DEFAULT_DETECTOR, **options: object) -> Detector:
    """Build the detector registered as ``name`` with ``options`` (e.g. ``min_size``,
    ``score_threshold``). Raises ``ValueError`` for an unknown name and
    ``labeler._deps.MissingDependency`` when its package is not installed."""
    try:
        target = DETECTORS[name]
    except KeyError:
        raise InputError(
            f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}"
        ) from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls(**options)


# --- helpers shared by the detectors ---------------------------------------------------------


def template_landmarks(box: tuple[float, float, float, float]) -> np.ndarray:
    """The template's 4 landmarks placed in a square ``box`` ``(x0, y0, x1, y1)``: ``(4, 2)``."""
    x0, y0, x1, y1 = box
    return (TEMPLATE * np.array([x1 - x0, y1 - y0], dtype=np.float32) + [x0, y0]).astype(np.float32)


def whole_image_detection(width: int, height: int) -> Detection:
    """The whole image as one face: template landmarks on the centred square of side
    ``min(width, height)`` (a portrait face crop loses a little forehead and chin, a
    landscape one a little of the sides)."""
    side = float(min(width, height))
    x0, y0 = (width - side) / 2, (height - side) / 2
    box = (x0, y0, x0 + side, y0 + side)
    return Detection(0.0, 0.0, float(width), float(height), 0.0, template_landmarks(box), True)


def looks_like_face_crop(width: int, height: int) -> bool:
    """Whether an image with no detected face may itself be a face crop.

    Rule: small (longest side <= ``CROP_LIKE_MAX_SIDE`` = 256 px), or roughly square (long
    side / short side <= ``CROP_LIKE_MAX_ASPECT`` = 1.5) and at most
    ``CROP_LIKE_MAX_SQUARE_SIDE`` = 640 px. Photos of scenes come from cameras at 1000+ px;
    crops cut around a face are small, and square to 2:3 portrait.
    """
    long_side, short_side = max(width, height), max(1, min(width, height))
    if long_side <= CROP_LIKE_MAX_SIDE:
        return True
    return long_side / short_side <= CROP_LIKE_MAX_ASPECT and long_side <= CROP_LIKE_MAX_SQUARE_SIDE


def order_eyes(landmarks: np.ndarray) -> np.ndarray:
    """Swap the first two points so that ``left_eye`` has the smaller x: ``(4, 2)``."""
    lm = np.array(landmarks, dtype=np.float32).reshape(N_LANDMARKS, 2)
    if lm[0, 0] > lm[1, 0]:
        lm[[0, 1]] = lm[[1, 0]]
    return lm


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def finalize(
    detections: list[Detection],
    *,
    min_size: float = 0.0,
    score_threshold: float = 0.0,
    iou_threshold: float = 0.45,
) -> list[Detection]:
    """Apply the shared conventions: order eyes, drop small/weak faces, suppress overlaps
    (greedy NMS by score), sort left to right."""
    kept: list[Detection] = []
    cands = [
        Detection(
            d.x0, d.y0, d.x1, d.y1, d.score, order_eyes(d.landmarks), d.whole_image, d.rotation
        )
        for d in detections
        if d.score >= score_threshold and min(d.width, d.height) >= min_size
    ]
    for d in sorted(cands, key=lambda d: -d.score):
        if all(box_iou(d.box, k.box) <= iou_threshold for k in kept):
            kept.append(d)
    return sorted(kept, key=lambda d: (round((d.x0 + d.x1) / 2, 1), round((d.y0 + d.y1) / 2, 1)))


# --- sideways and upside-down photos -----------------------------------------------------------

#: An upright face's eye line is within this many degrees of horizontal, and the line from
#: the eyes' midpoint to the mouth within this many degrees of straight down.
MAX_TILT_DEG = 35.0


def face_is_upright(d: Detection) -> bool:
    """Whether the landmarks look like an upright face: eyes level (within ``MAX_TILT_DEG``)
    and the mouth below the eyes (within ``MAX_TILT_DEG`` of straight down)."""
    lm = np.asarray(d.landmarks, dtype=np.float64)
    eye = lm[1] - lm[0]
    if np.hypot(*eye) < 1e-6:
        return False
    tilt = np.degrees(np.arctan2(abs(eye[1]), abs(eye[0])))
    down = lm[3] - (lm[0] + lm[1]) / 2
    if np.hypot(*down) < 1e-6:
        return False
    off_vertical = np.degrees(np.arctan2(abs(down[0]), down[1]))  # 0: straight down
    return bool(tilt <= MAX_TILT_DEG and off_vertical <= MAX_TILT_DEG)


def upright_cue(rgb: np.ndarray, d: Detection) -> float:
    """How much more the face ``d`` of ``rgb`` (H, W, 3) looks upright than upside down, from
    its aligned grey crop (standardised): the eyes darker than the nose bridge between them,
    the cheeks below them and the forehead above, compared with the same crop turned 180
    degrees. Positive: upright. Typical range -3..3. Weak alone (BlazeFace's keypoints on an
    upside-down face put the forehead where the cheeks should be: the cue is positive on
    about two thirds of those); one of the inputs of :mod:`labeler.detect.upright`.
    """
    from labeler.faces.align import align_face

    crop = align_face(rgb, d.landmarks, size=64).astype(np.float32).mean(axis=2)
    g = (crop - crop.mean()) / (crop.std() + 1e-3)

    def eye_contrast(a: np.ndarray) -> float:
        eyes = (a[23:28, 19:27].mean() + a[23:28, 37:45].mean()) / 2
        bridge = a[23:28, 29:35].mean()
        cheeks = a[29:34, 18:46].mean()
        forehead = a[14:19, 19:45].mean()
        return float(bridge + cheeks + forehead - 3 * eyes)

    return eye_contrast(g) - eye_contrast(g[::-1, ::-1])


def rotate_image(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """``rgb`` (H, W, C) turned ``rotation`` degrees clockwise (a multiple of 90)."""
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    return np.ascontiguousarray(np.rot90(rgb, k=-(rotation // 90) % 4))


def unrotate_points(points: np.ndarray, rotation: int, width: int, height: int) -> np.ndarray:
    """Map ``(N, 2)`` pixel coordinates in the photo turned ``rotation`` degrees clockwise back
    to the photo's own ``width x height`` pixels (exact inverse of :func:`rotate_image`)."""
    p = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    r = rotation % 360
    if r == 0:
        out = np.column_stack([x, y])
    elif r == 90:
        out = np.column_stack([y, height - x])
    elif r == 180:
        out = np.column_stack([width - x, height - y])
    elif r == 270:
        out = np.column_stack([width - y, x])
    else:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    return out.astype(np.float32)


def unrotate_detection(d: Detection, rotation: int, width: int, height: int) -> Detection:
    """A detection made on the photo turned ``rotation`` degrees clockwise, in the photo's own
    ``width x height`` pixels: the box is the turned box's bounding box, the landmarks keep
    their upright order, ``rotation`` records the turn."""
    corners = unrotate_points(np.array([[d.x0, d.y0], [d.x1, d.y1]]), rotation, width, height)
    (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
    lm = unrotate_points(d.landmarks, rotation, width, height)
    return Detection(
        float(x0), float(y0), float(x1), float(y1), d.score, lm, d.whole_image, rotation % 360
    )


class WholeImageDetector:
    """``none``: the folder already holds face crops; every image is one face."""

    name = "none"

    def __init__(self, **_: object) -> None:
        pass

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        return [whole_image_detection(w, h)]
