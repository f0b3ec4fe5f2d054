"""Feature lab: every candidate feature set, measured on every shared set at once.

For each shared set (``maskedfacenet`` 4 states, ``webfaces`` masked/no_mask, ``realmasks``
correct/incorrect/no_mask from real crowd photos, ``mfr2`` masked/no_mask) it takes a
workspace built by ``labeler run`` (``--ws-root DIR`` holds ``DIR/<set>``; built there with
``labeler run --no-cluster`` defaults when missing), embeds the blocks the candidates need
with the tool's own code (``labeler.embeddings.embed_faces``: ONNX Runtime on CPU, the box
crops of ``labeler.faces.boxcrops``), combines them exactly as the tool does
(``labeler.features.load_features``: per-block standardise, PCA, weight, L2) and measures:

- ``head acc / F1``: 5-fold out-of-fold accuracy and macro-F1 of a logistic head trained on
  ALL true labels (the ceiling of a linear head on these features). Its L2 strength is
  chosen inside each training fold (3-fold inner CV over 1e-3..1), so the test fold never
  picks it. ``realmasks`` also reports it with folds grouped by source scene (faces of one
  photo are not independent), ``grp acc``.
- ``k8`` / ``k32``: purity of k-means with 8 and 32 clusters (seeded).
- ``NMI``, ``plain eff95/98`` and ``inter eff95/98``: ``labeler.cluster.fit_clusters`` with
  its data-chosen defaults, then :func:`labeler.loop.simulate.simulate` plain and interactive
  (the tool's own annotator model), as ``labeler run`` + ``labeler simulate`` would.
- ``ms/face``: CPU milliseconds per face to compute the candidate's blocks (measured here on
  256 faces per block, one process, the ONNX model at each block's input size; cues included).

Prints one markdown table and writes it to ``bench/FEATURES.md`` between the markers.

    python bench/bench_features.py --ws-root /tmp/featws              # all sets (~20 min, 2 cores)
    python bench/bench_features.py --ws-root /tmp/featws --sets realmasks --no-sim
    python bench/bench_features.py --ws-root /tmp/featws --no-sim --table ceiling   # FEATURES.md
    python bench/bench_features.py --ws-root /tmp/featws --table effort \
        --only "v1 auto: cues*.25 + nose*.5 + mouth_chin*.5,v1 + box*.5"
    python bench/bench_features.py --ws-root /tmp/featws --table int8 --seeds 0,1,2 \
        --only "v1 + box*.5,v2 int8 (224/224/224)"     # float vs int8 model, 3 cluster seeds
"""

from __future__ import annotations

import argparse
import logging
import re
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SETS = {
    "mfn": "maskedfacenet",
    "web": "webfaces",
    "realmasks": "realmasks",
    "mfr2": "mfr2",
}
BB = "efficientnet_lite0"
CUES = "cues__face"
# name -> feature spec (labeler.features syntax); {bb} is the backbone key prefix
CANDIDATES = {
    "cues": CUES,
    "face (aligned, whole)": "{bb}__face",
    "box (unaligned, +20 %)": "{bb}__box",
    "nose + mouth_chin": "{bb}__nose+{bb}__mouth_chin",
    "v1 auto: cues*.25 + nose*.5 + mouth_chin*.5": f"{CUES}*0.25+{{bb}}__nose*0.5+{{bb}}__mouth_chin*0.5",
    "v1 + face*.5": f"{CUES}*0.25+{{bb}}__nose*0.5+{{bb}}__mouth_chin*0.5+{{bb}}__face*0.5",
    "v1 + box*.5": f"{CUES}*0.25+{{bb}}__nose*0.5+{{bb}}__mouth_chin*0.5+{{bb}}__box*0.5",
    "v1 + box*1": f"{CUES}*0.25+{{bb}}__nose*0.5+{{bb}}__mouth_chin*0.5+{{bb}}__box",
    "v1 + box*.5 + face*.5": f"{CUES}*0.25+{{bb}}__nose*0.5+{{bb}}__mouth_chin*0.5+{{bb}}__box*0.5+{{bb}}__face*0.5",
}
# input size per region (issue #13): the v2 default's blocks at 96/128/160/224 px, and mixes
for _name, _n, _m, _b in (
    ("v2 @224 (224/224/224)", 224, 224, 224),
    ("v2 @160", 160, 160, 160),
    ("v2 @128 (default)", 128, 128, 128),
    ("v2 @96", 96, 96, 96),
    ("v2 nose@96 mc@128 box@128", 96, 128, 128),
    ("v2 nose@128 mc@160 box@160", 128, 160, 160),
    ("v2 nose@128 mc@128 box@224", 128, 128, 224),
    ("v2 nose@224 mc@224 box@128", 224, 224, 128),
    ("v2 nose@128 mc@224 box@128", 128, 224, 128),
):
    CANDIDATES[_name] = "+".join(
        [f"{CUES}*0.25"]
        + [
            f"{{bb}}{'' if n == 224 else f'-{n}px'}__{r}*0.5"
            for r, n in (("nose", _n), ("mouth_chin", _m), ("box", _b))
        ]
    )
