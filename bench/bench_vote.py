"""The trained model's vote in the Suggest step (issue #32): what `labeler suggest --model
current` changes on faces nobody labeled, per shared set.

For each set (a workspace built by ``labeler run`` with the shipped defaults and its truth
CSV) the images' groups (realmasks: ``scene``, mfr2: ``person``, others: the image) are
split in halves, A and B, by a fixed seed. Every image's largest face of A is labeled with
its true state; ``labeler train`` (the default ``--mode auto``: the ensemble from 300
labels) learns them, in its own process, timed. Then three cases, each scored on the
unlabeled faces of B with truth:

- **A labeled**: ``labeler suggest`` against ``labeler suggest --model current`` (its own
  process each, timed; the first vote also scores every face the run did not train on);
- **A + 30 % of B labeled after the model**: the same two, the model not retrained;
- **a stale head**: ``labeler train --mode head`` on 80 faces of A, then all of A labeled:
  the vote of a model that knew far fewer labels than the Suggest step has now.

Columns: accuracy and macro-F1 of the suggested values; *pre-ticked*: faces the Review page
pre-ticks (groups whose measured precision's lower bound is at least 0.9, measured faces),
and the share of them right; *shown / held*: the precision the page shows for the measured
faces against the share right; *vote*: the share the vote got.

    python bench/bench_vote.py --set realmasks=WS --set maskedfacenet=WS2 --out bench/results/vote
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_train_ensemble import GROUP_COLUMN, SHARED, VALUE, open_results

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_vote")


def labeler(*args: str) -> float:
    """One ``labeler`` command in its own process; its wall seconds."""
    cmd = [str(Path(sys.executable).with_name("labeler")), *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def truth_halves(ws, name: str, seed: int = 0) -> pd.DataFrame:
    """face_id, truth (the project's values), group and part (A / B) of every truth face."""
    from labeler.loop.truth import join_truth

    csv = SHARED / name / "labels.csv"
    t = join_truth(ws, str(csv))
    t["truth"] = t["truth"].map(lambda v: VALUE.get(v, v))
    images = ws.images().drop_duplicates("image_id").set_index("image_id")["path"]
    images = images.map(lambda p: Path(p).name)
    files = images.loc[ws.faces().set_index("face_id").loc[t["face_id"], "image_id"]].to_numpy()
    col = GROUP_COLUMN.get(name)
    table = pd.read_csv(csv)
    t["group"] = (
        [dict(zip(table["file"], table[col], strict=True))[f] for f in files] if col else files
    )
    groups = np.array(sorted(set(t["group"].astype(str))))
    a = set(np.random.default_rng(seed).choice(groups, len(groups) // 2, replace=False))
    t["part"] = np.where(t["group"].astype(str).isin(a), "A", "B")
    return t


def label(ws, rows: pd.DataFrame, who: str) -> None:
    from labeler.labels import LabelStore

    store = LabelStore(ws.labels_db)
    for value, ids in rows.groupby("truth")["face_id"]:
        store.assign(ids.tolist(), "mask_state", str(value), annotator=who, source="import")


def score(ws, truth: pd.DataFrame) -> dict:
    """The saved Suggest run scored on the truth faces it suggests for."""
    from sklearn.metrics import f1_score

    from labeler.loop.step import load_run

    meta, faces = load_run(ws, "mask_state")
    f = faces.set_index("face_id")
    f = f[f.index.isin(truth.index)]
    tr = truth.loc[f.index, "truth"]
    right = (f["value"] == tr).to_numpy()
    pre = pd.DataFrame(meta["groups"]).set_index("group").loc[f["group"], "pretick"].to_numpy()
    pre = pre & f["measured"].to_numpy()
    meas = f["measured"].to_numpy()
    return {
        "faces": len(f),
        "accuracy": float(right.mean()),
        "macro_f1": float(f1_score(tr, f["value"], average="macro")),
        "preticked": int(pre.sum()),
        "preticked_right": float(right[pre].mean()) if pre.any() else float("nan"),
        "shown": float(f["precision"][meas].mean()),
        "held": float(right[meas].mean()),
        "vote": meta.get("vote_weight", 0.0) if meta.get("model") else 0.0,
    }


def both(ws, truth: pd.DataFrame, case: str) -> list[dict]:
    rows = []
    for model in (None, "current"):
        extra = ["--model", model] if model else []
        wall = labeler("suggest", "-w", str(ws.root), "-q", *extra)
        rows.append({"case": case, "suggest": "with the vote" if model else "alone",
                     "wall_s": wall} | score(ws, truth))  # fmt: skip
        log.info("%s", rows[-1])
    return rows


def fresh_copy(src: Path, dst: Path):
    """A copy of workspace ``src`` at ``dst`` without labels, models, suggestions or caches."""
    from labeler.workspace import Workspace

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "labels.db*", "suggest", "cache"))  # fmt: skip
    return Workspace.open(dst)


def run_set(name: str, src: Path, scratch: Path) -> dict:
    from labeler.train.runs import current_runs

    ws = fresh_copy(src, scratch / name)
    t = truth_halves(ws, name)
    a, b = t[t.part == "A"], t[t.part == "B"]
    label(ws, a, "a")
    persons = scratch / f"{name}_persons.csv"
    pd.DataFrame({"face_id": t["face_id"], "person": t["group"]}).to_csv(persons, index=False)
    train_s = labeler("train", "-w", str(ws.root), "--no-label-errors", "-q", "--person-csv", str(persons))  # fmt: skip
    cfg = json.loads((ws.models_dir / current_runs(ws)["mask_state"] / "config.json").read_text())
    truth = t.set_index("face_id")
    rows = both(ws, truth, "A labeled")
    later = b.sample(frac=0.3, random_state=1)
    label(ws, later, "b")
    rows += both(ws, truth.drop(later["face_id"]), "A + 30 % of B labeled after the model")

    stale = scratch / f"{name}_stale"
    ws2 = fresh_copy(src, stale)
    few = a.sample(min(80, len(a)), random_state=0)
    label(ws2, few, "a")
    labeler("train", "-w", str(ws2.root), "--mode", "head", "--no-label-errors", "-q",
            "--person-csv", str(persons))  # fmt: skip
    label(ws2, a.drop(few.index), "a")
    rows += both(
        ws2, truth, f"a stale head (trained on {len(few)} of A's labels), all of A labeled"
    )
    shutil.rmtree(stale, ignore_errors=True)
    return {"labels_A": len(a), "faces_B": len(b), "model": cfg["mode"],
            "model_macro_f1": cfg["report"]["macro_f1"], "train_s": train_s, "rows": rows}  # fmt: skip


def markdown(done: dict) -> str:
    out = []
    for name, d in done.items():
        out += [f"## {name}", "",
                f"{d['labels_A']} faces of A labeled; `labeler train` chose `{d['model']}` "
                f"(out-of-fold macro-F1 {d['model_macro_f1']:.3f}, {d['train_s']:.0f} s); "
                f"{d['faces_B']} truth faces in B.", "",
                "| case | Suggest | faces | accuracy | macro-F1 | pre-ticked | pre-ticked right "
                "| shown | held | vote | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in d["rows"]:
            out.append(
                f"| {r['case']} | {r['suggest']} | {r['faces']} | {r['accuracy']:.3f} | "
                f"{r['macro_f1']:.3f} | {r['preticked']} | {r['preticked_right']:.3f} | "
                f"{r['shown']:.3f} | {r['held']:.3f} | {r['vote']:.0%} | {r['wall_s']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="NAME=WS",
                    help="a shared set's name and its workspace built by 'labeler run'")  # fmt: skip
    ap.add_argument("--scratch", default="/tmp/bench_vote")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "vote"))
    args = ap.parse_args()
    scratch, out, done = open_results(args.scratch, args.out)
    for item in args.set:
        name, ws = item.split("=", 1)
        done[name] = run_set(name, Path(ws), scratch)
        out.with_suffix(".json").write_text(json.dumps(done, indent=1))
    text = HEADER + markdown(done)
    out.with_suffix(".md").write_text(text)
    print(text)


HEADER = """# The trained model's vote in the Suggest step (bench/bench_vote.py)

Each set's groups (realmasks: scene, mfr2: person, others: image) split in halves A and B;
A labeled, `labeler train` (default) on it; `labeler suggest` alone against `labeler suggest
--model current`, each in its own process on the 2-core development machine, scored on B's
unlabeled truth faces. *Pre-ticked*: faces the Review page pre-ticks; *shown / held*: the
precision shown for measured faces against the share right; *vote*: the share the vote got
(least class-balanced out-of-fold log-loss). The first `--model` run of a trained run also
scores every face it was not trained on (cached after).

"""


if __name__ == "__main__":
    main()
