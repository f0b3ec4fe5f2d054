"""Similarity alignment onto the crop template."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeler.faces.align import align_face, alignment_matrix, project, similarity_transform
from labeler.faces.regions import CROP_SIZE, TEMPLATE


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


@settings(max_examples=60, deadline=None)
@given(
    angle=st.floats(-math.pi, math.pi),
    scale=st.floats(0.05, 20.0),
    tx=st.floats(-500, 500),
    ty=st.floats(-500, 500),
    seed=st.integers(0, 10_000),
)
def test_similarity_transform_recovers_exact_similarity(angle, scale, tx, ty, seed):
    src = np.random.default_rng(seed).uniform(-100, 100, (4, 2))
    m = _similarity(angle, scale, tx, ty)
    dst = project(src, m)
    est = similarity_transform(src, dst)
    np.testing.assert_allclose(est, m, rtol=1e-4, atol=1e-3 * max(1.0, scale))


def test_similarity_never_reflects_and_is_least_squares():
    src = np.array([[0, 0], [1, 0], [0.5, 1], [0.5, 2]], float)
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0  # a rotation+scale, not a reflection
    rng = np.random.default_rng(0)
    noisy = project(src, _similarity(0.3, 2.0, 5, -3)) + rng.normal(0, 0.05, (4, 2))
    best = similarity_transform(src, noisy)
    err = ((project(src, best) - noisy) ** 2).sum()
    for _ in range(200):  # no nearby similarity fits better
        p = best + rng.normal(0, 0.01, (2, 3)) * [[1, 0, 1], [0, 1, 1]]
        p[1, 1], p[1, 0] = p[0, 0], -p[0, 1]
        assert ((project(src, p) - noisy) ** 2).sum() >= err - 1e-9
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((4, 2)), src)


def _dots_image(points: np.ndarray, shape: tuple[int, int], radius: int) -> np.ndarray:
    """White background with one coloured disc per landmark."""
    import cv2

    img = np.full((*shape, 3), 255, np.uint8)
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (200, 0, 200)]
    for (x, y), c in zip(points, colours, strict=True):
        cv2.circle(img, (round(x), round(y)), radius, c, -1, lineType=cv2.LINE_AA)
    return img


def _centroid(crop: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    d = np.abs(crop.astype(int) - colour).sum(-1)
    ys, xs = np.nonzero(d < 120)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(
    ("angle", "scale", "shape"),
    [(0.0, 1.0, (300, 300)), (0.5, 0.6, (400, 500)), (-1.2, 3.5, (1200, 1100))],
)
def test_align_face_puts_landmarks_on_template(angle, scale, shape):
    # landmarks = template placed in the image by a known similarity
    m = _similarity(angle, scale, shape[1] / 2, shape[0] / 2)
    lm = project(TEMPLATE * CROP_SIZE - CROP_SIZE / 2, m)
    img = _dots_image(lm, shape, radius=max(3, round(6 * scale)))
    crop = align_face(img, lm)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (200, 0, 200)]
    for target, c in zip(TEMPLATE * CROP_SIZE, colours, strict=True):
        np.testing.assert_allclose(_centroid(crop, c), target, atol=1.5)
    small = align_face(img, lm, size=112)
    assert small.shape == (112, 112, 3)


def test_big_faces_are_shrunk_without_aliasing():
    # 1-px black/white stripes: any honest 3.5x reduction is mid-grey
    stripes = np.zeros((1000, 1000, 3), np.uint8)
    stripes[:, ::2] = 255
    lm = TEMPLATE * CROP_SIZE * 3.5 + 20
    crop = align_face(stripes, lm).astype(float)
    assert abs(crop.mean() - 127.5) < 6 and crop.std() < 20
    # the naive single bilinear warp aliases into strong moire on the same input
    import cv2

    naive = cv2.warpAffine(stripes, alignment_matrix(lm), (CROP_SIZE, CROP_SIZE)).astype(float)
    assert naive.std() > 3 * crop.std()
