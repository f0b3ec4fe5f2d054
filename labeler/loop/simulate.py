"""The oracle annotator: how many actions a grouping (and the tool's Suggest step) costs.

Everything is a plain function on arrays. ``truth`` is only ever read the way a human
annotator would read it: the majority true label of a group the annotator looks at and
bulk-labels (what they would type for that group), and the true label of one face they
correct. Truth never chooses groups, features, orders or splits.

The effort metric (one action, ``effN``) is :mod:`labeler.loop.effort`'s; reading a workspace
with truth is :mod:`labeler.loop.truth`'s.

Protocols
---------
``strategy="plain"``: bulk-label every group, biggest first (ties by group id), then correct
the wrong faces one by one (an oracle order: only wrong faces are touched).

``strategy="interactive"`` (needs ``features``): the session the app offers, driven by the
app's own code (:func:`labeler.loop.suggest.suggest` for the *Suggest* step,
:func:`labeler.cluster.edit.split_labels` for *split by similarity*; no second
implementation). It is **plain with deviations that must earn their place**: before every
action the annotator retrains (the app's *Suggest* step) and knows plain's next action (bulk
the biggest group of the grouping, expected to fix its unlabeled faces x the majority share
of the grouping's groups opened so far, 1 before any; once the groups are done, correct one
face: 1). A deviation is taken only when its expected gain, **calibrated on what that kind of
action really fixed so far in this session** (the annotator opens every group they act on and
sees it: ``(fixed + prior) / (expected + prior)``, ``prior_faces`` faces' worth of weight on
1), beats plain's next action by ``margin`` (25 %):

- *accept a suggestion group* (unlabeled faces, one predicted value and confidence band):
  expected = size x the band's precision measured out-of-fold, where a face of a group of
  the grouping nobody has opened counts only ``1 - novelty``: the share (Laplace-smoothed)
  of opened groups whose majority was a state not labeled before (the model cannot know a
  state it was never shown). The annotator opens it and gives it its majority true label
  (``accept`` when that is the suggested value, ``assign`` otherwise).
- *relabel a review group* (labeled faces not yet checked whose out-of-fold prediction
  contradicts their label, by (label, prediction)): expected = the sum over its faces of the
  band's out-of-fold precision. It receives its majority true label; the faces that now hold
  their true label were seen right and count as checked (not offered again; the model trusts
  them ``checked_weight`` times more).
- *split by similarity* instead of bulk-labeling plain's group, when the opened group visibly
  holds ``m`` faces of states nobody has labeled yet: about ``chain = 1 + ceil(log_k(n / 2m))``
  splits make them a part's majority, each keeping a share ``cohesion`` of them together
  (measured on the splits seen so far, prior ``split_cohesion``) and costing ``k`` actions
  each (the split, k - 1 more bulk actions): split when ``m * cohesion**chain`` beats by the
  margin what plain does with those ``k * chain`` actions (its next groups, size x purity,
  then corrections, 1 each; ``split_horizon=False``: 1 each). The parts become groups of
  their own.

*regroup* (groups that learn, :mod:`labeler.loop.regroup`): once ``regroup.min_labels`` faces
are labeled with two states or more, and the groups the annotator opened so far were less
than ``regroup_purity`` pure (they saw it), the faces still unlabeled are regrouped in the
space the labels taught (1 action: one click); the next bulk actions open those groups.
Again each time the labeled faces have grown ``regroup_growth`` times. Where the groups were
pure (as on maskedfacenet and webfaces) the annotator keeps them: a head that knows only some
states breaks the groups of the others.

Plain's corrections are also taken one at a time with the Suggest step rerun after each (until
``max_idle_corrections`` in a row found no deviation worth it); the face corrected first is
one of the state with the fewest right labels (the annotator saw the wrong faces in the groups
they opened; the model learns a rare state from them: ``teach_rarest``; else a state nobody
has labeled, then plain's order). A correction fixes exactly one face, as plain's does. Then
the rest is corrected one by one exactly as plain does.

Why this is never much worse than plain: every action is plain's own next action (the same
group, the same correction gain) or a deviation whose expected gain, measured against what such
deviations really fixed, beats it by a margin; a kind of deviation that overclaims is
discounted by its own record within a few actions. Truth is read only as the answer to an
action taken (the majority of a group the annotator opened, the parts of a group they split,
the label of a face they correct). Each action also counts the app clicks it costs
(``clicks``): open the group, assign or accept (2); a split: open, split (2); a correction:
open the face, assign (2). ``result.log`` lists every group action with its expected gain,
plain's, and the faces it really fixed.

Progress: a session logs (INFO) a line when it starts, one every ``log_every`` seconds with
the actions taken and the share of faces labeled right so far, and one when it ends
(``simulate interactive: 120 actions, 91.2% right (1832/2009 faces), 40.3 s``); logging only
reads the session, so the result does not depend on it.

Example::

    res = simulate(groups, truth)                              # plain
    res = simulate(groups, truth, strategy="interactive", features=X)
    res.eff98, res.actions98
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from labeler.errors import InputError
from labeler.loop.effort import (
    LEVELS,
    EffortResult,
    effort_from_curve,
    encode_truth,
    grouping_scores,
    noise_as_singletons,
)
from labeler.loop.regroup import RegroupConfig, regroup
from labeler.loop.suggest import SuggestConfig

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

STRATEGIES = ("plain", "interactive")
LOG_EVERY = 5.0  # seconds between a session's progress lines


@dataclass(frozen=True)
class InteractiveConfig:
    """Options of the interactive session (see the module docstring for the protocol).

    suggest: the app's :class:`~labeler.loop.suggest.SuggestConfig`. split_parts: k of the app's
    *split by similarity* (0 = never split). checked_weight: trust of a face the annotator
    corrected or confirmed one by one (1 for bulk labels). min_gain: plain's group action is
    taken while its expected gain is above this (1 = a correction). margin: a deviation from
    plain's next action must be expected to fix (1 + margin) times as many faces (0.1-0.5).
    prior_faces: weight (in faces) of the prior of each calibration (5-30). split_cohesion:
    prior share of a state's faces a split keeps together (0.6-0.9). max_idle_corrections:
    corrections in a row after which the Suggest step is no longer rerun. split_horizon:
    weigh a split against plain's next groups (True) or against corrections only.
    teach_rarest: correct the faces of the rarest state first.
    regroup: the :class:`~labeler.loop.regroup.RegroupConfig` of *regroup* (None = never).
    regroup_purity: the share of opened groups' faces holding their group's majority below
    which the annotator regroups (0.85-0.95). regroup_growth: labeled faces grow this many
    times before the next regroup.
    max_group_actions: a safety cap on the number of group actions.
    """

    suggest: SuggestConfig = field(default_factory=SuggestConfig)
    split_parts: int = 2
    checked_weight: float = 3.0
    min_gain: float = 1.0
    margin: float = 0.25
    prior_faces: float = 10.0
    split_cohesion: float = 0.8
    max_idle_corrections: int = 30
    split_horizon: bool = True
    teach_rarest: bool = True
    regroup: RegroupConfig | None = field(default_factory=RegroupConfig)
    regroup_purity: float = 0.92
    regroup_growth: float = 2.0
    max_group_actions: int = 10_000


def _majority(y: np.ndarray, n_classes: int) -> int:
    return int(np.bincount(y, minlength=n_classes).argmax())


class _Session:
    """Mutable bookkeeping of one simulated session (private; results are frozen)."""

    def __init__(
        self,
        y: np.ndarray,
        n_classes: int,
        checked_weight: float = 3.0,
        snapshot_at: int | None = None,
        *,
        name: str = "session",
        log_every: float = LOG_EVERY,
    ) -> None:
        self.y = y
        self.name, self.log_every = name, log_every
        self._start = self._logged = time.perf_counter()
        self.snapshot_at = snapshot_at
        self.snapshot: np.ndarray | None = None
        self.checked_weight = checked_weight
        self.C = n_classes
        self.cur = np.full(len(y), -1, np.int64)
        self.event = np.full(len(y), -1, np.int64)  # the action that gave each face its label
        self.checked = np.zeros(len(y), bool)
        self.curve: list[int] = []
        self.kinds: Counter[str] = Counter()
        self.reviewed = 0
        self.clicks = 0
        self.click_curve: list[int] = []
        self.opened = 0  # faces in groups the annotator opened and labeled
        self.opened_major = 0  # of those, faces holding the group's majority label
        self.log: list[dict[str, Any]] = []  # one row per group action (see ``note``)

    @property
    def correct(self) -> int:
        return int((self.cur == self.y).sum())

    def act(self, kind: str, clicks: int = 2) -> None:
        self.kinds[kind] += 1
        self.clicks += clicks
        self.click_curve.append(self.clicks)
        self.curve.append(self.correct)
        if len(self.curve) == self.snapshot_at:
            self.snapshot = self.cur.copy()
        now = time.perf_counter()
        if now - self._logged >= self.log_every:
            self._logged = now
            self.report()

    def report(self, done: bool = False) -> None:
        """Log the actions taken so far and the share of faces labeled right."""
        n, right = len(self.y), self.curve[-1] if self.curve else 0
        log.info(
            "simulate %s: %s%d actions, %.1f%% right (%d/%d faces), %.1f s",
            self.name,
            "done, " if done else "",
            len(self.curve),
            100.0 * right / n,
            right,
            n,
            time.perf_counter() - self._start,
        )

    def bulk(
        self,
        members: np.ndarray,
        kind: str = "bulk",
        suggested: int | None = None,
        *,
        grouping: bool = True,
    ) -> int:
        """Give ``members`` their majority true label (what the annotator types for the group
        they see); ``suggested``: the value the app proposed (accepting it is ``accept``).
        ``grouping``: a group of the grouping (its majority share counts in ``purity``)."""
        m = _majority(self.y[members], self.C)
        self.cur[members] = m
        self.event[members] = len(self.curve)
        if grouping:
            self.opened += len(members)
            self.opened_major += int((self.y[members] == m).sum())
        self.reviewed += len(members)
        if suggested is not None:
            kind = "accept" if m == suggested else "assign"
        self.act(kind)
        return m

    def note(self, kind: str, expected: float, plain: float, before: int) -> None:
        """Log the action just taken: its expected gain, plain's next action's, the real one."""
        self.log.append(
            {"action": len(self.curve), "kind": kind, "expected": round(expected, 2),
             "plain_expected": round(plain, 2), "fixed": self.correct - before}
        )  # fmt: skip

    def purity(self) -> float:
        """Mean majority share of the groups of the grouping opened so far (1 before any)."""
        return self.opened_major / self.opened if self.opened else 1.0

    def trust(self) -> np.ndarray:
        return np.where(self.checked, self.checked_weight, 1.0)

    def fix(self, i: int) -> None:
        self.cur[i] = self.y[i]
        self.event[i] = len(self.curve)
        self.checked[i] = True
        self.act("correct")

    def finish(self) -> None:
        for i in np.flatnonzero(self.cur != self.y):
            self.fix(int(i))


def _result(
    strategy: str,
    s: _Session,
    groups: np.ndarray,
    truth: np.ndarray,
    n_groups: int,
    classes: np.ndarray,
) -> EffortResult:
    n = len(s.y)
    snapshot = None
    if s.snapshot_at is not None:
        cur = s.snapshot if s.snapshot is not None else s.cur  # session ended sooner: final
        snapshot = np.where(cur >= 0, classes[np.maximum(cur, 0)], "")
    curve = np.asarray(s.curve, dtype=np.int64)
    effs = {lv: effort_from_curve(curve, n, lv) for lv in LEVELS}
    return EffortResult(
        strategy=strategy,
        n_faces=n,
        n_classes=s.C,
        n_groups=n_groups,
        **grouping_scores(groups, truth),
        eff95=effs[95][0],
        eff98=effs[98][0],
        eff99=effs[99][0],
        actions95=effs[95][1],
        actions98=effs[98][1],
        actions99=effs[99][1],
        actions_total=len(curve),
        reviewed=s.reviewed,
        clicks=s.clicks,
        clicks98=s.click_curve[effs[98][1] - 1] if effs[98][1] > 0 else -1,
        kinds=dict(s.kinds),
        curve=curve,
        snapshot=snapshot,
        log=tuple(s.log),
    )


def _groups_by_size(g: np.ndarray) -> list[np.ndarray]:
    ids, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    order = np.lexsort((ids, -counts))
    members = np.argsort(inv, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [members[bounds[j] : bounds[j + 1]] for j in order]


# --- protocols -------------------------------------------------------------------------------


def _plain(g: np.ndarray, s: _Session) -> None:
    for members in _groups_by_size(g):
        s.bulk(members)
    s.finish()


def _review_groups(res: Any, s: _Session) -> tuple[np.ndarray, np.ndarray]:
    """Labeled faces (not checked: corrected, or seen right in a review group) whose out-of-fold
    prediction contradicts their label, grouped by (label, prediction): (N,) group id (-1 =
    none) and the expected gain per group. A face's chance to be fixed is its band's measured
    precision (the session calibrates it on what review groups really fixed)."""
    n = len(s.y)
    gid = np.full(n, -1, np.int64)
    code = np.full(n, -1, np.int64)
    lab = s.cur >= 0
    code[lab] = np.searchsorted(res.classes, s.cur[lab])
    pred_code = np.full(n, -1, np.int64)
    known = np.isin(res.pred, res.classes)
    pred_code[known] = np.searchsorted(res.classes, res.pred[known])
    cand = np.flatnonzero(lab & ~s.checked & known & (pred_code != code))
    if not len(cand):
        return gid, np.zeros(0)
    keys, inv = np.unique(code[cand] * len(res.classes) + pred_code[cand], return_inverse=True)
    gid[cand] = inv
    p = res.precision[cand].astype(np.float64)
    return gid, np.bincount(inv, weights=p, minlength=len(keys))


def _split_parts(V: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(n,) part 0..k-1 of each row (0 = the biggest part): the app's *split by similarity*
    itself (:func:`labeler.cluster.edit.split_labels`, spherical k-means on the run's
    vectors ``V`` (n, d)), so that the simulation measures what the app's Split button does."""
    from labeler.cluster.edit import split_labels

    out = split_labels(V, np.zeros(len(V), np.int32), 0, n_parts=k, seed=seed)
    return (out - 1).astype(np.int64)


