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


@st.cache_resource(max_entries=4, show_spinner=False)
def _face_details(root: str, faces_mtime: float, images_mtime: float) -> pd.DataFrame:
    ws = Workspace(Path(root))
    f = ws.faces()
    images = ws.images()[["image_id", "root", "path", "width", "height"]]
    images = images.drop_duplicates("image_id")
    return f.merge(images, on="image_id", how="left").set_index("face_id")


def face_details(ws: Workspace) -> pd.DataFrame:
    """faces.parquet joined with each face's image (root, path, width, height), indexed by
    face_id; read-only, cached per file mtimes."""
    return _face_details(str(ws.root), _mtime(ws.faces_path), _mtime(ws.images_path))


@dataclass(frozen=True)
class SourcePhoto:
    """A face shown on the photo it came from (what the annotator needs to judge a crop)."""

    face_id: str
    path: str  # the photo's file, as ingested
    jpeg: bytes | None  # the photo (longest side <= max_side) with the face's box drawn
    width: int  # the photo's size in pixels (after EXIF orientation)
    height: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the photo's pixels
    score: float
    detector: str
    whole_image: bool  # no face found: the whole image stands in for it
    rotation: int  # degrees the photo was turned clockwise to find the face upright


def draw_face(
    rgb: np.ndarray,
    box: tuple[float, float, float, float],
    landmarks: np.ndarray,
    *,
    color: tuple[int, int, int] = (0, 255, 64),
) -> np.ndarray:
    """A copy of ``rgb`` (H, W, 3) uint8 with ``box`` (x0, y0, x1, y1) outlined and the 4
    ``landmarks`` ((4, 2), same pixels) marked, line width ~1/150 of the longest side."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    lw = max(2, round(max(img.size) / 150))
    draw.rectangle([float(v) for v in box], outline=color, width=lw)
    for x, y in np.asarray(landmarks, dtype=np.float32).reshape(-1, 2):
        r = lw * 1.5
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    return np.asarray(img)


@st.cache_data(max_entries=64, show_spinner=False)
def _source_photo(root: str, face_id: str, stamp: float, max_side: int) -> SourcePhoto | None:
    from labeler.imageio import ImageDecodeError, decode_image, encode_jpeg

    ws = Workspace(Path(root))
    details = _face_details(root, stamp, _mtime(ws.images_path))
    if face_id not in details.index:
        return None
    row = details.loc[face_id]
    roots = ws.roots()
    path = str(ws.image_path(int(row["root"]), str(row["path"]))) if len(roots) else ""
    box = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
    jpeg = None
    raw = image_bytes(ws, path) if path else None
    if raw is not None:
        try:
            dec = decode_image(raw, max_side=max_side)
        except ImageDecodeError as exc:
            log.warning("cannot show %s: %s", path, exc)
        else:
            sx, sy = dec.scale  # original pixels per decoded pixel
            small = (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)
            lm = np.asarray(row["landmarks"], dtype=np.float32).reshape(-1, 2) / [sx, sy]
            jpeg = encode_jpeg(draw_face(dec.rgb, small, lm), quality=88)
    rotation = row.get("rotation")
    return SourcePhoto(
        face_id=face_id,
        path=path,
        jpeg=jpeg,
        width=int(row["width"]) if pd.notna(row["width"]) else 0,
        height=int(row["height"]) if pd.notna(row["height"]) else 0,
        box=box,
        score=float(row["score"]),
        detector=str(row["detector"]),
        whole_image=bool(row["whole_image"]),
        rotation=int(rotation) if rotation is not None and pd.notna(rotation) else 0,
    )


def source_photo(ws: Workspace, face_id: str, *, max_side: int = 1000) -> SourcePhoto | None:
    """The photo ``face_id`` was cut from, with its box and landmarks drawn (None for an
    unknown face). The photo is read only through :func:`image_bytes` (workspace and
    ingested folders only); ``jpeg`` is None when it cannot be read any more."""
    return _source_photo(str(ws.root), str(face_id), _mtime(ws.faces_path), max_side)


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


def cluster_name(c: int) -> str:
    return "noise" if c < 0 else f"cluster {c}"


@st.cache_resource(max_entries=8, show_spinner="Drawing the map…")
def _map_figure(
    root: str, run_id: str, mtime: float, field: str, color_by: str, version: tuple[int, int]
) -> MapFigure:
    ws = Workspace(Path(root))
    view = _run_view(root, run_id, mtime)
    rows = view.sample
    xy = np.round(view.run.xy[rows], 3)
    clusters = view.run.labels[rows]
    labels = _labels_by_row(root, run_id, mtime, field, version)[rows]
    traces, trace_rows = [], []
    size = 7 if len(rows) < 2_000 else 5 if len(rows) < 10_000 else 3
    if color_by == "cluster":
        groups = [(c, clusters == c) for c in sorted(np.unique(clusters), key=lambda c: (c < 0, c))]
        for i, (c, mask) in enumerate(groups):
            color = "#c8c8c8" if c < 0 else PALETTE[i % len(PALETTE)]
            name = f"{cluster_name(int(c))} ({int(view.sizes.get(int(c), mask.sum())):,})"
            traces.append(_trace(name, xy[mask], {"size": size, "color": color, "opacity": 0.8}))
            trace_rows.append(rows[mask])
    else:
        values = labels if color_by == "label" else _suggested_by_row(ws, view, field)[rows]
        cats = [c for c in pd.unique(values) if c != UNLABELED]
        for i, cat in enumerate([UNLABELED, *sorted(cats)]):
            mask = values == cat
            if mask.any():
                color = "#c8c8c8" if cat == UNLABELED else PALETTE[i % len(PALETTE)]
                n = int(mask.sum())
                marker = {"size": size, "color": color, "opacity": 0.8}
                traces.append(_trace(f"{cat} ({n:,})", xy[mask], marker))
                trace_rows.append(rows[mask])
    # hover: cluster and label of each point (short strings; the face itself shows on click)
    for trace, tr in zip(traces, trace_rows, strict=True):
        lab = view.run.labels[tr]
        trace["text"] = [
            f"{cluster_name(int(c))} · {v}"
            for c, v in zip(lab, _labels_by_row(root, run_id, mtime, field, version)[tr],
                            strict=True)
        ]  # fmt: skip
        trace["hovertemplate"] = "%{text}<extra></extra>"
        # [run row (what a click selects), place in the map sample (its thumbnail: map_thumbs)]
        trace["customdata"] = np.column_stack([tr, np.searchsorted(rows, tr)]).tolist()
    # cluster numbers at their centres, so the legend and the map name the same groups
    notes = []
    for c in np.unique(clusters):
        if c < 0:
            continue
        centre = np.median(view.run.xy[view.members[int(c)]], axis=0)
        notes.append({
            "x": round(float(centre[0]), 3), "y": round(float(centre[1]), 3),
            "text": f"<b>{int(c)}</b>", "showarrow": False,
            "font": {"size": 12, "color": "#222"}, "bgcolor": "rgba(255,255,255,0.6)",
        })  # fmt: skip
    figure = {
        "data": traces,
        "layout": {
            "dragmode": "lasso",
            "height": 560,
            # room above the plot for plotly's toolbar: it must not cover the legend title
            "margin": {"l": 10, "r": 10, "t": 44, "b": 10},
            "xaxis": {"visible": False},
            "yaxis": {"visible": False, "scaleanchor": "x"},
            "showlegend": True,  # also with one group: the legend names what colours mean
            "legend": {"itemsizing": "constant", "title": {"text": color_by}},
            "annotations": notes[:300],
            "hovermode": "closest",
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
    }


def selection_summary(
    rows: np.ndarray, drawn: np.ndarray, clusters: np.ndarray, labels: np.ndarray
) -> dict[str, object]:
    """What a box or lasso takes, before anything is assigned.

    ``rows``: every run row inside the shape (:func:`rows_in_selection`); ``drawn``: the rows
    the browser reported as selected points (drawn and visible); ``clusters``/``labels``:
    (N,) cluster and current label of every run row. Returns ``{"total", "drawn", "hidden",
    "by_cluster": {name: n}, "by_label": {value: n}}``; ``hidden`` counts faces inside the
    shape that were not drawn (sampled out) or sit in traces hidden from the legend.
    """
    rows = np.asarray(rows, dtype=np.int64)
    seen = np.intersect1d(rows, np.asarray(drawn, dtype=np.int64))
    by_c = pd.Series(clusters[rows]).value_counts()
    by_c = by_c.sort_index(key=lambda i: [(c < 0, c) for c in i])
    return {
        "total": len(rows),
        "drawn": len(seen),
        "hidden": len(rows) - len(seen),
        "by_cluster": {cluster_name(int(c)): int(n) for c, n in by_c.items()},
        "by_label": {str(k): int(v) for k, v in pd.Series(labels[rows]).value_counts().items()},
    }


@dataclass(frozen=True)
class MapFigure:
    """A plotly figure dict of the map sample and, per trace, the run rows of its points."""

    figure: dict
    trace_rows: tuple[np.ndarray, ...]


def map_figure(ws: Workspace, field: str, color_by: str) -> MapFigure:
    """The map sample (<= MAP_MAX_POINTS points) as a plotly figure, cached per run, field,
    colouring and label version: one trace (legend entry) per cluster or label value, each
    point's hover text naming its cluster and label, cluster numbers at cluster centres."""
    run_id, mtime = runs.run_stamp(ws)
    version = label_version(ws)
    return _map_figure(str(ws.root), run_id, mtime, field, color_by, version)


