"""The oracle annotator: how many actions a grouping (and the tool's guided steps) costs.

Everything is a plain function on arrays. ``truth`` is only ever read the way a human
annotator would read it: the majority true label of a group the annotator looks at and
bulk-labels (what they would type for that group), and the true label of one face they
correct. Truth never chooses groups, features, orders or splits.

Effort metric (shared/README.md, "Measuring labeling effort")
--------------------------------------------------------------
One **action** bulk-assigns one label to one group (every face of the group receives the
group's majority true label; ties go to the alphabetically first label), or corrects one
face. Noise points (group -1) are groups of one. A face counts as labeled correctly when its
current label equals its true label; unlabeled faces count as wrong. ``effN`` = correct
faces / actions at the first action after which accuracy >= N %. Labeling one by one gives
``effN = 1``; a perfect grouping of C equal classes gives ``N_faces / C``.

Protocols
---------
``strategy="plain"``: bulk-label every group, biggest first (ties by group id), then correct
the wrong faces one by one (an oracle order: only wrong faces are touched).

``strategy="interactive"`` (needs ``features``): the session the tool offers, every step an
action as above.

1. *Seed.* Take the ``seed_groups`` biggest real groups (size >= ``min_group``); when the
   grouping has fewer, the tool first splits its biggest group into ``split_parts`` with
   k-means on ``features`` (1 action per split) until it has ``seed_groups``. The
   annotator looks at each; if it is visibly mixed (its majority share is below
   ``split_purity``) they press *split* (1 action; the tool sub-clusters the group with
   k-means on ``features`` into ``split_parts`` parts) and bulk-label each part (1 action
   each); otherwise they bulk-label the group (1 action).
2. *Rounds* (up to ``max_rounds``):

   a. The guided model (:func:`labeler.guided.fit_predict`, ``method``) is trained on the
      current labels and predicts every face. Trust weights: a bulk label counts 1 for the
      ``core_share`` of its group nearest the group's centre in ``features`` and
      ``loose_weight`` for the rim (where groups are mixed); an accepted suggestion counts 1
      where the model agreed with the label received, else ``loose_weight``; a face
      corrected one by one counts ``checked_weight``.
   b. *Suggestions.* Faces not corrected individually whose prediction differs from their
      current label (or that are unlabeled) are grouped by (current label, predicted label);
      groups of at least ``min_group`` faces are shown biggest first (with
      ``confidence_split`` the sure and unsure halves by margin are shown apart). Accepting
      one is 1 bulk action and gives every face of the group the group's majority true
      label. The annotator accepts when that raises the number of correct faces in the
      group, else dismisses it; a dismissal also costs 1 action (and the same suggestion is
      not shown again). Suggestion groups smaller than ``min_group`` are left to the review
      queue, except in the first round, when unlabeled faces are all offered.
   c. *Review queue.* Faces not yet corrected individually, ordered by disagreement (prediction
      differs from the current label first) then by ascending prediction margin. The
      annotator walks the queue and corrects each wrong face (1 action; the face becomes
      checked), stopping after ``review_batch`` corrections. Faces seen and found right cost
      nothing and are counted in ``reviewed`` only.
   d. The round ends; the loop stops early when a round changes nothing.

3. *Finish.* Any faces still wrong are corrected one by one (oracle order), so the curve
   always reaches 100 %.

Example::

    res = simulate(groups, truth)                              # plain
    res = simulate(groups, truth, strategy="interactive", features=X)
    res.eff98, res.actions98
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LEVELS = (95, 98, 99)
STRATEGIES = ("plain", "interactive")


@dataclass(frozen=True)
class InteractiveConfig:
    """Options of the interactive session (see the module docstring for the protocol)."""

    seed_groups: int = 8
    min_group: int = 3
    split_purity: float = 0.8
    split_parts: int = 3
    method: str = "ridge"
    core_share: float = 0.5
    loose_weight: float = 0.2
    review_batch: int = 5
    confidence_split: bool = False
    max_rounds: int = 40
    checked_weight: float = 3.0
    seed: int = 0


@dataclass(frozen=True)
class EffortResult:
    """What a labeling session cost.

    ``nmi``/``ari``/``purity`` describe the starting grouping against the truth (noise points
    as singletons). ``effN`` / ``actionsN`` for N in :data:`LEVELS`. ``curve`` (A,) holds the
    number of correct faces after each action; ``kinds`` counts actions by kind; ``reviewed``
    is the number of faces the annotator looked at in review queues without changing them.
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
    kinds: dict[str, int] = field(default_factory=dict, compare=False)
    curve: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    # labels (N,) str ('' = unlabeled) as they stood after ``snapshot_at`` actions, if asked
    snapshot: np.ndarray | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (the curve and snapshot are left out)."""
        out = {
            k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("curve", "snapshot")
        }
        out["kinds"] = dict(self.kinds)
        return out

    def accuracy_curve(self) -> np.ndarray:
        """(A,) accuracy after each action."""
        return self.curve / max(self.n_faces, 1)


# --- helpers ---------------------------------------------------------------------------------


def noise_as_singletons(groups: np.ndarray) -> np.ndarray:
    """(N,) int groups with every ``-1`` replaced by a fresh id of its own."""
    g = np.asarray(groups).astype(np.int64).copy()
    noise = g < 0
    start = (g.max() + 1) if (~noise).any() else 0
    g[noise] = start + np.arange(int(noise.sum()))
    return g


def _encode_truth(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth).astype(str)
    classes, y = np.unique(truth, return_inverse=True)
    return classes, y.astype(np.int64)


def grouping_scores(groups: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """NMI, ARI and purity of ``groups`` (noise as singletons) against ``truth``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    g = noise_as_singletons(groups)
    _, y = _encode_truth(truth)
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
    ) -> None:
        self.y = y
        self.snapshot_at = snapshot_at
        self.snapshot: np.ndarray | None = None
        self.checked_weight = checked_weight
        self.C = n_classes
        self.cur = np.full(len(y), -1, np.int64)
        self.checked = np.zeros(len(y), bool)
        self.trust = np.zeros(len(y), np.float32)  # how much the guided model trusts a label
        self.curve: list[int] = []
        self.kinds: Counter[str] = Counter()
        self.reviewed = 0

    @property
    def correct(self) -> int:
        return int((self.cur == self.y).sum())

    def act(self, kind: str) -> None:
        self.kinds[kind] += 1
        self.curve.append(self.correct)
        if len(self.curve) == self.snapshot_at:
            self.snapshot = self.cur.copy()

    def bulk(self, members: np.ndarray, kind: str = "bulk") -> int:
        m = _majority(self.y[members], self.C)
        self.cur[members] = m
        self.act(kind)
        return m

    def fix(self, i: int) -> None:
        self.cur[i] = self.y[i]
        self.checked[i] = True
        self.trust[i] = self.checked_weight
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
        kinds=dict(s.kinds),
        curve=curve,
        snapshot=snapshot,
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


