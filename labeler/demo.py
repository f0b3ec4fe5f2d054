"""A small labeled demo set the project can ship: masks painted on a public-domain portrait.

matplotlib's sample portrait of Grace Hopper (``mpl-data/sample_data/grace_hopper.jpg``, an
official US Navy photo, public domain; matplotlib is a dependency already) has one frontal
face. We paint masks of several colours and shapes at the mask states (over nose and mouth, under the nose, over
nose and mouth with the chin out, on the chin, none), then flip, crop, rotate, relight and
re-encode each copy, so the whole loop (ingest, detect, embed, cluster, label, train, export)
can be shown honestly on images anyone can regenerate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: The portrait, inside matplotlib's sample data (512 wide, 600 high).
PORTRAIT = "grace_hopper.jpg"

# Face geometry of the portrait, read once with MediaPipe face mesh (points 234/454 for the
# cheeks, 152 chin, 6 nose bridge, 1 nose tip, 13 upper lip, 17 lower lip; mean of all 468 for
# the centre): x of the cheeks and the chin, y of the bridge, nose tip, lips and chin.
_CHEEK_L, _CHEEK_R, _CHIN_X = 173.0, 356.0, 270.0
_Y_BRIDGE, _Y_NOSE_TIP, _Y_UPPER_LIP, _Y_LOWER_LIP, _Y_CHIN = 199.0, 246.0, 277.0, 288.5, 337.0
_FACE_CENTRE = (266.0, 232.0)
#: The head's roll in degrees (the right cheek sits 10 px higher): masks are tilted with it.
_ROLL = -3.3
#: Pixels per unit of the offsets below (margins, straps, folds, crop sizes): the face is
#: ~180 px from cheek to cheek, and the offsets were tuned on a face half that size.
_U = 2.0

STATES: dict[str, tuple[float, float] | None] = {
    # state: (mask top y, mask bottom y) on the source portrait, None = no mask
    "correct": (_Y_BRIDGE, _Y_CHIN + 6 * _U),
    "nose_exposed": (_Y_NOSE_TIP + 5 * _U, _Y_CHIN + 6 * _U),
    "chin_exposed": (_Y_BRIDGE, _Y_LOWER_LIP + 4 * _U),
    "on_chin": (_Y_LOWER_LIP + 5 * _U, _Y_CHIN + 8 * _U),
    "no_mask": None,
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "surgical_blue": (120, 180, 215),
    "white": (235, 235, 230),
    "black": (25, 25, 28),
    "green": (40, 140, 70),
    "pink": (230, 150, 180),
    "navy": (30, 40, 90),
}
SHAPES = ("surgical", "cup", "cloth")


@dataclass(frozen=True)
class DemoSet:
    """Where the demo set was written."""

    images: Path
    labels_csv: Path
    n_images: int


def _tilt(points: np.ndarray) -> np.ndarray:
    """``points`` (K, 2) drawn for an upright face, rotated with the head's roll."""
    cx, cy = _FACE_CENTRE
    t = np.deg2rad(_ROLL)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (np.asarray(points, np.float64) - (cx, cy)) @ rot.T + (cx, cy)


def _mask_polygon(shape: str, top: float, bottom: float) -> np.ndarray:
    mid = (top + bottom) / 2
    if shape == "cup":
        t = np.linspace(0, 2 * np.pi, 40)
        cx, rx, ry = _CHIN_X, (_CHEEK_R - _CHEEK_L) / 2 + 2 * _U, (bottom - top) / 2
        return _tilt(np.stack([cx + rx * np.cos(t), mid + ry * np.sin(t)], 1))
    inset = (6 if shape == "surgical" else 2) * _U
    top_curve = 0 if shape == "surgical" else -6 * _U
    return _tilt(
        np.array(
            [
                (_CHEEK_L, top + 4 * _U),
                (_CHIN_X, top + top_curve),
                (_CHEEK_R, top + 4 * _U),
                (_CHEEK_R - 2 * _U, mid),
                (_CHEEK_R - 18 * _U - inset, bottom - 6 * _U),
                (_CHIN_X, bottom),
                (_CHEEK_L + 18 * _U + inset, bottom - 6 * _U),
                (_CHEEK_L + 2 * _U, mid),
            ]
        )
    )


