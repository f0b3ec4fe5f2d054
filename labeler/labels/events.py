"""The event log of human labels: assign, undo and redo, and the current labels it implies.

Functions on an open connection, called by :class:`labeler.labels.store.LabelStore` inside
its transactions. Every assign is one event over many faces; undo and redo are logged as
events too and toggle ``undone`` on the assign event they name; ``current`` (one row per
labeled face and field) is kept equal to "the latest non-undone assign event" in the same
transaction. Order is ``event_id`` (commit order), not the wall-clock ``ts``. Annotator names
are stored and looked up as :func:`labeler.labels.names.annotator_name` writes them (NFKC:
``Ａｎｎ`` labels, undoes and redoes as ``Ann``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

import pandas as pd

from labeler.errors import InputError
from labeler.labels.names import annotator_name, confusable_with
from labeler.labels.plan import NOT_A_FACE

SOURCES = ("cluster", "selection", "single", "suggestion", "import", "simulation")

CURRENT_COLUMNS = ["face_id", "field", "value", "source", "annotator", "ts", "event_id"]
HISTORY_COLUMNS = [
    "event_id",
    "ts",
    "annotator",
    "kind",
    "field",
    "value",
    "source",
    "undone",
    "target",
    "n_faces",
]

# Recompute current(field, face) for the faces of one event: latest non-undone assign wins.
_RECOMPUTE = """
INSERT INTO current(field, face_id, value, event_id)
SELECT :field, t.face_id, e.value, e.event_id
FROM (
    SELECT ef.face_id AS face_id,
           (SELECT MAX(x.event_id) FROM event_faces x JOIN events e2 ON e2.event_id = x.event_id
            WHERE x.face_id = ef.face_id AND e2.field = :field AND e2.kind = 'assign'
              AND e2.undone = 0) AS eid
    FROM event_faces ef WHERE ef.event_id = :target
) t JOIN events e ON e.event_id = t.eid
WHERE e.value IS NOT NULL
"""


def unique_ids(face_ids: Iterable[str]) -> list[str]:
    """Distinct ids, sorted (sorted inserts touch the b-trees in order: ~2x faster at 10k)."""
    if isinstance(face_ids, str):
        raise TypeError(f"face_ids must be a list of ids, got the string {face_ids!r}")
    return sorted({str(f) for f in face_ids})


def append_assign(
    con: sqlite3.Connection,
    ids: list[str],
    field: str,
    value: str | None,
    *,
    annotator: str,
    source: str,
) -> int:
    """Log one assign event of ``value`` (None clears) on ``ids`` and update ``current``;
    returns its event_id. The caller has checked the ids, the value and the source."""
    cur = con.execute(
        "INSERT INTO events(ts, annotator, kind, field, value, source, undone, n_faces) "
        "VALUES (?, ?, 'assign', ?, ?, ?, 0, ?)",
        (time.time(), str(annotator), field, value, source, len(ids)),
    )
    eid = int(cur.lastrowid)
    con.executemany(
        "INSERT INTO event_faces(event_id, face_id) VALUES (?, ?)", ((eid, f) for f in ids)
    )
    if value is None:
        con.execute(
            "DELETE FROM current WHERE field = ? AND face_id IN "
            "(SELECT face_id FROM event_faces WHERE event_id = ?)",
            (field, eid),
        )
    else:
        con.execute(
            "INSERT INTO current(field, face_id, value, event_id) "
            "SELECT ?, face_id, ?, event_id FROM event_faces WHERE event_id = ? "
            "ON CONFLICT(field, face_id) DO UPDATE SET value = excluded.value, "
            "event_id = excluded.event_id",
            (field, value, eid),
        )
    return eid


def who(annotator: str) -> str:
    """``annotator`` as :func:`~labeler.labels.names.annotator_name` stores it (NFKC,
    spaces collapsed), for look-ups; a name it refuses is returned as given (it has no
    events, or events from before the check, found as they were written)."""
    try:
        return annotator_name(annotator)
    except InputError:
        return str(annotator)


def lookalike(con: sqlite3.Connection, annotator: str) -> str | None:
    """An annotator with events whose name looks like ``annotator``'s (see
    :func:`~labeler.labels.names.confusable_key`) when ``annotator`` has none yet, else None.
    Cheap: the distinct names are read only for a name's first event."""
    if con.execute("SELECT 1 FROM events WHERE annotator = ? LIMIT 1", (annotator,)).fetchone():
        return None
    names = [r[0] for r in con.execute("SELECT DISTINCT annotator FROM events")]
    return confusable_with(annotator, [str(n) for n in names if n is not None])


