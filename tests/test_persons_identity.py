"""Persons by identity descriptors (dlib ResNet on the eye region), shared by export and train.

Real faces: MFR2 photos (masked and unmasked, file names carry the person), each also as a
mirrored copy and a 5 % crop (the construction of issue #12).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import shared_dataset
from PIL import Image, ImageOps

from labeler.cli import cli

pytest.importorskip("dlib")


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def pairwise(pred, truth) -> tuple[float, float]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    iu = np.triu_indices(len(pred), 1)
    sp = (pred[:, None] == pred[None, :])[iu]
    st = (truth[:, None] == truth[None, :])[iu]
    return (sp & st).sum() / max(sp.sum(), 1), (sp & st).sum() / max(st.sum(), 1)


@pytest.fixture(scope="module")
def copies_ws(tmp_path_factory):
    """10 MFR2 people, every photo as itself, mirrored and 5 %-cropped; ingested, detected,
    labeled (masked -> correct, else no_mask) through the CLI."""
    from labeler.labels import LabelStore
    from labeler.workspace import Workspace

    src = shared_dataset("mfr2")
    truth = pd.read_csv(src / "labels.csv")
    people = sorted(truth["person"].unique())[:10]
    truth = truth[truth["person"].isin(people)]
    base = tmp_path_factory.mktemp("persons")
    photos = base / "photos"
    photos.mkdir()
    rows = []
    for r in truth.itertuples(index=False):
        img = Image.open(src / "images" / r.file).convert("RGB")
        w, h = img.size
        dx, dy = round(0.05 * w), round(0.05 * h)
        stem = Path(r.file).stem
        for kind, im in (
            ("orig", img),
            ("mirror", ImageOps.mirror(img)),
            ("crop", img.crop((dx, dy, w - dx, h - dy))),
        ):
            name = f"{stem}_{kind}.png"
            im.save(photos / name)
            rows.append(
                {"file": name, "photo": stem, "kind": kind, "person": r.person, "state": r.state}
            )
    files = pd.DataFrame(rows)
    ws_dir = base / "ws"
    for args in (["ingest", str(photos), "-w", str(ws_dir)], ["detect", "-w", str(ws_dir)]):
        res = run_cli(*args)
        assert res.exit_code == 0, res.output
    ws = Workspace.open(ws_dir)
    faces = ws.require_faces()
    faces["file"] = [Path(p).name for p in ws.face_image_paths(faces)]
    faces["area"] = (faces.x1 - faces.x0) * (faces.y1 - faces.y0)
    faces = faces.sort_values("area", ascending=False).drop_duplicates("image_id")
    faces = faces.merge(files, on="file").sort_values("face_id").reset_index(drop=True)
    store = LabelStore(ws.labels_db)
    for state, value in (("masked", "correct"), ("no_mask", "no_mask")):
        store.assign(
            faces.loc[faces["state"] == state, "face_id"], "mask_state", value,
            annotator="t", source="import",
        )  # fmt: skip
    return ws, faces


def test_identity_chip_puts_the_eyes_where_dlib_expects_and_hides_the_lower_face():
    from labeler.persons import CHIP_EYES, OCCLUDE_FROM, identity_chips
    from labeler.regions import CROP_SIZE, TEMPLATE

    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 30, dtype=np.uint8)
    for x, y in TEMPLATE[:2] * CROP_SIZE:  # bright dots on the template's eye positions
        crop[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = 255
    chip = identity_chips(crop[None])[0]
    assert chip.shape == (150, 150, 3)
    for x, y in CHIP_EYES:
        assert chip[int(round(y)), int(round(x))].min() > 120  # the dot landed there
    assert (chip[OCCLUDE_FROM:] == 128).all()
    assert (chip[: OCCLUDE_FROM - 1] != 128).any()


def test_default_export_keeps_copies_together_and_reports_persons(copies_ws, tmp_path):
    ws, faces = copies_ws
    out = tmp_path / "E"
    res = run_cli("export", "-w", str(ws.root), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "by identity (dlib ResNet" in res.output
    info = json.loads((out / "export.json").read_text())["persons"]
    assert info["method"] == "identity" and 1 < info["n_persons"] < len(faces)
    truth = faces[["face_id", "photo", "person"]].rename(columns={"person": "truth"})
    man = pd.read_csv(out / "manifest.csv").merge(truth, on="face_id")
    assert len(man) == len(faces)
    # the mirrored and cropped copies of a photo are never in two splits
    assert (man.groupby("photo")["split"].nunique() == 1).all()
    # no found person is in two splits (by construction, and checked before writing)
    assert (man.groupby("person")["split"].nunique() == 1).all()
    # the cached descriptors make a second export identical
    again = tmp_path / "E2"
    assert run_cli("export", "-w", str(ws.root), "--out", str(again)).exit_code == 0
    assert (again / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()


def test_identity_grouping_quality_on_mfr2_originals(copies_ws):
    """Pairwise precision / recall of the persons against the true people (originals only).
    bench/bench_persons.py measures 0.74 / 0.74 on all 32 MFR2 people; the bar here guards
    against regressions, it is not the issue's 0.9 target (not reached: see PERSONS.md)."""
    from labeler.persons import find_persons

    ws, faces = copies_ws
    orig = faces[faces["kind"] == "orig"].reset_index(drop=True)
    sub = ws.require_faces().set_index("face_id").loc[orig["face_id"]].reset_index()
    persons = find_persons(ws, sub)
    assert persons.method == "identity"
    p, r = pairwise(persons.ids, orig["person"])
    assert p >= 0.6 and r >= 0.6, (p, r)
    # versus source images only: recall of the true people is far higher
    p0, r0 = pairwise(find_persons(ws, sub, method="image").ids, orig["person"])
    assert r > r0 + 0.3


def test_train_uses_the_same_persons_as_export(copies_ws):
    from labeler.export import ExportConfig, labels_manifest
    from labeler.train import TrainConfig, human_labels, persons_for

    ws, _ = copies_ws
    df, persons = labels_manifest(ws, ExportConfig())
    labels = human_labels(ws, "mask_state")
    sub = ws.require_faces().set_index("face_id").loc[labels["face_id"]].reset_index()
    tp = persons_for(ws, sub, TrainConfig())
    by_export = dict(zip(df["face_id"], df["person"], strict=True))
    assert tp.method == persons.method == "identity"
    assert [by_export[f] for f in labels["face_id"]] == list(tp.ids)


def test_a_person_in_two_splits_is_refused():
    from labeler.export import check_no_leaks

    check_no_leaks(["train", "test"], ["p0", "p1"], ["i0", "i1"])
    with pytest.raises(ValueError, match="1 persons would be in two splits.*--person-csv"):
        check_no_leaks(["train", "test"], ["p0", "p0"], ["i0", "i1"])
    with pytest.raises(ValueError, match="source images would be in two splits"):
        check_no_leaks(["train", "test"], ["p0", "p1"], ["i0", "i0"])
