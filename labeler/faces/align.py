"""Similarity alignment of a face onto the crop template (``labeler.faces.regions.TEMPLATE``).

A closed-form least-squares similarity (Umeyama 1991: rotation, uniform scale,
translation; no shear, no reflection) maps the 4 detected landmarks onto
``TEMPLATE * size``; the crop is warped with bilinear sampling and a replicated border.
When the warp shrinks the face by more than 1.5x the image is warped at an integer
multiple of ``size`` first and area-averaged down, so small crops of big faces do not alias.

>>> crop = align_face(rgb, landmarks)  # doctest: +SKIP
>>> crop.shape
(256, 256, 3)
"""

from __future__ import annotations

import math

import numpy as np

from labeler.faces.regions import CROP_SIZE, TEMPLATE

#: Eye distance (pixels) in an aligned crop of side ``CROP_SIZE``.
CROP_EYE_DISTANCE = float((TEMPLATE[1, 0] - TEMPLATE[0, 0]) * CROP_SIZE)

_MAX_SUPERSAMPLE = 4

#: Margin added on every side of a detection box for the box crop (fraction of its side).
BOX_MARGIN = 0.2
#: Fill of crop pixels outside the photo (``border="constant"``): a neutral mid grey.
BORDER_VALUE = (124, 116, 104)

# offsets (in the upright face's frame) -> offsets in the photo, for a face turned by
# 0/90/180/270 degrees clockwise (labeler.detect.rotate_image / unrotate_points)
_TURN = {
    0: np.array([[1, 0], [0, 1]], np.float32),
    90: np.array([[0, 1], [-1, 0]], np.float32),
    180: np.array([[-1, 0], [0, -1]], np.float32),
    270: np.array([[0, -1], [1, 0]], np.float32),
}


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The ``(2, 3)`` similarity matrix ``M`` minimising ``sum |M @ [src, 1] - dst|^2``.

    ``src``, ``dst``: ``(N, 2)`` with ``N >= 2`` corresponding points (Umeyama's closed form,
    reflections excluded).
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(
            f"need two (N>=2, 2) point sets of equal shape, got {src.shape}, {dst.shape}"
        )
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("the source landmarks coincide; cannot align a face to them")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign)) / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def alignment_matrix(landmarks: np.ndarray, *, size: int = CROP_SIZE) -> np.ndarray:
    """``(2, 3)`` matrix taking image pixels to crop pixels for ``(4, 2)`` ``landmarks``."""
    return similarity_transform(landmarks, TEMPLATE * size)


def align_face(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    *,
    size: int = CROP_SIZE,
    border: str = "replicate",
) -> np.ndarray:
    """Warp the face with ``landmarks`` (``(4, 2)``, ``LANDMARK_NAMES`` order, pixels of
    ``rgb`` ``(H, W, 3)`` uint8) to a ``(size, size, 3)`` uint8 aligned crop.

    border: ``replicate`` (edge pixels smeared outward) or ``constant`` (a neutral grey,
    :data:`BORDER_VALUE`: no streaks that look like fabric where a face meets the photo edge).
    """
    import cv2

    if border not in ("replicate", "constant"):
        raise ValueError(f"border must be 'replicate' or 'constant', got {border!r}")

    m = alignment_matrix(landmarks, size=size)
    shrink = 1.0 / math.hypot(m[0, 0], m[0, 1])  # source pixels per crop pixel
    k = min(_MAX_SUPERSAMPLE, int(math.ceil(shrink))) if shrink > 1.5 else 1
    out_size = size * k
    mk = m * k
    mk[:, 2] += (k - 1) / 2  # pixel centres: crop pixel i is the mean of k*i .. k*i + k-1
    crop = cv2.warpAffine(
        np.ascontiguousarray(rgb),
        mk,
        (out_size, out_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT,
        borderValue=BORDER_VALUE,
    )
    if k > 1:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop


def box_landmarks(
    box: tuple[float, float, float, float], *, rotation: int = 0, margin: float = BOX_MARGIN
) -> np.ndarray:
    """Pseudo-landmarks ``(4, 2)`` that make :func:`align_face` cut the *box crop* of a face:
    the square of side ``max(w, h) * (1 + 2 * margin)`` centred on the detection ``box``
    ``(x0, y0, x1, y1)``, upright (turned back by ``rotation``, the face's
    ``Detection.rotation``), scaled but not rotated or placed by the face's own landmarks.

    Landmarks under a mask, in profile or in blur are often wrong, and the aligned crop
    inherits every error (an ear or a cheek filling the crop); the box crop only trusts the
    box. The template's eye distance in a box of side 1.4x a BlazeFace box matches that of
    the aligned crops, so both show a face at about the same scale.
    """
    if rotation % 360 not in _TURN:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1e-3) * (1.0 + 2.0 * margin)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    offsets = (TEMPLATE - 0.5) * side  # template points around the square's centre
    return (centre + offsets @ _TURN[rotation % 360].T).astype(np.float32)


def upright_turn(landmarks: np.ndarray) -> int:
    """The right angle (0/90/180/270, as ``Detection.rotation``) that turns the face with
    ``landmarks`` ``(4, 2)`` upright: the one that best points the eyes -> mouth line down.
    Robust to landmark noise (only a guess off by more than 45 degrees changes it); a
    sideways face found without a turned retry still gives an upright box crop."""
    lm = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
    down = lm[3] - (lm[0] + lm[1]) / 2
    return max(_TURN, key=lambda r: float(down @ (_TURN[r] @ np.float32([0.0, 1.0]))))


def box_crop(
    rgb: np.ndarray,
    box: tuple[float, float, float, float],
    *,
    rotation: int = 0,
    size: int = CROP_SIZE,
    margin: float = BOX_MARGIN,
) -> np.ndarray:
    """The box crop ``(size, size, 3)`` uint8 of a face (see :func:`box_landmarks`); pixels
    beyond the photo's edge are grey, not smeared."""
    lm = box_landmarks(box, rotation=rotation, margin=margin)
    return align_face(rgb, lm, size=size, border="constant")


def project(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine ``matrix`` to ``(N, 2)`` points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
