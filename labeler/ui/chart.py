"""The map page's figure: a plotly scatter of the cluster run's 2-D layout coloured by cluster,
label or suggestion, what a box or lasso takes, and the hover thumbnails (cached per run)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from labeler.ui import runs
from labeler.ui.data import (
    UNLABELED,
    RunView,
    _labels_by_row,
    _run_view,
    label_version,
    store,
)
from labeler.workspace import Workspace

T = TypeVar("T")

log = logging.getLogger(__name__)


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

    @cached_property
    def plotly(self) -> Any:
        """``figure`` as a ``plotly.graph_objects.Figure``, checked by plotly once per cached
        figure: ``st.plotly_chart`` then only copies it on each rerun, where a dict is
        checked again, point by point (0.3-0.4 s for 20,000 points)."""
        import plotly.graph_objects as go

        return go.Figure(self.figure)


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
    images: Sequence[T],
    *,
    cell: int = 64,
    cols: int = 16,
    quality: int = 80,
    read: Callable[[T], bytes | None] | None = None,
    workers: int | None = None,
) -> ThumbSheets:
    """Pack face images into square JPEG sheets of ``cols x cols`` cells of ``cell`` px, in
    order. ``images``: encoded images (``None``: a grey cell), or anything ``read`` turns into
    those (a face id -> its crop's bytes), so that reading runs in the same threads. JPEGs are
    decoded at a reduced DCT scale, so a 256 px crop costs well under a millisecond. Sheets
    are made on ``workers`` threads (default: one a CPU, at most 8: the app serves other
    annotators meanwhile); the bytes are the same for any count.

    >>> ts = thumbnail_sheets([jpeg_bytes] * 300, cell=64, cols=16)  # doctest: +SKIP
    >>> len(ts.sheets), ts.per_sheet  # doctest: +SKIP
    (2, 256)
    """
    from concurrent.futures import ThreadPoolExecutor

    if cell < 8 or cols < 1:
        raise ValueError(f"cell must be >= 8 px and cols >= 1, got cell={cell}, cols={cols}")
    per = cols * cols
    chunks = [images[i : i + per] for i in range(0, len(images), per)]
    make = partial(_sheet, cell=cell, cols=cols, quality=quality, read=read)
    n = max(1, min(len(chunks), workers or min(8, os.cpu_count() or 1)))
    if n == 1:
        return ThumbSheets(tuple(map(make, chunks)), cell, cols)
    with ThreadPoolExecutor(n, thread_name_prefix="map-thumbs") as pool:
        return ThumbSheets(tuple(pool.map(make, chunks)), cell, cols)


def _sheet(
    chunk: Sequence[T], *, cell: int, cols: int, quality: int,
    read: Callable[[T], bytes | None] | None,
) -> bytes:  # fmt: skip
    """One sheet of :func:`thumbnail_sheets`: ``chunk`` in row-major cells, as JPEG bytes.
    OpenCV decodes and resizes (all in C, without the GIL, so the sheets' threads run side by
    side); a JPEG is decoded at the DCT scale that keeps at least ``cell`` px of a crop."""
    import cv2

    from labeler.faces.regions import CROP_SIZE
    from labeler.imageio import encode_jpeg

    scale = max((f for f in (1, 2, 4, 8) if CROP_SIZE // f >= cell), default=1)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[scale]  # fmt: skip
    rows = -(-len(chunk) // cols)
    sheet = np.full((rows * cell, cols * cell, 3), 200, np.uint8)
    for j, item in enumerate(chunk):
        data = read(item) if read is not None else item
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
        if bgr is None:  # no file, or not an image: a grey cell
            continue
        y, x = (j // cols) * cell, (j % cols) * cell
        thumb = cv2.resize(bgr, (cell, cell), interpolation=cv2.INTER_AREA)
        sheet[y : y + cell, x : x + cell] = thumb[:, :, ::-1]
    return encode_jpeg(sheet, quality=quality)


@st.cache_resource(max_entries=2, show_spinner="Making the map's thumbnails…")
def _map_thumbs(root: str, run_id: str, mtime: float) -> ThumbSheets:
    ws = Workspace(Path(root))
    view = _run_view(root, run_id, mtime)
    fids = view.run.face_ids[view.sample]
    cell = 64 if len(fids) <= THUMB_BIG_UP_TO else 40
    # read in the sheets' threads, not through crop_bytes' small cache
    return thumbnail_sheets([str(f) for f in fids], cell=cell, cols=16 if cell == 64 else 32,
                            read=crop_reader(ws))  # fmt: skip


def crop_reader(ws: Workspace) -> Callable[[str], bytes | None]:
    """A face id -> its crop's bytes, or None when there is no file or it lies outside the
    workspace (what :meth:`Workspace.resolve_inside` checks, without resolving every path:
    each crop folder is resolved once, and only a crop that is a link is followed)."""
    root = ws.root.resolve()
    inside: dict[Path, bool] = {}

    def read(face_id: str) -> bytes | None:
        path = ws.crop_path(face_id)
        ok = inside.get(path.parent)
        if ok is None:
            real = path.parent.resolve()
            ok = inside[path.parent] = real == root or root in real.parents
        if ok and path.is_symlink():
            ok = root in path.resolve().parents
        if not ok:
            log.warning("refused to read %s: outside the workspace", path)
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    return read


def map_thumbs(ws: Workspace) -> ThumbSheets | None:
    """The thumbnails of the map sample (:class:`ThumbSheets`), cached per run; None when the
    workspace has no run."""
    run_id, mtime = runs.run_stamp(ws)
    if run_id is None:
        return None
    return _map_thumbs(str(ws.root), run_id, mtime)
