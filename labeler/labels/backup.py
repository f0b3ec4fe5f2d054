"""Rotating backups of the label store (``labels.db``) and restoring one.

Backups are consistent snapshots taken with SQLite's online backup API (safe while
annotators write), stored as ``WORKSPACE/backups/labels-<UTC time>-e<last event>.db``; the
newest :data:`KEEP` are kept. They are taken when ``labeler app`` starts and every
:data:`EVERY_EVENTS` label events (``LabelStore.assign``), and before a restore replaces
the store. ``labeler labels restore -w WS [--backup FILE]`` puts one back (default: the
newest backup that opens as a sound label store).

A damaged store is never backed up: :func:`make_backup` runs ``PRAGMA quick_check`` on the
store and again on the snapshot before it becomes a backup, and refuses with one line naming
the file and the fix. ``labeler app`` refuses to start on a damaged store
(:func:`require_sound_store`). Rotation keeps the newest :data:`KEEP` backups and never
deletes the newest sound one, so a run of damaged backups (written by an older labeler, or
damaged on disk later) cannot push the last good copy out.

>>> make_backup(ws.labels_db)  # doctest: +SKIP
PosixPath('ws/backups/labels-20261125T171500Z-e120.db')
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from labeler._io import SQLITE_SIDE_FILES, temp_path
from labeler.errors import InputError, LabelerError
from labeler.labels.db import LabelStoreError

log = logging.getLogger(__name__)

KEEP = 10
EVERY_EVENTS = 50
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    created: float  # file mtime (seconds since the epoch)
    last_event: int  # event_id of the newest event in the backup (0: none)
    size_bytes: int


def backup_dir(db_path: Path) -> Path:
    return Path(db_path).parent / "backups"


def _sqlite_copy(src_path: Path | str, dst_path: Path | str) -> None:
    """Copy the SQLite database ``src_path`` (read-only) into ``dst_path`` with SQLite's backup
    API, as one self-contained file (no WAL)."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
    dst = sqlite3.connect(dst_path)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()


def check_store(path: Path, *, thorough: bool = True) -> str | None:
    """Why ``path`` is not a sound label store (one phrase), or None when it is.

    Always (microseconds): not empty, an SQLite header, not shorter than its header says
    (a truncated copy). ``thorough``: also ``PRAGMA quick_check`` and the label tables.
    """
    path = Path(path)
    # A writer in another thread or process can grow the file between reading its header
    # and its size: a truncation is only reported when three looks in a row agree.
    for attempt in range(3):
        try:
            with open(path, "rb") as fh:
                head = fh.read(100)
                size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            return f"cannot read it ({exc.strerror or exc})"
        if size == 0:
            return "it is empty (0 bytes)"
        if not head.startswith(SQLITE_HEADER) or len(head) < 100:
            return "it is not an SQLite database"
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        n_pages = int.from_bytes(head[28:32], "big")
        valid = head[24:28] == head[92:96] and n_pages > 0
        if not (valid and size < page * n_pages):
            break
        if attempt == 2:
            return f"it is truncated ({size:,} bytes, its header says {page * n_pages:,})"
        time.sleep(0.05)
    if not thorough:
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({exc})"
    if not row or row[0] != "ok":
        return f"SQLite finds it damaged ({row[0] if row else 'no answer'})"
    if not {"events", "meta"} <= tables:
        return "it holds no label events table (not a labeler label store)"
    return None


def damaged_store_message(db_path: Path, why: str, consequence: str) -> str:
    """The one-line error for a damaged store: the file, what is wrong, what was not done,
    and the fix (``labeler labels restore``, which picks the newest sound backup)."""
    db_path = Path(db_path)
    return (
        f"{db_path}: {why}; {consequence}. Restore the newest sound backup with "
        f"'labeler labels restore -w {db_path.parent}' (backups in {backup_dir(db_path)})"
    )


def require_sound_store(db_path: Path) -> None:
    """Refuse (``LabelStoreError``, one line) a label store that fails :func:`check_store`'s
    thorough check; a missing store is fine (it is created on first use). ``labeler app``
    calls this before anything is served or backed up."""
    db_path = Path(db_path)
    if not db_path.exists():
        return
    why = check_store(db_path)
    if why is not None:
        raise LabelStoreError(damaged_store_message(db_path, why, "the app was not started"))


