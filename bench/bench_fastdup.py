"""Peer-tool benchmark: fastdup's own embeddings + k-means, scored with labeler's effort metric.

Reproduce (fastdup lives in its own venv; never install it into labeler's)::

    python3 -m venv /work/lab/fastdup/venv
    /work/lab/fastdup/venv/bin/pip install fastdup==2.54
    .venv/bin/python bench/bench_fastdup.py all              # extract (fastdup venv) + score
    .venv/bin/python bench/bench_fastdup.py all --sets demo mfr2
    .venv/bin/python bench/bench_fastdup.py score            # re-score existing .npz files

Stages:

``extract`` (run by the fastdup venv's python; ``all`` re-invokes this file with
``--fastdup-python``): ``fastdup.create(work_dir, input_dir=images).run(...)`` with fastdup's
default built-in model (offline, 1 thread, telemetry off), then
``Fastdup.embeddings(d=config["embeddings_dim"])`` (= ``fastdup.load_binary_feature`` on the
work dir's ``atrain_features.dat`` + ``.csv``). Saves ``<out>/<set>.npz`` with ``files`` (names
relative to ``images/``) and ``X`` (N, D float32), and ``<out>/<set>.extract.json`` with the
images fastdup failed on (left out), D and the wall time.

``score`` (labeler's venv): joins truth from ``labels.csv`` by file name, L2-normalises X, runs
``labeler.cluster.algorithms.kmeans_cluster`` for k in {4, 8, 16, 32} and auto k =
round(sqrt(N / 2)), seeds 0, 1, 2, and scores each grouping with
``labeler.loop.simulate.simulate`` (plain) and ``simulate(..., strategy="interactive", features=V)``.
Reports the median (and min-max) over seeds. Writes ``bench/results/fastdup_kmeans.json`` and
``.md`` and prints the markdown table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("SENTRY_OPT_OUT", "1")  # fastdup telemetry off (no network here anyway)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

log = logging.getLogger("bench_fastdup")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/data")
DATASETS = {
    "maskedfacenet": SHARED / "maskedfacenet",
    "webfaces": SHARED / "webfaces",
    "realmasks": SHARED / "realmasks",
    "mfr2": SHARED / "mfr2",
    "demo": Path("/work/lab/demo"),
}
OUT_DIR = Path("/work/lab/fastdup")
FASTDUP_PYTHON = OUT_DIR / "venv" / "bin" / "python"
RESULTS = ROOT / "bench" / "results"
KS = (4, 8, 16, 32)
SEEDS = (0, 1, 2)


# --- extract (fastdup venv) ------------------------------------------------------------------


def extract(name: str, out_dir: Path, threads: int = 1) -> dict:
    """Run fastdup on one set's images and save its embeddings; returns the metadata."""
    import fastdup

    images = DATASETS[name] / "images"
    work = out_dir / "work" / name
    if work.exists():
        shutil.rmtree(work)
    all_files = sorted(p.name for p in images.iterdir() if p.is_file())
    t0 = time.perf_counter()
    fd = fastdup.create(work_dir=str(work), input_dir=str(images))
    fd.run(num_threads=threads, run_sentry=False, overwrite=True, print_summary=False)
    d = int(fd.config["embeddings_dim"])
    paths, X = fd.embeddings(d=d)
    seconds = time.perf_counter() - t0
    files = [os.path.relpath(p, images) for p in paths]
    invalid = fd.invalid_instances()
    reasons = {
        os.path.relpath(str(r["filename"]), images): str(r.get("error_code", ""))
        for _, r in invalid.iterrows()
    }
    got = set(files)
    failed = sorted(set(all_files) - got)
    for f in failed:
        reasons.setdefault(f, "no feature row")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise RuntimeError(f"{name}: fastdup returned non-finite features")
    np.savez(out_dir / f"{name}.npz", files=np.array(files), X=X)
    meta = {
        "set": name,
        "fastdup_version": fastdup.__version__,
        "model_path": os.path.basename(str(fd.config.get("model_path", ""))),
        "n_images": len(all_files),
        "n_features": len(files),
        "dim": d,
        "n_failed": len(failed),
        "failed": {f: reasons.get(f, "") for f in failed},
        "invalid_instances": len(invalid),
        "threads": threads,
        "seconds": round(seconds, 2),
    }
    (out_dir / f"{name}.extract.json").write_text(json.dumps(meta, indent=2))
    log.info(
        "%s: %d/%d images -> X %s in %.1fs (%d failed)",
        name,
        len(files),
        len(all_files),
        X.shape,
        seconds,
        len(failed),
    )
    return meta


