"""Machine suggestions (propagated or predicted labels), never human labels.

Table ``suggestions(face_id, field, value, confidence, method, created_ts)``: each method's
rows for a field are replaced as a whole; a suggestion is *pending* while it differs from
the face's current human label and nobody rejected it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import pandas as pd

from labeler.labels.review import replace_rows, review_rows

SUGGESTION_COLUMNS = ["face_id", "field", "value", "confidence", "method", "created_ts"]

PENDING = (
    " LEFT JOIN current c ON c.field = s.field AND c.face_id = s.face_id"
    " LEFT JOIN decisions d ON d.field = s.field AND d.face_id = s.face_id"
    " AND d.value = s.value AND d.kind = 'suggestion'",
    "(c.value IS NULL OR c.value != s.value) AND d.face_id IS NULL",
)


def suggestion_rows(df: pd.DataFrame, method: str) -> list[tuple]:
    """Rows to store from ``df`` (columns face_id, field, value, confidence)."""
    need = {"face_id", "field", "value", "confidence"}
    if missing := need - set(df.columns):
        raise ValueError(f"suggestions need columns {sorted(need)}; missing {sorted(missing)}")
    now = time.time()
    return [
        (str(r.face_id), str(r.field), str(r.value), float(r.confidence), method, now)
        for r in df.itertuples(index=False)
    ]


def write(
    con: sqlite3.Connection,
    df: pd.DataFrame,
    rows: list[tuple],
    method: str,
    fields: Sequence[str] | None,
) -> None:
    """Replace ``method``'s suggestions for ``fields`` and the fields in ``df`` by ``rows``."""
    clear = set(df["field"].astype(str)) | set(fields or ())
    replace_rows(con, "suggestions", SUGGESTION_COLUMNS, rows, method, clear)


def read(con: sqlite3.Connection, field: str | None, *, pending: bool) -> pd.DataFrame:
    """Suggestions, highest confidence first (``pending``: only the undecided ones)."""
    return review_rows(
        con,
        "suggestions",
        SUGGESTION_COLUMNS,
        field,
        pending=PENDING if pending else None,
        order="s.confidence DESC, s.face_id",
    )
