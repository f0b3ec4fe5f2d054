"""Label errors: labeler's suspect rule vs cleanlab's ``find_label_issues``, on the same
out-of-fold probabilities.

For each shared set (a workspace built by ``labeler run``, the truth joined to each image's
largest face as ``labeler simulate`` does) every true label is entered, then a share of them
(2 %, 5 %, 10 %) is flipped to another class drawn at random, ``--seeds`` times. The Suggest
step (:func:`labeler.loop.suggest.suggest`, default config) gives the out-of-fold
probabilities of every labeled face, each face held out alone (``--events none``) or the
labels of each given class held out as one bulk event (``--events class``: the app holds out
a label event's faces in chunks of similar faces). On those same probabilities:

- **rule**: :func:`labeler.loop.suspects.select_suspects` as the Suggest step ships it
  (both classes with >= 10 labels, a band right >= 90 % of the time in cross-validation,
  p(given) <= 0.1, at most 2 % of the labels; checked equal to what the step returned);
- **rule, no cap**: the same gates without the 2 % cap (``share=1``);
- **cleanlab**: ``cleanlab.filter.find_label_issues(labels, pred_probs)`` with its defaults
  (``filter_by="prune_by_noise_rate"``);
- **cleanlab, top 2 %**: cleanlab's issues ranked by self-confidence, cut to the rule's budget.

Precision = flagged faces that were flipped / flagged; recall = flipped faces flagged /
flipped. With no label flipped (every set, and the ``--clean`` ones only) the second table gives
the share flagged (false alarms, or the set's own label noise). Needs ``cleanlab``, which
labeler does not depend on (``pip install cleanlab``)::

    python bench/bench_suspects.py --set maskedfacenet=WS:LABELS.csv --set webfaces=WS:LABELS.csv \\
        --set mfr2=WS:LABELS.csv --clean realmasks=WS:LABELS.csv [--events class] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RATES = (0.02, 0.05, 0.10)
METHODS = ("rule", "rule, no cap", "cleanlab", "cleanlab, top 2 %")


def load_set(ws_path: str, truth_csv: str) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, D) the ``auto`` features, y (N,) str truth) of the faces with a truth row."""
    from labeler.features import load_features
    from labeler.loop.truth import join_truth
    from labeler.workspace import Workspace, align_to_faces

    ws = Workspace.open(ws_path)
    truth = join_truth(ws, truth_csv)
    ids = truth["face_id"].to_numpy(dtype=str)
    fids, X = load_features(ws, "auto")
    X = align_to_faces(ids, np.asarray(fids).astype(str), np.asarray(X), what="features",
                       fix="re-run 'labeler run'")  # fmt: skip
    return np.asarray(X, np.float32), truth["truth"].to_numpy(dtype=str)


def flagged(yc: np.ndarray, P: np.ndarray, precision: np.ndarray) -> dict[str, np.ndarray]:
    """Rows flagged by each method on labels ``yc`` (L,) and out-of-fold ``P`` (L, C)."""
    from cleanlab.filter import find_label_issues

    from labeler.loop.suggest import SuggestConfig
    from labeler.loop.suspects import select_suspects

    cfg = SuggestConfig()
    counts = np.bincount(yc, minlength=P.shape[1])
    gates = dict(counts=counts, band_precision=precision, min_class=cfg.suspect_min_class,
                 min_precision=cfg.suspect_min_precision)  # fmt: skip
    ranked = np.asarray(
        find_label_issues(yc, P, return_indices_ranked_by="self_confidence", n_jobs=1), np.int64
    )
    return {
        "rule": select_suspects(yc, P, share=cfg.suspect_share, **gates),
        "rule, no cap": select_suspects(yc, P, share=1.0, **gates),
        "cleanlab": ranked,
        "cleanlab, top 2 %": ranked[: max(1, int(cfg.suspect_share * len(yc)))],
    }


