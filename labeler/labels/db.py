"""The label db's tables, its one-line errors, and creating a new store file.

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
from pathlib import Path

from labeler._io import SQLITE_SIDE_FILES, temp_path
from labeler.errors import LabelerError
from labeler.labels.schema import DEFAULT_SCHEMA, write_schema

log = logging.getLogger(__name__)

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
