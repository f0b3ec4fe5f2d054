"""Cached loaders for the app: tables and indexes behind ``st.cache_resource`` keyed by file
mtimes / label-db versions, so a rerun never recomputes heavy work.

Cached objects are shared across sessions and must be treated as read-only.
Every image the app shows goes through :func:`crop_bytes` / :func:`image_bytes`, which only
read files that :meth:`Workspace.resolve_inside` accepts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from labeler.labels import LabelSchema, LabelStore
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
    return LabelStore(db).current_values(field)


def labels(ws: Workspace, field: str) -> dict[str, str]:
    """``{face_id: value}`` current human labels of ``field`` (cached per db version)."""
    return _label_map(str(ws.labels_db), field, label_version(ws))


def schema(ws: Workspace) -> LabelSchema:
    return store(ws).schema()


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
    from labeler.cluster.knn import KnnIndex

    try:
        return KnnIndex.from_run(Workspace(Path(root)), run_id)
    except Exception as exc:  # a run without saved vectors: fall back to the 2-D map
        log.info("no vectors for kNN in run %s (%s); using the 2-D map", run_id, exc)
        return None


def knn_index(ws: Workspace) -> object | None:
    """The current run's ``labeler.cluster.knn.KnnIndex`` (None when it saved no vectors)."""
    run_id, mtime = runs.run_stamp(ws)
    return None if run_id is None else _knn_index(str(ws.root), run_id, mtime)


def more_like_this(ws: Workspace, view: RunView, face_id: str, *, k: int = 24) -> list[str]:
    """The ``k`` faces most similar to ``face_id`` (itself excluded): cosine on the run's
    vectors (``labeler.cluster.knn.knn_search``), else Euclidean on the 2-D map."""
    index = knn_index(ws)
    if index is not None:
        from labeler.cluster.knn import knn_search

        return knn_search(index, [face_id], k)["face_id"].astype(str).tolist()
    xy = view.run.xy
    q = xy[view.row_of.get_loc(face_id)]
    d = ((xy - q) ** 2).sum(1)
    cand = np.argpartition(d, min(k + 1, len(d) - 1))[: k + 1]
    cand = cand[np.argsort(d[cand], kind="stable")]
    return [str(view.run.face_ids[i]) for i in cand if view.run.face_ids[i] != face_id][:k]


# --- images ----------------------------------------------------------------------------------


@st.cache_data(max_entries=4096, show_spinner=False)
def _read_inside(root: str, path: str, mtime: float) -> bytes | None:
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


# --- the map ---------------------------------------------------------------------------------

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
]  # fmt: skip


