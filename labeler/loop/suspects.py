"""Suspected label errors: the rule that flags a human label, on out-of-fold evidence only.

The Suggest step (:func:`labeler.loop.suggest.suggest`) scores every labeled face with a head
that never saw it (out of fold; the faces of one label event are held out together) and then
:func:`select_suspects` keeps a face only when

- its label's class and the contradicting class both have ``min_class`` labels or more (a
  class with a handful of labels cannot be judged: that was 16 false alarms of 30 selfies);
- the out-of-fold prediction is confident: the band it falls in was right at least
  ``min_precision`` of the time in cross-validation, and p(given label) <= 1 - min_precision;
- it is among the ``share`` (default 2 %) of labeled faces most strongly contradicted.

Each suspect gets ``score = 1 - p(given label)`` (higher = more likely wrong) and the model's
``suggested`` label (:func:`labeler.loop.step.suggest_workspace` writes them to the suspects
table, ``labeler.labels.suspects``). The Review page never pre-ticks them: how often a
contradicted label is really wrong cannot be measured from the labels. ``bench/LOOP.md``
("Label errors") measured this rule against cleanlab's ``find_label_issues`` on the same
out-of-fold probabilities with 2-10 % of the labels flipped: the rule is as good or better at
2 % and keeps false alarms low; at 5-10 % it misses most flips (its band gate is measured on
the noisy labels themselves) where cleanlab finds most of them but flags 2-3 right labels per
wrong one on some sets. The rule ships (see LOOP.md for the numbers and why).

>>> rows = select_suspects(yc, oof, counts=counts, band_precision=prec)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np


def select_suspects(
    yc: np.ndarray,
    oof: np.ndarray,
    *,
    counts: np.ndarray,
    band_precision: np.ndarray,
    share: float = 0.02,
    min_class: int = 10,
    min_precision: float = 0.9,
) -> np.ndarray:
    """Rows (into ``yc``) whose label the out-of-fold evidence contradicts, most likely first.

    yc: (L,) label codes. oof: (L, C) out-of-fold probabilities. counts: (C,) labels per
    class. band_precision: (L,) measured precision of each row's predicted (value, band).
    At most ``max(1, floor(share * L))`` rows; none when fewer than ``2 * min_class`` labels.
    """
    yc = np.asarray(yc, dtype=np.int64)
    oof = np.asarray(oof, dtype=np.float64)
    L = len(yc)
    if L < 2 * min_class or oof.shape[1] < 2:
        return np.zeros(0, np.int64)
    pred = oof.argmax(1)
    p_given = oof[np.arange(L), yc]
    counts = np.asarray(counts)
    ok = (
        (pred != yc)
        & (counts[yc] >= min_class)
        & (counts[pred] >= min_class)
        & (np.asarray(band_precision) >= min_precision)
        & (p_given <= 1.0 - min_precision)
    )
    cand = np.flatnonzero(ok)
    cand = cand[np.lexsort((cand, p_given[cand]))]
    return cand[: max(1, int(share * L))]
