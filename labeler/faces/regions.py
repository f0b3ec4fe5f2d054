"""The aligned-crop template and the named face regions on it.

Every detector reports 4 landmarks (``LANDMARK_NAMES``: left eye, right eye, nose tip, mouth
centre, in image pixels; "left" is the subject's left as seen in the image's left half is
*not* assumed: left_eye is the eye with the smaller x in the image). A similarity transform
maps them onto ``TEMPLATE`` (fractions of the crop side), so a region is one fixed box on
every aligned crop whatever the pose, scale or resolution of the source photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labeler.errors import InputError

CROP_SIZE = 256  # pixels of the cached aligned crop (square)

# Canonical positions (x, y) as fractions of the crop side, in LANDMARK_NAMES order.
TEMPLATE = np.array(
    [
        [0.355, 0.400],  # left eye (image left)
        [0.645, 0.400],  # right eye (image right)
        [0.500, 0.575],  # nose tip
        [0.500, 0.730],  # mouth centre
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class Region:
    """A box on a face crop, as fractions ``(x0, y0, x1, y1)`` of the crop side.

    ``crop``: which crop the box is on: ``aligned`` (landmark-aligned, ``crops/<ab>/<id>.jpg``)
    or ``box`` (the upright detection box plus 20 % margin, not aligned by landmarks,
    ``crops/<ab>/<id>.box.jpg``, see :mod:`labeler.faces.boxcrops`).
    """

    name: str
    box: tuple[float, float, float, float]
    description: str
    crop: str = "aligned"

    def pixels(self, size: int = CROP_SIZE) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.box
        return (
            int(round(x0 * size)),
            int(round(y0 * size)),
            int(round(x1 * size)),
            int(round(y1 * size)),
        )


REGIONS: dict[str, Region] = {
    r.name: r
    for r in (
        Region("face", (0.0, 0.0, 1.0, 1.0), "the whole aligned crop"),
        Region("lower", (0.14, 0.44, 0.86, 1.0), "nose to chin"),
        Region("nose", (0.26, 0.44, 0.74, 0.66), "the nose band"),
        Region("mouth_chin", (0.2, 0.62, 0.8, 1.0), "mouth and chin"),
        Region("forehead", (0.28, 0.1, 0.72, 0.3), "forehead (skin reference)"),
        Region("eyes", (0.18, 0.3, 0.82, 0.5), "the eye band"),
        Region(
            "box",
            (0.0, 0.0, 1.0, 1.0),
            "the detection box + 20 % margin, upright, not aligned by landmarks",
            crop="box",
        ),
    )
}


def get_region(name: str) -> Region:
    try:
        return REGIONS[name]
    except KeyError:
        raise InputError(f"unknown region {name!r}; choose one of {', '.join(REGIONS)}") from None


def crop_region(crop: np.ndarray, name: str) -> np.ndarray:
    """Cut region ``name`` out of an aligned crop ``(H, W, C)`` (any square size)."""
    x0, y0, x1, y1 = get_region(name).pixels(crop.shape[0])
    return crop[y0:y1, x0:x1]
