"""Does the precision the Review page shows hold? (issue 31)

On a shared real set with truth, give K faces their true label (two protocols: a random
sample, and whole default groups biggest first, as bulk-labeling leaves a workspace), run
the Suggest step as the app does, and compare, group by group, the precision the page
shows ("N % right in cross-validation", and its 95 % lower bound "at least N %") with the
share of the group's faces whose true label is the suggested value: for the faces it is
shown for (measured), and apart, for the faces the page marks *unmeasured* (unlike every
labeled face: no number is shown for them).

Prints a table and writes bench/results/review_precision.{json,md}.

    python bench/bench_review_precision.py [--sets realmasks,mfr2] [--budgets 100,300,600]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIELD = "truth_state"
SHOWN_BINS = [0.0, 0.5, 0.7, 0.85, 0.95, 1.01]
SIZE_BINS = [1, 5, 20, 10**9]


def workspace(name: str, scratch: Path):
    """A workspace of the shared set ``name`` (features and the default grouping), cached."""
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    root = scratch / name
    if not (root / ".built").exists():
        shutil.rmtree(root, ignore_errors=True)
        ws = Workspace.open(root, create=True)
        run_pipeline(SHARED / name / "images", ws, config=RunConfig())
        (root / ".built").write_text("ok")
    return Workspace.open(root)


def trial(ws, truth: pd.DataFrame, faces: list[str], units: pd.Series) -> pd.DataFrame:
    """Label ``faces`` with their truth in a fresh store, one event per (unit, value) as an
    annotator's actions would give them (``units``: face -> its cluster for bulk-labeled
    groups, the face itself for one-by-one labels), run Suggest; one row per group."""
    from labeler.labels import LabelStore
    from labeler.loop.step import suggest_workspace

    for suffix in ("", "-wal", "-shm"):  # a fresh store (and no backups of the last trial's)
        Path(f"{ws.labels_db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(Path(ws.root) / "backups", ignore_errors=True)
    store = LabelStore(ws.labels_db)
    store.add_field(FIELD, sorted(truth["truth"].unique()))
    t = truth.set_index("face_id")["truth"]
    chosen = pd.DataFrame({"face": faces, "value": t.loc[faces].to_numpy(),
                           "unit": units.loc[faces].to_numpy()})  # fmt: skip
    for (_unit, value), part in chosen.groupby(["unit", "value"], sort=False):
        store.assign(part["face"].tolist(), FIELD, str(value), annotator="bench",
                     source="selection")  # fmt: skip
    run = suggest_workspace(ws, field=FIELD)
    rows = []
    for g in run.groups.itertuples():
        part = run.faces[(run.faces["group"] == g.group) & run.faces["face_id"].isin(t.index)]
        for measured, faces in part.groupby(part["measured"].astype(bool)):  # scored apart
            right = int((t.loc[faces["face_id"]].to_numpy() == g.value).sum())
            rows.append({"size": len(faces), "shown": float(g.precision),
                         "lower": float(g.lower), "right": right, "pretick": bool(g.pretick),
                         "measured": bool(measured)})  # fmt: skip
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame, by: str, bins: list[float], labels: list[str]) -> pd.DataFrame:
    cut = pd.cut(df[by], bins, right=False, labels=labels)
    out = []
    for lab, part in df.groupby(cut, observed=True):
        faces = int(part["size"].sum())
        out.append({
            by: lab, "groups": len(part), "faces": faces,
            "shown (face-weighted)": float((part["shown"] * part["size"]).sum() / faces),
            "lower (face-weighted)": float((part["lower"] * part["size"]).sum() / faces),
            "true": float(part["right"].sum() / faces),
            "groups with true >= lower": float(((part["right"] / part["size"])
                                                >= part["lower"] - 1e-9).mean()),
        })  # fmt: skip
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame) -> str:
    """``df`` as a Markdown table (numbers to 3 decimals)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.values]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in cells)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sets", default="realmasks,mfr2")
    ap.add_argument("--budgets", default="100,300,600")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--scratch", default="/tmp/labeler_bench_review")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "review_precision"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from labeler.cluster.store import load_run
    from labeler.loop.truth import join_truth

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    all_rows = []
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        ws = workspace(name, scratch)
        truth = join_truth(ws, str(SHARED / name / "labels.csv")).dropna(subset=["truth"])
        truth["truth"] = truth["truth"].astype(str)
        run = load_run(ws)
        cluster_of = pd.Series(run.labels, index=run.face_ids.astype(str))
        have = truth["face_id"].tolist()
        by_size = cluster_of.loc[have].value_counts().index.tolist()
        print(f"{name}: {len(have)} faces with truth ({time.perf_counter() - t0:.0f} s to build)")
        for budget in [int(b) for b in args.budgets.split(",")]:
            if budget >= len(have):
                continue
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                random = list(rng.choice(have, budget, replace=False))
                grouped: list[str] = []
                for c in by_size[seed:] + by_size[:seed]:  # another start per seed
                    grouped += [f for f in have if cluster_of[f] == c]
                    if len(grouped) >= budget:
                        break
                one_by_one = pd.Series(have, index=have)
                for protocol, faces, units in (("random", random, one_by_one),
                                               ("groups", grouped[:budget], cluster_of)):  # fmt: skip
                    df = trial(ws, truth, faces, units)
                    df["set"], df["protocol"], df["budget"], df["seed"] = (
                        name, protocol, budget, seed)  # fmt: skip
                    all_rows.append(df)
    df = pd.concat(all_rows, ignore_index=True)
    df["measured"] = df["measured"].astype(bool)
    lines = ["# Review: the precision shown against what the groups held", "",
             f"Sets {args.sets}; budgets: {', '.join(args.budgets.split(','))} labeled faces; "
             f"{args.seeds} seeds; "
             "protocols: a random sample labeled face by face, and whole default groups "
             "biggest first (one event per group and value, as bulk-labeling gives them). "
             "Shown: "
             "the group's out-of-fold precision ('N % right in cross-validation'); lower: "
             "its 95 % Wilson lower bound ('at least N %'); true: the share of the group's "
             "faces whose true label is the suggested value.", ""]  # fmt: skip
    result = {}
    lines += ["## Measured and not measured faces", "",
              "A face is *unmeasured* when it is less similar to every labeled face than 90 % "
              "of labeled faces are to their nearest labeled face in another fold "
              "(`SuggestConfig.unmeasured_quantile`): the page shows no precision for it and "
              "never pre-ticks it. Face-weighted, all groups:", "",
              "| set | protocol | budget | measured faces | shown | true | unmeasured faces "
              "| shown (before: the group's number) | true |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, protocol, budget), part in df.groupby(["set", "protocol", "budget"]):
        m, u = part[part["measured"]], part[~part["measured"]]

        def wavg(p: pd.DataFrame, col: str) -> float:
            return float((p[col] * p["size"]).sum() / p["size"].sum()) if len(p) else float("nan")

        def true(p: pd.DataFrame) -> float:
            return float(p["right"].sum() / p["size"].sum()) if len(p) else float("nan")

        lines.append(f"| {name} | {protocol} | {budget} | {int(m['size'].sum())} | "
                     f"{wavg(m, 'shown'):.3f} | {true(m):.3f} | {int(u['size'].sum())} | "
                     f"{wavg(u, 'shown'):.3f} | {true(u):.3f} |")  # fmt: skip
        result[f"{name}/{protocol}/{budget}"] = {
            "measured_faces": int(m["size"].sum()), "measured_shown": wavg(m, "shown"),
            "measured_true": true(m), "unmeasured_faces": int(u["size"].sum()),
            "unmeasured_shown_before": wavg(u, "shown"), "unmeasured_true": true(u)}  # fmt: skip
    lines.append("")
    lines += [
        "The tables below score the faces the page shows a precision for (measured faces only).",
        "",
    ]
    df = df[df["measured"]]
    for (name, protocol), part in df.groupby(["set", "protocol"]):
        s1 = summarize(part, "shown", SHOWN_BINS, ["<50 %", "50-70 %", "70-85 %", "85-95 %",
                                                   ">=95 %"])  # fmt: skip
        s2 = summarize(part, "size", SIZE_BINS, ["1-4", "5-19", "20+"])
        pooled = {"groups": len(part), "faces": int(part["size"].sum()),
                  "shown": float((part["shown"] * part["size"]).sum() / part["size"].sum()),
                  "true": float(part["right"].sum() / part["size"].sum())}  # fmt: skip
        result[f"{name}/{protocol}"] = {"pooled": pooled, "by_shown": s1.to_dict("records"),
                                        "by_size": s2.to_dict("records")}  # fmt: skip
        big = part[part["size"] >= 20]
        held = (
            float(((big["right"] / big["size"]) >= big["lower"] - 1e-9).mean()) if len(big) else 0
        )
        lines += [f"## {name}, {protocol}", "",
                  f"All groups: {pooled['groups']} groups, {pooled['faces']} faces; shown "
                  f"{pooled['shown']:.1%} (face-weighted), true {pooled['true']:.1%}; groups "
                  f"of 20 faces or more at or above their 95 % lower bound: {held:.0%} "
                  f"({len(big)} groups).", ""]  # fmt: skip
        for s in (s1, s2):
            lines.append(markdown(s))
            lines.append("")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
