"""Labels made outside labeler, read into one table of *records* (``labeler labels import``).

A record says "the face or photo this names has ``value`` in ``field``"; it names what it
labels by one or more keys, and :mod:`labeler.labels.importing` matches them to faces:

======================  ====================================================================
key (column)            filled by
======================  ====================================================================
``face_id``             a CSV's ``face_id`` column (labeler's manifest, a labels CSV), a Label
                        Studio task's ``data.face_id`` (labeler's own Label Studio export)
``image_id``            a class folder's file: the SHA-1 of its bytes, as ingest names photos
``path``                a CSV's ``path`` / ``file_name`` / ``file`` / ``filename`` / ``image``
                        column, a class folder file's path below its class folder, a Label
                        Studio task's image URL (``/data/local-files/?d=...``, an upload, a
                        cloud or web URL)
``root``, ``face_index``  a CSV's ``root`` and ``face_index`` columns, when it has them
======================  ====================================================================

Three readers, one per source kind, each a plain function returning a :class:`Source`:

* :func:`read_csv_source`: one row per face or photo, one column per field (``--field F``
  or ``--field F=COLUMN``; by default every column named like a field of the schema). Empty
  cells label nothing. Rows of labeler's manifest whose ``label_source`` is a machine
  suggestion (``suggested:...``) are skipped: only human labels go back in as human labels.
* :func:`read_folder_source`: the ImageFolder layout ``ROOT/<value>/<file>`` a team's
  hand-sorting leaves (``ROOT/<value>/sub/<file>`` too); files directly in ``ROOT`` have no
  class and are reported. When every top folder is a split name (``train``, ``val``,
  ``test``: a labeler export) the class folder is the one below it.
* :func:`read_label_studio_source`: a Label Studio JSON export (a list of tasks): every
  ``choices`` result of every annotation that was not cancelled; ``from_name`` names the
  field (``--field F=FROM_NAME`` maps another). Predictions are never read (they are a
  model's, not a person's). Label Studio's JSON-MIN export (one flat object per task) works
  too.

Nothing is matched, validated or written here.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

import pandas as pd

from labeler.errors import InputError

#: The columns of a records table.
RECORD_COLUMNS = ["ref", "face_id", "image_id", "path", "root", "face_index", "field", "value"]
#: CSV columns that name a photo, in the order they are looked for.
PATH_COLUMNS = ("path", "file_name", "file", "filename", "image")
#: Top folders that are a labeler export's splits, not classes (``OUT/train/<label>/...``).
SPLIT_FOLDERS = frozenset({"train", "val", "validation", "test"})
#: Files a file browser leaves in every folder it shows: never photos of the user's.
OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
#: A Label Studio upload's file name starts with 8 hex digits and a dash.
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


@dataclass(frozen=True)
class Note:
    """Something read but not turned into a record: ``count`` of them (``unit``: rows, files,
    tasks), a few ``examples``, and what happened (``text``, after the count and unit)."""

    kind: str
    count: int
    examples: tuple[str, ...]
    unit: str
    text: str


@dataclass(frozen=True)
class Source:
    """What a reader found: ``records`` (RECORD_COLUMNS), how many ``items`` (rows, files,
    tasks: ``unit``) were read, and the ``notes`` on what was left out."""

    kind: str  # csv | folders | label-studio
    path: str
    items: int
    unit: str
    records: pd.DataFrame
    notes: tuple[Note, ...] = field(default_factory=tuple)


def records_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """A records table from dicts (missing keys: "" for text, -1 for root and face_index)."""
    df = pd.DataFrame(list(rows), columns=RECORD_COLUMNS)
    for col in ("root", "face_index"):
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(-1).astype(int)
    for col in ("ref", "face_id", "image_id", "path", "field", "value"):
        text = ["" if pd.isna(v) else str(v) for v in df[col]]
        if col in ("field", "value"):  # as the store keeps names: surrounding spaces stripped
            text = [t.strip() for t in text]
        df[col] = pd.Series(text, index=df.index, dtype=object)
    return df


def _note(kind: str, items: Sequence[str], unit: str, text: str) -> Note | None:
    return Note(kind, len(items), tuple(items[:3]), unit, text) if items else None


def parse_field_options(options: Sequence[str]) -> dict[str, str]:
    """``--field F`` / ``--field F=COLUMN`` options as ``{field: column}`` (order kept)."""
    out: dict[str, str] = {}
    for opt in options:
        name, _, column = str(opt).partition("=")
        name, column = name.strip(), (column.strip() or name.strip())
        if not name:
            raise InputError(f"--field {opt!r} names no field; write --field FIELD[=COLUMN]")
        out[name] = column
    return out


# --- CSV -----------------------------------------------------------------------------------


def read_csv_source(
    path: str | os.PathLike[str],
    *,
    fields: Mapping[str, str] | None = None,
    schema_fields: Sequence[str] = (),
) -> Source:
    """Records from a CSV (see the module doc). ``fields``: ``{field: column}``; None: every
    column named like one of ``schema_fields``. :class:`InputError` for a file that is not a
    CSV, no column naming the faces or photos, or no field column."""
    from labeler._csv import read_csv

    try:
        df = read_csv(  # the delimiter sniffed: ',' ';' or a tab (spreadsheets differ)
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig", sep=None, engine="python"
        )
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError, EmptyDataError
        raise InputError(f"{path} is not a readable CSV ({exc}); give a UTF-8 CSV file") from None
    df.columns = [str(c).strip() for c in df.columns]
    has_face = "face_id" in df.columns
    path_col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if not has_face and path_col is None:
        raise InputError(
            f"{path} has no column naming the faces or photos (columns: "
            f"{', '.join(df.columns)}); add a 'face_id' or 'path' column (the photo's path "
            "relative to the ingested folder, or its file name)"
        )
    if fields is None:
        fields = {f: f for f in schema_fields if f in df.columns}
        if not fields:
            raise InputError(
                f"{path} has no column named like a label field (fields: "
                f"{', '.join(schema_fields)}; columns: {', '.join(df.columns)}); pass "
                "--field FIELD=COLUMN"
            )
    missing = [c for c in fields.values() if c not in df.columns]
    if missing:
        raise InputError(
            f"{path} has no column {missing[0]!r} (columns: {', '.join(df.columns)}); pass "
            "--field FIELD=COLUMN with one of them"
        )
    keep = pd.Series(True, index=df.index)
    suggested: list[str] = []
    if "label_source" in df.columns:
        machine = df["label_source"].str.startswith("suggested:")
        suggested = [f"row {i + 2}" for i in df.index[machine]]
        keep &= ~machine
    rows = []
    for i, row in df[keep].iterrows():
        base = {
            "ref": f"row {i + 2}",
            "face_id": row["face_id"].strip() if has_face else "",
            "path": row[path_col].strip() if path_col else "",
            "root": row["root"] if "root" in df.columns else -1,
            "face_index": row["face_index"] if "face_index" in df.columns else -1,
        }
        for name, column in fields.items():
            value = row[column].strip()
            if value:
                rows.append({**base, "field": name, "value": value})
    notes = _note(
        "suggested",
        suggested,
        "rows",
        "holding machine suggestions (label_source suggested:...), not human labels: "
        "skipped; export with --human-only",
    )
    return Source("csv", str(path), len(df), "rows", records_frame(rows), _notes(notes))


def _notes(*notes: Note | None) -> tuple[Note, ...]:
    return tuple(n for n in notes if n is not None)


# --- class folders -------------------------------------------------------------------------


def _image_files(root: Path) -> tuple[list[str], list[str]]:
    """Image files under ``root`` (POSIX paths relative to it, sorted; hidden files and
    folders, file-browser files and symlinked folders skipped) and the other entries that
    are not regular files (FIFOs, sockets, devices: never opened)."""
    from labeler.imageio import IMAGE_EXTENSIONS

    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in sorted(filenames):
            if name.startswith(".") or name in OS_FILES:
                continue
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = (base / name).relative_to(root).as_posix()
            try:
                regular = stat.S_ISREG(os.stat(base / name).st_mode)
            except OSError:
                regular = False
            (files if regular else odd).append(rel)
    return files, odd


def read_folder_source(
    root: str | os.PathLike[str], *, field: str = "mask_state", workers: int = 4
) -> Source:
    """Records from class folders ``ROOT/<value>/<file>`` (see the module doc): one per image
    file, keyed by the SHA-1 of its bytes (:func:`labeler.ingest.content_id`) and by its
    path below the class folder."""
    from labeler.ingest import content_id

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the folder that holds the class folders")
    files, odd = _image_files(root)
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    split_layout = bool(tops) and tops <= SPLIT_FOLDERS
    loose: list[str] = []
    unreadable: list[str] = []
    placed: list[tuple[str, str, str]] = []  # rel, value, path below the class folder
    for rel in files:
        parts = rel.split("/")
        if split_layout and len(parts) > 1:
            parts = parts[1:]
        if len(parts) < 2:
            loose.append(rel)
            continue
        placed.append((rel, parts[0], "/".join(parts[1:])))

    def digest(rel: str) -> str:
        try:
            return content_id(root / rel)
        except OSError:
            return ""

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib frees the GIL
        ids = list(pool.map(digest, [p[0] for p in placed]))
    rows = []
    for (rel, value, below), image_id in zip(placed, ids, strict=True):
        if not image_id:
            unreadable.append(rel)
        rows.append(
            {"ref": rel, "image_id": image_id, "path": below, "field": field, "value": value}
        )
    notes = _notes(
        _note("loose", loose, "files", "lying directly in the folder, in no class folder: skipped"),
        _note("unreadable", unreadable, "files", "not readable (matched by their name only)"),
        _note(
            "not_a_file", odd, "files", "that are no regular file (FIFO, socket...): never opened"
        ),
    )
    return Source("folders", str(root), len(files) + len(odd), "files", records_frame(rows), notes)


# --- Label Studio --------------------------------------------------------------------------


def url_path(url: str) -> str:
    """The file path a Label Studio image URL points at, as far as it tells.

    >>> url_path("/data/local-files/?d=photos/a%20b.jpg")
    'photos/a b.jpg'
    >>> url_path("/data/upload/3/1a2b3c4d-IMG_1.jpg")
    'IMG_1.jpg'
    >>> url_path("s3://bucket/masks/x.png")
    'masks/x.png'
    """
    parsed = urlparse(str(url))
    query = parse_qs(parsed.query)
    if "d" in query:  # local files storage: /data/local-files/?d=<path below the root>
        return query["d"][0].lstrip("/")
    path = unquote(parsed.path)
    if path.startswith("/data/upload/"):
        return _UPLOAD_PREFIX.sub("", PurePosixPath(path).name)
    return path.lstrip("/")


def _task_image(data: Mapping) -> str:
    """The image a task's ``data`` names: ``image``, else the first text value that ends
    like an image file."""
    from labeler.imageio import IMAGE_EXTENSIONS

    if isinstance(data.get("image"), str):
        return url_path(data["image"])
    for value in data.values():
        if isinstance(value, str) and PurePosixPath(urlparse(value).path).suffix.lower() in (
            IMAGE_EXTENSIONS
        ):
            return url_path(value)
    return ""


def _choices(value: object) -> list[str]:
    if isinstance(value, dict):
        value = value.get("choices", [])
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def read_label_studio_source(
    path: str | os.PathLike[str],
    *,
    fields: Mapping[str, str] | None = None,
    schema_fields: Sequence[str] = (),
) -> Source:
    """Records from a Label Studio JSON (or JSON-MIN) export (see the module doc).

    ``fields``: ``{field: from_name}``; None: every ``from_name`` is a field of the same name
    (in JSON-MIN, every key named like one of ``schema_fields``).
    """
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not JSON ({exc}); give a Label Studio JSON export") from None
    if isinstance(tasks, dict):
        tasks = tasks.get("tasks", [tasks])
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise InputError(
            f"{path} is not a Label Studio export (a JSON list of tasks); export the project "
            "as JSON in Label Studio"
        )
    names = {v: k for k, v in fields.items()} if fields is not None else None
    rows: list[dict] = []
    empty: list[str] = []
    other: list[str] = []
    for n, task in enumerate(tasks):
        ref = f"task {task.get('id', n + 1)}"
        flat = "data" not in task  # JSON-MIN: the task's data and its labels in one object
        data = task if flat else task.get("data") or {}
        base = {
            "ref": ref,
            "face_id": str(data.get("face_id") or "").strip(),
            "path": _task_image(data),
        }
        found = []
        if flat:
            wanted = names or {f: f for f in schema_fields}
            for key, name in wanted.items():
                found += [(name, v) for v in _choices(task.get(key))]
        else:
            for ann in task.get("annotations") or task.get("completions") or []:
                if not isinstance(ann, dict) or ann.get("was_cancelled"):
                    continue
                for res in ann.get("result") or []:
                    if not isinstance(res, dict) or res.get("type") != "choices":
                        other.append(ref)
                        continue
                    src = str(res.get("from_name", ""))
                    name = src if names is None else names.get(src)
                    if name is not None:
                        found += [(name, v) for v in _choices(res.get("value"))]
        if not found:
            empty.append(ref)
        rows += [{**base, "field": name, "value": v.strip()} for name, v in found if v.strip()]
    notes = _notes(
        _note(
            "no_choice", empty, "tasks", "with no choice of a field (no annotation, or cancelled)"
        ),
        _note(
            "other_results",
            list(dict.fromkeys(other)),
            "tasks",
            "with results other than choices: those skipped",
        ),
    )
    return Source("label-studio", str(path), len(tasks), "tasks", records_frame(rows), notes)
