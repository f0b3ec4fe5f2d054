"""The learning loop, measured: effort of the interactive session vs plain, calibration of
the out-of-fold confidence, suspects with every true label entered, Suggest timings.

Usage (workspaces built by ``labeler run`` on the shared sets, each with its labels.csv)::

    python bench/bench_loop.py --set maskedfacenet=WS:LABELS.csv --set webfaces=WS:LABELS.csv \\
        [--timing 10000,133000] [--out bench/results/loop.json]

Prints markdown tables (pasted into bench/LOOP.md):

1. effort: eff95/98/99 and actions to 98 % for plain and interactive (``labeler simulate``'s
   protocols), app clicks to 98 %;
2. calibration: the Suggest step's out-of-fold predictions with ALL true labels entered: a
   10-bin reliability table per set and its expected calibration error (ECE), accuracy, and
   how many suspects it raises (the Review page pre-ticks none);
3. timing: :func:`labeler.loop.suggest.suggest` on synthetic features (N x 192, 10 % labeled,
   4 classes) in a background thread, with the label store read from the main thread
   meanwhile (how long the page waits for its data while a Suggest run is going).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np


def effort_rows(name: str, ws_path: str, truth_csv: str) -> tuple[dict, dict]:
    from labeler.loop.simulate import simulate
    from labeler.loop.suggest import reliability, suggest
    from labeler.loop.truth import join_truth, session_inputs, split_vectors_of
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_path)
    truth = join_truth(ws, truth_csv)
    ids = truth["face_id"].to_numpy(dtype=str)
    groups, X, run = session_inputs(ws, ids)
    V = split_vectors_of(ws, run, ids)
    y = truth["truth"].to_numpy(dtype=str)
    t0 = time.perf_counter()
    plain = simulate(groups, y)
    inter = simulate(groups, y, strategy="interactive", features=X, split_vectors=V)
    sim_s = time.perf_counter() - t0
    eff = {
        "set": name,
        "faces": len(y),
        "groups": int(len(np.unique(groups[groups >= 0]))),
        "noise": int((groups < 0).sum()),
        "plain": {k: getattr(plain, k) for k in ("eff95", "eff98", "eff99", "actions98")},
        "interactive": {
            k: getattr(inter, k) for k in ("eff95", "eff98", "eff99", "actions98", "clicks98")
        },
        "kinds": dict(inter.kinds),
        "seconds": round(sim_s, 1),
    }
    classes, yc = np.unique(y, return_inverse=True)
    res = suggest(X, yc, cv_groups=None)
    table, ece = reliability(res.confidence, res.pred == yc)
    cal = {
        "set": name,
        "faces": len(y),
        "accuracy": float((res.pred == yc).mean()),
        "ece": ece,
        "suspects": len(res.suspects),
        "suspect_share": len(res.suspects) / len(y),
        "temperature": res.temperature,
        "table": table.to_dict(orient="records"),
    }
    return eff, cal


def time_suggest(n: int, tmp: Path) -> dict:
    """One timing row: Suggest on n synthetic faces in a thread, store reads meanwhile."""
    from labeler.labels import LabelStore
    from labeler.loop.suggest import suggest

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 192)) * 0.12  # overlapping: every band is used
    y_true = rng.integers(0, 4, n)
    X = (centres[y_true] + rng.normal(size=(n, 192))).astype(np.float32)
    y = np.where(rng.random(n) < 0.1, y_true, -1)
    store = LabelStore(tmp / f"labels_{n}.db")
    labeled = [f"f{i}" for i in np.flatnonzero(y >= 0)]
    store.assign(labeled, "mask_state", "correct", annotator="bench", source="selection")

    def read_ms(k: int) -> list[float]:
        out = []
        for _ in range(k):
            t = time.perf_counter()
            store.current("mask_state")
            out.append((time.perf_counter() - t) * 1000)
        return out

    idle = read_ms(20)
    done: dict = {}

    def work() -> None:
        t, t_cpu = time.perf_counter(), time.thread_time()
        done["res"] = suggest(X, y)
        done["wall"], done["cpu"] = time.perf_counter() - t, time.thread_time() - t_cpu

    th = threading.Thread(target=work)
    th.start()
    busy: list[float] = []
    while th.is_alive():
        busy += read_ms(1)
        time.sleep(0.05)
    th.join()
    return {
        "faces": n,
        "labeled": int((y >= 0).sum()),
        "suggest_s": round(done["wall"], 2),
        "cpu_s": round(done["cpu"], 2),
        "groups": len(done["res"].groups),
        "read_idle_ms": round(float(np.median(idle)), 1),
        "read_during_ms_median": round(float(np.median(busy)), 1) if busy else None,
        "read_during_ms_max": round(float(np.max(busy)), 1) if busy else None,
        "reads_during": len(busy),
    }


def time_app(n: int, tmp: Path, *, reruns: int = 5) -> dict:
    """The Review page's rerun time (AppTest through the router) while the Suggest step the
    router started by itself runs in the background, then after it ended, on a synthetic
    workspace of n faces (64-d stored features, 10 % labeled in a few bulk events)."""
    import os

    from streamlit.testing.v1 import AppTest

    from labeler.embeddings.store import save_vectors
    from labeler.labels import LabelStore
    from labeler.loop import step as propagate

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic import synthetic_workspace  # the tests' synthetic workspace

    ws = synthetic_workspace(tmp / f"app_{n}", n_faces=n, n_clusters=20, write_images=False,
                             crops_per_cluster=48, seed=1)  # fmt: skip
    faces = ws.require_faces()
    rng = np.random.default_rng(1)
    state = rng.integers(0, 3, n)
    X = (np.eye(3, 64)[state] * 1.5 + rng.normal(size=(n, 64))).astype(np.float32)
    save_vectors(ws, "cues__face", faces["face_id"].to_numpy(str), X, {"bench": True})
    store = LabelStore(ws.labels_db)
    values = ("correct", "nose_exposed", "no_mask")
    pick = rng.random(n) < 0.1
    for chunk in np.array_split(np.flatnonzero(pick), 10):  # 10 bulk events
        for v in range(3):
            ids = faces["face_id"].to_numpy(str)[chunk[state[chunk] == v]]
            if len(ids):
                store.assign(ids, "mask_state", values[v], annotator="bench", source="cluster")
    os.environ["LABELER_WORKSPACE"] = str(ws.root)
    os.environ["LABELER_ANNOTATOR"] = "bench"
    app = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
    at = AppTest.from_file(app, default_timeout=300)
    t0 = time.perf_counter()
    at.run()  # the router sees 10 % new labels and starts Suggest in the background
    first = time.perf_counter() - t0
    at.switch_page("views/review.py").run()
    during, after = [], []
    while propagate.read_status(ws, "mask_state")["state"] == "running":
        t = time.perf_counter()
        at.run()
        during.append(time.perf_counter() - t)
    status = propagate.read_status(ws, "mask_state")
    for _ in range(reruns):
        t = time.perf_counter()
        at.run()
        after.append(time.perf_counter() - t)
    return {
        "faces": n,
        "labeled": int(pick.sum()),
        "state": status["state"],
        "suggest_s": round(status.get("finished", 0) - status.get("started", 0), 2),
        "first_page_s": round(first, 2),
        "rerun_during_ms": [round(1000 * v) for v in during],
        "rerun_after_ms": round(1000 * float(np.median(after))),
        "groups": status.get("n_groups"),
    }


def print_quality(effort: list[dict], calib: list[dict]) -> None:
    print("\n| set | faces | groups (+noise) | plain eff95 / 98 / 99 | interactive eff95 / 98 / 99 "
          "| actions to 98 %: plain / interactive | clicks to 98 % | interactive >= plain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in effort:
        p, i = r["plain"], r["interactive"]
        ok = all(i[k] >= p[k] - 1e-9 for k in ("eff95", "eff98", "eff99"))
        print(f"| {r['set']} | {r['faces']} | {r['groups']} (+{r['noise']}) | "
              f"{p['eff95']:.1f} / {p['eff98']:.1f} / {p['eff99']:.1f} | "
              f"{i['eff95']:.1f} / {i['eff98']:.1f} / {i['eff99']:.1f} | "
              f"{p['actions98']} / {i['actions98']} | {i['clicks98']} | "
              f"{'yes' if ok else '**no**'} |")  # fmt: skip
    print("\nActions of the interactive sessions:")
    for r in effort:
        print(f"- {r['set']}: {r['kinds']} ({r['seconds']} s to simulate both)")
    print("\n| set | faces | out-of-fold accuracy | ECE | suspects (all true labels) | T |")
    print("|---|---|---|---|---|---|")
    for c in calib:
        print(f"| {c['set']} | {c['faces']} | {c['accuracy']:.3f} | {c['ece']:.3f} | "
              f"{c['suspects']} ({c['suspect_share']:.1%}) | {c['temperature']:.3f} |")  # fmt: skip
    for c in calib:
        print(f"\nReliability, {c['set']} (confidence bin: faces, mean confidence, accuracy):\n")
        print("| bin | faces | confidence | accuracy |")
        print("|---|---|---|---|")
        for b in c["table"]:
            print(f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['n']} | {b['confidence']:.3f} | "
                  f"{b['accuracy']:.3f} |")  # fmt: skip


def print_tables(
    effort: list[dict], calib: list[dict], timing: list[dict], app: list[dict]
) -> None:
    if effort:
        print_quality(effort, calib)
    if app:
        print("\n| faces | labeled | Suggest in the background, s | Review page reruns while "
              "it ran, ms | rerun after, ms (median) |")  # fmt: skip
        print("|---|---|---|---|---|")
        for a in app:
            during = a["rerun_during_ms"]
            txt = (
                f"{len(during)}: median {int(np.median(during))}, max {max(during)}"
                if during
                else "none"
            )
            print(f"| {a['faces']:,} | {a['labeled']:,} | {a['suggest_s']} ({a['state']}) | "
                  f"{txt} | {a['rerun_after_ms']} |")  # fmt: skip
    if timing:
        print("\n| faces | labeled | Suggest wall s | CPU s | groups | store read idle ms "
              "| store read during the run: median / max ms (reads) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for t in timing:
            print(f"| {t['faces']:,} | {t['labeled']:,} | {t['suggest_s']} | {t['cpu_s']} | "
                  f"{t['groups']} | {t['read_idle_ms']} | {t['read_during_ms_median']} / "
                  f"{t['read_during_ms_max']} ({t['reads_during']}) |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import logging
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", default=[], help="NAME=WORKSPACE:LABELS.csv")
    ap.add_argument(
        "--timing", default="10000,133000", help="faces for the timing rows ('' = none)"
    )
    ap.add_argument("--app", default="", help="faces for the app rows, e.g. 10000,133000")
    ap.add_argument("--out", default=None, help="write all rows as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    effort, calib = [], []
    for spec in args.set:
        name, rest = spec.split("=", 1)
        ws_path, csv = rest.rsplit(":", 1)
        e, c = effort_rows(name, ws_path, csv)
        effort.append(e)
        calib.append(c)
        print(f"{name}: done", file=sys.stderr)
    sizes = [int(s) for s in args.timing.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        timing = [time_suggest(n, Path(tmp)) for n in sizes]
        app = [time_app(int(n), Path(tmp)) for n in args.app.split(",") if n.strip()]
    print_tables(effort, calib, timing, app)
    if args.out:
        Path(args.out).write_text(json.dumps({"effort": effort, "calibration": calib,
                                              "timing": timing, "app": app}, indent=1, default=float))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
