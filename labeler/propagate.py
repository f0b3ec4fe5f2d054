"""Suggestions for unlabeled faces from the labeled ones (never stored as human labels).

Two methods, usable together:

- ``spreading``: label spreading (Zhou et al. 2004) on a symmetric kNN graph of the
  features: ``F <- alpha * S F + (1 - alpha) * Y`` with ``S = D^-1/2 W D^-1/2``. Follows the
  shape of the data (clusters, manifolds); good when labels are few.
- ``probe``: a logistic-regression head on the features (balanced class weights).
- ``both``: the mean of the two calibrated distributions.

Confidence is calibrated by temperature scaling fitted on held-out *labeled* faces (K-fold:
each fold's labels are hidden, the method predicts them, and one temperature per method
minimises their negative log-likelihood). With too few labels to hold any out, T = 1.

>>> res = propagate_labels(X, labels, method="both")   # labels: (N,) str, "" = unlabeled
>>> res.value, res.confidence                          # (N,), (N,)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

METHODS = ("spreading", "probe", "both")


@dataclass(frozen=True, eq=False)
class PropagationResult:
    """classes: (C,); probs: (N, C) calibrated; value: (N,) argmax class; confidence: (N,)
    max prob; temperature: {method: T}; method: the method used."""

    classes: np.ndarray
    probs: np.ndarray
    value: np.ndarray
    confidence: np.ndarray
    temperature: dict
    method: str


def _standardize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return (X - X.mean(0)) / (X.std(0) + 1e-6)


def knn_graph(X: np.ndarray, *, k: int = 10) -> Any:
    """Symmetric kNN affinity (N, N) scipy CSR on Euclidean distances of standardised X.

    Weights ``exp(-d^2 / sigma^2)`` with sigma the median distance to the k-th neighbour
    (a scale-free choice: no bandwidth to tune). Uses FAISS when installed (exact), else
    scikit-learn.
    """
    from scipy.sparse import csr_matrix

    Z = np.ascontiguousarray(_standardize(X))
    n = len(Z)
    k = int(min(k, n - 1))
    if k < 1:
        return csr_matrix((n, n))
    try:
        import faiss

        index = faiss.IndexFlatL2(Z.shape[1])
        index.add(Z)
        d2, nbrs = index.search(Z, k + 1)
        d2 = np.maximum(d2, 0.0)
    except ImportError:
        from sklearn.neighbors import NearestNeighbors

        dist, nbrs = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
        d2 = dist**2
    rows = np.repeat(np.arange(n), k + 1)
    cols, dd = nbrs.ravel(), d2.ravel()
    keep = (cols != rows) & (cols >= 0)  # drop self matches
    rows, cols, dd = rows[keep], cols[keep], dd[keep]
    sigma2 = float(np.median(d2[:, -1])) + 1e-12
    W = csr_matrix((np.exp(-dd / sigma2), (rows, cols)), shape=(n, n))
    return W.maximum(W.T).tocsr()


def label_spreading(
    W: Any, y: np.ndarray, n_classes: int, *, alpha: float = 0.9, iters: int = 50
) -> np.ndarray:
    """Spread integer labels ``y`` (N,) (-1 = unlabeled) over affinity ``W`` (N, N).

    Returns (N, C) row-normalised scores; rows the graph cannot reach are uniform.
    """
    from scipy.sparse import diags

    n = W.shape[0]
    deg = np.asarray(W.sum(1)).ravel()
    dinv = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    S = diags(dinv) @ W @ diags(dinv)
    Y = np.zeros((n, n_classes))
    lab = y >= 0
    Y[np.flatnonzero(lab), y[lab]] = 1.0
    # balance classes so a big class does not flood the graph
    Y /= np.maximum(Y.sum(0, keepdims=True), 1.0)
    F = Y.copy()
    for _ in range(iters):
        F = alpha * (S @ F) + (1 - alpha) * Y
    total = F.sum(1, keepdims=True)
    out = np.where(total > 1e-12, F / np.maximum(total, 1e-12), 1.0 / n_classes)
    return out


def _probe(X: np.ndarray, y: np.ndarray, n_classes: int, *, C: float = 1.0) -> np.ndarray:
    from labeler.train.head import HeadConfig, fit_head

    lab = y >= 0
    head = fit_head(
        X[lab],
        y[lab].astype(str),
        config=HeadConfig(C=C),
        classes=[str(i) for i in range(n_classes)],
    )
    return head.predict_proba(X)


def _raw(
    method: str, X: np.ndarray, W: Any, y: np.ndarray, n_classes: int, *, alpha: float, C: float
) -> np.ndarray:
    if method == "spreading":
        return label_spreading(W, y, n_classes, alpha=alpha)
    return _probe(X, y, n_classes, C=C)


def apply_temperature(P: np.ndarray, T: float) -> np.ndarray:
    """softmax(log(P) / T) row-wise."""
    z = np.log(np.clip(P, 1e-9, 1.0)) / T
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(P: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL of ``apply_temperature(P, T)`` for labels y."""
    from scipy.optimize import minimize_scalar

    def nll(logt: float) -> float:
        Q = apply_temperature(P, float(np.exp(logt)))
        return float(-np.log(np.clip(Q[np.arange(len(y)), y], 1e-12, 1)).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def propagate_labels(
    X: np.ndarray,
    labels: Sequence[str | None] | np.ndarray,
    *,
    method: str = "both",
    classes: Sequence[str] | None = None,
    k: int = 10,
    alpha: float = 0.9,
    C: float = 1.0,
    folds: int = 5,
    seed: int = 0,
) -> PropagationResult:
    """Calibrated class probabilities for every row from the labeled rows.

    X: (N, D) features. labels: (N,) class name, or ""/None for unlabeled.
    method: spreading | probe | both. k: neighbours of the graph (5-30). alpha: how far labels
    spread (0.5-0.99). Returns a :class:`PropagationResult` over all N rows.
    """
    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    labels = np.asarray(
        [("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)) for v in labels],
        dtype=object,
    )
    X = np.asarray(X, dtype=np.float32)
    if len(X) != len(labels):
        raise ValueError(f"features have {len(X)} rows but labels {len(labels)}")
    present = sorted({v for v in labels if v})
    classes = np.asarray(
        present if classes is None else [c for c in classes if c in present], dtype=object
    )
    if len(classes) < 2:
        raise ValueError(
            f"propagation needs labels of at least 2 classes, got {list(classes)}; label more faces"
        )
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code.get(v, -1) for v in labels])
    nc = len(classes)
    W = knn_graph(X, k=k) if method in ("spreading", "both") else None
    parts = ("spreading", "probe") if method == "both" else (method,)

    # calibration: hide folds of the labeled rows
    lab_idx = np.flatnonzero(y >= 0)
    counts = np.bincount(y[lab_idx], minlength=nc)
    temps = {}
    n_folds = int(min(folds, counts.min()))
    for part in parts:
        if n_folds < 2:
            temps[part] = 1.0
            continue
        from sklearn.model_selection import StratifiedKFold

        held = np.zeros((len(lab_idx), nc))
        for _tr, te in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(
            lab_idx, y[lab_idx]
        ):
            y_fold = y.copy()
            y_fold[lab_idx[te]] = -1
            if len(np.unique(y_fold[y_fold >= 0])) < 2:
                held[te] = 1.0 / nc
                continue
            held[te] = _raw(part, X, W, y_fold, nc, alpha=alpha, C=C)[lab_idx[te]]
        temps[part] = fit_temperature(held, y[lab_idx])
    probs = np.mean(
        [apply_temperature(_raw(p, X, W, y, nc, alpha=alpha, C=C), temps[p]) for p in parts], axis=0
    )
    return PropagationResult(
        classes=classes,
        probs=probs,
        value=classes[probs.argmax(1)],
        confidence=probs.max(1),
        temperature=temps,
        method=method,
    )


def propagate(
    ws: Any,
    *,
    field: str = "mask_state",
    method: str = "both",
    feature_spec: str = "auto",
    k: int = 10,
    alpha: float = 0.9,
    min_confidence: float = 0.0,
    write: bool = True,
) -> pd.DataFrame:
    """Suggest ``field`` for every unlabeled face of the workspace.

    Returns (and writes to the suggestions table, method ``propagate:<method>``) a DataFrame
    face_id, field, value, confidence; human labels are never touched.
    """
    from labeler.labels import LabelStore
    from labeler.train import human_labels, load_feature_matrix

    faces = ws.require_faces()
    face_ids = faces["face_id"].to_numpy()
    labels = human_labels(ws, field, faces)
    if labels.empty:
        raise ValueError(f"no human labels for field {field!r} yet; label a few clusters first")
    given = (
        pd.Series(face_ids)
        .map(labels.set_index("face_id")["value"])
        .fillna("")
        .to_numpy(dtype=object)
    )
    X, _ = load_feature_matrix(ws, feature_spec, face_ids)
    store = LabelStore(ws.labels_db)
    schema = list(store.schema().values(field))
    res = propagate_labels(X, given, method=method, classes=schema or None, k=k, alpha=alpha)
    un = (given == "") & (res.confidence >= min_confidence)
    out = pd.DataFrame(
        {
            "face_id": face_ids[un],
            "field": field,
            "value": res.value[un],
            "confidence": res.confidence[un].astype(float),
        }
    )
    if write:
        store.write_suggestions(out, f"propagate:{method}")
    log.info("%d suggestions for %s (%s, T=%s)", len(out), field, method, res.temperature)
    return out
