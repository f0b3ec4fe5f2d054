"""The effort metric: what a labeling session cost, in annotator actions.

Effort metric (shared/README.md, "Measuring labeling effort")
--------------------------------------------------------------
One **action** bulk-assigns one label to one group (every face of the group receives the
group's majority true label; ties go to the alphabetically first label), or corrects one
face. Noise points (group -1) are groups of one. A face counts as labeled correctly when its
current label equals its true label; unlabeled faces count as wrong. ``effN`` = correct
faces / actions at the first action after which accuracy >= N %. Labeling one by one gives
``effN = 1``; a perfect grouping of C equal classes gives ``N_faces / C``.

:mod:`labeler.loop.simulate` plays the sessions; this module holds their result
(:class:`EffortResult`) and the scores computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEVELS = (95, 98, 99)


@dataclass(frozen=True)
class EffortResult:
    """What a labeling session cost.

    ``nmi``/``ari``/``purity`` describe the starting grouping against the truth (noise points
    as singletons). ``effN`` / ``actionsN`` for N in :data:`LEVELS`. ``curve`` (A,) holds the
    number of correct faces after each action; ``kinds`` counts actions by kind; ``reviewed``
    is the number of faces the annotator looked at in review queues without changing them;
    ``clicks`` the app clicks the session costs (see the module docstring), ``clicks98``
    those up to ``actions98``.
    """

    strategy: str
    n_faces: int
    n_classes: int
    n_groups: int
    nmi: float
    ari: float
    purity: float
    eff95: float
    eff98: float
    eff99: float
    actions95: int
    actions98: int
    actions99: int
    actions_total: int
    reviewed: int = 0
    clicks: int = 0
    clicks98: int = 0
    kinds: dict[str, int] = field(default_factory=dict, compare=False)
    curve: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    # labels (N,) str ('' = unlabeled) as they stood after ``snapshot_at`` actions, if asked
    snapshot: np.ndarray | None = field(default=None, repr=False, compare=False)
    # the group actions of an interactive session: kind, expected gain, plain's, real gain
    log: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (the curve and snapshot are left out)."""
        out = {
            k: getattr(self, k)
            for k in self.__dataclass_fields__
            if k not in ("curve", "snapshot", "log")
        }
        out["kinds"] = dict(self.kinds)
        return out

    def accuracy_curve(self) -> np.ndarray:
        """(A,) accuracy after each action."""
        return self.curve / max(self.n_faces, 1)


def noise_as_singletons(groups: np.ndarray) -> np.ndarray:
    """(N,) int groups with every ``-1`` replaced by a fresh id of its own."""
    g = np.asarray(groups).astype(np.int64).copy()
    noise = g < 0
    start = (g.max() + 1) if (~noise).any() else 0
    g[noise] = start + np.arange(int(noise.sum()))
    return g


def encode_truth(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, y)``: the sorted distinct labels of ``truth`` (N,) and each row's code."""
    truth = np.asarray(truth).astype(str)
    classes, y = np.unique(truth, return_inverse=True)
    return classes, y.astype(np.int64)


def grouping_scores(groups: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """NMI, ARI and purity of ``groups`` (noise as singletons) against ``truth``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    g = noise_as_singletons(groups)
    _, y = encode_truth(truth)
    _, gi = np.unique(g, return_inverse=True)
    table = np.zeros((gi.max() + 1, y.max() + 1), np.int64)
    np.add.at(table, (gi, y), 1)
    return {
        "nmi": float(normalized_mutual_info_score(y, g)),
        "ari": float(adjusted_rand_score(y, g)),
        "purity": float(table.max(1).sum() / len(y)),
    }


def effort_from_curve(curve: np.ndarray, n_faces: int, level: float) -> tuple[float, int]:
    """``(effN, actionsN)`` from ``curve`` (A,) correct faces after each action."""
    curve = np.asarray(curve, dtype=np.float64)
    need = level / 100.0 * n_faces - 1e-9
    hit = np.flatnonzero(curve >= need)
    if len(hit) == 0:
        return 0.0, -1
    a = int(hit[0])
    return float(curve[a] / (a + 1)), a + 1
