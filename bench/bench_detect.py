"""Decode and detect speed: labeler's reduced-decode path vs the naive full-resolution one.

    .venv/bin/python bench/bench_detect.py [--n 100] [--workers 1 2]

Prints ms per image for: decoding a 1024 JPEG (full vs DCT-scaled), BlazeFace passes,
detect+align per image (fast path vs naive: full decode, detect and warp at full size), and
the whole ``detect_workspace`` step (workers 1 vs 2). Uses ../shared/data when present.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _files(name: str, n: int) -> list[Path]:
    folder = SHARED / name / "images"
    if not folder.is_dir():
        sys.exit(f"{folder} not found: this benchmark needs the shared face data")
    return sorted(folder.iterdir())[:n]


def _ms(fn, items, repeats: int = 3) -> float:
    """Best of ``repeats`` passes (the machine is shared: the minimum is the least noisy)."""
    fn(items[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(items)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    import cv2
    from PIL import Image

    from labeler.detect import get_detector
    from labeler.detect.pipeline import detect_and_align, detect_workspace
    from labeler.faces.align import align_face
    from labeler.imageio import decode_image
    from labeler.ingest import ingest_folder
    from labeler.workspace import Workspace

    cv2.setNumThreads(1)
    rows: list[tuple[str, str, float]] = []
    big = _files("maskedfacenet_1024", args.n)
    blobs = [p.read_bytes() for p in big]
    rows.append(("decode 1024 JPEG", "PIL full", _ms(lambda b: decode_image(b), blobs)))
    rows.append(
        (
            "decode 1024 JPEG",
            "cv2.imdecode full",
            _ms(lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), blobs),
        )
    )
    rows.append(
        (
            "decode 1024 JPEG",
            "draft 1/2 (min_side=512)",
            _ms(lambda b: decode_image(b, min_side=512), blobs),
        )
    )
    rows.append(
        (
            "decode 1024 JPEG",
            "draft 1/4 (min_side=256)",
            _ms(lambda b: decode_image(b, min_side=256), blobs),
        )
    )
    rows.append(
        (
            "decode 1024 JPEG",
            "full + resize to 512 (naive)",
            _ms(
                lambda b: Image.open(__import__("io").BytesIO(b)).convert("RGB").resize((512, 512)),
                blobs,
            ),
        )
    )

    det = get_detector("mediapipe")
    imgs512 = [decode_image(b, min_side=512).rgb for b in blobs]
    for model in ("short", "full", "auto"):
        d = get_detector("mediapipe", model=model)
        rows.append(("BlazeFace on 512 px", model, _ms(d.detect, imgs512)))
    rows.append(
        ("BlazeFace on 1024 px", "auto", _ms(det.detect, [decode_image(b).rgb for b in blobs[:20]]))
    )

    def naive(path: Path) -> None:
        rgb = decode_image(path).rgb
        for x in det.detect(rgb):
            align_face(rgb, x.landmarks)

    for name in ("maskedfacenet_1024", "maskedfacenet", "webfaces"):
        files = _files(name, args.n)
        rows.append(
            (
                f"detect+align, {name}",
                "labeler (reduced decode)",
                _ms(lambda p: detect_and_align(p, det), files),
            )
        )
        rows.append((f"detect+align, {name}", "naive full decode", _ms(naive, files)))

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "imgs"
        src.mkdir()
        for p in big:
            shutil.copy(p, src / p.name)
        for w in args.workers:
            ws = Workspace.open(Path(tmp) / f"ws{w}", create=True)
            ingest_folder(ws, src)
            t = time.perf_counter()
            res = detect_workspace(ws, workers=w, chunk_size=50)
            ms = 1000 * (time.perf_counter() - t) / max(res.processed, 1)
            rows.append(("detect_workspace, 1024 JPEG", f"workers={w} (wall)", ms))

    width = max(len(a) for a, _, _ in rows) + 2
    print(f"{'what':<{width}}{'variant':<32}{'ms/img':>8}")
    for what, variant, ms in rows:
        print(f"{what:<{width}}{variant:<32}{ms:8.2f}")


if __name__ == "__main__":
    main()