def _split(X: np.ndarray, members: np.ndarray, parts: int, seed: int) -> list[np.ndarray]:
    from sklearn.cluster import KMeans

    parts = min(parts, len(members))
    Z = X[members]
    lab = KMeans(n_clusters=parts, n_init=3, random_state=seed).fit_predict(Z)
    return [members[lab == j] for j in range(parts) if (lab == j).any()]


def _core_trust(X: np.ndarray, members: np.ndarray, cfg: InteractiveConfig) -> np.ndarray:
    """Trust of a bulk label per member: 1 for the ``core_share`` nearest the group's centre,
    ``loose_weight`` for the rest (features only: the rim of a group is where it is mixed)."""
    d = np.linalg.norm(X[members] - X[members].mean(0), axis=1)
    core = np.argsort(d, kind="stable")[: max(1, int(round(cfg.core_share * len(members))))]
    t = np.full(len(members), cfg.loose_weight, np.float32)
    t[core] = 1.0
    return t


def _interactive(g: np.ndarray, X: np.ndarray, s: _Session, cfg: InteractiveConfig) -> None:
    from labeler.guided import fit_predict

    def bulk(members: np.ndarray, kind: str) -> None:
        s.bulk(members, kind)
        s.trust[members] = _core_trust(X, members, cfg)

    # 1. seed: biggest real groups (noise excluded), split when visibly mixed. A grouping
    # coarser than seed_groups is refined first: the tool splits its biggest group into
    # split_parts (1 action each) until there are seed_groups groups to look at.
    real = [m for m in _groups_by_size(g) if len(m) >= cfg.min_group]
    while 0 < len(real) < cfg.seed_groups and len(real[0]) >= 2 * cfg.min_group:
        s.act("split")
        parts = _split(X, real[0], cfg.split_parts, cfg.seed)
        real = sorted(real[1:] + parts, key=len, reverse=True)
    for members in real[: cfg.seed_groups]:
        share = np.bincount(s.y[members], minlength=s.C).max() / len(members)
        if share < cfg.split_purity and len(members) >= 2 * cfg.split_parts:
            s.act("split")
            for part in _split(X, members, cfg.split_parts, cfg.seed):
                bulk(part, "bulk")
        else:
            bulk(members, "bulk")
    if not (s.cur >= 0).any():  # no group big enough: label the biggest one anyway
        bulk(_groups_by_size(g)[0], "bulk")

    # 2. rounds of suggestions + review
    dismissed = np.full(len(s.y), -2, np.int64)  # the suggestion last dismissed per face
    for rnd in range(cfg.max_rounds):
        if s.correct == len(s.y):
            break
        before = s.cur.copy()
        pred = fit_predict(X, s.cur, method=cfg.method, weights=s.trust)
        cand = np.flatnonzero(~s.checked & (pred.labels != s.cur) & (pred.labels != dismissed))
        if len(cand):
            key = s.cur[cand] * (s.C + 1) + pred.labels[cand]
            if cfg.confidence_split:  # sure and unsure suggestions are shown as separate groups
                sure = pred.margin[cand] >= np.median(pred.margin[cand])
                key = key * 2 + sure
            kid, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
            for j in np.lexsort((kid, -cnt)):
                members = cand[inv == j]
                unlabeled = s.cur[members[0]] < 0
                if len(members) < cfg.min_group and not (rnd == 0 and unlabeled):
                    continue
                m = _majority(s.y[members], s.C)
                gain = int((s.y[members] == m).sum() - (s.y[members] == s.cur[members]).sum())
                if gain > 0:
                    s.cur[members] = m
                    s.trust[members] = np.where(pred.labels[members] == m, 1.0, cfg.loose_weight)
                    s.act("accept")
                else:
                    dismissed[members] = pred.labels[members]
                    s.act("dismiss")
        # review queue: disagreement first, then low margin
        pred = fit_predict(X, s.cur, method=cfg.method, weights=s.trust)
        disagree = (pred.labels != s.cur).astype(np.float64)
        order = np.lexsort((pred.margin, -disagree))
        fixed = 0
        for i in order:
            if s.checked[i]:
                continue
            if s.cur[i] != s.y[i]:
                s.fix(int(i))
                fixed += 1
                if fixed >= cfg.review_batch:
                    break
            else:
                s.reviewed += 1
        log.debug(
            "round %d: %d correct of %d after %d actions", rnd, s.correct, len(s.y), len(s.curve)
        )
        if np.array_equal(before, s.cur):
            break
    s.finish()


