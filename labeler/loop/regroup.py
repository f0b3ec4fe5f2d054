"""Groups that learn: regroup the unlabeled faces in a space the labels taught.

The first grouping is made before any label, on frozen features: on real photos its groups
hold 10-25 % of faces of another state (realmasks: the groups opened first were 74-89 %
pure). Once labels exist, a head fitted on them knows which directions of the features
separate the states. :func:`regroup` places every unlabeled face at the class scores of
the Suggest step's ridge head fitted on all labels (weighted by ``weight``) beside its unit
vector of the cluster run (so faces of a state nobody has labeled yet still fall together
by looks), and cuts a Ward tree of that space into page-sized groups
(:func:`labeler.cluster.algorithms.ward_cluster`, the default grouping's own cut). Labeled
faces are left where they are. (The calibrated, sharper probabilities of the Suggest step
made worse groups than the raw scores: a face's margin orders it inside its state.)

Measured on the shared sets (``bench/bench_regroup.py``, ``bench/results/regroup.md``): on
realmasks the interactive session reaches 95 % with fewer actions; where the groups were
already pure (maskedfacenet, webfaces) regrouping by a head that knows only some states
breaks groups of the states it has not seen, so the simulated annotator regroups only when
the groups it opened were impure (:class:`labeler.loop.simulate.InteractiveConfig`).

Example::

    out = regroup(X, y, V)   # y: class code per face, -1 = unlabeled
    out.group                # (N,) new group of each unlabeled face, -1 for labeled faces
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from labeler.errors import InputError

if TYPE_CHECKING:
    from labeler.cluster.types import ClusterResult
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

MIN_LABELS = 100  # labeled faces before the app offers a regroup


@dataclass(frozen=True)
class RegroupConfig:
    """Options of :func:`regroup`.

    weight: weight of the head's class scores (a one-hot label scores 1) against the unit
    vectors (norm 1): 0 regroups by looks alone. Realmasks, interactive eff95 over 5
    cluster seeds: weight 4 gave 25.6-32.2 (median 27.9), 3 gave 20.4-30.2 (27.5), 2 about
    25 (``bench/results/regroup.md``). lam, standardize: the ridge head's, as the Suggest
    step's (:class:`~labeler.loop.suggest.SuggestConfig`). group_size: faces per group the
    Ward tree is cut for (the default grouping's). min_labels: labeled faces needed before
    the app offers it.
    """

    weight: float = 4.0
    lam: float = 0.75
    standardize: bool = False
    group_size: int = 120
    min_labels: int = MIN_LABELS
    seed: int = 0


@dataclass(frozen=True, eq=False)
class RegroupResult:
    """group: (N,) new group of each regrouped face, 0 = the biggest, -1 for labeled faces.
    value: (G,) the class code (of ``y``) most of each group's faces are predicted.
    share: (G,) the share of the group's faces predicted that class. size: (G,) faces.
    n_labels: the labeled faces the head learnt from.
    """

    group: np.ndarray = field(repr=False)
    value: np.ndarray
    share: np.ndarray
    size: np.ndarray
    n_labels: int = 0

    @property
    def n_groups(self) -> int:
        return len(self.size)


def class_scores(
    X: np.ndarray,
    y: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    lam: float = 0.75,
    standardize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(classes (C,), S (N, C))``: the scores of the Suggest step's class-balanced ridge head
    (one-hot targets) fitted on every labeled row of ``y`` (-1 = unlabeled), for every row."""
    from threadpoolctl import threadpool_limits

    from labeler.loop.suggest import design_matrix, ridge_scores

    y = np.asarray(y, np.int64)
    rows = np.flatnonzero(y >= 0)
    classes = np.unique(y[rows])
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    A = design_matrix(X, standardize)
    with threadpool_limits(limits=1, user_api="blas"):
        S, _ = ridge_scores(
            A, np.searchsorted(classes, y[rows]), rows, w[rows], len(classes), lam,
            predict=np.arange(len(y)),
        )  # fmt: skip
    return classes, S


def learned_space(scores: np.ndarray, V: np.ndarray, weight: float) -> np.ndarray:
    """(N, C + d) float64: ``weight`` x the class scores beside the unit vectors of ``V``."""
    U = np.asarray(V, np.float64)
    U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    return np.concatenate([weight * np.asarray(scores, np.float64), U], axis=1)


def regroup(
    X: np.ndarray,
    y: np.ndarray,
    V: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    config: RegroupConfig | None = None,
) -> RegroupResult:
    """Regroup the unlabeled faces (``y == -1``) by what the labeled ones taught.

    X: (N, D) the features the Suggest step learns on. y: (N,) int class code, -1 =
    unlabeled; two classes at least. V: (N, d) the cluster run's vectors. weights: (N,)
    trust per labeled face. Returns a :class:`RegroupResult`; groups are about
    ``config.group_size`` faces (a natural gap in the tree may make more), biggest first.
    """
    from labeler.cluster.algorithms import ward_cluster

    cfg = config or RegroupConfig()
    y = np.asarray(y, np.int64)
    if np.ndim(X) != 2 or len(X) != len(y) or len(V) != len(y):
        raise ValueError(
            f"X has shape {np.shape(X)}, V {np.shape(V)}, y {y.shape}: pass one row per face"
        )
    unl = np.flatnonzero(y < 0)
    classes = np.unique(y[y >= 0])
    if len(classes) < 2:
        raise InputError(
            f"the labels hold {len(classes)} state(s); regrouping needs two at least: label a "
            "group of another state first"
        )
    if not len(unl):
        raise InputError("every face is labeled: there is nothing to regroup")
    _, S = class_scores(X, y, weights=weights, lam=cfg.lam, standardize=cfg.standardize)
    Z = learned_space(S[unl], np.asarray(V)[unl], cfg.weight)
    labels, _, _ = ward_cluster(Z, Z, group_size=cfg.group_size, seed=cfg.seed)
    group = np.full(len(y), -1, np.int64)
    group[unl] = labels
    k = int(labels.max()) + 1
    size = np.bincount(labels, minlength=k)
    pred = classes[S[unl].argmax(1)]
    votes = np.zeros((k, int(pred.max()) + 1))
    np.add.at(votes, (labels, pred), 1.0)
    return RegroupResult(
        group=group,
        value=votes.argmax(1),
        share=votes.max(1) / size,
        size=size,
        n_labels=int((y >= 0).sum()),
    )


# --- workspace shell -------------------------------------------------------------------------


def regroup_workspace(
    ws: Workspace,
    field: str,
    *,
    feature_spec: str = "auto",
    config: RegroupConfig | None = None,
) -> tuple[ClusterResult, RegroupResult, list[str]]:
    """Regroup the faces of the current cluster run that have no label for ``field``: a new
    current run (the app's Revert undoes it); labeled faces and faces marked not a face keep
    their clusters. Labels are only read, never written. Returns
    ``(the new run, the regroup, the classes its codes name)``. Raises ``InputError`` (one
    line, with the fix) with fewer than ``config.min_labels`` labels or one state only.
    """
    from labeler.cluster.edit import regroup_faces
    from labeler.cluster.store import load_run, load_vectors
    from labeler.features import features_for
    from labeler.labels import LabelStore
    from labeler.loop.step import label_codes

    cfg = config or RegroupConfig()
    t0 = time.perf_counter()
    run = load_run(ws)
    face_ids = np.asarray(run.face_ids).astype(str)
    classes, y, _ = label_codes(ws, field, face_ids)
    if (y >= 0).sum() < cfg.min_labels:
        raise InputError(
            f"{int((y >= 0).sum())} faces are labeled for {field!r}; regrouping needs "
            f"{cfg.min_labels}: label a few more groups first"
        )
    X = features_for(ws, feature_spec, face_ids, head=True)
    V = load_vectors(ws, run.params.get("run_id"))
    V = run.xy if V is None else V
    # faces marked not a face stay where they are (they are dealt with, not unlabeled)
    keep = np.flatnonzero(~np.isin(face_ids, list(LabelStore(ws.labels_db).not_faces())))
    out = regroup(X[keep], y[keep], np.asarray(V)[keep], config=cfg)
    rows = keep[out.group >= 0]
    note = {"field": field, "n_labels": out.n_labels, "features": feature_spec}
    new = regroup_faces(ws, face_ids[rows], out.group[out.group >= 0], edit=note)
    log.info(
        "regroup %s: %d unlabeled faces into %d groups from %d labels in %.1f s (run %s)",
        field, len(rows), out.n_groups, out.n_labels, time.perf_counter() - t0,
        new.params.get("run_id"),
    )  # fmt: skip
    return new, out, classes
