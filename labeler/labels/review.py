"""The review queue's shared pieces: reading suggestion / suspect rows (all, or only the
pending ones), and the decisions that hide rejected rows ("keep as is")."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import pandas as pd

DECISION_KINDS = {"suggestion": "value", "suspect": "given"}  # kind -> column decided on


def review_rows(
    con: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    field: str | None,
    *,
    pending: tuple[str, str] | None,
    order: str,
) -> pd.DataFrame:
    """Rows of the suggestions or suspects ``table`` (alias ``s``), optionally for one
    ``field``; ``pending`` = (joins, condition) that keep the undecided ones."""
    sql = f"SELECT {', '.join('s.' + c for c in columns)} FROM {table} s"
    where, args = [], []
    if field is not None:
        where.append("s.field = ?")
        args.append(field)
    if pending is not None:
        sql += pending[0]
        where.append(pending[1])
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order}"
    rows = con.execute(sql, args).fetchall()
    return pd.DataFrame(rows, columns=list(columns))


def replace_rows(
    con: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: list[tuple],
    method: str,
    fields: set[str],
) -> None:
    """Drop ``method``'s rows of ``fields`` from ``table`` and insert ``rows``."""
    for f in sorted(fields):
        con.execute(f"DELETE FROM {table} WHERE field = ? AND method = ?", (f, method))
    con.executemany(
        f"INSERT OR REPLACE INTO {table}({', '.join(columns)}) "
        f"VALUES ({', '.join('?' * len(columns))})",
        rows,
    )


def decision_rows(items: pd.DataFrame, field: str, *, annotator: str, kind: str) -> list[tuple]:
    """Rows for ``decisions``: ``kind='suggestion'`` decides on column value, ``'suspect'``
    on column given ("the given label is right")."""
    column = DECISION_KINDS.get(kind)
    if column is None:
        raise ValueError(f"kind must be 'suggestion' or 'suspect', got {kind!r}")
    now = time.time()
    return [
        (str(f), field, str(v), kind, annotator, now)
        for f, v in zip(items["face_id"], items[column], strict=True)
    ]


def write_decisions(con: sqlite3.Connection, rows: list[tuple]) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO decisions(face_id, field, value, kind, annotator, ts) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
