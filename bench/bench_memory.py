"""Peak memory of ``labeler run --no-cluster`` with and without huge junk files (issue #22).

Two folders, each run in a fresh workspace by a fresh wrapper process that reports the peak
resident memory of its children (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the
largest of ``labeler run`` and anything it started):

* ``photos``: ``--n`` real face photos (default 20 from ``../shared/data/mfr2/images``);
* ``photos + junk``: the same photos plus junk files named ``.jpg`` (default two of 500 MB and
  two of 3 GB): a JPEG start-of-image marker and 1 MiB of random bytes, then sparse (zeros
  that use no disk) up to the size. They pass the cheap "does it start like an image" check,
  so they are hashed and header-checked like any photo; the per-photo size limit is raised
  (``LABELER_MAX_FILE_MB``) so that they are not refused unread.

The issue's target: the two peaks within 200 MB of each other (peak memory does not depend
on file sizes). Prints a table; ``--json`` and ``--md`` write it (default
``bench/results/memory.json`` / ``memory.md``).

Usage: python bench/bench_memory.py [--n 20] [--junk-mb 500,500,3072,3072] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mfr2" / "images"
RESULTS = ROOT / "bench" / "results"
TARGET_MB = 200

#: The wrapper: runs its argv, prints the children's peak RSS (KiB on Linux) and wall seconds.
PROBE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, "
    "text=True); w = time.perf_counter() - t; sys.stderr.write(r.stderr[-3000:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, w); sys.exit(r.returncode)"
)


def write_junk(path: Path, size: int, seed: int) -> None:
    """A file of ``size`` bytes that starts like a JPEG: SOI marker, 1 MiB of random bytes,
    then a sparse hole (reads as zeros, uses no disk)."""
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        fh.write(b"\xff\xd8\xff" + rng.randbytes(2**20))
        fh.truncate(size)


def make_folders(data: Path, n: int, junk_mb: list[int], workdir: Path) -> tuple[Path, Path]:
    photos = sorted(p for p in data.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(photos) < n:
        raise SystemExit(f"{data} has {len(photos)} photos, fewer than --n {n}")
    plain, junk = workdir / "photos", workdir / "photos_junk"
    for folder in (plain, junk):
        folder.mkdir(parents=True)
        for p in photos[:n]:
            shutil.copy(p, folder / p.name)
    for i, mb in enumerate(junk_mb):
        write_junk(junk / f"junk_{i}_{mb}mb.jpg", mb * 2**20, seed=i)
    return plain, junk


def measure(folder: Path, ws: Path, limit_mb: int) -> dict[str, object]:
    """Peak RSS and wall time of one ``labeler run --no-cluster`` in a fresh wrapper."""
    import pandas as pd

    shutil.rmtree(ws, ignore_errors=True)
    labeler = [sys.executable, "-c", "from labeler.cli import main; main()"]
    cmd = [sys.executable, "-c", PROBE, *labeler, "run", str(folder), "-w", str(ws)]
    env = {**os.environ, "LABELER_MAX_FILE_MB": str(limit_mb)}
    proc = subprocess.run(cmd + ["--no-cluster"], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"labeler run on {folder} failed: {proc.stderr[-2000:]}")
    peak_kib, wall = proc.stdout.split()[-2:]
    images = pd.read_parquet(ws / "images.parquet")
    files = sorted(folder.iterdir())
    return {
        "folder": folder.name,
        "files": len(files),
        "gb_on_disk_apparent": sum(p.stat().st_size for p in files) / 1e9,
        "images_ok": int((images["status"] == "ok").sum()),
        "image_errors": int((images["status"] == "error").sum()),
        "faces": len(pd.read_parquet(ws / "faces.parquet")),
        "peak_rss_mb": int(peak_kib) / 1024,
        "wall_s": float(wall),
    }


def table(rows: list[dict[str, object]], note: str) -> str:
    head = "| folder | files | apparent size, GB | ok / error | faces | peak RSS, MB | wall, s |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['folder']} | {r['files']} | {r['gb_on_disk_apparent']:.2f} | "
            f"{r['images_ok']} / {r['image_errors']} | {r['faces']} | "
            f"{r['peak_rss_mb']:,.0f} | {r['wall_s']:.1f} |"
        )
    diff = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]  # type: ignore[operator]
    verdict = "met" if abs(diff) <= TARGET_MB else "NOT met"
    lines.append("")
    lines.append(
        f"Peak with the junk files minus without: {diff:+,.0f} MB (target: within "
        f"{TARGET_MB} MB: {verdict}). {note}"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=20, help="real photos in each folder")
    ap.add_argument("--junk-mb", default="500,500,3072,3072", help="sizes of the junk files")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir in /tmp")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each folder (max peak kept)")
    ap.add_argument("--json", type=Path, default=RESULTS / "memory.json")
    ap.add_argument("--md", type=Path, default=RESULTS / "memory.md")
    ap.add_argument("--label", default="", help="a note for the table (e.g. the commit)")
    args = ap.parse_args()
    junk_mb = [int(x) for x in args.junk_mb.split(",") if x.strip()]
    limit = max(junk_mb, default=0) + 100
    work = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=args.workdir))
    try:
        plain, junk = make_folders(args.data, args.n, junk_mb, work)
        rows = []
        for folder in (plain, junk):
            runs = [measure(folder, work / "ws", limit) for _ in range(args.repeat)]
            rows.append(max(runs, key=lambda r: r["peak_rss_mb"]))
            print(f"{folder.name}: peak {rows[-1]['peak_rss_mb']:,.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    when = time.strftime("%Y-%m-%d")
    note = (
        f"`python bench/bench_memory.py --n {args.n} --junk-mb {args.junk_mb}`, "
        f"LABELER_MAX_FILE_MB={limit}, {when}, {platform.machine()} {os.cpu_count()} cores"
        + (f", {args.label}" if args.label else "")
        + "."
    )
    out = table(rows, note)
    print(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"rows": rows, "junk_mb": junk_mb, "limit_mb": limit, "note": note}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        title = "# Peak memory of `labeler run --no-cluster` with huge junk files\n\n"
        args.md.write_text(title + out + "\n")


if __name__ == "__main__":
    main()
