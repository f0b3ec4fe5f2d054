"""Cosine k-nearest-neighbour graphs and similarity search with FAISS.

All vectors are L2-normalised first, so the inner product is the cosine similarity and the
distance handed to UMAP is ``1 - cosine`` (in ``[0, 2]``). The graph is built once per
cluster run and reused by UMAP (``precomputed_knn``), by the noise-to-cluster suggestions,
and, through :class:`KnnIndex`, by "more like this" search in the app.

Index choice (``kind="auto"``, see :func:`choose_index_kind`):

* ``flat``  exact ``IndexFlatIP``; used below 50,000 vectors, where it takes seconds.
* ``ivf``   ``IndexIVFFlat`` with ``nlist = min(4 sqrt(N), N / 40)`` lists trained on a seeded sample
  and ``nprobe = 16``; used from 50,000 vectors. Deterministic for a seed (unlike a
  multi-threaded HNSW build), recall@15 about 0.97 on clustered data.
* ``hnsw``  ``IndexHNSWFlat`` (M=32, efConstruction=64, efSearch=max(64, 2k)); higher
  recall, slower to build, not bit-reproducible across thread counts.

A GPU is used for ``flat`` and ``ivf`` when ``faiss.get_num_gpus() > 0`` (faiss-gpu).

``KnnGraph`` and ``INDEX_KINDS`` live in :mod:`labeler.cluster.types` (re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from labeler.cluster.types import INDEX_KINDS, KnnGraph
from labeler.embeddings.store import l2_normalize
from labeler.errors import InputError, UnknownKeyError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

EXACT_MAX_N = 50_000


def choose_index_kind(n: int) -> str:
    """``flat`` (exact) below :data:`EXACT_MAX_N` vectors, else ``ivf``."""
    return "flat" if n < EXACT_MAX_N else "ivf"


def _faiss() -> Any:
    from labeler._deps import require

    return require("faiss", purpose="nearest-neighbour search (pip install faiss-cpu)")


def _to_gpu(faiss: Any, index: Any) -> Any:
    try:
        if faiss.get_num_gpus() > 0:
            return faiss.index_cpu_to_all_gpus(index)
    except (AttributeError, RuntimeError) as exc:  # faiss-cpu, or a GPU that refuses
        log.info("FAISS GPU unavailable (%s); searching on the CPU", exc)
    return index


def build_index(V: np.ndarray, *, kind: str = "auto", seed: int = 0, k: int = 15) -> Any:
    """A FAISS inner-product index over unit vectors ``V`` (N, d) float32.

    ``kind``: one of ``auto | flat | ivf | hnsw`` (module docstring); ``k`` only tunes
    HNSW's ``efSearch``. IVF falls back to ``flat`` when N is too small to train it.
    """
    return _build(V, kind=kind, seed=seed, k=k)[0]


def _build(V: np.ndarray, *, kind: str, seed: int = 0, k: int = 15) -> tuple[Any, str]:
    faiss = _faiss()
    if kind not in INDEX_KINDS:
        raise InputError(f"index kind {kind!r} is not one of {INDEX_KINDS}")
    V = np.ascontiguousarray(V, dtype=np.float32)
    n, d = V.shape
    kind = choose_index_kind(n) if kind == "auto" else kind
    if kind == "ivf":
        nlist = int(min(4 * np.sqrt(n), n // 40))  # >= 40 training points per list
        if nlist < 4:
            kind = "flat"
    if kind == "flat":
        index = _to_gpu(faiss, faiss.IndexFlatIP(d))
        index.add(V)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        rng = np.random.default_rng(seed)
        n_train = min(n, 40 * nlist)
        train = V if n_train == n else V[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(train)
        index.add(V)
        index.nprobe = min(16, nlist)
        index = _to_gpu(faiss, index)
    else:  # hnsw
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(V)
        index.hnsw.efSearch = max(64, 2 * k)
    return index, kind


def search(
    index: Any, Q: np.ndarray, k: int, *, batch: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by cosine for unit queries ``Q`` (M, d): ``(sims (M,k) f32, ids (M,k) i64)``.

    Missing neighbours (an IVF probe that found fewer than k) come back as id -1, sim -inf.
    """
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    k = int(min(k, index.ntotal))
    sims = np.empty((Q.shape[0], k), dtype=np.float32)
    ids = np.empty((Q.shape[0], k), dtype=np.int64)
    for start in range(0, Q.shape[0], batch):
        s, i = index.search(Q[start : start + batch], k)
        sims[start : start + batch] = s
        ids[start : start + batch] = i
    sims[ids < 0] = -np.inf
    return sims, ids


