"""Colour-invariant mask cues on aligned face crops.

A mask hides skin; what colour it is does not matter. So every cue compares a patch of the
lower face with the *same face's* skin reference (the forehead and the skin between the
eyes, which a mask never covers), in CIE Lab:

- chroma distance: how far the patch's a*/b* lie from the reference skin chroma, in units of
  the reference's own spread (robust: median and MAD; a floor keeps grey photos sane);
- lightness difference relative to the reference (black and white masks differ here);
- texture: gradient energy of L* relative to the reference (skin has nostrils, lips and
  pores; a mask is smooth with a few straight folds);
- a per-pixel skin likelihood (Gaussian in the reference-normalised chroma and lightness),
  summarised per patch (mean and fraction of skin-like pixels);
- vertical *skin profiles*: the fraction of skin-like pixels per row band from the nose
  bridge to below the chin, along the midline and on both cheeks. Where the profile drops
  and recovers is where the mask's top and bottom edges lie, i.e. the mask state, whatever
  the mask colour.

All boxes are fractions of the aligned-crop template (:mod:`labeler.faces.regions`: eyes at
y=0.40, nose tip 0.575, mouth 0.73), so they follow landmarks, not image pixels.

Example::

    X = compute_cues(crops)        # crops (N, 256, 256, 3) uint8 RGB -> (N, D) float32
    cue_names()                    # D names, same order

Pure computation, below the embeddings layer (it imports nothing of labeler but errors):
the stored ``cues__face`` block is written by the one embedding loop
(:class:`labeler.embeddings.embed.FeatureBlocks`, ``cues_workspace`` there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from labeler.errors import NotFoundError

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

CUES_KEY = "cues__face"
WORK_SIZE = 128  # crops are reduced to this side before measuring (speed, less noise)
VERSION = 1

# (x0, y0, x1, y1) as fractions of the aligned crop
REFERENCE_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.34, 0.17, 0.66, 0.31),  # forehead
    (0.45, 0.33, 0.55, 0.40),  # between the eyes (glabella)
)
PATCHES: dict[str, tuple[float, float, float, float]] = {
    "nose_bridge": (0.45, 0.44, 0.55, 0.52),
    "nose_tip": (0.43, 0.53, 0.57, 0.61),
    "cheek_left": (0.24, 0.50, 0.37, 0.64),
    "cheek_right": (0.63, 0.50, 0.76, 0.64),
    "upper_lip": (0.42, 0.63, 0.58, 0.69),
    "mouth": (0.39, 0.69, 0.61, 0.77),
    "chin": (0.40, 0.82, 0.60, 0.93),
    "jaw_left": (0.24, 0.72, 0.36, 0.86),
    "jaw_right": (0.64, 0.72, 0.76, 0.86),
}
PATCH_STATS = ("skin", "skin_frac", "chroma", "light", "texture")
# vertical profiles: (x0, x1) columns, rows from PROFILE_Y0 to PROFILE_Y1 in PROFILE_BANDS bands
PROFILE_COLUMNS: dict[str, tuple[float, float]] = {
    "mid": (0.40, 0.60),
    "left": (0.26, 0.38),
    "right": (0.62, 0.74),
}
PROFILE_Y0, PROFILE_Y1, PROFILE_BANDS = 0.42, 0.98, 28
# the mask colour is estimated per face from the clearly non-skin pixels of this box
MASK_PROBE_BOX = (0.30, 0.50, 0.70, 0.90)
MASK_SIGMA = 10.0  # Lab units: how close to the face's mask colour a pixel must be
CHROMA_FLOOR = 2.5  # a*/b* units: the smallest skin spread assumed (grey photos, flat light)
LIGHT_FLOOR = 6.0  # L* units


def cue_names() -> list[str]:
    """Names of the columns :func:`compute_cues` returns, in order."""
    names = [f"{p}.{s}" for p in PATCHES for s in PATCH_STATS]
    for col in PROFILE_COLUMNS:
        names += [f"profile_{col}.skin.{b:02d}" for b in range(PROFILE_BANDS)]
        names += [f"profile_{col}.mask.{b:02d}" for b in range(PROFILE_BANDS)]
        names += [
            f"profile_{col}.mask_top",
            f"profile_{col}.mask_bottom",
            f"profile_{col}.mask_extent",
        ]
    names += ["ref.chroma_spread", "ref.light", "mask.found"]
    return names


def _px(box: Sequence[float], size: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (
        int(round(x0 * size)),
        int(round(y0 * size)),
        max(int(round(x1 * size)), int(round(x0 * size)) + 1),
        max(int(round(y1 * size)), int(round(y0 * size)) + 1),
    )


def _prepare(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lab (N, S, S, 3) float32 and gradient magnitude of L (N, S, S) at WORK_SIZE."""
    import cv2

    n = len(crops)
    lab = np.empty((n, WORK_SIZE, WORK_SIZE, 3), np.float32)
    grad = np.empty((n, WORK_SIZE, WORK_SIZE), np.float32)
    for i, c in enumerate(crops):
        if c.shape[0] != WORK_SIZE or c.shape[1] != WORK_SIZE:
            c = cv2.resize(c, (WORK_SIZE, WORK_SIZE), interpolation=cv2.INTER_AREA)
        f = c.astype(np.float32) * (1.0 / 255.0)
        lab[i] = cv2.cvtColor(f, cv2.COLOR_RGB2Lab)  # L 0..100, a/b about -128..127
        L = lab[i, :, :, 0]
        gx = cv2.Sobel(L, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(L, cv2.CV_32F, 0, 1, ksize=3)
        grad[i] = np.sqrt(gx * gx + gy * gy)
    return lab, grad


def compute_cues(crops: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Mask cues for aligned crops.

    crops: (N, H, H, 3) uint8 RGB aligned to :data:`labeler.faces.regions.TEMPLATE` (any square
    size; 256 in the workspace). Returns (N, D) float32, columns named by :func:`cue_names`.
    Roughly 1 ms per crop on one core.
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops must be (N, S, S, 3) RGB; got shape {crops.shape}")
    if crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8; got {crops.dtype}")
    out = [_cues_batch(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)]
    if not out:
        return np.zeros((0, len(cue_names())), np.float32)
    return np.concatenate(out).astype(np.float32)


def _window(size: int) -> tuple[int, int, int]:
    """``(y0, x0, x1)`` pixels of the smallest lower-face window holding every patch, the mask
    probe and the profile columns (they reach from y0 to the bottom)."""
    boxes = [*PATCHES.values(), MASK_PROBE_BOX]
    boxes += [(xa, PROFILE_Y0, xb, PROFILE_Y1) for xa, xb in PROFILE_COLUMNS.values()]
    px = [_px(b, size) for b in boxes]
    return min(p[1] for p in px), min(p[0] for p in px), max(p[2] for p in px)


def _dist(a: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Euclidean distance over the last axis of ``a`` (N, H, W, C) to ``centre`` (N, C)."""
    d = a - centre[:, None, None, :]
    return np.sqrt(np.einsum("nhwc,nhwc->nhw", d, d))


def _cues_batch(crops: np.ndarray) -> np.ndarray:
    n = len(crops)
    S = WORK_SIZE
    lab, grad = _prepare(crops)

    # skin reference: robust centre and spread of the reference pixels
    ref = np.concatenate(
        [
            lab[:, y0:y1, x0:x1].reshape(n, -1, 3)
            for x0, y0, x1, y1 in (_px(b, S) for b in REFERENCE_BOXES)
        ],
        axis=1,
    )
    ref_g = np.concatenate(
        [
            grad[:, y0:y1, x0:x1].reshape(n, -1)
            for x0, y0, x1, y1 in (_px(b, S) for b in REFERENCE_BOXES)
        ],
        axis=1,
    )
    med = np.median(ref, axis=1)  # (n, 3)
    # keep the reference pixels closest to the median chroma (drops hair, glasses, bangs)
    dref = np.linalg.norm(ref[:, :, 1:] - med[:, None, 1:], axis=2)
    keep = dref <= np.quantile(dref, 0.6, axis=1, keepdims=True)
    w = keep.astype(np.float32)
    wsum = w.sum(1, keepdims=True)
    mu = (ref * w[:, :, None]).sum(1) / wsum  # (n, 3)
    sd = np.sqrt(((ref - mu[:, None]) ** 2 * w[:, :, None]).sum(1) / wsum)
    sd_ab = np.maximum(np.sqrt(0.5 * (sd[:, 1] ** 2 + sd[:, 2] ** 2)), CHROMA_FLOOR)
    sd_L = np.maximum(sd[:, 0], LIGHT_FLOOR)
    ref_tex = np.log1p(np.median(ref_g, axis=1))

    # per-pixel normalised distances and skin likelihood, on the lower-face window that the
    # patches, the mask probe and the profiles read (wy, wx: its offset in the crop)
    wy, wx, wx1 = _window(S)
    low = lab[:, wy:, wx:wx1]
    dab = _dist(low[..., 1:], mu[:, 1:]) / sd_ab[:, None, None]
    dL = (low[..., 0] - mu[:, None, None, 0]) / sd_L[:, None, None]
    skin = np.exp(-0.5 * (dab**2 + 0.25 * dL**2))

    cols: list[np.ndarray] = []
    for box in PATCHES.values():
        x0, y0, x1, y1 = _px(box, S)
        win = (slice(None), slice(y0 - wy, y1 - wy), slice(x0 - wx, x1 - wx))
        sk = skin[win].reshape(n, -1)
        cols.append(sk.mean(1))
        cols.append((sk > 0.3).mean(1))
        cols.append(np.log1p(np.median(dab[win].reshape(n, -1), axis=1)))
        cols.append(np.median(dL[win].reshape(n, -1), axis=1))
        cols.append(np.log1p(np.median(grad[:, y0:y1, x0:x1].reshape(n, -1), axis=1)) - ref_tex)
    # the face's own mask colour: median Lab of the clearly non-skin pixels of the lower face
    x0, y0, x1, y1 = _px(MASK_PROBE_BOX, S)
    probe = lab[:, y0:y1, x0:x1].reshape(n, -1, 3)
    nonskin = skin[:, y0 - wy : y1 - wy, x0 - wx : x1 - wx].reshape(n, -1) < 0.05
    found = nonskin.mean(1)
    mask_mu = np.empty((n, 3), np.float32)
    for i in range(n):
        px = probe[i][nonskin[i]] if nonskin[i].sum() >= 10 else probe[i]
        mask_mu[i] = np.median(px, axis=0)
    dmask = _dist(low, mask_mu) / MASK_SIGMA
    maskish = (dmask < 1.0) & (skin < 0.3)

    edges = np.linspace(PROFILE_Y0, PROFILE_Y1, PROFILE_BANDS + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    rows = [
        (int(round(a * S)), max(int(round(b * S)), int(round(a * S)) + 1))
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    rows = [(a - wy, b - wy) for a, b in rows]
    for xa, xb in PROFILE_COLUMNS.values():
        x0, x1 = int(round(xa * S)) - wx, int(round(xb * S)) - wx
        sk = np.stack([(skin[:, a:b, x0:x1] > 0.3).reshape(n, -1).mean(1) for a, b in rows], 1)
        mk = np.stack([maskish[:, a:b, x0:x1].reshape(n, -1).mean(1) for a, b in rows], 1)
        cols.extend(sk.T)
        cols.extend(mk.T)
        on = mk > 0.5
        anyon = on.any(1)
        first = np.where(anyon, on.argmax(1), PROFILE_BANDS - 1)
        last = np.where(anyon, PROFILE_BANDS - 1 - on[:, ::-1].argmax(1), first)
        cols.append(np.where(anyon, centres[first], PROFILE_Y1))
        cols.append(np.where(anyon, centres[last], PROFILE_Y1))
        cols.append(mk.mean(1))
    cols.append(np.log(sd_ab))
    cols.append(mu[:, 0] / 100.0)
    cols.append(found)
    return np.stack(cols, axis=1)


# --- workspace step --------------------------------------------------------------------------


def read_crops(ws: Workspace, face_ids: Sequence[str]) -> np.ndarray:
    """Load the aligned crops of ``face_ids`` from the workspace as (N, 256, 256, 3) uint8 RGB."""
    import cv2

    from labeler.faces.regions import CROP_SIZE

    out = np.empty((len(face_ids), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, fid in enumerate(face_ids):
        path = ws.crop_path(fid)
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise NotFoundError(
                f"aligned crop {path} is missing or unreadable; re-run 'labeler detect -w {ws.root}'"
            )
        if img.shape[:2] != (CROP_SIZE, CROP_SIZE):
            img = cv2.resize(img, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
        out[i] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return out
