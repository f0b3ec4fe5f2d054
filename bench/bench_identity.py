"""The identity descriptor of person grouping: dlib's own code vs the same network on
onnxruntime (:mod:`labeler.export.identity`), on real aligned crops.

Both compute dlib's ResNet descriptor of the same 150 px eye-region chips (made by
:func:`labeler.export.persons.identity_chips` from a workspace's aligned crops, as
``labeler export`` / ``train`` do); the bench reports CPU ms and wall ms a chip and a face
(a face is two chips: the chip and its mirror), at one thread and at the machine's cores, the
ratio, and how far apart the two engines' descriptors and pairwise distances are.

    .venv/bin/python bench/bench_identity.py --ws WORKSPACE [--n 256] [--out bench/results/identity_speed.md]

WORKSPACE: any workspace made by ``labeler run`` (its ``crops/``), e.g. one of realmasks.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_identity")


def timed(fn, *args) -> tuple[object, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ws", required=True, type=Path)
    ap.add_argument("--n", type=int, default=256, help="chips to describe (half of them mirrors)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import dlib

    from labeler.export import identity
    from labeler.export.persons import identity_chips
    from labeler.imageio import load_rgb
    from labeler.workspace import Workspace

    ws = Workspace.open(args.ws)
    ids = ws.faces()["face_id"].tolist()[: args.n // 2]
    crops = np.stack([load_rgb(ws.crop_path(f)) for f in ids])
    chips = identity_chips(crops)
    chips = np.concatenate([chips, chips[:, :, ::-1]])  # as persons does: chip + mirror
    n = len(chips)

    rows = []
    ref = dlib.face_recognition_model_v1(str(identity.model_path()))
    ref.compute_face_descriptor(list(chips[:4]))  # warm
    want, wall, cpu = timed(lambda: ref.compute_face_descriptor(list(chips)))
    want = np.asarray([np.asarray(v) for v in want], np.float32)  # type: ignore[union-attr]
    rows.append(("dlib compute_face_descriptor (dlib-bin wheel)", 1, wall, cpu))
    cores = os.cpu_count() or 1
    got = None
    identity._session.cache_clear()
    _, start, _ = timed(identity._session, 1)
    for workers in sorted({1, min(4, cores)}):
        identity.describe(chips[:32], workers=workers)  # warm
        got, wall, cpu = timed(lambda w=workers: identity.describe(chips, workers=w))
        rows.append(
            (
                f"onnxruntime (labeler.export.identity), {workers} worker(s) x 1 thread",
                workers,
                wall,
                cpu,
            )
        )
    rows[1] = (rows[1][0] + f", start {start:.1f} s", *rows[1][1:])
    if cores > 1:  # the alternative: one caller, onnxruntime's own threads
        two = identity._session(min(4, cores))
        x = chips.transpose(0, 3, 1, 2).astype(np.float32)
        two.run(None, {"chips": x[:16]})  # type: ignore[attr-defined]
        _, wall, cpu = timed(
            lambda: [two.run(None, {"chips": x[i : i + 16]}) for i in range(0, n, 16)]  # type: ignore[attr-defined]
        )
        rows.append((f"onnxruntime, 1 caller x {min(4, cores)} onnxruntime threads", 1, wall, cpu))
    assert got is not None
    diff = float(np.abs(got - want).max())  # type: ignore[operator]
    d_got = np.linalg.norm(got[:, None] - got[None], axis=2)  # type: ignore[index]
    d_want = np.linalg.norm(want[:, None] - want[None], axis=2)
    d_diff = float(np.abs(d_got - d_want).max())

    base_cpu = rows[0][3] / n
    lines = [
        f"# bench/bench_identity.py --n {args.n}: {n} real eye-region chips of {args.ws.name} "
        f"({n // 2} faces + mirrors), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load before {os.getloadavg()[0]:.2f}, {cores} cores",
        "",
        "| engine | workers | CPU ms/chip | wall ms/chip | CPU ms/face (2 chips) | CPU ratio vs dlib |",
        "|---|---|---|---|---|---|",
    ]
    for name, threads, wall, cpu in rows:
        lines.append(
            f"| {name} | {threads} | {1000 * cpu / n:.1f} | {1000 * wall / n:.1f} | "
            f"{2000 * cpu / n:.1f} | {base_cpu / (cpu / n):.1f}x |"
        )
    lines += [
        "",
        f"Largest difference between the two engines' descriptors: {diff:.2e} (descriptors "
        f"are ~0.1 a component); largest difference of a pairwise distance: {d_diff:.2e} "
        "(persons link at distance 0.50).",
        "",
        "At 133,000 faces (two chips each) on this machine's CPU time: dlib "
        f"{133_000 * 2 * rows[0][3] / n / 3600:.1f} CPU h; onnxruntime "
        f"{133_000 * 2 * rows[1][3] / n / 3600:.2f} CPU h.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
