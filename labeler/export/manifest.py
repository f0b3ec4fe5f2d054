"""Export labels (with leak-free splits) or cluster assignments.

``labels``: one row per labeled face; the split is stratified by the ``field`` label and
grouped by person (:mod:`labeler.export.persons`, :mod:`labeler.export.splits`), reproducible by seed.

- ``imagefolder``: ``OUT/{train,val,test}/<label>/<face_id>.jpg`` (aligned crops, or the
  source images with ``source_images``) plus ``OUT/manifest.csv`` and ``OUT/export.json``;
- ``csv`` / ``parquet``: the manifest alone (``OUT`` is the file, or a folder that gets
  ``manifest.csv`` / ``manifest.parquet``);
- ``hf``, ``coco``, ``label-studio``, ``fiftyone``: the layouts those tools load, written
  beside ``manifest.csv`` and ``export.json`` (:mod:`labeler.export.formats`, which lists
  what each keeps); their files are listed in ``export.json`` (``files``).

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

Nothing is overwritten without ``force``, and ``force`` replaces only a previous export:
a folder labeler knows by its ``export.json`` whose split folders hold only the files its
manifest lists. Any other non-empty ``--out`` (a user's ``train/cats/``, an export with
files added to ``train/``) is refused with one line, nothing deleted; other files beside a
previous export (``OUT/notes.txt``) are kept.

The whole folder is written in a hidden sibling ``.OUT.<pid>.<hex>.tmp`` and switched in by
one atomic step (:mod:`labeler._swap`: a rename, or ``renameat2(RENAME_EXCHANGE)`` over a
previous export), so an export killed at any instant leaves the previous export or the new
one complete at ``OUT``, never neither, never a manifest whose files are missing. The next
export removes what a killed one left. The layout users load is plain folders:
``OUT/train/<label>/<face_id>.jpg`` (torchvision ``ImageFolder(OUT/"train")``).

Text cells that a spreadsheet would run (starting with ``=``, ``+``, ``-``, ``@``) are written
with a leading ``'`` (:mod:`labeler._csv`; ``labeler._csv.read_csv`` reads them back).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labeler.errors import ExistsError, InputError, NotFoundError
from labeler.export import formats

if TYPE_CHECKING:
    from labeler.export.persons import Persons
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

FORMATS = (*formats.TREE_FORMATS, *formats.TABLE_FORMATS)
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


def _check_target(path: Path, *, force: bool) -> None:
    """A manifest file at ``path`` (``--out m.csv``, ``clusters.csv``) is overwritten only
    with ``force``."""
    if path.exists() and not force:
        raise ExistsError(f"{path} exists; pass --force to overwrite it")


#: What an export writes at the top of ``--out`` besides the split folders; anything else there
#: is the user's (kept).
_OWN = ("manifest.csv", "manifest.parquet", "export.json", *formats.TOP_FILES, *formats.TOP_DIRS)


def _check_folder(out: Path, *, force: bool) -> None:
    """Refuse (one line naming ``out`` and the fix) unless ``out`` is missing, empty, or a
    previous export that ``force`` may replace (see :func:`_not_an_export`)."""
    if out.exists() and not out.is_dir():
        raise ExistsError(f"{out} is a file; give --out a folder for this format")
    if out.is_dir() and os.path.ismount(out):
        raise ExistsError(
            f"{out} is a mount point, which an export cannot be switched into in one step; "
            f"give a folder inside it (--out {out / 'export'})"
        )
    if not out.is_dir() or not any(out.iterdir()):
        return
    why = _not_an_export(out)
    if why is not None:
        raise ExistsError(
            f"{out} is not a labeler export ({why}); nothing was deleted. Choose a new or "
            "empty --out folder, or move those files out of it"
        )
    if not force:
        raise ExistsError(f"{out} holds a previous export; pass --force to replace it")


def _not_an_export(out: Path) -> str | None:
    """Why the non-empty folder ``out`` is not a previous export that ``--force`` may replace
    (None when it is one): no labeler ``export.json``, or a file in a split folder that its
    manifest does not list (the user's, or one added after the export)."""
    from labeler.export.splits import SPLIT_NAMES

    meta_path = out / "export.json"
    if not meta_path.is_file():
        return "it has no export.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "rows" not in meta:
        return "its export.json was not written by labeler export"
    listed = _listed_files(out)
    for name in formats.TOP_FILES:  # a format's file is the export's only if it lists it
        if os.path.lexists(out / name) and name not in listed:
            return f"{out / name} is not in its manifest"
    for split in (*SPLIT_NAMES, *formats.TOP_DIRS):
        folder = out / split
        if not os.path.lexists(folder):
            continue
        if folder.is_symlink() or not folder.is_dir():
            return f"{folder} is not a folder an export wrote"
        for path in sorted(folder.rglob("*")):
            if (path.is_dir() and not path.is_symlink()) or _os_metadata(path.name):
                continue
            if path.relative_to(out).as_posix() not in listed:
                return f"{path} is not in its manifest"
    return None


def _os_metadata(name: str) -> bool:
    """A file a file browser leaves in every folder it shows (macOS Finder, Windows
    Explorer): nothing of the user's, so it does not make an export someone else's."""
    return name in (".DS_Store", "Thumbs.db", "desktop.ini") or name.startswith("._")


def _listed_files(out: Path) -> set[str]:
    """The ``file`` column of the export's manifest and the format files its ``export.json``
    lists (empty when it has none or is unreadable)."""
    extra: set[str] = set()
    try:
        meta = json.loads((out / "export.json").read_text())
        if isinstance(meta, dict) and isinstance(meta.get("files"), list):
            extra = {str(f) for f in meta["files"]}
    except (OSError, ValueError):
        pass
    return _manifest_files(out) | extra


def _manifest_files(out: Path) -> set[str]:
    from labeler._csv import read_csv

    try:
        if (out / "manifest.csv").is_file():
            df = read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
        elif (out / "manifest.parquet").is_file():
            df = pd.read_parquet(out / "manifest.parquet")
        else:
            return set()
    except (OSError, ValueError):
        return set()
    return set(df["file"].astype(str)) if "file" in df.columns else set()


def _carry_user_files(out: Path, stage: Path) -> None:
    """Hard-link (copy where links fail) what the user keeps beside a previous export
    (everything at the top of ``out`` that an export does not write) into ``stage``, so the
    switch keeps it. The originals are untouched until the switch."""
    from labeler.export.splits import SPLIT_NAMES

    own = {*SPLIT_NAMES, *_OWN}  # the format files and folders too
    for entry in sorted(out.iterdir()):
        if entry.name not in own:
            _link_tree(entry, stage / entry.name)


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        shutil.copymode(src, dst)
        for entry in sorted(src.iterdir()):
            _link_tree(entry, dst / entry.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _write_manifest(df: pd.DataFrame, path: Path) -> None:
    from labeler.workspace import atomic_write_bytes, write_table

    if path.suffix == ".parquet":
        write_table(path, df)
    else:
        from labeler._csv import csv_bytes

        atomic_write_bytes(path, csv_bytes(df))


def export(ws: Workspace, out: str | Path, config: ExportConfig | None = None) -> ExportResult:
    """Write an export (see the module doc); returns where and what was written."""
    from labeler.workspace import write_json

    config = config or ExportConfig()
    if config.what not in WHAT:
        raise InputError(f"--what {config.what!r} is not one of {', '.join(WHAT)}")
    if config.format not in FORMATS:
        raise InputError(f"--format {config.format!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    file_out = config.format in formats.TABLE_FORMATS and out.suffix.lower() in (
        ".csv",
        ".parquet",
    )
    ext = ".parquet" if config.format == "parquet" else ".csv"
    if config.what == "clusters":
        if config.format not in formats.TABLE_FORMATS:
            raise InputError("--what clusters writes a table; use --format csv or parquet")
        manifest = out if file_out else out / f"clusters{ext}"
        _check_target(manifest, force=config.force)
        df = clusters_manifest(ws, field=config.field)
        _write_manifest(df, manifest)
        counts = {
            "clusters": {
                str(k): int(v) for k, v in df["cluster"].value_counts().sort_index().items()
            }
        }
        return ExportResult(out, manifest, len(df), counts, {})

    from labeler import _swap

    if file_out:
        _check_target(out, force=config.force)
    else:
        if out.is_symlink():  # the folder it leads to is the one replaced, the link stays
            out = out.resolve()
        elif out.name in ("", ".", ".."):  # --out . : the folder needs its name to be swapped
            try:
                out = Path(os.path.abspath(out))
            except FileNotFoundError:  # the shell's folder was replaced, by an export?
                raise NotFoundError(
                    "the current folder no longer exists (a previous export replaced it); "
                    'run cd "$PWD" and the command again'
                ) from None
        # a killed export's leftovers: its previous export put back if the switch was cut
        # between its two renames (filesystems without an atomic exchange), stages removed
        _swap.recover(out)
        _swap.remove_stale_stages(out.parent, out.name)
        _check_folder(out, force=config.force)
    df, persons = labels_manifest(ws, config)
    counts = {
        split: {str(k): int(v) for k, v in g[config.field].value_counts().sort_index().items()}
        for split, g in df.groupby("split", sort=True)
    }
    if file_out:
        _write_manifest(df, out)
        log.info("exported %d faces to %s (%s)", len(df), out, persons.summary())
        return ExportResult(out, out, len(df), counts, persons.as_dict())
    # everything is written into a hidden sibling folder first and switched in by one atomic
    # step at the end, so a killed or failed export leaves --out as it was
    stage = _swap.make_stage(out)
    previous = None
    try:
        extra: list[str] = []
        if config.format in formats.TREE_FORMATS:
            df["file"] = _write_tree(ws, df, stage, config)
            extra = formats.write_extras(
                ws, df, stage, fmt=config.format, field=config.field, out_name=out.name
            )
        _write_manifest(df, stage / f"manifest{ext}")
        meta = {
            "config": asdict(config) | {"force": False},
            "rows": len(df),
            "counts": counts,
            "persons": persons.as_dict(),
        }
        write_json(stage / "export.json", meta | ({"files": extra} if extra else {}))
        if out.is_dir():
            _check_folder(out, force=True)  # again: nothing of the user's came in meanwhile
            _carry_user_files(out, stage)
            os.chmod(stage, stat.S_IMODE(out.stat().st_mode))
        previous = _swap.publish(stage, out)
    except OSError as exc:  # name the file of --out that could not be written
        named = _target_error(exc, stage, out)
        if named is exc:
            raise
        raise named from exc
    finally:
        _swap.discard(previous)  # the previous export, swapped out
        if stage.exists():  # a failed export's stage
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


def _write_tree(ws: Workspace, df: pd.DataFrame, out: Path, config: ExportConfig) -> list[str]:
    """Copy one image per row where its format places it (split/label/ for the ImageFolder
    tree, :func:`labeler.export.formats.placer`); returns the files relative to ``out``.
    Faces of one photo share the photo's copy (COCO)."""
    files = []
    sources = None
    place = formats.placer(config.format)
    if formats.uses_photos(config.format, config.source_images):
        faces = ws.require_faces().set_index("face_id").loc[df["face_id"]].reset_index()
        sources = ws.face_image_paths(faces).to_numpy()
    labels = df[config.field].astype(str).to_numpy()
    from labeler._io import progress_bar

    bar = progress_bar(len(df), desc="export files", unit="file")
    for i, row in enumerate(df[["face_id", "split"]].itertuples(index=False)):
        if i and not i % 256:
            bar.update(256)
        if sources is not None:
            src = Path(sources[i]) if isinstance(sources[i], str) else None
            if src is None or not src.exists():
                raise NotFoundError(f"source image of face {row.face_id} ({src}) is missing")
            try:  # the photo folder's fence, as ingest and the app apply it (labeler.fence)
                real = ws.resolve_inside(src)
            except PermissionError as exc:
                raise InputError(
                    f"source image of face {row.face_id} ({src}) not exported: {exc}; put "
                    "the photo back, or ingest its folder again (--follow-links to export it)"
                ) from exc
            suffix = src.suffix.lower()
        else:
            src = ws.crop_path(row.face_id)
            if not src.exists():
                raise NotFoundError(
                    f"aligned crop {src} is missing; re-run 'labeler detect -w {ws.root}'"
                )
            suffix = ".jpg"
        rel = Path(place(row.split, labels[i], row.face_id, suffix))
        dst = out / rel
        if dst.exists():  # the photo of an earlier face (COCO names photos by image_id)
            files.append(rel.as_posix())
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            if sources is None:
                shutil.copyfile(src, dst)
            else:  # no link swapped in since the check is followed, no FIFO blocks the copy
                from labeler.fence import open_resolved

                with open_resolved(real) as fsrc, open(dst, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst)
        except OSError as exc:
            if exc.errno in _FULL:  # a full disk is the target's problem, not the source's
                raise OSError(exc.errno, exc.strerror, str(dst)) from exc
            raise
        files.append(rel.as_posix())
    bar.update(len(df) - bar.n)
    bar.close()
    return files
