"""Text and sizes checked where they enter (issue #30, point 6): label values and field names,
annotator names, faces too small to label, temporary crops a killed run left."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from labeler._io import remove_stale_temps
from labeler.cli import cli
from labeler.detect import MIN_FACE_SIDE
from labeler.detect.pipeline import detect_workspace, read_detect_log
from labeler.errors import InputError
from labeler.ingest import ingest_folder
from labeler.labels import LabelStore
from labeler.labels.names import (
    MAX_LABEL_LEN,
    annotator_name,
    check_label_name,
    confusable_key,
    confusable_with,
    printable,
)
from labeler.workspace import Workspace

FIELD = "mask_state"

# --- 1. label values and field names -------------------------------------------------------

BAD_VALUES = {
    "a\x00b": "U+0000",
    "x" * 300: f"longer than {MAX_LABEL_LEN}",
    "": "non-empty",
    "   ": "non-empty",
    "a/b": "'/'",
    "a\\b": "'\\\\'",
    ".": "'.'",
    "..": "'.'",
    ".hidden": "'.'",
    "end.": "'.'",
    "tab\there": "U+0009",
    "line\nbreak": "U+000A",
    "esc\x1b[31m": "U+001B",
    "rlo\u202eevil": "U+202E",
    "zero\u200bwidth": "U+200B",
    "a,b": "','",
    "what?": "'?'",
    "a:b": "':'",
    "con": "Windows",
    "NUL.txt": "Windows",
}


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "labels.db")


@pytest.mark.parametrize("value", list(BAD_VALUES))
def test_bad_label_value_is_refused_where_it_enters(store, value):
    before = store.schema()
    entries = {
        "add_value": lambda: store.add_value(FIELD, value),
        "add_field values": lambda: store.add_field("new_field", ["fine", value]),
        "add_field name": lambda: store.add_field(value, ["fine"]),
        "assign": lambda: store.assign(["f1"], FIELD, value, annotator="ann", source="single"),
    }
    for where, enter in entries.items():
        with pytest.raises(InputError) as err:
            enter()
        msg = str(err.value)
        assert msg.isprintable() and len(msg) < 300, (where, msg)  # one line, escaped
        if where != "assign":  # assign: not one of the field's values, said so first
            assert BAD_VALUES[value] in msg, (where, msg)
    assert store.schema() == before and store.history(limit=None).empty


def test_label_value_message_names_the_value_and_the_rule(store):
    with pytest.raises(InputError, match=r"label value 'x{40}'\.\.\. \(300 characters\) is "
                       r"longer than 60 characters \(export names a folder"):  # fmt: skip
        store.add_value(FIELD, "x" * 300)
    with pytest.raises(InputError, match=r"label value 'a/b' has '/': export names a folder"):
        store.add_value(FIELD, "a/b")
    with pytest.raises(InputError, match=r"label field 'a\\x00b' has the control"):
        store.add_field("a\x00b", ["v"])


@pytest.mark.parametrize("value", ["on chin", "ñandú", "マスク", "x" * MAX_LABEL_LEN, "v1.5"])
def test_good_label_values_are_kept_as_typed(store, value):
    store.add_value(FIELD, f"  {value} ")
    assert store.schema().values(FIELD)[-1] == value
    store.assign(["f1"], FIELD, value, annotator="ann", source="single")
    assert store.current_values(FIELD) == {"f1": value}


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_an_accepted_value_is_a_folder_of_its_own_name(tmp_path_factory, text):
    """Export names a class folder after each value: any accepted value must make a folder
    that lists back under exactly that name (no collision, no error)."""
    try:
        value = check_label_name(text)
    except InputError:
        return
    base = tmp_path_factory.mktemp("v")
    (base / value).mkdir()
    assert os.listdir(base) == [value]
    assert len(value.encode("utf-8")) <= 255


def test_an_old_store_with_bad_values_still_reads(tmp_path):
    """Values a former labeler let in (NUL, 300 characters, a slash) are read back as they
    are; only new labels with them are refused (export's handling is export's business)."""
    store = LabelStore(tmp_path / "labels.db")
    store.assign(["f0"], FIELD, "correct", annotator="ann", source="single")
    bad = ["a\x00b", "y" * 300, "a/b"]
    con = sqlite3.connect(store.db_path)
    with con:
        for i, v in enumerate(bad):
            con.execute(
                "INSERT INTO label_values(field, value, position) VALUES (?, ?, ?)",
                (FIELD, v, 100 + i),
            )
            eid = con.execute(
                "INSERT INTO events(ts, annotator, kind, field, value, source, undone, n_faces)"
                " VALUES (?, 'old\x1b', 'assign', ?, ?, 'single', 0, 1)",
                (time.time(), FIELD, v),
            ).lastrowid
            con.execute("INSERT INTO event_faces VALUES (?, ?)", (eid, f"f{i + 1}"))
            con.execute("INSERT INTO current VALUES (?, ?, ?, ?)", (FIELD, f"f{i + 1}", v, eid))
    con.close()
    assert store.schema().values(FIELD)[-3:] == tuple(bad)
    assert sorted(store.current(FIELD)["value"]) == sorted(["correct", *bad])
    assert set(store.counts()["value"]) == {"correct", *bad}
    assert len(store.history(limit=None)) == 4 and len(store.activity()) == 2
    with pytest.raises(InputError, match=r"'a/b' has '/'.*from an older labeler"):
        store.assign(["f9"], FIELD, "a/b", annotator="ann", source="single")
    store.add_value(FIELD, "on_forehead")  # the schema still takes new values
    assert store.schema().values(FIELD)[-1] == "on_forehead"
    assert store.undo("old\x1b") is not None  # the old annotator's events are found


def test_settings_page_new_value_box_refuses_a_slash(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from synthetic import synthetic_workspace

    from labeler.ui.state import ENV_ANNOTATOR, ENV_WORKSPACE

    ws = synthetic_workspace(tmp_path / "ws", n_faces=20, n_clusters=2)
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    monkeypatch.setenv(ENV_ANNOTATOR, "tester")
    app = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
    at = AppTest.from_file(app, default_timeout=60).run()
    at.switch_page("views/settings.py").run()
    at.text_input(key=f"new_value_{FIELD}").set_value("mask/on chin").run()
    at.button(key=f"add_value_{FIELD}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("'mask/on chin' has '/'" in e.value for e in at.error), [e.value for e in at.error]
    assert "mask/on chin" not in LabelStore(ws.labels_db).schema().values(FIELD)


# --- 2. annotator names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("\x1b[2JEve", "U+001B"),
        ("Eve\x00", "U+0000"),
        ("Ann\u202eeL", "U+202E"),
        ("Ann\u2066x", "U+2066"),
        ("An\u200bn", "U+200B"),
        ("e" * 41, "longer than 40"),
        ("  ", "empty"),
    ],
)
def test_bad_annotator_name_is_refused_in_one_line(store, name, why):
    with pytest.raises(InputError, match=re.escape(why)) as err:
        annotator_name(name)
    assert "\n" not in str(err.value) and str(err.value).isprintable()
    with pytest.raises(InputError, match=re.escape(why)):
        store.assign(["f1"], FIELD, "correct", annotator=name, source="single")
    runner = CliRunner()
    ws = Workspace.open(store.db_path.parent / "ws", create=True)
    out = runner.invoke(cli, ["annotators", "add", name, "-w", str(ws.root)])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and why in out.output
    assert "\x1b" not in out.output and "\u202e" not in out.output


def test_annotator_names_are_nfkc_and_undo_finds_them(store):
    assert annotator_name("  Ａｎｎ\u00a0 Lee ") == "Ann Lee"
    assert annotator_name("Mehr\u200cdad") == "Mehr\u200cdad"  # ZWNJ: Persian names need it
    store.assign(["f1"], FIELD, "correct", annotator="Ａｎｎ", source="single")
    assert set(store.history()["annotator"]) == {"Ann"}
    assert store.can_undo("Ａｎｎ") and store.undo("Ａｎｎ") is not None
    assert store.redo("Ann") is not None


def test_confusable_names():
    cyrillic_a = "\u0410nn"  # А
    assert confusable_key("Ann") == confusable_key("ANN") == confusable_key(cyrillic_a)
    assert confusable_key("B0b") == confusable_key("Bob") == confusable_key("Β\u03bfb")  # Greek
    assert confusable_key("Ian") == confusable_key("lan") == confusable_key("1an")
    assert confusable_key("Ann Lee") == confusable_key("AnnLee")
    assert confusable_key("Ann") != confusable_key("Anna")
    assert confusable_with(cyrillic_a, ["Bob", "Ann"]) == "Ann"
    assert confusable_with("Ann", ["Ann", "Bob"]) is None  # the same name is no lookalike
    assert confusable_with("Anna", ["Ann"]) is None


def test_a_lookalike_annotator_is_warned_about_on_first_label(store, caplog):
    store.assign(["f1"], FIELD, "correct", annotator="Ann", source="single")
    with caplog.at_level(logging.WARNING, logger="labeler.labels.store"):
        store.assign(["f2"], FIELD, "correct", annotator="\u0410nn", source="single")
        store.assign(["f3"], FIELD, "correct", annotator="\u0410nn", source="single")
        store.assign(["f4"], FIELD, "correct", annotator="Bob", source="single")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["annotator '\u0410nn' looks like 'Ann', who labeled before; their labels "
                      "and undo are kept apart: if they are one person, label under one "
                      "spelling"]  # fmt: skip


def test_annotators_add_refuses_lookalikes_and_prints_names_safely(tmp_path):
    from labeler.ui import access

    ws = Workspace.open(tmp_path / "ws", create=True)
    w = ["-w", str(ws.root)]
    runner = CliRunner()
    assert runner.invoke(cli, ["annotators", "add", "Ann", *w]).exit_code == 0
    out = runner.invoke(cli, ["annotators", "add", "\u0410nn", *w])  # Cyrillic А
    assert out.exit_code == 1 and out.output.count("\n") == 1
    assert "looks like 'Ann'" in out.output and "pick a name that reads differently" in out.output
    out = runner.invoke(cli, ["annotators", "add", "ann", *w])  # same but for case
    assert out.exit_code == 1 and "already" in out.output
    out = runner.invoke(cli, ["annotators", "add", "Ｅｖｅ", *w])
    assert out.exit_code == 0 and "annotator 'Eve'" in out.output
    assert [a.name for a in access.annotators(ws.root)] == ["Ann", "Eve"]
    # a name an older labeler stored raw is listed and shown escaped
    access.add_annotator(ws.root, "Mallory\x1b[2J\u202e")
    out = runner.invoke(cli, ["annotators", "list", *w])
    assert out.exit_code == 0 and "Mallory\\x1b[2J\\u202e  (added" in out.output
    out = runner.invoke(cli, ["annotators", "reset", "Mallory\x1b[2J\u202e", *w])
    assert out.exit_code == 0 and "\x1b" not in out.output and "\u202e" not in out.output


def test_printable_and_markdown_text():
    from labeler.ui.auth import markdown_text

    assert printable("Ann Lee") == "Ann Lee" and printable("Zoë 李") == "Zoë 李"
    assert printable("a\x00b\u202ec\n") == "a\\x00b\\u202ec\\n"
    assert markdown_text("[x](http://e.vil) **b** :red[c]") == (
        "\\[x\\]\\(http\\://e\\.vil\\) \\*\\*b\\*\\* \\:red\\[c\\]"
    )


def test_sign_in_takes_the_nfkc_name_and_refuses_a_bidi_one(tmp_path, monkeypatch):
    from streamlit import config
    from streamlit.testing.v1 import AppTest
    from synthetic import synthetic_workspace

    from labeler.ui import access, auth
    from labeler.ui.state import ENV_WORKSPACE

    ws = synthetic_workspace(tmp_path / "ws", n_faces=20, n_clusters=2)
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    password = access.add_annotator(ws.root, "Ann").password
    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        app = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
        at = AppTest.from_file(app, default_timeout=60).run()
        at.text_input(key=auth.NAME).set_value("Ann\u202e")
        at.text_input(key=auth.PASSWORD).set_value(password)
        at.button(key=auth.SIGN_IN_BTN).click().run()
        assert any("U+202E" in e.value for e in at.error), [e.value for e in at.error]
        at.text_input(key=auth.NAME).set_value("Ａｎｎ")  # fullwidth: NFKC 'Ann'
        at.text_input(key=auth.PASSWORD).set_value(password)
        at.button(key=auth.SIGN_IN_BTN).click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.header[0].value == "Overview"
    finally:
        config.set_option("server.address", old)


# --- 3. faces too small to label ------------------------------------------------------------


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


SIZES = {"one_px": (1, 1), "tiny": (4, 11), "just_below": (7, 30), "at_floor": (8, 8),
         "crop": (64, 80)}  # fmt: skip


def _tiny_workspace(tmp_path: Path) -> tuple[Workspace, dict[str, str]]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (name, (w, h)) in enumerate(SIZES.items()):
        _noise(w, h, seed=i).save(folder / f"{name}.png")
    ws = Workspace.open(tmp_path / "ws", create=True)
    ingest_folder(ws, folder)
    images = ws.images()
    assert (images["status"] == "ok").all(), images[["path", "error"]]
    return ws, dict(zip(images["path"].str.removesuffix(".png"), images["image_id"], strict=True))


@pytest.mark.parametrize("detector", ["mediapipe", "none"])
def test_images_below_the_smallest_face_side_are_recorded_not_labeled(tmp_path, detector):
    ws, ids = _tiny_workspace(tmp_path)
    res = detect_workspace(ws, detector=detector, min_size=0, workers=1)
    faces = ws.faces()
    kept = set(faces["image_id"])
    assert kept == {ids["at_floor"], ids["crop"]} and faces["whole_image"].all()
    assert res.too_small == 3 and res.faces == 2
    log_df = read_detect_log(ws).set_index("image_id")
    note = log_df.loc[ids["one_px"], "note"]
    assert note == "image is 1x1 px, below the smallest face side (8 px): not offered for labeling"
    assert log_df["note"].notna().sum() == 3 and log_df["error"].isna().all()
    cfg = json.loads(ws.step_config_path("detect").read_text())
    assert sorted(cfg["too_small_image_ids"]) == sorted(
        ids[k] for k in ("one_px", "tiny", "just_below")
    )
    assert {p.name for p in ws.crops_dir.rglob("*") if p.is_file()} <= {
        f"{f}{ext}" for f in faces["face_id"] for ext in (".jpg", ".box.jpg")
    }
    # resumed: nothing redone, the notes stay
    again = detect_workspace(ws, detector=detector, min_size=0, workers=1)
    assert again.processed == 0 and read_detect_log(ws)["note"].notna().sum() == 3


def test_old_detect_log_without_note_reads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ws = Workspace.open(tmp_path / "ws", create=True)
    pq.write_table(
        pa.table({"image_id": ["a"], "n_faces": pa.array([1], pa.int32()),
                  "whole_image": [False], "error": pa.array([None], pa.string())}),
        ws.root / "detect_log.parquet",
    )  # fmt: skip
    log_df = read_detect_log(ws)
    assert list(log_df.columns) == ["image_id", "n_faces", "whole_image", "error", "note"]
    assert log_df["note"].isna().all()


def test_realmasks_crops_below_the_floor_are_few(realmasks):
    """The floor drops slivers, not real small faces: of realmasks' 2,009 web face crops
    (box + 20 %, not resized; masks still show at 9 px) one, 4x11 px, is below it."""
    sides = []
    for f in sorted((realmasks / "images").iterdir()):
        with Image.open(f) as im:
            sides.append(min(im.size))
    sides = np.array(sides)
    below = int((sides < MIN_FACE_SIDE).sum())
    assert len(sides) == 2009 and below == 1, below
    assert sides[sides >= MIN_FACE_SIDE].min() == 9


# --- 4. temporary crops left by a killed run ------------------------------------------------


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from labeler._io import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half a jpeg")
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(path: Path) -> Path:
    """Start a process that is killed (SIGKILL) halfway through writing ``path``: the
    temporary file it leaves, as a killed ``labeler detect`` leaves one in crops/."""
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], capture_output=True, text=True
    )
    assert done.returncode == -9, done.stderr
    tmp = Path(done.stdout.strip())
    assert tmp.exists() and tmp.parent == path.parent
    return tmp


def test_detect_removes_temp_crops_of_killed_runs(tmp_path):
    ws, ids = _tiny_workspace(tmp_path)
    detect_workspace(ws, detector="none", workers=1)
    face_id = ws.faces()["face_id"].iloc[0]
    stray = _killed_write(ws.crop_path(face_id))
    stray_table = _killed_write(ws.faces_path)
    assert stray.name.startswith(f".{face_id}.jpg.") and stray.name.endswith(".tmp")
    # a write in flight in a live process (this one) is left alone
    live = ws.crop_path(face_id).with_name(f".x.jpg.{os.getpid()}.1.0123abcd.tmp")
    live.write_bytes(b"writing")
    res = detect_workspace(ws, detector="none", workers=1)
    assert res.processed == 0 and res.stale_temps == 2
    assert not stray.exists() and not stray_table.exists() and live.exists()
    left = {p.name for p in ws.crops_dir.rglob("*") if p.is_file()}
    crops = {f"{f}{ext}" for f in ws.faces()["face_id"] for ext in (".jpg", ".box.jpg")}
    assert live.name in left and left - {live.name} <= crops


def test_remove_stale_temps_rules(tmp_path):
    sub = tmp_path / "ab"
    sub.mkdir()
    dead = _killed_write(sub / "f.jpg")
    wal = Path(f"{dead}-wal")
    wal.write_bytes(b"")
    mine = sub / f".g.jpg.{os.getpid()}.7.deadbeef.tmp"
    old_mine = sub / f".h.jpg.{os.getpid()}.7.deadbeef.tmp"
    other = sub / ".not.a.temp.tmp"  # not our pattern: kept
    plain = sub / "f.jpg"
    for p in (mine, old_mine, other, plain):
        p.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old_mine, (two_hours_ago, two_hours_ago))
    assert remove_stale_temps(tmp_path) == []  # not recursive: nothing at the top
    removed = remove_stale_temps(tmp_path, recursive=True)
    assert sorted(removed) == sorted([dead, wal, old_mine])
    assert sorted(p.name for p in sub.iterdir()) == sorted([mine.name, other.name, "f.jpg"])
    assert remove_stale_temps(tmp_path / "missing", recursive=True) == []
