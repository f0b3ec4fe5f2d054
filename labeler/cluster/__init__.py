"""Clustering: FAISS kNN graph, UMAP map, Ward tree / HDBSCAN / k-means, saved runs, edits, placement.

Functional core on arrays (``fit_clusters``, ``knn_graph``, ``split_labels``...) and the
workspace-level helpers the CLI and the app call (``save_run``, ``load_run``,
``split_cluster``, ``merge_clusters``, ``place_new_faces``, ``knn_search``). Importing this
package imports numpy/pandas only; faiss, umap and hdbscan load on first use. The shared
types are in :mod:`labeler.cluster.types` (the modules' layers are drawn there).
"""

from __future__ import annotations

from labeler.cluster.store import (
    cluster_table,
    current_run_id,
    list_runs,
    load_artifacts,
    load_run,
    save_run,
    set_current,
)
from labeler.cluster.types import ClusterArtifacts, ClusterConfig, ClusterResult

__all__ = [
    "ClusterArtifacts",
    "ClusterConfig",
    "ClusterResult",
    "cluster_table",
    "current_run_id",
    "list_runs",
    "load_artifacts",
    "load_run",
    "save_run",
    "set_current",
    "cluster_embeddings",
    "fit_clusters",
    "knn_search",
    "KnnIndex",
    "split_cluster",
    "merge_clusters",
    "place_new_faces",
]


def __getattr__(name: str) -> object:
    """Lazy access to the heavier modules' public names."""
    import importlib

    homes = {
        "cluster_embeddings": "run",
        "fit_clusters": "run",
        "knn_search": "knn",
        "KnnIndex": "knn",
        "split_cluster": "edit",
        "merge_clusters": "edit",
        "place_new_faces": "place",
    }
    if name in homes:
        return getattr(importlib.import_module(f"labeler.cluster.{homes[name]}"), name)
    raise AttributeError(f"module 'labeler.cluster' has no attribute {name!r}")
