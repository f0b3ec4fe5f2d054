"""``labeler labels import``: labels made elsewhere (a spreadsheet, a team's class folders, a
Label Studio project) into the label store, as events like any other.

Four plain steps, each testable alone::

    source = read_csv_source(path, ...)          # labeler.labels.sources: records
    matched = match_records(source.records, ws)  # each record -> one face, or why not
    report = plan_import(source, matched, schema=..., current=...)   # what would change
    report = apply_import(store, report, annotator="ann")            # the events

:func:`import_labels` runs them on a workspace. Nothing is guessed:

* a record names a face by ``face_id``, or a photo by its bytes (class folders), its path
  relative to the ingested folder, any longer path ending with one, or its file name when
  exactly one ingested photo has it; a file named ``<face_id>.<ext>`` (labeler's own
  exports) names that face. A photo label goes to the photo's face only when it has exactly
  one (or the record gives ``face_index``): a photo with several faces is reported, never
  guessed onto one of them;
* records that match nothing, name several photos, or name photos without a face are
  reported, one line each (counts and a few examples);
* a face given two values for one field (two rows, two annotations, a copy in two class
  folders) is a conflict: reported, neither value imported;
* values go through the store's checks (:func:`labeler.labels.names.check_label_name`);
  values or fields the schema does not have stop the import with one line listing them,
  unless ``add_values`` adds them to the schema;
* like a bulk action in the app (:mod:`labeler.labels.plan`), an import labels only faces
  without a label for the field; faces labeled otherwise keep their label unless
  ``relabel``; faces that already have the value are not touched (no event row).

The labels are written through :meth:`LabelStore.assign_checked` with source ``import``, one
event per field and value, under the annotator's name (an annotator who labels one of the
faces in the app between the plan and the write keeps that label; the import reports it): the app shows them as labeled, the
Suggest step and ``labeler train`` learn from them, and the annotator's Undo takes them back
(one value at a time, newest first).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from labeler.errors import InputError
from labeler.labels.plan import NOT_A_FACE, AssignPlan, plan_assign

if TYPE_CHECKING:
    from labeler.labels.schema import LabelSchema
    from labeler.labels.sources import Source
    from labeler.labels.store import LabelStore
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

#: The source kinds ``labeler labels import --format`` reads.
KINDS = ("csv", "folders", "label-studio")
#: How many examples an issue line shows.
EXAMPLES = 3


@dataclass(frozen=True)
class Issue:
    """Records left out for one reason: ``count`` items (``unit``: rows, files, tasks, or
    faces for a conflict), a few ``examples``, and the ``text`` that says what happened and
    the fix: ``"2 rows matching no ingested photo or face: skipped (...) (e.g. row 6; row 7)"``.
    """

    kind: str
    count: int
    examples: tuple[str, ...]
    unit: str
    text: str

    def line(self) -> str:
        unit = self.unit if self.count != 1 else self.unit.removesuffix("s")
        return f"{self.count:,} {unit} {self.text} (e.g. {'; '.join(self.examples)})"


@dataclass(frozen=True)
class FieldPlan:
    """What importing ``plan.value`` into ``field`` does to each matched face."""

    field: str
    plan: AssignPlan


@dataclass(frozen=True)
class ImportReport:
    """The outcome of an import: what was read, what would change (or changed: ``events``),
    and one :class:`Issue` per kind of record left out.

    ``unknown``: ``(field, value, faces)`` the schema lacks (``new_fields``: whole fields it
    lacks): :func:`apply_import` refuses them without ``add_values``.
    """

    source: str
    kind: str
    items: int
    unit: str
    faces: int
    plans: tuple[FieldPlan, ...]
    unknown: tuple[tuple[str, str, int], ...] = ()
    new_fields: tuple[str, ...] = ()
    issues: tuple[Issue, ...] = ()
    events: tuple[int, ...] = ()
    annotator: str = ""
    relabel: bool = False
    written: bool = False
    meanwhile: tuple[str, ...] = ()
    written_labels: int = 0

    @property
    def new(self) -> int:
        return sum(len(p.plan.new) for p in self.plans)

    @property
    def same(self) -> int:
        return sum(len(p.plan.same) for p in self.plans)

    @property
    def differing(self) -> int:
        """Faces labeled otherwise (changed only with ``relabel``)."""
        return sum(len(p.plan.relabel) for p in self.plans)

    @property
    def labels(self) -> int:
        """Labels the import writes (or wrote): new ones, plus the differing with relabel."""
        return self.new + (self.differing if self.relabel else 0)

    def fields(self) -> list[str]:
        return list(dict.fromkeys(p.field for p in self.plans))

    def lines(self) -> list[str]:
        """The report as the command prints it: a summary, one line per field, one per issue."""
        out = [
            f"read {self.items:,} {self.unit} from {self.source} ({self.kind}): "
            f"{self.faces:,} faces matched"
        ]
        for name in self.fields():
            plans = [p.plan for p in self.plans if p.field == name]
            new = sum(len(p.new) for p in plans)
            same = sum(len(p.same) for p in plans)
            other = sum(len(p.relabel) for p in plans)
            line = f"  {name}: {new:,} new"
            if same:
                line += f", {same:,} already so"
            if other:
                line += f", {other:,} labeled otherwise " + (
                    "(relabeled)" if self.relabel else "(kept; --relabel changes them)"
                )
            out.append(line)
        out += ["  " + issue.line() for issue in self.issues]
        out += [f"  {line}" for line in self.meanwhile]
        return out


# --- match ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    """The workspace's photos and faces, keyed every way a record can name them."""

    face_ids: frozenset[str]
    faces_of: dict[str, tuple[str, ...]]  # image_id -> face ids by face_index
    by_root_path: dict[tuple[int, str], str]  # (root, path) -> image_id
    by_path: dict[str, frozenset[str]]  # path relative to its root -> image ids
    by_name: dict[str, frozenset[str]]  # file name -> image ids
    image_ids: frozenset[str]  # every ingested photo's id (readable or not)
    roots: tuple[Path, ...]


