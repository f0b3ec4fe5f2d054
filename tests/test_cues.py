"""Mask cues: colour invariance on synthetic aligned faces, the workspace step."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import tinyws

from labeler.embeddings.embed import cues_workspace
from labeler.faces.cues import CUES_KEY, compute_cues, cue_names
from labeler.faces.regions import CROP_SIZE, TEMPLATE

MASK_COLOURS = {
    "black": (20, 20, 22),
    "green": (40, 150, 70),
    "white": (240, 240, 238),
    "blue": (140, 190, 220),
}
SKIN_TONES = [(224, 172, 140), (141, 85, 60), (250, 210, 180)]


def synthetic_face(
    *,
    mask: tuple[int, int, int] | None,
    top: float = 0.46,
    bottom: float = 0.95,
    skin=SKIN_TONES[0],
    seed: int = 0,
) -> np.ndarray:
    """An aligned crop: skin ellipse, eyes/nose/mouth at TEMPLATE, optional mask polygon."""
    S = CROP_SIZE
    rng = np.random.default_rng(seed)
    img = np.full((S, S, 3), (90, 110, 130), np.uint8)  # background
    cv2.ellipse(img, (S // 2, int(0.55 * S)), (int(0.36 * S), int(0.52 * S)), 0, 0, 360, skin, -1)
    dark = tuple(int(c * 0.45) for c in skin)
    for x, y in TEMPLATE[:2]:
        cv2.ellipse(img, (int(x * S), int(y * S)), (14, 7), 0, 0, 360, (40, 30, 30), -1)
    nx, ny = TEMPLATE[2]
    cv2.circle(img, (int(nx * S) - 9, int(ny * S)), 4, dark, -1)  # nostrils
    cv2.circle(img, (int(nx * S) + 9, int(ny * S)), 4, dark, -1)
    mx, my = TEMPLATE[3]
    cv2.ellipse(img, (int(mx * S), int(my * S)), (30, 9), 0, 0, 360, (170, 70, 80), -1)  # lips
    img = np.clip(img.astype(np.int16) + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    if mask is not None:
        y0, y1 = int(top * S), int(bottom * S)
        poly = np.array(
            [[int(0.2 * S), y0], [int(0.8 * S), y0], [int(0.86 * S), y1], [int(0.14 * S), y1]]
        )
        shade = np.array(mask, np.float32)
        layer = img.copy()
        cv2.fillPoly(layer, [poly], tuple(int(c) for c in shade))
        img = np.clip(layer.astype(np.int16) + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img


def _col(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, cue_names().index(name)]


def test_shapes_and_names():
    crops = np.stack([synthetic_face(mask=None), synthetic_face(mask=MASK_COLOURS["black"])])
    X = compute_cues(crops)
    assert X.shape == (2, len(cue_names())) and X.dtype == np.float32
    assert np.isfinite(X).all()
    # any square size works (the crop is reduced to the working size)
    X512 = compute_cues(np.stack([cv2.resize(c, (512, 512)) for c in crops]))
    assert np.abs(X512 - X).max() < 0.5
    assert compute_cues(np.zeros((0, 256, 256, 3), np.uint8)).shape == (0, len(cue_names()))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        compute_cues(np.zeros((1, 256, 256, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        compute_cues(np.zeros((1, 256, 200, 3), np.uint8))


@pytest.mark.parametrize("skin", SKIN_TONES)
def test_covered_patches_are_non_skin_whatever_the_mask_colour(skin):
    bare = compute_cues(synthetic_face(mask=None, skin=skin)[None])
    masked = compute_cues(
        np.stack(
            [synthetic_face(mask=c, skin=skin, seed=i) for i, c in enumerate(MASK_COLOURS.values())]
        )
    )
    for patch in ("nose_bridge", "cheek_left", "cheek_right", "chin"):
        assert _col(bare, f"{patch}.skin")[0] > 0.4, patch
    for patch in ("nose_tip", "mouth", "cheek_left", "chin"):
        assert (_col(masked, f"{patch}.skin") < 0.15).all(), (patch, _col(masked, f"{patch}.skin"))
    # the forehead stays the reference: the mask top is found at the same height for all colours
    tops = _col(masked, "profile_mid.mask_top")
    assert np.ptp(tops) <= 0.05 and abs(tops.mean() - 0.47) < 0.05


def test_cues_follow_the_mask_position_not_its_colour():
    """Faces group by where the mask sits: nearest neighbours share the state, not the colour."""
    states = {"correct": (0.46, 0.95), "nose_exposed": (0.64, 0.95), "on_chin": (0.80, 0.97)}
    crops, state = [], []
    for s_i, (name, (top, bottom)) in enumerate(states.items()):
        for c_i, colour in enumerate(MASK_COLOURS.values()):
            for k, skin in enumerate(SKIN_TONES):
                crops.append(
                    synthetic_face(
                        mask=colour,
                        top=top,
                        bottom=bottom,
                        skin=skin,
                        seed=100 * s_i + 10 * c_i + k,
                    )
                )
                state.append(name)
    X = compute_cues(np.stack(crops))
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    D = ((Z[:, None] - Z[None]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    nn = D.argmin(1)
    state = np.array(state)
    assert (state[nn] == state).mean() >= 0.9
    tops = pd.Series(_col(X, "profile_mid.mask_top")).groupby(state).median()
    assert tops["correct"] < tops["nose_exposed"] < tops["on_chin"]


def _tiny_workspace(tmp_path, n: int):
    from labeler.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws", create=True)
    ids, paths = [], []
    for i in range(n):
        fid = f"{i:016x}_0"
        img = synthetic_face(mask=list(MASK_COLOURS.values())[i % 4] if i % 2 else None, seed=i)
        path = ws.crop_path(fid)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        ids.append(fid)
        paths.append(str(path.relative_to(ws.root)))
    ws.write_faces(tinyws.stub_faces(ids, crop_paths=paths))
    return ws


def test_cues_workspace_is_incremental(tmp_path):
    from labeler.embeddings.store import load_embeddings

    ws = _tiny_workspace(tmp_path, 6)
    assert cues_workspace(ws) == (6, 6)
    ids, X = load_embeddings(ws, CUES_KEY)
    assert X.shape == (6, len(cue_names()))
    assert cues_workspace(ws) == (0, 6)  # nothing new
    ws2 = _tiny_workspace(tmp_path, 8)  # two more faces in the same workspace
    assert cues_workspace(ws2) == (2, 8)
    ids2, X2 = load_embeddings(ws2, CUES_KEY)
    np.testing.assert_allclose(X2[:6], X, atol=1e-6)  # the stored rows were kept as they were
    # oracle: the incremental result equals a fresh computation
    assert cues_workspace(ws2, force=True) == (8, 8)
    _, X3 = load_embeddings(ws2, CUES_KEY)
    np.testing.assert_allclose(X3, X2, atol=1e-4)


def test_missing_crop_names_the_fix(tmp_path):
    ws = _tiny_workspace(tmp_path, 2)
    ws.crop_path(f"{1:016x}_0").unlink()
    with pytest.raises(FileNotFoundError, match="labeler detect"):
        cues_workspace(ws)
