"""Likely label errors, raised only on out-of-fold evidence and never for many faces.

Out-of-fold probabilities come from a head on the stored feature blocks (raw, as
``labeler train --mode head`` uses them) (K-fold grouped by person, so a face is never judged
by a model that saw it or its near-duplicates). :func:`labeler.suggest.select_suspects` (also used by the
app's Suggest step, :mod:`labeler.suggest`) then keeps a face only when

- its label's class and the contradicting class both have ``min_class`` labels or more (a
  class with a handful of labels cannot be judged: that was 16 false alarms of 30 selfies);
- the out-of-fold prediction is confident: the band it falls in was right at least
  ``min_precision`` of the time in cross-validation, and p(given label) <= 1 - min_precision;
- it is among the ``share`` (default 2 %) of labeled faces most strongly contradicted.

Each suspect gets ``score = 1 - p(given label)`` (higher = more likely wrong) and the model's
``suggested`` label. The Review page reads them from the suspects table and never pre-ticks
them: how often a contradicted label is really wrong cannot be measured from the labels.

>>> suspects = rank_label_issues(y, pred_probs, classes=classes)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

METHOD = "out_of_fold"


def rank_label_issues(
    y: Sequence[str] | np.ndarray,
    pred_probs: np.ndarray,
    *,
    classes: Sequence[str],
    filter_by: str = "prune_by_noise_rate",
) -> pd.DataFrame:
    """Rows whose label looks wrong, most likely first.

    y: (N,) given labels (strings in ``classes``). pred_probs: (N, C) out-of-sample
    probabilities, columns in ``classes`` order. Returns a DataFrame with columns
    ``index`` (row in y), ``given``, ``suggested``, ``score`` (1 - p(given), 0..1).
    """
    from cleanlab.filter import find_label_issues

    y = np.asarray(y).astype(str)
    classes = [str(c) for c in classes]
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.shape != (len(y), len(classes)):
        raise ValueError(
            f"pred_probs has shape {pred_probs.shape}, expected ({len(y)}, {len(classes)})"
        )
    # cleanlab wants every class to occur: keep the classes present, renormalise
    present = [c for c in classes if (y == c).any()]
    cols = [classes.index(c) for c in present]
    P = pred_probs[:, cols]
    P = P / np.maximum(P.sum(1, keepdims=True), 1e-12)
    code = {c: i for i, c in enumerate(present)}
    yc = np.array([code[v] for v in y])
    empty = pd.DataFrame({"index": [], "given": [], "suggested": [], "score": []})
    if len(present) < 2 or len(y) < 2 * len(present):
        return empty
    idx = find_label_issues(
        yc, P, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    idx = np.asarray(idx, dtype=np.int64)
    if not len(idx):
        return empty
    score = 1.0 - P[idx, yc[idx]]
    out = pd.DataFrame(
        {
            "index": idx,
            "given": y[idx],
            "suggested": np.asarray(present, dtype=object)[P[idx].argmax(1)],
            "score": score,
        }
    )
    return out.sort_values(["score", "index"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )


def find_label_errors(
    ws: Any,
    *,
    field: str = "mask_state",
    feature_spec: str = "auto",
    folds: int = 5,
    head: str = "logreg",
    persons: str = "auto",
    seed: int = 0,
    share: float = 0.02,
    min_class: int = 10,
    write: bool = True,
) -> pd.DataFrame:
    """Suspected label errors of ``field`` in a workspace (columns face_id, field, given,
    suggested, score), most likely first (:func:`labeler.suggest.select_suspects`: at most ``share`` of the
    labels, classes with ``min_class`` labels or more); written to the suspects table when
    ``write`` (replacing the field's earlier ones, also when none are found)."""
    from labeler.labels import LabelStore
    from labeler.train.data import TrainConfig, human_labels, load_feature_matrix, person_ids
    from labeler.train.head import HeadConfig, cross_val_proba

    faces = ws.require_faces()
    labels = human_labels(ws, field, faces)
    cols = ["face_id", "field", "given", "suggested", "score"]
    if labels.empty:
        return pd.DataFrame(columns=cols)
    face_ids = labels["face_id"].to_numpy()
    y = labels["value"].to_numpy().astype(str)
    classes = sorted(set(y))
    X, _ = load_feature_matrix(ws, feature_spec, face_ids, raw=True)
    sub = faces.set_index("face_id").loc[face_ids].reset_index()
    groups = person_ids(ws, sub, TrainConfig(field=field, persons=persons))
    oof = cross_val_proba(
        X,
        y,
        groups=groups,
        folds=folds,
        config=HeadConfig(kind=head, seed=seed),
        classes=classes,
        seed=seed,
    )
    from labeler.suggest import BANDS, band_of, band_precision, select_suspects

    code = {c: i for i, c in enumerate(classes)}
    yc = np.array([code[v] for v in y])
    pred = oof.argmax(1)
    band = band_of(oof.max(1))
    _, prec, _, _ = band_precision(pred, band, yc, n_classes=len(classes))
    rows = select_suspects(
        yc,
        oof,
        counts=np.bincount(yc, minlength=len(classes)),
        band_precision=prec[pred * len(BANDS) + band],
        share=share,
        min_class=min_class,
    )
    out = pd.DataFrame(
        {
            "face_id": face_ids[rows],
            "field": field,
            "given": y[rows],
            "suggested": np.asarray(classes, dtype=object)[pred[rows]],
            "score": 1.0 - oof[rows, yc[rows]],
        },
        columns=cols,
    )
    if write:
        store = LabelStore(ws.labels_db)
        store.write_suspects(out, METHOD, fields=[field])
    log.info("%d suspected label errors among %d labels of %s", len(out), len(y), field)
    return out
