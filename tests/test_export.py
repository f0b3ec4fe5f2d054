"""labeler export: ImageFolder tree + manifest, leak-free splits, reproducible, no overwrite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import tinyws
from click.testing import CliRunner

from labeler.cli import cli
from labeler.labels import LabelStore


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def tiny(tmp_path):
    t = tinyws.build(tmp_path, {"correct": 30, "no_mask": 30, "on_chin": 12}, faces_per_person=3)
    tinyws.label_all(t)
    return t


# The tiny workspace's faces are painted, one identity to a face-recognition model: its
# persons come from the folder names, as a user with person folders would pass them.
PERSONS = ("--person-pattern", r"^(person_\d+)/")


def run(*args: str):
    args = list(args)
    if args[:1] == ["export"] and not any(a.startswith("--person") for a in args):
        args += PERSONS
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_imagefolder_export_tree_manifest_and_no_person_leak(tiny, tmp_path):
    out = tmp_path / "export"
    res = run(
        "export",
        "-w",
        str(tiny.ws.root),
        "--out",
        str(out),
        "--person-pattern",
        r"^(person_\d+)/",
        "--persons",
        "pattern",
    )
    assert res.exit_code == 0, res.output
    man = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert len(man) == 72
    for col in [
        "path",
        "face_index",
        "x0",
        "y0",
        "x1",
        "y1",
        "mask_state",
        "split",
        "label_source",
        "annotator",
        "time",
    ]:
        assert col in man.columns
    # every face is in the tree where the manifest says, under its label
    for row in man.itertuples():
        assert (out / row.file).is_file()
        assert row.file.split("/")[:2] == [row.split, row.mask_state]
    # paths are relative to the ingested folder, labels are the truth, source is the event's
    assert man["path"].str.startswith("person_").all()
    truth = tiny.truth.to_dict()
    assert (man["mask_state"] == man["face_id"].map(truth)).all()
    assert set(man["label_source"]) == {"simulation"} and set(man["annotator"]) == {"test"}
    # no person in two splits (the persons come from the folder names)
    man["true_person"] = man["face_id"].map(tiny.person.to_dict())
    assert (man.groupby("true_person")["split"].nunique() == 1).all()
    assert set(man["split"]) == {"train", "val", "test"}


def test_reexport_same_seed_is_byte_identical_and_needs_force(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("export", "-w", str(tiny.ws.root), "--out", str(a), "--seed", "7").exit_code == 0
    assert run("export", "-w", str(tiny.ws.root), "--out", str(b), "--seed", "7").exit_code == 0
    assert tree_digest(a) == tree_digest(b)
    # refuses to overwrite without --force: one clean line, nothing changed
    before = tree_digest(a)
    res = run("export", "-w", str(tiny.ws.root), "--out", str(a), "--seed", "8")
    assert res.exit_code != 0
    assert "--force" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert tree_digest(a) == before
    # with --force and another seed the split changes; back to seed 7 it is identical again
    assert (
        run("export", "-w", str(tiny.ws.root), "--out", str(a), "--seed", "8", "--force").exit_code
        == 0
    )
    assert tree_digest(a) != before
    assert (
        run("export", "-w", str(tiny.ws.root), "--out", str(a), "--seed", "7", "--force").exit_code
        == 0
    )
    assert tree_digest(a) == before


def test_csv_and_parquet_manifest_files(tiny, tmp_path):
    csv, pq = tmp_path / "m.csv", tmp_path / "m.parquet"
    assert (
        run(
            "export",
            "-w",
            str(tiny.ws.root),
            "--out",
            str(csv),
            "--format",
            "csv",
            "--ratios",
            "8:2",
            "--person-pattern",
            r"^(person_\d+)/",
        ).exit_code
        == 0
    )
    assert (
        run(
            "export",
            "-w",
            str(tiny.ws.root),
            "--out",
            str(pq),
            "--format",
            "parquet",
            "--ratios",
            "8:2",
            "--person-pattern",
            r"^(person_\d+)/",
        ).exit_code
        == 0
    )
    a = pd.read_csv(csv, keep_default_na=False)
    b = pd.read_parquet(pq)
    assert set(a["split"]) == {"train", "test"}
    assert (a["split"].to_numpy() == b["split"].to_numpy()).all()
    assert "file" not in a.columns
    res = run("export", "-w", str(tiny.ws.root), "--out", str(csv), "--format", "csv")
    assert res.exit_code != 0 and "--force" in res.output


def test_human_only_excludes_suggestions(tiny, tmp_path):
    store = LabelStore(tiny.ws.labels_db)
    ids = tiny.truth.index[:5].tolist()
    store.assign(ids, "mask_state", None, annotator="test", source="single")  # clear 5 labels
    store.write_suggestions(
        pd.DataFrame(
            {"face_id": ids, "field": "mask_state", "value": "correct", "confidence": 0.9}
        ),
        "propagate:both",
    )
    a, b = tmp_path / "with.csv", tmp_path / "human.csv"
    assert run("export", "-w", str(tiny.ws.root), "--out", str(a), "--format", "csv").exit_code == 0
    assert (
        run(
            "export", "-w", str(tiny.ws.root), "--out", str(b), "--format", "csv", "--human-only"
        ).exit_code
        == 0
    )
    with_s = pd.read_csv(a, keep_default_na=False)
    human = pd.read_csv(b, keep_default_na=False)
    assert len(with_s) == 72 and len(human) == 67
    assert set(with_s.loc[with_s["face_id"].isin(ids), "label_source"]) == {
        "suggested:propagate:both"
    }


def test_source_images_option_copies_the_photos(tiny, tmp_path):
    out = tmp_path / "src"
    assert (
        run("export", "-w", str(tiny.ws.root), "--out", str(out), "--source-images").exit_code == 0
    )
    man = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    row = man.iloc[0]
    assert (out / row["file"]).read_bytes() == (tiny.source / row["path"]).read_bytes()


def test_no_labels_is_a_clean_error(tmp_path):
    t = tinyws.build(tmp_path, {"correct": 3, "no_mask": 3})
    res = run("export", "-w", str(t.ws.root), "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "label" in res.output and "Traceback" not in res.output


def test_clusters_csv(tiny, tmp_path):
    import numpy as np

    from labeler.cluster import store

    faces = tiny.ws.faces()
    n = len(faces)
    labels = np.arange(n, dtype=np.int32) % 3
    labels[0] = -1
    result = store.ClusterResult(
        face_ids=faces["face_id"].to_numpy(),
        labels=labels,
        outlier_score=np.linspace(0, 1, n).astype(np.float32),
        xy=np.zeros((n, 2), np.float32),
        suggested=np.where(labels < 0, 1, labels).astype(np.int32),
        params={},
    )
    store.save_run(tiny.ws, result)
    out = tmp_path / "clusters.csv"
    res = run(
        "export",
        "-w",
        str(tiny.ws.root),
        "--what",
        "clusters",
        "--format",
        "csv",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out, keep_default_na=False)
    for col in [
        "path",
        "face_index",
        "x0",
        "y0",
        "x1",
        "y1",
        "cluster",
        "outlier_score",
        "label",
        "label_source",
    ]:
        assert col in df.columns
    assert len(df) == n and df["cluster"].tolist() == labels.tolist()
    assert (df["label"] == df["face_id"].map(tiny.truth.to_dict())).all()


def test_one_person_for_every_face_is_refused_not_exported_into_train_only(tiny, tmp_path):
    """A person grouping that makes every face one person cannot give a test split: refused
    with the fix, nothing written (it used to put every face into train)."""
    persons = tmp_path / "persons.csv"
    pd.DataFrame({"face_id": tiny.truth.index, "person": "everyone"}).to_csv(persons, index=False)
    out = tmp_path / "export"
    res = run(
        "export",
        "-w",
        str(tiny.ws.root),
        "--out",
        str(out),
        "--person-csv",
        str(persons),
        "--persons",
        "column",
    )
    assert res.exit_code != 0
    assert "would be empty" in res.output and "--person-csv" in res.output
    assert not out.exists()


def test_not_a_face_is_left_out_of_export_and_training(tiny, tmp_path):
    """Faces marked not_a_face (in any field) are neither exported nor trained on; Undo
    brings them back."""
    from labeler.labels import NOT_A_FACE, human_labels

    store = LabelStore(tiny.ws.labels_db)
    ids = tiny.truth.index[:4].tolist()
    store.assign(ids[:3], "mask_state", NOT_A_FACE, annotator="test", source="selection")
    store.assign(ids[3:], "gender", NOT_A_FACE, annotator="test", source="selection")
    assert store.not_faces() == set(ids)
    out = tmp_path / "out.csv"
    assert (
        run("export", "-w", str(tiny.ws.root), "--out", str(out), "--format", "csv").exit_code == 0
    )
    man = pd.read_csv(out, keep_default_na=False)
    assert len(man) == 72 - 4 and not set(ids) & set(man["face_id"])
    assert NOT_A_FACE not in set(man["mask_state"])
    trained_on = human_labels(tiny.ws, "mask_state")
    assert len(trained_on) == 72 - 4 and not set(ids) & set(trained_on["face_id"])
    store.undo("test")  # the gender mark: that face counts again
    assert store.not_faces() == set(ids[:3])
    assert len(human_labels(tiny.ws, "mask_state")) == 72 - 3
