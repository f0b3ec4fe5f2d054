"""Export labels (with leak-free splits) or cluster assignments.

``labels``: one row per labeled face; the split is stratified by the ``field`` label and
grouped by person (:mod:`labeler.export.persons`, :mod:`labeler.export.splits`), reproducible by seed.

- ``imagefolder``: ``OUT/{train,val,test}/<label>/<face_id>.jpg`` (aligned crops, or the
  source images with ``source_images``) plus ``OUT/manifest.csv`` and ``OUT/export.json``;
- ``csv`` / ``parquet``: the manifest alone (``OUT`` is the file, or a folder that gets
  ``manifest.csv`` / ``manifest.parquet``).

Manifest columns: ``path`` (source image relative to its ingested folder), ``root``,
``face_id``, ``face_index``, ``x0, y0, x1, y1`` (box in source pixels), one column per label
field, ``split``, ``person``, ``label_source`` (the human event's source: cluster, single,
selection, suggestion (accepted), import, simulation; or ``suggested:<method>`` for a machine
suggestion when ``human_only`` is off), ``annotator``, ``time`` (ISO 8601 UTC of the label),
``file`` (the exported image, imagefolder only). Rows keep the faces-table order; nothing in
the output depends on the time of export, so a re-export with the same seed is
byte-identical.

``clusters``: one row per face: path, root, face_id, face_index, box, ``cluster``,
``outlier_score``, ``suggested_cluster``, ``label`` (empty if none), ``label_source``.

Persons come from :func:`labeler.export.persons.find_persons` (by default links on every "same
person" cue, merged under a guard that keeps every split possible: no person above the
smallest split's share); ``export.json`` records how they were found, how many and how sure
(``persons.confidence``: weak faces, cut links). An export that would put a
person or a source image into two splits is refused with an error, never written.

Nothing is overwritten without ``force``; with it, only what an export writes (the split
folders and the manifest/export.json) is replaced. The folder is written in a hidden
sibling ``.OUT.*.tmp`` and renamed into place at the end: a killed export leaves no
half-written ImageFolder.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labeler.errors import ExistsError, InputError, NotFoundError

if TYPE_CHECKING:
    from labeler.export.persons import Persons
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

FORMATS = ("imagefolder", "csv", "parquet")
WHAT = ("labels", "clusters")
BOX = ["x0", "y0", "x1", "y1"]


@dataclass(frozen=True)
class ExportConfig:
    what: str = "labels"
    format: str = "imagefolder"
    field: str = "mask_state"
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0
    human_only: bool = False
    source_images: bool = False
    persons: str = "auto"
    person_pattern: str | None = None
    person_csv: str | None = None
    force: bool = False


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: Path
    rows: int
    counts: dict  # {split: {label: n}}
    persons: dict  # how persons were found: method, detail, n_persons, n_faces


def _iso(ts: Any) -> str:
    if ts is None or (isinstance(ts, float) and np.isnan(ts)):
        return ""
    return pd.Timestamp(float(ts), unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _face_frame(ws: Workspace) -> pd.DataFrame:
    """faces joined with their source path (relative) and root; faces order."""
    faces = ws.require_faces()
    images = ws.images().drop_duplicates("image_id").set_index("image_id")
    df = faces[["face_id", "image_id", "face_index", *BOX]].copy()
    df.insert(0, "root", faces["image_id"].map(images["root"]).fillna(-1).astype(int).to_numpy())
    df.insert(0, "path", faces["image_id"].map(images["path"]).fillna("").astype(str).to_numpy())
    for c in BOX:
        df[c] = df[c].astype(float).round(2)
    return df


def _lookup(face_ids: pd.Series, table: pd.DataFrame, column: str) -> np.ndarray:
    """``table[column]`` for each face id (table keyed by face_id), "" where absent."""
    m = dict(zip(table["face_id"], table[column], strict=True))
    return np.asarray([str(m.get(f, "") or "") for f in face_ids], dtype=object)


def label_table(ws: Workspace, *, field: str, human_only: bool) -> pd.DataFrame:
    """Per face (faces order): every schema field's value, and for ``field`` its
    label_source, annotator and time. Unlabeled faces have "" in ``field``."""
    from labeler.labels import LabelStore

    store = LabelStore(ws.labels_db)
    face_ids = ws.require_faces()["face_id"]
    out = pd.DataFrame({"face_id": face_ids.to_numpy()})
    names = store.schema().names
    if field not in names:
        names = [*names, field]
    cur = store.current()
    for name in names:
        out[name] = _lookup(face_ids, cur[cur["field"] == name], "value")
    main = cur[cur["field"] == field]
    out["label_source"] = _lookup(face_ids, main, "source")
    out["annotator"] = _lookup(face_ids, main, "annotator")
    ts = dict(zip(main["face_id"], main["ts"], strict=True))
    out["time"] = [_iso(ts.get(f)) for f in face_ids]
    if not human_only:
        sug = store.suggestions(field)
        if not sug.empty:
            best = sug.sort_values(
                ["confidence", "method"], ascending=[False, True]
            ).drop_duplicates("face_id")
            best = best.set_index("face_id")
            fill = (out[field] == "").to_numpy() & face_ids.isin(best.index).to_numpy()
            ids = face_ids[fill]
            out.loc[fill, field] = ids.map(best["value"]).to_numpy()
            out.loc[fill, "label_source"] = ("suggested:" + ids.map(best["method"])).to_numpy()
            out.loc[fill, "time"] = [_iso(t) for t in ids.map(best["created_ts"])]
    return out


def _not_faces(ws: Workspace) -> set[str]:
    """Faces an annotator marked ``not_a_face`` (in any field): never exported or trained on."""
    from labeler.labels import LabelStore

    out = LabelStore(ws.labels_db).not_faces()
    if out:
        log.info("%d faces marked not_a_face are left out", len(out))
    return out


def labels_manifest(ws: Workspace, config: ExportConfig) -> tuple[pd.DataFrame, Persons]:
    """The manifest of labeled faces with splits (see module doc) and how persons were found.

    Raises ``ValueError`` (naming the fix) if a person or a source image would land in two
    splits: an export is leak-free or not written at all.
    """
    from labeler.export.persons import find_persons
    from labeler.export.splits import assign_splits, parse_ratios

    base = _face_frame(ws)
    labels = label_table(ws, field=config.field, human_only=config.human_only)
    df = base.merge(labels, on="face_id", how="left", validate="one_to_one")
    df = df[df[config.field] != ""]
    df = df[~df["face_id"].isin(_not_faces(ws))].reset_index(drop=True)
    if df.empty:
        raise InputError(
            f"no faces have a {config.field!r} label in {ws.labels_db}; label some in the app first"
        )
    faces = ws.require_faces().set_index("face_id").loc[df["face_id"]].reset_index()
    persons = find_persons(
        ws,
        faces,
        method=config.persons,
        pattern=config.person_pattern,
        column_csv=config.person_csv,
        # the guard: no person above the smallest split's share, so every split can be met
        max_share=min(r for r in parse_ratios(config.ratios) if r > 0),
    )
    df["person"] = persons.ids
    df["split"] = assign_splits(
        df[config.field], df["person"], ratios=config.ratios, seed=config.seed
    )
    check_no_empty_splits(df["split"], config.ratios, persons)
    check_no_leaks(df["split"], df["person"], df["image_id"])
    return df.drop(columns="image_id"), persons


def check_no_empty_splits(splits: Any, ratios: Any, persons: Any) -> None:
    """Raise ``ValueError`` when a split asked for (ratio > 0) would get no face: too few
    persons for the ratios, e.g. a person grouping that put every face into one person."""
    from labeler.export.splits import parse_ratios, split_names_for

    r = parse_ratios(ratios)
    got = set(np.asarray(splits).tolist())
    empty = [
        name for name, w in zip(split_names_for(r), r, strict=True) if w > 0 and name not in got
    ]
    if empty:
        raise InputError(
            f"split {empty[0]!r} would be empty: the labeled faces form {persons.n_persons} "
            f"person(s) ({persons.method}: {persons.detail}); nothing was written. Label faces of "
            "more people, ask for fewer splits (--ratios 8:2), or give persons with "
            "--person-csv / --person-pattern"
        )


def check_no_leaks(splits: Any, persons: Any, image_ids: Any) -> None:
    """Raise ``ValueError`` when a person or a source image is in more than one split."""
    from labeler.export.splits import leaking_groups

    for what, groups in (("persons", persons), ("source images", image_ids)):
        leaks = leaking_groups(splits, groups)
        if leaks:
            raise InputError(
                f"{len(leaks)} {what} would be in two splits (e.g. {leaks[0]}); nothing was "
                "written. Give each person one id (--person-csv / --person-pattern) or use "
                "--persons auto"
            )


def clusters_manifest(
    ws: Workspace, *, field: str = "mask_state", run_id: str | None = None
) -> pd.DataFrame:
    """One row per face: path, root, face_id, face_index, box, cluster, outlier_score,
    suggested_cluster, label, label_source (from the current cluster run)."""
    from labeler.cluster.store import load_run
    from labeler.workspace import align_to_faces

    run = load_run(ws, run_id)
    base = _face_frame(ws).drop(columns="image_id")
    ids = base["face_id"].to_numpy()
    fix = f"re-run 'labeler cluster -w {ws.root}'"
    base["cluster"] = align_to_faces(
        ids, run.face_ids, np.asarray(run.labels), what="cluster run", fix=fix
    ).astype(int)
    base["outlier_score"] = (
        align_to_faces(
            ids, run.face_ids, np.asarray(run.outlier_score), what="cluster run", fix=fix
        )
        .astype(float)
        .round(6)
    )
    base["suggested_cluster"] = align_to_faces(
        ids, run.face_ids, np.asarray(run.suggested), what="cluster run", fix=fix
    ).astype(int)
    labels = label_table(ws, field=field, human_only=True)
    base["label"] = labels[field].to_numpy()
    base["label_source"] = labels["label_source"].to_numpy()
    return base


def _check_target(path: Path, *, is_dir: bool, force: bool) -> None:
    if is_dir:
        if path.exists() and not path.is_dir():
            raise ExistsError(f"{path} is a file; give --out a folder for this format")
        if path.is_dir() and any(path.iterdir()) and not force:
            raise ExistsError(f"{path} exists and is not empty; pass --force to overwrite it")
    elif path.exists() and not force:
        raise ExistsError(f"{path} exists; pass --force to overwrite it")


def _write_manifest(df: pd.DataFrame, path: Path) -> None:
    from labeler.workspace import atomic_write_bytes, write_table

    if path.suffix == ".parquet":
        write_table(path, df)
    else:
        atomic_write_bytes(path, df.to_csv(index=False, lineterminator="\n").encode())


def export(ws: Workspace, out: str | Path, config: ExportConfig | None = None) -> ExportResult:
    """Write an export (see the module doc); returns where and what was written."""
    from labeler.workspace import write_json

    config = config or ExportConfig()
    if config.what not in WHAT:
        raise InputError(f"--what {config.what!r} is not one of {', '.join(WHAT)}")
    if config.format not in FORMATS:
        raise InputError(f"--format {config.format!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    file_out = config.format != "imagefolder" and out.suffix.lower() in (".csv", ".parquet")
    ext = ".parquet" if config.format == "parquet" else ".csv"
    if config.what == "clusters":
        if config.format == "imagefolder":
            raise InputError("--what clusters writes a table; use --format csv or parquet")
        manifest = out if file_out else out / f"clusters{ext}"
        _check_target(manifest, is_dir=False, force=config.force)
        df = clusters_manifest(ws, field=config.field)
        _write_manifest(df, manifest)
        counts = {
            "clusters": {
                str(k): int(v) for k, v in df["cluster"].value_counts().sort_index().items()
            }
        }
        return ExportResult(out, manifest, len(df), counts, {})

    _check_target(out, is_dir=not file_out, force=config.force)
    df, persons = labels_manifest(ws, config)
    counts = {
        split: {str(k): int(v) for k, v in g[config.field].value_counts().sort_index().items()}
        for split, g in df.groupby("split", sort=True)
    }
    if file_out:
        _write_manifest(df, out)
        log.info("exported %d faces to %s (%s)", len(df), out, persons.summary())
        return ExportResult(out, out, len(df), counts, persons.as_dict())
    # everything is written into a hidden sibling folder first and moved into place at the
    # end, so a killed or failed export leaves --out as it was (and no half-written tree)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a killed export
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    stage = _make_stage(out)
    try:
        if config.format == "imagefolder":
            df["file"] = _write_tree(ws, df, stage, config)
        _write_manifest(df, stage / f"manifest{ext}")
        write_json(
            stage / "export.json",
            {
                "config": asdict(config) | {"force": False},
                "rows": len(df),
                "counts": counts,
                "persons": persons.as_dict(),
            },
        )
        _move_into_place(stage, out)
    except OSError as exc:  # name the file of --out that could not be written
        named = _target_error(exc, stage, out)
        if named is exc:
            raise
        raise named from exc
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    log.info("exported %d faces to %s (%s)", len(df), out, persons.summary())
    return ExportResult(out, out / f"manifest{ext}", len(df), counts, persons.as_dict())


#: errno values of a full disk, a file-size limit or a used-up quota: the writer's problem.
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _target_error(exc: OSError, stage: Path, out: Path) -> OSError:
    """``exc`` with the file it names moved from the hidden stage folder to where it was to be
    written in ``out``; for a full disk, the file being written (a copy's error names its
    source first)."""
    name = exc.filename2 if exc.errno in _FULL and exc.filename2 else exc.filename
    if name is None:
        return exc
    try:
        name = out / Path(name).relative_to(stage)
    except ValueError:
        pass
    return OSError(exc.errno, exc.strerror, str(name))


def _make_stage(out: Path) -> Path:
    """A new hidden folder ``.NAME.<random>.tmp`` next to ``out``, made with the normal
    umask-derived mode (``tempfile.mkdtemp`` makes 0700, and the stage becomes ``out``)."""
    while True:
        stage = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        try:
            stage.mkdir()
            return stage
        except FileExistsError:
            continue


def _move_into_place(stage: Path, out: Path) -> None:
    """Replace what a previous export wrote at ``out`` by the finished ``stage`` folder.

    A missing or empty ``out`` is replaced by one rename; otherwise (``--force``) the
    previous export's own files are removed and the new ones renamed in (other files in
    ``out`` are kept).
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
        return
    _clear_previous(out)
    for item in stage.iterdir():
        os.replace(item, out / item.name)


