"""Clustering benchmark on synthetic-but-clustered face embeddings. Prints tables.

    python bench/bench_cluster.py                 # 133,000 x 1,280 end-to-end + comparisons
    python bench/bench_cluster.py --million       # 1,000,000 x 1,280 with bounded memory
    python bench/bench_cluster.py --n 20000       # smaller, for a quick look
    python bench/bench_cluster.py --json FILE     # also write the figures (README's) as JSON

Data: ``n_clusters`` Gaussian clusters in D dims with random centres, a random 16-d
anisotropic spread per cluster (scale 0.1-0.5), isotropic noise (sd 0.6), Dirichlet cluster
sizes and 2% background faces (label -1) drawn wider. Generated chunk by chunk (one seeded
generator per chunk), into RAM (float32) or, for --million, a float16 memmap on disk.

Sections (all in one process, 2 cores):
1. end-to-end ``fit_clusters`` + ``save_run`` with the automatic parameters: time per
   step, peak RSS, ARI vs the generating labels;
2. the kNN graph of UMAP's sample: FAISS (this tool) vs UMAP's own NN-descent
   (``umap.umap_.nearest_neighbors``), time and recall vs exact search; then the 2-D UMAP
   with the precomputed graph vs UMAP computing its own (same sample, same epochs);
3. splitting a 5,000-face cluster (HDBSCAN auto, and k-means into 4) vs re-running the whole
   clustering.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_embeddings(
    n: int,
    d: int = 1280,
    n_clusters: int = 40,
    *,
    seed: int = 0,
    out: np.ndarray | None = None,
    chunk: int = 50_000,
    noise_frac: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, d), labels (n,) int32 with -1 = background)``, generated in chunks.

    ``out`` (e.g. a float16 memmap) receives the rows; otherwise a float32 array is made.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d)).astype(np.float32)
    bases = rng.normal(size=(n_clusters, 16, d)).astype(np.float32)
    bases *= rng.uniform(0.1, 0.5, size=(n_clusters, 1, 1)).astype(np.float32)
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    X = np.empty((n, d), np.float32) if out is None else out
    labels = np.empty(n, np.int32)
    for i, start in enumerate(range(0, n, chunk)):
        r = np.random.default_rng([seed, i])
        m = min(chunk, n - start)
        lab = r.choice(n_clusters, size=m, p=weights).astype(np.int32)
        lab[r.random(m) < noise_frac] = -1
        block = r.normal(scale=0.6, size=(m, d)).astype(np.float32)
        for c in np.unique(lab):
            rows = np.flatnonzero(lab == c)
            if c < 0:
                block[rows] *= 2.0
            else:
                block[rows] += (
                    centers[c] + r.normal(size=(rows.size, 16)).astype(np.float32) @ bases[c]
                )
        X[start : start + m] = block
        labels[start : start + m] = lab
    return X, labels


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class AnonWatch:
    """Polls /proc/self/status in a thread; ``peak_anon`` = max RssAnon in bytes (Linux)."""

    def __init__(self, every: float = 0.2) -> None:
        import threading

        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            try:
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak_anon = max(self.peak_anon, int(line.split()[1]) * 1024)
            except OSError:
                return
            self._stop.wait(every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def ari(y: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """ARI over all faces, and over the faces generated in a cluster."""
    from sklearn.metrics import adjusted_rand_score

    inside = y >= 0
    return adjusted_rand_score(y, labels), adjusted_rand_score(y[inside], labels[inside])


def purity(y: np.ndarray, labels: np.ndarray) -> float:
    """Share of the faces generated in a cluster whose group's majority is their cluster: what
    bulk-labeling a group gets right. The default cuts page-sized groups (several per
    generated cluster), which ARI counts as errors and purity does not."""
    inside = y >= 0
    y, labels = y[inside], labels[inside]
    right = 0
    for g in np.unique(labels):
        right += np.bincount(y[labels == g]).max()
    return right / len(y)


def _fit_numbers(fit: Any, y: np.ndarray, n: int, d: int) -> dict[str, object]:
    """What ``--json`` records of a ``fit_clusters`` result against the generating labels."""
    labels = fit.result.labels
    sizes = np.bincount(labels[labels >= 0])
    a_all, a_in = ari(y, labels)
    return {
        "n": n,
        "d": d,
        "algorithm": fit.result.params.get("algorithm"),
        "steps_s": dict(fit.timings),
        "ari_all": a_all,
        "ari_in_cluster": a_in,
        "purity": purity(y, labels),
        "clusters": int(len(sizes)),
        "group_faces_mean": float(sizes.mean()),
        "group_faces_max": int(sizes.max()),
    }


NUMS: dict[str, object] = {}  # what --json writes: the figures other documents quote


def row(name: str, value: str, note: str = "") -> None:
    print(f"| {name:<44} | {value:>14} | {note}")


def header(title: str) -> None:
    print(f"\n### {title}\n| {'what':<44} | {'value':>14} | note\n|{'-' * 46}|{'-' * 16}|------")


def bench_main(n: int, d: int, seed: int) -> None:
    import faiss

    from labeler.cluster.edit import split_labels
    from labeler.cluster.knn import knn_graph
    from labeler.cluster.run import ClusterConfig, fit_clusters, resolve_config
    from labeler.cluster.store import save_run
    from labeler.workspace import Workspace

    t = time.perf_counter()
    X, y = make_embeddings(n, d, seed=seed)
    t_gen = time.perf_counter() - t
    ids = np.array([f"{i:08x}_0" for i in range(n)])
    cfg = resolve_config(n, d)
    header(f"1. end-to-end clustering, {n:,} x {d:,} float32, 40 clusters + 2% background, 2 cores")
    load_start = round(os.getloadavg()[0], 2)
    row(
        "machine load average (1 min) at start",
        f"{load_start:.1f}",
        f"{os.cpu_count()} cores shared",
    )
    row("generate data (not counted)", f"{t_gen:.1f} s")
    t = time.perf_counter()
    cpu = cpu_seconds()
    fit = fit_clusters(ids, X, config=ClusterConfig(seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws", create=True)
        t_save = time.perf_counter()
        save_run(ws, fit.result, artifacts=fit.artifacts)
        t_save = time.perf_counter() - t_save
    total = time.perf_counter() - t
    cpu = cpu_seconds() - cpu
    for step, sec in fit.timings.items():
        row(f"  {step}", f"{sec:.1f} s")
    row("  save_run (parquet, vectors, graph, medoids)", f"{t_save:.1f} s")
    NUMS["main"] = _fit_numbers(fit, y, n, d) | {
        "save_s": t_save,
        "total_s": total,
        "cpu_s": cpu,
        "load_start": load_start,
        "peak_rss_gb": peak_rss_gb(),
    }
    a_all, a_in = NUMS["main"]["ari_all"], NUMS["main"]["ari_in_cluster"]
    p = fit.result.params
    row(
        "ARI vs generating labels (all faces)",
        f"{a_all:.3f}",
        "background faces are noise in the truth",
    )
    row("ARI on faces generated in a cluster", f"{a_in:.3f}")
    row("purity (faces whose group's majority is theirs)", f"{NUMS['main']['purity']:.3f}")
    main = NUMS["main"]
    row(
        "faces per group: mean / max", f"{main['group_faces_mean']:.0f} / {main['group_faces_max']}"
    )
    row("clusters found / generated", f"{p['n_clusters']} / 40")
    row("noise fraction (truth: ~0.02)", f"{p['noise_fraction']:.3f}")
    bg = y < 0
    row("background faces labelled noise", f"{(fit.result.labels[bg] < 0).mean():.2f}")
    row("UMAP sample / placed by kNN", f"{p['n_umap_points']:,} / {p.get('n_placed_by_knn', 0):,}")
    row(
        "auto params",
        f"mcs {cfg.min_cluster_size}",
        f"pca {cfg.pca_dims}, k {cfg.n_neighbors}, umap {cfg.umap_dims}-d, index {p['index_used']}",
    )

    # 2. kNN: FAISS vs UMAP's NN-descent, on UMAP's sample
    import umap
    from umap.umap_ import nearest_neighbors

    rows_ = fit.artifacts.graph_rows
    V = np.ascontiguousarray(fit.artifacts.vectors[rows_])
    k = cfg.n_neighbors
    header(
        f"2. kNN graph for UMAP on its {len(V):,}-face sample ({V.shape[1]}-d unit vectors, k={k})"
    )
    exact = faiss.IndexFlatIP(V.shape[1])
    exact.add(V)
    _, truth = exact.search(V, k)
    t = time.perf_counter()
    g = knn_graph(V, k=k, seed=seed)
    t_faiss = time.perf_counter() - t

    def rec(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))

    row(f"FAISS {g.kind} (this tool)", f"{t_faiss:.1f} s", f"recall {rec(g.indices):.3f}")
    knn = NUMS.setdefault("knn_sample", {"faces": len(V), "k": k})
    knn |= {"faiss_kind": g.kind, "faiss_s": t_faiss, "faiss_recall": rec(g.indices)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for when in ("cold, incl. numba compile", "warm"):
            t = time.perf_counter()
            nd_idx, _, _ = nearest_neighbors(
                V, k, "cosine", {}, False, np.random.RandomState(seed), n_jobs=1
            )
            t_nd = time.perf_counter() - t
            knn |= {f"nndescent_{when.split(',')[0]}_s": t_nd}
            knn |= {f"nndescent_{when.split(',')[0]}_recall": rec(nd_idx)}
            row(
                f"UMAP's NN-descent, seeded ({when})",
                f"{t_nd:.1f} s",
                f"recall {rec(nd_idx):.3f}; ratio to FAISS {t_nd / max(t_faiss, 1e-9):.1f}x",
            )
    if len(V) < n:  # the graph over all faces ("more like this"), FAISS vs NN-descent
        Vall = fit.artifacts.vectors
        probe = np.random.default_rng(seed).choice(n, 2000, replace=False)
        ex = faiss.IndexFlatIP(Vall.shape[1])
        ex.add(Vall)
        _, truth_all = ex.search(Vall[probe], k)

        def rec_all(found: np.ndarray) -> float:
            pairs = zip(found[probe], truth_all, strict=True)
            return float(np.mean([len(set(a) & set(b)) / k for a, b in pairs]))

        t = time.perf_counter()
        g_all = knn_graph(Vall, k=k, seed=seed)
        t_fa = time.perf_counter() - t
        row(
            f"all {n:,} faces: FAISS {g_all.kind}",
            f"{t_fa:.1f} s",
            f"recall {rec_all(g_all.indices):.3f}",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            nd_all, _, _ = nearest_neighbors(
                Vall, k, "cosine", {}, False, np.random.RandomState(seed), n_jobs=1
            )
            t_na = time.perf_counter() - t
        row(
            f"all {n:,} faces: NN-descent (warm)",
            f"{t_na:.1f} s",
            f"recall {rec_all(nd_all):.3f}; ratio to FAISS {t_na / max(t_fa, 1e-9):.1f}x",
        )
    epochs = cfg.umap_epochs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        umap.UMAP(
            n_neighbors=k,
            n_components=2,
            metric="cosine",
            random_state=seed,
            n_epochs=epochs,
            precomputed_knn=g.for_umap(k),
        ).fit(V)
        t_pre = time.perf_counter() - t + t_faiss
        t = time.perf_counter()
        umap.UMAP(
            n_neighbors=k, n_components=2, metric="cosine", random_state=seed, n_epochs=epochs
        ).fit(V)
        t_own = time.perf_counter() - t
    row("2-D UMAP, FAISS graph (graph + fit)", f"{t_pre:.1f} s")
    row(
        "2-D UMAP computing its own kNN",
        f"{t_own:.1f} s",
        f"ratio own/precomputed {t_own / t_pre:.2f}",
    )
    row("  (this tool needs the graph for 2 UMAPs + search)", "", "own kNN would run twice")

    # 3. split a 5,000-face cluster
    header("3. split one 5,000-face cluster (its run vectors, 64-d)")
    big = np.flatnonzero(np.bincount(y[y >= 0]) >= 5000)
    c = int(big[0]) if big.size else int(np.bincount(y[y >= 0]).argmax())
    members = np.flatnonzero(y == c)[:5000]
    Vs = fit.artifacts.vectors[members]
    labels0 = np.zeros(len(members), np.int32)
    for name, kw in (
        ("HDBSCAN on local PCA (auto parts)", {}),
        ("k-means into 4 parts", {"n_parts": 4}),
    ):
        split_labels(Vs[:500], labels0[:500], 0, **kw)  # warm imports
        t = time.perf_counter()
        out = split_labels(Vs, labels0, 0, **kw)
        NUMS.setdefault("split_5000_s", {})[name] = time.perf_counter() - t
        row(name, f"{time.perf_counter() - t:.2f} s", f"{len(np.unique(out))} parts; target <= 3 s")
    row("naive: re-run the whole clustering", f"{total:.1f} s")
    row("peak RSS at the end", f"{peak_rss_gb():.2f} GB")


def bench_million(n: int, d: int, seed: int) -> None:
    from labeler.cluster.run import ClusterConfig, fit_clusters

    tracemalloc.start()
    header(f"4. {n:,} x {d:,}: float16 memmap, PCA on 20k rows, UMAP on 20k, the rest by kNN")
    row("machine load average (1 min) at start", f"{os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "X.f16"
        X = np.memmap(path, dtype=np.float16, mode="w+", shape=(n, d))
        t = time.perf_counter()
        _, y = make_embeddings(n, d, seed=seed, out=X)
        X.flush()
        del X, _  # drop the writable mapping (its pages would count in RSS)
        row(
            "generate to memmap (streamed)",
            f"{time.perf_counter() - t:.1f} s",
            f"{path.stat().st_size / 1e9:.2f} GB on disk",
        )
        X = np.memmap(path, dtype=np.float16, mode="r", shape=(n, d))
        ids = np.array([f"{i:08x}_0" for i in range(n)])
        t = time.perf_counter()
        cpu = cpu_seconds()
        watch = AnonWatch()
        fit = fit_clusters(ids, X, config=ClusterConfig(seed=seed))
        total = time.perf_counter() - t
        watch.stop()
        for step, sec in fit.timings.items():
            row(f"  {step}", f"{sec:.1f} s")
        row(
            "TOTAL fit (wall)",
            f"{total:.1f} s",
            f"CPU {cpu_seconds() - cpu:.1f} s, load {os.getloadavg()[0]:.1f}",
        )
        _, peak = tracemalloc.get_traced_memory()
        row(
            "peak traced allocations (tracemalloc)",
            f"{peak / 1e9:.2f} GB",
            "numpy arrays; memmap pages not counted",
        )
        row(
            "peak anonymous RSS (RssAnon, polled)",
            f"{watch.peak_anon / 1e9:.2f} GB",
            "what the run needs",
        )
        row(
            "peak RSS (ru_maxrss)",
            f"{peak_rss_gb():.2f} GB",
            "+ memmap file pages read (reclaimable page cache)",
        )
        NUMS["million"] = _fit_numbers(fit, y, n, d) | {
            "total_s": total,
            "peak_anon_gb": watch.peak_anon / 1e9,
            "peak_traced_gb": peak / 1e9,
        }
        a_all, a_in = NUMS["million"]["ari_all"], NUMS["million"]["ari_in_cluster"]
        p = fit.result.params
        row("ARI all / in-cluster", f"{a_all:.3f} / {a_in:.3f}")
        row("purity", f"{NUMS['million']['purity']:.3f}")
        mil = NUMS["million"]
        row(
            "faces per group: mean / max",
            f"{mil['group_faces_mean']:.0f} / {mil['group_faces_max']}",
        )
        row("clusters / noise fraction", f"{p['n_clusters']} / {p['noise_fraction']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=133_000)
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--million", action="store_true", help="run only the 1,000,000-face bounded-memory section"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    import faiss
    import numba

    faiss.omp_set_num_threads(2)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    if args.million:
        bench_million(1_000_000 if args.n == 133_000 else args.n, args.d, args.seed)
    else:
        bench_main(args.n, args.d, args.seed)
    if args.json:
        NUMS.update(date=time.strftime("%Y-%m-%d", time.gmtime()), cores=os.cpu_count())
        args.json.write_text(json.dumps(NUMS, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
