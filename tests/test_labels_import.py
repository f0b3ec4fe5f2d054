"""labeler labels import: CSV, class folders and Label Studio exports into the label store,
as events; round trips through the exports; nothing guessed, everything reported."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import tinyws
from click.testing import CliRunner

from labeler.cli import cli
from labeler.labels import LabelStore, human_labels
from labeler.labels.importing import import_labels

PERSONS = ("--person-pattern", r"^(person_\d+)/")


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def labels_of(store: LabelStore) -> set[tuple[str, str, str]]:
    cur = store.current()
    return set(zip(cur["face_id"], cur["field"], cur["value"], strict=True))


def wipe(ws) -> LabelStore:
    """A new, empty label store for the workspace (the old one and its backups gone)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ws.labels_db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(ws.root / "backups", ignore_errors=True)
    store = LabelStore(ws.labels_db)
    assert store.current().empty
    return store


@pytest.fixture
def tiny(tmp_path):
    """72 faces labeled mask_state (truth), 12 of them gender, one age_band."""
    t = tinyws.build(tmp_path, {"correct": 30, "no_mask": 30, "on_chin": 12}, faces_per_person=3)
    tinyws.label_all(t)
    store = LabelStore(t.ws.labels_db)
    ids = t.truth.index
    store.assign(ids[:6], "gender", "female", annotator="ann", source="single")
    store.assign(ids[40:46], "gender", "male", annotator="bob", source="selection")
    store.assign(ids[50:51], "age_band", "adult", annotator="bob", source="single")
    return t


def import_cli(ws, source, *extra: str):
    return run("labels", "import", "-w", str(ws.root), str(source), "--annotator", "imp", *extra)


# --- round trips ---------------------------------------------------------------------------


def test_manifest_round_trip_gives_identical_current_labels(tiny, tmp_path):
    """Export the manifest, wipe the store, import the manifest back: the same current
    labels, every field, now as 'import' events by the annotator."""
    ws = tiny.ws
    before = labels_of(LabelStore(ws.labels_db))
    out = tmp_path / "m.csv"
    res = run("export", "-w", str(ws.root), "--out", str(out), "--format", "csv", *PERSONS)
    assert res.exit_code == 0, res.output
    store = wipe(ws)
    res = import_cli(ws, out)
    assert res.exit_code == 0, res.output
    assert labels_of(store) == before
    cur = store.current()
    assert set(cur["source"]) == {"import"} and set(cur["annotator"]) == {"imp"}
    assert "72 faces matched" in res.output and "mask_state: 72 new" in res.output
    # the loop learns from them: they are human labels like any other
    assert len(human_labels(ws, "mask_state")) == 72
    # again: nothing new, no event written
    events = len(store.history(None))
    res = import_cli(ws, out)
    assert "mask_state: 0 new, 72 already so" in res.output
    assert len(store.history(None)) == events


def test_labels_csv_by_path_and_by_file_name_round_trips(tiny, tmp_path):
    """A spreadsheet without face ids (';' between cells, as some spreadsheets write): rows
    matched by the photo's path relative to the ingested folder, or by its file name alone
    (unique here), several field columns."""
    ws = tiny.ws
    store = LabelStore(ws.labels_db)
    before = labels_of(store)
    wide = store.current_wide(["mask_state", "gender"]).fillna("")
    images = ws.images().set_index("image_id")["path"]
    wide["path"] = wide["face_id"].str.rsplit("_", n=1).str[0].map(images)
    by_path, by_name = tmp_path / "by_path.csv", tmp_path / "by_name.csv"
    wide[["path", "mask_state", "gender"]].to_csv(by_path, index=False, sep=";")  # a spreadsheet
    named = wide.assign(file=wide["path"].str.rsplit("/", n=1).str[-1])
    named[["file", "mask_state", "gender"]].rename(columns={"mask_state": "state"}).to_csv(
        by_name, index=False
    )
    want = {x for x in before if x[1] in ("mask_state", "gender")}
    wipe(ws)
    assert import_cli(ws, by_path).exit_code == 0
    assert labels_of(store) == want
    wipe(ws)
    res = import_cli(ws, by_name, "--field", "mask_state=state", "--field", "gender")
    assert res.exit_code == 0, res.output
    assert labels_of(store) == want