def _clear_previous(out: Path) -> None:
    """Remove what a previous export wrote (split folders, manifest, export.json) only."""
    from labeler.export.splits import SPLIT_NAMES

    for name in SPLIT_NAMES:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ("manifest.csv", "manifest.parquet", "export.json"):
        (out / name).unlink(missing_ok=True)


def _safe_dirname(label: str) -> str:
    bad = '/\\:*?"<>|'
    name = "".join("_" if c in bad else c for c in str(label)).strip() or "_"
    return "_" + name if name in (".", "..") else name


def _write_tree(ws: Workspace, df: pd.DataFrame, out: Path, config: ExportConfig) -> list[str]:
    """Copy one image per row into split/label/; returns the files relative to ``out``."""
    files = []
    sources = None
    if config.source_images:
        faces = ws.require_faces().set_index("face_id").loc[df["face_id"]].reset_index()
        sources = ws.face_image_paths(faces).to_numpy()
    labels = df[config.field].astype(str).to_numpy()
    for i, row in enumerate(df[["face_id", "split"]].itertuples(index=False)):
        if sources is not None:
            src = Path(sources[i]) if isinstance(sources[i], str) else None
            if src is None or not src.exists():
                raise NotFoundError(f"source image of face {row.face_id} ({src}) is missing")
            name = f"{row.face_id}{src.suffix.lower()}"
        else:
            src = ws.crop_path(row.face_id)
            if not src.exists():
                raise NotFoundError(
                    f"aligned crop {src} is missing; re-run 'labeler detect -w {ws.root}'"
                )
            name = f"{row.face_id}.jpg"
        rel = Path(row.split) / _safe_dirname(labels[i]) / name
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, dst)
        except OSError as exc:
            if exc.errno in _FULL:  # a full disk is the target's problem, not the source's
                raise OSError(exc.errno, exc.strerror, str(dst)) from exc
            raise
        files.append(rel.as_posix())
    return files
