"""Which HDBSCAN library to keep: the Cython ``hdbscan`` or numba's ``fast_hdbscan``. Prints a table.

    python bench/bench_hdbscan_choice.py --workspace WS          # WS: a `labeler run` workspace
    python bench/bench_hdbscan_choice.py --workspace WS --large 133000 --repeats 2

Inputs are what ``labeler.cluster.run.fit_clusters`` feeds ``hdbscan_cluster``: the 10-d UMAP
cluster space (min_dist 0, PCA 64 -> cosine kNN graph, 15 neighbours) of the workspace's
automatic features, with the automatic ``min_cluster_size`` / ``min_samples``:

* ``real``: the workspace's faces (realmasks: 2,009 crops -> about 2,000 points);
* ``20k sample``: what a run of 133,000 faces clusters by default (``umap_max_points``
  = 20,000, ``min_cluster_size`` scaled to the sample);
* ``large`` (133,000 by default): the whole set with ``umap_max_points=0``, made from the real
  10-d space by resampling: each point is a real point plus Gaussian jitter with a standard
  deviation of half its distance to its 5th neighbour (the real clusters' shapes and density
  contrasts, 66x the points; UMAP of 133k real faces would take ~10 minutes here);
* ``split``: ``labeler.cluster.edit.split_labels`` on the biggest cluster (8-d PCA of its unit
  vectors, ``min_cluster_size = clip(n/20, 5, 500)``).

Each (library, input) is timed in a fresh Python process (``import`` + first fit + second
fit), because a new process is what a user pays for: ``labeler cluster`` and every app
session start one. fast_hdbscan is timed twice: with an empty numba cache (``NUMBA_CACHE_DIR``
fresh: the first run after an install, or whenever the cache cannot be written) and with the
cache that run left. Agreement: adjusted Rand index of the two libraries' labels, the share
of points both call noise or both cluster, and the Spearman correlation of their GLOSH
outlier scores (:func:`labeler.cluster.algorithms.glosh_scores` on each condensed tree).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(lib: str, data: Path, key: str, mcs: int, ms: int, out: Path) -> None:
    """Runs in a fresh process: import ``lib``, fit twice, save labels, GLOSH and timings."""
    t0 = time.perf_counter()
    import numpy as np  # noqa: F811 (timed with the rest of the start)

    E = np.load(data)[key]
    t_load = time.perf_counter()
    from labeler.cluster.algorithms import glosh_scores, relabel_by_size

    if lib == "hdbscan":
        import hdbscan

        def fit(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms).fit(
                np.ascontiguousarray(E, dtype=np.float64)
            )
            return m.labels_, glosh_scores(m.condensed_tree_.to_numpy(), len(E))
    else:
        from fast_hdbscan.hdbscan import fast_hdbscan, to_numpy_rec_array

        def fit(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            labels, _p, _s, tree, *_ = fast_hdbscan(
                np.ascontiguousarray(E, dtype=np.float32),
                min_samples=ms,
                min_cluster_size=mcs,
                return_trees=True,
            )
            return np.asarray(labels), glosh_scores(to_numpy_rec_array(tree), len(E))

    t_import = time.perf_counter()
    labels, glosh = fit(E)
    t_fit1 = time.perf_counter()
    fit(E)
    t_fit2 = time.perf_counter()
    np.savez(out, labels=relabel_by_size(labels), glosh=glosh)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "import_s": t_import - t_load,
                "fit1_s": t_fit1 - t_import,
                "fit2_s": t_fit2 - t_fit1,
                "to_first_labels_s": t_fit1 - t0,
            }
        )
    )


def run_worker(lib: str, data: Path, key: str, mcs: int, ms: int, tmp: Path, env: dict) -> dict:
    out = tmp / f"{lib}_{key}_{len(list(tmp.iterdir()))}.npz"
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--worker", lib, str(data), key, str(mcs), str(ms), str(out)],
        check=True,
        env=env,
    )
    wall = time.perf_counter() - t
    res = json.loads(out.with_suffix(".json").read_text())
    res["process_s"] = wall
    z = np.load(out)
    res["labels"], res["glosh"] = z["labels"], z["glosh"]
    return res


def make_inputs(ws_path: Path, large: int, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """The 10-d UMAP space of the workspace's faces, the 20k / large resamples and a split."""
    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.knn import knn_graph
    from labeler.cluster.reduce import fit_pca, umap_embed
    from labeler.cluster.run import ClusterConfig, resolve_config
    from labeler.embeddings.store import l2_normalize
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_path)
    _ids, X, spec = load_cluster_features(ws, "auto")
    n, d = X.shape
    cfg = resolve_config(n, d, ClusterConfig(algorithm="hdbscan", seed=seed))
    V = l2_normalize(fit_pca(X, n_components=cfg.pca_dims, seed=seed).transform(X))
    graph = knn_graph(V, k=cfg.n_neighbors + 1, seed=seed)
    E = umap_embed(
        V,
        graph,
        n_components=cfg.umap_dims,
        n_neighbors=cfg.n_neighbors,
        min_dist=0.0,
        seed=seed,
        n_epochs=cfg.umap_epochs,
    )
    # resample: a real point plus jitter of half its 5th-neighbour distance
    d2 = ((E[:, None, :] - E[None, :, :]) ** 2).sum(-1)
    r5 = np.sqrt(np.sort(d2, axis=1)[:, 5])
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, large)
    L = (E[src] + rng.normal(size=(large, E.shape[1])) * 0.5 * r5[src, None]).astype(np.float32)
    sample = L[np.sort(rng.choice(large, min(20_000, large), replace=False))]
    # the split: the biggest cluster of a Cython HDBSCAN of E, 8-d PCA of its unit vectors
    import hdbscan

    lab = (
        hdbscan.HDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples)
        .fit(E.astype(np.float64))
        .labels_
    )
    big = np.bincount(lab[lab >= 0]).argmax()
    S = l2_normalize(V[lab == big])
    Z = fit_pca(S, n_components=8, seed=seed).transform(S)
    m = len(Z)
    mcs_split = int(np.clip(round(m / 20), 5, 500))
    big_cfg = resolve_config(large, d, ClusterConfig(algorithm="hdbscan"))
    mcs_large = int(big_cfg.min_cluster_size)
    inputs = {"real": E, "sample20k": sample, "large": L, "split": Z}
    params = {
        "real": (cfg.min_cluster_size, cfg.min_samples),
        "sample20k": (max(2, round(mcs_large * len(sample) / large)), big_cfg.min_samples),
        "large": (mcs_large, big_cfg.min_samples),
        "split": (min(mcs_split, max(2, m // 2)), min(10, mcs_split)),
        "spec": spec,
    }
    return inputs, params


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, help="a `labeler run` workspace (e.g. realmasks)")
    ap.add_argument("--large", type=int, default=133_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only", default="", help="comma-separated inputs (real,sample20k,large,split)"
    )
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        lib, data, key, mcs, ms, out = args.worker
        worker(lib, Path(data), key, int(mcs), int(ms), Path(out))
        return
    if args.workspace is None:
        ap.error("--workspace is required (a workspace made by `labeler run`)")
    from sklearn.metrics import adjusted_rand_score

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        inputs, params = make_inputs(args.workspace, args.large, args.seed)
        data = tmp / "inputs.npz"
        np.savez(data, **inputs)
        print(
            f"features: {params['spec']}; {os.cpu_count()} cores; load avg "
            f"{os.getloadavg()[0]:.1f}; times in seconds, each run a fresh process"
        )
        print(
            "\n| input | points | min_cluster_size / min_samples | library | import | first fit "
            "| second fit | process total | clusters | noise |\n|---|---|---|---|---|---|---|---|---|---|"
        )
        agree = []
        keys = [k for k in inputs if not args.only or k in args.only.split(",")]
        for key in keys:
            mcs, ms = params[key]
            runs = {}
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            runs["hdbscan"] = run_worker("hdbscan", data, key, mcs, ms, tmp, env)
            cache = tmp / f"numba_{key}"
            env_fast = dict(env, NUMBA_CACHE_DIR=str(cache))
            runs["fast_hdbscan, empty numba cache"] = run_worker(
                "fast", data, key, mcs, ms, tmp, env_fast
            )
            runs["fast_hdbscan, warm numba cache"] = run_worker(
                "fast", data, key, mcs, ms, tmp, env_fast
            )
            for name, r in runs.items():
                lab = r["labels"]
                print(
                    f"| {key} | {len(inputs[key]):,} | {mcs} / {ms} | {name} | {r['import_s']:.1f} "
                    f"| {r['fit1_s']:.2f} | {r['fit2_s']:.2f} | {r['process_s']:.1f} "
                    f"| {int(lab.max()) + 1} | {(lab < 0).mean():.1%} |",
                    flush=True,
                )
            a, b = runs["hdbscan"], runs["fast_hdbscan, warm numba cache"]
            both = ((a["labels"] < 0) == (b["labels"] < 0)).mean()
            agree.append(
                f"| {key} | {adjusted_rand_score(a['labels'], b['labels']):.3f} | "
                f"{adjusted_rand_score(a['labels'][(a['labels'] >= 0) & (b['labels'] >= 0)], b['labels'][(a['labels'] >= 0) & (b['labels'] >= 0)]):.3f} | "
                f"{both:.1%} | {spearman(a['glosh'], b['glosh']):.3f} |"
            )
        print(
            "\n| input | ARI hdbscan vs fast_hdbscan | ARI on points both cluster | same noise/clustered "
            "call | Spearman of GLOSH scores |\n|---|---|---|---|---|"
        )
        print("\n".join(agree))


if __name__ == "__main__":
    main()
