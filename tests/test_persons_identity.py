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


def test_faces_below_the_identity_floor_get_no_descriptor_and_no_identity_link(tmp_path):
    """A face whose eyes are under MIN_IDENTITY_EYE_PX source pixels apart is never described
    (no dlib time, nothing cached) and never linked by identity, even with the very crop of a
    big face; big faces with the same crop are linked; the report and its line count them."""
    import shutil

    import pandas as pd
    import tinyws

    from labeler.export import persons as P

    t = tinyws.build(tmp_path, {"correct": 4, "no_mask": 4}, faces_per_person=1)
    faces = t.ws.faces()
    ids = faces["face_id"].tolist()
    # faces 0 and 1 are big and share a crop; faces 2 and 3 have that crop too but are small
    # in their photos (the whole geometry scaled so the eyes are 0.8 x the floor apart)
    for f in ids[1:4]:
        shutil.copyfile(t.ws.crop_path(ids[0]), t.ws.crop_path(f))
    scale = 0.8 * P.MIN_IDENTITY_EYE_PX / P.eye_distance_px(faces.iloc[[2]])[0]
    small = faces.index.isin([2, 3])
    for c in ("x0", "y0", "x1", "y1"):
        faces.loc[small, c] = faces.loc[small, c] * scale
    faces["landmarks"] = [
        np.asarray(lm, np.float32) * (scale if s else 1.0)
        for lm, s in zip(faces["landmarks"], small, strict=True)
    ]
    t.ws.write_faces(faces)
    faces = t.ws.faces()
    assert (P.eye_distance_px(faces)[small] < P.MIN_IDENTITY_EYE_PX).all()
    assert (P.eye_distance_px(faces)[~small] >= P.MIN_IDENTITY_EYE_PX).all()

    links = P.descriptor_links(t.ws, faces)
    assert links.described.tolist() == (~small).tolist() and links.too_small == 2
    touched = set(links.edges.ravel().tolist())
    assert {0, 1} <= touched and not ({2, 3} & touched)  # the same crop, linked only when big
    cache = pd.read_parquet(t.ws.root / "identity" / f"{P.IDENTITY_KEY}.parquet")
    assert set(cache["face_id"]) == set(np.asarray(ids)[~small])  # small faces never described
    # with no floor the small faces link too: the exclusion is by size, not appearance
    everyone = P.descriptor_links(t.ws, faces, min_eye_px=0)
    assert {2, 3} <= set(everyone.edges.ravel().tolist()) and everyone.too_small == 0

    persons = P.find_persons(t.ws, faces, method="identity", max_share=1.0)  # no guard
    conf = persons.confidence
    assert conf["no_identity"] == {"too_small": 2, "min_eye_px": P.MIN_IDENTITY_EYE_PX}
    assert persons.ids[0] == persons.ids[1]
    assert "2 faces too small for the identity descriptor" in persons.sureness()
    assert f">= {P.MIN_IDENTITY_EYE_PX:g} px apart" in persons.detail


def test_eye_distance_falls_back_to_the_box_without_landmarks():
    import pandas as pd

    from labeler.export.persons import eye_distance_px
    from labeler.faces.regions import TEMPLATE

    faces = pd.DataFrame(
        {
            "x0": [0.0, 0.0],
            "y0": [0.0, 0.0],
            "x1": [100.0, 100.0],
            "y1": [80.0, 80.0],
            "landmarks": [np.array([10, 20, 40, 60, 0, 0, 0, 0], np.float32), None],
        }
    )
    d = eye_distance_px(faces)
    assert d[0] == pytest.approx(50.0)  # hypot(30, 40)
    assert d[1] == pytest.approx(100 * (TEMPLATE[1, 0] - TEMPLATE[0, 0]))
    faces["landmarks"] = [np.zeros(8, np.float32), np.zeros(8, np.float32)]  # none recorded
    assert eye_distance_px(faces)[0] == pytest.approx(d[1])


SHARED_MFR2 = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/mfr2/images"


@pytest.mark.skipif(not SHARED_MFR2.is_dir(), reason="../shared/data/mfr2 not present")
def test_onnx_descriptor_is_dlibs_own_on_real_faces():
    """The network read from dlib's .dat file and run by onnxruntime gives dlib's own
    descriptors (compute_face_descriptor) on real chips: same numbers to float rounding."""
    import dlib
    from PIL import Image

    from labeler.export import identity
    from labeler.export.persons import CHIP_SIZE

    files = sorted(SHARED_MFR2.glob("*"))[:24]
    chips = np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((CHIP_SIZE, CHIP_SIZE))) for f in files]
    )
    chips[::3] = chips[::3, :, ::-1]  # mirrored ones too (they go through the same net)
    reference = dlib.face_recognition_model_v1(str(identity.model_path()))
    want = np.asarray([np.asarray(v) for v in reference.compute_face_descriptor(list(chips))])
    got = identity.describe(chips)
    assert got.shape == (len(files), 128) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4  # dlib's own descriptors are ~0.1 in size
    # persons hinge on distances: every pairwise distance is the same to 1e-4
    d_got = np.linalg.norm(got[:, None] - got[None], axis=2)
    d_want = np.linalg.norm(want[:, None] - want[None], axis=2)
    assert np.abs(d_got - d_want).max() < 1e-4
    assert d_want[np.triu_indices(len(files), 1)].min() > 0.05  # not all one vector


def test_a_damaged_model_file_is_refused_with_the_fix(tmp_path):
    from labeler.export import identity

    good = identity.model_path().read_bytes()
    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    bad.write_bytes(good[: len(good) // 2])  # cut in the middle of a layer
    with pytest.raises(ValueError, match=r"is not dlib's face-recognition ResNet.*reinstall"):
        identity.read_dlib_resnet(bad)
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=str(bad.name)):
        identity.read_dlib_resnet(bad)