def test_label_studio_round_trip(tiny, tmp_path):
    """Label Studio tasks exported by labeler and read back (as Label Studio exports a
    project): the human labels come back; suggestions (predictions) never become labels."""
    ws = tiny.ws
    store = LabelStore(ws.labels_db)
    ids = tiny.truth.index[:4].tolist()
    store.assign(ids, "mask_state", None, annotator="test", source="single")
    store.write_suggestions(
        pd.DataFrame(
            {"face_id": ids, "field": "mask_state", "value": "no_mask", "confidence": 0.8}
        ),
        "propagate:both",
    )
    before = labels_of(store)
    out = tmp_path / "ls"
    res = run("export", "-w", str(ws.root), "--out", str(out), "--format", "label-studio", *PERSONS)
    assert res.exit_code == 0, res.output
    wipe(ws)
    res = import_cli(ws, out / "label_studio_tasks.json")
    assert res.exit_code == 0, res.output
    assert labels_of(store) == before
    assert not set(ids) & set(store.current("mask_state")["face_id"])


# --- class folders: 200 real photos --------------------------------------------------------


def test_class_folders_of_200_shared_photos_in_one_command(realmasks, tmp_path):
    """200 realmasks photos ingested and detected (--detector none: they are face crops);
    copies hand-sorted into class folders by labels.csv's state; one import labels every
    face with its state, matched by the photos' bytes (the copies are renamed)."""
    table = pd.read_csv(realmasks / "labels.csv").sample(200, random_state=0)
    photos, ws_dir, sorted_dir = tmp_path / "photos", tmp_path / "ws", tmp_path / "sorted"
    photos.mkdir()
    for name in table["file"]:
        shutil.copyfile(realmasks / "images" / name, photos / name)
    assert run("ingest", str(photos), "-w", str(ws_dir)).exit_code == 0
    assert run("detect", "-w", str(ws_dir), "--detector", "none").exit_code == 0
    for i, (name, state) in enumerate(zip(table["file"], table["state"], strict=True)):
        (sorted_dir / state).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos / name, sorted_dir / state / f"copy_{i:03d}.jpg")
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_dir)
    store = LabelStore(ws.labels_db)
    # 'incorrect' is not a mask_state value: one line naming it, nothing written
    res = run("labels", "import", "-w", str(ws_dir), str(sorted_dir), "--annotator", "ann")
    assert res.exit_code != 0
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "incorrect" in line and "--add-values" in line
    assert store.current().empty
    t0 = time.perf_counter()
    res = run(
        "labels", "import", "-w", str(ws_dir), str(sorted_dir), "--annotator", "ann",
        "--add-values",
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    assert "200 faces matched" in res.output and "mask_state: 200 new" in res.output
    print(f"class-folder import of 200 photos: {seconds:.2f} s")
    cur = store.current("mask_state")
    paths = ws.images().set_index("image_id")["path"]
    files = cur["face_id"].str.rsplit("_", n=1).str[0].map(paths)
    got = dict(zip(files, cur["value"], strict=True))
    assert got == dict(zip(table["file"], table["state"], strict=True))
    assert "incorrect" in store.schema().values("mask_state")
    assert set(cur["source"]) == {"import"} and set(cur["annotator"]) == {"ann"}
    assert seconds < 30


# --- nothing guessed -----------------------------------------------------------------------


def test_folders_report_conflicts_unmatched_loose_and_match_by_name(tiny, tmp_path):
    ws = tiny.ws
    images = ws.images()
    src = [tiny.source / p for p in images["path"]]
    root = tmp_path / "sorted"
    for d in ("correct", "no_mask"):
        (root / d).mkdir(parents=True)
    shutil.copyfile(src[0], root / "correct" / "a.jpg")
    shutil.copyfile(src[0], root / "no_mask" / "a_again.jpg")  # one photo in two classes
    shutil.copyfile(src[1], root / "correct" / "b.jpg")
    (root / "correct" / "re-encoded").mkdir()  # other bytes, the ingested file name
    from PIL import Image

    Image.open(src[2]).save(root / "correct" / "re-encoded" / Path(src[2]).name, quality=50)
    Image.new("RGB", (20, 20), "red").save(root / "no_mask" / "stranger.jpg")
    shutil.copyfile(src[3], root / "loose.jpg")
    (root / "no_mask" / "notes.txt").write_text("not a photo")
    store = wipe(ws)
    res = import_cli(ws, root)
    assert res.exit_code == 0, res.output
    face = {images["path"][i]: f"{images['image_id'][i]}_0" for i in range(4)}
    assert state(store) == {face[images["path"][1]]: "correct", face[images["path"][2]]: "correct"}
    lines = res.output.splitlines()
    conflict = [x for x in lines if "two values" in x]
    assert len(conflict) == 1 and conflict[0].strip().startswith("1 face given")
    assert "correct (correct/a.jpg) / no_mask (no_mask/a_again.jpg)" in conflict[0]
    unmatched = [x for x in lines if "matching no ingested photo" in x]
    assert len(unmatched) == 1 and "no_mask/stranger.jpg" in unmatched[0]
    assert any("loose.jpg" in x and "no class folder" in x for x in lines)


def state(store: LabelStore, field: str = "mask_state") -> dict[str, str]:
    return store.current_values(field)


def test_a_photo_label_is_never_guessed_onto_one_of_several_faces(tiny, tmp_path):
    """A photo with 3 faces and one label for the photo: reported, no face labeled; rows that
    name the face (face_id, or path + face_index) label it."""
    ws = tiny.ws
    faces = ws.faces()
    crowd = faces["image_id"].iloc[0]
    extra = faces[faces["image_id"] == crowd].copy()
    more = []
    for k in (1, 2):
        row = extra.copy()
        row["face_index"] = k
        row["face_id"] = f"{crowd}_{k}"
        more.append(row)
    ws.write_faces(pd.concat([faces, *more], ignore_index=True))
    path = ws.images().set_index("image_id").at[crowd, "path"]
    csv = tmp_path / "l.csv"
    pd.DataFrame(
        {
            "path": [path, path, tiny.ws.images()["path"].iloc[1]],
            "face_index": ["", "2", ""],
            "mask_state": ["no_mask", "on_chin", "no_mask"],
        }
    ).to_csv(csv, index=False)
    store = wipe(ws)
    res = import_cli(ws, csv)
    assert res.exit_code == 0, res.output
    second = f"{ws.images()['image_id'].iloc[1]}_0"
    assert state(store) == {f"{crowd}_2": "on_chin", second: "no_mask"}
    line = next(x for x in res.output.splitlines() if "several faces" in x)
    assert line.strip().startswith("1 row naming") and "row 2 (3 faces)" in line
    assert "never guessed" in line


def test_an_exported_tree_of_photos_imports_back_face_by_face(tiny, tmp_path):
    """labeler's ImageFolder export of the source photos (--source-images) as class folders:
    two faces of one photo, two copies of it named after their faces; each gets its label."""
    ws = tiny.ws
    faces = ws.faces()
    crowd = faces["image_id"].iloc[0]
    twin = faces[faces["image_id"] == crowd].assign(face_index=1, face_id=f"{crowd}_1")
    ws.write_faces(pd.concat([faces, twin], ignore_index=True))
    store = LabelStore(ws.labels_db)
    store.assign([f"{crowd}_1"], "mask_state", "on_chin", annotator="ann", source="single")
    before = store.current_values("mask_state")
    out = tmp_path / "export"
    res = run(
        "export", "-w", str(ws.root), "--out", str(out), "--source-images", *PERSONS
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    wipe(ws)
    res = import_cli(ws, out)
    assert res.exit_code == 0, res.output
    assert store.current_values("mask_state") == before
    assert "several faces" not in res.output and "73 faces matched" in res.output


def test_csv_conflicts_ambiguous_names_and_suggestion_rows_are_reported(tiny, tmp_path):
    ws = tiny.ws
    images = ws.images()
    # two ingested photos with one file name in two folders: the name alone is ambiguous
    twin = tiny.source / "elsewhere" / Path(images["path"][0]).name
    twin.parent.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), "blue").save(twin)
    assert run("ingest", str(tiny.source), "-w", str(ws.root)).exit_code == 0
    f0, f1 = (f"{i}_0" for i in images["image_id"][:2])
    csv = tmp_path / "l.csv"
    pd.DataFrame(
        {
            "face_id": [f0, f0, f1, "", "", "nope_0"],
            "path": ["", "", "", Path(images["path"][0]).name, "no/such.jpg", ""],
            "mask_state": ["correct", "no_mask", "on_chin", "correct", "correct", "correct"],
            "label_source": ["single", "single", "suggested:propagate:both", "", "", ""],
        }
    ).to_csv(csv, index=False)
    store = wipe(ws)
    res = import_cli(ws, csv)
    assert res.exit_code == 0, res.output
    assert state(store) == {}
    out = res.output
    assert "1 face given two values" in out and f"{f0} mask_state: correct (row 2)" in out
    assert "1 row holding machine suggestions" in out and "row 4" in out
    assert "1 row naming a file name several ingested photos have" in out
    assert "2 rows matching no ingested photo or face" in out and "row 6; row 7" in out


