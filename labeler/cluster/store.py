"""Cluster runs on disk. The contract (README, "The workspace": ``clusters/<run_id>/``):

``ws.clusters_dir/<run_id>/``, written to a hidden stage folder (``.<run_id>.<pid>.<hex>.tmp``),
flushed to disk and renamed into place in one step; only then does ``current.json`` name it,
so a killed ``labeler cluster`` / split / merge / place leaves the previous run current and
complete (the next save removes the stage a killed one left):

* ``assignments.parquet`` - one row per face in ``faces.parquet`` order (ASSIGNMENTS_SCHEMA)
* ``clusters.parquet``    - one row per cluster, noise (-1) included when present (CLUSTERS_SCHEMA)
* ``config.json``         - the result's params: resolved ClusterConfig, feature spec, timings,
  parent run and edit for split/merge/place runs
* ``vectors.npy``         - (N, d) float16 unit vectors the graph was built on (assignment order)
* ``knn.npz``             - the kNN graph (indices int32, distances float16, rows sampled)
* ``pca.npz``             - the PCA projection (when one was used)

``ws.clusters_dir/current.json`` = ``{"run_id": ...}``. Runs are never modified: split,
merge and place write a new run and make it current, so undo is switching ``current``.

A damaged ``vectors.npy`` / ``knn.npz`` / ``pca.npz`` (a disk error, a partial copy) is
refused with one line naming the file and the fix (``labeler cluster -w WS`` rebuilds it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labeler import _swap
from labeler.cluster.algorithms import cluster_summary
from labeler.cluster.types import ClusterArtifacts, ClusterResult, KnnGraph, PcaModel
from labeler.workspace import (
    Workspace,
    WorkspaceError,
    new_run_id,
    read_json,
    write_json,
    write_table,
)

log = logging.getLogger(__name__)

ASSIGNMENTS_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),
        ("cluster", pa.int32()),  # -1 = noise / outlier
        ("outlier_score", pa.float32()),  # 0..1, higher = more outlying
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("suggested_cluster", pa.int32()),  # nearest real cluster for noise; = cluster otherwise
    ]
)

CLUSTERS_SCHEMA = pa.schema(
    [
        ("cluster", pa.int32()),
        ("size", pa.int64()),
        ("medoids", pa.list_(pa.string())),  # up to 8 face_ids, most central first ([] for -1)
        ("cohesion", pa.float32()),  # mean cosine similarity to the normalised centroid
    ]
)


def _run_dir(ws: Workspace, run_id: str) -> Path:
    return ws.clusters_dir / run_id


def _current_path(ws: Workspace) -> Path:
    return ws.clusters_dir / "current.json"


def current_run_id(ws: Workspace) -> str | None:
    """The current run id, or None when no run was saved yet."""
    path = _current_path(ws)
    if not path.exists():
        return None
    return read_json(path).get("run_id")


def set_current(ws: Workspace, run_id: str) -> None:
    """Make ``run_id`` current (the app's structural undo/redo)."""
    if not (_run_dir(ws, run_id) / "assignments.parquet").exists():
        raise WorkspaceError(f"cluster run {run_id!r} does not exist in {ws.clusters_dir}")
    write_json(_current_path(ws), {"run_id": run_id})


def _resolve(ws: Workspace, run_id: str | None) -> str:
    run_id = run_id or current_run_id(ws)
    if run_id is None:
        raise WorkspaceError(
            f"{ws.root} has no cluster run yet; run 'labeler cluster -w {ws.root}'"
        )
    if not (_run_dir(ws, run_id) / "assignments.parquet").exists():
        raise WorkspaceError(
            f"cluster run {run_id!r} not found in {ws.clusters_dir}; see 'labeler cluster --list'"
        )
    return run_id


def _faces_order(ws: Workspace, face_ids: np.ndarray) -> np.ndarray:
    """Permutation putting ``face_ids`` in faces.parquet order; refuses unknown ids."""
    if not ws.faces_path.exists():
        return np.arange(len(face_ids))
    faces = (
        pq.read_table(ws.faces_path, columns=["face_id"]).column(0).to_numpy(zero_copy_only=False)
    )
    pos = pd.Index(faces).get_indexer(pd.Index(face_ids))
    if (pos < 0).any():
        bad = face_ids[int(np.flatnonzero(pos < 0)[0])]
        raise WorkspaceError(
            f"cluster result has face {bad!r} which is not in {ws.faces_path}; re-run 'labeler cluster' after 'labeler detect'"
        )
    return np.argsort(pos, kind="stable")


def save_run(
    ws: Workspace,
    result: ClusterResult,
    *,
    run_id: str | None = None,
    artifacts: ClusterArtifacts | None = None,
    parent: str | None = None,
    set_as_current: bool = True,
) -> str:
    """Write ``result`` (and its ``artifacts`` when given) as a new run; returns its id.

    Rows are stored in faces.parquet order (ids not in faces.parquet are refused). Without
    ``artifacts`` the vectors, graph and PCA of ``parent`` (same faces) are linked, so
    split/merge runs stay searchable and placeable. Makes the run current unless told not to.
    """
    face_ids = np.asarray(result.face_ids).astype(str)
    if len(np.unique(face_ids)) != len(face_ids):
        raise ValueError("cluster result has duplicate face ids; one row per face")
    run_id = run_id or new_run_id()
    out = _run_dir(ws, run_id)
    if out.exists():
        raise FileExistsError(f"cluster run {out} already exists; pass a new run_id")
    order = _faces_order(ws, face_ids)
    _swap.remove_stale_stages(ws.clusters_dir)  # what killed saves left
    tmp = _swap.make_stage(out)
    try:
        _write_run(ws, tmp, result, run_id, order, artifacts, parent)
        _swap.fsync_tree(tmp)
        os.rename(tmp, out)
    finally:
        _swap.discard(tmp)  # a failed save's stage (after the rename there is none)
    if set_as_current:
        set_current(ws, run_id)
    log.info(
        "saved cluster run %s (%d faces, %d clusters)", run_id, len(face_ids), result.n_clusters
    )
    return run_id


def _write_run(
    ws: Workspace,
    tmp: Path,
    result: ClusterResult,
    run_id: str,
    order: np.ndarray,
    artifacts: ClusterArtifacts | None,
    parent: str | None,
) -> None:
    """The files of a run (module doc) into the stage folder ``tmp``, rows in ``order``."""
    face_ids = np.asarray(result.face_ids).astype(str)
    labels = np.asarray(result.labels, np.int32)[order]
    xy = np.asarray(result.xy, np.float32)[order]
    vectors = None
    if artifacts is not None:
        if len(artifacts.face_ids) != len(face_ids) or not np.array_equal(
            np.asarray(artifacts.face_ids).astype(str), face_ids
        ):
            raise ValueError("artifacts.face_ids must equal result.face_ids (same order)")
        vectors = np.asarray(artifacts.vectors, np.float32)[order]
        np.save(tmp / "vectors.npy", vectors.astype(np.float16))
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        g = artifacts.graph
        np.savez(
            tmp / "knn.npz",
            rows=inv[artifacts.graph_rows].astype(np.int64),
            indices=g.indices.astype(np.int32),
            distances=g.distances.astype(np.float16),
            kind=np.array(g.kind),
        )
        if artifacts.pca is not None:
            p = artifacts.pca
            np.savez(tmp / "pca.npz", mean=p.mean, components=p.components, explained=p.explained)
    elif parent is not None and (_run_dir(ws, parent) / "vectors.npy").exists():
        src = _run_dir(ws, parent)
        parent_ids = (
            pq.read_table(src / "assignments.parquet", columns=["face_id"])
            .column(0)
            .to_numpy(zero_copy_only=False)
        )
        if np.array_equal(parent_ids.astype(str), face_ids[order]):
            for name in ("vectors.npy", "knn.npz", "pca.npz"):
                if (src / name).exists():
                    try:
                        os.link(src / name, tmp / name)
                    except OSError:
                        shutil.copy2(src / name, tmp / name)
            vectors = _load_npy(ws, tmp / "vectors.npy", shown=src / "vectors.npy")

    assignments = pd.DataFrame(
        {
            "face_id": face_ids[order],
            "cluster": labels,
            "outlier_score": np.asarray(result.outlier_score, np.float32)[order],
            "x": xy[:, 0],
            "y": xy[:, 1],
            "suggested_cluster": np.asarray(result.suggested, np.int32)[order],
        }
    )
    write_table(tmp / "assignments.parquet", assignments, ASSIGNMENTS_SCHEMA)
    summary = cluster_summary(face_ids[order], vectors, labels, xy)
    write_table(tmp / "clusters.parquet", pd.DataFrame(summary), CLUSTERS_SCHEMA)
    params = dict(result.params)
    params.update(
        {
            "run_id": run_id,
            "parent": parent if parent is not None else params.get("parent"),
            "created": time.time(),
        }
    )
    write_json(tmp / "config.json", params)


def load_run(ws: Workspace, run_id: str | None = None) -> ClusterResult:
    """The saved run ``run_id`` (None = current) as a :class:`ClusterResult`."""
    run_id = _resolve(ws, run_id)
    d = _run_dir(ws, run_id)
    df = pq.read_table(d / "assignments.parquet", schema=ASSIGNMENTS_SCHEMA).to_pandas()
    params = read_json(d / "config.json") if (d / "config.json").exists() else {}
    params["run_id"] = run_id
    return ClusterResult(
        face_ids=df["face_id"].to_numpy(dtype=object).astype(str),
        labels=df["cluster"].to_numpy(np.int32),
        outlier_score=df["outlier_score"].to_numpy(np.float32),
        xy=df[["x", "y"]].to_numpy(np.float32),
        suggested=df["suggested_cluster"].to_numpy(np.int32),
        params=params,
    )


def load_vectors(ws: Workspace, run_id: str | None = None) -> np.ndarray | None:
    """The (N, d) float32 unit vectors a run was clustered on, in its row order; None when
    the run kept none (a run saved without artifacts, e.g. a synthetic one)."""
    d = _run_dir(ws, _resolve(ws, run_id))
    if not (d / "vectors.npy").exists():
        return None
    V = _load_npy(ws, d / "vectors.npy")
    _check_rows(ws, d / "vectors.npy", len(V), _n_assigned(d))
    return V


def load_artifacts(ws: Workspace, run_id: str | None = None) -> ClusterArtifacts:
    """The vectors, kNN graph and PCA saved with a run (``labeler cluster`` runs have them)."""
    run_id = _resolve(ws, run_id)
    d = _run_dir(ws, run_id)
    if not (d / "vectors.npy").exists():
        raise WorkspaceError(
            f"cluster run {run_id} has no saved vectors; re-run 'labeler cluster -w {ws.root}'"
        )
    ids = (
        pq.read_table(d / "assignments.parquet", columns=["face_id"])
        .column(0)
        .to_numpy(zero_copy_only=False)
    )
    V = _load_npy(ws, d / "vectors.npy")
    _check_rows(ws, d / "vectors.npy", len(V), len(ids))
    z = _load_npz(ws, d / "knn.npz", ("indices", "distances", "kind", "rows"))
    graph = KnnGraph(
        z["indices"].astype(np.int64), z["distances"].astype(np.float32), str(z["kind"])
    )
    rows = z["rows"].astype(np.int64)
    _check_rows(ws, d / "knn.npz", len(graph.indices), len(rows))
    if len(rows) and (rows.min() < 0 or rows.max() >= len(ids)):
        raise _damaged(ws, d / "knn.npz", f"row numbers outside 0..{len(ids) - 1}")
    pca = None
    if (d / "pca.npz").exists():
        z = _load_npz(ws, d / "pca.npz", ("mean", "components", "explained"))
        pca = PcaModel(z["mean"], z["components"], z["explained"])
    return ClusterArtifacts(
        face_ids=np.asarray(ids).astype(str), vectors=V, graph=graph, graph_rows=rows, pca=pca
    )


#: What numpy raises for a damaged .npy / .npz (truncated, overwritten, not numpy at all).
_DAMAGED = (ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _damaged(ws: Workspace, path: Path, why: str) -> WorkspaceError:
    return WorkspaceError(
        f"{path} is damaged ({why}); rebuild the cluster run with 'labeler cluster -w {ws.root}'"
    )


def _load_npy(ws: Workspace, path: Path, *, shown: Path | None = None) -> np.ndarray:
    """The (N, d) float32 array of ``path``; a damaged file raises naming it and the fix."""
    try:
        V = np.load(path, allow_pickle=False)
    except _DAMAGED as exc:
        raise _damaged(ws, shown or path, _why(exc)) from None
    if V.ndim != 2 or not np.issubdtype(V.dtype, np.floating):
        raise _damaged(ws, shown or path, f"a {V.dtype} array of shape {V.shape}, not (N, d)")
    return V.astype(np.float32)


def _load_npz(ws: Workspace, path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` at ``path``, read now (a damaged member raises
    here, naming the file and the fix, not later in the middle of a search)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except _DAMAGED as exc:
        raise _damaged(ws, path, _why(exc)) from None


def _why(exc: BaseException) -> str:
    """What is wrong with the file, in our words (numpy's advice to load it with
    ``allow_pickle=True`` would let a crafted file run code: never quoted)."""
    text = str(exc)
    if isinstance(exc, KeyError):
        return f"no array {exc}"
    if isinstance(exc, EOFError):
        return "empty or cut short"
    if isinstance(exc, zipfile.BadZipFile | zlib.error):
        return "not a readable .npz archive"
    if "pickle" in text:
        return "not a numpy array file"
    if "read all data" in text or "reshape" in text:
        return "cut short"
    first = text.strip().splitlines()[0][:100] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _n_assigned(d: Path) -> int:
    return int(pq.ParquetFile(d / "assignments.parquet").metadata.num_rows)


def _check_rows(ws: Workspace, path: Path, got: int, want: int) -> None:
    if got != want:
        raise _damaged(ws, path, f"{got} rows where the run has {want}")


def cluster_table(ws: Workspace, run_id: str | None = None) -> pd.DataFrame:
    """``clusters.parquet`` of a run (None = current): cluster, size, medoids, cohesion."""
    run_id = _resolve(ws, run_id)
    return pq.read_table(
        _run_dir(ws, run_id) / "clusters.parquet", schema=CLUSTERS_SCHEMA
    ).to_pandas()


def list_runs(ws: Workspace) -> pd.DataFrame:
    """All saved runs, oldest first: run_id, created, parent, algorithm, n_faces,
    n_clusters, noise_fraction, edit, current."""
    rows: list[dict[str, Any]] = []
    cur = current_run_id(ws)
    if ws.clusters_dir.is_dir():
        for d in sorted(ws.clusters_dir.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or not (d / "config.json").exists():
                continue
            p = read_json(d / "config.json")
            rows.append(
                {
                    "run_id": d.name,
                    "created": p.get("created"),
                    "parent": p.get("parent"),
                    "algorithm": p.get("algorithm"),
                    "n_faces": p.get("n_faces"),
                    "n_clusters": p.get("n_clusters"),
                    "noise_fraction": p.get("noise_fraction"),
                    "edit": json.dumps(p["edit"]) if p.get("edit") else None,
                    "current": d.name == cur,
                }
            )
    cols = [
        "run_id",
        "created",
        "parent",
        "algorithm",
        "n_faces",
        "n_clusters",
        "noise_fraction",
        "edit",
        "current",
    ]
    return (
        pd.DataFrame(rows, columns=cols)
        .sort_values("created", kind="stable")
        .reset_index(drop=True)
    )
