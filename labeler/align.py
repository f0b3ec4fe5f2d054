"""Similarity alignment of a face onto the crop template (``labeler.regions.TEMPLATE``).

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

from labeler.regions import CROP_SIZE, TEMPLATE

#: Eye distance (pixels) in an aligned crop of side ``CROP_SIZE``.
CROP_EYE_DISTANCE = float((TEMPLATE[1, 0] - TEMPLATE[0, 0]) * CROP_SIZE)

_MAX_SUPERSAMPLE = 4


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


def align_face(rgb: np.ndarray, landmarks: np.ndarray, *, size: int = CROP_SIZE) -> np.ndarray:
    """Warp the face with ``landmarks`` (``(4, 2)``, ``LANDMARK_NAMES`` order, pixels of
    ``rgb`` ``(H, W, 3)`` uint8) to a ``(size, size, 3)`` uint8 aligned crop."""
    import cv2

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
        borderMode=cv2.BORDER_REPLICATE,
    )
    if k > 1:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop


def project(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine ``matrix`` to ``(N, 2)`` points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
