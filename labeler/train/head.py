"""Heads on stored features: logistic regression or a small MLP, fit in seconds on CPU.

A :class:`Head` is plain arrays (standardisation + dense layers), saved as ``.npz`` without
pickle and evaluated with numpy, so a saved model loads anywhere and cannot run code.

>>> head = fit_head(X, y, kind="logreg")            # doctest: +SKIP
>>> probs = head.predict_proba(X_new)               # (M, C), columns head.classes
>>> oof = cross_val_proba(X, y, groups=persons, folds=5)   # out-of-fold (N, C)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labeler.errors import InputError

log = logging.getLogger(__name__)

HEAD_KINDS = ("logreg", "mlp")


@dataclass(frozen=True)
class HeadConfig:
    """How to fit a head. ``C``: inverse L2 strength of the logistic regression (0.01-10);
    ``alpha``: L2 of the MLP; ``hidden``: MLP width; class weights are always balanced."""

    kind: str = "logreg"
    C: float = 1.0
    hidden: int = 256
    alpha: float = 1e-3
    max_iter: int = 2000
    seed: int = 0


@dataclass(frozen=True, eq=False)
class Head:
    """A fitted head: ``x -> softmax(layers((x - mean) / std))``, relu between layers.

    classes: (C,) str. mean, std: (D,). weights/biases: per layer (D_in, D_out) / (D_out,).
    """

    classes: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    kind: str = "logreg"
    meta: dict = field(default_factory=dict)
    temperature: float = 1.0  # fitted on out-of-fold predictions (:func:`calibrate`)

    def decision(self, X: np.ndarray) -> np.ndarray:
        """Logits (N, C) for features (N, D)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise InputError(
                f"features have shape {X.shape} but the head was trained on {len(self.mean)} dims; "
                "use the same feature spec as in training"
            )
        parts = []
        for start in range(0, len(X), 8192):  # float64 in row blocks: bounded memory
            h = (X[start : start + 8192].astype(np.float64) - self.mean) / self.std
            for i, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                h = h @ W + b
                if i < len(self.weights) - 1:
                    h = np.maximum(h, 0.0)
            parts.append(h)
        h = np.concatenate(parts) if parts else np.zeros((0, self.weights[-1].shape[1]))
        if h.shape[1] == 1:  # binary logistic regression: one logit for classes[1]
            h = np.concatenate([np.zeros_like(h), h], axis=1)
        return h

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C), columns in ``classes`` order, temperature-scaled so
        they match out-of-fold accuracy (a head is sure of its own training faces)."""
        return softmax(self.decision(X) / self.temperature)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes[self.predict_proba(X).argmax(1)]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (N, C) softened by ``temperature``: ``softmax(log(probs) / T)``."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))
    return softmax(logp / temperature)


def column_moments(X: np.ndarray, *, rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation (D,) float64 of ``X`` (N, D), in row blocks
    (``np.std`` makes a float64 temporary the size of ``X``)."""
    n = max(len(X), 1)
    mean = np.zeros(X.shape[1])
    for i in range(0, len(X), rows):
        mean += X[i : i + rows].sum(0, dtype=np.float64)
    mean /= n
    sq = np.zeros(X.shape[1])
    for i in range(0, len(X), rows):
        sq += ((X[i : i + rows] - mean) ** 2).sum(0)
    return mean, np.sqrt(sq / n)