def test_unknown_and_invalid_values_stop_the_import_with_one_line(tiny, tmp_path):
    ws = tiny.ws
    f0 = tiny.truth.index[0]
    store = wipe(ws)
    csv = tmp_path / "l.csv"
    pd.DataFrame({"face_id": [f0], "mask_state": ["Correct"], "glasses": ["sun"]}).to_csv(
        csv, index=False
    )
    res = import_cli(ws, csv, "--field", "mask_state", "--field", "glasses")
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1
    assert "Correct" in res.output and "correct" in res.output  # the case hint
    assert "'glasses' is not in the schema" in res.output and "--add-values" in res.output
    assert store.current().empty
    res = import_cli(ws, csv, "--field", "mask_state", "--field", "glasses", "--add-values")
    assert res.exit_code == 0, res.output
    assert store.schema().values("glasses") == ("sun",)
    assert state(store, "glasses") == {f0: "sun"}
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"face_id": [f0], "mask_state": ["a/b"]}).to_csv(bad, index=False)
    res = import_cli(ws, bad, "--add-values")
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1
    assert "row 2" in res.output and "'/'" in res.output
    assert "a/b" not in store.schema().values("mask_state")


def test_labeled_faces_keep_their_label_unless_relabel_and_undo_takes_it_back(tiny, tmp_path):
    ws = tiny.ws
    store = LabelStore(ws.labels_db)
    f0, f1 = tiny.truth.index[:2]
    old = state(store)
    csv = tmp_path / "l.csv"
    pd.DataFrame({"face_id": [f0, f1], "mask_state": ["on_chin", old[f1]]}).to_csv(csv, index=False)
    events = len(store.history(None))
    res = import_cli(ws, csv, "--dry-run")
    assert "dry run" in res.output and len(store.history(None)) == events
    res = import_cli(ws, csv)
    assert "1 already so, 1 labeled otherwise (kept; --relabel" in res.output
    assert state(store) == old and len(store.history(None)) == events
    res = import_cli(ws, csv, "--relabel")
    assert res.exit_code == 0 and "(relabeled)" in res.output
    assert state(store)[f0] == "on_chin"
    assert store.current("mask_state").set_index("face_id").at[f0, "source"] == "import"
    assert store.undo("imp") is not None
    assert state(store) == old