# --- thumbnails for the map's hover -------------------------------------------------------------


@dataclass(frozen=True)
class ThumbSheets:
    """The map sample's face thumbnails packed into JPEG sheets, in sample order: point ``k``
    is cell ``k % per_sheet`` of sheet ``k // per_sheet``, row-major, ``cols`` cells a row,
    each ``cell`` px square."""

    sheets: tuple[bytes, ...]
    cell: int
    cols: int

    @property
    def per_sheet(self) -> int:
        return self.cols * self.cols


#: Thumbnail side on the map's hover: 64 px up to this many drawn points, 40 px above (a full
#: 20,000-point map is then ~20 sheets of 1280 px, a few MB, loaded once per run).
THUMB_BIG_UP_TO = 5_000


def thumbnail_sheets(
    images: list[bytes | None], *, cell: int = 64, cols: int = 16, quality: int = 80
) -> ThumbSheets:
    """Pack encoded face images (``None``: a grey cell) into square JPEG sheets of
    ``cols x cols`` cells of ``cell`` px, in order. JPEGs are decoded at a reduced DCT scale
    (``draft``), so a 256 px crop costs well under a millisecond.

    >>> ts = thumbnail_sheets([jpeg_bytes] * 300, cell=64, cols=16)  # doctest: +SKIP
    >>> len(ts.sheets), ts.per_sheet  # doctest: +SKIP
    (2, 256)
    """
    import io

    from PIL import Image

    if cell < 8 or cols < 1:
        raise ValueError(f"cell must be >= 8 px and cols >= 1, got cell={cell}, cols={cols}")
    per = cols * cols
    sheets = []
    for start in range(0, len(images), per):
        chunk = images[start : start + per]
        rows = -(-len(chunk) // cols)
        sheet = Image.new("RGB", (cols * cell, rows * cell), (200, 200, 200))
        for j, data in enumerate(chunk):
            if not data:
                continue
            try:
                im = Image.open(io.BytesIO(data))
                im.draft("RGB", (cell, cell))
                im = im.convert("RGB").resize((cell, cell), Image.Resampling.BILINEAR)
            except OSError:
                continue
            sheet.paste(im, ((j % cols) * cell, (j // cols) * cell))
        buf = io.BytesIO()
        sheet.save(buf, format="JPEG", quality=quality)
        sheets.append(buf.getvalue())
    return ThumbSheets(tuple(sheets), cell, cols)


@st.cache_resource(max_entries=2, show_spinner="Making the map's thumbnails…")
def _map_thumbs(root: str, run_id: str, mtime: float) -> ThumbSheets:
    ws = Workspace(Path(root))
    view = _run_view(root, run_id, mtime)
    fids = view.run.face_ids[view.sample]
    cell = 64 if len(fids) <= THUMB_BIG_UP_TO else 40
    images = [_read_crop(ws, str(f)) for f in fids]  # not through crop_bytes' small cache
    return thumbnail_sheets(images, cell=cell, cols=16 if cell == 64 else 32)


def _read_crop(ws: Workspace, face_id: str) -> bytes | None:
    """A crop's bytes if its file lies inside the workspace (as ``resolve_inside`` checks, but
    without reading the workspace's metadata once per face), else None."""
    path = ws.crop_path(face_id).resolve()
    if ws.root.resolve() not in path.parents:
        log.warning("refused to read %s: outside the workspace", path)
        return None
    try:
        return path.read_bytes()
    except OSError:
        return None


def map_thumbs(ws: Workspace) -> ThumbSheets | None:
    """The thumbnails of the map sample (:class:`ThumbSheets`), cached per run; None when the
    workspace has no run."""
    run_id, mtime = runs.run_stamp(ws)
    if run_id is None:
        return None
    return _map_thumbs(str(ws.root), run_id, mtime)


# --- models for the try-it page --------------------------------------------------------------


@st.cache_resource(max_entries=2, show_spinner="Loading models…")
def _models(root: str, stamp: float, fields: tuple[str, ...]) -> tuple[list, list[str]]:
    ws = Workspace(Path(root))
    models, missing = [], []
    from labeler.train import load_model

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
