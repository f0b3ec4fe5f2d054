"""Where the identity descriptor can decide: links between different people vs face size (#29).

Data: ``../shared/data/realmasks`` (2,009 real face crops of 15-600 px cut from 807 web
scenes; ``scene`` in labels.csv). Faces of different scenes are different people, so an
identity link between two scenes is a false link (within a scene there are near-copies and
also different people: those links are not judged). ``labeler run --no-cluster`` with the
default detector builds the workspace; every image's largest face is labeled from the truth
(correct -> ``correct``, incorrect -> ``nose_exposed``, no_mask -> ``no_mask``; source
``import``).

It measures, with the shipped thresholds (link < ``IDENTITY_THRESHOLD``, sure <
``SURE_THRESHOLD``, at most ``NEIGHBOURS`` links a face):

1. false (cross-scene) links by the face's size in its source photo (eye distance in source
   pixels, from the detector's landmarks), counting a link in the bin of its smaller face;
2. the same among the faces above each candidate floor (what the floor leaves);
3. by a quality cue above the floor: the detector score and the sharpness of the aligned
   crop's eye band (variance of its Laplacian);
4. ``identity_links`` and the default export (``labels_manifest``, 8:1:1, seeds 0-4) with
   no floor ("before") and with :data:`labeler.export.persons.MIN_IDENTITY_EYE_PX`
   ("after"): cross-scene links, links cut by the guard, faces touched, the class shares of
   each split, and the descriptor time (cold cache, measured on this machine).

Writes ``bench/results/persons_realmasks.json`` and ``.md``. Run::

    nice -n 5 python bench/bench_persons_realmasks.py --ws /tmp/bench_persons_realmasks
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "realmasks"
RESULTS = ROOT / "bench" / "results"
STATE_TO_LABEL = {"correct": "correct", "incorrect": "nose_exposed", "no_mask": "no_mask"}
EYE_BINS = [0, 8, 12, 16, 20, 24, 32, 48, 64, np.inf]
FLOORS = [0, 8, 10, 12, 16, 20, 24, 32, 48]
SEEDS = range(5)


def workspace(ws_dir: Path, data: Path) -> object:
    """The realmasks workspace (built once: ``labeler run --no-cluster``), largest face of
    every image labeled from the truth."""
    from labeler.labels import LabelStore
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_dir, create=True)
    if not (ws_dir / "faces.parquet").is_file():
        run_pipeline(data / "images", ws, config=RunConfig(cluster=None))
    faces = face_table(ws, data, sharpness=False)
    store = LabelStore(ws.labels_db)
    if store.current("mask_state").empty:
        lab = faces.sort_values("eye_px", ascending=False).drop_duplicates("image_id")
        for state, value in STATE_TO_LABEL.items():
            ids = lab.loc[lab["state"] == state, "face_id"].tolist()
            store.assign(ids, "mask_state", value, annotator="bench", source="import")
    return ws


def face_table(ws: object, data: Path, *, sharpness: bool = True) -> pd.DataFrame:
    """faces with file, scene, state, eye_px (eye distance in source pixels), box side,
    detector score, whole_image and (``sharpness``) the aligned crop's eye-band sharpness."""
    from labeler.export.persons import eye_distance_px

    faces = ws.require_faces().reset_index(drop=True)  # type: ignore[attr-defined]
    faces["file"] = [Path(p).name for p in ws.face_image_paths(faces)]  # type: ignore[attr-defined]
    truth = pd.read_csv(data / "labels.csv")[["file", "scene", "state"]]
    faces = faces.merge(truth, on="file", how="left", validate="many_to_one")
    faces["eye_px"] = eye_distance_px(faces)
    faces["side"] = np.maximum(faces.x1 - faces.x0, faces.y1 - faces.y0)
    if sharpness:
        import cv2

        from labeler.imageio import load_rgb

        sharp = []
        for f in faces["face_id"]:
            crop = load_rgb(ws.crop_path(f))  # type: ignore[attr-defined]
            s = crop.shape[0]
            band = cv2.cvtColor(crop[int(0.30 * s) : int(0.50 * s)], cv2.COLOR_RGB2GRAY)
            sharp.append(float(cv2.Laplacian(band, cv2.CV_64F).var()))
        faces["sharpness"] = sharp
    return faces


def link_table(faces: pd.DataFrame, e: np.ndarray, d: np.ndarray, sure: float) -> pd.DataFrame:
    """One row per link: its distance, sure or not, cross-scene or not, smaller face's size."""
    scene = faces["scene"].to_numpy(dtype=object)
    eye = faces["eye_px"].to_numpy()
    return pd.DataFrame(
        {
            "i": e[:, 0],
            "j": e[:, 1],
            "d": d,
            "sure": d < sure,
            "cross": scene[e[:, 0]] != scene[e[:, 1]],
            "eye_min": np.minimum(eye[e[:, 0]], eye[e[:, 1]]),
        }
    )