def _last_event(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COALESCE(MAX(event_id), 0) FROM events").fetchone()[0])
    finally:
        con.close()


def make_backup(db_path: Path, *, keep: int = KEEP) -> Path | None:
    """Snapshot ``db_path`` into :func:`backup_dir` and rotate (:func:`prune_backups`).

    Returns the new backup, or None when there is no store yet. A store that fails
    :func:`check_store` is refused (``LabelStoreError``, one line): checked before the copy,
    and the snapshot is checked again before it is renamed into place, so a damaged copy
    never becomes a backup. The snapshot is written to a temporary file and renamed, so a
    full disk leaves no partial backup behind.
    """
    db_path = Path(db_path)
    if not db_path.is_file() or db_path.stat().st_size == 0:
        return None
    why = check_store(db_path)
    if why is not None:
        raise LabelStoreError(damaged_store_message(db_path, why, "it was not backed up"))
    out_dir = backup_dir(db_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    with temp_path(out_dir / "labels.db", side_files=SQLITE_SIDE_FILES) as tmp:
        _sqlite_copy(db_path, tmp)
        why = check_store(tmp)
        if why is not None:
            raise LabelStoreError(
                damaged_store_message(db_path, f"its snapshot is damaged ({why})", "not backed up")
            )
        last = _last_event(tmp)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = out_dir / f"labels-{stamp}-e{last}.db"
        n = 1
        while out.exists():
            out = out_dir / f"labels-{stamp}-e{last}-{n}.db"
            n += 1
        os.replace(tmp, out)
    prune_backups(db_path, keep=keep, sound=out)
    log.info("label store backed up to %s", out)
    return out


def prune_backups(db_path: Path, *, keep: int = KEEP, sound: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` backups, never the newest sound one; returns the
    deleted paths. ``sound``: a backup known to be sound (just checked); without it the
    backups are checked newest first until a sound one is found."""
    backups = list_backups(db_path)
    drop = [b.path for b in backups[keep:]]
    if not drop:
        return []
    if sound is None:
        sound = next((b.path for b in backups if check_store(b.path) is None), None)
    gone = []
    for old in drop:
        if sound is not None and old == Path(sound):
            log.info("keeping %s beyond the newest %d: it is the newest sound backup", old, keep)
            continue
        old.unlink(missing_ok=True)
        gone.append(old)
    return gone


def maybe_backup(db_path: Path, event_id: int, *, every: int = EVERY_EVENTS) -> Path | None:
    """Back up after every ``every``-th event; never raises (a full or read-only disk, a
    damaged store: logged, nothing backed up)."""
    if every <= 0 or event_id % every:
        return None
    try:
        return make_backup(db_path)
    except (OSError, sqlite3.Error) as exc:
        log.warning("could not back up %s (%s)", db_path, exc)
        return None
    except LabelerError as exc:  # a damaged store: never backed up; say so loudly
        log.error("%s", exc)
        return None


def list_backups(db_path: Path) -> list[BackupInfo]:
    """Backups of ``db_path``, newest first.

    By file time; backups written within one tick of the file system's clock (a few ms here,
    1-2 s on FAT or HFS+) by the name's time stamp, then its event number and its ``-<n>``
    suffix as numbers (as text, ``e100`` sorted before ``e99`` and ``e5-1`` before ``e5``)."""
    out = []
    for p in backup_dir(db_path).glob("labels-*.db"):
        try:
            st = p.stat()
            last = int(p.stem.split("-e")[-1].split("-")[0])
        except (OSError, ValueError):
            continue
        out.append(BackupInfo(p, st.st_mtime, last, st.st_size))
    return sorted(out, key=_newest_first_key, reverse=True)


def _newest_first_key(b: BackupInfo) -> tuple[float, str, int, int, str]:
    """``labels-<stamp>-e<last>[-<n>].db``: (file time, stamp, last event, n, name)."""
    stamp, _, tail = b.path.stem.removeprefix("labels-").rpartition("-e")
    n = tail.split("-")[1] if tail.count("-") == 1 else "0"
    return (b.created, stamp, b.last_event, int(n) if n.isdigit() else 0, b.path.name)


def restore_backup(db_path: Path, backup: Path | None = None) -> Path:
    """Replace ``db_path`` by ``backup`` (default: the newest sound backup); returns it.

    The current store, if it is sound, is backed up first; a damaged one is kept next to it
    as ``labels.db.damaged-<time>``, with its WAL (``-wal``, ``-shm``) beside it under that
    name. Raises ``ValueError`` when no usable backup exists.
    """
    db_path = Path(db_path)
    candidates = [Path(backup)] if backup else [b.path for b in list_backups(db_path)]
    if not candidates:
        raise InputError(f"no backups of {db_path} in {backup_dir(db_path)}; nothing to restore")
    chosen = None
    for c in candidates:
        why = check_store(c)
        if why is None:
            chosen = c
            break
        log.warning("skipping backup %s: %s", c, why)
        if backup:
            raise InputError(f"{c} cannot be restored: {why}; pick another with --backup")
    if chosen is None:
        raise InputError(f"none of the backups in {backup_dir(db_path)} is a sound label store")
    if db_path.exists():
        if check_store(db_path) is None:
            make_backup(db_path)
        else:  # kept aside with its WAL: its last commits may sit there, for a manual recovery
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
            n = 1
            while aside.exists():  # a second restore within the second keeps the first copy
                aside, n = db_path.with_name(f"{db_path.name}.damaged-{stamp}-{n}"), n + 1
            for suffix in ("-wal", "-shm"):
                side = Path(f"{db_path}{suffix}")
                if side.exists():
                    os.replace(side, f"{aside}{suffix}")  # sqlite3 opens the copy with it
            os.replace(db_path, aside)
    for suffix in ("-wal", "-shm"):  # stale WAL files of the old store must not be replayed
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    with temp_path(db_path, side_files=SQLITE_SIDE_FILES) as tmp:
        _sqlite_copy(chosen, tmp)
        os.replace(tmp, db_path)
    log.info("restored %s from %s", db_path, chosen)
    return chosen