def _index(ws: Workspace) -> _Index:
    faces = ws.require_faces()
    images = ws.images()
    order = faces.sort_values(["image_id", "face_index"], kind="stable")
    faces_of = {k: tuple(g) for k, g in order.groupby("image_id", sort=False)["face_id"]}
    by_path: dict[str, set[str]] = {}
    by_name: dict[str, set[str]] = {}
    by_root_path = {}
    for image_id, root, path in zip(
        images["image_id"].astype(str),
        images["root"].astype(int),
        images["path"].astype(str),
        strict=True,
    ):
        by_root_path[(root, path)] = image_id
        by_path.setdefault(path, set()).add(image_id)
        by_name.setdefault(path.rsplit("/", 1)[-1], set()).add(image_id)
    return _Index(
        face_ids=frozenset(faces["face_id"].astype(str)),
        faces_of=faces_of,
        by_root_path=by_root_path,
        by_path={k: frozenset(v) for k, v in by_path.items()},
        by_name={k: frozenset(v) for k, v in by_name.items()},
        image_ids=frozenset(by_root_path.values()),
        roots=tuple(Path(r) for r in ws.roots()),
    )


def _photo(path: str, root: int, idx: _Index) -> tuple[str, str]:
    """``(outcome, id)`` for a path: ``("photo", image_id)``, ``("face", face_id)`` for a
    file named after a face, ``("ambiguous", "")`` or ``("unmatched", "")``."""
    posix = path.replace("\\", "/")
    if root >= 0 and (root, posix) in idx.by_root_path:
        return "photo", idx.by_root_path[(root, posix)]
    if os.path.isabs(path):
        for r, base in enumerate(idx.roots):
            try:
                rel = Path(path).relative_to(base).as_posix()
            except ValueError:
                continue
            if (r, rel) in idx.by_root_path:
                return "photo", idx.by_root_path[(r, rel)]
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if not parts:
        return "unmatched", ""
    for i in range(len(parts)):  # the path itself, then shorter and shorter tails of it
        ids = idx.by_path.get("/".join(parts[i:]))
        if ids:
            return ("photo", next(iter(ids))) if len(ids) == 1 else ("ambiguous", "")
    stem = parts[-1].rsplit(".", 1)[0]
    if stem in idx.face_ids:
        return "face", stem
    ids = idx.by_name.get(parts[-1])
    if not ids:
        return "unmatched", ""
    return ("photo", next(iter(ids))) if len(ids) == 1 else ("ambiguous", "")