class _Calibration:
    """Faces an action kind really fixed vs what was expected of it, as the annotator saw it
    (they open every group they act on). ``rate`` = (fixed + prior) / (expected + prior): 1
    before any evidence, ``prior`` faces' worth of weight on it."""

    def __init__(self, prior: float) -> None:
        self.prior = prior
        self.fixed: Counter[str] = Counter()
        self.expected: Counter[str] = Counter()

    def rate(self, kind: str) -> float:
        return (self.fixed[kind] + self.prior) / (self.expected[kind] + self.prior)

    def add(self, kind: str, expected: float, fixed: float) -> None:
        self.expected[kind] += max(expected, 0.0)
        self.fixed[kind] += max(fixed, 0.0)


def _visible_minority(s: _Session, members: np.ndarray) -> tuple[int, np.ndarray]:
    """Faces of ``members`` whose state nobody has labeled yet and is not the group's
    majority (what the annotator sees when they open the group), and the seen states (C,)."""
    cnt = np.bincount(s.y[members], minlength=s.C)
    cnt[cnt.argmax()] = 0
    seen = np.bincount(s.cur[s.cur >= 0], minlength=s.C) > 0
    return int(cnt[~seen].sum()), seen


def _regroup_now(s: _Session, res: Any, cfg: InteractiveConfig, regrouped_at: int) -> bool:
    """Regroup now: enough labels of two states or more, the groups opened so far visibly
    impure, the labels grown ``regroup_growth`` times since the last regroup, and half a
    group of unlabeled faces left at least."""
    if cfg.regroup is None or len(res.classes) < 2:
        return False
    n_lab = int((s.cur >= 0).sum())
    return (
        n_lab >= cfg.regroup.min_labels
        and n_lab >= cfg.regroup_growth * max(regrouped_at, 1)
        and s.opened > 0
        and s.purity() < cfg.regroup_purity
        and int((s.cur < 0).sum()) >= cfg.regroup.group_size // 2
    )


