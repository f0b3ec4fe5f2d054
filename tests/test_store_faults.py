"""Faults around the label store (issue #30), each on a real store the test writes.

- ``labeler labels restore`` killed (SIGKILL) at many instants: ``labels.db`` is always the
  old store (with its WAL) or the new complete one, never neither and never the new one with
  the old WAL replayed onto it; after the kill ``labeler app``'s start checks and another
  restore bring every label back. ``labeler labels backup`` killed likewise: the old backups
  stay, no half backup is listed.
- A store that is missing while backups exist is refused (one line naming ``labeler labels
  restore``), never started afresh; rotation keeps the backup with the most events; restore
  refuses a store another process holds open.
- 4 writers and a checker: a sound store is never reported truncated (a checkpoint writes
  page 1 before the pages that make the file that long); ``LABELER_STRESS_S=60`` runs it
  for a minute instead of 10 s.
- A full disk (a real ``RLIMIT_FSIZE``), ``--port 99999`` and a read-only workspace: one line
  naming the file and the fix.

The kill tests run the real ``labeler`` entry point in a process forked from a warm
interpreter (:class:`Zygote`): each run costs the command itself (0.1-0.3 s), not the 1.7 s
of imports of a fresh interpreter, so the kills land inside the command's work: at instants
spread over one uninterrupted run, and right after the command makes each file of its
protocol (the new store's temporary copy, the damaged store's second name, the old store's
backup). Run with ``-s`` to see each kill's instant and what it left.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_label_store_damage import checkpoint, labeled_workspace, labeler_cmd, one_line_error

from labeler.cli import cli
from labeler.cli.app import start_checks
from labeler.labels import LabelStore, LabelStoreError
from labeler.labels.backup import (
    KEEP,
    backup_dir,
    check_store,
    list_backups,
    make_backup,
    prune_backups,
    restore_backup,
)
from labeler.workspace import Workspace

FIELD = "mask_state"
VALUES = ("correct", "no_mask", "nose_exposed", "chin_exposed", "on_chin")
N_EVENTS = 2000  # the newest automatic backup holds these
MAIN = 2010  # the store's main file holds these (its last checkpoint)
TAIL = 30  # events after the backup: the last 20 only in the store's WAL
FACES_PER_EVENT = 22


# -- a store of a few thousand events, with its WAL, as a killed app leaves it ----------------
@dataclass(frozen=True)
class BigStore:
    root: Path  # a workspace: labels.db + labels.db-wal + backups/ (two backups)
    backup: str  # the newest backup's name: N_EVENTS events
    wal: bytes  # the WAL: the events after MAIN
    old: dict[str, str]  # the store's labels (N_EVENTS + TAIL events)
    new: dict[str, str]  # the backup's labels


def _assign(store: LabelStore, i: int) -> None:
    faces = [f"photo_{i:05d}_face_{j:02d}" for j in range(FACES_PER_EVENT)]
    store.assign(faces, FIELD, VALUES[i % 5], annotator=f"a{i % 3}", source="single")


def _events(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> BigStore:
    root = tmp_path_factory.mktemp("big")
    ws = Workspace.open(root / "live", create=True)
    store = LabelStore(ws.labels_db)
    store.version()
    holder = sqlite3.connect(ws.labels_db)  # another connection: no checkpoint at each close
    try:
        holder.execute("SELECT COUNT(*) FROM meta").fetchone()
        for i in range(MAIN):  # with the automatic backups every 50 events
            _assign(store, i)
        holder.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for i in range(MAIN, N_EVENTS + TAIL):
            _assign(store, i)
        old = store.current_values(FIELD)
        snap = root / "ws"  # the files as a kill -9 of the app leaves them
        (snap / "backups").mkdir(parents=True)
        for name in ("workspace.json", "labels.db", "labels.db-wal"):
            shutil.copyfile(ws.root / name, snap / name)
    finally:
        holder.close()
    newest = list_backups(ws.labels_db)[:2]
    assert newest[0].last_event == N_EVENTS
    for b in newest:
        shutil.copyfile(b.path, snap / "backups" / b.path.name)
        os.utime(snap / "backups" / b.path.name, (b.created, b.created))
    db = snap / "labels.db"
    assert db.stat().st_size > 4_000_000  # a few MB: the copies take a while
    main_only = root / "main_only.db"
    shutil.copyfile(db, main_only)
    assert _events(main_only) == MAIN  # the last events are only in the WAL
    new = LabelStore(newest[0].path).current_values(FIELD)
    assert len(old) == (N_EVENTS + TAIL) * FACES_PER_EVENT and len(new) < len(old)
    wal = (snap / "labels.db-wal").read_bytes()
    return BigStore(snap, newest[0].path.name, wal, old, new)


def _wal_pages(wal: bytes) -> set[int]:
    """The page numbers in a WAL's valid frames (those with the header's salts)."""
    page = int.from_bytes(wal[8:12], "big")
    salts, pages, at = wal[16:24], set(), 32
    while at + 24 + page <= len(wal) and wal[at + 8 : at + 16] == salts:
        pages.add(int.from_bytes(wal[at : at + 4], "big"))
        at += 24 + page
    return pages


def _damaged_main(big: BigStore) -> bytes:
    """The store's main file with 6 pages the WAL does not hold overwritten by garbage."""
    data = bytearray((big.root / "labels.db").read_bytes())
    in_wal = _wal_pages(big.wal)
    page = 4096
    first = next(p for p in range(5, 100) if not in_wal & set(range(p, p + 6)))
    data[(first - 1) * page : (first + 5) * page] = random.Random(0).randbytes(6 * page)
    return bytes(data)