def simulate(
    groups: np.ndarray,
    truth: np.ndarray,
    *,
    strategy: str = "plain",
    features: np.ndarray | None = None,
    config: InteractiveConfig | None = None,
    snapshot_at: int | None = None,
) -> EffortResult:
    """Simulate an annotator labeling ``truth`` with the tool's ``groups``.

    groups: (N,) int group per face, -1 = noise (a group of one). truth: (N,) str/int true
    label per face (read only as an annotator would, see the module docstring).
    strategy: ``"plain"`` or ``"interactive"`` (then ``features`` (N, D) is required: what the
    tool's guided steps learn on). config: :class:`InteractiveConfig` for the interactive
    session. snapshot_at: keep the labels as they stood after that many actions in
    ``result.snapshot`` (what a session of at most that many actions hands to training).
    Returns an :class:`EffortResult`.
    """
    groups = np.asarray(groups)
    truth = np.asarray(truth)
    if groups.ndim != 1 or len(groups) != len(truth):
        raise ValueError(
            f"groups has shape {groups.shape} but truth has {len(truth)} rows; pass one of each per face"
        )
    if len(groups) == 0:
        raise ValueError("no faces to simulate (groups is empty)")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    classes, y = _encode_truth(truth)
    g = noise_as_singletons(groups)
    cfg = config or InteractiveConfig()
    s = _Session(y, len(classes), cfg.checked_weight, snapshot_at)
    n_groups = len(np.unique(g))
    if strategy == "plain":
        _plain(g, s)
    else:
        if features is None or len(features) != len(groups):
            got = None if features is None else np.shape(features)
            raise ValueError(
                f"interactive simulation needs features (N={len(groups)}, D); got {got}"
            )
        _interactive(g, np.asarray(features, dtype=np.float32), s, cfg)
    return _result(strategy, s, groups, truth, n_groups, classes)


def with_strategy(config: InteractiveConfig, **changes: Any) -> InteractiveConfig:
    """A copy of ``config`` with ``changes`` (for benchmark sweeps)."""
    return replace(config, **changes)


# --- workspace shell -------------------------------------------------------------------------


