"""Cached loaders for the app: tables and indexes behind ``st.cache_resource`` keyed by file
mtimes / label-db versions, so a rerun never recomputes heavy work. What the pages draw from
them lives beside: :mod:`labeler.ui.photos` (a face on its source photo),
:mod:`labeler.ui.chart` (the map and its thumbnails), :mod:`labeler.ui.models` (Try it).

Cached objects are shared across sessions and must be treated as read-only.
Every image the app shows goes through :func:`crop_bytes` / :func:`image_bytes`, which only
read files that :meth:`Workspace.resolve_inside` accepts.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from labeler.labels import NOT_A_FACE, LabelSchema, LabelStore
from labeler.ui import runs
from labeler.workspace import Workspace

log = logging.getLogger(__name__)

UNLABELED = "(unlabeled)"
MAP_MAX_POINTS = 20_000


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def store(ws: Workspace) -> LabelStore:
    return LabelStore(ws.labels_db)


# --- faces -----------------------------------------------------------------------------------


@st.cache_resource(max_entries=4, show_spinner=False)
def _faces(root: str, mtime: float) -> pd.DataFrame:
    ws = Workspace(Path(root))
    return ws.faces()[["face_id", "image_id", "face_index", "whole_image"]]


def faces(ws: Workspace) -> pd.DataFrame:
    """The faces table (face_id, image_id, face_index, whole_image); read-only, cached."""
    return _faces(str(ws.root), _mtime(ws.faces_path))


# --- cluster run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """A cluster run plus indexes the pages need (cached per run)."""

    run: runs.Run
    row_of: pd.Index  # face_id -> row position
    members: dict[int, np.ndarray]  # cluster -> rows, least outlying first
    sizes: pd.Series  # cluster -> size (noise -1 included)
    sample: np.ndarray  # rows drawn for the map (<= MAP_MAX_POINTS), stratified by cluster


@st.cache_resource(max_entries=4, show_spinner="Loading cluster run…")
def _run_view(root: str, run_id: str, mtime: float) -> RunView:
    run = runs.load(Workspace(Path(root)), run_id)
    order = np.lexsort((run.outlier_score, run.labels))
    cuts = np.flatnonzero(np.diff(run.labels[order])) + 1
    members = {int(run.labels[g[0]]): g for g in np.split(order, cuts) if len(g)}
    sizes = pd.Series({c: len(r) for c, r in members.items()}, dtype="int64")
    return RunView(run, pd.Index(run.face_ids), members, sizes, map_sample(run.labels))


def run_view(ws: Workspace) -> RunView | None:
    """The current cluster run (None when the workspace has none yet)."""
    run_id, mtime = runs.run_stamp(ws)
    if run_id is None:
        return None
    return _run_view(str(ws.root), run_id, mtime)


def map_sample(
    labels: np.ndarray, *, max_points: int = MAP_MAX_POINTS, seed: int = 0
) -> np.ndarray:
    """Row indices to draw: all when ``len(labels) <= max_points``, else a stratified sample
    that keeps every cluster (at least 5 points each where it has them). Sorted, (M,) int64."""
    n = len(labels)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    frac = max_points / n
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = min(len(rows), max(5, int(round(len(rows) * frac))))
        keep.append(rng.choice(rows, size=take, replace=False))
    out = np.sort(np.concatenate(keep))
    if len(out) > max_points:
        out = np.sort(rng.choice(out, size=max_points, replace=False))
    return out.astype(np.int64)


# --- labels ----------------------------------------------------------------------------------


def label_version(ws: Workspace) -> tuple[int, int]:
    return store(ws).version()


@st.cache_resource(max_entries=16, show_spinner=False)
def _label_map(db: str, field: str, version: tuple[int, int]) -> dict[str, str]:
    s = LabelStore(db)
    out = s.current_values(field)
    out.update(dict.fromkeys(s.not_faces(), NOT_A_FACE))  # not a face: in every field
    return out


def labels(ws: Workspace, field: str) -> dict[str, str]:
    """``{face_id: value}`` current human labels of ``field`` (cached per db version); a face
    marked ``not_a_face`` in any field is ``not_a_face`` here."""
    return _label_map(str(ws.labels_db), field, label_version(ws))


def schema(ws: Workspace) -> LabelSchema:
    return store(ws).schema()


def annotator_activity(events: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Per annotator: ``faces`` whose current label (any field) they gave, ``labels`` (current
    (face, field) labels they gave), ``events`` and ``last_ts``; newest activity first.

    ``events``: ``LabelStore.activity()`` (annotator, events, faces, last_ts); ``current``:
    ``LabelStore.current()`` (one row per labeled face and field). A face labeled twice, or
    relabeled by someone else, counts once, for whoever gave its current label: the sum of
    ``faces`` never exceeds the faces labeled.
    """
    mine = current.groupby("annotator").agg(
        faces=("face_id", "nunique"), labels=("face_id", "size")
    )
    out = events[["annotator", "events", "last_ts"]].set_index("annotator")
    out = out.join(mine, how="outer").fillna({"faces": 0, "labels": 0, "events": 0})
    out = out.astype({"faces": "int64", "labels": "int64", "events": "int64"})
    return out.sort_values("last_ts", ascending=False).reset_index()