def _copy(big: BigStore, dst: Path, *, damaged: bytes | None = None) -> Workspace:
    shutil.copytree(big.root, dst)
    if damaged is not None:
        (dst / "labels.db").write_bytes(damaged)
    return Workspace.open(dst)


def _as_sqlite_sees_it(ws: Path, scratch: Path) -> tuple[str | None, int, dict[str, str]]:
    """(check_store, events, labels) of the store with the side files it has now, read from
    a copy (so that reading it changes nothing)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name in ("labels.db", "labels.db-wal", "labels.db-journal"):
        if (ws / name).exists():
            shutil.copyfile(ws / name, scratch / name)
    db = scratch / "labels.db"
    why = check_store(db)
    if why is not None:
        return why, -1, {}
    return None, _events(db), LabelStore(db).current_values(FIELD)


# -- the real entry point, forked from a warm interpreter, killed by the test ------------------
ZYGOTE = r"""
import json, os, signal, sys, time
from labeler.cli import main
import labeler.cli.app, labeler.cli.labels, labeler.labels.backup  # warm
from pathlib import Path
for line in sys.stdin:
    args, log, delay, watch = json.loads(line)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = ["labeler", *args]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    done = None
    if watch is not None:  # wait until the command makes this file, then the delay
        folder, pattern = watch
        while not any(Path(folder).glob(pattern)):
            done = os.waitpid(pid, os.WNOHANG)
            if done[0]:
                break
            time.sleep(0.0002)
    if delay is not None and not (done and done[0]):
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)  # still running, or a zombie not yet reaped: never another
    _, status = done if done and done[0] else os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    print(json.dumps([killed, code, time.monotonic() - t0]), flush=True)
