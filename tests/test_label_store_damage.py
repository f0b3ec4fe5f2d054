"""A label store with a sound header but garbage in its middle pages (issue #22).

The cheap header check passes such a file; ``PRAGMA quick_check`` does not. The app refuses
to start on it (the function ``labeler app`` calls, and the command itself), it is never
backed up, rotation never deletes the newest sound backup, and after 20 refused starts
``labeler labels restore`` brings back every label from the last sound backup.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from labeler.cli import cli
from labeler.cli.app import start_checks
from labeler.labels import LabelStore, LabelStoreError
from labeler.labels.backup import (
    KEEP,
    check_store,
    list_backups,
    make_backup,
    maybe_backup,
    prune_backups,
    restore_backup,
)
from labeler.workspace import Workspace

PAGE = 4096


def labeler_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from labeler.cli import main; main()", *args]


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def labeled_workspace(root: Path) -> Workspace:
    """A workspace whose store holds 240 events on 2,400 faces (well over 10 pages)."""
    ws = Workspace.open(root, create=True)
    store = LabelStore(ws.labels_db)
    values = ("correct", "no_mask", "nose_exposed", "chin_exposed", "on_chin")
    for i in range(240):
        faces = [f"img{i:05d}_{j}" for j in range(10)]
        store.assign(faces, "mask_state", values[i % 5], annotator=f"a{i % 3}", source="single")
    store.assign(["img00000_0"], "gender", "female", annotator="a0", source="single")
    store.undo("a0")  # an undone event too
    return ws


def checkpoint(db: Path) -> None:
    """Move the WAL's pages into the main file (as a closed app leaves it)."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def damage_middle_pages(db: Path, first: int = 5, last: int = 10, seed: int = 0) -> None:
    """Overwrite pages ``first``..``last`` (1-based) with random bytes; page 1 (the header
    and the schema root) stays as it was."""
    checkpoint(db)
    assert db.stat().st_size // PAGE > last, "the store must have more pages than damaged"
    rng = random.Random(seed)
    with open(db, "r+b") as fh:
        fh.seek((first - 1) * PAGE)
        fh.write(rng.randbytes((last - first + 1) * PAGE))


def labels_of(db: Path) -> pd.DataFrame:
    cur = LabelStore(db).current()
    return cur.sort_values(["field", "face_id"]).reset_index(drop=True)


@pytest.mark.parametrize("pages", [(5, 10), (2, 3), (12, 20)])
def test_quick_check_finds_garbage_that_the_header_check_misses(tmp_path, pages):
    ws = labeled_workspace(tmp_path / "ws")
    assert check_store(ws.labels_db) is None
    damage_middle_pages(ws.labels_db, *pages)
    assert check_store(ws.labels_db, thorough=False) is None  # the header is sound
    why = check_store(ws.labels_db)
    assert why is not None and ("malformed" in why or "damaged" in why), why


def test_damaged_store_refused_at_start_never_backed_up_and_restored(tmp_path):
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    sound = start_checks(ws)  # the app's start-up: check, then one backup
    assert sound is not None and check_store(sound) is None
    before = labels_of(db)
    assert len(before) == 2400
    damage_middle_pages(db)
    damaged = db.read_bytes()
    backups_before = sorted(b.path.name for b in list_backups(db))

    # the function `labeler app` calls refuses, with one line naming the file and the fix
    with pytest.raises(LabelStoreError) as err:
        start_checks(ws)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(db) in msg and f"labeler labels restore -w {ws.root}" in msg
    assert "app was not started" in msg

    # the command itself exits before Streamlit starts: one line, exit code 1, no server
    t0 = time.monotonic()
    proc = subprocess.run(
        labeler_cmd("app", "-w", str(ws.root), "--port", "8599"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    line = one_line_error(proc.stderr)
    assert str(db) in line and "labeler labels restore" in line, line
    assert "labeler app on http" not in proc.stdout  # never got as far as launching it
    assert time.monotonic() - t0 < 60

    # 20 more starts, plus the automatic backups that label events trigger: all refused
    for i in range(20):
        with pytest.raises(LabelStoreError):
            start_checks(ws)
        with pytest.raises(LabelStoreError, match="not backed up"):
            make_backup(db)
        assert maybe_backup(db, 50 * (i + 1)) is None
    assert sorted(b.path.name for b in list_backups(db)) == backups_before
    assert db.read_bytes() == damaged  # the damaged store is left as it was
    wal = b"a WAL left by a crash: the store's last commits"
    Path(f"{db}-wal").write_bytes(wal)

    # restore picks the newest sound backup: every label is back
    res = CliRunner().invoke(cli, ["labels", "restore", "-w", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert sound.name in res.output
    pd.testing.assert_frame_equal(labels_of(db), before)
    (aside,) = ws.root.glob("labels.db.damaged-*[0-9Z]")  # kept aside, not deleted
    assert aside.read_bytes() == damaged
    assert Path(f"{aside}-wal").read_bytes() == wal  # with its WAL, under its name
    # damaged again and restored again (within the same second, as a script would): the
    # first copy stays, the second gets its own name
    damage_middle_pages(db)
    assert restore_backup(db) is not None
    copies = sorted(ws.root.glob("labels.db.damaged-*[0-9Z]"))
    assert len(copies) == 2 and aside in copies and aside.read_bytes() == damaged
    assert start_checks(ws) is not None  # the restored store starts again


def test_rotation_never_deletes_the_newest_sound_backup(tmp_path):
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    sound = make_backup(db)
    n_sound = len(list_backups(db))  # the label events' automatic backups and this one
    before = labels_of(db)
    damage_middle_pages(db)
    # damaged backups newer than the sound one (what an older labeler wrote on each start)
    base = time.time()
    for i in range(KEEP + 5):
        bad = sound.with_name(f"labels-2099010{i % 10}T00000{i // 10}Z-e{999 + i}.db")
        bad.write_bytes(db.read_bytes())
        os.utime(bad, (base + 10 + i, base + 10 + i))
    assert [b.path for b in list_backups(db)].index(sound) == KEEP + 5
    gone = prune_backups(db)
    assert sound not in gone and sound.exists()
    assert len(gone) == 5 + n_sound - 1 and len(list_backups(db)) == KEEP + 1
    # restore skips the newer damaged ones and picks the sound one
    assert restore_backup(db) == sound
    pd.testing.assert_frame_equal(labels_of(db), before)


def test_backups_written_within_one_clock_tick_list_newest_first(tmp_path):
    """Backups with the same file time (one tick of the file system's clock: a few ms here,
    1-2 s on FAT or HFS+) list by event number and collision suffix as numbers: as text,
    e100 came before e99 and e5-1 before e5, and restore picked an older backup."""
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    sound = make_backup(db)
    names = ["labels-20260101T000000Z-e99.db", "labels-20260101T000000Z-e100.db",
             "labels-20260101T000001Z-e5.db", "labels-20260101T000001Z-e5-1.db",
             "labels-20260101T000001Z-e5-2.db"]  # fmt: skip
    tick = time.time() + 10
    for name in names:
        path = sound.with_name(name)
        path.write_bytes(sound.read_bytes())
        os.utime(path, (tick, tick))
    got = [b.path.name for b in list_backups(db)][:5]
    assert got == [names[4], names[3], names[2], names[1], names[0]], got
    assert restore_backup(db).name == names[4]