def _interactive(
    g: np.ndarray, X: np.ndarray, V: np.ndarray, s: _Session, cfg: InteractiveConfig
) -> None:
    from labeler.loop.suggest import suggest

    n = len(s.y)
    gi = np.unique(g, return_inverse=True)[1].astype(np.int64)
    opened = np.zeros(n, bool)  # faces of groups of the grouping the annotator has opened
    opens = new_state = 0  # groups opened, and how many of them showed a state first
    cal = _Calibration(cfg.prior_faces)
    split_minority = split_kept = 0.0  # over the splits so far: visible minority, kept together
    unsplittable: set[int] = set()
    idle = 0  # corrections in a row since the last group action
    regrouped_at = 0  # labeled faces at the last regroup
    for _step in range(cfg.max_group_actions):
        if s.correct == n:
            break
        res = suggest(X, s.cur, weights=s.trust(), cv_groups=s.event, config=cfg.suggest)
        unl = s.cur < 0
        if _regroup_now(s, res, cfg, regrouped_at):
            # groups that learn: the unlabeled faces, regrouped by what the labels taught
            new = regroup(X, s.cur, V, weights=s.trust(), config=cfg.regroup)
            gi[unl] = gi.max() + 1 + new.group[unl]
            opened[unl] = False
            regrouped_at = int((s.cur >= 0).sum())
            s.act("regroup", clicks=1)
            s.note("regroup", 0.0, 0.0, s.correct)
            continue
        # plain's next action: bulk the biggest group of the grouping (its unlabeled faces),
        # expected to fix its size times the purity seen so far; a correction (1) when the
        # groups are done (a singleton is always right: 1 too)
        open_size = np.bincount(gi[unl], minlength=gi.max() + 1)
        j = int(np.argmax(open_size))  # biggest first, ties by group order (as plain)
        plain_gain = float(open_size[j]) * s.purity()
        base = max(plain_gain, 1.0)
        # the deviations, each expected gain calibrated on what that kind really fixed so far
        devs: list[tuple[float, float, str, int]] = []
        if len(res.groups):
            # a suggestion group: size times its out-of-fold precision. Faces of groups nobody
            # opened yet may hold a state the model has never seen (its precision cannot
            # know): they count (1 - the share of opened groups that showed a new state)
            novelty = (new_state + 1) / (opens + 2)
            trust = np.where(opened, 1.0, 1.0 - novelty)[unl]
            exp = np.bincount(res.group[unl], weights=trust, minlength=len(res.groups))
            exp *= res.groups.sort_values("group")["precision"].to_numpy()
            top = int(np.argmax(exp))
            devs.append(
                (float(exp[top]) * cal.rate("suggestion"), float(exp[top]), "suggestion", top)
            )
        rg, rgain = _review_groups(res, s)
        if len(rgain):
            k = int(np.argmax(rgain))
            devs.append((float(rgain[k]) * cal.rate("review"), float(rgain[k]), "review", k))
        dev = max(devs, key=lambda t: t[0]) if devs else None
        before = s.correct
        if dev is not None and dev[0] > (1.0 + cfg.margin) * base:
            gain, raw, kind, which = dev
            if kind == "suggestion":
                members = np.flatnonzero(res.group == which)
                value = int(res.groups.set_index("group").loc[which, "value"])
                s.bulk(members, suggested=value, grouping=False)
            else:
                members = np.flatnonzero(rg == which)
                m = s.bulk(members, "relabel", grouping=False)
                s.checked[members[s.y[members] == m]] = True  # seen and left ticked: right
            cal.add(kind, raw, s.correct - before)
            s.note(kind, gain, plain_gain, before)
            idle = 0
            continue
        if open_size[j] == 0 or plain_gain <= cfg.min_gain:
            # plain's next action is a correction (gain 1, as plain's): a face of a state
            # nobody has labeled yet first (the annotator has seen it in a group they opened;
            # the model can learn the state from it), then plain's order; the Suggest step
            # reruns after it, until ``max_idle_corrections`` in a row found nothing better
            wrong = np.flatnonzero(s.cur != s.y)
            if not len(wrong) or idle >= cfg.max_idle_corrections:
                break
            if cfg.teach_rarest:
                have = np.bincount(s.cur[s.cur == s.y], minlength=s.C)
                s.fix(int(wrong[np.argmin(have[s.y[wrong]])]))
            else:
                known = np.bincount(s.cur[s.cur >= 0], minlength=s.C) > 0
                new = wrong[~known[s.y[wrong]]]
                s.fix(int(new[0] if len(new) else wrong[0]))
            idle += 1
            continue
        idle = 0
        members = np.flatnonzero((gi == j) & unl)
        minority, seen = _visible_minority(s, members)
        k = cfg.split_parts
        if k >= 2 and minority and j not in unsplittable and len(members) >= 2 * k:
            # the opened group visibly holds ``minority`` faces of states the tool has not
            # learnt. Splits until they are a part's majority: about ``chain`` of them, each
            # keeping a share ``cohesion`` of those faces together (measured on the splits
            # seen so far) and costing k actions (the split, k - 1 more bulk actions)
            cohesion = (split_kept + cfg.split_cohesion * cfg.prior_faces) / (
                split_minority + cfg.prior_faces
            )
            chain = 1 + max(0, int(np.ceil(np.log(len(members) / (2 * minority)) / np.log(k))))
            expected = minority * cohesion**chain
            # what plain does with those k * chain actions instead: its next groups (size x
            # purity), then corrections (1 each)
            extra = k * chain
            if cfg.split_horizon:
                queue = np.sort(np.delete(open_size, j))[::-1][:extra] * s.purity()
                cost = float(np.maximum(queue, 1.0).sum()) + (extra - len(queue))
            else:
                cost = float(extra)
            if expected > (1.0 + cfg.margin) * cost:
                parts = _split_parts(V[members], k)
                unseen = ~seen[s.y[members]] & (s.y[members] != _majority(s.y[members], s.C))
                kept = np.bincount(parts[unseen], minlength=k).max() if unseen.any() else 0
                split_minority += minority
                split_kept += int(kept)
                if parts.max() < 1:
                    unsplittable.add(j)
                gi[members[parts > 0]] = gi.max() + parts[parts > 0]
                s.act("split", clicks=2)
                s.note("split", expected, plain_gain, before)
                continue
        m = s.bulk(members, "bulk")
        opens += 1
        new_state += int(not seen[m])
        opened[gi == j] = True
        s.note("bulk", plain_gain, plain_gain, before)
    s.finish()