"""


class Zygote:
    """``labeler ARGS`` in a child of one warm interpreter; ``kill_after``: SIGKILL it then."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(
        self,
        args: list[str],
        log: Path,
        kill_after: float | None = None,
        when: tuple[Path, str] | None = None,
    ):
        """Returns (killed, exit code, seconds). ``when``: (folder, glob): the delay counts
        from the moment the command makes a file matching it there."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        watch = None if when is None else [str(when[0]), when[1]]
        self.proc.stdin.write(json.dumps([args, str(log), kill_after, watch]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        killed, code, seconds = json.loads(line)
        return bool(killed), int(code), float(seconds)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


# -- 1. restore and backup killed at many instants ---------------------------------------------
#: kill instants after a file the command makes appears (folder in the workspace, glob, delays)
TMP_COPY = (".", ".labels.db.*.tmp", (0.0, 0.03))  # step 1: the new store being written
ASIDE = (".", "labels.db.damaged-*", (0.0, 0.0002, 0.0005, 0.001))  # step 2, damaged store
OLD_BACKUP = ("backups", f"labels-*-e{N_EVENTS + TAIL}.db", (0.0, 0.01, 0.02))
BACKUP_TMP = ("backups", ".labels.db.*.tmp", (0.0, 0.02))


def _plan(seconds: float, n: int, *watches) -> list[tuple[float, tuple[str, str] | None]]:
    """``n`` kill delays spread evenly over ``[0, seconds]`` (the uninterrupted run), then
    the delays after each watched file appears."""
    plan = [(round(seconds * k / (n - 1), 4), None) for k in range(n)]
    return plan + [(d, (folder, glob)) for folder, glob, delays in watches for d in delays]


def _kill_run(zygote, args, ws: Workspace, log: Path, delay: float, watch) -> bool:
    when = None if watch is None else (ws.root / watch[0], watch[1])
    killed, code, _ = zygote.run(args, log, delay, when)
    assert killed or code == 0, log.read_text()
    return killed


def _report(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    for row in rows:
        print("  ", *row)


def _instant(delay: float, watch) -> str:
    return f"{delay * 1000:6.1f} ms" + ("" if watch is None else f" after {watch[1]}")


def test_killed_restore_of_a_damaged_store_leaves_the_old_or_the_new_store(big, zygote, tmp_path):
    damaged = _damaged_main(big)
    probe = _copy(big, tmp_path / "probe", damaged=damaged)
    assert check_store(probe.labels_db) is not None  # the WAL does not hide the damage
    args = ["labels", "restore", "-w"]
    killed, code, seconds = zygote.run([*args, str(probe.root)], tmp_path / "probe.log")
    assert not killed and code == 0, (tmp_path / "probe.log").read_text()
    rows = []
    for i, (delay, watch) in enumerate(_plan(seconds, 6, TMP_COPY, ASIDE)):
        ws = _copy(big, tmp_path / f"k{i}", damaged=damaged)
        log = tmp_path / f"k{i}.log"
        killed = _kill_run(zygote, [*args, str(ws.root)], ws, log, delay, watch)
        asides = sorted(ws.root.glob("labels.db.damaged-*[0-9Z]"))
        aside_wals = list(ws.root.glob("labels.db.damaged-*-wal"))
        wal = Path(f"{ws.labels_db}-wal")
        if ws.labels_db.read_bytes() == damaged:  # the old store; its WAL beside it or aside
            state = "old"
            wal_at = "beside" if wal.exists() and wal.read_bytes() == big.wal else "aside"
            assert wal_at == "beside" or any(p.read_bytes() == big.wal for p in aside_wals)
        else:  # the new one, complete, with no WAL of the old store replayed onto it
            state, wal_at = "new", "aside"
            why, n, labels = _as_sqlite_sees_it(ws.root, tmp_path / "scratch")
            assert why is None and n == N_EVENTS and labels == big.new, (why, n)
            assert [p.read_bytes() == damaged for p in asides] == [True]
            assert [p.read_bytes() == big.wal for p in aside_wals] == [True]
        rows.append((_instant(delay, watch), "killed" if killed else "done", f"{state} store,",
                     f"{len(asides)} damaged copy, old WAL {wal_at}"))  # fmt: skip
        # what the user does next: `labeler app` (refuses the damaged store), then restore
        if state == "old":
            with pytest.raises(LabelStoreError, match="labeler labels restore"):
                start_checks(ws)
        else:
            start_checks(ws)
            assert [p.name for p in ws.root.iterdir() if p.name.startswith(".")] == []
        res = CliRunner().invoke(cli, [*args, str(ws.root)])
        assert res.exit_code == 0, res.output
        assert LabelStore(ws.labels_db).current_values(FIELD) == big.new
        assert any(p.read_bytes() == big.wal for p in ws.root.glob("labels.db.damaged-*-wal"))
        assert [p.name for p in ws.root.iterdir() if p.name.startswith(".")] == []
        shutil.rmtree(ws.root)
    _report(f"restore of a damaged store ({seconds:.3f} s uninterrupted):", rows)
    states = {r[2] for r in rows}
    assert "old store," in states


def test_killed_restore_of_a_sound_store_leaves_the_old_or_the_new_store(big, zygote, tmp_path):
    probe = _copy(big, tmp_path / "probe")
    backup = lambda ws: ["--backup", str(backup_dir(ws.labels_db) / big.backup)]  # noqa: E731
    args = ["labels", "restore", "-w"]
    killed, code, seconds = zygote.run(
        [*args, str(probe.root), *backup(probe)], tmp_path / "probe.log"
    )
    assert not killed and code == 0, (tmp_path / "probe.log").read_text()
    rows = []
    for i, (delay, watch) in enumerate(_plan(seconds, 6, TMP_COPY, OLD_BACKUP)):
        ws = _copy(big, tmp_path / f"k{i}")
        log = tmp_path / f"k{i}.log"
        killed = _kill_run(zygote, [*args, str(ws.root), *backup(ws)], ws, log, delay, watch)
        why, n, labels = _as_sqlite_sees_it(ws.root, tmp_path / "scratch")
        assert why is None, why
        state = {N_EVENTS + TAIL: "old", N_EVENTS: "new"}.get(n)
        assert state is not None, n  # the old store (its WAL's events too) or the new one
        assert labels == (big.old if state == "old" else big.new)
        wal = Path(f"{ws.labels_db}-wal")
        wal_size = f"{wal.stat().st_size:,} bytes" if wal.exists() else "none"
        rows.append((_instant(delay, watch), "killed" if killed else "done",
                     f"{state} store, {n} events, WAL {wal_size}"))  # fmt: skip
        start_checks(ws)  # `labeler app` starts on either, and removes a killed copy
        assert [p.name for p in ws.root.iterdir() if p.name.startswith(".")] == []
        res = CliRunner().invoke(cli, [*args, str(ws.root), *backup(ws)])
        assert res.exit_code == 0, res.output
        assert LabelStore(ws.labels_db).current_values(FIELD) == big.new
        assert [p.name for p in ws.root.iterdir() if p.name.startswith(".")] == []
        kept = [b for b in list_backups(ws.labels_db) if b.last_event == N_EVENTS + TAIL]
        assert kept and LabelStore(kept[0].path).current_values(FIELD) == big.old
        shutil.rmtree(ws.root)
    _report(f"restore of a sound store ({seconds:.3f} s uninterrupted):", rows)
    assert any(r[2].startswith("old") for r in rows)


def test_killed_backup_leaves_the_old_backups_and_no_half_one(big, zygote, tmp_path):
    probe = _copy(big, tmp_path / "probe")
    args = ["labels", "backup", "-w"]
    killed, code, seconds = zygote.run([*args, str(probe.root)], tmp_path / "probe.log")
    assert not killed and code == 0, (tmp_path / "probe.log").read_text()
    rows = []
    for i, (delay, watch) in enumerate(_plan(seconds, 5, BACKUP_TMP)):
        ws = _copy(big, tmp_path / f"k{i}")
        before = {p.name: p.read_bytes() for p in backup_dir(ws.labels_db).iterdir()}
        log = tmp_path / f"k{i}.log"
        killed = _kill_run(zygote, [*args, str(ws.root)], ws, log, delay, watch)
        listed = list_backups(ws.labels_db)
        for name, data in before.items():  # the old backups, as they were
            assert (backup_dir(ws.labels_db) / name).read_bytes() == data
        new = [b for b in listed if b.path.name not in before]
        assert len(new) <= 1
        for b in new:  # a listed backup is a complete one
            assert check_store(b.path) is None and _events(b.path) == N_EVENTS + TAIL
        temps = [p.name for p in backup_dir(ws.labels_db).iterdir() if p.name.startswith(".")]
        rows.append((_instant(delay, watch), "killed" if killed else "done",
                     f"{len(new)} new backup, {len(temps)} temporary file(s) left"))  # fmt: skip
        assert make_backup(ws.labels_db) is not None  # the next one works, and tidies up
        assert [p for p in backup_dir(ws.labels_db).iterdir() if p.name.startswith(".")] == []
        assert _events(ws.labels_db) == N_EVENTS + TAIL
        shutil.rmtree(ws.root)
    _report(f"backup ({seconds:.3f} s uninterrupted):", rows)


# -- 1b. a missing store, rotation -------------------------------------------------------------
def test_a_missing_store_with_backups_is_an_error_never_a_fresh_start(tmp_path):
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    before = LabelStore(db).current_values(FIELD)
    assert make_backup(db) is not None
    backups = sorted(p.name for p in backup_dir(db).iterdir())
    db.unlink()  # as a restore killed by the old code left it
    for refuse in (
        lambda: start_checks(ws),
        lambda: LabelStore(db).current(),
        lambda: LabelStore(db).assign(["f"], FIELD, "correct", annotator="a", source="single"),
    ):
        with pytest.raises(LabelStoreError) as err:
            refuse()
        msg = str(err.value)
        assert "\n" not in msg and str(db) in msg and "is missing" in msg, msg
        assert f"labeler labels restore -w {ws.root}" in msg, msg
    proc = subprocess.run(
        labeler_cmd("app", "-w", str(ws.root), "--port", "8599"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "labeler labels restore" in one_line_error(proc.stderr)
    assert not db.exists() and sorted(p.name for p in backup_dir(db).iterdir()) == backups
    # restore brings it back (nothing to keep aside: there was no store)
    res = CliRunner().invoke(cli, ["labels", "restore", "-w", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert LabelStore(db).current_values(FIELD) == before
    assert not list(ws.root.glob("labels.db.damaged-*"))
    # a WAL without its store: never replayed onto a new one
    checkpoint(db)
    holder = sqlite3.connect(db)
    try:
        holder.execute("SELECT COUNT(*) FROM events").fetchone()
        LabelStore(db).assign(["late"], FIELD, "no_mask", annotator="a", source="single")
        wal = Path(f"{db}-wal").read_bytes()
    finally:
        holder.close()
    db.unlink()
    Path(f"{db}-wal").write_bytes(wal)
    shutil.rmtree(backup_dir(db))
    with pytest.raises(LabelStoreError, match="write-ahead log"):
        LabelStore(db).version()
    # the documented way to start afresh: no backups folder (a fresh workspace)
    Path(f"{db}-wal").unlink()
    assert LabelStore(db).current().empty


def test_rotation_keeps_the_backup_with_the_most_events(tmp_path):
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    labels = LabelStore(db).current_values(FIELD)
    full = make_backup(db)
    most = list_backups(db)[0].last_event
    assert full is not None and most > 200
    # what the old code did after a killed restore: an empty store, backed up at every start
    aside = tmp_path / "backups-aside"
    backup_dir(db).rename(aside)
    db.unlink()
    LabelStore(db).version()
    aside.rename(backup_dir(db))
    for _ in range(KEEP + 5):
        assert start_checks(ws) is not None
    kept = list_backups(db)
    assert full in [b.path for b in kept]  # never rotated out
    assert len(kept) == KEEP + 1 and [b.last_event for b in kept[:KEEP]] == [0] * KEEP
    assert prune_backups(db) == []
    # a damaged one with more events is not what is kept: the sound one is
    bad = backup_dir(db) / "labels-20000101T000000Z-e99999.db"
    bad.write_bytes(b"SQLite format 3\x00" + bytes(4000))
    os.utime(bad, (1, 1))
    assert bad in prune_backups(db) and full.exists()
    # restore says which backup holds more events than the one it restored
    res = CliRunner().invoke(cli, ["labels", "restore", "-w", str(ws.root)])
    assert res.exit_code == 0 and f"note: {full} holds more events" in res.output, res.output
    assert restore_backup(db, full) == full
    assert LabelStore(db).current_values(FIELD) == labels


def test_restore_refuses_a_store_another_process_has_open(tmp_path):
    """Its WAL would outlive the switch (and be replayed onto the new store): refused, one
    line, the store as it was; once the other connection is closed, restore works."""
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    labels = LabelStore(db).current_values(FIELD)
    older = list_backups(db)[-1].path
    holder = sqlite3.connect(db)
    try:
        holder.execute("SELECT COUNT(*) FROM events").fetchone()
        res = CliRunner().invoke(cli, ["labels", "restore", "-w", str(ws.root), "--backup",
                                       str(older)])  # fmt: skip
        assert res.exit_code == 1, res.output
        line = one_line_error(res.output)
        assert str(db) in line and "is in use" in line and "Stop 'labeler app'" in line, line
        assert LabelStore(db).current_values(FIELD) == labels
    finally:
        holder.close()
    assert restore_backup(db, older) == older
    assert len(LabelStore(db).current_values(FIELD)) < len(labels)


def test_a_store_an_older_restore_left_in_rollback_mode_goes_back_to_wal(tmp_path):
    """An older ``labels restore`` left the store in a rollback journal's mode (its copy's):
    the next open puts it back in WAL mode, as the app's concurrent writers expect."""
    ws = labeled_workspace(tmp_path / "ws")
    con = sqlite3.connect(ws.labels_db)
    try:
        assert con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    finally:
        con.close()
    assert ws.labels_db.read_bytes()[18:20] == b"\x01\x01"
    labels = LabelStore(ws.labels_db).current_values(FIELD)
    assert ws.labels_db.read_bytes()[18:20] == b"\x02\x02" and len(labels) == 2400
    restored = restore_backup(ws.labels_db)  # this restore leaves it in WAL mode itself
    assert restored is not None and ws.labels_db.read_bytes()[18:20] == b"\x02\x02"


