"""Label-guided steps: learn from the faces labeled so far, suggest labels for the rest.

Every function here is a plain function on arrays. Labels are integer codes ``0..C-1`` with
``-1`` meaning "not labeled yet"; the caller maps its label strings to codes.

- :func:`fit_predict` trains a head on the labeled rows and predicts every row:
  ``"ridge"`` (a class-balanced linear least-squares head in closed form, milliseconds),
  ``"probe"`` (a class-balanced logistic regression on standardised features),
  ``"spread"`` (label spreading on a symmetric kNN graph), ``"knn"`` (a distance-weighted vote
  of the labeled neighbours) or ``"ensemble"`` (the mean of ridge and spread probabilities).
- :func:`recluster` re-groups the faces with a metric learned from the labels (LDA on the
  labeled rows, then k-means in that space), so the next round of groups follows the labels'
  notion of similarity rather than identity or light.

Example::

    pred = fit_predict(X, y, method="probe")
    pred.labels, pred.confidence    # (N,) int, (N,) float in [0, 1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from labeler.errors import InputError

log = logging.getLogger(__name__)

METHODS = ("ridge", "probe", "spread", "knn", "ensemble")


@dataclass(frozen=True)
class Prediction:
    """Suggested labels for every row.

    ``labels`` (N,) int codes; ``proba`` (N, C) over ``classes`` (the codes seen in training,
    sorted); ``confidence`` (N,) the top probability; ``margin`` (N,) top minus second
    probability (0 when only one class was seen).
    """

    labels: np.ndarray
    proba: np.ndarray = field(repr=False)
    classes: np.ndarray
    confidence: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)
    method: str = "probe"


def _standardise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    mu = X.mean(0, keepdims=True)
    sd = X.std(0, keepdims=True) + 1e-6
    return (X - mu) / sd


def _finish(proba: np.ndarray, classes: np.ndarray, method: str) -> Prediction:
    proba = np.asarray(proba, dtype=np.float32)
    proba = proba / np.clip(proba.sum(1, keepdims=True), 1e-12, None)
    top = np.sort(proba, axis=1)
    conf = top[:, -1]
    margin = top[:, -1] - top[:, -2] if proba.shape[1] > 1 else np.zeros_like(conf)
    labels = classes[proba.argmax(1)]
    return Prediction(labels, proba, classes, conf, margin, method)


def _balanced_weights(y: np.ndarray, w: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-labeled-row weights: trust ``w`` times inverse class mass (each class sums equal)."""
    lab = y >= 0
    out = w[lab].astype(np.float64).copy()
    for c in classes:
        sel = y[lab] == c
        out[sel] /= max(out[sel].sum(), 1e-9)
    return out * (lab.sum() / max(out.sum(), 1e-9))


def _ridge(
    Xs: np.ndarray, y: np.ndarray, w: np.ndarray, classes: np.ndarray, lam: float
) -> np.ndarray:
    """Weighted least squares on one-hot targets; softmax of the scores as probabilities."""
    lab = y >= 0
    if len(classes) == 1:
        return np.ones((len(Xs), 1), np.float32)
    A = np.concatenate([Xs, np.ones((len(Xs), 1), Xs.dtype)], axis=1).astype(np.float64)
    sw = _balanced_weights(y, w, classes)
    Y = (y[lab][:, None] == classes[None, :]).astype(np.float64)
    Al = A[lab] * sw[:, None]
    reg = lam * np.eye(A.shape[1])
    reg[-1, -1] = 0.0
    beta = np.linalg.solve(A[lab].T @ Al + reg, Al.T @ Y)
    S = A @ beta
    S = (S - S.max(1, keepdims=True)) * 8.0
    P = np.exp(S)
    return P / P.sum(1, keepdims=True)