def _self_first(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each row's own id in column 0 (duplicates may push it elsewhere or out)."""
    n, k = ids.shape
    rows = np.arange(n)
    is_self = ids == rows[:, None]
    has_self = is_self.any(axis=1)
    pos = np.where(has_self, is_self.argmax(axis=1), k - 1)
    # shift columns [0, pos) right by one, place self at 0
    col = np.arange(k)[None, :]
    src = np.where(col == 0, pos[:, None], np.where(col <= pos[:, None], col - 1, col))
    ids = np.take_along_axis(ids, src, axis=1)
    sims = np.take_along_axis(sims, src, axis=1)
    ids[:, 0] = rows
    sims[:, 0] = 1.0
    return sims, ids


def knn_graph(V: np.ndarray, *, k: int = 15, kind: str = "auto", seed: int = 0) -> KnnGraph:
    """The cosine kNN graph of unit vectors ``V`` (N, d): each row lists itself first.

    ``k`` counts the point itself (UMAP's convention) and is capped at N. Rows where an
    approximate index returned fewer than ``k`` hits are redone exactly.

    >>> g = knn_graph(l2_normalize(np.random.rand(100, 8)), k=5)
    >>> g.indices.shape, bool((g.indices[:, 0] == np.arange(100)).all())
    ((100, 5), True)
    """
    V = np.ascontiguousarray(V, dtype=np.float32)
    n = V.shape[0]
    if n == 0:
        return KnnGraph(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), "flat")
    k = int(max(1, min(k, n)))
    index, used = _build(V, kind=kind, seed=seed, k=k)
    sims, ids = search(index, V, k)
    bad = np.flatnonzero((ids < 0).any(axis=1))
    if bad.size:
        log.info(
            "redoing %d rows of the kNN graph exactly (approximate index came short)", bad.size
        )
        exact = build_index(V, kind="flat")
        sims[bad], ids[bad] = search(exact, V[bad], k)
    sims, ids = _self_first(sims, ids)
    dists = np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)
    # keep rows ascending (ties and float noise from approximate search)
    order = np.argsort(dists[:, 1:], axis=1, kind="stable")
    dists[:, 1:] = np.take_along_axis(dists[:, 1:], order, axis=1)
    ids[:, 1:] = np.take_along_axis(ids[:, 1:], order, axis=1)
    return KnnGraph(indices=ids, distances=dists, kind=used)


@dataclass(frozen=True)
class KnnIndex:
    """A searchable set of faces: ids (N,), unit vectors (N, d) and a FAISS index.

    Build from arrays with :meth:`build` or from a saved cluster run with :meth:`from_run`
    (the run's PCA-reduced, normalised vectors). Cheap to keep in ``st.cache_resource``.
    """

    face_ids: np.ndarray
    vectors: np.ndarray
    index: Any

    @classmethod
    def build(
        cls, face_ids: Sequence[str], V: np.ndarray, *, kind: str = "auto", seed: int = 0
    ) -> KnnIndex:
        V = l2_normalize(V)
        if len(face_ids) != V.shape[0]:
            raise ValueError(
                f"{len(face_ids)} face ids for {V.shape[0]} vectors; pass one id per row"
            )
        return cls(np.asarray(face_ids, dtype=object), V, build_index(V, kind=kind, seed=seed))

    @classmethod
    def from_run(cls, ws: Workspace, run_id: str | None = None) -> KnnIndex:
        from labeler.cluster.store import load_artifacts

        art = load_artifacts(ws, run_id)
        return cls.build(art.face_ids, art.vectors)

    def position(self, face_ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``face_ids``; raises naming the first unknown id."""
        import pandas as pd

        pos = pd.Index(self.face_ids).get_indexer(pd.Index(list(face_ids)))
        if (pos < 0).any():
            missing = list(face_ids)[int(np.flatnonzero(pos < 0)[0])]
            raise UnknownKeyError(
                f"face {missing!r} is not in this index; re-run 'labeler cluster' or 'labeler place'"
            )
        return pos

    def search_vectors(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(sims (M,k), rows (M,k))`` for raw query vectors in this index's space."""
        return search(self.index, l2_normalize(np.atleast_2d(Q)), k)


def knn_search(
    source: Workspace | KnnIndex,
    query_ids: Sequence[str],
    k: int = 50,
    *,
    run_id: str | None = None,
) -> pd.DataFrame:
    """ "More like this": the ``k`` faces most similar to a selection of faces.

    ``source`` is a :class:`KnnIndex` or a workspace (its current, or ``run_id``, cluster
    run). One query id searches around that face; several search around the normalised
    mean of their vectors. The query faces themselves are left out.

    Returns a DataFrame ``face_id, similarity (cosine, float32), rank (0 = most similar)``.
    """
    import pandas as pd

    index = source if isinstance(source, KnnIndex) else KnnIndex.from_run(source, run_id)
    query_ids = list(query_ids)
    if not query_ids:
        return pd.DataFrame(
            {"face_id": [], "similarity": np.zeros(0, np.float32), "rank": np.zeros(0, np.int64)}
        )
    pos = index.position(query_ids)
    q = index.vectors[pos].mean(axis=0, keepdims=True)
    sims, rows = index.search_vectors(q, k + len(pos))
    keep = (rows[0] >= 0) & ~np.isin(rows[0], pos)
    rows, sims = rows[0][keep][:k], sims[0][keep][:k]
    return pd.DataFrame(
        {
            "face_id": index.face_ids[rows].astype(str),
            "similarity": sims.astype(np.float32),
            "rank": np.arange(len(rows)),
        }
    )
