"""Close the loop: labels from a simulated session of <= N actions -> classifier -> held-out F1.

For a workspace built from a folder with ground truth (``labels.csv``: file, state):

1. A held-out test split (20 %, stratified by the truth, grouped by source image) is set
   aside. The truth is used there only to stratify, and to score at the end.
2. A simulated annotator labels the rest (the *pool*) with at most ``--actions`` actions
   (shared/README.md: one action bulk-labels one group with the group's majority true label,
   or corrects one face):
   - ``plain``: k-means with ``--actions`` clusters on the features, each cluster bulk-labeled
     once, biggest first (the naive baseline);
   - ``guided``: k-means with ``--seed-clusters`` clusters, bulk-labeled; then rounds: a head
     on the current labels gives out-of-fold predictions; the faces whose prediction differs
     from their label are grouped by (label, prediction), the biggest group is shown and
     accepted (1 action, the group's majority true label) or dismissed (1 action) when that
     would not help; until the budget is spent.
3. Classifiers are trained on the pool's (noisy) labels only and scored on the test split
   against the truth: ``head`` (logistic regression on the features), ``mlp`` and
   ``finetune`` (EfficientNet-Lite0 on the aligned crops; the GPU when present).
   ``oracle`` rows train on the pool's true labels: the ceiling of each model.

Run (CPU, head only, seconds)::

    python bench/bench_train.py --ws /tmp/ws_mfn --data ../shared/data/maskedfacenet
Run on a GPU box (fine-tuning)::

    python bench/bench_train.py --ws WS --data DATA --models head,finetune --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeler.export.splits import assign_splits  # noqa: E402
from labeler.train.head import HeadConfig, cross_val_proba, fit_head  # noqa: E402
from labeler.train.report import classification_report  # noqa: E402
from labeler.workspace import Workspace  # noqa: E402

log = logging.getLogger("bench_train")


# --- inputs ----------------------------------------------------------------------------------


def load_truth(ws: Workspace, data: Path) -> pd.DataFrame:
    """faces with their true state: the image's label goes to its largest face
    (``labeler.loop.truth.join_truth``); other faces and faces of unknown files are dropped."""
    from labeler.loop.truth import join_truth

    faces = ws.require_faces()
    truth = join_truth(ws, str(data / "labels.csv")).set_index("face_id")["truth"]
    faces = faces.assign(truth=faces["face_id"].map(truth).to_numpy())
    return faces[faces["truth"].notna()].reset_index(drop=True)


def tool_session(
    ws: Workspace, face_ids: np.ndarray, truth: np.ndarray, pool: np.ndarray, actions: int
) -> tuple[np.ndarray, int]:
    """The tool's own interactive session (``labeler simulate``'s protocol) on the pool faces:
    the current cluster run's groups and the ``auto`` features, labels after ``actions``."""
    from labeler.loop.simulate import simulate
    from labeler.loop.truth import session_inputs

    groups, F, _ = session_inputs(ws, face_ids)
    res = simulate(
        groups[pool], truth[pool], strategy="interactive", features=F[pool], snapshot_at=actions
    )
    return res.snapshot.astype(object), min(actions, res.actions_total)


def bench_features(ws: Workspace, face_ids: np.ndarray, spec: str) -> tuple[np.ndarray, str]:
    """Features named by ``spec`` (``labeler.features``), or for ``"bench"`` the colour cues
    plus 32 PCA dims of each stored region CNN embedding (standardised; the global face
    embedding is left out: it follows identity)."""
    if spec != "bench":
        from labeler.train import load_feature_matrix

        raw = spec.startswith("raw:")
        return load_feature_matrix(ws, spec.removeprefix("raw:"), face_ids, raw=raw)
    from sklearn.decomposition import PCA

    from labeler.embeddings.store import list_embeddings, load_embeddings

    parts, names = [], []
    for key in sorted(list_embeddings(ws)):
        _, X = load_embeddings(ws, key, face_ids=face_ids)
        X = np.asarray(X, np.float32)
        X = (X - X.mean(0)) / (X.std(0) + 1e-6)
        if key.startswith("cues"):
            parts.append(X)
        else:
            if key.endswith("__face"):
                continue  # global face features follow identity (shared/README.md)
            parts.append(PCA(32, random_state=0).fit_transform(X) / np.sqrt(X.shape[1] / 32))
        names.append(key)
    if not parts:
        raise SystemExit(f"{ws.root} has no embeddings; run 'labeler run' or 'labeler embed'")
    return np.concatenate(parts, 1).astype(np.float32), "+".join(names)


