"""BlazeFaceTorch (the short-range tflite re-run in PyTorch) against MediaPipe's own graph.

Mostly both detectors get the same 128x128 RGB image, so MediaPipe's letterbox resize is an
identity and any difference comes from the network or the post-processing; a few tests feed
larger and non-square images to check the letterbox sampling and the mapping back too.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from labeler.detect import get_detector
from labeler.detect.blazeface import (
    SHORT_RANGE_INPUT,
    BlazeFaceTorch,
    short_range_model_path,
    ssd_anchors_short_range,
    weighted_nms,
)

# Measured max differences, torch vs MediaPipe, over every comparison below (36 faces):
# boxes/landmarks 4.6e-5 px on images up to 512 px, 1.8e-4 px at 1024 px; scores 3.6e-7.
# Bounds ~10x over that (float32 on another CPU); a 0.1 px shift of the anchor grid fails.
PX_TOL = 2e-3
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def ours() -> BlazeFaceTorch:
    return BlazeFaceTorch()


@pytest.fixture(scope="module")
def theirs():
    det = get_detector("mediapipe", model="short")
    yield det
    det.close()


def _to128(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        cv2.resize(rgb, (SHORT_RANGE_INPUT, SHORT_RANGE_INPUT), interpolation=cv2.INTER_AREA)
    )


def _astronaut_variants() -> dict[str, np.ndarray]:
    from skimage import data

    img = data.astronaut()  # 512x512, one face near the top
    return {
        "full": _to128(img),
        "flip": _to128(img[:, ::-1]),
        "face_crop": _to128(img[0:256, 100:356]),
        "face_crop_flip": _to128(img[0:256, 100:356][:, ::-1]),
        "tight_crop": _to128(img[20:220, 130:330]),
        "offset_crop": _to128(img[0:320, 0:320]),
        "noise": np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8),
    }


def _compare(ours: BlazeFaceTorch, theirs, img: np.ndarray) -> tuple[int, float, float, float]:
    """Assert both detectors agree on ``img``; return (faces, box, landmark, score) max diffs."""
    a, b = ours.detect(img), theirs.detect(img)
    assert len(a) == len(b), f"torch found {len(a)} faces, mediapipe {len(b)}"
    db = dl = ds = 0.0
    for p, q in zip(a, b, strict=True):
        db = max(db, float(np.abs(np.subtract(p.box, q.box)).max()))
        dl = max(dl, float(np.abs(p.landmarks - q.landmarks).max()))
        ds = max(ds, abs(p.score - q.score))
    assert db <= PX_TOL and dl <= PX_TOL and ds <= SCORE_TOL, (db, dl, ds)
    return len(a), db, dl, ds


def test_anchors():
    a = ssd_anchors_short_range()
    assert a.shape == (896, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a[0], [1 / 32, 1 / 32])
    np.testing.assert_allclose(a[1], [1 / 32, 1 / 32])  # 2 anchors per 16x16 cell
    np.testing.assert_allclose(a[2], [3 / 32, 1 / 32])
    np.testing.assert_allclose(a[512], [1 / 16, 1 / 16])  # 8x8 grid, 6 anchors per cell
    np.testing.assert_allclose(a[517], [1 / 16, 1 / 16])
    np.testing.assert_allclose(a[-1], [15 / 16, 15 / 16])


def test_model_file_and_outputs(ours):
    assert short_range_model_path().name == "face_detection_short_range.tflite"
    x = torch.zeros(3, 128, 128, 3)
    with torch.inference_mode():
        out = ours.net(x)
    assert out["regressors"].shape == (3, 896, 16)
    assert out["classificators"].shape == (3, 896, 1)


@pytest.mark.parametrize("name", list(_astronaut_variants()))
def test_matches_mediapipe_astronaut(ours, theirs, name):
    img = _astronaut_variants()[name]
    n, *_ = _compare(ours, theirs, img)
    if name != "noise":
        assert n >= 1


def test_weighted_nms_is_exercised(ours):
    """Several anchors fire on the astronaut's face and merge into one weighted box, which
    differs from the best single anchor by more than the tolerance (so a plain NMS would fail
    the comparisons above)."""
    x = torch.from_numpy(ours.preprocess(_astronaut_variants()["full"])[0])[None]
    with torch.inference_mode():
        out = ours.net(x, nchw=True)
        scores, boxes = ours._decode(out["regressors"], out["classificators"])
    keep = scores[0] >= ours.score_threshold
    assert int(keep.sum()) >= 3
    best = boxes[0][keep][scores[0][keep].argmax()].numpy()
    merged = ours.detect_batch(x)[0]
    assert len(merged) == 1
    assert np.abs(best - merged[0, 1:]).max() * SHORT_RANGE_INPUT > PX_TOL


def test_matches_mediapipe_shared_faces(ours, theirs, maskedfacenet_1024):
    files = sorted((maskedfacenet_1024 / "images").iterdir())
    files = files[:: max(1, len(files) // 20)][:20]
    found = 0
    for k, f in enumerate(files):
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        n, *_ = _compare(ours, theirs, _to128(rgb))
        found += n > 0
        if k % 4 == 0:  # and at full size (1024 px): MediaPipe's own downscale
            _compare(ours, theirs, rgb)
    assert found >= len(files) // 2  # these are face photos: most must be found


def test_batch_equals_single_calls(ours):
    imgs = list(_astronaut_variants().values())
    x = torch.stack([torch.from_numpy(ours.preprocess(img)[0]) for img in imgs])  # (N, 3, 128, 128)
    batch = ours.detect_batch(x)
    assert len(batch) == len(imgs)
    for i, rows in enumerate(batch):
        single = ours.detect_batch(x[i : i + 1])[0]
        assert rows.dtype == np.float32 and rows.shape[1] == 17
        assert rows.shape == single.shape
        np.testing.assert_allclose(rows, single, atol=1e-4)
        assert np.all(np.diff(rows[:, 0]) <= 0)  # score descending
    assert any(len(r) for r in batch)


@pytest.mark.parametrize(
    "crop",
    [
        (slice(None), slice(None)),  # 512 x 512, downscaled 4x
        (slice(None), slice(64, 448)),  # 512 x 384 portrait: padded left and right
        (slice(0, 300), slice(None)),  # 300 x 512 landscape: padded top and bottom
        (slice(10, 343), slice(120, 331)),  # 333 x 211, odd sides, non-integer scale
    ],
)
def test_matches_mediapipe_any_size(ours, theirs, crop):
    """Letterboxing, sampling and the mapping back to image pixels are MediaPipe's."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[crop])
    n, *_ = _compare(ours, theirs, img)
    assert n == 1