def _resolve(key: tuple[str, str, str, int, int], idx: _Index) -> tuple[str, str, int]:
    """``(outcome, face_id, faces in the photo)`` for one record's keys."""
    face_id, image_id, path, root, face_index = key
    if face_id:
        return ("face", face_id, 1) if face_id in idx.face_ids else ("unmatched", "", 0)
    outcome, found = "unmatched", ""
    if image_id in idx.image_ids:  # an ingested photo's bytes
        outcome, found = "photo", image_id
    elif path:  # no bytes given, or bytes no ingested photo has (a re-encoded copy)
        outcome, found = _photo(path, root, idx)
    if outcome == "face":
        return "face", found, 1
    if outcome != "photo":
        return outcome, "", 0
    faces = idx.faces_of.get(found, ())
    if face_index >= 0:
        fid = f"{found}_{face_index}"
        return ("face", fid, len(faces)) if fid in idx.face_ids else ("unmatched", "", 0)
    if len(faces) == 1:
        return "face", faces[0], 1
    stem = path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if stem in faces:  # a copy named after one of the photo's faces (export --source-images)
        return "face", stem, len(faces)
    return ("no_face" if not faces else "several_faces"), "", len(faces)


def match_records(records: pd.DataFrame, ws: Workspace) -> pd.DataFrame:
    """``records`` (:data:`labeler.labels.sources.RECORD_COLUMNS`) with ``outcome`` (face,
    unmatched, ambiguous, no_face, several_faces), ``match`` (the face id, "" unless
    outcome is face) and ``n_faces`` (faces of the photo named) added; order kept."""
    idx = _index(ws)
    cache: dict[tuple, tuple[str, str, int]] = {}
    out = records.copy()
    keys = list(
        zip(
            out["face_id"],
            out["image_id"],
            out["path"],
            out["root"].astype(int),
            out["face_index"].astype(int),
            strict=True,
        )
    )
    results = []
    for key in keys:
        if key not in cache:
            cache[key] = _resolve(key, idx)
        results.append(cache[key])
    out["outcome"] = [r[0] for r in results]
    out["match"] = [r[1] for r in results]
    out["n_faces"] = [r[2] for r in results]
    return out


# --- plan ----------------------------------------------------------------------------------

_ISSUE_TEXT = {
    "unmatched": "matching no ingested photo or face: skipped (ingest their folder, or check "
    "the paths: relative to the ingested folder, or file names)",
    "ambiguous": "naming a file name several ingested photos have: skipped (give the path "
    "relative to the ingested folder)",
    "no_face": "naming a photo with no face found (or unreadable): skipped",
    "several_faces": "naming a photo with several faces: one label for a photo is never "
    "guessed onto one face; skipped (give face_id, or label them in the app)",
}


def _issues_of(matched: pd.DataFrame, unit: str) -> list[Issue]:
    out = []
    for kind, text in _ISSUE_TEXT.items():
        part = matched[matched["outcome"] == kind].drop_duplicates("ref")
        if part.empty:
            continue
        examples = [
            f"{r.ref} ({r.n_faces} faces)" if kind == "several_faces" else str(r.ref)
            for r in part.head(EXAMPLES).itertuples()
        ]
        out.append(Issue(kind, len(part), tuple(examples), unit, text))
    return out


def _conflicts(faced: pd.DataFrame) -> tuple[pd.DataFrame, Issue | None]:
    """``faced`` without the (face, field) pairs given two or more values, and the issue."""
    values = faced.drop_duplicates(["match", "field", "value"])
    counts = values.groupby(["match", "field"], sort=False)["value"].transform("size")
    bad = values[counts > 1]
    if bad.empty:
        return faced, None
    pairs = bad.drop_duplicates(["match", "field"])
    examples = []
    for r in pairs.head(EXAMPLES).itertuples():
        both = bad[(bad["match"] == r.match) & (bad["field"] == r.field)]
        given = " / ".join(f"{v.value} ({v.ref})" for v in both.head(3).itertuples())
        examples.append(f"{r.match} {r.field}: {given}")
    issue = Issue(
        "conflict",
        len(pairs),
        tuple(examples),
        "faces",
        "given two values for one field: neither imported (fix the source)",
    )
    bad_keys = set(zip(pairs["match"], pairs["field"], strict=True))
    keep = [(m, f) not in bad_keys for m, f in zip(faced["match"], faced["field"], strict=True)]
    return faced[keep], issue


def _check_names(faced: pd.DataFrame, schema: LabelSchema) -> None:
    """:class:`InputError` naming the first record whose field or value the store would
    refuse (``a/b``, a control character...), with where it came from."""
    from labeler.labels.names import check_label_name

    known_fields = set(schema.names)
    for name, part in faced.groupby("field", sort=False):
        if name not in known_fields:
            try:
                check_label_name(name, "field")
            except InputError as exc:
                raise InputError(f"{part['ref'].iloc[0]}: {exc}") from None
        allowed = set(schema.values(name)) if name in known_fields else set()
        for value, rows in part.groupby("value", sort=False):
            if value in allowed or value == NOT_A_FACE:
                continue
            try:
                check_label_name(value, "value")
            except InputError as exc:
                raise InputError(f"{rows['ref'].iloc[0]}: {exc}") from None