def test_label_studio_export_of_a_team_project(tiny, tmp_path):
    """A Label Studio project on the raw photos (local files, uploads), two annotators:
    choices matched by the image URL; a disagreement is a conflict; cancelled annotations and
    predictions are never read."""
    ws = tiny.ws
    paths = ws.images()["path"].tolist()
    ids = [f"{i}_0" for i in ws.images()["image_id"]]

    def ann(value, cancelled=False, field="mask_state"):
        return {
            "completed_by": 3,
            "was_cancelled": cancelled,
            "result": [
                {
                    "id": "x",
                    "from_name": field,
                    "to_name": "img",
                    "type": "choices",
                    "value": {"choices": [value]},
                }
            ],
        }

    pred = {"model_version": "m", "result": ann("on_chin")["result"]}
    tasks = [
        {"id": 1, "data": {"image": f"/data/local-files/?d=photos/{paths[0]}"},
         "annotations": [ann("no_mask"), ann("correct", cancelled=True)], "predictions": [pred]},
        {"id": 2, "data": {"image": f"/data/upload/7/0a1b2c3d-{Path(paths[1]).name}"},
         "annotations": [ann("correct"), ann("male", field="gender")]},
        {"id": 3, "data": {"img": f"s3://bucket/{paths[2]}"},
         "annotations": [ann("correct"), ann("no_mask")]},
        {"id": 4, "data": {"image": "/data/upload/7/0a1b2c3d-unknown.jpg"},
         "annotations": [ann("correct")]},
        {"id": 5, "data": {"image": f"/data/local-files/?d={paths[3]}"}, "annotations": [],
         "predictions": [pred]},
    ]  # fmt: skip
    path = tmp_path / "project.json"
    path.write_text(json.dumps(tasks))
    store = wipe(ws)
    report = import_labels(ws, path, annotator="imp")
    assert state(store) == {ids[0]: "no_mask", ids[1]: "correct"}
    assert state(store, "gender") == {ids[1]: "male"}
    kinds = {i.kind: i for i in report.issues}
    assert kinds["conflict"].count == 1 and ids[2] in kinds["conflict"].examples[0]
    assert kinds["unmatched"].examples == ("task 4",)
    assert kinds["no_choice"].examples == ("task 5",)
    # Label Studio's JSON-MIN export: one flat object a task
    wipe(ws)
    path.write_text(
        json.dumps([{"image": f"/data/local-files/?d={paths[4]}", "mask_state": "on_chin"}])
    )
    import_labels(ws, path, annotator="imp")
    assert state(store) == {ids[4]: "on_chin"}


