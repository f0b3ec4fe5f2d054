"""Which way up is a photo? The upright check behind the rotation retry.

BlazeFace (the default detector) finds faces in photos stored sideways or upside down, and
places its keypoints as if the face were upright: an upside-down face gets its eyes on the
real eyes and its nose and mouth on the forehead, at a score about as high as an upright
face's. Landmark geometry alone therefore cannot say which way up a face is. This module
weighs evidence that can, per *view* (the photo turned 0, 90, 180 or 270 degrees):

* the detector's score of its best face in that view, and whether that face's landmarks look
  upright (eyes level, mouth below them);
* :func:`labeler.detect.upright_cue`: eyes darker than the nose bridge, cheeks and forehead;
* dlib's HOG frontal-face detector (``dlib.get_frontal_face_detector``, shipped with dlib),
  run on a small square around the face: a linear HOG template of upright faces that answers
  far lower on a face turned by 90 or 180 degrees;
* OpenCV's Haar frontal-face cascade (shipped with OpenCV) on the same square: its stages
  rarely pass a turned face.

:func:`upright_logit` combines them with weights fitted by logistic regression on faces of
the shared sets *not* used by ``bench/bench_rotation.py`` (images 200-400 of MaskedFace-Net,
web photos and realmasks; each photo seen in its 4 turns, "upright" = the turn as stored).
The retry (:func:`choose_orientation`) keeps the photo as stored when its best face is
upright-looking and scores at least :data:`SURE_SCORE`; otherwise it looks at the 3 other
turns and keeps the turn with the highest evidence, the stored one given a head start of
:data:`STORED_MARGIN` (photos are mostly stored upright: a turn must clearly win).

Cost: photos whose face is convincing as stored cost nothing extra; the others one or three
detector calls, plus the evidence (a few ms a view, mostly HOG on a 96 px square) of the
stored view and of turns that found an upright-looking face of ``TURN_MIN_SCORE``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from labeler.detect import (
    Detection,
    Detector,
    face_is_upright,
    rotate_image,
    unrotate_detection,
    upright_cue,
)

#: The photo as stored is kept without looking further when its best face scores at least
#: this and its landmarks look upright (no face turned by 90/180/270 degrees of the shared
#: sets scored this high with upright-looking landmarks but 5 of 1,200 upside-down ones).
SURE_SCORE = 0.85
#: An upright-looking face scoring at least this (but below ``SURE_SCORE``) is upright or
#: upside down: only the photo turned 180 degrees is compared with it.
LIKELY_SCORE = 0.7
#: The stored view's head start (in logit units of :func:`upright_logit`) over the photo
#: turned 180 degrees (``FLIP_MARGIN``) and over all three turns (``STORED_MARGIN``). Photos
#: are mostly stored upright: a turn must clearly win. Chosen on images 200-400 of the
#: shared sets (``bench/bench_rotation.py`` reads images 0-200), trading photos found
#: upright against photos stored upright that get turned (2 of ~580 there).
FLIP_MARGIN = 3.0
STORED_MARGIN = 3.0
#: A turn can win only with an upright-looking face scoring at least this (HOG and Haar
#: alone turned blurred profile faces of the web sets that were stored upright).
TURN_MIN_SCORE = 0.7
#: The square around a face that the HOG and Haar detectors look at: the box side times
#: this, resized to ``REGION_SIDE`` px (faces of ~60 px: both detectors need >= 24-80 px).
REGION_EXPAND = 1.6
REGION_SIDE = 96
#: No detection (HOG / Haar) in the square reads as this score.
HOG_NONE = -2.5
HAAR_NONE = -1.0

#: Logistic-regression weights of :func:`upright_logit` (see the module docstring).
WEIGHTS = {
    "score_if_upright": 2.72,
    "score": 3.34,
    "cue": 0.75,
    "hog": 1.78,
    "haar_found": -0.04,
    "haar_level": 1.97,
}

_local = threading.local()


@dataclass(frozen=True)
class UprightEvidence:
    """What one view of a photo says about its best face (see the module docstring).

    ``score``: detector score (0 when no face); ``landmarks_upright``: eyes level, mouth below;
    ``cue``: :func:`labeler.detect.upright_cue` (typical -3..3); ``hog``: dlib HOG detector
    score in the face's square (``HOG_NONE`` when nothing); ``haar``: OpenCV Haar cascade
    level weight (``HAAR_NONE`` when nothing).
    """

    score: float
    landmarks_upright: bool
    cue: float
    hog: float
    haar: float

    @property
    def logit(self) -> float:
        return upright_logit(self)


NO_FACE = UprightEvidence(0.0, False, 0.0, HOG_NONE, HAAR_NONE)


def upright_logit(ev: UprightEvidence) -> float:
    """How much the evidence says "an upright face", in logit units (higher: more)."""
    w = WEIGHTS
    return float(
        w["score_if_upright"] * ev.score * ev.landmarks_upright
        + w["score"] * ev.score
        + w["cue"] * np.tanh(ev.cue)
        + w["hog"] * ev.hog
        + w["haar_found"] * (ev.haar > HAAR_NONE)
        + w["haar_level"] * np.log1p(max(ev.haar, 0.0))
    )


def _models() -> tuple[object, object]:
    """This thread's dlib HOG detector and OpenCV Haar cascade (neither is thread-safe)."""
    models = getattr(_local, "models", None)
    if models is None:
        import cv2
        import dlib

        cascade = cv2.CascadeClassifier(
            cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        )
        if cascade.empty():
            raise FileNotFoundError(
                "OpenCV's haarcascade_frontalface_default.xml is missing from "
                f"{cv2.data.haarcascades}; reinstall opencv-contrib-python"
            )
        models = _local.models = (dlib.get_frontal_face_detector(), cascade)
    return models