def plan_import(
    source: Source,
    matched: pd.DataFrame,
    *,
    schema: LabelSchema,
    current: Mapping[str, Mapping[str, str]],
) -> ImportReport:
    """The :class:`ImportReport` of importing ``matched`` (:func:`match_records`) against the
    store's ``schema`` and ``current`` labels (``{field: {face_id: value}}``). Writes
    nothing. :class:`InputError` for a field or value the store would refuse."""
    issues = [Issue(n.kind, n.count, n.examples, n.unit, n.text) for n in source.notes]
    issues += _issues_of(matched, source.unit)
    faced = matched[matched["outcome"] == "face"]
    faced, conflict = _conflicts(faced)
    if conflict is not None:
        issues.append(conflict)
    faced = faced.drop_duplicates(["match", "field", "value"])
    _check_names(faced, schema)
    known_fields = set(schema.names)
    new_fields = tuple(f for f in dict.fromkeys(faced["field"]) if f not in known_fields)
    unknown = []
    plans = []
    for name, part in faced.groupby("field", sort=False):
        allowed = set(schema.values(name)) if name in known_fields else set()
        for value, rows in part.groupby("value", sort=False):
            if value not in allowed and value != NOT_A_FACE:
                unknown.append((str(name), str(value), int(rows["match"].nunique())))
            plan = plan_assign(rows["match"], current.get(str(name), {}), str(value))
            plans.append(FieldPlan(str(name), plan))
    return ImportReport(
        source=source.path,
        kind=source.kind,
        items=source.items,
        unit=source.unit,
        faces=int(faced["match"].nunique()),
        plans=tuple(plans),
        unknown=tuple(unknown),
        new_fields=new_fields,
        issues=tuple(issues),
    )


def unknown_message(report: ImportReport, schema: LabelSchema) -> str:
    """One line listing the fields and values the schema lacks, with the fix."""
    parts = []
    for name in dict.fromkeys(f for f, _, _ in report.unknown):
        vals = [(v, n) for f, v, n in report.unknown if f == name]
        shown = ", ".join(f"{v} ({n:,} faces)" for v, n in vals[:8])
        if len(vals) > 8:
            shown += f" and {len(vals) - 8} more"
        if name in report.new_fields:
            parts.append(f"field {name!r} is not in the schema (values: {shown})")
            continue
        hint = _case_hint([v for v, _ in vals], schema.values(name))
        parts.append(f"{name!r} has no value {shown}{hint}")
    return (
        "; ".join(parts) + "; nothing was imported. Pass --add-values to add them to the schema "
        "(or add them in the app's Settings page), or fix the source"
    )


def _case_hint(values: Sequence[str], allowed: Sequence[str]) -> str:
    lower = {a.casefold(): a for a in allowed}
    near = [f"{v}->{lower[v.casefold()]}" for v in values if v.casefold() in lower]
    return f" (same but for case: {', '.join(near[:3])})" if near else ""


# --- apply ---------------------------------------------------------------------------------


def apply_import(
    store: LabelStore,
    report: ImportReport,
    *,
    annotator: str,
    relabel: bool = False,
    add_values: bool = False,
) -> ImportReport:
    """Write ``report``'s labels: one :meth:`LabelStore.assign_checked` event (source
    ``import``) per field and value, for the faces without a label for the field (plus those
    labeled otherwise with ``relabel``). Each write re-checks, in its own transaction, that
    the faces still hold the labels the plan saw: a face an annotator labeled in the app
    since is left as it is and reported (``meanwhile``), never overwritten. Values or fields
    the schema lacks are added first with ``add_values``, else :class:`InputError` lists
    them and nothing is written. Returns the report with the event ids."""
    from labeler.labels.names import annotator_name

    annotator = annotator_name(annotator)
    schema = store.schema()
    if report.unknown and not add_values:
        raise InputError(unknown_message(report, schema))
    for name in report.new_fields:
        vals = [v for f, v, _ in report.unknown if f == name and v != NOT_A_FACE]
        store.add_field(name, vals, optional=True, description="added by labels import")
    for name, value, _ in report.unknown:
        if name not in report.new_fields and value != NOT_A_FACE:
            store.add_value(name, value)
    events = []
    meanwhile = []
    n_written = 0
    for fp in report.plans:
        faces = fp.plan.faces(relabel=relabel)
        if not faces:
            continue
        done = store.assign_checked(
            faces, fp.field, fp.plan.value, seen=fp.plan.seen(relabel=relabel), relabel=relabel,
            annotator=annotator, source="import",
        )  # fmt: skip
        if done.event_id is not None:
            events.append(done.event_id)
            n_written += len(done.changed)
        if done.n_meanwhile:
            meanwhile.append(f"{fp.field}={fp.plan.value}: {done.meanwhile_text()}")
    log.info("imported %d labels in %d events as %s", n_written, len(events), annotator)
    return replace(
        report, events=tuple(events), annotator=annotator, relabel=relabel, written=True,
        meanwhile=tuple(meanwhile), written_labels=n_written,
    )  # fmt: skip