def run_extract(names: list[str], out_dir: Path, python: Path, threads: int) -> None:
    """Re-invoke this file with the fastdup venv's python, one set per process."""
    for name in names:
        cmd = [str(python), __file__, "extract", "--sets", name, "--out", str(out_dir)]
        cmd += ["--threads", str(threads)]
        log.info("running %s", " ".join(cmd))
        logf = out_dir / f"{name}.extract.log"
        with logf.open("w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise RuntimeError(f"fastdup extract of {name} failed (rc={rc}); see {logf}")


# --- score (labeler venv) --------------------------------------------------------------------


def load_set(name: str, out_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(files, V unit rows, truth, info)`` for the faces that have both a feature and a label."""
    import pandas as pd

    z = np.load(out_dir / f"{name}.npz")
    files = z["files"].astype(str)
    X = z["X"].astype(np.float32)
    labels = pd.read_csv(DATASETS[name] / "labels.csv", dtype={"file": str, "state": str})
    truth_of = dict(zip(labels["file"], labels["state"], strict=True))
    keep = np.array([f in truth_of for f in files], dtype=bool)
    files, X = files[keep], X[keep]
    truth = np.array([truth_of[f] for f in files])
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    V = (X / np.maximum(norms, 1e-12)).astype(np.float32)
    info = {
        "n_labels": len(labels),
        "n_scored": len(files),
        "features_without_label": int((~keep).sum()),
        "labels_without_feature": len(set(truth_of) - set(files)),
        "n_classes": len(set(truth)),
        "dim": int(X.shape[1]),
        "zero_norm_rows": int((norms[:, 0] < 1e-12).sum()),
    }
    return files, V, truth, info


def _agg(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
        "values": [float(v) for v in a],
    }


def score_set(name: str, out_dir: Path, interactive_ks: set[str] | None) -> dict:
    """All k-means runs and simulations for one set."""
    from labeler.cluster.algorithms import kmeans_cluster
    from labeler.loop.simulate import simulate

    _, V, truth, info = load_set(name, out_dir)
    n = len(V)
    auto_k = int(round(math.sqrt(n / 2)))
    ks = [(str(k), k) for k in KS] + [("auto", auto_k)]
    cache: dict[tuple[int, int, bool], dict] = {}
    rows = []
    t_set = time.perf_counter()
    for label, k in ks:
        do_inter = interactive_ks is None or label in interactive_ks
        runs = []
        for seed in SEEDS:
            key = (k, seed, do_inter)
            if key not in cache:
                t0 = time.perf_counter()
                groups, _ = kmeans_cluster(V, n_clusters=k, seed=seed)
                sizes = np.bincount(groups[groups >= 0])
                plain = simulate(groups, truth)
                run = {
                    "seed": seed,
                    "n_groups": int(len(np.unique(groups))),
                    "min_size": int(sizes[sizes > 0].min()),
                    "max_size": int(sizes.max()),
                    "purity": float(plain.purity),
                    "nmi": float(plain.nmi),
                    "plain_eff95": float(plain.eff95),
                    "plain_eff98": float(plain.eff98),
                    "plain_actions98": int(plain.actions98),
                }
                t1 = time.perf_counter()
                if do_inter:
                    inter = simulate(groups, truth, strategy="interactive", features=V)
                    run |= {
                        "inter_eff95": float(inter.eff95),
                        "inter_eff98": float(inter.eff98),
                        "inter_actions98": int(inter.actions98),
                        "inter_kinds": dict(inter.kinds),
                    }
                run["seconds_plain"] = round(t1 - t0, 2)
                run["seconds_interactive"] = round(time.perf_counter() - t1, 2)
                cache[key] = run
                log.info(
                    "%s k=%s(%d) seed=%d: groups=%d plain eff95/98 %.2f/%.2f inter %s/%s (%.1fs)",
                    name,
                    label,
                    k,
                    seed,
                    run["n_groups"],
                    run["plain_eff95"],
                    run["plain_eff98"],
                    _fmt(run.get("inter_eff95")),
                    _fmt(run.get("inter_eff98")),
                    run["seconds_plain"] + run["seconds_interactive"],
                )
            runs.append(cache[key])
        row = {"k_label": label, "k": k, "interactive": do_inter, "runs": runs}
        for m in ("n_groups", "min_size", "max_size", "purity", "plain_eff95", "plain_eff98"):
            row[m] = _agg([r[m] for r in runs])
        if do_inter:
            for m in ("inter_eff95", "inter_eff98"):
                row[m] = _agg([r[m] for r in runs])
        rows.append(row)
    return {
        "set": name,
        **info,
        "auto_k": auto_k,
        "score_seconds": round(time.perf_counter() - t_set, 1),
        "rows": rows,
    }


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _cell(agg: dict | None, nd: int = 2) -> str:
    if agg is None:
        return "-"
    if agg["min"] == agg["max"]:
        return _fmt(agg["median"], nd)
    return f"{_fmt(agg['median'], nd)} ({_fmt(agg['min'], nd)}-{_fmt(agg['max'], nd)})"


def markdown(results: list[dict], extract_meta: dict) -> str:
    """The results as a markdown table (median over seeds, min-max in brackets)."""
    lines = [
        "# fastdup features + k-means, scored with labeler's effort metric",
        "",
        "fastdup's built-in model embeddings, L2-normalised, `kmeans_cluster` (spherical FAISS), "
        f"seeds {', '.join(map(str, SEEDS))}; median over seeds (min-max). "
        "`plain` / `inter` = `simulate` strategy plain / interactive (features = fastdup's). "
        "auto k = round(sqrt(N/2)). Generated by `bench/bench_fastdup.py`.",
        "",
        "| set | N | k | groups | min/max size | plain eff95 | plain eff98 | inter eff95 | inter eff98 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for row in res["rows"]:
            k = f"auto={row['k']}" if row["k_label"] == "auto" else str(row["k"])
            size = f"{_cell(row['min_size'], 0)} / {_cell(row['max_size'], 0)}"
            lines.append(
                f"| {res['set']} | {res['n_scored']} | {k} | {_cell(row['n_groups'], 0)} | {size} "
                f"| {_cell(row['plain_eff95'])} | {_cell(row['plain_eff98'])} "
                f"| {_cell(row.get('inter_eff95'))} | {_cell(row.get('inter_eff98'))} |"
            )
    lines += ["", "Best k per set (by median eff98):", ""]
    for res in results:
        best_p = max(res["rows"], key=lambda r: r["plain_eff98"]["median"])
        inter_rows = [r for r in res["rows"] if r["interactive"]]
        txt = f"- {res['set']}: plain k={best_p['k']} ({best_p['plain_eff98']['median']:.2f})"
        if inter_rows:
            best_i = max(inter_rows, key=lambda r: r["inter_eff98"]["median"])
            txt += f", interactive k={best_i['k']} ({best_i['inter_eff98']['median']:.2f})"
        lines.append(txt)
    if extract_meta:
        lines += ["", "Extraction (fastdup, 1 thread):", ""]
        for name, m in extract_meta.items():
            lines.append(
                f"- {name}: {m['n_features']}/{m['n_images']} images, D={m['dim']}, "
                f"failed {m['n_failed']}, {m['seconds']:.1f}s (fastdup {m['fastdup_version']})"
            )
    return "\n".join(lines) + "\n"


def run_score(names: list[str], out_dir: Path, interactive_ks: dict[str, set[str]]) -> None:
    """Score every set, write JSON + markdown, print the table."""
    import labeler

    results = []
    for name in names:
        t0 = time.perf_counter()
        res = score_set(name, out_dir, interactive_ks.get(name))
        log.info("%s scored in %.1fs", name, time.perf_counter() - t0)
        results.append(res)
    extract_meta = {}
    for name in names:
        p = out_dir / f"{name}.extract.json"
        if p.exists():
            extract_meta[name] = json.loads(p.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "fastdup features + k-means, labeler effort metric",
        "labeler_version": getattr(labeler, "__version__", None),
        "ks": list(KS),
        "auto_k": "round(sqrt(N/2))",
        "seeds": list(SEEDS),
        "interactive_ks": {k: sorted(v) for k, v in interactive_ks.items()},
        "extract": extract_meta,
        "sets": results,
    }
    (RESULTS / "fastdup_kmeans.json").write_text(json.dumps(payload, indent=2))
    md = markdown(results, extract_meta)
    (RESULTS / "fastdup_kmeans.md").write_text(md)
    print(md)


def _parse_interactive(specs: list[str]) -> dict[str, set[str]]:
    """``set=k1,k2`` -> interactive only for those k labels (e.g. ``realmasks=8,auto``)."""
    out = {}
    for spec in specs:
        name, _, ks = spec.partition("=")
        out[name] = {k.strip() for k in ks.split(",") if k.strip()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["extract", "score", "all"])
    ap.add_argument("--sets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="where <set>.npz live")
    ap.add_argument("--fastdup-python", type=Path, default=FASTDUP_PYTHON)
    ap.add_argument("--threads", type=int, default=1, help="fastdup threads")
    ap.add_argument(
        "--interactive-only",
        nargs="*",
        default=[],
        metavar="SET=K,..",
        help="run interactive only for these k labels on a set, e.g. realmasks=8,auto",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("labeler").setLevel(logging.WARNING)  # per-step chatter of the sessions
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "extract":
        for name in args.sets:
            extract(name, args.out, args.threads)
        return 0
    if args.stage == "all":
        run_extract(args.sets, args.out, args.fastdup_python, args.threads)
    run_score(args.sets, args.out, _parse_interactive(args.interactive_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
