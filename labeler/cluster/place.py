"""Place faces embedded after a run into its clusters and map, without re-running it.

New faces are projected with the run's PCA, normalised, and searched among the run's faces
(FAISS). Cluster = similarity-weighted vote of the ``k`` nearest old faces (noise votes
too, so a face among outliers stays an outlier); 2-D position = similarity-weighted mean of
their map positions; outlier score = weighted mean of theirs. A full re-cluster is
``labeler cluster``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from labeler.cluster.types import ClusterResult
from labeler.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Placement of M new faces. labels/suggested (M,) int32, xy (M, 2) f32,
    outlier_score (M,) f32, confidence (M,) f32 = winning vote share in [0, 1]."""

    labels: np.ndarray
    suggested: np.ndarray
    xy: np.ndarray
    outlier_score: np.ndarray
    confidence: np.ndarray


def _vote_sums(lab: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The summed weight of each (row, column) pair that occurs in ``lab`` (M, k) cluster
    labels (-1 = noise) with weights ``w`` (M, k), column = label + 1: ``(rows, cols, sums)``
    sorted by row, then column.

    Only the pairs that occur are summed (M * k of them at most), so the memory is the
    neighbours', not M x clusters: at a million faces in 8,000 groups a dense vote table
    would take 60 GB.
    """
    m, k = lab.shape
    cols = lab.astype(np.int64).ravel() + 1
    n_cols = int(cols.max()) + 1 if cols.size else 1
    rows = np.repeat(np.arange(m, dtype=np.int64), k)
    keys, inverse = np.unique(rows * n_cols + cols, return_inverse=True)
    sums = np.bincount(inverse, weights=w.ravel(), minlength=len(keys))
    return keys // n_cols, keys % n_cols, sums


def _row_best(
    m: int, rows: np.ndarray, cols: np.ndarray, sums: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of M, the column with the largest sum among ``(rows, cols, sums)`` (sorted by
    row, then column): the lowest column on a tie, 0 where no sum is positive; and that sum."""
    win, top = np.zeros(m, np.int64), np.zeros(m, np.float64)
    if not len(rows):
        return win, top
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    row_max = np.maximum.reduceat(sums, starts)
    at_max = np.flatnonzero(sums == np.repeat(row_max, np.diff(np.r_[starts, len(rows)])))
    first = at_max[np.r_[True, rows[at_max][1:] != rows[at_max][:-1]]]  # lowest column
    win[rows[first]], top[rows[first]] = cols[first], sums[first]
    win[top <= 0] = 0
    return win, top


def place_by_neighbors(
    ref_labels: np.ndarray,
    ref_xy: np.ndarray,
    ref_score: np.ndarray,
    neighbors: np.ndarray,
    sims: np.ndarray,
) -> Placement:
    """Place M faces from their ``neighbors`` (M, k) row numbers into the reference faces and
    cosine ``sims`` (M, k) (id -1 = missing). Weights are ``max(sim, 0) + 1e-3``.

    ``suggested`` is the best real cluster among the votes (-1 when no neighbour is clustered).
    """
    ref_labels = np.asarray(ref_labels, dtype=np.int32)
    m, k = neighbors.shape
    valid = neighbors >= 0
    nb = np.where(valid, neighbors, 0)
    w = np.where(valid, np.maximum(np.nan_to_num(sims, neginf=0.0), 0.0) + 1e-3, 0.0)
    wsum = np.maximum(w.sum(axis=1), 1e-12)
    lab = ref_labels[nb]
    rows, cols, sums = _vote_sums(lab, w)  # column 0 = noise, c + 1 = cluster c
    win, top = _row_best(m, rows, cols, sums)
    labels = (win - 1).astype(np.int32)
    confidence = (top / wsum).astype(np.float32)
    real = cols >= 1  # the best real cluster: the same sums without the noise column
    best, _ = _row_best(m, rows[real], cols[real], sums[real])
    suggested = np.where(labels >= 0, labels, best - 1).astype(np.int32)
    xy = (np.einsum("mk,mkc->mc", w, ref_xy[nb]) / wsum[:, None]).astype(np.float32)
    score = ((w * ref_score[nb]).sum(axis=1) / wsum).astype(np.float32)
    return Placement(
        labels=labels, suggested=suggested, xy=xy, outlier_score=score, confidence=confidence
    )


def place_faces(
    result: ClusterResult,
    ref_vectors: np.ndarray,
    new_ids: Sequence[str],
    new_vectors: np.ndarray,
    *,
    k: int = 15,
    pca: object | None = None,
) -> tuple[ClusterResult, Placement]:
    """Append new faces to ``result``: a new :class:`ClusterResult` with M more rows.

    ref_vectors: (N, d) unit vectors of ``result``'s faces (the run's artifacts);
    new_vectors: (M, D) raw features, projected with ``pca`` (a PcaModel) when given.
    New faces already in ``result`` are refused.
    """
    from labeler.cluster.knn import build_index, search
    from labeler.embeddings.store import l2_normalize

    new_ids = np.asarray(list(new_ids), dtype=object).astype(str)
    dup = np.isin(new_ids, result.face_ids)
    if dup.any():
        raise InputError(f"face {new_ids[dup][0]!r} is already in the run; place only new faces")
    Q = pca.transform(new_vectors) if pca is not None else np.asarray(new_vectors, np.float32)  # type: ignore[attr-defined]
    Q = l2_normalize(Q)
    if Q.shape[1] != ref_vectors.shape[1]:
        raise InputError(
            f"new features have {Q.shape[1]} dims, the run's vectors {ref_vectors.shape[1]}; "
            "embed the new faces with the run's feature spec"
        )
    index = build_index(ref_vectors, kind="auto", k=k)
    sims, nbrs = search(index, Q, k)
    placed = place_by_neighbors(result.labels, result.xy, result.outlier_score, nbrs, sims)
    params = dict(result.params)
    params["placed"] = {
        "n_new": int(len(new_ids)),
        "k": int(k),
        "parent": result.params.get("run_id"),
    }
    merged = ClusterResult(
        face_ids=np.concatenate([result.face_ids, new_ids]),
        labels=np.concatenate([result.labels, placed.labels]).astype(np.int32),
        outlier_score=np.concatenate([result.outlier_score, placed.outlier_score]).astype(
            np.float32
        ),
        xy=np.concatenate([result.xy, placed.xy]).astype(np.float32),
        suggested=np.concatenate([result.suggested, placed.suggested]).astype(np.int32),
        params=params,
    )
    return merged, placed


def place_new_faces(
    ws: Workspace, *, feature_spec: str | None = None, run_id: str | None = None, k: int = 15
) -> tuple[str | None, int]:
    """``labeler place``: add faces with features but not in the run; save a new run.

    Old and new faces are loaded together with the run's feature spec and reduced by one
    PCA fitted now, so both sides of the search share one space even when the feature
    pipeline (e.g. ``labeler.features``' per-block PCA) depends on the face set. The old
    faces keep their clusters, map positions and scores; the new ones are voted in.
    Returns ``(new_run_id or None when nothing to place, number placed)``.
    """
    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.reduce import fit_pca
    from labeler.cluster.store import load_artifacts, load_run, save_run
    from labeler.cluster.types import ClusterArtifacts
    from labeler.embeddings.store import l2_normalize
    from labeler.errors import WorkspaceError

    result = load_run(ws, run_id)
    art = load_artifacts(ws, run_id)
    spec = feature_spec or result.params.get("feature_spec") or "auto"
    fids, X, _ = load_cluster_features(ws, spec)
    new = ~np.isin(fids, result.face_ids)
    if not new.any():
        return None, 0
    pos = _pd_index(fids).get_indexer(result.face_ids)
    if (pos < 0).any():
        raise WorkspaceError(
            f"{int((pos < 0).sum())} faces of the run have no features any more; "
            f"re-run 'labeler cluster -w {ws.root}'"
        )
    dims = art.pca.n_components if art.pca is not None else 0
    pca = fit_pca(X, n_components=dims) if dims and dims < X.shape[1] else None
    V = l2_normalize(pca.transform(X) if pca is not None else X)
    merged, _ = place_faces(result, V[pos], fids[new], V[new], k=k)
    artifacts = ClusterArtifacts(
        face_ids=merged.face_ids,
        vectors=np.concatenate([V[pos], V[new]]),
        graph=art.graph,
        graph_rows=art.graph_rows,
        pca=pca,
    )
    new_id = save_run(ws, merged, artifacts=artifacts, parent=result.params.get("run_id"))
    return new_id, int(new.sum())


def _pd_index(values: np.ndarray) -> object:
    import pandas as pd

    return pd.Index(np.asarray(values).astype(str))