# --- the simulated session -------------------------------------------------------------------


def _majority(y: np.ndarray) -> str:
    vals, counts = np.unique(y, return_counts=True)
    return str(vals[np.argmax(counts)])  # ties: alphabetically first


def _kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    return KMeans(k, n_init=4, random_state=seed).fit_predict(Z)


def session(
    X: np.ndarray,
    truth: np.ndarray,
    *,
    actions: int,
    strategy: str,
    seed_clusters: int,
    seed: int,
    review_batch: int = 3,
    review_depth: int = 40,
    checked_weight: float = 3.0,
    predictor: object = None,
    X_cluster: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Labels after at most ``actions`` simulated actions (see module doc); "" = unlabeled.

    ``truth`` is read only as an annotator reads it: the majority of a shown group, or the
    true label of one face they look at. Guided rounds: accept/dismiss the biggest
    (label -> prediction) group (1 action), then walk the review queue (disagreements first,
    then smallest margin; at most ``review_depth`` faces looked at) correcting up to
    ``review_batch`` wrong faces (1 action each; corrected faces weigh ``checked_weight``).
    ``predictor(labels, checked) -> (N, C) probs over sorted classes`` replaces the head on
    ``X`` (e.g. cross-fitted fine-tuned CNNs on the crops).
    """
    cur = np.full(len(truth), "", dtype=object)
    checked = np.zeros(len(truth), bool)
    log_: list[str] = []
    k = actions if strategy == "plain" else min(seed_clusters, actions)
    groups = _kmeans(X if X_cluster is None else X_cluster, k, seed)
    ids, counts = np.unique(groups, return_counts=True)
    for g in ids[np.argsort(-counts, kind="stable")]:
        if len(log_) >= actions:
            break
        m = groups == g
        cur[m] = _majority(truth[m])
        log_.append(f"bulk cluster {g} ({m.sum()} faces) -> {cur[m][0]}")
    dismissed: set[tuple[str, str]] = set()
    while strategy.startswith("guided") and len(log_) < actions:
        lab = cur != ""
        classes = sorted(set(cur[lab]))
        if len(classes) < 2:
            break
        n_before = len(log_)
        if predictor is not None:
            P = predictor(cur, checked, classes)
        else:
            # out-of-fold for labeled faces (corrected faces count several times), fit for the rest
            P = np.zeros((len(cur), len(classes)))
            Xl, yl = X[lab], cur[lab]
            rep = np.where(checked[lab], int(checked_weight), 1)
            Xr, yr = np.repeat(Xl, rep, 0), np.repeat(yl, rep)
            P[lab] = cross_val_proba(Xr, yr, folds=5, classes=classes, seed=seed)[
                np.cumsum(rep) - rep
            ]
            if (~lab).any():
                P[~lab] = fit_head(Xr, yr, classes=classes).predict_proba(X[~lab])
        pred = np.asarray(classes, dtype=object)[P.argmax(1)]
        srt = np.sort(P, 1)
        margin = srt[:, -1] - srt[:, -2]
        diff = (pred != cur) & ~checked
        keys = pd.Series(list(zip(cur[diff], pred[diff], strict=True)), index=np.flatnonzero(diff))
        options = [
            (key, idx)
            for key, idx in keys.groupby(keys).groups.items()
            if key not in dismissed and len(idx) >= 3
        ]
        if options:
            key, idx = max(options, key=lambda kv: (len(kv[1]), kv[0]))
            idx = np.asarray(idx)
            majority = _majority(truth[idx])
            gain = int((truth[idx] == majority).sum() - (truth[idx] == cur[idx]).sum())
            if gain > 0:
                cur[idx] = majority
                log_.append(f"accept {key[0] or '-'}->{key[1]} ({len(idx)} faces) -> {majority}")
            else:
                log_.append(f"dismiss {key[0] or '-'}->{key[1]} ({len(idx)} faces)")
            dismissed.add(key)
        queue = np.flatnonzero(~checked)
        queue = queue[np.lexsort((margin[queue], ~diff[queue]))][:review_depth]
        fixed = 0
        for i in queue:
            if len(log_) >= actions or fixed >= review_batch:
                break
            checked[i] = True
            if cur[i] != truth[i]:
                log_.append(f"correct face {i}: {cur[i] or '-'} -> {truth[i]}")
                cur[i] = truth[i]
                fixed += 1
        if len(log_) == n_before:
            break
    return cur, log_


# --- models ----------------------------------------------------------------------------------


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    rep = classification_report(y_true, y_pred, classes=classes)
    return {
        "macro_f1": rep.macro_f1,
        "accuracy": rep.accuracy,
        "recall": {c: round(rep.per_class[c]["recall"], 3) for c in classes},
    }


def run_head(
    kind: str,
    X: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    classes: list[str],
) -> np.ndarray:
    lab = pool[labels[pool] != ""]
    head = fit_head(X[lab], labels[lab], config=HeadConfig(kind=kind), classes=classes)
    return head.predict(X[test])


def run_finetune(
    ws: Workspace,
    face_ids: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    classes: list[str],
    args: argparse.Namespace,
    tag: str,
) -> np.ndarray:
    import tempfile

    from labeler.train.finetune import FinetuneConfig, finetune, load_finetuned, predict_crops

    lab = pool[labels[pool] != ""]
    code = {c: i for i, c in enumerate(classes)}
    y = np.full(len(labels), -1)
    y[lab] = [code[v] for v in labels[lab]]
    split = assign_splits(labels[lab], groups[lab], ratios=(0.85, 0.15), seed=args.seed)
    tr, va = lab[split == "train"], lab[split == "test"]
    paths = [ws.crop_path(f) for f in face_ids]
    cfg = FinetuneConfig(
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
        patience=args.patience,
        seed=args.seed,
        weights=args.weights,
    )
    out = Path(tempfile.mkdtemp(prefix=f"bench_ft_{tag}_"))
    res = finetune(
        paths, y, classes=classes, train_idx=tr, val_idx=va, out_dir=out, config=cfg, resume=False
    )
    model = load_finetuned(res.best_path, device=res.device)
    probs = predict_crops(model, [paths[i] for i in test], device=res.device, batch_size=128)
    log.info("%s: best epoch %d val macro-F1 %.3f", tag, res.best_epoch, res.best_f1)
    return np.asarray(classes, dtype=object)[probs.argmax(1)]


def cnn_predictor(ws: Workspace, face_ids: np.ndarray, args: argparse.Namespace, folds: int = 2):
    """Cross-fitted fine-tuned CNNs as the session's guide: ``folds`` models, each trained on
    the other folds' current labels, predict the faces they did not see -> (N, C) probs."""
    import tempfile

    from labeler.train.finetune import FinetuneConfig, finetune

    paths = [ws.crop_path(f) for f in face_ids]
    cfg = FinetuneConfig(
        epochs=args.guide_epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
        patience=100,
        seed=args.seed,
        weights=args.weights,
    )

    def predict(cur: np.ndarray, checked: np.ndarray, classes: list[str]) -> np.ndarray:
        from sklearn.model_selection import StratifiedKFold

        code = {c: i for i, c in enumerate(classes)}
        lab = np.flatnonzero(cur != "")
        y = np.full(len(cur), 0)
        y[lab] = [code[v] for v in cur[lab]]
        P = np.full((len(cur), len(classes)), 1.0 / len(classes))
        skf = StratifiedKFold(folds, shuffle=True, random_state=args.seed)
        for tr, te in skf.split(lab, y[lab]):
            # the held-out fold (and the unlabeled faces) are predicted by the last epoch
            rest = np.setdiff1d(np.arange(len(cur)), lab[tr])
            out = Path(tempfile.mkdtemp(prefix="bench_guide_"))
            tr_idx = np.concatenate([lab[tr], np.repeat(lab[tr][checked[lab[tr]]], 2)])
            res = finetune(
                [paths[i] for i in range(len(cur))],
                y,
                classes=classes,
                train_idx=tr_idx,
                val_idx=rest,
                out_dir=out,
                config=cfg,
                resume=False,
            )
            P[rest] = res.val_probs if len(te) else P[rest]
        return P

    return predict


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ws", required=True, type=Path, help="workspace built from --data/images")
    ap.add_argument("--data", required=True, type=Path, help="folder with labels.csv (file, state)")
    ap.add_argument(
        "--cluster-features", default="bench", help="features the session's k-means groups on"
    )
    ap.add_argument(
        "--features",
        default="raw:auto",
        help="features of the heads: 'raw:KEYS' (stored blocks as stored, what 'labeler train' uses), 'bench' (cues + PCA of region CNN features) or a labeler.features spec",
    )
    ap.add_argument("--actions", type=int, default=30)
    ap.add_argument("--seed-clusters", type=int, default=10)
    ap.add_argument("--review-batch", type=int, default=5, help="corrections per guided round")
    ap.add_argument(
        "--review-depth", type=int, default=100, help="faces looked at per review round"
    )
    ap.add_argument(
        "--sessions",
        default="plain,guided,tool",
        help="plain, guided, guided-ft (CNN-guided, GPU), tool (labeler simulate's interactive session)",
    )
    ap.add_argument("--models", default="head,mlp", help="head, mlp, finetune")
    ap.add_argument("--oracle", action="store_true", help="also train on the pool's true labels")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument(
        "--guide-epochs", type=int, default=6, help="epochs of the guiding CNNs (guided-ft)"
    )
    ap.add_argument("--weights", default=None, help="ImageNet .pth (default: the weights package)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    ws = Workspace.open(args.ws)
    faces = load_truth(ws, args.data)
    face_ids = faces["face_id"].to_numpy()
    truth = faces["truth"].to_numpy().astype(object)
    classes = sorted(set(truth))
    groups = faces["image_id"].to_numpy()
    X, spec = bench_features(ws, face_ids, args.features)
    Xc, _ = bench_features(ws, face_ids, args.cluster_features)
    split = assign_splits(truth, groups, ratios=(0.8, 0.2), seed=args.seed)
    pool, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    log.info(
        "%d faces (%s), pool %d, test %d, features %s %s",
        len(truth),
        dict(pd.Series(truth).value_counts()),
        len(pool),
        len(test),
        spec,
        X.shape,
    )

    label_sets = {}
    for strategy in args.sessions.split(","):
        t0 = time.time()
        if strategy == "tool":
            cur, n_steps = tool_session(ws, face_ids, truth, pool, args.actions)
            labels = np.full(len(truth), "", dtype=object)
            labels[pool] = cur
            label_sets[strategy] = (labels, n_steps, time.time() - t0)
            log.info(
                "tool session: %d actions, pool label accuracy %.3f",
                n_steps,
                (cur == truth[pool]).mean(),
            )
            continue
        guide = cnn_predictor(ws, face_ids[pool], args) if strategy == "guided-ft" else None
        cur, steps = session(
            X[pool],
            truth[pool],
            actions=args.actions,
            strategy=strategy,
            seed_clusters=args.seed_clusters,
            seed=args.seed,
            predictor=guide,
            X_cluster=Xc[pool],
            review_batch=args.review_batch,
            review_depth=args.review_depth,
        )
        labels = np.full(len(truth), "", dtype=object)
        labels[pool] = cur
        label_sets[strategy] = (labels, len(steps), time.time() - t0)
        log.info(
            "%s session: %d actions, pool label accuracy %.3f",
            strategy,
            len(steps),
            (cur == truth[pool]).mean(),
        )
        for s in steps:
            log.debug("  %s", s)
    if args.oracle:
        labels = np.full(len(truth), "", dtype=object)
        labels[pool] = truth[pool]
        label_sets["oracle"] = (labels, len(pool), 0.0)

    rows = []
    for name, (labels, n_actions, _) in label_sets.items():
        lab_acc = float((labels[pool] == truth[pool]).mean())
        for model in args.models.split(","):
            t0 = time.time()
            if model in ("head", "mlp"):
                pred = run_head(
                    "logreg" if model == "head" else "mlp", X, labels, pool, test, classes
                )
            elif model == "finetune":
                pred = run_finetune(
                    ws, face_ids, labels, groups, pool, test, classes, args, f"{name}"
                )
            else:
                raise SystemExit(f"unknown model {model!r}")
            s = score(truth[test], pred, classes)
            rows.append(
                {
                    "labels": name,
                    "actions": n_actions,
                    "pool_label_acc": round(lab_acc, 3),
                    "model": model,
                    "test_macro_f1": round(s["macro_f1"], 3),
                    "test_acc": round(s["accuracy"], 3),
                    "seconds": round(time.time() - t0, 1),
                    "recall": s["recall"],
                }
            )
            log.info("%s", rows[-1])

    print(
        f"\n{args.data.name}: {len(truth)} faces, pool {len(pool)}, held-out test {len(test)}, features {spec}"
    )
    print(
        f"{'labels':>8} {'actions':>7} {'pool acc':>8} {'model':>9} {'macro-F1':>8} {'acc':>6} {'sec':>6}  per-class recall"
    )
    for r in rows:
        rec = " ".join(f"{k}={v:.2f}" for k, v in r["recall"].items())
        print(
            f"{r['labels']:>8} {r['actions']:>7} {r['pool_label_acc']:>8.3f} {r['model']:>9} {r['test_macro_f1']:>8.3f} {r['test_acc']:>6.3f} {r['seconds']:>6.1f}  {rec}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"data": str(args.data), "features": spec, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
