"""Benchmark the labeling app at the size of the real dataset (133,000 faces).

Builds a synthetic workspace (133k faces, ~200 clusters + one of 10,000 faces, crops only for
the faces the pages show, half the faces already labeled in 2,000 events), then measures:

* bulk-assigning the 10,000-face cluster: ``LabelStore.assign`` (one transaction,
  executemany + maintained ``current`` table) vs the naive one-transaction-per-face loop;
* reading current labels: the maintained ``current`` table vs a window query over all events;
* page switch time: AppTest run of each page through the router, cold (first) and warm;
* the map payload: the sampled figure sent to the browser vs all 133k points.

    .venv/bin/python bench/bench_app.py [--faces 133000] [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from labeler import ui

PAGES = [script for script, _, _ in ui.PAGES]
APP = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")


CPU: list[float] = []  # process CPU seconds of the last timed() call


def timed(fn, *args, **kwargs):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    CPU[:] = [time.process_time() - c]
    return out, time.perf_counter() - t


def naive_assign(db: Path, face_ids, field, value, annotator):
    """One transaction per face (what a per-click UI loop does)."""
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    for f in face_ids:
        con.execute("BEGIN IMMEDIATE")
        cur = con.execute(
            "INSERT INTO events(ts, annotator, kind, field, value, source, n_faces) "
            "VALUES (?, ?, 'assign', ?, ?, 'single', 1)",
            (time.time(), annotator, field, value),
        )
        con.execute("INSERT INTO event_faces VALUES (?, ?)", (cur.lastrowid, f))
        con.execute(
            "INSERT INTO current VALUES (?, ?, ?, ?) ON CONFLICT(field, face_id) DO UPDATE "
            "SET value = excluded.value, event_id = excluded.event_id",
            (field, f, value, cur.lastrowid),
        )
        con.execute("COMMIT")
    con.close()


WINDOW_QUERY = """
SELECT face_id, value FROM (
  SELECT ef.face_id, e.value, ROW_NUMBER() OVER (
      PARTITION BY ef.face_id ORDER BY e.event_id DESC) AS rn
  FROM event_faces ef JOIN events e ON e.event_id = ef.event_id
  WHERE e.field = ? AND e.kind = 'assign' AND e.undone = 0)
