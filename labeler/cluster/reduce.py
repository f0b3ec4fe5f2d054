"""Dimension reduction: PCA fitted on a sample (streams any size), UMAP on a kNN graph.

PCA is fitted from the covariance of at most ``max_fit_rows`` seeded rows (eigh of a D x D
matrix), then applied in batches, so a float16 memmap of a million faces never becomes one
float64 copy. UMAP always receives the precomputed FAISS graph (no second kNN search).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from labeler.cluster.types import KnnGraph, PcaModel

log = logging.getLogger(__name__)


def fit_pca(
    X: np.ndarray, *, n_components: int, seed: int = 0, max_fit_rows: int = 20_000
) -> PcaModel:
    """Fit a PCA of ``X`` (N, D) to ``n_components`` dims on at most ``max_fit_rows`` rows.

    Not whitened. The sample is seeded and sorted (memmap friendly); 20,000 rows estimate
    64 leading directions of a 1,280-d embedding well. Randomized SVD (sklearn, seeded, signs
    fixed by ``svd_flip``) takes about a second there.

    >>> m = fit_pca(np.random.rand(500, 32), n_components=4)
    >>> m.transform(np.random.rand(3, 32)).shape
    (3, 4)
    """
    from sklearn.utils.extmath import randomized_svd

    n, d = X.shape
    n_components = int(max(1, min(n_components, d, n)))
    rng = np.random.default_rng(seed)
    rows = (
        np.arange(n) if n <= max_fit_rows else np.sort(rng.choice(n, max_fit_rows, replace=False))
    )
    S = np.asarray(X[rows], dtype=np.float32)
    mean = S.astype(np.float64).mean(axis=0)
    S = S - mean.astype(np.float32)
    total = float((S.astype(np.float64) ** 2).sum()) or 1.0
    # randomized SVD: O(n d k) GEMMs, no D x D eigendecomposition (slow on busy cores)
    _, sv, comps = randomized_svd(S, n_components, n_iter=5, random_state=seed)
    explained = sv.astype(np.float64) ** 2 / total
    return PcaModel(mean.astype(np.float32), comps.astype(np.float32), explained.astype(np.float32))


def umap_embed(
    V: np.ndarray,
    graph: KnnGraph,
    *,
    n_components: int,
    n_neighbors: int,
    min_dist: float = 0.1,
    seed: int = 0,
    n_epochs: int | None = None,
    init: str | np.ndarray = "spectral",
) -> np.ndarray:
    """UMAP of unit vectors ``V`` (N, d) to (N, n_components) float32 on a precomputed graph.

    ``graph`` must have at least ``n_neighbors`` columns (itself first). Seeded, so UMAP runs
    its optimisation single-threaded and the output is reproducible. Needs N > n_components + 1;
    smaller inputs are handled by the caller (``labeler.cluster.run``).
    """
    from labeler._deps import require

    umap = require("umap", purpose="the cluster map (pip install umap-learn)")
    n = V.shape[0]
    n_neighbors = int(min(n_neighbors, graph.k))
    knn = graph.for_umap(n_neighbors)
    model = umap.UMAP(
        n_neighbors=n_neighbors,
        n_components=n_components,
        metric="cosine",
        min_dist=min_dist,
        random_state=seed,
        n_epochs=n_epochs,
        init=init,
        precomputed_knn=knn,
        transform_mode="embedding",
    )
    with warnings.catch_warnings():
        # seeded => single-threaded; no NNDescent object => no transform(): both expected here
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*disconnected.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        E = model.fit_transform(np.ascontiguousarray(V, dtype=np.float32))
    E = np.asarray(E, dtype=np.float32)
    if not np.isfinite(E).all():  # UMAP leaves NaN for points with no usable neighbours
        bad = ~np.isfinite(E).all(axis=1)
        log.info(
            "UMAP gave %d non-finite rows; placing them at their neighbours' mean", int(bad.sum())
        )
        E[bad] = np.nanmean(np.where(np.isfinite(E), E, np.nan), axis=0)
        E = np.nan_to_num(E)
    log.debug("UMAP %d points -> %d dims", n, n_components)
    return E


def pca_map(V: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A 2-D map of few points: the first two principal axes, zero-padded (N, 2) float32."""
    n = V.shape[0]
    out = np.zeros((n, 2), dtype=np.float32)
    if n < 2:
        return out
    m = fit_pca(V, n_components=2, seed=seed)
    Z = m.transform(V)
    out[:, : Z.shape[1]] = Z
    return out