def _probe(
    Xs: np.ndarray, y: np.ndarray, w: np.ndarray, classes: np.ndarray, C: float
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    lab = y >= 0
    if len(classes) == 1:
        return np.ones((len(Xs), 1), np.float32)
    # class-balanced sample weights (the minority states are what the annotator hunts for)
    counts = np.array([w[lab][y[lab] == c].sum() for c in classes])
    cw = {
        c: w[lab].sum() / (len(classes) * max(n, 1e-6))
        for c, n in zip(classes, counts, strict=True)
    }
    sw = w[lab] * np.array([cw[c] for c in y[lab]])
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(Xs[lab], y[lab], sample_weight=sw)
    return clf.predict_proba(Xs)


def _knn_graph(Xn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN (self excluded): indices (N, k) and similarities (N, k)."""
    n = len(Xn)
    k = min(k, n - 1)
    if n <= 4096:
        S = Xn @ Xn.T
        np.fill_diagonal(S, -np.inf)
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
        sim = np.take_along_axis(S, idx, 1)
        return idx, sim
    import faiss

    index = faiss.IndexFlatIP(Xn.shape[1])
    index.add(np.ascontiguousarray(Xn, dtype=np.float32))
    sim, idx = index.search(np.ascontiguousarray(Xn, dtype=np.float32), k + 1)
    return idx[:, 1:], sim[:, 1:]


def _spread(
    Xs: np.ndarray, y: np.ndarray, w: np.ndarray, classes: np.ndarray, k: int, alpha: float
) -> np.ndarray:
    """Label spreading (Zhou et al. 2004) on a symmetric cosine kNN graph, labeled rows
    clamped softly with weight ``w``."""
    import scipy.sparse as sp

    n = len(Xs)
    Xn = Xs / np.clip(np.linalg.norm(Xs, axis=1, keepdims=True), 1e-8, None)
    idx, sim = _knn_graph(Xn.astype(np.float32), k)
    vals = np.exp((sim - 1.0) / 0.1).ravel()  # heat kernel on cosine distance
    W = sp.csr_matrix((vals, (np.repeat(np.arange(n), idx.shape[1]), idx.ravel())), shape=(n, n))
    W = W.maximum(W.T)
    d = np.asarray(W.sum(1)).ravel()
    dinv = 1.0 / np.sqrt(np.clip(d, 1e-12, None))
    S = sp.diags(dinv) @ W @ sp.diags(dinv)
    Y0 = np.zeros((n, len(classes)), np.float32)
    pos = {c: i for i, c in enumerate(classes)}
    lab = np.flatnonzero(y >= 0)
    Y0[lab, [pos[c] for c in y[lab]]] = w[lab]
    # balance classes so a big class does not flood the graph
    Y0 /= np.clip(Y0.sum(0, keepdims=True), 1e-6, None)
    F = Y0.copy()
    for _ in range(30):
        F = alpha * (S @ F) + (1 - alpha) * Y0
    F = np.clip(F, 0, None) + 1e-9
    return F / F.sum(1, keepdims=True)


def _knn_vote(
    Xs: np.ndarray, y: np.ndarray, w: np.ndarray, classes: np.ndarray, k: int
) -> np.ndarray:
    lab = np.flatnonzero(y >= 0)
    Xn = Xs / np.clip(np.linalg.norm(Xs, axis=1, keepdims=True), 1e-8, None)
    S = Xn @ Xn[lab].T
    kk = min(k, len(lab))
    nn = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
    sim = np.take_along_axis(S, nn, 1)
    wt = np.exp((sim - 1.0) / 0.1) * w[lab][nn]
    pos = np.searchsorted(classes, y[lab][nn])
    P = np.zeros((len(Xs), len(classes)), np.float64)
    np.add.at(P, (np.repeat(np.arange(len(Xs)), kk), pos.ravel()), wt.ravel())
    return P + 1e-9


def fit_predict(
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "ensemble",
    weights: np.ndarray | None = None,
    C: float = 0.5,
    lam: float = 10.0,
    k: int = 10,
    alpha: float = 0.9,
) -> Prediction:
    """Train on rows with ``y >= 0`` and predict all rows.

    X: (N, D) features. y: (N,) int codes, -1 = unlabeled. weights: (N,) trust per labeled row
    (e.g. 1 for a bulk label, 3 for a face the annotator checked one by one); default 1.
    method: one of :data:`METHODS`. C: inverse L2 strength of the probe (0.1-10).
    lam: L2 strength of the ridge head (1-100). k: neighbours for the graph methods (5-30). alpha: spreading strength (0.5-0.99).
    """
    if method not in METHODS:
        raise InputError(f"unknown guided method {method!r}; choose one of {', '.join(METHODS)}")
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X has shape {X.shape} but y has {len(y)} rows; pass (N, D) and (N,)")
    if not (y >= 0).any():
        raise InputError("no labeled rows (all y == -1); label at least one group first")
    w = np.ones(len(y), np.float32) if weights is None else np.asarray(weights, np.float32)
    classes = np.unique(y[y >= 0])
    Xs = _standardise(X)
    if method == "ridge":
        P = _ridge(Xs, y, w, classes, lam)
    elif method == "probe":
        P = _probe(Xs, y, w, classes, C)
    elif method == "spread":
        P = _spread(Xs, y, w, classes, k, alpha)
    elif method == "knn":
        P = _knn_vote(Xs, y, w, classes, k)
    else:
        P = 0.5 * _ridge(Xs, y, w, classes, lam) + 0.5 * _spread(Xs, y, w, classes, k, alpha)
    return _finish(P, classes, method)


def recluster(X: np.ndarray, y: np.ndarray, *, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Re-group all rows in a space learned from the labels so far.

    Fits LDA on the labeled rows (``y >= 0``, at least two classes), projects every row,
    appends the probe's class probabilities, and runs k-means with ``n_clusters`` groups.
    Returns (N,) int32 group ids. With fewer than two classes it falls back to k-means on X.
    """
    from sklearn.cluster import KMeans
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    y = np.asarray(y, dtype=np.int64)
    Xs = _standardise(X)
    classes = np.unique(y[y >= 0])
    if len(classes) >= 2:
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")
        lda.fit(Xs[y >= 0], y[y >= 0])
        Z = lda.transform(Xs)
    else:
        Z = Xs
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed)
    return km.fit_predict(Z).astype(np.int32)