def _toggle(con: sqlite3.Connection, target: int, *, annotator: str, kind: str) -> None:
    field_ = con.execute("SELECT field FROM events WHERE event_id = ?", (target,)).fetchone()[0]
    con.execute(
        "UPDATE events SET undone = ? WHERE event_id = ?", (1 if kind == "undo" else 0, target)
    )
    con.execute(
        "INSERT INTO events(ts, annotator, kind, field, value, source, undone, target, n_faces) "
        "SELECT ?, ?, ?, field, NULL, source, 0, event_id, n_faces FROM events "
        "WHERE event_id = ?",
        (time.time(), annotator, kind, target),
    )
    con.execute(
        "DELETE FROM current WHERE field = ? AND face_id IN "
        "(SELECT face_id FROM event_faces WHERE event_id = ?)",
        (field_, target),
    )
    con.execute(_RECOMPUTE, {"field": field_, "target": target})


def undo(con: sqlite3.Connection, annotator: str) -> int | None:
    """Undo ``annotator``'s latest active assign event; its id, or None (nothing to undo)."""
    annotator = who(annotator)
    row = con.execute(
        "SELECT event_id FROM events WHERE annotator = ? AND kind = 'assign' "
        "AND undone = 0 ORDER BY event_id DESC LIMIT 1",
        (annotator,),
    ).fetchone()
    if row is None:
        return None
    _toggle(con, int(row[0]), annotator=annotator, kind="undo")
    return int(row[0])


def redo(con: sqlite3.Connection, annotator: str) -> int | None:
    """Redo the assign event ``annotator`` undid most recently; None when nothing to redo
    (a new assign by the annotator after an undo clears the redo stack)."""
    annotator = who(annotator)
    rows = con.execute(
        "SELECT e.kind, e.target, t.undone FROM events e "
        "LEFT JOIN events t ON t.event_id = e.target "
        "WHERE e.annotator = ? ORDER BY e.event_id DESC",
        (annotator,),
    )
    for kind, target, target_undone in rows:
        if kind == "assign":
            return None
        if kind == "undo" and target_undone:
            _toggle(con, int(target), annotator=annotator, kind="redo")
            return int(target)
    return None


def can_undo(con: sqlite3.Connection, annotator: str) -> bool:
    annotator = who(annotator)
    return (
        con.execute(
            "SELECT 1 FROM events WHERE annotator = ? AND kind = 'assign' AND undone = 0 LIMIT 1",
            (annotator,),
        ).fetchone()
        is not None
    )


def current(con: sqlite3.Connection, field: str | None = None) -> pd.DataFrame:
    """Current human labels (CURRENT_COLUMNS), one row per labeled (face, field)."""
    sql = (
        "SELECT c.face_id, c.field, c.value, e.source, e.annotator, e.ts, c.event_id "
        "FROM current c JOIN events e ON e.event_id = c.event_id"
    )
    args: tuple = ()
    if field is not None:
        sql += " WHERE c.field = ?"
        args = (field,)
    rows = con.execute(sql, args).fetchall()
    df = pd.DataFrame(rows, columns=CURRENT_COLUMNS)
    return df.astype({"ts": "float64", "event_id": "int64"})


def current_values(con: sqlite3.Connection, field: str) -> dict[str, str]:
    return dict(con.execute("SELECT face_id, value FROM current WHERE field = ?", (field,)))


#: Ids per ``IN (...)`` query (SQLite allows 32,766 variables; small chunks stay fast).
_CHUNK = 500


