"""Person grouping on real faces: does a person stay in one split?

1. MFR2 (``../shared/data/mfr2``: 163 photos of 32 people, masked and unmasked; ``person``
   column = truth): pairwise precision / recall of the default person grouping at several
   thresholds, the share of (masked, unmasked) photo pairs of one person that share a
   person id, and that land in one split of a default 8:1:1 export (seeds 0-4).
2. The copies construction of issue #12: every MFR2 photo also as a mirrored copy and a 5 %
   crop, labeled masked / unmasked (as ``correct`` / ``no_mask``); ``labeler export`` and
   ``labeler train`` with defaults; people (truth) found in more than one split, and the
   macro-F1 ``labeler train`` reports.

Run::

    nice -n 5 python bench/bench_persons.py --ws /tmp/bench_persons
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mfr2"


def copies_construction(src: Path, out: Path) -> pd.DataFrame:
    """Each photo of ``src/images`` as itself, mirrored and cropped by 5 % per side; returns
    ``file, person, state`` of every written file."""
    truth = pd.read_csv(src / "labels.csv")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in truth.itertuples(index=False):
        img = Image.open(src / "images" / r.file).convert("RGB")
        w, h = img.size
        dx, dy = round(0.05 * w), round(0.05 * h)
        stem = Path(r.file).stem
        for name, im in (
            (f"{stem}.png", img),
            (f"{stem}_mirror.png", ImageOps.mirror(img)),
            (f"{stem}_crop.png", img.crop((dx, dy, w - dx, h - dy))),
        ):
            im.save(out / name)
            rows.append({"file": name, "person": r.person, "state": r.state})
    return pd.DataFrame(rows)


def pairwise(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall of a grouping against true persons."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    iu = np.triu_indices(len(pred), 1)
    same_p = (pred[:, None] == pred[None, :])[iu]
    same_t = (truth[:, None] == truth[None, :])[iu]
    tp = (same_p & same_t).sum()
    return float(tp / max(same_p.sum(), 1)), float(tp / max(same_t.sum(), 1))


def workspace_of(
    ws_dir: Path, images: Path, truth: pd.DataFrame, *, full: bool = False
) -> tuple[object, pd.DataFrame]:
    """Ingest and detect ``images`` (CLI, like a user; ``full``: the whole ``labeler run``), label every image's largest face
    with ``correct`` (masked) or ``no_mask``; returns the workspace and the labeled faces
    with their true person."""
    from click.testing import CliRunner

    from labeler.cli import cli
    from labeler.labels import LabelStore
    from labeler.workspace import Workspace

    runner = CliRunner()
    steps = (
        [["run", str(images), "-w", str(ws_dir)]]
        if full
        else [["ingest", str(images), "-w", str(ws_dir)], ["detect", "-w", str(ws_dir)]]
    )
    for args in steps:
        res = runner.invoke(cli, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
    ws = Workspace.open(ws_dir)
    faces = ws.require_faces()
    faces["file"] = [Path(p).name for p in ws.face_image_paths(faces)]
    faces["area"] = (faces.x1 - faces.x0) * (faces.y1 - faces.y0)
    faces = faces.sort_values("area", ascending=False).drop_duplicates("image_id")
    faces = faces.merge(truth, on="file", how="inner").sort_values("face_id")
    store = LabelStore(ws.labels_db)
    for state, value in (("masked", "correct"), ("no_mask", "no_mask")):
        ids = faces.loc[faces["state"] == state, "face_id"].tolist()
        store.assign(ids, "mask_state", value, annotator="bench", source="import")
    return ws, faces.reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ws", type=Path, default=Path("/tmp/bench_persons"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from labeler.export import ExportConfig, labels_manifest
    from labeler.persons import IDENTITY_THRESHOLD, cached_identity_descriptors, find_persons
    from labeler.persons import persons_from_descriptors as group

    if args.ws.exists():
        shutil.rmtree(args.ws)
    truth = pd.read_csv(args.data / "labels.csv")

    # 1. MFR2 itself
    t0 = time.time()
    ws, faces = workspace_of(args.ws / "mfr2", args.data / "images", truth)
    X = cached_identity_descriptors(ws, faces["face_id"].tolist())
    t_desc = time.time() - t0
    person = faces["person"].to_numpy()
    masked = (faces["state"] == "masked").to_numpy()
    mixed = (person[:, None] == person[None, :]) & (masked[:, None] & ~masked[None, :])
    print(f"\nMFR2: {len(faces)} faces of {len(set(person))} people")
    print(
        "| threshold | persons found | pairwise precision | pairwise recall | masked+unmasked pairs joined |"
    )
    print("|---|---|---|---|---|")
    for t in (0.40, 0.45, IDENTITY_THRESHOLD, 0.55, 0.60):
        pred = group(X, threshold=t)
        p, r = pairwise(pred, person)
        joined = (pred[:, None] == pred[None, :])[mixed].mean()
        mark = " (default)" if t == IDENTITY_THRESHOLD else ""
        print(f"| {t:.2f}{mark} | {len(set(pred))} | {p:.3f} | {r:.3f} | {joined:.3f} |")
    same_split = []
    for seed in range(5):
        df, _ = labels_manifest(ws, ExportConfig(seed=seed))
        split = df.set_index("face_id").loc[faces["face_id"], "split"].to_numpy()
        same_split.append((split[:, None] == split[None, :])[mixed].mean())
    print(
        f"masked and unmasked photo of one person in the same split (default export, 8:1:1, "
        f"seeds 0-4): {np.mean(same_split):.3f} (min {np.min(same_split):.3f})"
    )
    print(f"(ingest + detect + descriptors: {t_desc:.1f} s)")

    # 2. the copies construction
    images = args.ws / "copies_images"
    ctruth = copies_construction(args.data, images)
    ws2, faces2 = workspace_of(args.ws / "copies", images, ctruth, full=not args.skip_train)
    print(
        f"\ncopies construction: {len(faces2)} labeled faces of {faces2['person'].nunique()} people"
    )
    print("| persons | persons found | true people in 2+ splits |")
    print("|---|---|---|")
    for method in ("image", "auto"):
        found = find_persons(ws2, method=method)
        try:
            df, _ = labels_manifest(ws2, ExportConfig(persons=method))
        except ValueError as exc:
            print(f"| {method} | {found.n_persons} | refused: {exc} |")
            continue
        df = df.merge(faces2[["face_id", "person"]].rename(columns={"person": "truth"}))
        n_leak = int((df.groupby("truth")["split"].nunique() > 1).sum())
        print(
            f"| {method} ({found.method}) | {found.n_persons} | {n_leak} of {df['truth'].nunique()} |"
        )
    if not args.skip_train:
        from labeler.train import TrainConfig, train

        true_csv = args.ws / "true_persons.csv"
        faces2[["face_id", "person"]].to_csv(true_csv, index=False)
        print("\n| labeler train --persons | out-of-fold macro-F1 it reports |")
        print("|---|---|")
        for method, csv in (("image", None), ("auto", None), ("column (true persons)", true_csv)):
            cfg = TrainConfig(persons=method.split()[0], person_csv=str(csv) if csv else None)
            res = train(ws2, cfg)
            print(f"| {method} | {res.report.macro_f1:.3f} |")


if __name__ == "__main__":
    main()
