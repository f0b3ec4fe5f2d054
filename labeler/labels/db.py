"""The label db's tables, its one-line errors, creating a new store file, and
:func:`check_store`, the soundness check of one (header, size, ``PRAGMA quick_check``).

Tables (one SQLite file per workspace, ``ws.labels_db``, WAL mode)::

    events(event_id INTEGER PK, ts REAL, annotator TEXT, kind TEXT, field TEXT, value TEXT NULL,
           source TEXT, undone INTEGER 0/1, target INTEGER NULL, n_faces INTEGER)
        kind 'assign' sets ``field`` to ``value`` (NULL = clear) on the faces in event_faces;
        kind 'undo' / 'redo' name the assign event they toggle in ``target`` (and copy its
        field; their ``value`` is NULL and meaningless). ``undone`` is only ever set on assign
        events, toggled by those logged undo/redo events.
    event_faces(event_id, face_id)     the faces an assign event touched (PK event_id, face_id)
    current(field, face_id, value, event_id)
        the materialised answer of "latest non-undone assign event touching (face, field)",
        maintained in the same transaction as every write (so reads are one range scan).
    label_fields(field, position, optional, description) / label_values(field, value, position)
        the label schema (:mod:`labeler.labels.schema`).
    suggestions(face_id, field, value, confidence, method, created_ts)
        machine suggestions (propagated / predicted), never human labels.
    suspects(face_id, field, given, suggested, score, method)   likely label errors.
    decisions(face_id, field, value, kind, annotator, ts)
        rejected suggestions / suspects ("keep as is"), so the review queue does not repeat them.
    meta(key, value)                   'writes': bumped by every non-event write (cache stamp).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from labeler._io import SQLITE_SIDE_FILES, temp_path
from labeler.errors import LabelerError
from labeler.labels.schema import DEFAULT_SCHEMA, write_schema

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"

DDL = """
CREATE TABLE IF NOT EXISTS events(
    event_id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    annotator TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'assign',
    field TEXT NOT NULL,
    value TEXT,
    source TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    target INTEGER,
    n_faces INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_annotator ON events(annotator, event_id);
CREATE TABLE IF NOT EXISTS event_faces(
    event_id INTEGER NOT NULL,
    face_id TEXT NOT NULL,
    PRIMARY KEY(event_id, face_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_faces_face ON event_faces(face_id, event_id);
CREATE TABLE IF NOT EXISTS current(
    field TEXT NOT NULL,
    face_id TEXT NOT NULL,
    value TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    PRIMARY KEY(field, face_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS label_fields(
    field TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    optional INTEGER NOT NULL DEFAULT 0,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS label_values(
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY(field, value)
);
CREATE TABLE IF NOT EXISTS suggestions(
    face_id TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    confidence REAL NOT NULL,
    method TEXT NOT NULL,
    created_ts REAL NOT NULL,
    PRIMARY KEY(field, face_id, method)
);
CREATE TABLE IF NOT EXISTS suspects(
    face_id TEXT NOT NULL,
    field TEXT NOT NULL,
    given TEXT,
    suggested TEXT,
    score REAL NOT NULL,
    method TEXT NOT NULL,
    PRIMARY KEY(field, face_id, method)
);
CREATE TABLE IF NOT EXISTS decisions(
    face_id TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    kind TEXT NOT NULL,
    annotator TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY(field, face_id, value, kind)
);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class LabelStoreError(LabelerError, ValueError):
    """The label store cannot be opened or written; the message names the file and the fix."""


def create_tables(con: sqlite3.Connection) -> None:
    """Run :data:`DDL` (idempotent) on an open connection, inside the caller's transaction."""
    for stmt in DDL.split(";"):
        if stmt.strip():
            con.execute(stmt)


def bump(con: sqlite3.Connection) -> None:
    """Count one more write in ``meta`` (part of the store's cache stamp)."""
    con.execute(
        "INSERT INTO meta(key, value) VALUES ('writes', 1) "
        "ON CONFLICT(key) DO UPDATE SET value = value + 1"
    )


def store_error(path: Path, exc: sqlite3.Error) -> LabelStoreError | None:
    """One-line error for an SQLite failure on ``path``; None for a transient lock."""
    msg = str(exc)
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return None
    if "disk is full" in low or "disk i/o" in low:
        return LabelStoreError(
            f"cannot write {path}: {msg}; free disk space and retry (the change was not saved)"
        )
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return LabelStoreError(
            f"cannot write {path}: {msg}; make the workspace writable (the change was not saved)"
        )
    return LabelStoreError(
        f"{path} is damaged ({msg}); restore a backup with "
        f"'labeler labels restore -w {path.parent}'"
    )


def create_store_file(path: Path) -> None:
    """Create an empty store at ``path`` atomically (built aside, then linked into place), so
    a 0-byte or half-made ``labels.db`` is never a legitimate state. When another process
    created it meanwhile, theirs is kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temp_path(path, side_files=SQLITE_SIDE_FILES) as tmp:
            con = sqlite3.connect(tmp, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("BEGIN IMMEDIATE")
                create_tables(con)
                write_schema(con, DEFAULT_SCHEMA)
                con.execute("COMMIT")
            finally:
                con.close()
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process created it meanwhile: use theirs
                pass
    except sqlite3.Error as exc:
        raise store_error(path, exc) or exc from None
    except OSError as exc:
        raise LabelStoreError(
            f"cannot create {path} ({exc.strerror or exc}); free disk space or make the "
            "workspace writable"
        ) from None


def read_only_snapshot(path: Path) -> Path:
    """A private copy of the store ``path`` (with its WAL, whose committed events SQLite
    replays on open) in a new temporary folder, for reading a store in a folder this process
    may not write. The caller removes the folder (``result.parent``)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="labeler-labels-"))
    try:
        shutil.copyfile(path, tmp / path.name)
        wal = Path(f"{path}-wal")
        if wal.is_file():
            shutil.copyfile(wal, tmp / wal.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s is in a read-only folder; reading a private copy of it", path)
    return tmp / path.name


# -- the soundness check ------------------------------------------------------------------------
def _look(path: Path) -> str | tuple[int, int] | None:
    """One look at the file's header and size: why it is not an SQLite file, (size, the size
    its header gives) when it is shorter than that, or None."""
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
    return (size, page * n_pages) if valid and size < page * n_pages else None


def _being_written(path: Path) -> bool:
    """Whether the store ``path`` is in use, so that its size may lag behind its header: a
    non-empty WAL beside it (checkpoints copy its pages into the file) or a rollback journal
    (a commit in flight)."""
    for suffix in ("-wal", "-journal"):
        try:
            if os.stat(f"{path}{suffix}").st_size > 0:
                return True
        except OSError:
            pass
    return False


def _sqlite_findings(path: Path) -> str | None:
    """What SQLite finds reading ``path`` in one read transaction (a consistent snapshot,
    whatever writers and checkpoints do meanwhile): ``PRAGMA quick_check`` and the label
    tables. A busy store is asked again (3 tries of 5 s); in a folder this process cannot write
    (SQLite cannot make the WAL index it needs), a private copy is checked."""
    for attempt in range(3):
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                con.execute("BEGIN")
                row = con.execute("PRAGMA quick_check").fetchone()
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            finally:
                con.close()
            break
        except sqlite3.OperationalError as exc:
            low = str(exc).lower()
            if ("locked" in low or "busy" in low) and attempt < 2:
                time.sleep(0.5)
                continue
            if not os.access(path.parent, os.W_OK):  # no WAL index can be made here
                return _findings_in_a_copy(path)
            return f"SQLite cannot read it ({exc})"
        except sqlite3.DatabaseError as exc:
            return f"SQLite cannot read it ({exc})"
    if not row or row[0] != "ok":
        return f"SQLite finds it damaged ({row[0] if row else 'no answer'})"
    if not {"events", "meta"} <= tables:
        return "it holds no label events table (not a labeler label store)"
    return None


def _findings_in_a_copy(path: Path) -> str | None:
    try:
        copy = read_only_snapshot(path)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    try:
        return _sqlite_findings(copy)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def check_store(path: Path, *, thorough: bool = True) -> str | None:
    """Why ``path`` is not a sound label store (one phrase), or None when it is.

    Always (microseconds): not empty, an SQLite header, not shorter than its header says
    (a truncated copy). ``thorough``: also ``PRAGMA quick_check`` and the label tables.

    The size test speaks only about a file at rest. While the store is in use (a non-empty
    ``-wal`` or a ``-journal`` beside it) its file can be shorter than page 1 says, and stay
    so past three looks 50 ms apart under 4 writers: a checkpoint writes page 1 first and
    the end of the file last, and a full checkpoint sets the file's size. So SQLite itself
    decides then (``quick_check`` in one read transaction: a consistent snapshot), also in
    the quick check. At rest, a short file is reported only when three looks 50 ms apart
    agree.
    4 writers for 60 s (tests/test_store_faults.py): 0 false reports in 111,200 checks and
    349 backups (206 looks found the file short: SQLite found the store sound each time); the
    three looks alone spoke falsely 3 times in 102,000 checks and skipped 5 of 417 backups.
    """
    path = Path(path)
    live = False
    for attempt in range(3):
        look = _look(path)
        if look is None:
            break
        if isinstance(look, str):
            return look
        if _being_written(path):
            log.debug(
                "%s: shorter than its header says while SQLite writes it; asking SQLite", path
            )
            live = True
            break
        if attempt == 2:
            size, expected = look
            return f"it is truncated ({size:,} bytes, its header says {expected:,})"
        time.sleep(0.05)
    if not (thorough or live):
        return None
    return _sqlite_findings(path)