def simulate(
    groups: np.ndarray,
    truth: np.ndarray,
    *,
    strategy: str = "plain",
    features: np.ndarray | None = None,
    split_vectors: np.ndarray | None = None,
    config: InteractiveConfig | None = None,
    snapshot_at: int | None = None,
    log_every: float = LOG_EVERY,
) -> EffortResult:
    """Simulate an annotator labeling ``truth`` with the tool's ``groups``.

    groups: (N,) int group per face, -1 = noise (a group of one). truth: (N,) str/int true
    label per face (read only as an annotator would, see the module docstring).
    strategy: ``"plain"`` or ``"interactive"`` (then ``features`` (N, D) is required: what the
    tool's Suggest step learns on). split_vectors: (N, d) the vectors the app's *split by
    similarity* works on (the cluster run's; default ``features``). config: :class:`InteractiveConfig` for the interactive
    session. snapshot_at: keep the labels as they stood after that many actions in
    ``result.snapshot`` (what a session of at most that many actions hands to training).
    log_every: seconds between the session's progress lines (INFO; 0: one per action).
    Returns an :class:`EffortResult`.
    """
    groups = np.asarray(groups)
    truth = np.asarray(truth)
    if groups.ndim != 1 or len(groups) != len(truth):
        raise ValueError(
            f"groups has shape {groups.shape} but truth has {len(truth)} rows; pass one of each per face"
        )
    if len(groups) == 0:
        raise InputError("no faces to simulate (groups is empty)")
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    classes, y = encode_truth(truth)
    g = noise_as_singletons(groups)
    cfg = config or InteractiveConfig()
    s = _Session(
        y, len(classes), cfg.checked_weight, snapshot_at, name=strategy, log_every=log_every
    )
    n_groups = len(np.unique(g))
    log.info(
        "simulate %s: %d faces, %d groups, %d states", strategy, len(y), n_groups, len(classes)
    )
    if strategy == "plain":
        _plain(g, s)
    else:
        if features is None or len(features) != len(groups):
            got = None if features is None else np.shape(features)
            raise ValueError(
                f"interactive simulation needs features (N={len(groups)}, D); got {got}"
            )
        X = np.asarray(features, dtype=np.float32)
        V = X if split_vectors is None else np.asarray(split_vectors, dtype=np.float32)
        if len(V) != len(X):
            raise ValueError(f"split_vectors has {len(V)} rows but features has {len(X)}")
        _interactive(g, X, V, s, cfg)
    s.report(done=True)
    return _result(strategy, s, groups, truth, n_groups, classes)


