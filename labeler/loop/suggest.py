"""Suggestion groups with honest confidence: the learning loop's one implementation.

The app's *Suggest* step (:func:`labeler.loop.step.suggest_workspace`, ``labeler suggest``)
and the simulated annotator of ``labeler simulate`` all call :func:`suggest`. Labels are
integer codes ``0..C-1`` with ``-1`` meaning "not labeled yet" (the caller maps its strings to
codes).

How it works (all on plain arrays):

1. A class-balanced ridge head (closed form, milliseconds for 10k faces) is fitted K times,
   each time without one fold of the labeled faces (folds keep ``cv_groups`` together, e.g.
   the faces of one photo), so every labeled face gets an **out-of-fold** prediction: no
   model ever scores its own training faces.
2. One temperature is fitted on those out-of-fold scores (negative log-likelihood); the
   temperature-scaled top probability is the face's ``confidence``.
3. Confidence **bands** (``SuggestConfig.bands``) get their measured precision from the
   out-of-fold faces: "in cross-validation 96 % of faces in this band were right". Per
   predicted value the count is shrunk towards the band's pooled precision (``prior_n``), and
   a Wilson lower bound says how sure that number is.
4. The head fitted on all labels predicts the unlabeled faces; they form **suggestion
   groups** by (predicted value, band), ordered by expected correct faces (size times measured
   precision): biggest and most certain first. Within a group the least confident faces come
   first, so an annotator unticks the likely wrong ones at the top.
5. **Measured or not**: the out-of-fold precision only holds for faces like those it was
   measured on. A labeled face's nearest labeled face in another fold sets the range
   (``unmeasured_quantile``: the share of labeled faces left below the threshold); an
   unlabeled face less similar than that to every labeled face is **unmeasured** (``measured``
   False): faces from groups nobody labeled, where the measured precision overstates (on
   realmasks labeled by whole groups, 100-600 labels: such faces held 0.44-0.79; the faces in
   range held 0.84-0.91 where 0.87-0.91 was shown, ``bench/results/review_precision.md``).
   The app never pre-ticks them.
6. **Suspected label errors** are labeled faces whose out-of-fold prediction contradicts their
   label (:func:`labeler.loop.suspects.select_suspects`): only for classes with enough labels
   to judge, only in confident bands, and at most ``suspect_share`` of the labeled faces.

Example::

    res = suggest(X, y)                 # X (N, D), y (N,) int, -1 = unlabeled
    res.groups                          # one row per suggestion group, best first
    res.group_members(0)                # row indices of the first group, least sure first
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from labeler.loop.suspects import select_suspects

log = logging.getLogger(__name__)

#: Lower edges of the confidence bands (the last band ends at 1.0).
BANDS = (0.0, 0.6, 0.8, 0.9, 0.95, 0.98, 0.995)

GROUP_COLUMNS = [
    "group",
    "value",
    "band",
    "lo",
    "hi",
    "size",
    "precision",
    "lower",
    "n_checked",
    "expected",
    "pretick",
    "measured",
]
BAND_COLUMNS = ["band", "lo", "hi", "n", "right", "precision", "lower"]


@dataclass(frozen=True)
class SuggestConfig:
    """Options of :func:`suggest`.

    folds: K of the out-of-fold predictions (capped by the labels; 2-10). lam: L2 strength
    of the ridge head (0.25-2.5 on :func:`labeler.features.head_features`, which the Suggest
    step learns on; about 10 with ``standardize``). standardize: scale every column to unit
    variance first (False: the features' own scale, which the head features are made for:
    the penalty then shrinks their weak directions most). bands: lower confidence edges.
    prior_n: pseudo-count that shrinks a (value, band) precision to the band's pooled
    precision (5-50). pretick: the Wilson lower bound (95 %) of a group's measured precision
    at or above which the app pre-ticks its faces; a group below it is split by similarity
    into chunks of at most ``max_unsure_group`` faces (one page to look at; 0 = never).
    min_labels: labeled faces needed before
    anything is suggested. suspect_share: at most this share of labeled faces is flagged;
    suspect_min_class: labels a class needs (given and suggested) before its faces are
    judged; suspect_min_precision: the measured precision the contradicting band must have.
    unmeasured_quantile: an unlabeled face whose nearest labeled face is less similar than
    this share of labeled faces are to their nearest one in another fold is *unmeasured*
    (0 = every face counts as measured). vote_weight: the share of a trained model's vote
    (:func:`suggest`'s ``vote``) in the probabilities (0-1); None: the share of
    ``VOTE_WEIGHTS`` whose mixture has the least log-loss on the labeled faces' out-of-fold
    rows (a model trained on few labels, or long ago, gets less say).

    lam 0.75 and unstandardized: realmasks' interactive eff95 went from a median 26.7 to 28.8
    over 5 cluster seeds (0.25: 28.8, 2.5: 27.5), MaskedFace-Net's eff98 rose, the others
    did not move (``bench/EFFORT.md``, "The Suggest step's own features").
    """

    folds: int = 5
    lam: float = 0.75
    bands: tuple[float, ...] = BANDS
    prior_n: float = 10.0
    pretick: float = 0.9
    max_unsure_group: int = 48
    min_labels: int = 4
    suspect_share: float = 0.02
    suspect_min_class: int = 10
    suspect_min_precision: float = 0.9
    unmeasured_quantile: float = 0.1
    vote_weight: float | None = None
    standardize: bool = False
    seed: int = 0


@dataclass(frozen=True, eq=False)
class SuggestResult:
    """What :func:`suggest` found.

    classes: (C,) the codes seen in the labels. pred: (N,) predicted code (out-of-fold for
    labeled rows, the full head for unlabeled ones; -1 when nothing could be learned).
    confidence: (N,) temperature-scaled top probability. proba: (N, C) those probabilities.
    band: (N,) band index. group: (N,) suggestion group of each unlabeled row (-1 for labeled
    rows). bands: per-band out-of-fold precision (BAND_COLUMNS). groups: suggestion groups
    (GROUP_COLUMNS) in display order, ``group`` = row position. suspects: (S,) labeled rows
    flagged as likely label errors, most likely first. temperature: the fitted T.
    measured: (N,) False for an unlabeled face unlike every labeled face (no precision was
    measured on faces like it); True for the others and every labeled face. vote_weight:
    the share a trained model's vote had (0: no vote).
    """

    classes: np.ndarray
    pred: np.ndarray = field(repr=False)
    confidence: np.ndarray = field(repr=False)
    proba: np.ndarray = field(repr=False)
    band: np.ndarray = field(repr=False)
    group: np.ndarray = field(repr=False)
    bands: pd.DataFrame = field(repr=False)
    groups: pd.DataFrame = field(repr=False)
    suspects: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)
    measured: np.ndarray = field(repr=False)
    temperature: float = 1.0
    n_labeled: int = 0
    vote_weight: float = 0.0

    def group_members(self, g: int) -> np.ndarray:
        """Row indices of suggestion group ``g``, least confident first."""
        rows = np.flatnonzero(self.group == g)
        return rows[np.argsort(self.confidence[rows], kind="stable")]


def empty_result(n: int, reason: str = "") -> SuggestResult:
    """A result with nothing to suggest (too few labels or one class only)."""
    if reason:
        log.info("no suggestions: %s", reason)
    return SuggestResult(
        classes=np.zeros(0, np.int64),
        pred=np.full(n, -1, np.int64),
        confidence=np.zeros(n, np.float32),
        proba=np.zeros((n, 0), np.float32),
        band=np.zeros(n, np.int64),
        group=np.full(n, -1, np.int64),
        bands=pd.DataFrame(columns=BAND_COLUMNS),
        groups=pd.DataFrame(columns=GROUP_COLUMNS),
        suspects=np.zeros(0, np.int64),
        precision=np.zeros(n, np.float32),
        measured=np.ones(n, bool),
    )


# --- the head --------------------------------------------------------------------------------


#: the shares of a trained model's vote that :func:`vote_weight` chooses from
VOTE_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def vote_weight(P: np.ndarray, V: np.ndarray, yc: np.ndarray) -> float:
    """The share of ``VOTE_WEIGHTS`` whose mixture ``(1 - w) P + w V`` of out-of-fold rows
    (L, C) has the least class-balanced log-loss against their labels ``yc`` (L,). Never 1:
    the Suggest step's own head keeps a say, it knows the labels given since the model was
    trained."""
    idx = np.arange(len(yc))
    per_class = 1.0 / np.bincount(yc)[yc]  # every class counts the same, as the head's do
    loss = [-(per_class * np.log(np.clip((1 - w) * P[idx, yc] + w * V[idx, yc], 1e-9, None))).sum()
            for w in VOTE_WEIGHTS]  # fmt: skip
    return float(VOTE_WEIGHTS[int(np.argmin(loss))])


def rows_sum_to_one(P: np.ndarray) -> np.ndarray:
    """(N, C) float64: each row of ``P`` scaled to sum to 1; a row of zeros gets equal
    shares."""
    P = np.asarray(P, np.float64)
    s = P.sum(1, keepdims=True)
    return np.where(s > 0, P / np.where(s > 0, s, 1.0), 1.0 / max(1, P.shape[1]))


def design_matrix(X: np.ndarray, standardize: bool = True) -> np.ndarray:
    """(N, D + 1) float64: ``X`` centred and (``standardize``) scaled to unit variance per
    column, with a bias column of ones."""
    X = np.asarray(X, dtype=np.float64)
    Z = X - X.mean(0, keepdims=True)
    if standardize:
        Z /= Z.std(0, keepdims=True) + 1e-6
    return np.concatenate([Z, np.ones((len(X), 1))], axis=1)


def ridge_scores(
    A: np.ndarray,
    yc: np.ndarray,
    rows: np.ndarray,
    w: np.ndarray,
    n_classes: int,
    lam: float,
    *,
    predict: np.ndarray,
    folds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class scores of a class-balanced ridge head (weighted least squares on one-hot targets).

    A: (N, D+1) standardised design with a bias column. rows: (L,) labeled rows with codes
    yc (L,) and trust w (L,); each class's trust is rescaled so every class present weighs
    the same. Returns the scores (len(predict), C) of the head fitted on all labeled rows,
    and with ``folds`` (L,) fold ids the out-of-fold scores (L, C): fold f is scored by the
    head fitted without it, exactly (per-class Gram matrices are summed once and the fold's
    part subtracted, so K folds cost about one fit).
    """
    Al = A[rows]
    d = A.shape[1]
    reg = lam * np.eye(d)
    reg[-1, -1] = 1e-6  # the bias is not shrunk

    def grams(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        G = np.zeros((n_classes, d, d))
        B = np.zeros((n_classes, d))
        for c in range(n_classes):
            mc = m & (yc == c)
            G[c] = Al[mc].T @ (Al[mc] * w[mc, None])
            B[c] = Al[mc].T @ w[mc]
        return G, B, np.bincount(yc[m], weights=w[m], minlength=n_classes)

    def solve(G_c: np.ndarray, B_c: np.ndarray, mass: np.ndarray, n_rows: int) -> np.ndarray:
        present = mass > 1e-9
        scale = np.zeros(n_classes)
        scale[present] = n_rows / (present.sum() * mass[present])
        return np.linalg.solve(np.tensordot(scale, G_c, axes=1) + reg, (B_c * scale[:, None]).T)

    G, B, mass = grams(np.ones(len(rows), bool))
    full = A[predict] @ solve(G, B, mass, len(rows))
    if folds is None:
        return full, None
    oof = np.zeros((len(rows), n_classes))
    for f in np.unique(folds):
        te = folds == f
        Gt, Bt, mt = grams(te)
        oof[te] = Al[te] @ solve(G - Gt, B - Bt, mass - mt, int((~te).sum()))
    return full, oof


def _softmax(S: np.ndarray, T: float) -> np.ndarray:
    Z = S / T
    Z = Z - Z.max(1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(1, keepdims=True)


def fit_temperature(S: np.ndarray, yc: np.ndarray) -> float:
    """The T in [1e-3, 10] minimising the NLL of ``softmax(S / T)`` for codes ``yc``."""
    from scipy.optimize import minimize_scalar

    idx = np.arange(len(yc))

    def nll(logt: float) -> float:
        P = _softmax(S, float(np.exp(logt)))
        return float(-np.log(np.clip(P[idx, yc], 1e-12, 1.0)).mean())

    res = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(10.0)), method="bounded")
    return float(np.exp(res.x))


def _held_out_units(
    Z: np.ndarray, cv_groups: np.ndarray | None, rows: np.ndarray, k: int
) -> np.ndarray | None:
    """Units held out together (L,): the labeled rows' ``cv_groups`` (e.g. the label event:
    the faces of one bulk action are not independent, and the unlabeled faces the model will
    be judged on come from other groups), each cut into 2K chunks of similar faces, so that
    every fold holds out coherent parts of every event (a model judged on faces it saw the
    neighbours of would overclaim) and no fold loses a whole class to one big event."""
    if cv_groups is None:
        return None
    g = np.unique(np.asarray(cv_groups)[rows], return_inverse=True)[1]
    out = np.empty(len(rows), np.int64)
    nxt = 0
    for u in range(g.max() + 1 if len(g) else 0):
        m = np.flatnonzero(g == u)
        cap = max(2, -(-len(m) // (2 * k)))
        part = _similar_chunks(Z[m], cap) if len(m) > cap else np.zeros(len(m), np.int64)
        out[m] = nxt + part
        nxt += int(part.max()) + 1
    return out


def make_folds(n: int, k: int, groups: np.ndarray | None, seed: int) -> np.ndarray:
    """(n,) fold ids in 0..k-1; rows of one group share a fold (groups shuffled by ``seed``)."""
    g = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    ng = int(g.max()) + 1 if n else 0
    perm = np.random.default_rng(seed).permutation(ng)
    return (perm[g] % k).astype(np.int64)


def wilson_lower(right: np.ndarray, n: np.ndarray, z: float = 1.96) -> np.ndarray:
    """Lower end of the Wilson score interval of ``right / n`` (0 where n == 0)."""
    right = np.asarray(right, np.float64)
    n = np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = right / n
        den = 1 + z * z / n
        mid = p + z * z / (2 * n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        out = (mid - half) / den
    return np.where(n > 0, out, 0.0)


def band_of(confidence: np.ndarray, bands: tuple[float, ...] = BANDS) -> np.ndarray:
    """(N,) band index of each confidence (``bands`` are lower edges)."""
    return np.clip(np.searchsorted(np.asarray(bands), confidence, side="right") - 1, 0, None)


def reliability(
    confidence: np.ndarray, correct: np.ndarray, *, bins: int = 10
) -> tuple[pd.DataFrame, float]:
    """Reliability table (equal-width confidence bins) and expected calibration error."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    edges = np.linspace(0, 1, bins + 1)
    b = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows = []
    ece = 0.0
    for i in range(bins):
        m = b == i
        if not m.any():
            continue
        conf, acc = float(confidence[m].mean()), float(correct[m].mean())
        ece += m.sum() / len(b) * abs(conf - acc)
        rows.append({"lo": edges[i], "hi": edges[i + 1], "n": int(m.sum()), "confidence": conf,
                     "accuracy": acc})  # fmt: skip
    return pd.DataFrame(rows), float(ece)


def _similar_chunks(Z: np.ndarray, max_size: int) -> np.ndarray:
    """(n,) chunk id of each row: split at the median of the rows' main direction of
    variation (a few power iterations), recursively, until every chunk has at most
    ``max_size`` rows. O(n d log(n / max_size)); deterministic."""
    Z = np.asarray(Z, dtype=np.float32)
    out = np.zeros(len(Z), np.int64)
    stack = [np.arange(len(Z))]
    next_id = 0
    while stack:
        idx = stack.pop()
        if len(idx) <= max_size:
            out[idx] = next_id
            next_id += 1
            continue
        C = Z[idx] - Z[idx].mean(0)
        v = C[np.argmax(np.einsum("ij,ij->i", C, C))].copy()  # the farthest row: a start
        for _ in range(8):
            v = C.T @ (C @ v)
            v /= max(float(np.linalg.norm(v)), 1e-12)
        proj = C @ v
        order = np.argsort(proj, kind="stable")
        half = len(idx) // 2
        stack += [idx[order[half:]], idx[order[:half]]]
    return out


def nearest_similarity(
    Q: np.ndarray, B: np.ndarray, *, q_fold: np.ndarray | None = None,
    b_fold: np.ndarray | None = None, cells: int = 1 << 24,
) -> np.ndarray:  # fmt: skip
    """(len(Q),) the highest cosine of each row of ``Q`` to a row of ``B`` (both L2-normalised
    float32), only over rows of another fold when ``q_fold`` / ``b_fold`` are given (-1 where
    there is none). Exact, in blocks of query rows of at most ``cells`` similarities (64 MB)."""
    out = np.full(len(Q), -1.0, np.float32)
    if not len(B):
        return out
    block = max(1, cells // len(B))
    for s in range(0, len(Q), block):
        S = Q[s : s + block] @ B.T
        if q_fold is not None and b_fold is not None:
            S[q_fold[s : s + block, None] == b_fold[None, :]] = -1.0
        out[s : s + block] = S.max(1)
    return out


def measured_faces(
    Z: np.ndarray,
    rows: np.ndarray,
    folds: np.ndarray,
    query: np.ndarray,
    *,
    quantile: float,
    sample: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Which ``query`` rows lie in the range the out-of-fold precision was measured on.

    Z: (N, D) features; rows: (L,) labeled rows with their ``folds``. A labeled row was
    scored by a head that saw its nearest labeled row of another fold; ``quantile`` of those
    similarities (from at most ``sample`` labeled rows) is the threshold. Returns (len(query),)
    bool (nearest labeled row at least that similar) and the threshold."""
    if quantile <= 0 or not len(query) or len(rows) < 2:
        return np.ones(len(query), bool), -1.0
    Zn = np.asarray(Z, np.float32)
    Zn = Zn / np.maximum(np.linalg.norm(Zn, axis=1, keepdims=True), 1e-12)
    L = Zn[rows]
    pick = np.arange(len(rows))
    if len(rows) > sample:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))
    oof = nearest_similarity(L[pick], L, q_fold=folds[pick], b_fold=folds)
    oof = oof[oof > -1]
    if not len(oof):
        return np.ones(len(query), bool), -1.0
    tau = float(np.quantile(oof, quantile))
    return nearest_similarity(Zn[query], L) >= tau, tau


def band_precision(
    pred: np.ndarray,
    band: np.ndarray,
    yc: np.ndarray,
    *,
    n_classes: int,
    bands: tuple[float, ...] = BANDS,
    prior_n: float = 10.0,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Measured precision of out-of-fold predictions per confidence band.

    pred, band, yc: (L,) predicted code, band index and label code of out-of-fold rows.
    Returns the pooled per-band table (BAND_COLUMNS) and, per key ``value * len(bands) +
    band``, the precision shrunk towards the pooled one with ``prior_n`` pseudo-counts, the
    number of rows and the number right. A band nobody was measured in borrows the precision
    of the band below (the lowest borrows chance, 1 / C).
    """
    nb = len(bands)
    hi = np.append(np.asarray(bands[1:], np.float64), 1.0)
    right = pred == yc
    n_b = np.bincount(band, minlength=nb)
    r_b = np.bincount(band, weights=right, minlength=nb)
    pooled = np.zeros(nb)
    for b in range(nb):
        if n_b[b]:
            pooled[b] = r_b[b] / n_b[b]
        else:
            pooled[b] = pooled[b - 1] if b > 0 else 1.0 / n_classes
    table = pd.DataFrame(
        {
            "band": np.arange(nb),
            "lo": bands,
            "hi": hi,
            "n": n_b,
            "right": r_b.astype(int),
            "precision": pooled,
            "lower": wilson_lower(r_b, n_b),
        }  # fmt: skip
    )
    key = pred * nb + band
    n_vb = np.bincount(key, minlength=n_classes * nb)
    r_vb = np.bincount(key, weights=right, minlength=n_classes * nb)
    prec = (r_vb + prior_n * np.tile(pooled, n_classes)) / (n_vb + prior_n)
    return table, prec, n_vb, r_vb


# --- the step --------------------------------------------------------------------------------


def suggest(
    X: np.ndarray,
    y: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    cv_groups: np.ndarray | None = None,
    config: SuggestConfig | None = None,
    vote: np.ndarray | None = None,
) -> SuggestResult:
    """Out-of-fold calibrated predictions, suggestion groups and suspects for every row.

    X: (N, D) features. y: (N,) int codes, -1 = unlabeled. weights: (N,) trust per labeled
    row (default 1). cv_groups: (N,) rows held out together (the label event that gave
    each face its label, or its photo; default each row alone), cut into 2K chunks of
    similar faces each. vote: (N, max code + 1) a trained model's probabilities per code,
    out-of-fold for the faces it was trained on (:mod:`labeler.loop.vote`); mixed in at
    ``config.vote_weight``, so the measured precision is the mixture's. Returns a
    :class:`SuggestResult`; with fewer than ``config.min_labels`` labels or one class only,
    an empty one (nothing is guessed).
    """

    cfg = config or SuggestConfig()
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X has shape {X.shape} but y has {len(y)} rows; pass (N, D) and (N,)")
    n = len(y)
    rows = np.flatnonzero(y >= 0)
    classes = np.unique(y[rows])
    if len(rows) < cfg.min_labels or len(classes) < 2:
        return empty_result(n, f"{len(rows)} labels of {len(classes)} classes")
    C = len(classes)
    yc = np.searchsorted(classes, y[rows])
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    counts = np.bincount(yc, minlength=C)
    k = int(min(cfg.folds, max(2, len(rows) // 2)))
    A = design_matrix(X, cfg.standardize)
    folds = make_folds(len(rows), k, _held_out_units(A[rows, :-1], cv_groups, rows, k), cfg.seed)
    from threadpoolctl import threadpool_limits

    unl = np.flatnonzero(y < 0)
    # small dense solves: one BLAS thread is ~100x faster than several fighting for 2 cores
    with threadpool_limits(limits=1, user_api="blas"):
        S_unl, S_oof = ridge_scores(A, yc, rows, w[rows], C, cfg.lam, predict=unl, folds=folds)
    T = fit_temperature(S_oof, yc)
    P = np.zeros((n, C), np.float64)
    P[rows] = _softmax(S_oof, T)
    P[unl] = _softmax(S_unl, T)
    w_v = 0.0
    if vote is not None:
        V = np.asarray(vote, np.float64)
        if V.shape[0] != n or V.shape[1] <= classes.max():
            raise ValueError(f"vote has shape {V.shape}; pass (N={n}, codes) probabilities")
        V = rows_sum_to_one(V[:, classes])  # over the classes the labels hold
        w_v = cfg.vote_weight
        if w_v is None:  # measured on the labeled faces' out-of-fold rows
            w_v = vote_weight(P[rows], V[rows], yc)
            log.debug("vote weight %.2f (least out-of-fold log-loss)", w_v)
        P = (1.0 - w_v) * P + w_v * V
    pred_c = P.argmax(1)
    conf = P.max(1)
    band = band_of(conf, cfg.bands)
    nb = len(cfg.bands)
    hi = np.append(np.asarray(cfg.bands[1:], np.float64), 1.0)

    # measured precision per band (pooled) and per (value, band), from out-of-fold rows
    bands_df, prec_vb, n_vb, r_vb = band_precision(
        pred_c[rows], band[rows], yc, n_classes=C, bands=cfg.bands, prior_n=cfg.prior_n
    )
    precision = prec_vb[pred_c * nb + band]
    measured = np.ones(n, bool)
    measured[unl], tau = measured_faces(A[:, :-1], rows, folds, unl,
                                        quantile=cfg.unmeasured_quantile, seed=cfg.seed)  # fmt: skip
    log.debug("measured range: similarity >= %.3f; %d of %d unlabeled faces outside",
              tau, int((~measured[unl]).sum()), len(unl))  # fmt: skip

    # suggestion groups of the unlabeled rows: (value, band), and a group whose precision
    # cannot be defended (it has to be looked at) in chunks of similar faces of one page
    group = np.full(n, -1, np.int64)
    gcols: dict[str, list] = {c: [] for c in GROUP_COLUMNS}
    if len(unl):
        vb = pred_c[unl] * nb + band[unl]
        low = wilson_lower(r_vb, n_vb)
        chunk = np.zeros(len(unl), np.int64)
        if cfg.max_unsure_group:
            for key in np.unique(vb):
                m = np.flatnonzero(vb == key)
                if low[key] < cfg.pretick and len(m) > cfg.max_unsure_group:
                    chunk[m] = _similar_chunks(A[unl[m], :-1], cfg.max_unsure_group)
        key_u = vb * len(unl) + chunk
        keys, inv, size = np.unique(key_u, return_inverse=True, return_counts=True)
        kvb = keys // len(unl)
        exp = size * prec_vb[kvb]
        n_measured = np.bincount(inv, weights=measured[unl], minlength=len(keys))
        order = np.lexsort((keys, -exp))
        pos = np.empty(len(keys), np.int64)
        pos[order] = np.arange(len(keys))
        group[unl] = pos[inv]
        for j in order:
            v, b = divmod(int(kvb[j]), nb)
            gcols["group"].append(int(pos[j]))
            gcols["value"].append(int(classes[v]))
            gcols["band"].append(b)
            gcols["lo"].append(float(cfg.bands[b]))
            gcols["hi"].append(float(hi[b]))
            gcols["size"].append(int(size[j]))
            gcols["precision"].append(float(prec_vb[kvb[j]]))
            gcols["lower"].append(float(low[kvb[j]]))
            gcols["n_checked"].append(int(n_vb[kvb[j]]))
            gcols["expected"].append(float(exp[j]))
            gcols["pretick"].append(bool(low[kvb[j]] >= cfg.pretick))
            gcols["measured"].append(int(n_measured[j]))
    groups_df = pd.DataFrame(gcols, columns=GROUP_COLUMNS)

    suspects = select_suspects(
        yc,
        P[rows],
        counts=counts,
        band_precision=precision[rows],
        share=cfg.suspect_share,
        min_class=cfg.suspect_min_class,
        min_precision=cfg.suspect_min_precision,
    )
    return SuggestResult(
        classes=classes,
        pred=classes[pred_c],
        confidence=conf.astype(np.float32),
        proba=P.astype(np.float32),
        band=band,
        group=group,
        bands=bands_df,
        groups=groups_df,
        suspects=rows[suspects],
        precision=precision.astype(np.float32),
        measured=measured,
        temperature=T,
        n_labeled=len(rows),
        vote_weight=float(w_v),
    )