# the default's blocks from the int8 model (labeler.embeddings.quantize, keys <bb>-int8__*)
CANDIDATES["v2 int8 (224/224/224)"] = "+".join(
    [f"{CUES}*0.25"] + [f"{{bb}}-int8__{r}*0.5" for r in ("nose", "mouth_chin", "box")]
)
SEEDS = (0,)  # cluster seeds of the effort columns (--seeds)
log = logging.getLogger("bench_features")


def workspace(name: str, ws_root: Path) -> object:
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    path = ws_root / SETS[name]
    if not (path / "faces.parquet").exists():
        log.info("building %s with labeler run defaults", path)
        run_pipeline(
            SHARED / SETS[name] / "images",
            Workspace.open(path, create=True),
            config=RunConfig(cluster=False),
        )
    return Workspace.open(path)


def blocks_needed(specs: list[str]) -> set[str]:
    return {k for s in specs for k in re.sub(r"\*[0-9.]+", "", s).split("+")}


def ensure_blocks(ws: object, keys: set[str]) -> None:
    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import FeatureBlocks, cues_workspace, embed_workspace
    from labeler.embeddings.store import list_embeddings, parse_key

    stored = set(list_embeddings(ws))
    by_size: dict[tuple[int | None, bool], list[str]] = {}
    for key in sorted(keys - stored):
        if key == CUES:
            cues_workspace(ws)
            continue
        name, size, region = parse_key(key)
        by_size.setdefault((size, name.endswith("-int8")), []).append(region)
    for (size, int8), regions in by_size.items():
        backbone = get_backbone(f"timm:{BB}", input_size=size, precision="int8" if int8 else "fp32")
        embed_workspace(ws, FeatureBlocks([(backbone, regions)]), progress=False)


def block_ms(ws: object, keys: set[str], n: int = 256) -> dict[str, float]:
    """CPU ms per face of each block on ``n`` faces (decode + model, or cues)."""
    import resource

    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import crop_paths, load_crops
    from labeler.embeddings.store import parse_key
    from labeler.faces.cues import compute_cues
    from labeler.faces.regions import get_region

    faces = ws.faces().iloc[:n]
    backbones: dict[tuple[int | None, bool], object] = {}

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    out = {}
    for key in sorted(keys):
        region = key.split("__", 1)[1]
        if key != CUES:
            name, size, _ = parse_key(key)
            int8 = name.endswith("-int8")
            if (size, int8) not in backbones:
                backbones[size, int8] = get_backbone(
                    f"timm:{BB}", input_size=size, precision="int8" if int8 else "fp32"
                )
            backbone = backbones[size, int8]
        if key == CUES:
            paths = crop_paths(ws, faces)
            t = cpu()
            compute_cues(load_crops(list(paths), region="face", size=256))
        else:
            paths = crop_paths(ws, faces, crop=get_region(region).crop)
            t = cpu()
            for i in range(0, len(paths), 64):
                backbone.embed(
                    load_crops(list(paths[i : i + 64]), region=region, size=backbone.input_size)
                )
        out[key] = 1000 * (cpu() - t) / max(len(faces), 1)
    return out


