"""Persons by identity descriptors (dlib ResNet on the eye region): the chip, the refusal.

The grouping's quality on real faces (MFR2 with copies, hashed names) is in test_persons.py.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_identity_chip_puts_the_eyes_where_dlib_expects_and_hides_the_lower_face():
    from labeler.export.persons import CHIP_EYES, OCCLUDE_FROM, identity_chips
    from labeler.faces.regions import CROP_SIZE, TEMPLATE

    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 30, dtype=np.uint8)
    for x, y in TEMPLATE[:2] * CROP_SIZE:  # bright dots on the template's eye positions
        crop[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = 255
    chip = identity_chips(crop[None])[0]
    assert chip.shape == (150, 150, 3)
    for x, y in CHIP_EYES:
        assert chip[int(round(y)), int(round(x))].min() > 120  # the dot landed there
    assert (chip[OCCLUDE_FROM:] == 128).all()
    assert (chip[: OCCLUDE_FROM - 1] != 128).any()


def test_a_person_in_two_splits_is_refused():
    from labeler.export.manifest import check_no_leaks

    check_no_leaks(["train", "test"], ["p0", "p1"], ["i0", "i1"])
    with pytest.raises(ValueError, match="1 persons would be in two splits.*--person-csv"):
        check_no_leaks(["train", "test"], ["p0", "p0"], ["i0", "i1"])
    with pytest.raises(ValueError, match="source images would be in two splits"):
        check_no_leaks(["train", "test"], ["p0", "p1"], ["i0", "i0"])