def balanced_weights(y_codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample weights n / (C * count[class]) (sklearn's "balanced"), (N,) float."""
    counts = np.bincount(y_codes, minlength=n_classes).astype(float)
    w = len(y_codes) / (max((counts > 0).sum(), 1) * np.maximum(counts, 1))
    return w[y_codes]


def fit_head(
    X: np.ndarray,
    y: Sequence[str] | np.ndarray,
    *,
    kind: str = "logreg",
    config: HeadConfig | None = None,
    classes: Sequence[str] | None = None,
    overwrite_x: bool = False,
) -> Head:
    """Fit a head on features ``X`` (N, D) and string labels ``y`` (N,).
    ``overwrite_x``: standardise a float32 ``X`` in place (the caller's copy, no second one).

    ``classes`` fixes the column order (default: sorted labels present). A class with no
    example gets a column of (near) zero probability. Balanced class weights. Computed in
    float32 (features are float32; a float64 copy of 133,000 x 4,000 features alone is
    4 GB). Never warm-started from a head that saw other faces: L-BFGS stops near its
    start, and out-of-fold predictions of folds started from the head on all labels were
    far too good (realmasks accuracy 0.986 vs 0.900 cold).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    config = config or HeadConfig(kind=kind)
    kind = config.kind
    if kind not in HEAD_KINDS:
        raise InputError(f"unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(str)
    if len(X) != len(y):
        raise ValueError(f"features have {len(X)} rows but labels {len(y)}")
    all_classes = np.asarray(sorted(set(y)) if classes is None else list(classes), dtype=object)
    present = np.asarray(sorted(set(y)), dtype=object)
    if len(present) < 2:
        raise InputError(
            f"training needs at least 2 classes with labels, got {list(present)}; label more faces"
        )
    code = {c: i for i, c in enumerate(present)}
    yc = np.array([code[v] for v in y])
    mean, std = column_moments(X)
    std += 1e-6
    Z = X if overwrite_x else X.copy()
    Z -= mean.astype(np.float32)
    Z /= std.astype(np.float32)
    sw = balanced_weights(yc, len(present))
    if kind == "logreg":
        clf = LogisticRegression(C=config.C, max_iter=config.max_iter)
        clf.fit(Z, yc, sample_weight=sw)
        W = clf.coef_.T.copy()
        b = clf.intercept_.copy()
        weights, biases = [W], [b]
    else:
        clf = MLPClassifier(
            hidden_layer_sizes=(config.hidden,),
            alpha=config.alpha,
            max_iter=config.max_iter,
            early_stopping=False,
            random_state=config.seed,
        )
        clf.fit(Z, yc, sample_weight=sw)
        weights = [w.copy() for w in clf.coefs_]
        biases = [b.copy() for b in clf.intercepts_]
    # expand the output layer to all classes (missing classes get a very low logit)
    W, b = weights[-1], biases[-1]
    if W.shape[1] == 1:  # binary: sklearn keeps one logit for present[1]
        W = np.concatenate([np.zeros_like(W), W], axis=1)
        b = np.concatenate([np.zeros_like(b), b])
    full_W = np.zeros((W.shape[0], len(all_classes)))
    full_b = np.full(len(all_classes), -30.0)
    index = {c: i for i, c in enumerate(all_classes)}
    for j, c in enumerate(present):
        if c not in index:
            raise ValueError(f"label {c!r} is not among the classes {list(all_classes)}")
        full_W[:, index[c]] = W[:, j]
        full_b[index[c]] = b[j]
    weights[-1], biases[-1] = full_W, full_b
    return Head(
        classes=all_classes,
        mean=mean,
        std=std,
        weights=tuple(weights),
        biases=tuple(biases),
        kind=kind,
        meta={"config": config.__dict__ | {"kind": kind}, "n_train": int(len(y))},
    )


def cross_val_proba(
    X: np.ndarray,
    y: Sequence[str] | np.ndarray,
    *,
    groups: Sequence | np.ndarray | None = None,
    folds: int = 5,
    kind: str = "logreg",
    config: HeadConfig | None = None,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    bar: Any = None,
) -> np.ndarray:
    """Out-of-fold class probabilities (N, C) from a K-fold grouped by ``groups``.

    Stratified by label (sklearn ``StratifiedGroupKFold``); folds are capped by the size of
    the rarest class (at least 2). Each row is predicted by the head that never saw it (nor
    anyone of its group), which is what confident learning and honest metrics need.
    bar: an open progress bar of faces trained on (``labeler train``): its total grows by
    the K-fold's ``(K - 1) * N`` and each fold advances it by the faces it trained on.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    X = np.asarray(X)
    y = np.asarray(y).astype(str)
    classes = np.asarray(sorted(set(y)) if classes is None else list(classes), dtype=object)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if len(np.unique(groups)) < 2:  # one person (or one photo) for everything: no grouping
        log.warning("all %d faces are in one group; cross-validating face by face", len(y))
        groups = np.arange(len(y))
    counts = np.unique(y, return_counts=True)[1]
    k = int(max(2, min(folds, counts.min() if len(counts) else 2, len(np.unique(groups)))))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    out = np.zeros((len(y), len(classes)))
    if bar is not None:
        bar.total = (bar.total or 0) + (k - 1) * len(y)
        bar.refresh()
    for train_idx, test_idx in splitter.split(X, y, groups):
        if len(set(y[train_idx])) >= 2:
            head = fit_head(  # X[train_idx] is a copy: standardised in place
                X[train_idx],
                y[train_idx],
                kind=kind,
                config=config,
                classes=classes,
                overwrite_x=True,
            )
            out[test_idx] = head.predict_proba(X[test_idx])
        else:
            out[test_idx] = 1.0 / len(classes)
        if bar is not None:
            bar.update(len(train_idx))
    return out


def calibrate(head: Head, oof: np.ndarray, y: Sequence[str] | np.ndarray) -> tuple[Head, dict]:
    """``head`` with the temperature that makes out-of-fold probabilities ``oof`` (N, C,
    columns ``head.classes``) honest for labels ``y`` (N,), and a summary: temperature and
    the expected calibration error of the out-of-fold probabilities before and after.
    The temperature only ever softens (T >= 1): a few labels all predicted right out-of-fold
    are no reason to be surer than the head already is."""
    from dataclasses import replace

    from labeler.loop.suggest import fit_temperature, reliability

    y = np.asarray(y).astype(str)
    index = {str(c): i for i, c in enumerate(head.classes)}
    yc = np.array([index[v] for v in y])
    logp = np.log(np.clip(np.asarray(oof, np.float64), 1e-12, 1.0))
    T = max(1.0, fit_temperature(logp, yc))
    scaled = temper(oof, T)
    right = oof.argmax(1) == yc
    _, before = reliability(oof.max(1), right)
    _, after = reliability(scaled.max(1), right)
    summary = {"temperature": T, "oof_ece_before": before, "oof_ece_after": after}
    return replace(head, temperature=T), summary


def save_head(head: Head, path: str | Path) -> None:
    """Save as ``.npz`` (no pickle): classes, mean, std, W0.., b0.., kind."""
    import io

    from labeler._io import atomic_write_bytes

    arrays = {
        "classes": np.asarray(head.classes, dtype=str),
        "mean": head.mean,
        "std": head.std,
        "kind": np.asarray(head.kind),
        "temperature": np.asarray(head.temperature),
    }
    for i, (W, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        arrays[f"W{i}"] = W
        arrays[f"b{i}"] = b
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_head(path: str | Path) -> Head:
    """The head saved by :func:`save_head` (no pickles: ``allow_pickle=False``). A damaged,
    crafted or foreign file raises :class:`InputError`, one line naming the file."""
    import zipfile

    try:
        with np.load(Path(path), allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("W"))
            return Head(
                classes=z["classes"].astype(object),
                mean=z["mean"],
                std=z["std"],
                weights=tuple(z[f"W{i}"] for i in range(n)),
                biases=tuple(z[f"b{i}"] for i in range(n)),
                kind=str(z["kind"]),
                temperature=float(z["temperature"]) if "temperature" in z.files else 1.0,
            )
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(
            f"{path} is not a usable trained head and was not loaded ({why}); train again "
            "with 'labeler train' or choose another run with --model"
        ) from None
