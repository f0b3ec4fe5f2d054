"""The CSV files labeler writes for people (manifest.csv, clusters.csv, ``labeler predict``'s
output), safe to open in a spreadsheet.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a
formula to Excel, LibreOffice and Google Sheets: a photo named ``=HYPERLINK("http://x",
"open").jpg`` would become a live link (or worse, ``=cmd|...``) in the ``path`` column. As
OWASP recommends (CSV injection), such a cell is written with a leading single quote
(``'=HYPERLINK(...``), which a spreadsheet shows as text. Only text columns are escaped:
numbers (a box's ``x0 = -3.5``, cluster ``-1``) are written as numbers.

Reading back: :func:`read_csv` removes exactly that quote again (a cell starting with ``'``
followed by one of those characters), so a round trip gives the values written.
``face_id`` is hex and never escaped: it is the column to join on.

>>> csv_bytes(pd.DataFrame({"path": ["=1+2.jpg"], "x0": [-3.5]}))  # doctest: +SKIP
b"path,x0\\n'=1+2.jpg,-3.5\\n"
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: The first characters that make a spreadsheet evaluate a cell (OWASP, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run; else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def unescape_cell(value: Any) -> Any:
    """The inverse of :func:`escape_cell` (text that starts with ``'`` and a formula start)."""
    if isinstance(value, str) and value[:1] == "'" and value[1:2] and value[1] in FORMULA_START:
        return value[1:]
    return value


def escape_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text cell escaped (numeric columns untouched)."""
    import pandas as pd

    out = df.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
            out[col] = s.map(escape_cell)
    return out


def csv_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as CSV (no index, ``\\n`` line ends, UTF-8) with formula cells escaped."""
    return escape_frame(df).to_csv(index=False, lineterminator="\n").encode()


def read_csv(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """A CSV labeler wrote, with the escaping of :func:`csv_bytes` undone (``pd.read_csv``
    arguments pass through)."""
    import pandas as pd

    df = pd.read_csv(path, **kwargs)
    for col in df.columns:
        if pd.api.types.is_object_dtype(df[col]) or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].map(unescape_cell)
    return df