def test_preprocess_samples_like_mediapipe(ours):
    """MediaPipe's warp samples output pixel i at source i * side / 128 (no half-pixel shift):
    for an integer factor that is plain strided sampling, not cv2.resize's blend."""
    rgb = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    x, (left, top, side) = ours.preprocess(rgb)
    assert (left, top, side) == (0.0, 0.0, 512.0)
    expected = rgb[::4, ::4].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_allclose(x, expected, atol=1e-6)
    # letterbox: a 512 x 256 image fills rows 32..95; the rest is -1 (zero pixels)
    x, (left, top, side) = ours.preprocess(rgb[:256])
    assert (left, top, side) == (0.0, -128.0, 512.0)
    assert np.all(x[:, :32] == -1) and np.all(x[:, 96:] == -1)
    np.testing.assert_allclose(x[:, 32:96], expected[:, :64], atol=1e-6)


def test_weighted_nms_merges_cluster():
    rows = np.zeros((5, 17), np.float32)
    rows[:, 5:] = np.arange(5)[:, None]  # keypoints: row index
    rows[0, :5] = [0.9, 0.0, 0.0, 1.0, 1.0]
    rows[1, :5] = [0.6, 0.1, 0.0, 1.1, 1.0]  # IoU 0.82 with row 0: merged
    rows[2, :5] = [0.7, 0.5, 0.0, 1.5, 1.0]  # IoU 0.33 (> 0.3): merged
    rows[3, :5] = [0.8, 5.0, 5.0, 6.0, 6.0]  # elsewhere: its own face
    rows[4, :5] = [0.5, 0.65, 0.0, 1.65, 1.0]  # IoU 0.21 with row 0: survives
    out = weighted_nms(rows)
    assert out.shape == (3, 17)
    w = np.float32([0.9, 0.6, 0.7])
    expect = (rows[:3, 1:] * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(out[0, 1:], expect, atol=1e-6)
    assert out[0, 0] == np.float32(0.9)  # the top row's score, not a mean
    np.testing.assert_allclose(out[1], rows[3])
    np.testing.assert_allclose(out[2], rows[4])
    assert weighted_nms(rows[:0]).shape == (0, 17)


def test_unsupported_op_is_named(monkeypatch):
    from labeler.detect import blazeface, tflite_torch

    monkeypatch.setattr(tflite_torch, "SUPPORTED_OPS", tflite_torch.SUPPORTED_OPS - {"PAD"})
    with pytest.raises(NotImplementedError, match=r"operator \d+ \(PAD\) is not supported"):
        blazeface.tflite_module(short_range_model_path())
