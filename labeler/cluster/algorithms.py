"""Clustering algorithms on arrays, plus the per-face and per-cluster summaries.

* :func:`hdbscan_cluster` - HDBSCAN (the Cython ``hdbscan``) with GLOSH outlier scores
  computed from the condensed tree.
* :func:`kmeans_cluster` - spherical FAISS k-means with a distance-based outlier score.
* :func:`suggest_clusters` - for noise points, the nearest real cluster (kNN vote, else
  nearest centroid).
* :func:`cluster_summary` - size, medoids and cohesion of each cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

N_MEDOIDS = 8


def glosh_scores(tree: np.ndarray, n_points: int) -> np.ndarray:
    """GLOSH outlier scores (N,) in [0, 1] from an HDBSCAN condensed tree.

    ``tree`` is the record array (parent, child, lambda_val, child_size) of hdbscan's
    ``condensed_tree_.to_numpy()``. Score = (lambda_max of the point's cluster subtree - lambda at which the
    point left) / lambda_max (Campello et al. 2015). Infinite lambdas (exact duplicates) and
    empty trees give 0.
    """
    scores = np.zeros(n_points, dtype=np.float64)
    if len(tree) == 0:
        return scores.astype(np.float32)
    parent = np.asarray(tree["parent"], dtype=np.int64)
    child = np.asarray(tree["child"], dtype=np.int64)
    lam = np.asarray(tree["lambda_val"], dtype=np.float64)
    root = int(parent.min())
    deaths = np.zeros(int(max(parent.max(), child.max())) + 1, dtype=np.float64)
    np.maximum.at(deaths, parent, lam)
    for row in np.flatnonzero(child >= root)[::-1]:  # children of a cluster come after it
        if deaths[child[row]] > deaths[parent[row]]:
            deaths[parent[row]] = deaths[child[row]]
    points = child < root
    lam_max = deaths[parent[points]]
    lam_pt = lam[points]
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (lam_max - lam_pt) / lam_max
    s[~np.isfinite(s) | (lam_max == 0) | ~np.isfinite(lam_pt)] = 0.0
    scores[child[points]] = np.clip(s, 0.0, 1.0)
    return scores.astype(np.float32)


def hdbscan_cluster(
    E: np.ndarray, *, min_cluster_size: int, min_samples: int, allow_single_cluster: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN of ``E`` (N, c) in euclidean space: ``(labels (N,) int32, outlier (N,) f32)``.

    Labels are renumbered by decreasing cluster size (0 = biggest), -1 = noise; outlier
    scores are GLOSH. Deterministic. The Cython ``hdbscan`` is the one HDBSCAN library:
    measured against numba's ``fast_hdbscan`` in fresh processes, it was as fast or faster
    from 113 to 133,000 points and needs no JIT, which cost fast_hdbscan 40-70 s whenever
    its numba cache was empty (bench/results/hdbscan_choice.md).
    """
    from labeler._deps import require

    hdbscan = require("hdbscan", purpose="--algorithm hdbscan and splitting a cluster")
    E = np.ascontiguousarray(E, dtype=np.float64)
    n = E.shape[0]
    min_cluster_size = int(max(2, min(min_cluster_size, n)))
    min_samples = int(max(1, min(min_samples, n - 1)))
    model = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_samples,
        allow_single_cluster=allow_single_cluster,
    ).fit(E)
    return relabel_by_size(model.labels_), glosh_scores(model.condensed_tree_.to_numpy(), n)


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..C-1 by decreasing size (ties by old id); -1 stays -1."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int32)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    rank = np.empty(len(ids), np.int32)
    rank[np.searchsorted(ids, order)] = np.arange(len(ids), dtype=np.int32)
    keep = labels >= 0
    out[keep] = rank[np.searchsorted(ids, labels[keep])]
    return out


