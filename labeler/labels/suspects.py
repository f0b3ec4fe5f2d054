"""Suspected label errors: human labels a model disagrees with.

Table ``suspects(face_id, field, given, suggested, score, method)``: each method's rows for a
field are replaced as a whole; a suspect is *pending* while its face still carries the
``given`` label and nobody decided "the label is right".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import pandas as pd

from labeler.labels.review import replace_rows, review_rows

#: One row per flagged face, as a producer (the Suggest step) hands them to ``write_suspects``.
SUSPECT_COLUMNS = ["face_id", "field", "given", "suggested", "score"]
#: The stored table and what ``LabelStore.suspects`` returns: those and the producing method.
TABLE_COLUMNS = [*SUSPECT_COLUMNS, "method"]

PENDING = (
    " JOIN current c ON c.field = s.field AND c.face_id = s.face_id"
    " LEFT JOIN decisions d ON d.field = s.field AND d.face_id = s.face_id"
    " AND d.value = c.value AND d.kind = 'suspect'",
    "c.value = s.given AND d.face_id IS NULL",
)


def suspect_rows(df: pd.DataFrame, method: str) -> list[tuple]:
    """Rows to store from ``df`` (columns :data:`SUSPECT_COLUMNS`)."""
    if missing := set(SUSPECT_COLUMNS) - set(df.columns):
        raise ValueError(f"suspects need columns {SUSPECT_COLUMNS}; missing {sorted(missing)}")
    return [
        (str(r.face_id), str(r.field), r.given, r.suggested, float(r.score), method)
        for r in df.itertuples(index=False)
    ]


def write(
    con: sqlite3.Connection,
    df: pd.DataFrame,
    rows: list[tuple],
    method: str,
    fields: Sequence[str] | None,
) -> None:
    """Replace ``method``'s suspects for ``fields`` and the fields in ``df`` by ``rows``."""
    clear = set(df["field"].astype(str)) | set(fields or ())
    replace_rows(con, "suspects", TABLE_COLUMNS, rows, method, clear)


def read(con: sqlite3.Connection, field: str | None, *, pending: bool) -> pd.DataFrame:
    """Suspects, highest score first (``pending``: only the undecided ones)."""
    return review_rows(
        con,
        "suspects",
        TABLE_COLUMNS,
        field,
        pending=PENDING if pending else None,
        order="s.score DESC, s.face_id",
    )
