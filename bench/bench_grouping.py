"""The default grouping, chosen on labeling effort: candidates x shared sets x cluster seeds.

For every set (a workspace built by ``labeler run --no-cluster`` and its truth CSV) and seed,
the shipped code (:func:`labeler.cluster.run.fit_clusters` on ``load_cluster_features(ws,
"auto")``) makes each candidate grouping, and :func:`labeler.loop.simulate.simulate` scores it
with the shared README's metric (one action = bulk-assign one group or correct one face;
``-1`` faces are groups of one), as ``labeler simulate`` does:

- ``hdbscan`` - the default before (HDBSCAN in the UMAP space; density noise apart);
- ``hdbscan, noise attached`` - the same run with every noise face in its ``suggested``
  cluster;
- ``kmeans auto`` - spherical k-means, k = sqrt(N / 2), on the run's vectors;
- ``ward (default)`` - the new default (``--algorithm auto``): a Ward tree in the UMAP space
  cut at max(natural level, N / 120) groups, none over 480 faces;
- ``ward N/100``, ``ward N/150`` - the same tree at other group sizes (seed 0 only).

Plain and interactive eff95 / eff98 (medians over seeds, min-max beside), groups and group
size range. Rows of the peer ``fastdup + k-means`` come from ``bench/bench_fastdup.py``'s
``bench/results/fastdup_kmeans.json`` when it is there. Writes
``bench/results/grouping.json`` and the table to ``bench/EFFORT.md`` between the markers.

    python bench/bench_grouping.py --set mfn=WS:../shared/data/maskedfacenet/labels.csv ...
    python bench/bench_grouping.py --from-json   # only rewrite the table from the JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MARK_BEGIN, MARK_END = "<!-- bench_grouping:begin -->", "<!-- bench_grouping:end -->"
log = logging.getLogger("bench_grouping")


def score(groups: np.ndarray, truth: np.ndarray, X: np.ndarray, V: np.ndarray) -> dict:
    """Plain and interactive effort of ``groups`` (N,) (rows with truth only)."""
    from labeler.loop.simulate import simulate

    plain = simulate(groups, truth)
    inter = simulate(groups, truth, strategy="interactive", features=X, split_vectors=V)
    return {
        "purity": round(plain.purity, 4),
        "plain95": round(plain.eff95, 2),
        "plain98": round(plain.eff98, 2),
        "inter95": round(inter.eff95, 2),
        "inter98": round(inter.eff98, 2),
    }


def run_set(name: str, ws_dir: str, truth_csv: str, seeds: list[int]) -> list[dict]:
    from labeler.cluster.algorithms import kmeans_cluster
    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.run import fit_clusters
    from labeler.cluster.types import ClusterConfig
    from labeler.loop.truth import join_truth
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_dir)
    ids, X, _ = load_cluster_features(ws, "auto")
    truth = join_truth(ws, truth_csv)
    pos = {f: i for i, f in enumerate(ids)}
    rows = np.array([pos[f] for f in truth["face_id"]])
    y = truth["truth"].to_numpy(str)
    n = len(ids)
    rows_out = []

    def add(cand: str, seed: int, labels: np.ndarray, V: np.ndarray, t: float) -> None:
        # the groups over ALL faces (the app's view), scored on the faces with truth
        r = score(np.asarray(labels)[rows], y, X[rows], V[rows])
        ok = labels[labels >= 0]
        sizes = np.bincount(ok)
        sizes = sizes[sizes > 0]
        r.update(groups=int(len(sizes)), noise=int((labels < 0).sum()))
        r.update(size_min=int(sizes.min()), size_max=int(sizes.max()))
        r.update(set=name, candidate=cand, seed=seed, faces=n, fit_s=round(t, 1))
        rows_out.append(r)
        log.info("%s %s seed %d: %s", name, cand, seed, r)

    for seed in seeds:
        t0 = time.perf_counter()
        fit = fit_clusters(ids, X, config=ClusterConfig(algorithm="hdbscan", seed=seed))
        t = time.perf_counter() - t0
        V = fit.artifacts.vectors
        add("hdbscan (default before)", seed, fit.result.labels, V, t)
        add("hdbscan, noise attached", seed, fit.result.suggested, V, t)
        k = int(np.clip(round(np.sqrt(n / 2)), 2, 200))
        add("kmeans auto (k=sqrt(N/2))", seed, kmeans_cluster(V, n_clusters=k, seed=seed)[0], V, 0)
        t0 = time.perf_counter()
        fit = fit_clusters(ids, X, config=ClusterConfig(seed=seed))
        add("ward (new default)", seed, fit.result.labels, V, time.perf_counter() - t0)
        if seed == seeds[0]:
            for c in (100, 150):
                cfg = ClusterConfig(algorithm="ward", n_clusters=max(2, round(n / c)), seed=seed)
                t0 = time.perf_counter()
                fit = fit_clusters(ids, X, config=cfg)
                add(f"ward N/{c}", seed, fit.result.labels, V, time.perf_counter() - t0)
    return rows_out


def table(rows: list[dict], peer: list[dict]) -> str:
    """Markdown: one line per set x candidate, medians over seeds (min-max)."""

    def cell(vals: list[float]) -> str:
        med = float(np.median(vals))
        if len(vals) == 1 or min(vals) == max(vals):
            return f"{med:.1f}"
        return f"{med:.1f} ({min(vals):.1f}-{max(vals):.1f})"

    out = [
        "| set | grouping | seeds | groups | sizes | noise faces | plain eff95 | plain eff98 "
        "| interactive eff95 | interactive eff98 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed: dict[tuple[str, str], list[dict]] = {}
    for r in rows + peer:
        keyed.setdefault((r["set"], r["candidate"]), []).append(r)
    for (s, cand), rs in keyed.items():
        groups = sorted({r["groups"] for r in rs})
        sizes = f"{min(r['size_min'] for r in rs)}-{max(r['size_max'] for r in rs)}"
        noise = max(r.get("noise", 0) for r in rs)
        line = [
            s,
            cand,
            str(len(rs)),
            "-".join(map(str, (groups[0], groups[-1]))) if len(groups) > 1 else str(groups[0]),
            sizes,
            str(noise),
        ]
        for key in ("plain95", "plain98", "inter95", "inter98"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            line.append(cell(vals) if vals else "-")
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def peer_rows() -> list[dict]:
    """The fastdup + k-means rows (k=8 and auto k, every seed) from bench_fastdup.py's JSON."""
    path = RESULTS / "fastdup_kmeans.json"
    if not path.exists():
        return []
    out = []
    for st in json.loads(path.read_text()).get("sets", []):
        for row in st["rows"]:
            if row["k_label"] != "8" and not row["k_label"].startswith("auto"):
                continue
            for run in row["runs"]:
                out.append(
                    {
                        "set": st["set"],
                        "candidate": f"peer: fastdup + k-means (k={row['k_label']})",
                        "groups": run["n_groups"],
                        "size_min": run["min_size"],
                        "size_max": run["max_size"],
                        "noise": 0,
                        "plain95": run["plain_eff95"],
                        "plain98": run["plain_eff98"],
                        "inter95": run.get("inter_eff95"),
                        "inter98": run.get("inter_eff98"),
                    }
                )
    return out


def write_effort_md(text: str) -> None:
    path = ROOT / "bench" / "EFFORT.md"
    md = path.read_text()
    block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
    if MARK_BEGIN in md:
        head, rest = md.split(MARK_BEGIN, 1)
        md = head + block + rest.split(MARK_END, 1)[1]
    else:
        md += "\n" + block + "\n"
    path.write_text(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="NAME=WS:TRUTH_CSV")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the table")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = RESULTS / "grouping.json"
    if args.from_json:
        rows = json.loads(out.read_text())["rows"]
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        rows = []
        for spec in args.set:
            name, rest = spec.split("=", 1)
            ws_dir, truth_csv = rest.rsplit(":", 1)
            rows += run_set(name, ws_dir, truth_csv, seeds)
            out.write_text(json.dumps({"rows": rows}, indent=1))
    text = table(rows, peer_rows())
    print(text)
    write_effort_md(text)


if __name__ == "__main__":
    main()
