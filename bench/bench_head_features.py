"""The Suggest step's features at full size: :func:`labeler.features.head_features` against
:func:`labeler.features.combine_blocks` (the grouping's) on 133,000 faces of random blocks
of the shipped widths (cues 225 + three EfficientNet-Lite0 blocks of 1280), in one process,
after each other. Both are computed once per state of the blocks and cached in the workspace
(``WS/cache/features-*.npy``), so this is what the first Suggest run after embedding pays.

    python bench/bench_head_features.py [--faces 133000] [--out bench/results/head_features_133k.md]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (225, 1280, 1280, 1280)
WEIGHTS = (0.25, 0.5, 0.5, 0.5)


def main() -> None:
    from labeler.features import combine_blocks, head_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=133_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "head_features_133k.md"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(args.faces, w)).astype(np.float32) for w in WIDTHS]
    lines = [
        f"# Features at {args.faces:,} faces (bench/bench_head_features.py; load average "
        f"{os.getloadavg()[0]:.1f} at the start, 2 cores)",
        "",
        "| features | columns | wall s | CPU s |",
        "|---|---|---|---|",
    ]
    for name, make in (
        ("combine_blocks (the grouping's)", lambda: combine_blocks(blocks, weights=WEIGHTS)),
        ("head_features (the Suggest step's)", lambda: head_features(blocks)),
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        X = make()
        lines.append(f"| {name} | {X.shape[1]} | {time.perf_counter() - t0:.1f} | "
                     f"{time.process_time() - c0:.1f} |")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", f"Peak RSS of the process (the blocks included): {peak:,.0f} MiB."]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
