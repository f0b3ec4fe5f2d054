"""Rotating backups of the label store (``labels.db``) and restoring one.

Backups are consistent snapshots taken with SQLite's online backup API (safe while
annotators write), stored as ``WORKSPACE/backups/labels-<UTC time>-e<last event>.db``; the
newest :data:`KEEP` are kept. They are taken when ``labeler app`` starts and every
:data:`EVERY_EVENTS` label events (``LabelStore.assign``), and before a restore replaces
the store. ``labeler labels restore -w WS [--backup FILE]`` puts one back (default: the
newest backup that opens as a sound label store).

A damaged store is never backed up: :func:`make_backup` runs ``PRAGMA quick_check`` on the
store and again on the snapshot before it becomes a backup, and refuses with one line naming
the file and the fix. ``labeler app`` refuses to start on a damaged store, and on a missing
one while backups of it exist (:func:`require_sound_store`; ``LabelStore`` refuses to create
it then too): a store that vanished is restored, never silently started afresh and backed
up over the good copies. Rotation keeps the newest :data:`KEEP` backups and never deletes the
newest sound one, nor the sound one with the most events (:func:`prune_backups`), so neither
a run of damaged backups nor an empty store backed up at every start can push the last good
copy out. :func:`restore_backup` switches the new store in with one rename; a kill at any
instant leaves the old store or the new one (its docstring lists every step).

>>> make_backup(ws.labels_db)  # doctest: +SKIP
PosixPath('ws/backups/labels-20261125T171500Z-e120.db')
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from labeler._io import SQLITE_SIDE_FILES, remove_stale_temps, temp_path
from labeler.errors import InputError, LabelerError
from labeler.labels.db import LabelStoreError, check_store

log = logging.getLogger(__name__)

KEEP = 10
EVERY_EVENTS = 50
#: SQLite's side files, in the order restore deals with a damaged store's: the WAL index
#: (removed: SQLite rebuilds it from the WAL), then the WAL and a rollback journal (renamed)
SIDE_ORDER = ("-shm", "-wal", "-journal")


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    created: float  # file mtime (seconds since the epoch)
    last_event: int  # event_id of the newest event in the backup (0: none)
    size_bytes: int


def backup_dir(db_path: Path) -> Path:
    return Path(db_path).parent / "backups"


def _fsync(path: Path | str) -> None:
    """Flush a file (or a folder: the names in it) to disk; a folder that cannot be opened
    for it (some file systems) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def _sqlite_copy(src_path: Path | str, dst_path: Path | str) -> None:
    """Copy the SQLite database ``src_path`` (read-only) into ``dst_path`` with SQLite's backup
    API, as one self-contained file (no WAL), flushed to disk."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
    dst = sqlite3.connect(dst_path)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
    _fsync(dst_path)


def _to_wal_mode(path: Path) -> None:
    """Put the self-contained copy ``path`` in WAL mode (the store's), flushed to disk: one
    file still (the last connection's close removes the ``-wal`` and ``-shm`` it made)."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
    _fsync(path)


def damaged_store_message(db_path: Path, why: str, consequence: str) -> str:
    """The one-line error for a damaged store: the file, what is wrong, what was not done,
    and the fix (``labeler labels restore``, which picks the newest sound backup)."""
    db_path = Path(db_path)
    return (
        f"{db_path}: {why}; {consequence}. Restore the newest sound backup with "
        f"'labeler labels restore -w {db_path.parent}' (backups in {backup_dir(db_path)})"
    )


def missing_store_message(db_path: Path, consequence: str) -> str | None:
    """The one-line error for a store that is missing while backups of it (or its WAL, the
    last commits of a store that was moved away) exist; None when it may be created: a fresh
    workspace. Starting afresh anyway is explicit: move the backups folder away."""
    db_path = Path(db_path)
    wal = Path(f"{db_path}-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        return (
            f"{db_path} is missing but its write-ahead log {wal.name} is there; {consequence}. "
            f"Restore the newest backup with 'labeler labels restore -w {db_path.parent}', or "
            f"put the missing {db_path.name} back"
        )
    backups = list_backups(db_path)
    if not backups:
        return None
    most = max(b.last_event for b in backups)
    return (
        f"{db_path} is missing but {backup_dir(db_path)} holds {len(backups)} backup(s) of it "
        f"(up to event {most:,}); {consequence}. Restore the newest sound one with "
        f"'labeler labels restore -w {db_path.parent}' (or move {backup_dir(db_path)} away "
        "to start an empty store)"
    )


def require_sound_store(db_path: Path) -> None:
    """Refuse (``LabelStoreError``, one line) a label store that fails :func:`check_store`'s
    thorough check, and a missing one while backups of it exist; a missing store in a fresh
    workspace is fine (it is created on first use). ``labeler app`` calls this before
    anything is served or backed up."""
    db_path = Path(db_path)
    if not db_path.exists():
        msg = missing_store_message(db_path, "the app was not started")
        if msg is not None:
            raise LabelStoreError(msg)
        return
    why = check_store(db_path)
    if why is not None:
        raise LabelStoreError(damaged_store_message(db_path, why, "the app was not started"))


# -- backups ------------------------------------------------------------------------------------
def _last_event(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COALESCE(MAX(event_id), 0) FROM events").fetchone()[0])
    finally:
        con.close()


def _write_error(folder: Path, exc: OSError | sqlite3.Error, done: str) -> str:
    """One line for a failed write of a backup or a restore into ``folder``: the folder, the
    reason (a full disk, a folder that is not writable) and the fix; ``done``: what was left."""
    what = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    low = what.lower()
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "full" in low or "disk i/o" in low:
        return (
            f"cannot write in {folder} ({what}); free disk space (or raise the file-size "
            f"limit) and run it again; {done}"
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in low or "unable to" in low:
        if not folder.exists():
            return (
                f"cannot create {folder}: {folder.parent} is not writable ({what}); make the "
                f"workspace writable (chmod u+w {folder.parent}) or work on a copy of it; {done}"
            )
        return (
            f"cannot write in {folder}: it is not writable ({what}); make it writable "
            f"(chmod u+w {folder}) or work on a copy of the workspace; {done}"
        )
    return f"cannot write in {folder} ({what}); {done}"


def make_backup(db_path: Path, *, keep: int = KEEP) -> Path | None:
    """Snapshot ``db_path`` into :func:`backup_dir` and rotate (:func:`prune_backups`).

    Returns the new backup, or None when there is no store yet. A store that fails
    :func:`check_store` is refused (``LabelStoreError``, one line): checked before the copy,
    and the snapshot is checked again before it is renamed into place, so a damaged copy
    never becomes a backup. The snapshot is written to a temporary file, flushed to disk and
    renamed, so a full disk or a kill leaves no partial backup behind (a killed backup's
    temporary file is removed by the next one). A full disk or a folder that is not
    writable is one line (``LabelStoreError``) naming the file and the fix.
    """
    db_path = Path(db_path)
    if not db_path.is_file() or db_path.stat().st_size == 0:
        return None
    why = check_store(db_path)
    if why is not None:
        raise LabelStoreError(damaged_store_message(db_path, why, "it was not backed up"))
    out_dir = backup_dir(db_path)
    try:
        out_dir.mkdir(exist_ok=True)
        remove_stale_temps(out_dir)
        with temp_path(out_dir / "labels.db", side_files=SQLITE_SIDE_FILES) as tmp:
            _sqlite_copy(db_path, tmp)
            why = check_store(tmp)
            if why is not None:
                raise LabelStoreError(
                    damaged_store_message(
                        db_path, f"its snapshot is damaged ({why})", "not backed up"
                    )
                )
            last = _last_event(tmp)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            out = out_dir / f"labels-{stamp}-e{last}.db"
            n = 1
            while out.exists():
                out = out_dir / f"labels-{stamp}-e{last}-{n}.db"
                n += 1
            os.replace(tmp, out)
        _fsync(out_dir)
    except (OSError, sqlite3.Error) as exc:
        msg = _write_error(out_dir, exc, f"{db_path.name} was not backed up")
        raise LabelStoreError(msg) from None
    prune_backups(db_path, keep=keep, sound=out)
    log.info("label store backed up to %s", out)
    return out


def prune_backups(db_path: Path, *, keep: int = KEEP, sound: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` backups; returns the deleted paths.

    Two older ones stay: the newest sound backup (``sound``: one known to be sound, just
    checked; without it the backups are checked newest first until a sound one is found),
    and the sound backup with the most events when it holds more than every one kept (newest
    first among equals), so a store that started again empty, backed up ``keep`` times,
    cannot rotate a backup of thousands of events out. At most ``keep + 2`` remain.
    """
    backups = list_backups(db_path)
    drop = backups[keep:]
    if not drop:
        return []
    if sound is None:
        sound = next((b.path for b in backups if check_store(b.path) is None), None)
    spare = {Path(sound)} if sound is not None else set()
    most_kept = max(b.last_event for b in backups if b in backups[:keep] or b.path in spare)
    for b in sorted(drop, key=lambda b: -b.last_event):  # stable: newest first among equals
        if b.last_event <= most_kept:
            break
        if b.path in spare or check_store(b.path) is None:
            spare.add(b.path)
            log.info("keeping %s beyond the newest %d: it holds the most events", b.path, keep)
            break
    gone = []
    for b in drop:
        if b.path in spare:
            continue
        b.path.unlink(missing_ok=True)
        gone.append(b.path)
    return gone


def maybe_backup(db_path: Path, event_id: int, *, every: int = EVERY_EVENTS) -> Path | None:
    """Back up after every ``every``-th event; never raises (a full or read-only disk, a
    damaged store: logged as an error, nothing backed up)."""
    if every <= 0 or event_id % every:
        return None
    try:
        return make_backup(db_path)
    except (OSError, sqlite3.Error) as exc:
        log.warning("could not back up %s (%s)", db_path, exc)
        return None
    except LabelerError as exc:  # a damaged store, a full disk: never backed up; say so loudly
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


# -- restore ------------------------------------------------------------------------------------
def _pick_backup(db_path: Path, backup: Path | None) -> Path:
    candidates = [Path(backup)] if backup else [b.path for b in list_backups(db_path)]
    if not candidates:
        raise InputError(f"no backups of {db_path} in {backup_dir(db_path)}; nothing to restore")
    for c in candidates:
        why = check_store(c)
        if why is None:
            return c
        log.warning("skipping backup %s: %s", c, why)
        if backup:
            raise InputError(f"{c} cannot be restored: {why}; pick another with --backup")
    raise InputError(f"none of the backups in {backup_dir(db_path)} is a sound label store")


def _aside_name(db_path: Path) -> Path:
    """``labels.db.damaged-<UTC time>[-<n>]``, a name none of whose files exist yet (a second
    restore within the second keeps the first copy)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = db_path.with_name(f"{db_path.name}.damaged-{stamp}"), 1
    while any(Path(f"{aside}{s}").exists() for s in ("", *SIDE_ORDER)):
        aside, n = db_path.with_name(f"{db_path.name}.damaged-{stamp}-{n}"), n + 1
    return aside


def _keep_a_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a second name of ``src`` (a hard link; a flushed copy where the file
    system has none). ``src`` is left where it is."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES):
            raise
        with temp_path(dst) as tmp:
            shutil.copyfile(src, tmp)
            _fsync(tmp)
            os.replace(tmp, dst)


def _set_aside(db_path: Path) -> Path | None:
    """Keep a damaged (or missing) store and the commits in its WAL under a new name,
    ``labels.db.damaged-T``: the store first, as a second name of the same file, then the
    ``-wal`` and ``-journal`` that hold data are renamed to that name's; the ``-shm`` (an
    index SQLite rebuilds from the WAL) and empty side files are removed. Returns the name,
    None when there was nothing to keep."""
    sides = [Path(f"{db_path}{s}") for s in SIDE_ORDER]
    Path(f"{db_path}-shm").unlink(missing_ok=True)
    data = [p for p in sides if p.is_file() and p.stat().st_size > 0]
    aside = None
    if db_path.exists() or data:
        aside = _aside_name(db_path)
        if db_path.exists():
            _keep_a_copy(db_path, aside)
            _fsync(db_path.parent)
        for side in data:
            os.replace(side, f"{aside}{side.name.removeprefix(db_path.name)}")
    for side in sides:
        side.unlink(missing_ok=True)
    return aside


def _empty_the_wal(db_path: Path) -> None:
    """Move a sound store's WAL into its main file and remove it, with SQLite's own crash-safe
    checkpoint (a kill in it leaves the WAL, which the next open replays). Refuses (one line)
    a store another process has open: its WAL would outlive the switch."""
    con = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    try:
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # rolls a hot journal back
        busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        con.close()  # the last connection to a WAL store removes its -wal and -shm
    wal, journal = Path(f"{db_path}-wal"), Path(f"{db_path}-journal")
    if busy or wal.exists() or (journal.exists() and journal.stat().st_size > 0):
        raise LabelStoreError(
            f"{db_path} is in use (its write-ahead log stays open); nothing was restored. "
            "Stop 'labeler app' and every other labeler on this workspace, then restore again"
        )
    Path(f"{db_path}-shm").unlink(missing_ok=True)


def restore_backup(db_path: Path, backup: Path | None = None) -> Path:
    """Replace ``db_path`` by ``backup`` (default: the newest sound backup); returns it.

    The current store, if it is sound, is backed up first; a damaged one is kept next to it
    as ``labels.db.damaged-<time>``, with its WAL (``-wal``) beside it under that name. The
    new store is in WAL mode, as one made by labeler. Raises ``InputError`` when no usable backup exists, ``LabelStoreError`` (one line)
    when the folder is not writable or the disk is full (nothing changed then) and when
    another process has the store open.

    The steps, and what a kill after each leaves (``labeler app`` refuses a damaged or
    missing store, so every state below is either served as it is or restored again):

    1. The backup is copied to a temporary file beside ``labels.db`` (WAL mode, checked,
       flushed to disk). Kill: the old store as it was (the copy is removed next time).
    2. A sound old store is backed up, then its WAL is checkpointed into the main file by
       SQLite (crash-safe) and the emptied ``-wal``/``-shm`` removed: ``labels.db`` alone
       is the complete old store. A damaged one gets a second name, ``labels.db.damaged-T``
       (a hard link, made before anything moves); its ``-shm`` is removed (SQLite rebuilds
       it), then its ``-wal`` and ``-journal`` are renamed to that name's. Kill: ``labels.db``
       is the old main file; the damaged store with every commit of its WAL is at
       ``labels.db.damaged-T`` (before the WAL's rename: still beside ``labels.db``).
    3. ``os.replace`` of the copy over ``labels.db``: one atomic step. No WAL of the old
       store is beside it any more (step 2), so none is ever replayed onto the new store.
    """
    db_path = Path(db_path)
    chosen = _pick_backup(db_path, backup)
    folder = db_path.parent
    aside = None
    try:
        remove_stale_temps(folder)  # a killed restore's copy
        with temp_path(db_path, side_files=SQLITE_SIDE_FILES) as tmp:
            _sqlite_copy(chosen, tmp)  # 1.
            why = check_store(tmp)
            if why is not None:
                raise InputError(f"{chosen} cannot be restored: its copy {why}")
            _to_wal_mode(tmp)
            if db_path.exists() and check_store(db_path) is None:  # 2., sound
                make_backup(db_path)
                _empty_the_wal(db_path)
            else:  # 2., damaged or missing
                aside = _set_aside(db_path)
            os.replace(tmp, db_path)  # 3.
        _fsync(folder)
    except (OSError, sqlite3.Error) as exc:
        done = "the store was not changed" if aside is None else f"the old store is at {aside}"
        raise LabelStoreError(_write_error(folder, exc, done)) from None
    if aside is not None:
        log.warning("the damaged store was kept as %s", aside)
    log.info("restored %s from %s", db_path, chosen)
    return chosen