# -- 2. a sound store under concurrent writers -------------------------------------------------
def test_a_file_shorter_than_its_header_beside_a_live_wal_is_left_to_sqlite(tmp_path):
    """The state a checkpoint passes through: page 1 (with the new page count) is written,
    the pages that make the file that long are still only in the WAL."""
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    checkpoint(db)
    mid = tmp_path / "mid"
    mid.mkdir()
    holder = sqlite3.connect(db)
    try:
        holder.execute("SELECT COUNT(*) FROM events").fetchone()
        store = LabelStore(db)
        for i in range(40):  # the store grows: its new pages are in the WAL only
            store.assign([f"new{i}_{j}" for j in range(50)], FIELD, "correct", annotator="b",
                         source="single")  # fmt: skip
        for name in ("labels.db", "labels.db-wal"):
            shutil.copyfile(ws.root / name, mid / name)
    finally:
        holder.close()
    wal = (mid / "labels.db-wal").read_bytes()
    page = int.from_bytes(wal[8:12], "big")
    at, page1 = 32, None
    while at + 24 + page <= len(wal) and wal[at + 8 : at + 16] == wal[16:24]:
        if int.from_bytes(wal[at : at + 4], "big") == 1:
            page1 = wal[at + 24 : at + 24 + page]
        at += 24 + page
    assert page1 is not None
    with open(mid / "labels.db", "r+b") as fh:
        fh.write(page1)
    size = (mid / "labels.db").stat().st_size
    assert size < int.from_bytes(page1[28:32], "big") * page  # shorter than its header says
    rest = tmp_path / "rest.db"  # the same file at rest (no WAL holds those pages)
    shutil.copyfile(mid / "labels.db", rest)
    assert check_store(mid / "labels.db", thorough=False) is None
    assert check_store(mid / "labels.db") is None
    assert len(LabelStore(mid / "labels.db").current_values(FIELD)) == 2400 + 2000
    assert "truncated" in (check_store(rest, thorough=False) or "")


