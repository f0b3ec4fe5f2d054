"""Groups that learn (issue #32): labeling effort with and without the regroup, per shared set.

For every set (a workspace built by ``labeler run`` and its truth CSV) and cluster seed, the
shipped default grouping (:func:`labeler.cluster.run.fit_clusters` on
``load_cluster_features(ws, "auto")``, ``ClusterConfig(seed=s)``) is scored by the shipped
simulated annotator (:func:`labeler.loop.simulate.simulate`, what ``labeler simulate``
runs: the Suggest step learns on ``load_features(ws, "auto", head=True)``, splits use the run's
vectors) three ways: *plain*, *interactive* without the regroup
(``InteractiveConfig(regroup=None)``, the session before this change) and *interactive*
as shipped (regroups when the groups it opened were less than 92 % pure). A truth row labels
its image's largest face. Also the time of one ``regroup`` at 133,000 faces (random
features of the shipped widths, 2,000 labels, 2 cores).

    python bench/bench_regroup.py --set realmasks=WS:../shared/data/realmasks/labels.csv \\
        --seeds 0,1,2,3,4 --out bench/results/regroup
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_regroup")


def run_set(name: str, ws_dir: str, truth_csv: str, seeds: list[int]) -> list[dict]:
    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.run import fit_clusters
    from labeler.cluster.types import ClusterConfig
    from labeler.features import load_features
    from labeler.loop.simulate import InteractiveConfig, simulate
    from labeler.loop.truth import join_truth
    from labeler.workspace import Workspace, align_to_faces

    ws = Workspace.open(ws_dir)
    ids, Xc, _ = load_cluster_features(ws, "auto")
    ids = np.asarray(ids).astype(str)
    truth = join_truth(ws, truth_csv)
    tid = truth["face_id"].to_numpy(str)
    y = truth["truth"].to_numpy(str)
    fids, X = load_features(ws, "auto", head=True)
    X = align_to_faces(tid, np.asarray(fids).astype(str), np.asarray(X), what="features", fix="")
    rows = []
    for seed in seeds:
        fit = fit_clusters(ids, Xc, config=ClusterConfig(seed=seed))
        g = align_to_faces(tid, ids, fit.result.labels, what="groups", fix="")
        V = align_to_faces(tid, ids, fit.artifacts.vectors, what="vectors", fix="")
        row = {"set": name, "seed": seed, "faces": len(tid), "groups": int(g.max()) + 1}
        for key, kw in (
            ("plain", {}),
            ("off", {"strategy": "interactive", "config": InteractiveConfig(regroup=None)}),
            ("on", {"strategy": "interactive"}),
        ):
            t0 = time.perf_counter()
            extra = {"features": X, "split_vectors": V} if kw else {}
            r = simulate(g, y, **kw, **extra)
            row[f"{key}95"], row[f"{key}98"] = round(r.eff95, 2), round(r.eff98, 2)
            row[f"{key}_actions95"] = r.actions95
            row[f"{key}_s"] = round(time.perf_counter() - t0, 1)
            if key == "on":
                row["regroups"] = r.kinds.get("regroup", 0)
                row["purity"] = round(r.purity, 4)
        rows.append(row)
        log.info("%s", row)
    return rows


def time_133k(n: int = 133_000, n_labels: int = 2_000, seed: int = 0) -> dict:
    """Seconds of :func:`labeler.loop.regroup.regroup` on ``n`` faces (256-d features as
    ``load_features(ws, "auto")`` gives, 64-d run vectors), ``n_labels`` labeled of 3 states."""
    from labeler.loop.regroup import regroup

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 256)).astype(np.float32)
    V = rng.normal(size=(n, 64)).astype(np.float32)
    y = np.full(n, -1, np.int64)
    lab = rng.choice(n, n_labels, replace=False)
    y[lab] = rng.integers(0, 3, n_labels)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    out = regroup(X, y, V)
    return {
        "faces": n,
        "labels": n_labels,
        "groups": out.n_groups,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
    }


def table(rows: list[dict]) -> list[str]:
    out = [
        "| set | seed | faces | groups | purity | plain eff95 | interactive before eff95 | "
        "**interactive now eff95** | regroups | plain eff98 | before eff98 | now eff98 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['set']} | {r['seed']} | {r['faces']} | {r['groups']} | {r['purity']:.3f} "
            f"| {r['plain95']:.1f} | {r['off95']:.1f} | **{r['on95']:.1f}** | {r['regroups']} "
            f"| {r['plain98']:.1f} | {r['off98']:.1f} | {r['on98']:.1f} |"
        )
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(r["set"], []).append(r)
    out += ["", "| set | seeds | plain eff95 median | before | **now** | now >= before in |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for s, rs in by_set.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in ("plain95", "off95", "on95")}
        ok = sum(r["on95"] >= r["off95"] for r in rs)
        out.append(
            f"| {s} | {len(rs)} | {med['plain95']:.1f} | {med['off95']:.1f} | "
            f"**{med['on95']:.1f}** | {ok} of {len(rs)} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], help="NAME=WS:TRUTH_CSV")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "regroup"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("labeler", "numba", "umap"):
        logging.getLogger(name).setLevel(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict] = []
    for spec in args.set:
        name, rest = spec.split("=", 1)
        ws, csv = rest.split(":", 1)
        rows += run_set(name, ws, csv, seeds)
    timing = None if args.no_timing else time_133k()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "timing": timing}, indent=1))
    lines = [
        "# Groups that learn: effort with and without the regroup (bench/bench_regroup.py)",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        *table(rows),
    ]
    if timing:
        lines += [
            "",
            f"One regroup at {timing['faces']:,} faces ({timing['labels']:,} labels, random "
            f"features of the shipped widths, 2 cores): {timing['wall_s']} s wall, "
            f"{timing['cpu_s']} s CPU, {timing['groups']} groups.",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