WHERE rn = 1 AND value IS NOT NULL
"""


def pil_thumbnail_sheets(fids, *, read, cell: int, cols: int, quality: int = 80):
    """The obvious code for the map's thumbnail sheets (what the app shipped before): PIL,
    one face after another, a DCT-scaled decode (``draft``) then a bilinear resize."""
    import io

    from PIL import Image

    from labeler.ui.chart import ThumbSheets

    sheets, per = [], cols * cols
    for start in range(0, len(fids), per):
        chunk = fids[start : start + per]
        sheet = Image.new("RGB", (cols * cell, -(-len(chunk) // cols) * cell), (200, 200, 200))
        for j, fid in enumerate(chunk):
            data = read(fid)
            if not data:
                continue
            try:
                im = Image.open(io.BytesIO(data))
                im.draft("RGB", (cell, cell))
                im = im.convert("RGB").resize((cell, cell), Image.Resampling.BILINEAR)
            except OSError:
                continue
            sheet.paste(im, ((j % cols) * cell, (j // cols) * cell))
        buf = io.BytesIO()
        sheet.save(buf, format="JPEG", quality=quality)
        sheets.append(buf.getvalue())
    return ThumbSheets(tuple(sheets), cell, cols)


def write_map_crops(ws, face_ids, labels) -> tuple[int, str]:
    """A crop for every face the map draws (its hover thumbnails read them all on the first
    visit): 256 px JPEGs cut from the real photos of ``../shared/data/realmasks`` where they
    are (a real crop's decode cost), else one synthetic face reused. Returns (count, source)."""
    import io

    from PIL import Image

    from labeler.ui.data import map_sample

    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "realmasks" / "images"
    crops = []
    for f in sorted(real.iterdir())[:300] if real.is_dir() else []:
        buf = io.BytesIO()
        Image.open(f).convert("RGB").resize((256, 256)).save(buf, format="JPEG", quality=90)
        crops.append(buf.getvalue())
    source = f"{len(crops)} real crops (realmasks), reused"
    if not crops:
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (180, 140, 120)).save(buf, format="JPEG", quality=90)
        crops, source = [buf.getvalue()], "one synthetic crop (no ../shared)"
    rows = map_sample(labels)
    for i, row in enumerate(rows):
        path = ws.crop_path(str(face_ids[row]))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(crops[i % len(crops)])
    return len(rows), source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=133_000)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None, help="build the workspace here")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    from streamlit.testing.v1 import AppTest

    from labeler.cluster import store as cluster_store
    from labeler.labels import MASK_STATES, LabelStore
    from labeler.ui import chart, data
    from labeler.ui.state import ENV_WORKSPACE, K

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic import synthetic_workspace  # the tests' synthetic workspace

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_app_")) / "ws"
    ws, t_build = timed(
        synthetic_workspace,
        root,
        n_faces=args.faces,
        n_clusters=args.clusters,
        crops_per_cluster=48,
        write_images=False,
        big_cluster=10_000,
    )
    run = cluster_store.load_run(ws)
    rows: list[tuple[str, str, str]] = [("build synthetic workspace", f"{t_build:.1f} s", "")]
    (n_crops, source), t_crops = timed(write_map_crops, ws, run.face_ids, run.labels)
    rows.append((f"crops for the map's {n_crops:,} drawn faces", f"{t_crops:.1f} s", source))
    nums: dict[str, object] = {"faces": args.faces, "clusters": args.clusters,
                               "load_start": round(os.getloadavg()[0], 2)}  # fmt: skip

    store = LabelStore(ws.labels_db)
    rng = np.random.default_rng(0)
    half = rng.permutation(run.face_ids[10_000:])[: args.faces // 2]
    t = time.perf_counter()
    for i, chunk in enumerate(np.array_split(half, 2000)):
        store.assign(
            chunk, "mask_state", MASK_STATES[i % 5], annotator=f"a{i % 3}", source="selection"
        )
    rows.append(("pre-label 50% in 2,000 events", f"{time.perf_counter() - t:.1f} s", ""))
    nums |= {"prelabeled": len(half), "prelabel_events": 2000}

    big = [str(f) for f in run.face_ids[run.labels == 0]]
    assert len(big) >= 10_000
    times, cpus = [], []
    for i in range(5):
        _, dt = timed(
            store.assign, big, "mask_state", MASK_STATES[i % 5], annotator="bench", source="cluster"
        )
        times.append(dt)
        cpus.append(CPU[0])
    nums |= {"big_cluster": len(big), "assign_ms": 1e3 * float(np.median(times))}
    nums["assign_cpu_ms"] = 1e3 * float(np.median(cpus))
    rows.append(
        (
            f"bulk assign {len(big):,}-face cluster (LabelStore.assign)",
            f"{np.median(times) * 1e3:.0f} ms",
            f"median of 5 (CPU {np.median(cpus) * 1e3:.0f} ms); target <= 200 ms",
        )
    )
    _, dt = timed(store.undo, "bench")
    nums["undo_ms"] = dt * 1e3
    rows.append(("undo that assign", f"{dt * 1e3:.0f} ms", f"CPU {CPU[0] * 1e3:.0f} ms"))
    _, dt = timed(store.redo, "bench")
    nums["redo_ms"] = dt * 1e3
    rows.append(("redo it", f"{dt * 1e3:.0f} ms", f"CPU {CPU[0] * 1e3:.0f} ms"))
    _, dt = timed(naive_assign, ws.labels_db, big[:1000], "mask_state", "correct", "naive")
    nums["naive_assign_1000_ms"] = dt * 1e3
    nums["naive_assign_big_s"] = dt * len(big) / 1000  # extrapolated to the big cluster
    rows.append(
        (
            "naive: 1 transaction per face, 1,000 faces",
            f"{dt * 1e3:.0f} ms",
            f"~{dt * 10:.1f} s for 10k",
        )
    )

    cur, dt = timed(store.current_values, "mask_state")
    nums["current_table_ms"] = dt * 1e3
    rows.append((f"current labels ({len(cur):,}) from maintained table", f"{dt * 1e3:.0f} ms", ""))
    con = sqlite3.connect(ws.labels_db)
    win, dt = timed(lambda: dict(con.execute(WINDOW_QUERY, ("mask_state",)).fetchall()))
    nums |= {"window_query_ms": dt * 1e3, "window_same_answer": win == cur}
    rows.append(
        (
            "naive: window query over all events",
            f"{dt * 1e3:.0f} ms",
            "same answer" if win == cur else "DIFFERENT",
        )
    )
    con.close()
    full, dt = timed(store.current)
    rows.append(("LabelStore.current() DataFrame", f"{dt * 1e3:.0f} ms", ""))

    os.environ[ENV_WORKSPACE] = str(ws.root)
    os.environ.setdefault("LABELER_ANNOTATOR", "bench")  # else the app asks for a name first
    at = AppTest.from_file(APP, default_timeout=120)
    _, dt = timed(at.run)
    rows.append(("app start (overview, cold)", f"{dt * 1e3:.0f} ms", ""))
    for label in ("cold", "warm"):
        for page in PAGES:
            at.switch_page(page)
            _, dt = timed(at.run)
            assert not at.exception, (page, [e.value for e in at.exception])
            nums[f"page_{label}_{page.split('/')[1][:-3]}_ms"] = dt * 1e3
            note = f"CPU {CPU[0] * 1e3:.0f} ms" + ("; target <= 1 s" if label == "warm" else "")
            rows.append(
                (f"page switch {label}: {page.split('/')[1][:-3]}", f"{dt * 1e3:.0f} ms", note)
            )
    at.switch_page("views/cluster_view.py").run()
    at.selectbox(key=K.cluster_pick).set_value(0).run()
    at.button(key=K.assign_btn).click()
    _, dt = timed(at.run)
    nums |= {"click_assign_ms": dt * 1e3, "click_assign_cpu_ms": CPU[0] * 1e3}
    rows.append(
        (
            "app: click assign on the 10k cluster (rerun incl.)",
            f"{dt * 1e3:.0f} ms",
            f"CPU {CPU[0] * 1e3:.0f} ms",
        )
    )

    fig = chart.map_figure(ws, "mask_state", "label").figure
    sample_bytes = len(json.dumps(fig))
    n_drawn = sum(len(t["x"]) for t in fig["data"])
    xy = run.xy
    full_bytes = len(
        json.dumps({"x": np.round(xy[:, 0], 3).tolist(), "y": np.round(xy[:, 1], 3).tolist()})
    )
    nums |= {"map_points": n_drawn, "map_mb": sample_bytes / 1e6, "all_points": len(xy)}
    nums["all_points_mb"] = full_bytes / 1e6
    rows.append((f"map payload: {n_drawn:,} sampled points", f"{sample_bytes / 1e6:.2f} MB", ""))
    rows.append((f"naive: all {len(xy):,} points", f"{full_bytes / 1e6:.2f} MB", ""))

    # the map's hover thumbnails (the bulk of its first visit): as shipped vs the obvious code
    from functools import partial

    fids = [str(f) for f in run.face_ids[data.map_sample(run.labels)]]
    read = chart.crop_reader(ws)
    for key, name, fn in (
        ("threads", f"threads ({os.cpu_count()})", partial(chart.thumbnail_sheets, read=read)),
        ("one_thread", "one thread", partial(chart.thumbnail_sheets, read=read, workers=1)),
        ("naive", "naive: PIL, one thread", partial(pil_thumbnail_sheets, read=read)),
    ):
        sheets, dt = timed(fn, fids, cell=40, cols=32)
        nums[f"thumbs_{key}_s"], nums[f"thumbs_{key}_cpu_s"] = dt, CPU[0]
        rows.append((f"map thumbnails, {len(fids):,} faces: {name}", f"{dt:.2f} s",
                     f"CPU {CPU[0]:.2f} s, {sum(map(len, sheets.sheets)) / 1e6:.1f} MB"))  # fmt: skip
    nums["thumbs_faces"] = len(fids)

    width = max(len(r[0]) for r in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nlabeling app at {args.faces:,} faces, {args.clusters} clusters ({ws.root})")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} (wall times grow with load)\n")
    print(f"| {'what'.ljust(width)} | {'time / size':>12} | note |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|------|")
    for what, value, note in rows:
        print(f"| {what.ljust(width)} | {value:>12} | {note} |")
    if args.json:
        nums |= {"load_end": round(load, 2), "cores": os.cpu_count()}
        nums["date"] = time.strftime("%Y-%m-%d", time.gmtime())
        args.json.write_text(json.dumps(nums, indent=1) + "\n")


if __name__ == "__main__":
    main()