def test_bad_sources_are_one_line_errors(tiny, tmp_path):
    ws = tiny.ws
    no_key = tmp_path / "k.csv"
    pd.DataFrame({"who": ["x"], "mask_state": ["correct"]}).to_csv(no_key, index=False)
    no_field = tmp_path / "f.csv"
    pd.DataFrame({"face_id": ["x"], "state": ["correct"]}).to_csv(no_field, index=False)
    not_json = tmp_path / "t.json"
    not_json.write_text("{not json")
    for source, words in (
        (no_key, "'face_id' or 'path'"),
        (no_field, "--field FIELD=COLUMN"),
        (not_json, "not JSON"),
    ):
        res = import_cli(ws, source)
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and words in res.output, res.output
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    res = import_cli(ws, empty)
    assert res.exit_code == 0 and "read 0 tasks" in res.output and "imported 0 labels" in res.output
    res = run("labels", "import", "-w", str(ws.root), str(no_key))  # no annotator
    assert res.exit_code != 0 and "--annotator" in res.output


def test_an_annotator_labeling_during_the_import_keeps_her_labels(tiny, tmp_path):
    """The second session (issue 31's rule for every write path): faces an annotator labels
    in the app after the import planned and before it writes are left as she set them and
    reported; the rest are imported. A face marked not a face is never labeled by an
    import, in any field."""
    from labeler.labels.importing import apply_import

    ws = tiny.ws
    store = LabelStore(ws.labels_db)
    ids = list(tiny.truth.index)
    fresh = ids[60:72]
    # 12 faces unlabeled for mask_state, as a new photo's would be
    store.assign(fresh, "mask_state", None, annotator="ann", source="selection")
    csv = tmp_path / "l.csv"
    pd.DataFrame({"face_id": fresh, "mask_state": ["no_mask"] * 12}).to_csv(csv, index=False)
    store.assign(fresh[:1], "gender", "not_a_face", annotator="ann", source="single")
    plan = import_labels(ws, csv, annotator="imp", dry_run=True)
    assert plan.new == 11  # the face marked not a face (in gender) counts as labeled
    # Bea labels 3 of the planned faces in the app meanwhile
    store.assign(fresh[1:4], "mask_state", "correct", annotator="bea", source="selection")
    done = apply_import(store, plan, annotator="imp")
    now = store.current("mask_state").set_index("face_id")
    assert [now.at[f, "value"] for f in fresh[1:4]] == ["correct"] * 3
    assert set(now.loc[fresh[1:4], "annotator"]) == {"bea"}
    assert (now.loc[fresh[4:], "value"] == "no_mask").all()
    assert fresh[0] not in now.index or now.at[fresh[0], "value"] != "no_mask"
    assert done.written_labels == 8
    assert done.meanwhile == (
        "mask_state=no_mask: 3 faces were labeled correct by bea meanwhile and were left as "
        "they are",
    )
    assert any("by bea meanwhile" in line for line in done.lines())
