"""Cluster runs as the app sees them, and the structural edits it makes (split, merge, revert).

Reading and writing go through ``labeler.cluster.store`` (CONTRACTS.md). Edits are
copy-on-write: each saves a NEW run whose ``config.json`` names its ``parent`` and makes it
current, so undoing a split or merge is switching ``current.json`` back (:func:`revert_run`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from labeler.cluster import store
from labeler.workspace import Workspace, WorkspaceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One cluster run aligned to faces order (a ``ClusterResult`` plus its cluster table)."""

    run_id: str
    face_ids: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int32, -1 noise
    outlier_score: np.ndarray  # (N,) float32
    xy: np.ndarray  # (N, 2) float32
    suggested: np.ndarray  # (N,) int32
    clusters: pd.DataFrame  # cluster, size, medoids, cohesion
    params: dict = field(default_factory=dict)


def current_run_id(ws: Workspace) -> str | None:
    """The current run id (None: no clustering yet)."""
    return store.current_run_id(ws)


def run_stamp(ws: Workspace) -> tuple[str | None, float]:
    """(current run id, mtime of its assignments): a cache key that changes with the run."""
    run_id = current_run_id(ws)
    if run_id is None:
        return None, 0.0
    path = ws.clusters_dir / run_id / "assignments.parquet"
    return run_id, path.stat().st_mtime if path.exists() else 0.0


def load(ws: Workspace, run_id: str | None = None) -> Run:
    """Load a run (None = current). Raises WorkspaceError naming the fix when there is none."""
    run_id = run_id or current_run_id(ws)
    if run_id is None:
        raise WorkspaceError(f"{ws.root} has no cluster run; run 'labeler cluster -w {ws.root}'")
    res = store.load_run(ws, run_id)
    return Run(
        run_id,
        np.asarray(res.face_ids).astype(str),
        np.asarray(res.labels, dtype=np.int32),
        np.asarray(res.outlier_score, dtype=np.float32),
        np.asarray(res.xy, dtype=np.float32),
        np.asarray(res.suggested, dtype=np.int32),
        store.cluster_table(ws, run_id),
        dict(res.params or {}),
    )


def save(ws: Workspace, run: Run, *, parent: str | None, note: str) -> str:
    """Save ``run`` as a new run (``parent`` recorded, vectors linked) and make it current."""
    params = {k: v for k, v in run.params.items() if k not in ("run_id", "created")}
    params["edit"] = note
    result = store.ClusterResult(
        face_ids=run.face_ids,
        labels=run.labels,
        outlier_score=run.outlier_score,
        xy=run.xy,
        suggested=run.suggested,
        params=params,
    )
    return store.save_run(ws, result, parent=parent, set_as_current=True)


def run_vectors(ws: Workspace, run: Run) -> np.ndarray | None:
    """The (N, d) unit vectors the run was clustered on (None when the run has none)."""
    path = ws.clusters_dir / run.run_id / "vectors.npy"
    return np.load(path).astype(np.float32) if path.exists() else None


def _replace(run: Run, labels: np.ndarray) -> Run:
    suggested = np.where(labels >= 0, labels, run.suggested).astype(np.int32)
    return Run(run.run_id, run.face_ids, labels.astype(np.int32), run.outlier_score, run.xy,
               suggested, run.clusters, run.params)  # fmt: skip


def split_out(ws: Workspace, run: Run, face_ids: list[str] | set[str], *, cluster: int) -> str:
    """Move ``face_ids`` (members of ``cluster``) into a new cluster ``max + 1``; new run id."""
    move = np.isin(run.face_ids, list(face_ids)) & (run.labels == cluster)
    if not move.any() or move.sum() == (run.labels == cluster).sum():
        raise ValueError(
            f"split needs some but not all faces of cluster {cluster}; got {int(move.sum())}"
        )
    labels = run.labels.copy()
    labels[move] = int(run.labels.max()) + 1
    return save(ws, _replace(run, labels), parent=run.run_id, note=f"split {cluster}")


def split_kmeans(ws: Workspace, run: Run, X: np.ndarray | None, *, cluster: int, k: int = 2) -> str:
    """Split ``cluster`` into ``k`` parts by k-means on ``X`` (N, D) rows (or the 2-D map).

    Part 0 keeps the id, the others get ``max + 1 ...``. Returns the new run id.
    """
    from sklearn.cluster import KMeans

    idx = np.flatnonzero(run.labels == cluster)
    if len(idx) < k:
        raise ValueError(f"cluster {cluster} has {len(idx)} faces; cannot split into {k}")
    feats = (X if X is not None else run.xy)[idx].astype(np.float32)
    parts = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(feats)
    labels = run.labels.copy()
    top = int(run.labels.max())
    for p in range(1, k):
        labels[idx[parts == p]] = top + p
    return save(ws, _replace(run, labels), parent=run.run_id, note=f"split {cluster} k={k}")


def merge(ws: Workspace, run: Run, *, source: int, target: int) -> str:
    """Merge cluster ``source`` into ``target``; returns the new run id."""
    if source == target:
        raise ValueError(f"cannot merge cluster {source} into itself")
    labels = run.labels.copy()
    labels[run.labels == source] = target
    return save(ws, _replace(run, labels), parent=run.run_id, note=f"merge {source}->{target}")


def revert_run(ws: Workspace, run: Run) -> str | None:
    """Make the parent of the current (edited) run current again; None when it has none."""
    parent = run.params.get("parent")
    if not parent or not (ws.clusters_dir / str(parent)).exists():
        return None
    store.set_current(ws, str(parent))
    return str(parent)
