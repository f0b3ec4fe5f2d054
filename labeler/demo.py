"""A small labeled demo set the project can ship: masks painted on a public-domain portrait.

``skimage.data.astronaut()`` (a NASA photo, public domain) has one frontal face. We paint masks
of several colours and shapes at the mask states (over nose and mouth, under the nose, over
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

# Face geometry of skimage.data.astronaut() (512x512), read once with MediaPipe face mesh:
# x of the cheeks, the chin, and y of the nose bridge, nose tip, lips and chin.
_CHEEK_L, _CHEEK_R, _CHIN_X = 180.0, 269.0, 221.5
_Y_BRIDGE, _Y_NOSE_TIP, _Y_UPPER_LIP, _Y_LOWER_LIP, _Y_CHIN = 108.0, 131.0, 143.0, 155.0, 178.0
_FACE_CENTRE = (224.0, 125.0)

STATES: dict[str, tuple[float, float] | None] = {
    # state: (mask top y, mask bottom y) on the source portrait, None = no mask
    "correct": (_Y_BRIDGE, _Y_CHIN + 6),
    "nose_exposed": (_Y_NOSE_TIP + 5, _Y_CHIN + 6),
    "chin_exposed": (_Y_BRIDGE, _Y_LOWER_LIP + 4),
    "on_chin": (_Y_LOWER_LIP + 5, _Y_CHIN + 8),
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


def _mask_polygon(shape: str, top: float, bottom: float) -> np.ndarray:
    mid = (top + bottom) / 2
    if shape == "cup":
        t = np.linspace(0, 2 * np.pi, 40)
        cx, rx, ry = _CHIN_X, (_CHEEK_R - _CHEEK_L) / 2 + 2, (bottom - top) / 2
        return np.stack([cx + rx * np.cos(t), mid + ry * np.sin(t)], 1)
    inset = 6 if shape == "surgical" else 2
    top_curve = 0 if shape == "surgical" else -6
    return np.array(
        [
            (_CHEEK_L, top + 4),
            (_CHIN_X, top + top_curve),
            (_CHEEK_R, top + 4),
            (_CHEEK_R - 2, mid),
            (_CHEEK_R - 18 - inset, bottom - 6),
            (_CHIN_X, bottom),
            (_CHEEK_L + 18 + inset, bottom - 6),
            (_CHEEK_L + 2, mid),
        ]
    )


def paint_mask(
    img: np.ndarray,
    state: str,
    *,
    colour: tuple[int, int, int],
    shape: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Paint a mask for ``state`` onto a copy of the 512x512 astronaut image."""
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
    for k in range(1, 4 if shape == "surgical" else 2):
        y = int(top + k * (bottom - top) / 4)
        shade = tuple(int(c * 0.8) for c in colour)
        cv2.line(layer, (int(_CHEEK_L + 6), y), (int(_CHEEK_R - 6), y), shade, 1, cv2.LINE_AA)
    noise = rng.normal(0, 6, layer.shape)
    inside = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(inside, [poly], 1)
    layer = np.where(inside[..., None] > 0, np.clip(layer + noise, 0, 255), layer).astype(np.uint8)
    strap = tuple(int(c * 0.9) for c in colour)
    cv2.line(layer, (int(_CHEEK_L), int(top + 6)), (int(_CHEEK_L - 14), int(top - 4)), strap, 2)
    cv2.line(layer, (int(_CHEEK_R), int(top + 6)), (int(_CHEEK_R + 14), int(top - 4)), strap, 2)
    return layer


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    cx, cy = _FACE_CENTRE
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.9, 1.15)
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    img = cv2.warpAffine(img, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    half = rng.uniform(75, 130)  # crop half-size around the face: tight crops to loose ones
    ox, oy = rng.uniform(-15, 15, 2)
    x0, y0 = int(max(0, cx + ox - half)), int(max(0, cy + oy - half))
    x1, y1 = int(min(512, cx + ox + half)), int(min(512, cy + oy + half))
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


def make_demo_set(out_dir: str | Path, *, per_state: int = 36, seed: int = 0) -> DemoSet:
    """Write ``per_state`` images for each of the 5 mask states plus ``labels.csv``.

    Returns a :class:`DemoSet`. Deterministic for a seed. ~1 s for the default 180 images.

    >>> demo = make_demo_set("data/demo")  # doctest: +SKIP
    """
    import cv2
    from skimage import data

    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    base = data.astronaut()
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
