"""One clustering run: PCA -> FAISS kNN graph -> UMAP (cluster space + 2-D map) -> HDBSCAN.

:func:`fit_clusters` is the functional core (arrays in, :class:`ClusterFit` out);
:func:`cluster_embeddings` returns only the :class:`ClusterResult`. ``labeler cluster``
calls these and :func:`labeler.cluster.store.save_run`. Each phase is logged (INFO) as it
ends, with its seconds and its place among the planned ones (:class:`PhaseClock`,
:func:`fit_phases`): ``cluster: umap_cluster_space 18.2 s (4/7)``. The types (``ClusterConfig``,
``ClusterArtifacts``, ``ClusterFit``...) live in :mod:`labeler.cluster.types` and
:func:`load_cluster_features` in :mod:`labeler.cluster.inputs`; both are re-exported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np

from labeler.cluster.algorithms import (
    OUTLIER_RATIO,
    hdbscan_cluster,
    kmeans_cluster,
    knn_outlier_scores,
    suggest_clusters,
    ward_cluster,
)
from labeler.cluster.inputs import load_cluster_features
from labeler.cluster.knn import build_index, knn_graph, search
from labeler.cluster.place import place_by_neighbors
from labeler.cluster.reduce import fit_pca, pca_map, umap_embed
from labeler.cluster.types import (
    ALGORITHMS,
    INDEX_KINDS,
    ClusterArtifacts,
    ClusterConfig,
    ClusterFit,
    ClusterResult,
)
from labeler.embeddings.store import l2_normalize
from labeler.errors import InputError

log = logging.getLogger(__name__)

#: Below this many faces UMAP is skipped (PCA map; clustering on the unit vectors).
SMALL_N = 20


def resolve_config(n: int, d: int, config: ClusterConfig = ClusterConfig()) -> ClusterConfig:
    """Fill every ``None``/``auto`` of ``config`` from N faces of D dims. The rules:

    * ``algorithm``: ``ward`` (:func:`labeler.cluster.algorithms.ward_cluster`: a Ward tree
      in the UMAP space cut into groups of about ``GROUP_SIZE`` = 120 faces, never fewer than
      the tree's natural level, never a group over 480; every face in a group, outliers
      shown last). ``hdbscan`` (density clusters, noise kept apart as -1) and ``kmeans`` (a
      fixed k) when asked. Chosen on labeling effort (bench/EFFORT.md, "Default grouping").
    * ``min_cluster_size = clip(round(N / 200), 5, 1000)``: 5 up to 1,000 faces, 665 at
      133k, 1,000 from 200k on (so at most ~200 clusters; sub-clusters come from splitting).
      ``min_samples = min(10, min_cluster_size)`` (few faces pushed to noise).
    * ``n_clusters``: k-means: ``clip(round(sqrt(N / 2)), 2, 200)``; ward: ``None`` (from
      the tree and N) unless given.
    * ``pca_dims = 64`` when D > 64 and N > 64, else 0 (off); PCA is fitted on <= 20k rows.
    * ``n_neighbors = min(15, N - 1)`` (UMAP's default; includes the face itself).
    * ``umap_dims = min(10, N - 2)`` for the cluster space (2 for the map).
    * ``umap_max_points = 20,000``: seeded UMAP is single-threaded (~1.5 s per 1,000 faces
      per embedding at 200 epochs on one core); beyond that a seeded sample is embedded and
      clustered and the other faces are placed by a kNN vote among the sample (keeps 133k
      within two minutes on 2 cores and a million faces bounded in time and memory).
    * ``umap_epochs``: UMAP's own default (500) up to 2,000 faces, 200 above.
    * ``index`` stays ``auto`` = per search: exact ``flat`` over fewer than 50,000 faces,
      ``ivf`` above (deterministic); the kind used is saved as ``index_used``.
    """
    if config.algorithm not in ALGORITHMS:
        raise InputError(f"algorithm {config.algorithm!r} is not one of {ALGORITHMS}")
    if config.index not in INDEX_KINDS:
        raise InputError(f"index {config.index!r} is not one of {INDEX_KINDS}")
    mcs = config.min_cluster_size or int(np.clip(round(n / 200), 5, 1000))
    alg = "ward" if config.algorithm == "auto" else config.algorithm
    return replace(
        config,
        algorithm=alg,
        min_cluster_size=int(mcs),
        min_samples=int(config.min_samples or min(10, mcs)),
        n_clusters=(
            config.n_clusters
            if alg == "ward"
            else int(config.n_clusters or np.clip(round(np.sqrt(max(n, 1) / 2)), 2, 200))
        ),
        pca_dims=int(
            (64 if d > 64 and n > 64 else 0) if config.pca_dims is None else config.pca_dims
        ),
        n_neighbors=int(max(1, min(config.n_neighbors or 15, n - 1))),
        umap_dims=int(max(2, min(config.umap_dims or 10, n - 2))),
        umap_max_points=int(20_000 if config.umap_max_points is None else config.umap_max_points),
        umap_epochs=int(config.umap_epochs or (500 if n <= 2000 else 200)),
    )


def _small(n: int, cfg: ClusterConfig) -> bool:
    """Too few faces for UMAP (and for HDBSCAN's smallest cluster): one group (or k-means)."""
    return n < SMALL_N or (cfg.algorithm == "hdbscan" and n < (cfg.min_cluster_size or 0))


def fit_phases(
    n: int, d: int, config: ClusterConfig = ClusterConfig(), *, identical: bool = False
) -> tuple[str, ...]:
    """The phases :func:`fit_clusters` runs on N faces of D dims, in order (the keys of its
    ``timings``). ``identical``: every vector is the same (known only after the PCA), which
    leaves one group and no UMAP.

    >>> fit_phases(2009, 1280)
    ('pca', 'knn_graph', 'umap_cluster_space', 'cluster', 'umap_map')
    >>> fit_phases(10, 1280)
    ('pca', 'knn_graph', 'cluster')
    """
    cfg = resolve_config(n, d, config)
    if identical or _small(n, cfg):
        middle: tuple[str, ...] = ("cluster",)
    elif cfg.algorithm in ("hdbscan", "ward"):
        middle = ("umap_cluster_space", "cluster", "umap_map")
    else:
        middle = ("cluster", "umap_map")
    rest = ("place_rest",) if cfg.umap_max_points and n > cfg.umap_max_points else ()
    return ("pca", "knn_graph", *middle, *rest)


class PhaseClock:
    """Times the consecutive phases of one clustering run and logs each as it ends (INFO on
    this module's logger), with its seconds and its place among the ``planned`` phases:
    ``cluster: umap_cluster_space 18.2 s (4/7)``. The run's one timer: :func:`fit_clusters`
    keeps what it returns as ``timings``; ``labeler cluster`` passes its own clock, whose
    ``planned`` also counts its feature assembly before the fit and the save after it."""

    def __init__(self, planned: int = 0) -> None:
        self.planned = planned
        self.done = 0
        self._t0 = time.perf_counter()

    def tick(self, phase: str, note: str = "") -> float:
        """End ``phase`` now: log it (``note``, if any, after it) and return its seconds."""
        now = time.perf_counter()
        seconds, self._t0 = now - self._t0, now
        self.done += 1
        log.info(
            "cluster: %s %.1f s (%d/%d)%s",
            phase,
            seconds,
            self.done,
            max(self.planned, self.done),
            f" - {note}" if note else "",
        )
        return seconds


def _single_group(
    face_ids: np.ndarray, V: np.ndarray, params: dict, note: str
) -> tuple[np.ndarray, ...]:
    n = len(face_ids)
    labels = np.zeros(n, dtype=np.int32)
    if n:
        cent = V.mean(axis=0)
        d = 1.0 - V @ (cent / max(float(np.linalg.norm(cent)), 1e-12))
        med = float(np.median(d))
        score = np.where(d > med + 1e-6, 1.0 - med / np.maximum(d, 1e-12), 0.0).astype(np.float32)
    else:
        score = np.zeros(0, np.float32)
    params.setdefault("notes", []).append(note)
    log.info(note)
    return labels, score


def _page_sized(
    V: np.ndarray, labels: np.ndarray, sugg: np.ndarray, params: dict
) -> tuple[np.ndarray, np.ndarray]:
    """The Ward groups after the faces outside UMAP's sample were placed: a group the votes
    made bigger than :data:`~labeler.cluster.algorithms.MAX_GROUP` faces is cut along its main
    axis (the sample's groups obey the bound; their neighbours need not split evenly).
    Returns labels numbered by size again (also when nothing was cut) and the suggestions
    renumbered alike."""
    from labeler.cluster.algorithms import MAX_GROUP, relabel_by_size, split_oversized

    split = split_oversized(V, labels, max_group=MAX_GROUP)
    changed = split != labels
    if changed.any():
        params["n_split_after_placing"] = int(len(np.unique(labels[changed])))
    # numbered by size again even when nothing was cut: the placed faces change the sizes
    # (a group of 479 placed after one of 324 kept its smaller number)
    new = relabel_by_size(split)
    ids, first = np.unique(split, return_index=True)
    sugg = np.where(changed, split, sugg)
    ok = sugg >= 0
    sugg[ok] = new[first][np.searchsorted(ids, sugg[ok])]
    return new.astype(np.int32), sugg.astype(np.int32)


def _groups_note(method: str, labels: np.ndarray) -> str:
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    return f"{method}, {k} group{'s' * (k != 1)}"


def fit_clusters(
    face_ids: Sequence[str],
    X: np.ndarray,
    *,
    config: ClusterConfig = ClusterConfig(),
    feature_spec: str = "",
    clock: PhaseClock | None = None,
) -> ClusterFit:
    """Cluster faces ``X`` (N, D) (any float dtype, memmap ok) into a :class:`ClusterFit`.

    Steps: PCA (``config.pca_dims``) -> L2-normalise -> FAISS cosine kNN graph (once) ->
    UMAP to ``umap_dims`` (min_dist 0) and to 2-D (``map_min_dist``) on that graph ->
    HDBSCAN in the UMAP space (or spherical k-means on the unit vectors) -> GLOSH outlier
    scores -> a nearest-cluster suggestion for noise. Beyond ``umap_max_points`` faces the
    UMAP/HDBSCAN part runs on a seeded sample and the rest are placed by kNN vote.

    Degenerate inputs never raise: 0 faces give an empty result; fewer than
    ``max(SMALL_N, min_cluster_size)`` faces (for HDBSCAN) or all-identical vectors give one
    group (cluster 0) with distance-based outlier scores; HDBSCAN finding no cluster is
    retried with ``allow_single_cluster``.

    Each phase (:func:`fit_phases`) is logged as it ends on ``clock``, a :class:`PhaseClock`
    whose ``planned`` counts ``fit_phases(N, D, config)`` and whatever the caller adds (None:
    a clock of this fit's phases).

    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(300, n_features=32, centers=3, random_state=0)
    >>> fit = fit_clusters([str(i) for i in range(300)], X)
    >>> int(fit.result.labels.max()) + 1
    3
    """
    face_ids = np.asarray(list(face_ids), dtype=object)
    if X.ndim != 2 or X.shape[0] != len(face_ids):
        raise ValueError(
            f"X has shape {X.shape} but there are {len(face_ids)} face ids; pass (N, D) features, one row per face"
        )
    n, d = X.shape
    cfg = resolve_config(n, d, config)
    clk = clock if clock is not None else PhaseClock(len(fit_phases(n, d, cfg)))
    timings: dict[str, float] = {}

    def tick(name: str, note: str = "") -> None:
        timings[name] = round(clk.tick(name, note), 3)

    params: dict = {
        "config": asdict(cfg),
        "feature_spec": feature_spec,
        "n_faces": int(n),
        "dims_in": int(d),
        "notes": [],
    }
    seed = cfg.seed

    pca = None
    if cfg.pca_dims and cfg.pca_dims < d:
        pca = fit_pca(X, n_components=cfg.pca_dims, seed=seed)
        V = l2_normalize(pca.transform(X))
        params["pca_explained"] = round(float(pca.explained.sum()), 4)
    else:
        V = l2_normalize(X)
    identical = n > 0 and all(
        bool(np.abs(V[i : i + 65_536] - V[:1]).max() < 1e-6) for i in range(0, n, 65_536)
    )
    if identical:  # one group, no UMAP: fewer phases than planned
        clk.planned -= len(fit_phases(n, d, cfg)) - len(fit_phases(n, d, cfg, identical=True))
    tick("pca", f"{cfg.pca_dims} dims" if pca is not None else "off")

    rng = np.random.default_rng(seed)
    small = _small(n, cfg)
    if cfg.umap_max_points and n > cfg.umap_max_points:
        fit_rows = np.sort(rng.choice(n, cfg.umap_max_points, replace=False))
    else:
        fit_rows = np.arange(n)
    Vf = V[fit_rows]
    graph = knn_graph(Vf, k=max(cfg.n_neighbors + 1, 2) if n > 1 else 1, kind=cfg.index, seed=seed)
    params["index_used"] = graph.kind
    tick("knn_graph", f"{graph.kind}, k={graph.k}")

    m = len(fit_rows)
    xy_f = np.zeros((m, 2), np.float32)
    if identical or small:
        E = Vf
        if cfg.algorithm == "kmeans" and not identical and n >= 2:
            labels_f, score_f = kmeans_cluster(Vf, n_clusters=cfg.n_clusters, seed=seed)
            note = _groups_note("kmeans", labels_f)
        else:
            note = "one group"
            why = (
                "all vectors are identical"
                if identical
                else f"only {n} faces (< {max(SMALL_N, cfg.min_cluster_size) if cfg.algorithm == 'hdbscan' else SMALL_N})"
            )
            labels_f, score_f = _single_group(face_ids, Vf, params, f"one group: {why}")
        if not identical:
            xy_f = pca_map(Vf, seed=seed)
        tick("cluster", note)
    else:
        if cfg.algorithm in ("hdbscan", "ward"):
            E = umap_embed(
                Vf,
                graph,
                n_components=cfg.umap_dims,
                n_neighbors=cfg.n_neighbors,
                min_dist=0.0,
                seed=seed,
                n_epochs=cfg.umap_epochs,
            )
            tick("umap_cluster_space")
        if cfg.algorithm == "ward":
            labels_f, score_f, params["ward"] = ward_cluster(
                E, Vf, n_clusters=cfg.n_clusters, n_total=n, seed=seed
            )
        elif cfg.algorithm == "hdbscan":
            # a sample holds m/n of each cluster: scale the size threshold with it
            mcs_fit = int(max(2, round(cfg.min_cluster_size * m / n)))
            params["min_cluster_size_fitted"] = mcs_fit
            labels_f, score_f = hdbscan_cluster(
                E, min_cluster_size=mcs_fit, min_samples=cfg.min_samples
            )
            if not (labels_f >= 0).any():
                labels_f, score_f = hdbscan_cluster(
                    E,
                    min_cluster_size=mcs_fit,
                    min_samples=cfg.min_samples,
                    allow_single_cluster=True,
                )
                params["notes"].append(
                    "HDBSCAN found no clusters; retried with allow_single_cluster"
                )
            if not (labels_f >= 0).any():
                labels_f, score_f = _single_group(
                    face_ids, Vf, params, "one group: HDBSCAN found no structure"
                )
        else:
            E = Vf
            labels_f, score_f = kmeans_cluster(Vf, n_clusters=cfg.n_clusters, seed=seed)
        tick("cluster", _groups_note(cfg.algorithm, labels_f))
        xy_f = umap_embed(
            Vf,
            graph,
            n_components=2,
            n_neighbors=cfg.n_neighbors,
            min_dist=cfg.map_min_dist,
            seed=seed,
            n_epochs=cfg.umap_epochs,
        )
        tick("umap_map")

    # LOF-like kNN-distance outliers in the feature space (UMAP hides isolated faces)
    own_f = graph.distances[:, 1:].mean(axis=1) if graph.k > 1 else np.zeros(m, np.float32)
    knn_score_f = (
        knn_outlier_scores(own_f, graph.indices[:, 1:], own_f) if m > 2 else np.zeros(m, np.float32)
    )
    score_f = np.maximum(score_f, knn_score_f)
    if cfg.algorithm == "hdbscan" and not (identical or small):
        isolated = knn_score_f > 1.0 - 1.0 / OUTLIER_RATIO
        params["n_knn_outliers"] = int((isolated & (labels_f >= 0)).sum())
        labels_f = np.where(isolated, -1, labels_f).astype(np.int32)
    nb_sims = 1.0 - graph.distances[:, 1:]
    sugg_f = suggest_clusters(labels_f, graph.indices[:, 1:], nb_sims, E)

    labels = np.empty(n, np.int32)
    score = np.empty(n, np.float32)
    xy = np.empty((n, 2), np.float32)
    sugg = np.empty(n, np.int32)
    labels[fit_rows], score[fit_rows], xy[fit_rows], sugg[fit_rows] = (
        labels_f,
        score_f,
        xy_f,
        sugg_f,
    )
    rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    if rest.size:
        if cfg.algorithm == "kmeans" and not (identical or small):
            # k-means is cheap on everything: assign the rest to the nearest centroid
            from labeler.cluster.algorithms import centroids_of

            cents = l2_normalize(centroids_of(Vf, labels_f))
            sims_c = np.empty(rest.size, np.float32)
            ids_c = np.empty(rest.size, np.int64)
            for s in range(0, rest.size, 65_536):
                blk = V[rest[s : s + 65_536]] @ cents.T
                ids_c[s : s + 65_536] = blk.argmax(1)
                sims_c[s : s + 65_536] = blk.max(1)
        index = build_index(
            Vf,
            kind=cfg.index if cfg.index != "auto" else ("ivf" if rest.size * m > 2e9 else "flat"),
            seed=seed,
            k=cfg.n_neighbors,
        )
        sims, nbrs = search(index, V[rest], cfg.n_neighbors)
        placed = place_by_neighbors(labels_f, xy_f, score_f, nbrs, sims)
        own_r = np.clip(1.0 - np.nan_to_num(sims, neginf=0.0), 0.0, 2.0)
        own_r = own_r.mean(axis=1)
        knn_score_r = knn_outlier_scores(own_r, nbrs, own_f)
        labels[rest], xy[rest] = placed.labels, placed.xy
        score[rest] = np.maximum(placed.outlier_score, knn_score_r)
        if cfg.algorithm == "hdbscan" and not (identical or small):
            labels[rest] = np.where(knn_score_r > 1.0 - 1.0 / OUTLIER_RATIO, -1, labels[rest])
        if cfg.algorithm == "kmeans" and not (identical or small):
            labels[rest] = ids_c.astype(np.int32)
        sugg[rest] = np.where(labels[rest] >= 0, labels[rest], placed.suggested)
        params["n_placed_by_knn"] = int(rest.size)
        if cfg.algorithm == "ward" and not (identical or small):
            labels, sugg = _page_sized(V, labels, sugg, params)
        tick("place_rest", f"{rest.size} faces by kNN vote")

    n_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
    params.update(
        {
            "algorithm": cfg.algorithm,
            "n_clusters": n_clusters,
            "noise_fraction": round(float((labels < 0).mean()), 4) if n else 0.0,
            "n_umap_points": int(m),
            "timings": timings,
        }
    )
    result = ClusterResult(
        face_ids=face_ids.astype(str),
        labels=labels,
        outlier_score=score,
        xy=xy,
        suggested=sugg,
        params=params,
    )
    artifacts = ClusterArtifacts(
        face_ids=result.face_ids, vectors=V, graph=graph, graph_rows=fit_rows, pca=pca
    )
    log.info(
        "clustered %d faces into %d clusters (%.1f%% noise) in %.1f s",
        n,
        n_clusters,
        100 * params["noise_fraction"],
        sum(timings.values()),
    )
    return ClusterFit(result=result, artifacts=artifacts, timings=timings)


def cluster_embeddings(
    face_ids: Sequence[str],
    X: np.ndarray,
    *,
    config: ClusterConfig = ClusterConfig(),
    **overrides: object,
) -> ClusterResult:
    """:func:`fit_clusters` returning only the :class:`ClusterResult`; keyword overrides
    replace fields of ``config`` (``cluster_embeddings(ids, X, algorithm="kmeans", n_clusters=8)``).
    """
    return fit_clusters(face_ids, X, config=replace(config, **overrides)).result


__all__ = [
    "ALGORITHMS",
    "SMALL_N",
    "ClusterArtifacts",
    "ClusterConfig",
    "ClusterFit",
    "ClusterResult",
    "PhaseClock",
    "cluster_embeddings",
    "fit_clusters",
    "fit_phases",
    "load_cluster_features",
    "resolve_config",
]