def rows_in_selection(
    xy: np.ndarray, selection: dict, trace_rows: tuple[np.ndarray, ...] | None = None
) -> np.ndarray:
    """Rows of ``xy`` (N, 2) inside any box or lasso of a plotly selection, plus clicked points.

    ``selection``: ``{"box": [{"x": [x0, x1], "y": [y0, y1]}], "lasso": [{"x": [...],
    "y": [...]}], "points": [{"curve_number": c, "point_index": i} | {"customdata": row}]}``
    (what ``st.plotly_chart`` returns); a clicked point is row ``trace_rows[c][i]``.
    Returns sorted unique int64 row indices.
    """
    from matplotlib.path import Path as Polygon

    hit = np.zeros(len(xy), dtype=bool)
    for box in selection.get("box") or []:
        x0, x1 = sorted(float(v) for v in box["x"][:2])
        y0, y1 = sorted(float(v) for v in box["y"][:2])
        hit |= (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    for lasso in selection.get("lasso") or []:
        poly = np.column_stack([np.asarray(lasso["x"], float), np.asarray(lasso["y"], float)])
        if len(poly) >= 3:
            hit |= Polygon(poly).contains_points(xy)
    rows = [np.flatnonzero(hit)]
    clicked = []
    for p in selection.get("points") or []:
        cd = p.get("customdata")
        if cd is not None:
            clicked.append(int(cd[0] if isinstance(cd, (list, tuple)) else cd))
        elif trace_rows is not None and p.get("point_index") is not None:
            curve = int(p.get("curve_number", 0))
            if 0 <= curve < len(trace_rows) and 0 <= int(p["point_index"]) < len(trace_rows[curve]):
                clicked.append(int(trace_rows[curve][int(p["point_index"])]))
    rows.append(np.asarray(clicked, dtype=np.int64))
    out = np.unique(np.concatenate(rows).astype(np.int64))
    return out[(out >= 0) & (out < len(xy))]


def _suggested_by_row(ws: Workspace, view: RunView, field: str) -> np.ndarray:
    sug = store(ws).suggestions(field)
    out = np.full(len(view.run.face_ids), UNLABELED, dtype=object)
    if len(sug):
        sug = sug.drop_duplicates("face_id")  # highest confidence first
        pos = view.row_of.get_indexer(pd.Index(sug["face_id"]))
        ok = pos >= 0
        out[pos[ok]] = sug["value"].to_numpy(object)[ok]
    return out


@st.cache_resource(max_entries=8, show_spinner="Drawing the map…")
def _map_figure(
    root: str, run_id: str, mtime: float, field: str, color_by: str, version: tuple[int, int]
) -> MapFigure:
    ws = Workspace(Path(root))
    view = _run_view(root, run_id, mtime)
    rows = view.sample
    xy = np.round(view.run.xy[rows], 3)
    traces, trace_rows = [], []
    size = 7 if len(rows) < 2_000 else 5 if len(rows) < 10_000 else 3
    if color_by == "cluster":
        lab = view.run.labels[rows]
        for name, mask, color in (
            ("noise", lab < 0, "#c8c8c8"),
            ("clustered", lab >= 0, None),
        ):
            if not mask.any():
                continue
            marker: dict = {"size": size, "opacity": 0.8}
            if color is None:
                n = len(PALETTE)  # discrete colourscale: small ints on the wire, not strings
                scale = [x for i, c in enumerate(PALETTE) for x in ([i / n, c], [(i + 1) / n, c])]
                marker |= {
                    "color": (lab[mask] % n).tolist(),
                    "colorscale": scale,
                    "cmin": 0,
                    "cmax": n - 1e-9,
                }
            else:
                marker["color"] = color
            traces.append(_trace(name, xy[mask], marker))
            trace_rows.append(rows[mask])
    else:
        if color_by == "label":
            values = _labels_by_row(root, run_id, mtime, field, version)[rows]
        else:
            values = _suggested_by_row(ws, view, field)[rows]
        cats = [c for c in pd.unique(values) if c != UNLABELED]
        for i, cat in enumerate([UNLABELED, *sorted(cats)]):
            mask = values == cat
            if mask.any():
                color = "#c8c8c8" if cat == UNLABELED else PALETTE[i % len(PALETTE)]
                marker = {"size": size, "color": color, "opacity": 0.8}
                traces.append(_trace(str(cat), xy[mask], marker))
                trace_rows.append(rows[mask])
    figure = {
        "data": traces,
        "layout": {
            "dragmode": "lasso",
            "height": 560,
            "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
            "xaxis": {"visible": False},
            "yaxis": {"visible": False, "scaleanchor": "x"},
            "legend": {"itemsizing": "constant", "orientation": "h", "y": -0.02},
            "uirevision": "keep",
        },
    }
    return MapFigure(figure, tuple(trace_rows))


def _trace(name: str, xy: np.ndarray, marker: dict) -> dict:
    return {
        "type": "scattergl",
        "mode": "markers",
        "name": name,
        "x": xy[:, 0].tolist(),
        "y": xy[:, 1].tolist(),
        "marker": marker,
        "hoverinfo": "name",
    }


@dataclass(frozen=True)
class MapFigure:
    """A plotly figure dict of the map sample and, per trace, the run rows of its points."""

    figure: dict
    trace_rows: tuple[np.ndarray, ...]


def map_figure(ws: Workspace, field: str, color_by: str) -> MapFigure:
    """The map sample (<= MAP_MAX_POINTS points) as a plotly figure, cached per run, field,
    colouring and label version (3-decimal coordinates, no per-point extras: ~47 bytes a point)."""
    run_id, mtime = runs.run_stamp(ws)
    version = label_version(ws) if color_by != "cluster" else (0, 0)
    return _map_figure(str(ws.root), run_id, mtime, field, color_by, version)


# --- models for the try-it page --------------------------------------------------------------


@st.cache_resource(max_entries=2, show_spinner="Loading models…")
def _models(root: str, stamp: float, fields: tuple[str, ...]) -> tuple[list, list[str]]:
    ws = Workspace(Path(root))
    models, missing = [], []
    try:
        from labeler.train import load_model
    except ImportError as exc:
        log.info("training module unavailable: %s", exc)
        return [], list(fields)
    for f in fields:
        try:
            models.append(load_model(ws, field=f))
        except (FileNotFoundError, KeyError, ValueError) as exc:
            log.info("no model for %s: %s", f, exc)
            missing.append(f)
    return models, missing


def models(ws: Workspace) -> tuple[list, list[str]]:
    """(loaded models, fields without a model) for the schema's fields; cached per models dir."""
    fields = tuple(schema(ws).names)
    return _models(str(ws.root), _mtime(ws.models_dir), fields)


def predict_photo(rgb: np.ndarray, models: list) -> tuple[list, str]:
    """Detect, align and classify the faces of one photo (H, W, 3) uint8.

    Uses mediapipe when installed, else treats the whole image as one face. Returns
    (``labeler.predict.FacePrediction`` list, detector name).
    """
    from labeler._deps import MissingDependency
    from labeler.detect import get_detector
    from labeler.predict import predict_image

    try:
        detector, name = get_detector("mediapipe"), "mediapipe"
    except (MissingDependency, ImportError):
        detector, name = get_detector("none"), "none"
    return predict_image(rgb, models, detector), name
