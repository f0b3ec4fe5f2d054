"""Sideways photos: how often the rotation retry finds the face upright, and what it costs.

For each image of a shared set, the photo as stored and copies turned 90/180/270 degrees
clockwise (numpy, no EXIF) go through ``detect_and_align`` with the default MediaPipe
detector. The stored photo is timed with and without the rotation check (``rotate``). A
turned copy counts as *found upright* when its largest face's landmarks, mapped
back to the stored photo, lie within a quarter of an eye distance of the stored photo's own
detection and the aligned crops agree (correlation >= 0.8). The cost is the detector calls
beyond the first per stored photo (the retry runs only when no convincing face is found).

    python bench/bench_rotation.py --sets maskedfacenet webfaces mfr2 realmasks --limit 200

Prints one table row per set.

``--predict``: the label check instead. Per set, ``labeler run --no-cluster`` on ``--train``
photos and on ``--limit`` others, a head model (default features) trained on the first ones'
labels, then ``labeler predict`` on the others as stored and turned 90/180/270 degrees
(lossless PNG): the share of the faces ``run`` found as stored whose label is the same in
the turned copy (``tests/test_rotation_predict.py`` does the same on a small sample).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class CountingDetector:
    """Delegates to a detector and counts its whole-frame ``detect`` calls."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[attr-defined]
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> list:
        self.calls += 1
        return self.inner.detect(rgb)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def largest(pairs: list) -> tuple | None:
    pairs = [p for p in pairs if not p[0].whole_image]
    return max(pairs, key=lambda p: p[0].width * p[0].height) if pairs else None


def upright_match(ref: tuple, got: tuple, turn: int, width: int, height: int) -> bool:
    from labeler.detect import unrotate_points

    d_ref, crop_ref = ref
    d_got, crop_got = got
    lm = unrotate_points(d_got.landmarks, turn, width, height)
    err = np.linalg.norm(lm - d_ref.landmarks, axis=1).mean() / max(d_ref.eye_distance, 1e-3)
    a = crop_ref.astype(np.float32).ravel()
    b = crop_got.astype(np.float32).ravel()
    corr = float(np.corrcoef(a, b)[0, 1])
    return bool(err < 0.25 and corr >= 0.8)


def run_set(name: str, limit: int) -> dict[str, object]:
    from PIL import Image

    from labeler.detect import get_detector, rotate_image
    from labeler.detect.pipeline import detect_and_align

    det = CountingDetector(get_detector("mediapipe"))
    files = pd.read_csv(SHARED / name / "labels.csv")["file"].tolist()[:limit]
    n = extra = retried = turned_stored = no_face = 0
    found = {90: 0, 180: 0, 270: 0}
    stored_s = plain_s = 0.0
    t0 = time.perf_counter()
    for f in files:
        rgb = np.asarray(Image.open(SHARED / name / "images" / f).convert("RGB"))
        h, w = rgb.shape[:2]
        t = time.perf_counter()
        detect_and_align(rgb, det, rotate=False)
        plain_s += time.perf_counter() - t
        det.calls = 0
        t = time.perf_counter()
        ref = largest(detect_and_align(rgb, det))
        stored_s += time.perf_counter() - t
        extra += det.calls - 1
        retried += det.calls > 1
        n += 1
        if ref is None:
            no_face += 1
            continue
        turned_stored += ref[0].rotation != 0
        for turn in found:
            got = largest(detect_and_align(rotate_image(rgb, turn), det))
            found[turn] += got is not None and upright_match(ref, got, turn, w, h)
    with_face = n - no_face
    return {
        "set": name,
        "photos": n,
        "extra calls / photo (as stored)": round(extra / max(n, 1), 3),
        "ms / photo as stored (no rotate)": f"{1000 * stored_s / max(n, 1):.1f} "
        f"({1000 * plain_s / max(n, 1):.1f})",
        "photos retried": retried,
        "stored photo turned": turned_stored,
        "no face as stored": no_face,
        **{f"upright at {t}": f"{found[t]}/{with_face}" for t in found},
        "s": round(time.perf_counter() - t0, 1),
    }


def predict_set(name: str, limit: int, train: int) -> dict[str, object]:
    """The ``--predict`` row of one set (see the module docstring)."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_rotation_predict import TURNS, rotation_agreement

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labeler-rot-") as tmp:
        got = rotation_agreement(name, Path(tmp), n_train=train, n_eval=limit)
    n = max(int(got["faces"]), 1)
    return {
        "set": name,
        "photos": limit,
        "faces found by run": got["faces"],
        "found by predict as stored": got["found_upright_by_predict"],
        **{
            f"same label at {t}": f"{got[f'same_at_{t}']} ({100 * got[f'same_at_{t}'] / n:.1f} %)"
            for t in TURNS
        },
        "s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["maskedfacenet", "webfaces", "mfr2"])
    ap.add_argument("--limit", type=int, default=200, help="photos per set")
    ap.add_argument("--predict", action="store_true", help="the label check (see above)")
    ap.add_argument("--train", type=int, default=150, help="training photos with --predict")
    args = ap.parse_args()
    if args.predict:
        rows = []
        for s in args.sets:
            if (SHARED / s).exists():
                rows.append(predict_set(s, args.limit, args.train))
                print(rows[-1], flush=True)
    else:
        rows = [run_set(s, args.limit) for s in args.sets if (SHARED / s).exists()]
    table = pd.DataFrame(rows).astype(str)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