def face_square(rgb: np.ndarray, d: Detection) -> np.ndarray:
    """``(REGION_SIDE, REGION_SIDE, 3)`` uint8: the square of side ``REGION_EXPAND`` x the
    box's longer side around the box centre, edges replicated."""
    import cv2

    cx, cy = (d.x0 + d.x1) / 2, (d.y0 + d.y1) / 2
    half = REGION_EXPAND * max(d.width, d.height, 1.0) / 2
    f = REGION_SIDE / (2 * half)
    m = np.float32([[f, 0, REGION_SIDE / 2 - f * cx], [0, f, REGION_SIDE / 2 - f * cy]])
    return cv2.warpAffine(
        rgb,
        m,
        (REGION_SIDE, REGION_SIDE),
        flags=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def upright_evidence(rgb: np.ndarray, dets: list[Detection]) -> UprightEvidence:
    """The evidence of the best-scoring face of ``dets`` found in ``rgb`` (H, W, 3) uint8
    (one view), :data:`NO_FACE` when there is none."""
    import cv2

    d = _best(dets)
    if d is None:
        return NO_FACE
    hog, cascade = _models()
    square = face_square(rgb, d)
    _, scores, _ = hog.run(square, 0, HOG_NONE)  # type: ignore[attr-defined]
    grey = cv2.cvtColor(square, cv2.COLOR_RGB2GRAY)
    _, _, levels = cascade.detectMultiScale3(  # type: ignore[attr-defined]
        grey, scaleFactor=1.1, minNeighbors=0, minSize=(30, 30), outputRejectLevels=True
    )
    return UprightEvidence(
        score=float(d.score),
        landmarks_upright=face_is_upright(d),
        cue=upright_cue(rgb, d),
        hog=float(max(scores)) if len(scores) else HOG_NONE,
        haar=float(np.max(levels)) if len(levels) else HAAR_NONE,
    )


def is_sure(dets: list[Detection]) -> bool:
    """Whether the photo as stored needs no upright check: its best face looks upright and
    scores at least :data:`SURE_SCORE`."""
    best = _best(dets)
    return bool(best is not None and best.score >= SURE_SCORE and face_is_upright(best))


@dataclass(frozen=True)
class Orientation:
    """The outcome of :func:`choose_orientation`: ``rotation`` (degrees clockwise that make
    the photo upright, 0 = as stored), the faces in the photo's own pixels, the evidence per
    turn looked at, and the detector calls made beyond the first pass."""

    rotation: int
    detections: list[Detection]
    evidence: dict[int, UprightEvidence]
    extra_calls: int


def choose_orientation(detector: Detector, rgb: np.ndarray, first: list[Detection]) -> Orientation:
    """Which turn of ``rgb`` (H, W, 3) shows its faces upright, given the pass ``first`` on
    the photo as stored.

    * Sure (:func:`is_sure`: an upright-looking face scoring >= ``SURE_SCORE``): kept as
      stored, no extra detector call.
    * An upright-looking face scoring >= ``LIKELY_SCORE``: it is either upright or upside
      down (BlazeFace places keypoints as if upright), so only the photo turned 180 degrees
      is tried (1 call); it wins when its :func:`upright_logit` beats the stored one's by
      ``FLIP_MARGIN``.
    * Otherwise the photo turned 90, 180 and 270 degrees is tried (3 calls) and the turn with
      the highest :func:`upright_logit` wins, the stored turn counting ``STORED_MARGIN`` more.

    A turn can only win with an upright-looking face scoring >= ``TURN_MIN_SCORE``.

    Faces of a winning turn keep only those whose landmarks look upright, mapped back to
    ``rgb``'s pixels (``Detection.rotation`` records the turn).

    >>> o = choose_orientation(get_detector("mediapipe"), rgb, first)  # doctest: +SKIP
    >>> o.rotation, len(o.detections), o.extra_calls  # doctest: +SKIP
    """
    if is_sure(first):
        return Orientation(0, first, {}, 0)
    h, w = rgb.shape[:2]
    stored = _best(first)
    likely = stored is not None and face_is_upright(stored) and stored.score >= LIKELY_SCORE
    turns = (180,) if likely else (90, 180, 270)
    views: dict[int, tuple[np.ndarray, list[Detection]]] = {}
    for rotation in turns:
        turned = rotate_image(rgb, rotation)
        found = detector.detect(turned)
        best = _best(found)
        # a turn can only win with an upright-looking face of TURN_MIN_SCORE: look no further
        if best is not None and face_is_upright(best) and best.score >= TURN_MIN_SCORE:
            views[rotation] = (turned, found)
    if not views:
        return Orientation(0, first, {}, len(turns))
    evidence = {0: upright_evidence(rgb, first)}
    evidence.update({r: upright_evidence(img, found) for r, (img, found) in views.items()})
    margin = FLIP_MARGIN if likely else STORED_MARGIN
    logits = {r: ev.logit + (margin if r == 0 else 0.0) for r, ev in evidence.items()}
    win = max(logits, key=lambda r: logits[r])
    dets = [] if win == 0 else [unrotate_detection(d, win, w, h) for d in views[win][1]
                                if face_is_upright(d)]  # fmt: skip
    if not dets:
        return Orientation(0, first, evidence, len(turns))
    return Orientation(win, dets, evidence, len(turns))


def _best(dets: list[Detection]) -> Detection | None:
    faces = [d for d in dets if not d.whole_image]
    return max(faces, key=lambda d: d.score) if faces else None


def detect_rotated(
    detector: Detector, rgb: np.ndarray, first: list[Detection]
) -> tuple[list[Detection], int]:
    """:func:`choose_orientation` as ``(detections, extra detector calls)``: the faces of
    ``rgb`` (H, W, 3) as stored or from the turn that shows them upright, in ``rgb``'s pixels.

    >>> dets, extra = detect_rotated(get_detector("mediapipe"), rgb, [])  # doctest: +SKIP
    """
    o = choose_orientation(detector, rgb, first)
    return o.detections, o.extra_calls
