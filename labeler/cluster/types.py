"""The cluster package's shared types: plain frozen dataclasses, numpy only.

Every module of :mod:`labeler.cluster` imports its types from here (and nothing here imports
another module of the package), so the modules form layers without import cycles::

    types  <-  knn, reduce, algorithms  <-  place  <-  run  <-  store  <-  edit
                                                       inputs (features for a run)

:class:`ClusterConfig` (options), :class:`KnnGraph`, :class:`PcaModel`,
:class:`ClusterResult` (one clustering of N faces), :class:`ClusterArtifacts` (what a run
keeps beside it) and :class:`ClusterFit` (both, from :func:`labeler.cluster.run.fit_clusters`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labeler.errors import InputError

ALGORITHMS = ("auto", "ward", "hdbscan", "kmeans")
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class ClusterConfig:
    """Options of a clustering run; ``None`` means "choose from the data" (:func:`resolve_config`).

    algorithm:        auto (= ward) | ward | hdbscan | kmeans
    min_cluster_size: HDBSCAN's smallest cluster
    min_samples:      HDBSCAN's density smoothing (core-distance neighbours)
    n_clusters:       number of groups (k-means' k; for ward None = from the tree and N)
    pca_dims:         PCA dims before the graph (0 = no PCA)
    n_neighbors:      kNN graph size / UMAP's n_neighbors (counting the face itself)
    umap_dims:        dims of the UMAP space Ward / HDBSCAN run in (the map is always 2-D)
    umap_max_points:  UMAP and HDBSCAN run on a seeded sample of at most this many faces;
                      the rest are placed by kNN vote among the sample (0 = no limit)
    umap_epochs:      UMAP optimisation epochs (None = UMAP's default: 500 small, 200 large)
    map_min_dist:     UMAP min_dist of the 2-D map (the cluster space uses 0.0)
    index:            auto | flat | ivf | hnsw (see labeler.cluster.knn)
    seed:             every random choice derives from it; same seed => same labels
    """

    algorithm: str = "auto"
    min_cluster_size: int | None = None
    min_samples: int | None = None
    n_clusters: int | None = None
    pca_dims: int | None = None
    n_neighbors: int | None = None
    umap_dims: int | None = None
    umap_max_points: int | None = None
    umap_epochs: int | None = None
    map_min_dist: float = 0.1
    index: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class KnnGraph:
    """The k-nearest-neighbour graph of N unit vectors.

    indices:   (N, k) int64; column 0 is the point itself, then neighbours by similarity.
    distances: (N, k) float32 cosine distances ``1 - sim`` (0 for the point itself),
               ascending along each row.
    kind:      the FAISS index used (``flat``, ``ivf`` or ``hnsw``).
    """

    indices: np.ndarray
    distances: np.ndarray
    kind: str

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def for_umap(self, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        """``(knn_indices, knn_dists)`` for ``umap.UMAP(precomputed_knn=...)``."""
        return (
            np.ascontiguousarray(self.indices[:, :n_neighbors]),
            np.ascontiguousarray(self.distances[:, :n_neighbors]),
        )


@dataclass(frozen=True)
class PcaModel:
    """A linear projection ``(X - mean) @ components.T``.

    mean: (D,) float32; components: (d, D) float32, rows by decreasing variance;
    explained: (d,) float32 fraction of the sample's variance per component.
    """

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, X: np.ndarray, *, batch: int = 65_536) -> np.ndarray:
        """Project ``X`` (N, D) to (N, d) float32, batch by batch."""
        if X.shape[1] != self.mean.shape[0]:
            raise InputError(
                f"features have {X.shape[1]} dims but the PCA was fitted on {self.mean.shape[0]}; "
                "use the same feature spec as the run, or re-run 'labeler cluster'"
            )
        out = np.empty((X.shape[0], self.n_components), dtype=np.float32)
        for start in range(0, X.shape[0], batch):
            block = np.asarray(X[start : start + batch], dtype=np.float32) - self.mean
            out[start : start + batch] = block @ self.components.T
        return out


@dataclass(frozen=True)
class ClusterResult:
    """One clustering of N faces.

    face_ids (N,) str; labels (N,) int32 (-1 noise); outlier_score (N,) float32 in [0, 1];
    xy (N, 2) float32 map coordinates; suggested (N,) int32 (nearest real cluster for noise,
    = labels otherwise, -1 when there is no cluster); params: resolved config, timings, notes.
    """

    face_ids: np.ndarray
    labels: np.ndarray
    outlier_score: np.ndarray
    xy: np.ndarray
    suggested: np.ndarray
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.face_ids)
        for name in ("labels", "outlier_score", "xy", "suggested"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"ClusterResult.{name} has {len(getattr(self, name))} rows for {n} face ids"
                )

    @property
    def n_clusters(self) -> int:
        """Distinct real clusters (noise not counted; ids may have gaps after a merge)."""
        labels = np.asarray(self.labels)
        return int(len(np.unique(labels[labels >= 0])))


@dataclass(frozen=True)
class ClusterArtifacts:
    """What a run keeps beside its result, for placement, search and edits.

    face_ids: (N,) str, the result's order; vectors: (N, d) float32 unit vectors the graph
    was built on (PCA-reduced when ``pca`` is set); graph: the kNN graph of the faces UMAP
    saw (``graph_rows`` (M,) their row numbers, all rows unless sampled); pca: the fitted
    projection or None.
    """

    face_ids: np.ndarray
    vectors: np.ndarray
    graph: KnnGraph
    graph_rows: np.ndarray
    pca: PcaModel | None = None


@dataclass(frozen=True)
class ClusterFit:
    """What :func:`labeler.cluster.run.fit_clusters` returns: the result, the artifacts to
    save with it (:func:`labeler.cluster.store.save_run`) and seconds per step."""

    result: ClusterResult
    artifacts: ClusterArtifacts
    timings: dict = field(default_factory=dict)