def by_size(faces: pd.DataFrame, links: pd.DataFrame) -> list[dict]:
    """Per eye-distance bin: faces, links (counted at the smaller face), cross-scene share,
    cross-scene links per face of the bin, share of the bin's faces with a cross-scene link."""
    rows = []
    fbin = pd.cut(faces["eye_px"], EYE_BINS, right=False)
    lbin = pd.cut(links["eye_min"], EYE_BINS, right=False)
    n = len(faces)
    cross_deg = np.bincount(links.loc[links.cross, ["i", "j"]].to_numpy().ravel(), minlength=n)
    sure_deg = np.bincount(
        links.loc[links.cross & links.sure, ["i", "j"]].to_numpy().ravel(), minlength=n
    )
    for b in fbin.cat.categories:
        fm = (fbin == b).to_numpy()
        lm = (lbin == b).to_numpy()
        sub = links[lm]
        rows.append(
            {
                "eye_px": f"{b.left:g}-{b.right:g}",
                "faces": int(fm.sum()),
                "links": int(len(sub)),
                "cross": int(sub.cross.sum()),
                "cross_share": round(float(sub.cross.mean()), 3) if len(sub) else None,
                "sure": int(sub.sure.sum()),
                "sure_cross": int((sub.sure & sub.cross).sum()),
                "cross_per_face": round(float(cross_deg[fm].mean()), 1) if fm.any() else None,
                "faces_with_cross": round(float((cross_deg[fm] > 0).mean()), 3)
                if fm.any()
                else None,
                "faces_with_sure_cross": round(float((sure_deg[fm] > 0).mean()), 3)
                if fm.any()
                else None,
            }
        )
    return rows


