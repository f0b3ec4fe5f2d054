"""``LabelStore``: the one object the app, the CLI and the library use for labels.

A thin shell over the modules of :mod:`labeler.labels`: it owns the connections (one short
connection per call, ``busy_timeout`` 30 s, every write one ``BEGIN IMMEDIATE``
transaction) and the checks on input; the SQL lives in :mod:`~labeler.labels.events`,
:mod:`~labeler.labels.schema`, :mod:`~labeler.labels.suggestions`,
:mod:`~labeler.labels.suspects` and :mod:`~labeler.labels.review`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd

from labeler.errors import InputError
from labeler.labels import events, review, suggestions, suspects
from labeler.labels.backup import backup_dir, maybe_backup, missing_store_message
from labeler.labels.db import (
    LabelStoreError,
    bump,
    check_store,
    create_store_file,
    create_tables,
    read_only_snapshot,
    store_error,
)
from labeler.labels.names import annotator_name, check_label_name, printable, shown
from labeler.labels.plan import NOT_A_FACE, AssignResult, recheck
from labeler.labels.schema import (
    DEFAULT_SCHEMA,
    LabelSchema,
    read_schema,
    with_field,
    with_value,
    write_schema,
)

log = logging.getLogger(__name__)


class LabelStore:
    """Human labels of one workspace: ``LabelStore(ws.labels_db)``. Cheap to construct.

    Opens a new SQLite connection per call, so one instance may be shared across threads and
    each process may hold its own. All writes are single short ``BEGIN IMMEDIATE`` transactions.
    """

    def __init__(self, db_path: Path | str, *, timeout_s: float = 30.0) -> None:
        self.db_path = Path(db_path)
        self.timeout_s = float(timeout_s)
        self._ready = False
        self._snapshot: Path | None = None  # reads in a read-only workspace (_read_path)

    # -- connections ----------------------------------------------------------------------
    def _open_checks(self) -> None:
        """Refuse a damaged store (never re-create it silently), and a missing one while
        backups of it exist (it vanished: restore it); create a missing one in a fresh
        workspace."""
        if not self.db_path.exists():
            msg = missing_store_message(self.db_path, "no new store was created")
            if msg is not None:
                raise LabelStoreError(msg)
            create_store_file(self.db_path)
            return
        why = check_store(self.db_path, thorough=False)
        if why is not None:
            raise LabelStoreError(
                f"{self.db_path}: {why}; the labels were not opened. Restore a backup with "
                f"'labeler labels restore -w {self.db_path.parent}' (backups in "
                f"{backup_dir(self.db_path)}), or move the file away to start an empty store"
            )

    def _read_path(self) -> Path:
        """Where reads go: the store itself; in a folder this process may not write (a
        read-only workspace, where SQLite cannot make the WAL index it needs to open the
        store), a private copy in a temporary folder, removed with this object."""
        if os.access(self.db_path.parent, os.W_OK):
            return self.db_path
        if self._snapshot is None:
            self._snapshot = read_only_snapshot(self.db_path)
            weakref.finalize(self, shutil.rmtree, self._snapshot.parent, True)
        return self._snapshot

    def _connect(self, *, read: bool = False) -> sqlite3.Connection:
        if not self._ready:
            self._open_checks()
        con = sqlite3.connect(
            self._read_path() if read else self.db_path,
            timeout=self.timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA foreign_keys=OFF")
        if not self._ready:
            self._init(con)
        return con

    def _init(self, con: sqlite3.Connection) -> None:
        have = con.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()[0]
        if have:  # created before (by anyone): no write lock needed
            self._wal_mode(con)
            self._ready = True
            return
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("%s: could not switch to WAL (journal_mode=%s)", self.db_path, mode)
        con.execute("BEGIN IMMEDIATE")
        try:
            create_tables(con)
            if con.execute("SELECT COUNT(*) FROM label_fields").fetchone()[0] == 0:
                write_schema(con, DEFAULT_SCHEMA)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._ready = True

    def _wal_mode(self, con: sqlite3.Connection) -> None:
        """Put a store in a rollback journal's mode (an older labeler restored it so) back in
        WAL mode, when no other connection holds it (else later: it works either way)."""
        if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        con.execute("PRAGMA busy_timeout=1000")
        try:
            con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            log.info("%s stays in its journal mode for now (%s)", self.db_path, exc)
        finally:
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            con = self._connect(read=True)
            try:
                yield con
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise store_error(self.db_path, exc) or exc from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            con = self._connect()
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise store_error(self.db_path, exc) or exc from None

    # -- labels (labeler.labels.events) -----------------------------------------------------
    def assign(
        self,
        face_ids: Iterable[str],
        field: str,
        value: str | None,
        *,
        annotator: str,
        source: str,
    ) -> int:
        """Set ``field`` to ``value`` (``None`` clears it) on ``face_ids`` in one event.

        ``value`` is one of the field's values or ``not_a_face`` (every field has it).

        ``face_ids``: any iterable of ids; duplicates are dropped. Returns the new event_id.
        Raises ``ValueError`` for an unknown field/value/source, no faces or no annotator.
        ``annotator`` is stored as :func:`~labeler.labels.names.annotator_name` makes it
        (NFKC, no control or bidi characters); a new name that looks like one with labels
        already (``Аnn`` with a Cyrillic А, ``ann`` beside ``Ann``) is logged as a warning.
        Bulk-assigning 10,000 faces takes well under 0.2 s (see bench/bench_app.py).

        Writes whatever the faces carry now: a page's bulk action goes through
        :meth:`assign_checked`, which never changes a label given since the page was drawn.
        """
        ids, annotator = self._assign_inputs(face_ids, field, value, annotator, source)
        with self._write() as con:
            self._check_value(con, field, value)
            twin = events.lookalike(con, annotator)
            eid = events.append_assign(con, ids, field, value, annotator=annotator, source=source)
        self._logged(eid, field, value, len(ids), annotator, twin)
        return eid

    def assign_checked(
        self,
        face_ids: Iterable[str],
        field: str,
        value: str,
        *,
        seen: Mapping[str, str | None],
        relabel: bool = False,
        annotator: str,
        source: str,
    ) -> AssignResult:
        """The bulk assign of every page: set ``field`` to ``value`` on those of ``face_ids``
        whose label is still what the page showed, planned in the write's own transaction.

        ``seen``: ``{face_id: label the page showed, None for unlabeled}``, captured when the
        page was drawn (:meth:`AssignPlan.seen <labeler.labels.plan.AssignPlan.seen>`); a face
        missing from it counts as shown unlabeled. Labels are read as the app shows them
        (``not_a_face`` in any field counts). In one ``BEGIN IMMEDIATE`` transaction: faces
        whose label now differs from ``seen`` (someone labeled, relabeled or undid them since)
        are left and reported by who and what (:attr:`AssignResult.meanwhile`); faces already
        at ``value`` are left; without ``relabel`` faces with any label are left; the rest get
        one event (none when no face is left to change). Raises as :meth:`assign`.

        >>> r = store.assign_checked(["a", "b"], "mask_state", "correct", seen={"a": None,
        ...     "b": None}, annotator="Ann", source="selection")  # doctest: +SKIP
        >>> r.changed, r.meanwhile_text()  # Bea labeled b since Ann's page was drawn  # doctest: +SKIP
        (('a',), '1 face was labeled no_mask by Bea meanwhile and was left as it is')
        """
        if value is None:
            raise InputError(f"assign_checked({field!r}) needs a value; use assign to clear")
        ids, annotator = self._assign_inputs(face_ids, field, value, annotator, source)
        with self._write() as con:
            self._check_value(con, field, value)
            now: dict[str, tuple[str | None, str | None]] = dict(events.labels_of(con, field, ids))
            gone = [f for f in ids if f not in now and seen.get(f) is not None]
            if gone:  # unlabeled since the page showed a label: who did it
                now.update(
                    (f, (None, a)) for f, a in events.last_changed_by(con, field, gone).items()
                )
            result = recheck(ids, seen, now, value, relabel=relabel)
            if not result.changed:
                return result
            twin = events.lookalike(con, annotator)
            eid = events.append_assign(
                con, list(result.changed), field, value, annotator=annotator, source=source
            )
        if result.meanwhile:
            log.info("event %d by %s: %s", eid, printable(annotator), result.meanwhile_text())
        self._logged(eid, field, value, len(result.changed), annotator, twin)
        return replace(result, event_id=eid)

    def labels_of(self, field: str, face_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """``{face_id: (label, annotator who gave it)}`` of the labeled faces among
        ``face_ids``, as the app shows them (``not_a_face`` in any field counts)."""
        with self._read() as con:
            return events.labels_of(con, field, events.unique_ids(face_ids))

    def _assign_inputs(
        self, face_ids: Iterable[str], field: str, value: str | None, annotator: str, source: str
    ) -> tuple[list[str], str]:
        ids = events.unique_ids(face_ids)
        if not ids:
            raise InputError(f"assign({field!r}, {value!r}) got no face_ids; select faces first")
        if source not in events.SOURCES:
            raise ValueError(f"source {source!r} is not one of {events.SOURCES}")
        return ids, annotator_name(annotator)

    @staticmethod
    def _check_value(con: sqlite3.Connection, field: str, value: str | None) -> None:
        allowed = read_schema(con).values(field)
        if value is not None and value not in allowed and value != NOT_A_FACE:
            raise InputError(
                f"value {shown(value)} is not allowed for field {field!r} (allowed: "
                f"{', '.join(allowed)}); add it in Settings or with LabelStore.add_value"
            )
        if value is not None and value != NOT_A_FACE:  # a value an older labeler let in
            try:
                check_label_name(value, "value")
            except InputError as exc:
                raise InputError(
                    f"{exc} (field {field!r} has it from an older labeler: add a valid "
                    "value in Settings and label these faces with it)"
                ) from None

    def _logged(
        self, eid: int, field: str, value: str | None, n: int, annotator: str, twin: str | None
    ) -> None:
        if twin is not None:
            log.warning(
                "annotator %r looks like %r, who labeled before; their labels and undo are "
                "kept apart: if they are one person, label under one spelling",
                annotator,
                twin,
            )
        log.debug("event %d: %s=%s on %d faces by %s", eid, field, printable(value), n,
                  printable(annotator))  # fmt: skip
        maybe_backup(self.db_path, eid)

    def undo(self, annotator: str) -> int | None:
        """Undo ``annotator``'s latest active assign event; returns its id (None: nothing to undo).

        Only that annotator's events are touched; a face another annotator labeled later keeps
        that later label. The undo is itself logged as an event.
        """
        with self._write() as con:
            return events.undo(con, annotator)

    def redo(self, annotator: str) -> int | None:
        """Redo the assign event ``annotator`` undid most recently; None when nothing to redo.

        A new assign by the annotator after an undo clears the redo stack (as in editors).
        """
        with self._write() as con:
            return events.redo(con, annotator)

    def can_undo(self, annotator: str) -> bool:
        with self._read() as con:
            return events.can_undo(con, annotator)

    def current(self, field: str | None = None) -> pd.DataFrame:
        """Current human labels, one row per labeled (face, field).

        Columns: face_id, field, value, source, annotator, ts, event_id (the event that set it).
        Faces never labeled (or cleared) have no row. ``field=None``: all fields.
        """
        with self._read() as con:
            return events.current(con, field)

    def current_values(self, field: str) -> dict[str, str]:
        """``{face_id: value}`` of the current labels of one field (fast path for the app)."""
        with self._read() as con:
            return events.current_values(con, field)

    def not_faces(self) -> set[str]:
        """Faces whose current label of any field is ``not_a_face`` (false detections: left
        out of training and export; reversible by Undo or by relabeling the face)."""
        with self._read() as con:
            return events.faces_with_value(con, NOT_A_FACE)

    def counts(self) -> pd.DataFrame:
        """Faces per (field, value) among the current labels: columns field, value, faces."""
        with self._read() as con:
            return events.counts(con)

    def current_wide(self, fields: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per face with any label, one column per field (None where unlabeled)."""
        df = self.current()
        if fields is not None:
            df = df[df["field"].isin(list(fields))]
        if df.empty:
            return pd.DataFrame(columns=["face_id", *(fields or [])])
        wide = df.pivot(index="face_id", columns="field", values="value").reset_index()
        wide.columns.name = None
        return wide

    def history(self, limit: int | None = 100, *, annotator: str | None = None) -> pd.DataFrame:
        """The newest ``limit`` events (None: all), newest first; columns HISTORY_COLUMNS."""
        with self._read() as con:
            return events.history(con, limit, annotator=annotator)

    def event_faces(self, event_id: int) -> list[str]:
        """The face ids one assign event touched."""
        with self._read() as con:
            return events.event_faces(con, event_id)

    def activity(self) -> pd.DataFrame:
        """Per annotator: events, faces labeled (assign events, not undone), last activity ts."""
        with self._read() as con:
            return events.activity(con)

    def labeled_since(self, field: str, event_id: int) -> int:
        """Faces whose current ``field`` label was given after event ``event_id`` (what a
        Suggest run that read the labels up to that event has not seen)."""
        with self._read() as con:
            return events.labeled_since(con, field, int(event_id))

    def version(self) -> tuple[int, int]:
        """A cheap stamp that changes with every write (for caches): (last event, table writes)."""
        with self._read() as con:
            return events.version(con)

    # -- schema (labeler.labels.schema) -----------------------------------------------------
    def schema(self) -> LabelSchema:
        with self._read() as con:
            return read_schema(con)

    def set_schema(self, schema: LabelSchema) -> None:
        """Replace the label schema (labels already given stay in the log).

        Every field name and value the stored schema does not hold yet must pass
        :func:`~labeler.labels.names.check_label_name` and is stored stripped of surrounding
        spaces; those an older labeler let in are kept as they are, so such a store still
        takes new fields and values. A field named twice is refused too. On an
        :class:`InputError` (one line naming the first bad name) nothing is written: a
        hand-built ``LabelField("glasses", ("none", "sun/clip"))`` is refused with ``label
        value 'sun/clip' has '/': export names a folder after each value, ...``.
        """
        from labeler.labels.schema import LabelField

        with self._write() as con:
            stored = {f.name: set(f.values) for f in read_schema(con).fields}
            fields: list[LabelField] = []
            for f in schema.fields:
                name = f.name if f.name in stored else check_label_name(f.name, "field")
                if name in (g.name for g in fields):
                    raise InputError(
                        f"label field {shown(name)} is given twice in the schema; give each "
                        "field once, with all its values"
                    )
                old = stored.get(name, set())
                values = (v if v in old else check_label_name(v, "value") for v in f.values)
                fields.append(replace(f, name=name, values=tuple(dict.fromkeys(values))))
            con.execute("DELETE FROM label_fields")
            con.execute("DELETE FROM label_values")
            write_schema(con, LabelSchema(tuple(fields)))
            bump(con)

    def add_field(
        self, name: str, values: Iterable[str], *, optional: bool = True, description: str = ""
    ) -> LabelSchema:
        new = with_field(
            self.schema(), name, list(values), optional=optional, description=description
        )
        self.set_schema(new)
        return new

    def add_value(self, field: str, value: str) -> LabelSchema:
        schema = self.schema()
        new = with_value(schema, field, value)
        if new is not schema:
            self.set_schema(new)
        return new

    # -- suggestions and suspects (labeler.labels.suggestions / suspects / review) ------------
    def write_suggestions(
        self, df: pd.DataFrame, method: str, *, fields: Sequence[str] | None = None
    ) -> int:
        """Replace the suggestions of ``method`` for ``fields`` (default: the fields in ``df``).

        ``df`` columns: face_id, field, value, confidence (0..1). Returns rows written.
        Pass ``fields`` so that a run with no suggestions clears that field's old ones.
        """
        rows = suggestions.suggestion_rows(df, method)
        with self._write() as con:
            suggestions.write(con, df, rows, method, fields)
            bump(con)
        return len(rows)

    def suggestions(self, field: str | None = None, *, pending: bool = False) -> pd.DataFrame:
        """Suggestions (columns SUGGESTION_COLUMNS), highest confidence first.

        ``pending=True`` keeps only those that differ from the face's current human label and
        were not rejected.
        """
        with self._read() as con:
            return suggestions.read(con, field, pending=pending)

    def write_suspects(
        self, df: pd.DataFrame, method: str, *, fields: Sequence[str] | None = None
    ) -> int:
        """Replace the suspects of ``method`` for ``fields`` (default: the fields in ``df``).

        ``df`` columns: face_id, field, given, suggested, score (higher = more likely wrong).
        Pass ``fields`` so that a run finding no suspects clears that field's old ones.
        """
        rows = suspects.suspect_rows(df, method)
        with self._write() as con:
            suspects.write(con, df, rows, method, fields)
            bump(con)
        return len(rows)

    def suspects(self, field: str | None = None, *, pending: bool = False) -> pd.DataFrame:
        """Suspected label errors (SUSPECT_COLUMNS), highest score first.

        ``pending=True`` keeps those whose face still carries the ``given`` label and that were
        not rejected ("the label is right").
        """
        with self._read() as con:
            return suspects.read(con, field, pending=pending)

    def accept(
        self, items: pd.DataFrame, field: str, *, annotator: str, value_column: str = "value"
    ) -> list[int]:
        """Turn suggestions (or suspects, ``value_column="suggested"``) into human labels.

        One assign event (source 'suggestion') per distinct value; returns the event ids.
        """
        ids = []
        for value, group in items.groupby(value_column, sort=True):
            ids.append(
                self.assign(
                    group["face_id"], field, str(value), annotator=annotator, source="suggestion"
                )
            )
        return ids

    def reject(
        self, items: pd.DataFrame, field: str, *, annotator: str, kind: str = "suggestion"
    ) -> int:
        """Hide suggestions (``kind='suggestion'``, column value) or suspects (``'suspect'``,
        column given: "the given label is right") from the review queue. Returns rows stored."""
        rows = review.decision_rows(items, field, annotator=annotator, kind=kind)
        with self._write() as con:
            review.write_decisions(con, rows)
            bump(con)
        return len(rows)