def run_set(
    name: str, X: np.ndarray, y: np.ndarray, rate: float, seed: int, events: str = "none"
) -> dict:
    """One trial: flip ``rate`` of the labels (seeded), Suggest out of fold, score each method."""
    from labeler.loop.suggest import suggest

    classes, yc = np.unique(y, return_inverse=True)
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(yc), int(round(rate * len(yc))), replace=False) if rate else []
    noisy = yc.copy()
    for i in flip:
        noisy[i] = rng.choice([c for c in range(len(classes)) if c != yc[i]])
    t0 = time.process_time()
    # events='class': the labels of each given class entered as one bulk event, which the
    # Suggest step holds out in chunks of similar faces (as the app does with label events)
    res = suggest(X, noisy, cv_groups=noisy if events == "class" else None)
    cpu = time.process_time() - t0
    assert len(res.classes) == len(classes)  # every class keeps labels: proba columns = codes
    rows = flagged(noisy, res.proba.astype(np.float64), res.precision)
    assert np.array_equal(rows["rule"], res.suspects)  # what the Suggest step flagged
    truth = set(np.asarray(flip, np.int64).tolist())
    out = {"set": name, "rate": rate, "seed": seed, "faces": len(yc), "flipped": len(truth), "events": events,
           "suggest_cpu_s": round(cpu, 2)}  # fmt: skip
    for m, r in rows.items():
        hit = len(truth & set(r.tolist()))
        out[m] = {"flagged": len(r), "hit": hit,
                  "precision": hit / len(r) if len(r) else float("nan"),
                  "recall": hit / len(truth) if truth else float("nan"),
                  "share": len(r) / len(yc)}  # fmt: skip
    return out


def summarise(trials: list[dict]) -> list[dict]:
    """Mean over seeds per (set, rate, method)."""
    keys = sorted({(t["set"], t["rate"]) for t in trials}, key=lambda k: (k[1] == 0, k))
    rows = []
    for s, r in keys:
        ts = [t for t in trials if t["set"] == s and t["rate"] == r]
        for m in METHODS:

            def mean(k: str, ts=ts, m=m) -> float:
                return float(np.nanmean([t[m][k] for t in ts]))

            rows.append({"set": s, "rate": r, "faces": ts[0]["faces"], "method": m,
                         "seeds": len(ts), "flipped": ts[0]["flipped"], "flagged": mean("flagged"),
                         "precision": mean("precision") if r else None,
                         "recall": mean("recall") if r else None, "share": mean("share")})  # fmt: skip
    return rows


def f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None or not (p + r) or np.isnan(p) or np.isnan(r):
        return None
    return 2 * p * r / (p + r)


def print_table(rows: list[dict]) -> None:
    def fmt(v: float | None) -> str:
        return "-" if v is None or np.isnan(v) else f"{v:.2f}"

    print("| set | faces | flipped | method | flagged | precision | recall | F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["rate"]:
            print(f"| {r['set']} | {r['faces']} | {r['rate']:.0%} ({r['flipped']}) | {r['method']} | "
                  f"{r['flagged']:.1f} | {fmt(r['precision'])} | {fmt(r['recall'])} | "
                  f"{fmt(f1(r['precision'], r['recall']))} |")  # fmt: skip
    clean = [r for r in rows if not r["rate"]]
    if clean:
        print("\n| set (all true labels) | faces | method | flagged | share flagged |")
        print("|---|---|---|---|---|")
        for r in clean:
            print(f"| {r['set']} | {r['faces']} | {r['method']} | {r['flagged']:.0f} | "
                  f"{r['share']:.1%} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", default=[], help="NAME=WORKSPACE:LABELS.csv (flips)")
    ap.add_argument(
        "--clean", action="append", default=[], help="NAME=WORKSPACE:LABELS.csv (no flip)"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--events",
        choices=["none", "class"],
        default="none",
        help="label events the Suggest step holds out together: none (each face alone) "
        "or class (one bulk event per given class, as after bulk labeling)",
    )
    ap.add_argument("--out", default=None, help="write the trials and the table rows as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    trials = []
    for spec, rates in [(s, (0.0, *RATES)) for s in args.set] + [(s, (0.0,)) for s in args.clean]:
        name, rest = spec.split("=", 1)
        ws_path, csv = rest.rsplit(":", 1)
        X, y = load_set(ws_path, csv)
        for rate in rates:
            for seed in range(args.seeds if rate else 1):
                trials.append(run_set(name, X, y, rate, seed, args.events))
        print(f"{name}: {len(y)} faces, done", file=sys.stderr)
    rows = summarise(trials)
    print_table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps({"trials": trials, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