def pair_rates(faces: pd.DataFrame, D: np.ndarray, sure: float, threshold: float) -> list:
    """Per eye-distance bin, over the pairs of faces of different scenes inside the bin (no
    neighbour cap): the share closer than the link and the sure thresholds (the false-link
    rate per pair of different people), and the median distance. Whole-image stand-ins (no
    detection, template landmarks) form a row of their own and are left out of the bins."""
    X = np.asarray(D, dtype=np.float64)
    sq = (X**2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0))
    scene = faces["scene"].to_numpy(dtype=object)
    whole = faces["whole_image"].to_numpy(bool)
    fbin = pd.cut(faces["eye_px"], EYE_BINS, right=False)
    rows = []
    groups = [
        (f"{b.left:g}-{b.right:g}", ((fbin == b).to_numpy() & ~whole)) for b in fbin.cat.categories
    ]
    groups.append(("whole image (no detection)", whole))
    for name, m in groups:
        idx = np.flatnonzero(m)
        sub = dist[np.ix_(idx, idx)]
        cross = scene[idx][:, None] != scene[idx][None, :]
        v = sub[cross]
        rows.append(
            {
                "eye_px": name,
                "faces": len(idx),
                "pairs": int(len(v) // 2),
                "false_link_rate": round(float((v < threshold).mean()), 4) if len(v) else None,
                "false_sure_rate": round(float((v < sure).mean()), 4) if len(v) else None,
                "median_distance": round(float(np.median(v)), 3) if len(v) else None,
            }
        )
    return rows


def by_floor(faces: pd.DataFrame, D: np.ndarray, sure: float, threshold: float, k: int) -> list:
    """Links among the faces at or above each floor only (what a floor leaves)."""
    from labeler.export.persons import descriptor_edges

    rows = []
    for floor in FLOORS:
        keep = np.flatnonzero(faces["eye_px"].to_numpy() >= floor)
        sub = faces.iloc[keep].reset_index(drop=True)
        e, d = descriptor_edges(D[keep], threshold=threshold, k=k)
        lk = link_table(sub, e, d, sure)
        deg = np.bincount(lk.loc[lk.cross, ["i", "j"]].to_numpy().ravel(), minlength=len(sub))
        rows.append(
            {
                "floor_px": floor,
                "faces": len(sub),
                "links": len(lk),
                "cross": int(lk.cross.sum()),
                "cross_share": round(float(lk.cross.mean()), 3) if len(lk) else None,
                "sure": int(lk.sure.sum()),
                "sure_cross": int((lk.sure & lk.cross).sum()),
                "cross_per_face": round(float(deg.mean()), 2),
                "faces_with_cross": round(float((deg > 0).mean()), 3),
            }
        )
    return rows


def by_quality(faces: pd.DataFrame, links: pd.DataFrame, floor: float) -> list[dict]:
    """Above ``floor``: cross-scene links per face by quartile of the detector score and of
    the eye-band sharpness (links among faces above the floor only)."""
    keep = faces["eye_px"].to_numpy() >= floor
    lk = links[keep[links.i] & keep[links.j]]
    deg = np.bincount(lk.loc[lk.cross, ["i", "j"]].to_numpy().ravel(), minlength=len(faces))
    sure_deg = np.bincount(
        lk.loc[lk.cross & lk.sure, ["i", "j"]].to_numpy().ravel(), minlength=len(faces)
    )
    rows = []
    for cue in ("score", "sharpness"):
        sub = faces[keep]
        q = pd.qcut(sub[cue].rank(method="first"), 4, labels=["Q1", "Q2", "Q3", "Q4"])
        for name in ["Q1", "Q2", "Q3", "Q4"]:
            m = sub.index[(q == name).to_numpy()]
            rows.append(
                {
                    "cue": cue,
                    "quartile": name,
                    "range": f"{sub.loc[m, cue].min():.3g}-{sub.loc[m, cue].max():.3g}",
                    "faces": len(m),
                    "cross_per_face": round(float(deg[m].mean()), 2),
                    "faces_with_cross": round(float((deg[m] > 0).mean()), 3),
                    "faces_with_sure_cross": round(float((sure_deg[m] > 0).mean()), 3),
                }
            )
    # whole-image stand-ins (no detection: template landmarks) vs detected faces, same floor
    for name, m in (
        ("detected", keep & ~faces["whole_image"].to_numpy()),
        ("whole image (no detection)", keep & faces["whole_image"].to_numpy()),
    ):
        idx = np.flatnonzero(m)
        rows.append(
            {
                "cue": "detection",
                "quartile": name,
                "range": "",
                "faces": len(idx),
                "cross_per_face": round(float(deg[idx].mean()), 2) if len(idx) else None,
                "faces_with_cross": round(float((deg[idx] > 0).mean()), 3) if len(idx) else None,
                "faces_with_sure_cross": round(float((sure_deg[idx] > 0).mean()), 3)
                if len(idx)
                else None,
            }
        )
    return rows


def persons_run(ws: object, faces: pd.DataFrame, floor: float, *, cold: Path | None) -> dict:
    """``identity_links`` on the labeled faces (guard 10 %) and the default export (seeds
    0-4) with the identity floor ``floor``; ``cold``: time the descriptors from an empty
    cache in a copy of the workspace there."""
    from labeler.export import persons as P
    from labeler.export.manifest import ExportConfig, labels_manifest
    from labeler.labels import human_labels
    from labeler.workspace import Workspace

    saved = P.MIN_IDENTITY_EYE_PX
    P.MIN_IDENTITY_EYE_PX = floor
    try:
        out: dict = {"floor_px": floor}
        if cold is not None:
            if cold.exists():
                shutil.rmtree(cold)
            shutil.copytree(ws.root, cold, ignore=shutil.ignore_patterns("identity"))  # type: ignore[attr-defined]
            cws = Workspace.open(cold)
            t = time.perf_counter()
            P.find_persons(cws, method="identity")
            out["persons_cold_s"] = round(time.perf_counter() - t, 1)
            shutil.rmtree(cold)
        labels = human_labels(ws, "mask_state")
        sub = ws.require_faces().set_index("face_id").loc[labels["face_id"]].reset_index()  # type: ignore[attr-defined]
        rep, _ = P.identity_links(ws, sub, max_share=P.DEFAULT_MAX_SHARE)
        conf = rep.as_dict(P.DEFAULT_MAX_SHARE)
        scene = sub.merge(faces[["face_id", "scene"]], on="face_id", how="left")["scene"]
        groups = pd.Series(rep.groups)
        out["labeled_faces"] = len(sub)
        out["confidence"] = conf
        out["persons"] = int(groups.nunique())
        # scenes whose faces ended up in more than one group (a scene is split only if the
        # same-image/copy/identity links missed; faces of one scene may be several people)
        out["groups_with_2plus_scenes"] = int((scene.groupby(groups).nunique() > 1).sum())
        shares, sizes = [], []
        for seed in SEEDS:
            df, persons = labels_manifest(ws, ExportConfig(seed=seed))
            tab = pd.crosstab(df["split"], df["mask_state"], normalize="index")
            shares.append(tab)
            sizes.append(df["split"].value_counts(normalize=True))
        overall = df["mask_state"].value_counts(normalize=True)
        mean_share = sum(shares) / len(shares)
        worst = max(float((s - overall).abs().max().max()) for s in shares)
        out["class_share_overall"] = overall.round(3).to_dict()
        out["class_share_by_split_mean"] = mean_share.round(3).to_dict(orient="index")
        out["class_share_worst_abs_diff"] = round(worst, 3)
        out["split_share_mean"] = (sum(sizes) / len(sizes)).round(3).to_dict()
        out["sureness"] = persons.sureness()
        out["summary"] = persons.summary()
        return out
    finally:
        P.MIN_IDENTITY_EYE_PX = saved


def md_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    from labeler.export import persons as P

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ws", type=Path, default=Path("/tmp/bench_persons_realmasks"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache timings")
    ap.add_argument("--also", type=float, nargs="*", default=[16.0],
                    help="other floors to run the persons and the export with")  # fmt: skip
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    ws = workspace(args.ws, args.data)
    faces = face_table(ws, args.data)
    first = args.ws / "bench_first_descriptors.json"  # the cold run of every face ("before")
    cold_all = not (args.ws / "identity").is_dir()
    t = time.perf_counter()
    D = P.cached_identity_descriptors(ws, faces["face_id"].tolist(), progress=True)
    if cold_all:
        first.write_text(json.dumps({"faces": len(faces), "seconds": time.perf_counter() - t}))
    e, d = P.descriptor_edges(D, threshold=P.IDENTITY_THRESHOLD, k=P.NEIGHBOURS)
    links = link_table(faces, e, d, P.SURE_THRESHOLD)
    floor = P.MIN_IDENTITY_EYE_PX
    res: dict = {
        "data": str(args.data),
        "faces": len(faces),
        "scenes": int(faces["scene"].nunique()),
        "thresholds": {"link": P.IDENTITY_THRESHOLD, "sure": P.SURE_THRESHOLD, "k": P.NEIGHBOURS},
        "floor_px": floor,
        "descriptors_every_face_cold": json.loads(first.read_text()) if first.is_file() else None,
        "by_size": by_size(faces, links),
        "pair_rates": pair_rates(faces, D, P.SURE_THRESHOLD, P.IDENTITY_THRESHOLD),
        "by_floor": by_floor(faces, D, P.SURE_THRESHOLD, P.IDENTITY_THRESHOLD, P.NEIGHBOURS),
        "by_quality_above_floor": by_quality(faces, links, floor),
    }
    cold = None if args.no_cold else args.ws.parent / (args.ws.name + "_cold")
    res["before"] = persons_run(ws, faces, 0.0, cold=None)  # cold: every face, as above
    res["after"] = persons_run(ws, faces, floor, cold=cold)
    for alt in args.also:
        res[f"floor {alt:g}"] = persons_run(ws, faces, alt, cold=None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "persons_realmasks.json").write_text(json.dumps(res, indent=1, default=str))
    text = [
        f"# Identity links vs face size on realmasks ({len(faces)} faces, "
        f"{res['scenes']} scenes; link < {P.IDENTITY_THRESHOLD}, sure < {P.SURE_THRESHOLD})",
        "",
        "## Links by the smaller face's eye distance (source pixels), all faces described",
        "",
        md_table(res["by_size"]),
        "",
        "## False-link rate per pair of faces of different scenes, both in the bin",
        "",
        md_table(res["pair_rates"]),
        "",
        "## Links among the faces at or above a floor",
        "",
        md_table(res["by_floor"]),
        "",
        f"## Quality cues among the faces at or above {floor:g} px",
        "",
        md_table(res["by_quality_above_floor"]),
        "",
        "## Before (no floor) / after (floor) on the labeled faces, guard 10 %",
        "",
    ]
    for k in ("before", "after", *[f"floor {a:g}" for a in args.also]):
        r = res[k]
        c = r["confidence"]
        text += [
            f"### {k}: floor {r['floor_px']:g} px",
            "",
            f"- links: {c['links']}",
            f"- cut links {c['cut_links']}, faces touched {c['cut_faces']}, weak faces "
            f"{c['weak_faces']}, largest {c['largest']} ({c['largest_share']:.1%}), persons "
            f"{r['persons']}",
            f"- persons, cold cache (descriptors included): {r.get('persons_cold_s', '-')} s "
            f"(before: descriptors of every face {res['descriptors_every_face_cold']})",
            f"- class shares overall {r['class_share_overall']}; by split (mean of seeds 0-4) "
            f"{r['class_share_by_split_mean']}; worst |split - overall| "
            f"{r['class_share_worst_abs_diff']}; split sizes {r['split_share_mean']}",
            f"- {r['summary']}",
            f"- how sure: {r['sureness']}",
            "",
        ]
    (RESULTS / "persons_realmasks.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