class _BackupLog(logging.Handler):
    """Counts the backups taken and the short looks, keeps every warning/error of labeler.labels."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.backups = 0
        self.short = 0  # looks at a file shorter than its header says, left to SQLite
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("label store backed up"):
            self.backups += 1
        elif "shorter than its header" in msg:
            self.short += 1
        elif record.levelno >= logging.WARNING:
            self.errors.append(msg)

    def __enter__(self) -> _BackupLog:
        logger = logging.getLogger("labeler.labels")
        self._level = logger.level
        logger.addHandler(self)
        logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("labeler.labels")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def _stress_writer(db: str, name: str, seconds: float, queue) -> None:
    store = LabelStore(db)
    n, end = 0, time.monotonic() + seconds
    with _BackupLog() as log:
        while time.monotonic() < end:
            faces = [f"{name}_{n}_{j}" for j in range(10)]
            store.assign(faces, FIELD, VALUES[n % 5], annotator=name, source="single")
            n += 1
    queue.put((name, n, log.backups, log.short, log.errors))


def test_four_writers_and_a_checker_never_see_a_false_damage_report(tmp_path):
    """4 writer processes (``LabelStore.assign`` in a loop, an automatic backup every 50
    events, each checking the store first) and a checker looping ``check_store`` beside
    them for ``LABELER_STRESS_S`` seconds (default 10): no false report anywhere."""
    seconds = float(os.environ.get("LABELER_STRESS_S", "10"))
    db = tmp_path / "labels.db"
    LabelStore(db).version()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    writers = [
        ctx.Process(target=_stress_writer, args=(str(db), f"w{i}", seconds, queue))
        for i in range(4)
    ]
    for p in writers:
        p.start()
    checks, false = 0, []
    with _BackupLog() as checker:
        while any(p.is_alive() for p in writers) and queue.qsize() < len(writers):
            why = check_store(db, thorough=checks % 200 == 199)
            checks += 1
            if why is not None:
                false.append(why)
    results = [queue.get(timeout=120) for _ in writers]
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    events = sum(r[1] for r in results)
    backups = sum(r[2] for r in results)
    errors = [e for r in results for e in r[4]]
    short = checker.short + sum(r[3] for r in results)
    print(f"\n{seconds:.0f} s, 4 writers: {events:,} events, {backups} backups, {checks:,} "
          f"checks; false reports: {len(false)} by the checker, {len(errors)} in backups; "
          f"{short} short looks left to SQLite ({checker.short} by the checker)")  # fmt: skip
    assert false == [] and errors == []
    assert check_store(db) is None and _events(db) == events
    assert backups >= events // 50 - 4 and events > 200


# -- 3. one-line errors -------------------------------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_naming_the_file_and_the_fix(tmp_path):
    """A real fault: ``RLIMIT_FSIZE`` below the store's size (the copy cannot be written)."""
    ws = labeled_workspace(tmp_path / "ws")
    db = ws.labels_db
    assert db.stat().st_size > 200_000
    labels = LabelStore(db).current_values(FIELD)
    before = sorted(p.name for p in backup_dir(db).iterdir())
    for args, where in (
        (["labels", "backup"], backup_dir(db)),
        (["app", "--port", "8599"], backup_dir(db)),
        (["labels", "restore"], ws.root),
    ):
        proc = subprocess.run(
            labeler_cmd(*args, "-w", str(ws.root)),
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_file_size_limit(100_000),
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = one_line_error(proc.stderr)
        assert str(where) in line and "free disk space" in line, line
        assert "labeler app on http" not in proc.stdout
        assert sorted(p.name for p in backup_dir(db).iterdir()) == before  # no half backup
        assert [p.name for p in ws.root.iterdir() if p.name.startswith(".")] == []
        assert LabelStore(db).current_values(FIELD) == labels


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_is_refused_before_any_backup(tmp_path, port, monkeypatch):
    def never(cmd, env):  # the command would become Streamlit: never inside pytest
        raise AssertionError(f"the server was started with {cmd}")

    monkeypatch.setattr("labeler.cli.app.run_server", never)
    ws = Workspace.open(tmp_path / "ws", create=True)
    LabelStore(ws.labels_db).assign(["f"], FIELD, "correct", annotator="a", source="single")
    res = CliRunner().invoke(cli, ["app", "-w", str(ws.root), "--port", port])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "'--port'" in errors[0] and "1<=x<=65535" in errors[0], errors
    assert not backup_dir(ws.labels_db).exists()  # refused before the start's backup


def test_a_read_only_workspace_backup_names_the_folder_not_sqlite(tmp_path):
    from test_export_predict_safety import _read_only_runner

    ws = Workspace.open(tmp_path / "ws", create=True)
    LabelStore(ws.labels_db).assign(["f"], FIELD, "correct", annotator="a", source="single")
    assert not Path(f"{ws.labels_db}-shm").exists()  # SQLite must make it to read the store
    (tmp_path / "probe").mkdir()
    os.chmod(tmp_path / "probe", 0o555)
    try:
        prefix = _read_only_runner(tmp_path / "probe")
        for locked, why in (
            (ws.root, "cannot create"),
            (backup_dir(ws.labels_db), "cannot write in"),
        ):
            if locked != ws.root:
                locked.mkdir()
            os.chmod(locked, 0o555)
            try:
                proc = subprocess.run(
                    [*prefix, *labeler_cmd("labels", "backup", "-w", str(ws.root))],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            finally:
                os.chmod(locked, 0o755)
            assert proc.returncode == 1
            line = one_line_error(proc.stderr)
            assert "SQLite cannot read" not in line, line
            assert f"{why} {backup_dir(ws.labels_db)}" in line and "writable" in line, line
    finally:
        os.chmod(tmp_path / "probe", 0o755)
