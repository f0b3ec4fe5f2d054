"""``labeler run`` with ``--engine ray`` against the local engine on every shared photo set:
are the workspaces the same?

For each set, both engines run as shipped (the CLI in its own process, default features and
grouping, a local Ray session for Ray) on the same folder, and the table gives: faces of
each, the largest box difference (px), crop files byte-identical, the smallest cosine between
the two engines' vectors of a face in any feature block, and whether the default grouping is
the same partition (and its adjusted Rand index).

    .venv/bin/python bench/bench_ray_equal.py [--sets mfr2,realmasks,...] [--out bench/results/ray_equal.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLI = [sys.executable, "-c", "from labeler.cli import main; main()"]
SETS = ("mfr2", "maskedfacenet_1024", "maskedfacenet", "webfaces", "realmasks")


def run(images: Path, ws: Path, env: dict[str, str], *extra: str) -> float:
    t = time.perf_counter()
    out = subprocess.run(
        [*CLI, "run", str(images), "-w", str(ws), "--no-progress", *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"{images} {extra}: {out.stderr[-2000:]}")
    return time.perf_counter() - t


def compare(ray_ws: Path, local_ws: Path) -> dict[str, object]:
    from sklearn.metrics import adjusted_rand_score

    from labeler.cluster.store import current_run_id, load_run
    from labeler.embeddings import store
    from labeler.workspace import Workspace

    a, b = Workspace.open(ray_ws), Workspace.open(local_ws)
    fa = a.faces().sort_values("face_id").reset_index(drop=True)
    fb = b.faces().sort_values("face_id").reset_index(drop=True)
    same_ids = list(fa["face_id"]) == list(fb["face_id"])
    box = ["x0", "y0", "x1", "y1"]
    box_diff = float(np.abs(fa[box].to_numpy() - fb[box].to_numpy()).max()) if same_ids else None
    identical = sum((a.root / p).read_bytes() == (b.root / p).read_bytes() for p in fa["crop_path"])
    min_cos = 1.0
    for key in store.list_embeddings(b):
        ia, xa = store.load_embeddings(a, key)
        ib, xb = store.load_embeddings(b, key)
        xb = xb[pd.Series(np.arange(len(ib)), index=ib)[ia].to_numpy()]
        cos = (xa * xb).sum(1) / np.linalg.norm(xa, axis=1) / np.linalg.norm(xb, axis=1)
        min_cos = min(min_cos, float(cos.min()))
    ra, rb = load_run(a, current_run_id(a)), load_run(b, current_run_id(b))
    la = pd.Series(ra.labels, index=ra.face_ids)
    lb = pd.Series(rb.labels, index=rb.face_ids)[la.index]
    pairs = pd.crosstab(la.to_numpy(), lb.to_numpy()).gt(0)
    same_partition = bool((pairs.sum(axis=1) == 1).all() and (pairs.sum(axis=0) == 1).all())
    return {
        "faces": f"{len(fa)} / {len(fb)}",
        "same face ids": same_ids,
        "largest box difference px": box_diff,
        "identical crop files": f"{identical} of {len(fa)}",
        "smallest cosine, any block": f"{min_cos:.7f}",
        "groups": f"{len(set(ra.labels))} / {len(set(rb.labels))}",
        "same grouping": same_partition,
        "ARI": f"{adjusted_rand_score(la, lb):.4f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--out", type=Path, default=Path("bench/results/ray_equal.md"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_ray_equal_"))
    env = {**os.environ, "LABELER_CACHE": str(root / "cache")}
    rows = []
    for name in args.sets.split(","):
        images = SHARED / name / "images"
        t_local = run(images, root / f"{name}_local", env)
        t_ray = run(images, root / f"{name}_ray", env, "--engine", "ray")
        row = {"set": name, **compare(root / f"{name}_ray", root / f"{name}_local")}
        row["seconds local / ray"] = f"{t_local:.1f} / {t_ray:.1f}"
        rows.append(row)
        print(row, flush=True)
    cols = list(rows[0])
    lines = [
        "# labeler run --engine ray vs the local engine, every shared photo set",
        "",
        "Two numbers in a cell: Ray's / the local engine's (the last column: local / Ray); each engine as shipped, in its own "
        "process (Ray: a local session of this 2-core machine), default features and "
        "grouping. The bench: `bench/bench_ray_equal.py`.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