def join_truth(
    ws: Any,
    truth_csv: str,
    *,
    truth_column: str = "state",
    file_column: str = "file",
    all_faces: bool = False,
) -> Any:
    """faces.parquet rows with a ``truth`` column joined from a CSV by source image path.

    A CSV ``file`` value matches an image whose path (relative to its ingested root) equals
    it, or ends with it after whole path components (``images/a.jpg`` matches ``a.jpg``
    entries and vice versa), or, last, has the same file name. Faces of images with no
    truth row are dropped (logged). A per-image label describes one face: by default it goes
    to the image's largest face and the image's other faces (bystanders, false detections)
    are left out of the measurement (logged); ``all_faces=True`` gives every face of the
    image the image's label. Returns a DataFrame with ``face_id`` and ``truth`` in
    faces.parquet order.
    """
    import pandas as pd

    table = pd.read_csv(truth_csv)
    for col in (truth_column, file_column):
        if col not in table.columns:
            raise ValueError(
                f"{truth_csv} has no column {col!r} (columns: {', '.join(map(str, table.columns))}); "
                "pass --truth-column/--file-column"
            )
    keys = table[file_column].astype(str).str.replace("\\", "/", regex=False).str.lstrip("./")
    lookup = dict(zip(keys, table[truth_column].astype(str), strict=True))
    by_name: dict[str, str | None] = {}
    for k, v in lookup.items():
        name = k.rsplit("/", 1)[-1]
        by_name[name] = v if name not in by_name or by_name[name] == v else None

    faces = ws.require_faces()
    images = ws.images()
    paths = dict(zip(images["image_id"], images["path"].astype(str), strict=True))

    def find(path: str | None) -> str | None:
        if path is None:
            return None
        parts = path.replace("\\", "/").split("/")
        for i in range(len(parts)):
            hit = lookup.get("/".join(parts[i:]))
            if hit is not None:
                return hit
        for k, v in lookup.items():  # a CSV path longer than the ingested relative path
            if k.endswith("/" + path):
                return v
        return by_name.get(parts[-1])

    cache: dict[str, str | None] = {}
    truth = []
    for image_id in faces["image_id"]:
        if image_id not in cache:
            cache[image_id] = find(paths.get(image_id))
        truth.append(cache[image_id])
    out = pd.DataFrame({"face_id": faces["face_id"].astype(str), "truth": truth})
    if not all_faces:
        area = (faces["x1"] - faces["x0"]) * (faces["y1"] - faces["y0"])
        largest = area.groupby(faces["image_id"]).transform("max")
        first = ~pd.DataFrame({"i": faces["image_id"], "a": area}).duplicated(["i", "a"])
        keep = (area == largest) & first
        others = int((~keep & out["truth"].notna()).sum())
        if others:
            log.info("%d faces besides each image's largest left out (use all_faces)", others)
        out.loc[~keep.to_numpy(), "truth"] = None
    missing = int(out["truth"].isna().sum())
    if missing == len(out):
        raise ValueError(
            f"no face of the workspace matched a row of {truth_csv} by {file_column!r}; "
            "check --file-column (it must hold image paths relative to the ingested folder)"
        )
    if missing:
        log.warning(
            "%d of %d faces have no truth in %s (no row, or not their image's largest face); left out",
            missing,
            len(out),
            truth_csv,
        )
    return out.dropna(subset=["truth"]).reset_index(drop=True)


def session_inputs(
    ws: Any, face_ids: Any, *, run_id: str | None = None, features: str = "auto"
) -> tuple[np.ndarray, np.ndarray, Any]:
    """What a simulated session on the workspace sees for ``face_ids`` (N,): the cluster run's
    groups (N,), the feature matrix (N, D) of ``features`` and the run itself."""
    from labeler.cluster.store import load_run
    from labeler.features import load_features
    from labeler.workspace import align_to_faces

    ids = np.asarray(face_ids).astype(str)
    run = load_run(ws, run_id)
    fix = f"re-run 'labeler cluster -w {ws.root}'"
    groups = align_to_faces(ids, run.face_ids, run.labels, what="the cluster run", fix=fix)
    fids, X = load_features(ws, features)
    X = align_to_faces(
        ids,
        np.asarray(fids).astype(str),
        X,
        what=f"features {features!r}",
        fix="re-run 'labeler embed'",
    )
    return groups, X, run


def simulate_workspace(
    ws: Any,
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
    from labeler.workspace import write_json

    truth = join_truth(
        ws, truth_csv, truth_column=truth_column, file_column=file_column, all_faces=all_faces
    )
    ids = truth["face_id"].to_numpy(dtype=str)
    groups, X, run = session_inputs(ws, ids, run_id=run_id, features=features)
    y = truth["truth"].to_numpy(dtype=str)
    results = {
        "plain": simulate(groups, y),
        "interactive": simulate(groups, y, strategy="interactive", features=X, config=config),
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
