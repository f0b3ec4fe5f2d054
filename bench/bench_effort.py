"""Labeling effort of every feature variant x grouping x session, on the shared face sets.

For maskedfacenet (4 mask states) and webfaces (masked / no_mask) it takes a workspace built
by ``labeler run`` (``--mfn-ws`` / ``--web-ws``; copied to ``--scratch`` first, never
written in place; built there with ``labeler run`` when no workspace is given), adds what
the variants need (mask cues, nose and mouth_chin CNN embeddings), then for each feature
variant measures:

- the grouping: k-means with k=8 and the default ``labeler cluster`` run (HDBSCAN on UMAP);
- the *plain* session (bulk-label groups biggest first, then correct faces) and the
  *interactive* session (:func:`labeler.loop.simulate.simulate`, defaults) on each grouping;
- the out-of-fold accuracy of the Suggest step's head with all true labels (what the
  features allow).

Prints a table and writes it to ``bench/EFFORT.md`` (``--out``) between the markers.

    python bench/bench_effort.py                     # both sets, all variants (~10 min on 2 cores)
    python bench/bench_effort.py --sets mfn --quick  # fewer variants
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SETS = {
    "mfn": ("maskedfacenet", "/tmp/ws_mfn"),
    "web": ("webfaces", "/tmp/ws_web"),
}
BB = "efficientnet_lite0"
VARIANTS = {
    "CNN face (global)": f"{BB}__face",
    "CNN lower face": f"{BB}__lower",
    "CNN nose band": f"{BB}__nose",
    "CNN mouth+chin": f"{BB}__mouth_chin",
    "CNN nose + mouth+chin": f"{BB}__nose+{BB}__mouth_chin",
    "cues": "cues__face",
    "cues (grayscale crops)": "GRAY",
    "cues + CNN lower*0.5": f"cues__face+{BB}__lower*0.5",
    "auto: cues*0.25 + nose*0.5 + mouth_chin*0.5": "auto",
}
QUICK = ("CNN face (global)", "cues", "auto: cues*0.25 + nose*0.5 + mouth_chin*0.5")
MARK_BEGIN, MARK_END = "<!-- bench_effort:begin -->", "<!-- bench_effort:end -->"


def prepare(name: str, ws_path: str | None, scratch: Path) -> object:
    from labeler.embeddings.backbones import get_backbone
    from labeler.embeddings.embed import cues_workspace, embed_faces
    from labeler.embeddings.store import list_embeddings
    from labeler.workspace import Workspace

    folder, default_ws = SETS[name]
    dst = scratch / name
    if not (dst / "workspace.json").exists():
        src = Path(ws_path or default_ws)
        if (src / "workspace.json").exists():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("labels.db*", "clusters"))
        else:
            from labeler.pipeline import RunConfig, run_pipeline

            ws = Workspace.open(dst, create=True)
            run_pipeline(SHARED / folder / "images", ws, config=RunConfig(cluster=False))
    ws = Workspace.open(dst)
    cues_workspace(ws)
    stored = list_embeddings(ws)
    backbone = None
    for region in ("face", "lower", "nose", "mouth_chin"):
        if f"{BB}__{region}" not in stored:
            backbone = backbone or get_backbone("timm:efficientnet_lite0", device="cpu")
            embed_faces(ws, backbone, region=region, workers=1)
    return ws


def gray_cues(ws: object, face_ids: np.ndarray) -> np.ndarray:
    from labeler.faces.cues import compute_cues, read_crops

    crops = read_crops(ws, list(face_ids))
    g = (crops.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    return compute_cues(np.repeat(g[..., None], 3, axis=-1))


def probe_accuracy(X: np.ndarray, y: np.ndarray) -> float:
    """Out-of-fold accuracy of the Suggest step's ridge head with every true label entered
    (5 folds): what a linear head on these features allows."""
    from labeler.loop.suggest import suggest

    _, yc = np.unique(y, return_inverse=True)
    return float((suggest(X, yc).pred == yc).mean())


def run_set(name: str, ws: object, variants: dict[str, str]) -> list[dict]:
    from sklearn.cluster import KMeans

    from labeler.cluster.run import fit_clusters
    from labeler.features import combine_blocks, load_features
    from labeler.loop.simulate import simulate
    from labeler.loop.truth import join_truth

    folder, _ = SETS[name]
    truth = join_truth(ws, str(SHARED / folder / "labels.csv"))
    ids = truth["face_id"].to_numpy(dtype=str)
    y = truth["truth"].to_numpy(dtype=str)
    rows = []
    for label, spec in variants.items():
        t0 = time.perf_counter()
        if spec == "GRAY":
            X = combine_blocks([gray_cues(ws, ids)])
        else:
            _, X = load_features(ws, spec, face_ids=ids)
        groupings = {
            "k-means 8": KMeans(8, n_init=4, random_state=0).fit_predict(X),
            "HDBSCAN auto": fit_clusters(ids, X).result.labels,
        }
        acc = probe_accuracy(X, y)
        for gname, g in groupings.items():
            plain = simulate(g, y)
            inter = simulate(g, y, strategy="interactive", features=X)
            rows.append(
                dict(
                    set=name,
                    features=label,
                    grouping=gname,
                    groups=int(len(np.unique(g[g >= 0]))),
                    noise=int((g < 0).sum()),
                    nmi=plain.nmi,
                    ari=plain.ari,
                    purity=plain.purity,
                    plain98=plain.eff98,
                    plain95=plain.eff95,
                    inter98=inter.eff98,
                    inter95=inter.eff95,
                    inter99=inter.eff99,
                    a98=inter.actions98,
                    probe=acc,
                )
            )
            r = rows[-1]
            print(
                f"{name:4} {label:42} {gname:12} k={r['groups']:3d} NMI {r['nmi']:.3f} "
                f"plain eff98 {r['plain98']:5.1f} | interactive eff95 {r['inter95']:5.1f} "
                f"eff98 {r['inter98']:5.1f} ({r['a98']} actions) | head acc {acc:.3f}  "
                f"[{time.perf_counter() - t0:.0f}s]",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| set | features | grouping | groups (+noise) | NMI | ARI | purity | plain eff95 | plain eff98 "
        "| interactive eff95 | interactive eff98 | interactive eff99 | actions to 98% | 5-fold head acc |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['set']} | {r['features']} | {r['grouping']} | {r['groups']} (+{r['noise']}) | "
        f"{r['nmi']:.3f} | {r['ari']:.3f} | {r['purity']:.3f} | {r['plain95']:.1f} | {r['plain98']:.1f} | "
        f"{r['inter95']:.1f} | {r['inter98']:.1f} | {r['inter99']:.1f} | {r['a98']} | {r['probe']:.3f} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sets", default="mfn,web")
    ap.add_argument("--mfn-ws", default=None)
    ap.add_argument("--web-ws", default=None)
    ap.add_argument("--scratch", default="/tmp/labeler_bench_effort")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "EFFORT.md"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    variants = {k: v for k, v in VARIANTS.items() if not args.quick or k in QUICK}
    rows = []
    for name in args.sets.split(","):
        if not (SHARED / SETS[name][0] / "labels.csv").exists():
            print(f"skip {name}: {SHARED / SETS[name][0]} not present")
            continue
        ws = prepare(name, getattr(args, f"{name}_ws"), scratch)
        rows += run_set(name, ws, variants)
    text = table(rows)
    print(text)
    out = Path(args.out)
    if out.exists() and MARK_BEGIN in out.read_text():
        old = out.read_text()
        new = (
            old[: old.index(MARK_BEGIN) + len(MARK_BEGIN)]
            + "\n"
            + text
            + old[old.index(MARK_END) :]
        )
        out.write_text(new)
    else:
        print(f"(no {MARK_BEGIN} marker in {out}; table not written)")


if __name__ == "__main__":
    main()
