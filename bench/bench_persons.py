"""Person grouping for leak-free splits, measured on real masked and unmasked faces.

Data: ``../shared/data/mfr2`` (163 aligned photos of 32 people, masked and unmasked;
``person`` = truth), and its copy-augmented form (every photo also mirrored and cropped by
5 % per side: 489 photos). File names are hashed first, so no grouping can read the person
from a name (the default must work on meaningless names). Every image's largest face is
labeled masked -> ``correct``, else ``no_mask``.

For each candidate (cues and thresholds of :func:`labeler.export.persons.identity_links`, the old
average linkage, source images only) it prints pairwise precision / recall against the true
people, the largest group's share of the faces, and, over 8:1:1 splits (seeds 0-4, the
export's :func:`labeler.export.splits.assign_splits`): the share of (masked, unmasked) face pairs
of one person in one split, copies of one photo in two splits, true people in two splits,
and whether every split got faces. Then the default export itself (``labels_manifest``).

Run::

    nice -n 5 python bench/bench_persons.py --ws /tmp/bench_persons
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mfr2"
SEEDS = range(5)


def hashed_photos(src: Path, out: Path, *, copies: bool) -> pd.DataFrame:
    """Each photo of ``src/images`` (and with ``copies`` its mirror and 5 % crop) written to
    ``out`` under a hashed name; returns ``file, photo, kind, person, state``."""
    truth = pd.read_csv(src / "labels.csv")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in truth.itertuples(index=False):
        img = Image.open(src / "images" / r.file).convert("RGB")
        w, h = img.size
        dx, dy = round(0.05 * w), round(0.05 * h)
        stem = Path(r.file).stem
        kinds = [("orig", img)]
        if copies:
            kinds += [
                ("mirror", ImageOps.mirror(img)),
                ("crop", img.crop((dx, dy, w - dx, h - dy))),
            ]
        for kind, im in kinds:
            name = hashlib.sha1(f"{stem}/{kind}".encode()).hexdigest()[:16] + ".png"
            im.save(out / name)
            rows.append({"file": name, "photo": stem, "kind": kind, "person": r.person,
                         "state": r.state})  # fmt: skip
    return pd.DataFrame(rows)


def labeled_workspace(
    ws_dir: Path, images: Path, truth: pd.DataFrame
) -> tuple[object, pd.DataFrame]:
    """``labeler run --no-cluster`` on ``images``; every image's largest face labeled from
    the truth; returns the workspace and the labeled faces (faces order) with their truth."""
    from labeler.labels import LabelStore
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_dir, create=True)
    run_pipeline(images, ws, config=RunConfig(cluster=None))
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


def pairwise(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall of a grouping against true persons."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    iu = np.triu_indices(len(pred), 1)
    same_p = (pred[:, None] == pred[None, :])[iu]
    same_t = (truth[:, None] == truth[None, :])[iu]
    tp = (same_p & same_t).sum()
    return float(tp / max(same_p.sum(), 1)), float(tp / max(same_t.sum(), 1))


def split_metrics(groups: np.ndarray, faces: pd.DataFrame, ratios=(0.8, 0.1, 0.1)) -> dict:
    """Over seeds 0-4 of the export's splitter: mixed pairs in one split (mean, min), most
    copies split, mean true people in 2+ splits, fewest non-empty splits."""
    from labeler.export.splits import assign_splits

    person = faces["person"].to_numpy()
    masked = (faces["state"] == "masked").to_numpy()
    mixed = (person[:, None] == person[None, :]) & (masked[:, None] != masked[None, :])
    together, copies, leaks, nonempty = [], [], [], []
    for seed in SEEDS:
        split = assign_splits(faces["state"].to_numpy(), groups, ratios=ratios, seed=seed)
        together.append(float((split[:, None] == split[None, :])[mixed].mean()))
        s = pd.Series(split)
        copies.append(int((s.groupby(faces["photo"].to_numpy()).nunique() > 1).sum()))
        leaks.append(int((s.groupby(person).nunique() > 1).sum()))
        nonempty.append(len(set(split)))
    return {"together": np.mean(together), "together_min": np.min(together),
            "copies_split": max(copies), "people_split": np.mean(leaks),
            "splits": min(nonempty)}  # fmt: skip


def candidates(ws: object, faces: pd.DataFrame) -> list[tuple[str, np.ndarray, dict]]:
    """(name, groups, confidence) per candidate grouping of the labeled ``faces``."""
    from labeler.export import persons as P

    sub = ws.require_faces().set_index("face_id").loc[faces["face_id"]].reset_index()
    out = [("source images only", P.find_persons(ws, sub, method="image").ids, {})]
    X = P.cached_identity_descriptors(ws, faces["face_id"].tolist())
    for t in (0.45, 0.50):
        g = P.combine_groups(
            sub["image_id"].astype(str), P.persons_from_descriptors(X, threshold=t)
        )
        out.append((f"average linkage {t:.2f} (the #12 structure)", g, {}))
    for share in (0.10, 0.08):
        for t in (0.40, 0.45, 0.50, 0.55):
            rep, _ = P.identity_links(ws, sub, threshold=t, max_share=share)
            mark = (
                " **default**" if (t, share) == (P.IDENTITY_THRESHOLD, P.DEFAULT_MAX_SHARE) else ""
            )
            out.append(
                (f"links < {t:.2f}, guard {share:.0%}{mark}", rep.groups, rep.as_dict(share))
            )
    return out


def report(name: str, ws: object, faces: pd.DataFrame) -> None:
    person = faces["person"].to_numpy()
    print(f"\n### {name}: {len(faces)} labeled faces of {len(set(person))} people\n")
    print("| candidate | groups | pairwise P | pairwise R | largest group | weak faces | cut links "
          "| mixed pairs in one split (mean / min) | copies split | people in 2+ splits | splits |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cand, groups, conf in candidates(ws, faces):
        p, r = pairwise(groups, person)
        big = np.bincount(pd.factorize(pd.Series(groups).astype(str))[0]).max() / len(groups)
        m = split_metrics(np.asarray(groups).astype(str), faces)
        print(f"| {cand} | {len(set(np.asarray(groups).tolist()))} | {p:.3f} | {r:.3f} | {big:.1%} "
              f"| {conf.get('weak_faces', '-')} | {conf.get('cut_links', '-')} "
              f"| {m['together']:.3f} / {m['together_min']:.3f} | {m['copies_split']} "
              f"| {m['people_split']:.1f} | {m['splits']} |")  # fmt: skip


def default_export(ws: object, faces: pd.DataFrame) -> None:
    """The default export (``labels_manifest``) itself, seeds 0-4."""
    from labeler.export.manifest import ExportConfig, labels_manifest

    together, copies, leaks, big = [], [], [], []
    person = faces["person"].to_numpy()
    masked = (faces["state"] == "masked").to_numpy()
    mixed = (person[:, None] == person[None, :]) & (masked[:, None] != masked[None, :])
    for seed in SEEDS:
        df, persons = labels_manifest(ws, ExportConfig(seed=seed))
        df = df.set_index("face_id").loc[faces["face_id"]]
        split = df["split"].to_numpy()
        together.append((split[:, None] == split[None, :])[mixed].mean())
        copies.append(int((df.groupby(faces["photo"].to_numpy())["split"].nunique() > 1).sum()))
        leaks.append(int((df.groupby(person)["split"].nunique() > 1).sum()))
        big.append(persons.confidence.get("largest_share", np.nan))
        assert set(split) == {"train", "val", "test"}
    print(f"\ndefault export (labels_manifest, 8:1:1, seeds 0-4): mixed pairs in one split "
          f"{np.mean(together):.3f} (min {np.min(together):.3f}), copies split {max(copies)}, "
          f"true people in 2+ splits {np.mean(leaks):.1f} (max {max(leaks)}), largest person "
          f"{max(big):.1%} of the faces, every split non-empty")  # fmt: skip
    print(f"persons: {persons.summary()}\n  {persons.sureness()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ws", type=Path, default=Path("/tmp/bench_persons"))
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.ws.exists():
        shutil.rmtree(args.ws)
    for name, copies in (("MFR2", False), ("MFR2 with copies (mirror + 5 % crop)", True)):
        t0 = time.time()
        key = "copies" if copies else "mfr2"
        truth = hashed_photos(args.data, args.ws / key / "images", copies=copies)
        ws, faces = labeled_workspace(args.ws / key / "ws", args.ws / key / "images", truth)
        report(name, ws, faces)
        if copies:
            default_export(ws, faces)
        print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
