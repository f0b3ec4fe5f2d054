"""Cluster runs as the app sees them: the current run as a :class:`Run` and a cache stamp.

Reading goes through :mod:`labeler.cluster.store` (the on-disk layout is in its docstring
and in README, "The workspace"). The structural edits the app makes (move faces out, split,
merge, revert) are :mod:`labeler.cluster.edit`'s, called by the Cluster view's buttons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from labeler.cluster import store
from labeler.errors import WorkspaceError
from labeler.workspace import Workspace

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