# --- the whole import ----------------------------------------------------------------------


def detect_kind(source: str | os.PathLike[str]) -> str:
    """``folders`` for a folder, ``label-studio`` for ``.json``, ``csv`` for ``.csv``/``.tsv``."""
    path = Path(source)
    if path.is_dir():
        return "folders"
    if path.suffix.lower() == ".json":
        return "label-studio"
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return "csv"
    raise InputError(
        f"cannot tell the format of {path} (a folder, .csv or .json); pass --format "
        f"{'|'.join(KINDS)}"
    )


def read_source(
    source: str | os.PathLike[str],
    *,
    kind: str,
    fields: Sequence[str] = (),
    schema_fields: Sequence[str] = (),
) -> Source:
    """Read ``source`` with the reader of ``kind`` (``fields``: ``--field`` options)."""
    from labeler.labels import sources

    if not os.path.exists(source):
        raise InputError(f"{source} does not exist; give a CSV, a folder or a JSON export")
    mapping = sources.parse_field_options(fields) if fields else None
    if kind == "csv":
        return sources.read_csv_source(source, fields=mapping, schema_fields=schema_fields)
    if kind == "label-studio":
        return sources.read_label_studio_source(source, fields=mapping, schema_fields=schema_fields)
    if kind == "folders":
        if mapping is not None and len(mapping) != 1:
            raise InputError(
                "class folders give one field's values; pass one --field (default mask_state)"
            )
        name = next(iter(mapping)) if mapping else "mask_state"
        return sources.read_folder_source(source, field=name)
    raise InputError(f"--format {kind!r} is not one of {', '.join(KINDS)}")


def import_labels(
    ws: Workspace,
    source: str | os.PathLike[str],
    *,
    annotator: str,
    kind: str | None = None,
    fields: Sequence[str] = (),
    add_values: bool = False,
    relabel: bool = False,
    dry_run: bool = False,
) -> ImportReport:
    """Read, match, plan and (unless ``dry_run``) write an import; see the module doc.

    >>> report = import_labels(ws, "sorted/", annotator="ann")  # doctest: +SKIP
    >>> print("\\n".join(report.lines()))                       # doctest: +SKIP
    """
    from labeler.labels.names import annotator_name
    from labeler.labels.store import LabelStore

    annotator = annotator_name(annotator)  # a bad name stops the import before any work
    store = LabelStore(ws.labels_db)
    schema = store.schema()
    src = read_source(
        source, kind=kind or detect_kind(source), fields=fields, schema_fields=schema.names
    )
    matched = match_records(src.records, ws)
    # the matched faces' labels as the app shows them, by the store's own rule (the one
    # assign_checked re-checks with): not_a_face in any field counts in every field
    faced = matched[matched["outcome"] == "face"]
    ids = faced["match"].astype(str).unique().tolist()
    current = {
        str(name): {f: value for f, (value, _who) in store.labels_of(str(name), ids).items()}
        for name in faced["field"].unique()
    }
    report = plan_import(src, matched, schema=schema, current=current)
    if dry_run:
        if report.unknown and not add_values:
            log.warning("%s", unknown_message(report, schema))
        return replace(report, annotator=annotator, relabel=relabel)
    return apply_import(store, report, annotator=annotator, relabel=relabel, add_values=add_values)


__all__ = [
    "KINDS",
    "FieldPlan",
    "ImportReport",
    "Issue",
    "apply_import",
    "detect_kind",
    "import_labels",
    "match_records",
    "plan_import",
    "read_source",
    "unknown_message",
]