def _chunks(ids: list) -> Iterable[list]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def labels_of(con: sqlite3.Connection, field: str, ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{face_id: (label, annotator)}`` of the labeled faces among ``ids`` in ``field`` as
    the app shows them: the current label, or ``not_a_face`` where any field says so (see
    ``labeler.ui.data.labels``), with the annotator of the event that set it. ~10 ms for
    10,000 ids (primary-key look-ups, and one scan for ``not_a_face``)."""
    out: dict[str, tuple[str, str]] = {}
    sql = (
        "SELECT c.face_id, c.value, e.annotator FROM current c "
        "JOIN events e ON e.event_id = c.event_id WHERE c.field = ? AND c.face_id IN ({})"
    )
    for part in _chunks(ids):
        rows = con.execute(sql.format(",".join("?" * len(part))), (field, *part))
        out.update((f, (v, a)) for f, v, a in rows)
    wanted = set(ids)
    elsewhere = con.execute(
        "SELECT c.face_id, e.annotator FROM current c JOIN events e ON e.event_id = c.event_id "
        "WHERE c.value = ? AND c.field != ? ORDER BY c.event_id",
        (NOT_A_FACE, field),
    )
    for fid, who_ in elsewhere:
        if fid in wanted and out.get(fid, ("",))[0] != NOT_A_FACE:
            out[fid] = (NOT_A_FACE, who_)
    return out


def last_changed_by(con: sqlite3.Connection, field: str, ids: list[str]) -> dict[str, str]:
    """``{face_id: annotator}`` of the latest event of ``field`` that touched each of ``ids``
    (an assign naming it, or an undo / redo of one): who left it as it is now."""
    sql = (
        "SELECT face_id, MAX(eid) FROM ("
        " SELECT ef.face_id AS face_id, e.event_id AS eid FROM event_faces ef"
        " JOIN events e ON e.event_id = ef.event_id"
        " WHERE e.field = ? AND ef.face_id IN ({q})"
        " UNION ALL"
        " SELECT ef.face_id, u.event_id FROM event_faces ef JOIN events u ON u.target = ef.event_id"
        " WHERE u.field = ? AND ef.face_id IN ({q})"
        ") GROUP BY face_id"
    )
    last: dict[str, int] = {}
    for part in _chunks(ids):
        q = ",".join("?" * len(part))
        last.update(con.execute(sql.format(q=q), (field, *part, field, *part)))
    names: dict[int, str] = {}
    for part in _chunks(sorted(set(last.values()))):
        q = ",".join("?" * len(part))
        names.update(
            con.execute(f"SELECT event_id, annotator FROM events WHERE event_id IN ({q})", part)
        )
    return {f: names[e] for f, e in last.items() if e in names}


def faces_with_value(con: sqlite3.Connection, value: str) -> set[str]:
    """Faces whose current label of any field is ``value``."""
    return {
        r[0] for r in con.execute("SELECT DISTINCT face_id FROM current WHERE value = ?", (value,))
    }


def counts(con: sqlite3.Connection) -> pd.DataFrame:
    rows = con.execute(
        "SELECT field, value, COUNT(*) FROM current GROUP BY field, value"
    ).fetchall()
    return pd.DataFrame(rows, columns=["field", "value", "faces"])


def history(
    con: sqlite3.Connection, limit: int | None = 100, *, annotator: str | None = None
) -> pd.DataFrame:
    sql = f"SELECT {', '.join(HISTORY_COLUMNS)} FROM events"
    args: list = []
    if annotator is not None:
        sql += " WHERE annotator = ?"
        args.append(who(annotator))
    sql += " ORDER BY event_id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    rows = con.execute(sql, args).fetchall()
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def event_faces(con: sqlite3.Connection, event_id: int) -> list[str]:
    return [
        r[0]
        for r in con.execute("SELECT face_id FROM event_faces WHERE event_id = ?", (int(event_id),))
    ]


def activity(con: sqlite3.Connection) -> pd.DataFrame:
    sql = (
        "SELECT annotator, COUNT(*) AS events, "
        "SUM(CASE WHEN kind = 'assign' AND undone = 0 THEN n_faces ELSE 0 END) AS faces, "
        "MAX(ts) AS last_ts FROM events GROUP BY annotator ORDER BY last_ts DESC"
    )
    rows = con.execute(sql).fetchall()
    return pd.DataFrame(rows, columns=["annotator", "events", "faces", "last_ts"])


def labeled_since(con: sqlite3.Connection, field: str, event_id: int) -> int:
    """Faces whose current label for ``field`` was given by an event after ``event_id``."""
    return int(
        con.execute(
            "SELECT COUNT(*) FROM current WHERE field = ? AND event_id > ?", (field, event_id)
        ).fetchone()[0]
    )


def version(con: sqlite3.Connection) -> tuple[int, int]:
    """(last event id, table writes counted in meta)."""
    last = con.execute("SELECT COALESCE(MAX(event_id), 0) FROM events").fetchone()[0]
    row = con.execute("SELECT value FROM meta WHERE key = 'writes'").fetchone()
    return int(last), int(row[0]) if row else 0