@st.cache_resource(max_entries=4, show_spinner=False)
def _activity(db: str, version: tuple[int, int]) -> pd.DataFrame:
    s = LabelStore(db)
    return annotator_activity(s.activity(), s.current())


def activity(ws: Workspace) -> pd.DataFrame:
    """:func:`annotator_activity` of the workspace's label store (cached per db version)."""
    return _activity(str(ws.labels_db), label_version(ws))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 face"``, ``"2 faces"``, ``"1,186 faces"``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


#: What the default label values mean (shown in Settings next to an example face).
VALUE_HELP: dict[tuple[str, str], str] = {
    ("mask_state", "correct"): "mask over the nose and the mouth (and chin)",
    ("mask_state", "nose_exposed"): "mask under the nose: nostrils visible, mouth covered",
    ("mask_state", "chin_exposed"): "mask over the nose and mouth, but the chin out below it",
    ("mask_state", "on_chin"): "mask pulled down below the mouth: nose and mouth uncovered",
    ("mask_state", "no_mask"): "no mask on the face",
}


@st.cache_resource(max_entries=4, show_spinner=False)
def _examples(db: str, field: str, version: tuple[int, int]) -> dict[str, str]:
    cur = LabelStore(db).current(field)
    if cur.empty:
        return {}
    # the earliest labels of each value: usually the first (central) faces of a bulk label
    first = cur.sort_values(["event_id", "face_id"]).drop_duplicates("value")
    return dict(zip(first["value"], first["face_id"], strict=True))


def examples(ws: Workspace, field: str) -> dict[str, str]:
    """``{value: face_id}``: one face labeled with each value of ``field`` (where any is)."""
    return _examples(str(ws.labels_db), field, label_version(ws))


@st.cache_resource(max_entries=16, show_spinner=False)
def _labels_by_row(
    root: str, run_id: str, mtime: float, field: str, version: tuple[int, int]
) -> np.ndarray:
    ws = Workspace(Path(root))
    view = _run_view(root, run_id, mtime)
    lab = _label_map(str(ws.labels_db), field, version)
    out = np.full(len(view.run.face_ids), UNLABELED, dtype=object)
    if lab:
        pos = view.row_of.get_indexer(pd.Index(list(lab.keys())))
        vals = np.array(list(lab.values()), dtype=object)
        ok = pos >= 0
        out[pos[ok]] = vals[ok]
    return out


def labels_by_row(ws: Workspace, field: str) -> np.ndarray:
    """(N,) object array: the current label of each row of the run, UNLABELED where none."""
    run_id, mtime = runs.run_stamp(ws)
    return _labels_by_row(str(ws.root), run_id, mtime, field, label_version(ws))


@st.cache_resource(max_entries=16, show_spinner=False)
def _cluster_summary(
    root: str, run_id: str, mtime: float, field: str, version: tuple[int, int]
) -> pd.DataFrame:
    view = _run_view(root, run_id, mtime)
    lab = _labels_by_row(root, run_id, mtime, field, version)
    df = pd.DataFrame({"cluster": view.run.labels, "value": lab})
    labeled = df[df["value"] != UNLABELED]
    mix = labeled.groupby(["cluster", "value"]).size().rename("n").reset_index()
    top = mix.sort_values("n", ascending=False).drop_duplicates("cluster").set_index("cluster")
    n_lab = labeled.groupby("cluster").size()
    out = pd.DataFrame({"size": view.sizes})
    out["labeled"] = n_lab.reindex(out.index).fillna(0).astype("int64")
    out["unlabeled"] = out["size"] - out["labeled"]
    out["majority"] = top["value"].reindex(out.index)
    out["impurity"] = 1.0 - (top["n"].reindex(out.index) / out["labeled"].where(out["labeled"] > 0))
    out["impurity"] = out["impurity"].fillna(0.0)
    mix_text = (
        mix.sort_values(["cluster", "n"], ascending=[True, False])
        .assign(t=lambda d: d["value"] + " " + d["n"].astype(str))
        .groupby("cluster")["t"]
        .agg(", ".join)
    )
    out["mix"] = mix_text.reindex(out.index).fillna("")
    medoids = view.run.clusters.set_index("cluster")["medoids"] if len(view.run.clusters) else None
    out["medoids"] = [
        list(medoids.get(c, []))
        if medoids is not None and c in medoids.index
        else [str(f) for f in view.run.face_ids[view.members[c][:8]]]
        for c in out.index
    ]
    out.index.name = "cluster"
    return out.reset_index()


