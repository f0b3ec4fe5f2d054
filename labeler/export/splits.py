"""Leak-free train/val/test splits: stratified by class, grouped by person, seeded.

The core is :func:`assign_splits`, a plain function on arrays. Every group (a person, see
:mod:`labeler.export.persons`) goes to exactly one split, so no person appears in two splits; within
that constraint the class proportions of every split follow the target ratios as closely as
the group sizes allow (exactly, up to rounding, when every group is one face).

Algorithm (greedy, deterministic for a seed): groups are shuffled with the seed, then sorted
by size, largest first; each group goes to the split whose per-class counts are furthest
below their targets for the classes the group holds (ties broken by the split that is
furthest below its overall target, then by split order). This is the usual greedy used for
stratified grouped splits; it is exact for singleton groups and degrades gracefully when one
person holds a large share of a class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from labeler.errors import InputError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


def parse_ratios(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"8:1:1"`` -> ``(0.8, 0.1, 0.1)``; also accepts ``"0.7,0.15,0.15"`` or a sequence.

    Two parts mean train/test; one part means everything in train.
    """
    if isinstance(text, str):
        parts = [p for p in text.replace(",", ":").split(":") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(
                f"ratios {text!r} are not numbers; write them like 8:1:1 (train:val:test)"
            ) from None
    else:
        values = [float(v) for v in text]
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise InputError(
            f"ratios {text!r} must be 1 to 3 non-negative numbers with a positive sum, e.g. 8:1:1"
        )
    total = sum(values)
    return tuple(v / total for v in values)


def split_names_for(ratios: Sequence[float]) -> tuple[str, ...]:
    """Split names for 1, 2 or 3 ratios: train | train, test | train, val, test."""
    return {1: ("train",), 2: ("train", "test"), 3: SPLIT_NAMES}[len(ratios)]


def assign_splits(
    labels: Sequence[str] | np.ndarray,
    groups: Sequence[str] | np.ndarray | None = None,
    *,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> np.ndarray:
    """Assign each row to a split, stratified by ``labels`` and grouped by ``groups``.

    labels: (N,) class of each row (any hashable; use "" for unlabeled rows, they form a class
        of their own). groups: (N,) person/group id, or None for one group per row.
    ratios: target fractions per split (normalised), 1 to 3 values.
    Returns (N,) object array of split names ("train", "val", "test").

    >>> assign_splits(["a"] * 10, ratios=(0.8, 0.2), seed=0).tolist().count("test")
    2
    """
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    ratios = np.asarray(parse_ratios(list(ratios)), dtype=float)
    names = split_names_for(ratios)
    if groups is None:
        groups = np.arange(n).astype(str)
    groups = np.asarray(groups, dtype=object)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} rows but labels has {n}")
    if n == 0:
        return np.array([], dtype=object)

    class_codes, classes = pd.factorize(pd.Series(labels).astype(str), sort=True)
    group_codes, _ = pd.factorize(pd.Series(groups).astype(str), sort=True)
    n_groups, n_classes = int(group_codes.max()) + 1, len(classes)
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(counts, (group_codes, class_codes), 1)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    sizes = counts.sum(1)
    order = order[np.argsort(-sizes[order], kind="stable")]

    class_totals = counts.sum(0).astype(float)
    target = ratios[:, None] * class_totals[None, :]  # (S, C)
    target_total = ratios * n
    have = np.zeros((len(ratios), n_classes))
    have_total = np.zeros(len(ratios))
    split_of_group = np.empty(n_groups, dtype=np.int64)
    for g in order:
        c = counts[g]
        held = c > 0
        # deficit per split for the classes this group holds, relative to the class size
        deficit = ((target[:, held] - have[:, held]) * c[held] / class_totals[held]).sum(1)
        overall = (target_total - have_total) / max(n, 1)
        # a split with a zero ratio never receives anything
        score = np.where(ratios > 0, deficit + 1e-6 * overall, -np.inf)
        s = int(np.argmax(score))
        split_of_group[g] = s
        have[s] += c
        have_total[s] += c.sum()
    return np.asarray(names, dtype=object)[split_of_group[group_codes]]


def leaking_groups(splits: Sequence[str], groups: Sequence[str]) -> list[str]:
    """Groups (persons) that appear in more than one split; empty when the split is leak-free."""
    df = pd.DataFrame({"split": np.asarray(splits, dtype=object), "group": np.asarray(groups)})
    n = df.groupby("group")["split"].nunique()
    return sorted(map(str, n[n > 1].index))