# --- workspace shell -------------------------------------------------------------------------


def simulate_workspace(
    ws: Workspace,
    truth_csv: str,
    *,
    truth_column: str = "state",
    file_column: str = "file",
    run_id: str | None = None,
    features: str = "auto",
    config: InteractiveConfig | None = None,
    all_faces: bool = False,
) -> tuple[dict[str, EffortResult], dict[str, Any]]:
    """Plain and interactive effort for the workspace's cluster run ``run_id`` (None = current).

    Returns ``({"plain": ..., "interactive": ...}, info)`` where ``info`` names the run, the
    feature spec and the face counts; the summaries are also written to
    ``clusters/<run_id>/simulation.json``.
    """
    from labeler.loop.truth import join_truth, session_inputs, split_vectors_of
    from labeler.workspace import write_json

    truth = join_truth(
        ws, truth_csv, truth_column=truth_column, file_column=file_column, all_faces=all_faces
    )
    ids = truth["face_id"].to_numpy(dtype=str)
    groups, X, run = session_inputs(ws, ids, run_id=run_id, features=features)
    y = truth["truth"].to_numpy(dtype=str)
    V = split_vectors_of(ws, run, ids, run_id)
    results = {
        "plain": simulate(groups, y),
        "interactive": simulate(
            groups, y, strategy="interactive", features=X, split_vectors=V, config=config
        ),
    }
    rid = run.params.get("run_id", run_id or "current")
    info = {
        "run_id": rid,
        "features": features,
        "faces_with_truth": len(ids),
        "faces_total": len(ws.faces()),
        "truth_csv": str(truth_csv),
        "truth_column": truth_column,
        "config": config or InteractiveConfig(),
    }
    out = {"info": info, **{k: r.summary() for k, r in results.items()}}
    write_json(ws.clusters_dir / str(rid) / "simulation.json", out)
    return results, info