def cluster_summary(ws: Workspace, field: str) -> pd.DataFrame:
    """Per cluster: size, labeled, unlabeled, majority, impurity (1 - majority share of the
    labeled), mix ("correct 12, no_mask 3"), medoids. One row per cluster, noise included."""
    run_id, mtime = runs.run_stamp(ws)
    return _cluster_summary(str(ws.root), run_id, mtime, field, label_version(ws))


# --- "more like this" -------------------------------------------------------------------


@st.cache_resource(max_entries=2, show_spinner="Loading the similarity index…")
def _knn_index(root: str, run_id: str, mtime: float) -> object | None:
    from labeler.cluster import store as cluster_store
    from labeler.cluster.knn import KnnIndex

    ws = Workspace(Path(root))
    V = cluster_store.load_vectors(ws, run_id)
    if V is None:  # a run without saved vectors: fall back to the 2-D map
        log.info("no vectors for kNN in run %s; using the 2-D map", run_id)
        return None
    return KnnIndex.build(cluster_store.load_run(ws, run_id).face_ids, V)


def knn_index(ws: Workspace) -> object | None:
    """The current run's ``labeler.cluster.knn.KnnIndex`` (None when it saved no vectors)."""
    run_id, mtime = runs.run_stamp(ws)
    return None if run_id is None else _knn_index(str(ws.root), run_id, mtime)


def more_like_this(
    ws: Workspace,
    view: RunView,
    face_id: str,
    *,
    k: int = 24,
    exclude: set[str] | None = None,
) -> list[str]:
    """The ``k`` faces most similar to ``face_id`` (itself and ``exclude``, e.g. the faces
    labeled already, left out), nearest first: cosine on the run's vectors
    (``labeler.cluster.knn.knn_search``), else Euclidean on the 2-D map."""
    skip = set(exclude or ()) | {face_id}
    n = len(view.run.face_ids)
    # enough candidates whatever is left out, within reason on big workspaces
    want = max(1, min(n - 1, k + len(skip), max(10 * k, 500)))
    index = knn_index(ws)
    if index is not None:
        from labeler.cluster.knn import knn_search

        near = knn_search(index, [face_id], want)["face_id"].astype(str).tolist()
    else:
        xy = view.run.xy
        q = xy[view.row_of.get_loc(face_id)]
        d = ((xy - q) ** 2).sum(1)
        cand = np.argpartition(d, min(want, n - 1))[: want + 1]
        cand = cand[np.argsort(d[cand], kind="stable")]
        near = [str(view.run.face_ids[i]) for i in cand]
    return [f for f in near if f not in skip][:k]


# --- images ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # bytes are immutable: shared, not copied (st.cache_data
def _read_inside(root: str, path: str, mtime: float) -> bytes | None:  # hashes and copies)
    ws = Workspace(Path(root))
    try:
        safe = ws.resolve_inside(path)
    except PermissionError:
        log.warning("refused to read %s: outside the workspace and its folders", path)
        return None
    try:
        return safe.read_bytes()
    except OSError:
        return None


def crop_bytes(ws: Workspace, face_id: str) -> bytes | None:
    """JPEG bytes of a face's aligned crop, or None when missing / outside the workspace."""
    path = ws.crop_path(str(face_id))
    return _read_inside(str(ws.root), str(path), _mtime(path))


def image_bytes(ws: Workspace, path: str | Path) -> bytes | None:
    """Bytes of a source image if it lies in the workspace or an ingested folder, else None."""
    return _read_inside(str(ws.root), str(path), _mtime(Path(path)))