def head_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> tuple:
    """Out-of-fold accuracy and macro-F1 of a logistic head on all labels (nested C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

    Xs = (X - X.mean(0)) / (X.std(0) + 1e-6)
    if groups is None:
        folds = StratifiedKFold(5, shuffle=True, random_state=0).split(Xs, y)
    else:
        folds = StratifiedGroupKFold(5, shuffle=True, random_state=0).split(Xs, y, groups)
    oof = np.empty(len(y), dtype=object)
    Cs = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    for tr, te in folds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = GridSearchCV(
                LogisticRegression(max_iter=3000),
                {"C": Cs},
                cv=StratifiedKFold(3, shuffle=True, random_state=0),
                n_jobs=1,
            )
            m.fit(Xs[tr], y[tr])
        oof[te] = m.predict(Xs[te])
    return accuracy_score(y, oof), f1_score(y, oof, average="macro")


def purity(groups: np.ndarray, y: np.ndarray) -> float:
    total = 0
    for g in np.unique(groups):
        _, counts = np.unique(y[groups == g], return_counts=True)
        total += counts.max()
    return total / len(y)


def run_set(name: str, ws: object, candidates: dict[str, str], *, sim: bool) -> list[dict]:
    import pandas as pd
    from sklearn.cluster import KMeans

    from labeler.cluster.run import fit_clusters
    from labeler.cluster.types import ClusterConfig
    from labeler.features import load_features
    from labeler.loop.simulate import simulate
    from labeler.loop.truth import join_truth
    from labeler.workspace import align_to_faces

    specs = {k: v.format(bb=BB) for k, v in candidates.items()}
    keys = blocks_needed(list(specs.values()))
    ensure_blocks(ws, keys)
    ms = block_ms(ws, keys)
    truth_csv = SHARED / SETS[name] / "labels.csv"
    t = join_truth(ws, str(truth_csv))
    ids = t["face_id"].to_numpy().astype(str)
    y = t["truth"].astype(str).to_numpy()
    scenes = None
    table = pd.read_csv(truth_csv)
    if "scene" in table:
        images = ws.images().set_index("image_id")
        names = images.loc[ws.faces().set_index("face_id").loc[ids, "image_id"], "path"]
        scene_of = dict(zip(table["file"], table["scene"], strict=True))
        scenes = np.array([scene_of.get(Path(p).name, p) for p in names])
    rows = []
    for label, spec in specs.items():
        t0 = time.perf_counter()
        fids, X = load_features(ws, spec)
        X = align_to_faces(ids, np.asarray(fids).astype(str), X, what=spec, fix="bench")
        acc, f1 = head_scores(X, y)
        row = {
            "set": name,
            "features": label,
            "dims": X.shape[1],
            "head acc": acc,
            "head F1": f1,
            "grp acc": head_scores(X, y, scenes)[0] if scenes is not None else None,
            "k8": purity(KMeans(8, n_init=4, random_state=0).fit_predict(X), y),
            "k32": purity(KMeans(32, n_init=4, random_state=0).fit_predict(X), y),
            "ms/face": sum(ms[k] for k in blocks_needed([spec])),
        }
        if sim:
            fids_all, X_all = load_features(ws, spec)
            per_seed = []
            for seed in SEEDS:
                fit = fit_clusters(
                    np.asarray(fids_all).astype(str), X_all, config=ClusterConfig(seed=seed)
                )
                g = align_to_faces(
                    ids,
                    np.asarray(fids_all).astype(str),
                    fit.result.labels,
                    what="groups",
                    fix="bench",
                )
                plain = simulate(g, y).summary()
                inter = simulate(g, y, strategy="interactive", features=X).summary()
                per_seed.append(
                    {
                        "NMI": plain["nmi"],
                        "plain eff95": plain["eff95"],
                        "plain eff98": plain["eff98"],
                        "inter eff95": inter["eff95"],
                        "inter eff98": inter["eff98"],
                    }
                )
            for col in per_seed[0]:
                row[col] = _seeds_cell([float(r[col]) for r in per_seed])
        log.info("%s %s: %s (%.0f s)", name, label, row, time.perf_counter() - t0)
        rows.append(row)
    return rows


def _seeds_cell(vals: list[float]) -> float | str:
    """One seed: the value; several: ``median [min-max]`` (the spread is the seed noise)."""
    if len(vals) == 1:
        return vals[0]

    def f(v: float) -> str:
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"

    return f"{f(float(np.median(vals)))} [{f(min(vals))}-{f(max(vals))}]"


COLUMNS = [
    "set",
    "features",
    "dims",
    "head acc",
    "head F1",
    "grp acc",
    "k8",
    "k32",
    "NMI",
    "plain eff95",
    "plain eff98",
    "inter eff95",
    "inter eff98",
    "ms/face",
]


def table(rows: list[dict]) -> str:
    def fmt(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3f}" if v < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ws-root", type=Path, default=Path("/tmp/featws"))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--only", default="", help="comma-separated candidate names (default all)")
    ap.add_argument("--no-sim", action="store_true", help="skip clustering and simulate")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "FEATURES.md")
    ap.add_argument(
        "--table", default="ceiling", help="which table of --out to replace (its markers)"
    )
    ap.add_argument(
        "--seeds",
        default="0",
        help="cluster seeds of the effort columns, comma-separated; several give "
        "'median [min-max]' (the grouping's seed noise)",
    )
    args = ap.parse_args()
    global SEEDS
    SEEDS = tuple(int(v) for v in args.seeds.split(","))
    BEGIN, END = (
        f"<!-- bench_features:{args.table}:begin -->",
        f"<!-- bench_features:{args.table}:end -->",
    )
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: the feature lab needs the shared face sets")
    cands = CANDIDATES
    if args.only:
        cands = {k: v for k, v in CANDIDATES.items() if k in args.only.split(",")}
    rows = []
    for name in args.sets.split(","):
        rows += run_set(name, workspace(name, args.ws_root), cands, sim=not args.no_sim)
        print(table(rows), flush=True)
    text = table(rows)
    if args.out.exists() and BEGIN in args.out.read_text():
        old = args.out.read_text()
        head, _, rest = old.partition(BEGIN)
        _, _, tail = rest.partition(END)
        args.out.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    else:
        args.out.write_text(f"# Feature lab\n\n{BEGIN}\n{text}\n{END}\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