def distance_outlier_scores(V: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Distance-based outlier score in [0, 1) for centroid clusterings.

    ``d`` = cosine distance of a face to its cluster centroid, ``m`` = the cluster's median
    ``d``; score = ``max(0, 1 - m / d)``: 0 for the closer half of each cluster, 0.5 at twice
    the median distance, towards 1 far away. Noise rows (label -1) score 1.
    """
    scores = np.ones(V.shape[0], dtype=np.float32)
    ok = labels >= 0
    if not ok.any():
        return scores
    C = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    d = 1.0 - np.einsum("ij,ij->i", V[ok], C[labels[ok]])
    d = np.maximum(d, 0.0)
    med = np.zeros(len(C))
    for c in np.unique(labels[ok]):
        med[c] = np.median(d[labels[ok] == c])
    m = med[labels[ok]]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(d > m, 1.0 - m / d, 0.0)
    scores[ok] = np.nan_to_num(s, nan=0.0)
    return scores


def kmeans_cluster(
    V: np.ndarray, *, n_clusters: int, seed: int = 0, niter: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical FAISS k-means of unit vectors ``V`` (N, d): ``(labels, outlier)``.

    ``n_clusters`` is capped at N. Labels renumbered by decreasing size; outlier scores from
    :func:`distance_outlier_scores`. Deterministic for a seed.
    """
    from labeler._deps import require

    faiss = require("faiss", purpose="k-means (pip install faiss-cpu)")
    V = np.ascontiguousarray(V, dtype=np.float32)
    n, d = V.shape
    k = int(max(1, min(n_clusters, n)))
    if k == 1:
        labels = np.zeros(n, dtype=np.int32)
        return labels, distance_outlier_scores(V, labels, V.mean(axis=0, keepdims=True))
    km = faiss.Kmeans(
        d, k, niter=niter, seed=int(seed), spherical=True, verbose=False, min_points_per_centroid=1
    )
    km.cp.max_points_per_centroid = max(256, int(np.ceil(n / k)))  # no subsampling surprises
    km.train(V)
    _, assign = km.index.search(V, 1)
    labels = relabel_by_size(assign[:, 0])
    cents = np.zeros((int(labels.max()) + 1, d), dtype=np.float32)
    np.add.at(cents, labels, V)
    return labels, distance_outlier_scores(V, labels, cents)


def centroids_of(E: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean of ``E`` (N, c) per cluster 0..max(labels): (C, c) float32."""
    n_c = int(labels.max()) + 1 if (labels >= 0).any() else 0
    cents = np.zeros((n_c, E.shape[1]), dtype=np.float64)
    counts = np.zeros(n_c)
    ok = labels >= 0
    np.add.at(cents, labels[ok], E[ok])
    np.add.at(counts, labels[ok], 1)
    return (cents / np.maximum(counts, 1)[:, None]).astype(np.float32)


def suggest_clusters(
    labels: np.ndarray, neighbors: np.ndarray, sims: np.ndarray | None, E: np.ndarray
) -> np.ndarray:
    """The nearest real cluster of every face: ``suggested`` (N,) int32.

    Clustered faces keep their cluster. A noise face takes the cluster with the largest
    similarity-weighted vote among its kNN ``neighbors`` (N, k) (``sims`` (N, k) weights, or
    equal weights); when none of its neighbours is clustered, the cluster whose centroid in
    ``E`` (N, c) is nearest. With no clusters at all, -1.
    """
    labels = np.asarray(labels, dtype=np.int32)
    out = labels.copy()
    noise = np.flatnonzero(labels < 0)
    if noise.size == 0 or not (labels >= 0).any():
        return out
    nb = neighbors[noise]
    w = (
        np.ones(nb.shape, dtype=np.float64)
        if sims is None
        else np.maximum(np.asarray(sims[noise], np.float64), 1e-6)
    )
    nb_lab = np.where(nb >= 0, labels[np.maximum(nb, 0)], -1)
    n_c = int(labels.max()) + 1
    votes = np.zeros((noise.size, n_c))
    rows, cols = np.nonzero(nb_lab >= 0)
    np.add.at(votes, (rows, nb_lab[rows, cols]), w[rows, cols])
    has = votes.sum(axis=1) > 0
    out[noise[has]] = votes[has].argmax(axis=1)
    if (~has).any():
        cents = centroids_of(E, labels)
        q = E[noise[~has]]
        d2 = ((q[:, None, :] - cents[None, :, :]) ** 2).sum(-1)
        out[noise[~has]] = d2.argmin(axis=1)
    return out


def cluster_summary(
    face_ids: Sequence[str], V: np.ndarray | None, labels: np.ndarray, xy: np.ndarray
) -> dict:
    """Per-cluster ``cluster, size, medoids, cohesion`` as columns (see store.CLUSTERS_SCHEMA).

    With unit vectors ``V`` (N, d): centroid ``c`` = mean of the members' vectors;
    ``cohesion`` = mean cosine similarity of members to ``c / |c|`` (equals ``|c|``; 1 = all
    identical, near 0 = unrelated); ``medoids`` = up to 8 face ids most similar to it, most
    central first. Without ``V`` the 2-D map is used for medoids and cohesion is NaN. The
    noise group (-1) gets a row too (size, no medoids, its cohesion) when present.
    """
    face_ids = np.asarray(face_ids, dtype=object)
    out: dict[str, list] = {"cluster": [], "size": [], "medoids": [], "cohesion": []}
    if len(labels) == 0:
        return out
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        c = int(labels[members[0]])
        if V is not None:
            cent = V[members].astype(np.float64).mean(axis=0)
            norm = float(np.linalg.norm(cent))
            sim = V[members] @ (cent / max(norm, 1e-12))
            cohesion = float(sim.mean())
            central = members[np.argsort(-sim, kind="stable")]
        else:
            cent2 = xy[members].mean(axis=0)
            central = members[np.argsort(((xy[members] - cent2) ** 2).sum(1), kind="stable")]
            cohesion = float("nan")
        out["cluster"].append(c)
        out["size"].append(len(members))
        out["medoids"].append([] if c < 0 else [str(f) for f in face_ids[central[:N_MEDOIDS]]])
        out["cohesion"].append(cohesion)
    return out


#: A face whose mean kNN distance exceeds this multiple of its neighbours' is an outlier.
OUTLIER_RATIO = 2.0


def knn_outlier_scores(
    own_dist: np.ndarray, neighbors: np.ndarray, ref_dist: np.ndarray
) -> np.ndarray:
    """LOF-like outlier score in [0, 1) from kNN distances in the feature space.

    own_dist: (M,) mean cosine distance of each face to its k nearest neighbours;
    neighbors: (M, k) their row numbers in the reference set (-1 = missing); ref_dist: (N,)
    the same mean distance of every reference face. ``r = own / median(neighbours' own)``
    (a small floor keeps exact duplicates finite); score = ``max(0, 1 - 1 / r)``: 0 when a
    face is as close to its neighbours as they are to theirs, 0.5 at twice as far
    (:data:`OUTLIER_RATIO`), towards 1 for isolated faces. UMAP pulls isolated faces into
    some cluster, so this catches the outliers HDBSCAN in UMAP space cannot see.
    """
    if own_dist.size == 0:
        return np.zeros(0, np.float32)
    nb = np.where(neighbors >= 0, neighbors, 0)
    ref = np.where(neighbors >= 0, ref_dist[nb], np.nan)
    med = np.nanmedian(ref, axis=1) if ref.shape[1] else np.full(len(own_dist), np.nan)
    floor = 0.01 * float(np.median(ref_dist)) + 1e-6
    r = (own_dist + floor) / (np.nan_to_num(med, nan=float(np.median(ref_dist))) + floor)
    return np.clip(1.0 - 1.0 / np.maximum(r, 1e-12), 0.0, 1.0).astype(np.float32)


# --- the default grouping: a Ward tree in the cluster space, cut into page-sized groups ------

#: Faces per group the default grouping aims at (``k = N / GROUP_SIZE``): about a page of 96
#: faces plus the outliers shown after them, so a group is opened, checked and bulk-labeled
#: in one go (bench/EFFORT.md, "Default grouping": 100 / 120 / 150 were measured).
GROUP_SIZE = 120
#: No group is bigger than the app's biggest page: bigger ones are split along the tree.
MAX_GROUP = 480
#: A level of the tree is *natural* when merging it costs this many times the level below
#: (a clear jump in Ward's merge heights): the grouping never has fewer groups than that.
GAP_RATIO = 2.5
#: Natural levels are looked for among the first ``GAP_MAX_K`` levels of the tree.
GAP_MAX_K = 40
#: Up to this many points the tree is exact (scipy's Ward on the points); above, Ward runs on
#: this many k-means micro-clusters weighted by their sizes.
WARD_MAX_POINTS = 4000


def weighted_ward(C: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Ward linkage of points ``C`` (M, c) with weights ``w`` (M,) (e.g. micro-cluster sizes).

    Returns a scipy linkage matrix (M-1, 4): merged ids, height, weight of the union. The
    height follows scipy's ``ward`` (``sqrt(2 * w_a w_b / (w_a + w_b)) * |c_a - c_b|``), so
    with unit weights the tree equals ``scipy.cluster.hierarchy.ward(C)`` (tested). Nearest-
    neighbour chain with Lance-Williams updates: O(M^2) time and memory (M <= a few thousand).
    """
    C = np.asarray(C, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64).copy()
    m = len(C)
    if m < 2:
        return np.zeros((0, 4))
    sq = (C**2).sum(1)
    D = np.maximum(sq[:, None] + sq[None, :] - 2.0 * C @ C.T, 0.0)
    D *= w[:, None] * w[None, :] / (w[:, None] + w[None, :])  # merge cost = 1/2 height^2
    np.fill_diagonal(D, np.inf)
    active = np.ones(m, bool)
    merges: list[tuple[int, int, float, float]] = []
    chain: list[int] = []
    while len(merges) < m - 1:
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        b = int(np.argmin(D[a]))
        if len(chain) > 1 and D[a, chain[-2]] <= D[a, b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            dab = D[a, b]
            wa, wb = w[a], w[b]
            row = ((wa + w) * D[a] + (wb + w) * D[b] - w * dab) / (wa + wb + w)
            row[~active] = np.inf
            D[a] = row
            D[:, a] = row
            D[a, a] = np.inf
            D[b] = np.inf
            D[:, b] = np.inf
            active[b] = False
            w[a] = wa + wb
            merges.append((a, b, float(dab), float(w[a])))
        else:
            chain.append(b)
    # sort by height and give the unions scipy's ids (M, M+1, ...)
    order = np.argsort([mg[2] for mg in merges], kind="stable")
    parent = np.arange(m)
    node = np.arange(m)  # the current linkage id of each union-find root

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    Z = np.zeros((m - 1, 4))
    for t, j in enumerate(order):
        a, b, cost, weight = merges[j]
        ra, rb = find(a), find(b)
        ia, ib = sorted((int(node[ra]), int(node[rb])))
        Z[t] = (ia, ib, np.sqrt(2.0 * cost), weight)
        parent[rb] = ra
        node[ra] = m + t
    return Z


def ward_tree(E: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ward tree of the rows of ``E`` (N, c): ``(Z, leaf)``.

    Z: scipy linkage over L leaves; leaf: (N,) the leaf of each row. Up to
    :data:`WARD_MAX_POINTS` rows the leaves are the rows (exact Ward); above, they are that
    many k-means micro-clusters of ``E`` and Ward weighs each by its size.
    """
    E = np.ascontiguousarray(E, dtype=np.float64)
    n = len(E)
    if n <= WARD_MAX_POINTS:
        from scipy.cluster.hierarchy import ward

        Z = ward(E) if n >= 2 else np.zeros((0, 4))
        return Z, np.arange(n)
    from labeler._deps import require

    faiss = require("faiss", purpose="the grouping's micro-clusters (pip install faiss-cpu)")
    X = E.astype(np.float32)
    km = faiss.Kmeans(X.shape[1], WARD_MAX_POINTS, niter=20, seed=int(seed), verbose=False)
    km.cp.min_points_per_centroid = 1
    km.cp.max_points_per_centroid = int(np.ceil(n / WARD_MAX_POINTS)) + 1
    km.train(X)
    _, leaf = km.index.search(X, 1)
    leaf = np.unique(leaf[:, 0], return_inverse=True)[1].astype(np.int64)
    sizes = np.bincount(leaf).astype(np.float64)
    return weighted_ward(centroids_of(E, leaf), sizes), leaf


def natural_k(Z: np.ndarray, *, ratio: float = GAP_RATIO, k_max: int = GAP_MAX_K) -> int:
    """The finest natural level of a Ward tree: the largest ``k <= k_max`` whose merge into
    ``k - 1`` groups costs ``ratio`` times the merge into ``k`` (1 when there is none).

    Well-separated kinds of faces (masked vs not, at a clear gap) give such a jump; a
    continuum gives none and the size rule decides alone.
    """
    h = np.asarray(Z[::-1, 2], dtype=np.float64)  # h[j]: the merge from j + 2 groups to j + 1
    k_max = int(min(k_max, len(h)))
    if k_max < 2:
        return 1
    r = h[: k_max - 1] / np.maximum(h[1:k_max], 1e-12)  # r[j] is level k = j + 2
    hits = np.flatnonzero(r >= ratio)
    return int(hits.max()) + 2 if hits.size else 1


def cut_tree(Z: np.ndarray, n_leaves: int, k: int, *, max_size: float) -> np.ndarray:
    """Leaf -> group (L,) int64: the tree cut into ``k`` groups (its top ``k - 1`` merges
    undone), then every group heavier than ``max_size`` (Z's weights) split along the tree."""
    n_leaves = int(n_leaves)
    if n_leaves <= 1 or len(Z) == 0:
        return np.zeros(n_leaves, np.int64)
    root = 2 * n_leaves - 2
    k = int(np.clip(k, 1, n_leaves))
    top = set(range(root - k + 2, root + 1))
    groups: list[int] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node >= n_leaves:
            a, b, _h, weight = Z[node - n_leaves]
            if node in top or weight > max_size:
                stack += [int(a), int(b)]
                continue
        groups.append(node)
    out = np.empty(n_leaves, np.int64)
    for g, node in enumerate(groups):
        todo = [node]
        while todo:
            x = todo.pop()
            if x < n_leaves:
                out[x] = g
            else:
                todo += [int(Z[x - n_leaves, 0]), int(Z[x - n_leaves, 1])]
    return out


def split_oversized(
    E: np.ndarray,
    labels: np.ndarray,
    *,
    per_point: float = 1.0,
    max_group: int = MAX_GROUP,
    target: int | None = None,
) -> np.ndarray:
    """``labels`` with every group of more than ``max_group`` faces (a point of ``E`` stands for
    ``per_point`` faces) cut into parts of about ``target`` faces (default ``max_group``):
    its points sorted along the group's first principal axis in ``E``, in equal-count runs.
    ``target`` set: every group bigger than 1.5 x ``target`` is cut, too. Groups already
    small enough keep their labels; new parts get new ids after the largest."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    part = float(target or max_group)
    limit = min(max_group, 1.5 * part) if target else max_group
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    next_id = int(ids.max()) + 1 if ids.size else 0
    members = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(counts)]
    for g in np.flatnonzero(counts * per_point > limit):
        rows = members[starts[g] : starts[g + 1]]
        q = min(len(rows), int(np.ceil(len(rows) * per_point / part)))
        if q < 2:
            continue
        X = np.asarray(E[rows], np.float64)
        X = X - X.mean(0)
        axis = np.linalg.svd(X, full_matrices=False)[2][0]
        order = rows[np.argsort(X @ axis, kind="stable")]
        for j, chunk in enumerate(np.array_split(order, q)[1:]):
            labels[chunk] = next_id + j
        next_id += q - 1
    return labels


def ward_cluster(
    E: np.ndarray,
    V: np.ndarray,
    *,
    n_clusters: int | None = None,
    n_total: int | None = None,
    group_size: int = GROUP_SIZE,
    max_group: int = MAX_GROUP,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The default grouping: every face in a group, groups about a page big. Returns
    ``(labels (N,) int32 (no -1), outlier (N,) f32, info)``.

    E (N, c): the cluster space (UMAP); V (N, d): unit vectors for the outlier scores.
    A Ward tree of ``E`` (:func:`ward_tree`) is cut at ``k = max(natural level, N_total /
    group_size)`` groups (``n_clusters`` fixes k instead), and every group bigger than
    ``max_group`` faces is split along the tree. ``n_total``: the faces ``E`` stands for
    when it is a sample (sizes scale by N / n_total). Outlier scores: distance to the
    group's centroid in ``V`` (:func:`distance_outlier_scores`); the app shows them last.
    """
    n = len(E)
    n_total = int(n_total or n)
    if n < 2:
        labels = np.zeros(n, np.int32)
        return labels, np.zeros(n, np.float32), {"k_natural": 1, "k_size": 1, "k": 1}
    Z, leaf = ward_tree(E, seed=seed)
    n_leaves = int(leaf.max()) + 1
    k_nat = natural_k(Z)
    k_size = int(max(1, round(n_total / max(group_size, 1))))
    k = int(n_clusters) if n_clusters else max(k_nat, k_size)
    k = int(np.clip(k, 1, n_leaves))
    scale = n / n_total
    groups = cut_tree(Z, n_leaves, k, max_size=max(max_group * scale, 2.0))
    # Above n_leaves * group_size faces (480,000 with a 4,000-leaf tree) a leaf stands for
    # more than a group: the groups the tree cannot split are cut into page-sized parts.
    target = group_size if not n_clusters and k_size > n_leaves else None
    labels = relabel_by_size(
        split_oversized(E, groups[leaf], per_point=1 / scale, max_group=max_group, target=target)
    )
    V = np.asarray(V, np.float32)
    outlier = distance_outlier_scores(V, labels, centroids_of(V, labels))
    info = {"k_natural": k_nat, "k_size": k_size, "k": int(labels.max()) + 1}
    return labels, outlier, info