def _line(img: np.ndarray, a: tuple, b: tuple, colour: tuple, width: int) -> None:
    import cv2

    (x0, y0), (x1, y1) = _tilt(np.array([a, b])).round().astype(int)
    cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), colour, width, cv2.LINE_AA)


def paint_mask(
    img: np.ndarray,
    state: str,
    *,
    colour: tuple[int, int, int],
    shape: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Paint a mask for ``state`` onto a copy of the portrait ``img`` (H, W, 3) uint8 RGB."""
    import cv2

    span = STATES[state]
    out = img.copy()
    if span is None:
        return out
    poly = _mask_polygon(shape, *span).round().astype(np.int32)
    layer = out.copy()
    cv2.fillPoly(layer, [poly], colour, lineType=cv2.LINE_AA)
    # folds / texture so masks are not flat colour
    top, bottom = span
    u = int(round(_U))
    for k in range(1, 4 if shape == "surgical" else 2):
        y = top + k * (bottom - top) / 4
        shade = tuple(int(c * 0.8) for c in colour)
        _line(layer, (_CHEEK_L + 6 * _U, y), (_CHEEK_R - 6 * _U, y), shade, u)
    noise = rng.normal(0, 6, layer.shape)
    inside = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(inside, [poly], 1)
    layer = np.where(inside[..., None] > 0, np.clip(layer + noise, 0, 255), layer).astype(np.uint8)
    strap = tuple(int(c * 0.9) for c in colour)
    y0, y1 = top + 6 * _U, top - 4 * _U
    _line(layer, (_CHEEK_L, y0), (_CHEEK_L - 14 * _U, y1), strap, 2 * u)
    _line(layer, (_CHEEK_R, y0), (_CHEEK_R + 14 * _U, y1), strap, 2 * u)
    return layer


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    cx, cy = _FACE_CENTRE
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.9, 1.15)
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    half = rng.uniform(75, 130) * _U  # crop half-size around the face: tight crops to loose ones
    ox, oy = rng.uniform(-15, 15, 2) * _U
    x, y = cx + ox, cy + oy
    half = min(half, x, w - x, y, h - y)  # square crops inside the picture
    x0, y0, x1, y1 = int(x - half), int(y - half), int(x + half), int(y + half)
    img = img[y0:y1, x0:x1]
    side = int(rng.choice([128, 192, 256, 320]))
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    gain, bias = rng.uniform(0.7, 1.25), rng.uniform(-25, 25)
    img = np.clip(img.astype(np.float32) * gain + bias + rng.normal(0, 3, img.shape), 0, 255)
    if rng.random() < 0.15:
        img = np.repeat(img.mean(2, keepdims=True), 3, axis=2)
    return img.astype(np.uint8)


def load_portrait() -> np.ndarray:
    """The demo's portrait (600, 512, 3) uint8 RGB, from matplotlib's sample data."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data(PORTRAIT) as f:
        return np.asarray(Image.open(f).convert("RGB"))


def make_demo_set(out_dir: str | Path, *, per_state: int = 36, seed: int = 0) -> DemoSet:
    """Write ``per_state`` images for each of the 5 mask states plus ``labels.csv``.

    Returns a :class:`DemoSet`. Deterministic for a seed. ~1 s for the default 180 images.

    >>> demo = make_demo_set("data/demo")  # doctest: +SKIP
    """
    import cv2

    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    base = load_portrait()
    rng = np.random.default_rng(seed)
    rows = ["file,state,colour,shape"]
    colours = list(COLOURS)
    for state in STATES:
        for i in range(per_state):
            colour = colours[i % len(colours)]
            shape = SHAPES[(i // len(colours)) % len(SHAPES)]
            painted = paint_mask(base, state, colour=COLOURS[colour], shape=shape, rng=rng)
            img = _augment(painted, rng)
            name = f"{state}_{i:03d}.jpg"
            quality = int(rng.integers(45, 95))
            ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError(f"could not encode demo image {name}")
            (images / name).write_bytes(buf.tobytes())
            rows.append(
                f"{name},{state},{colour if state != 'no_mask' else ''},{shape if state != 'no_mask' else ''}"
            )
    labels = out / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    n = len(rows) - 1
    log.info("wrote %d demo images to %s", n, images)
    return DemoSet(images=images, labels_csv=labels, n_images=n)
