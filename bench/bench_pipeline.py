"""End-to-end throughput: labeler's pipeline vs the naive path, on 1024x1024 JPEG photos.

Stages, each measured on the same images in one run:
  decode   full cv2.imread                      vs  DCT-scaled decode (labeler.imageio)
  detect   MediaPipe BlazeFace on the decoded image (per image)
  embed    torch eager fp32 (batch 32)          vs  labeler's backbone (ONNX Runtime on CPU,
                                                    bf16 + channels_last on CUDA)
  e2e      naive: cv2.imread + detect + align + torch eager, one thread
           labeler: `labeler run --no-cluster` (ingest + detect + align + embed) on a fresh
           workspace, threads overlapping decode/detect with the model; on CUDA the fused
           GPU pass (labeler.detect.fused), and the CPU-thread path on the same box for comparison

Usage: python bench/bench_pipeline.py [--data DIR] [--repeat K] [--device auto]
(default data: ../shared/data/maskedfacenet_1024/images). Prints a table; --json writes one.

``--shipped`` instead times whole processes, as users run them, each on a fresh workspace,
median of ``--runs`` (3): the default ``labeler run --no-cluster`` as shipped (whatever
``features=auto`` embeds), the same with clustering, the single-region path
(``--features face``) and ``bench/naive_pipeline.py`` (the obvious implementation doing the
same work as the default), interleaved run by run so drift hits all alike; faces/s, CPU ms
per face, the peak memory of each command's largest process, the ratio to naive, and the wall ms per face of each step of the
default run (its ``steps/run_result.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "maskedfacenet_1024" / "images"
)


def _images(data: Path, repeat: int, workdir: Path) -> Path:
    """A folder with the images of ``data`` copied ``repeat`` times (distinct bytes per copy)."""
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    out = workdir / "images"
    out.mkdir(parents=True)
    for r in range(repeat):
        for p in files:
            # append r bytes after the JPEG end marker: same pixels, a new content hash
            (out / f"r{r:02d}_{p.name}").write_bytes(p.read_bytes() + b"\0" * r)
    return out


def bench_decode(files: list[Path]) -> dict[str, float]:
    import cv2

    from labeler.imageio import decode_image

    t = time.perf_counter()
    for f in files:
        cv2.imread(str(f))
    full = time.perf_counter() - t
    t = time.perf_counter()
    for f in files:
        decode_image(f, min_side=512)
    draft = time.perf_counter() - t
    return {"decode_full_ms": 1e3 * full / len(files), "decode_draft_ms": 1e3 * draft / len(files)}


def bench_detect(files: list[Path]) -> dict[str, float]:
    from labeler.detect import get_detector
    from labeler.imageio import decode_image

    det = get_detector("mediapipe")
    decoded = [decode_image(f, min_side=512).rgb for f in files]
    t = time.perf_counter()
    n = sum(len(det.detect(rgb)) for rgb in decoded)
    dt = time.perf_counter() - t
    return {"detect_ms": 1e3 * dt / len(files), "detect_faces": n}


def bench_embed(crops: np.ndarray, device: str) -> dict[str, float]:
    from labeler.embeddings import get_backbone

    out: dict[str, float] = {}
    eager = get_backbone(
        "timm:efficientnet_lite0",
        device=device,
        runtime="torch",
        precision="fp32",
        channels_last=False,
    )
    fast = get_backbone("timm:efficientnet_lite0", device=device)
    for name, bb in (("eager", eager), ("labeler", fast)):
        bb.embed(crops[:32])  # warm-up (ONNX export / CUDA init)
        t = time.perf_counter()
        for i in range(0, len(crops), 32 if name == "eager" else 64):
            bb.embed(crops[i : i + (32 if name == "eager" else 64)])
        out[f"embed_{name}_crops_s"] = len(crops) / (time.perf_counter() - t)
    out["embed_runtime"] = f"{fast.config.runtime}/{fast.config.device}"  # type: ignore[assignment]
    return out


def naive_e2e(files: list[Path], device: str) -> float:
    """Full cv2.imread, detect on a downscale, align from full res, torch eager batch 32."""
    import cv2

    from labeler.detect import get_detector
    from labeler.embeddings import get_backbone
    from labeler.faces.align import align_face

    det = get_detector("mediapipe")
    bb = get_backbone(
        "timm:efficientnet_lite0",
        device=device,
        runtime="torch",
        precision="fp32",
        channels_last=False,
    )
    t = time.perf_counter()
    batch: list[np.ndarray] = []
    n = 0
    for f in files:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        s = 640 / max(h, w)
        small = cv2.resize(rgb, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        for d in det.detect(small):
            crop = align_face(rgb, d.landmarks / s)
            batch.append(cv2.resize(crop, (224, 224), interpolation=cv2.INTER_AREA))
            n += 1
        if len(batch) >= 32:
            bb.embed(np.stack(batch))
            batch = []
    if batch:
        bb.embed(np.stack(batch))
    return n / (time.perf_counter() - t)


def labeler_e2e(
    images: Path,
    workdir: Path,
    device: str,
    embed_threads: int | None = None,
    engine: str = "auto",
) -> tuple[float, dict[str, float], int]:
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    shutil.rmtree(workdir / "ws", ignore_errors=True)
    ws = Workspace.open(workdir / "ws", create=True)
    t = time.perf_counter()
    res = run_pipeline(
        images,
        ws,
        config=RunConfig(
            device=device,
            cluster=False,
            features="face",
            workers=os.cpu_count(),
            batch_size=256 if device == "cuda" else 64,
            embed_threads=embed_threads,
            detect_engine=engine,
        ),
    )
    dt = time.perf_counter() - t
    return res.faces / dt, res.timings, res.faces


SHIPPED = {
    "labeler run --no-cluster (default)": ["--no-cluster"],
    "labeler run (default, with clustering)": [],
    "labeler run --no-cluster --features fast (the blocks at 128 px)": [
        "--no-cluster",
        "--features",
        "fast",
    ],
    "labeler run --no-cluster --features face (one region)": ["--no-cluster", "--features", "face"],
    "labeler predict (default head model)": ["predict"],
    "naive (bench/naive_pipeline.py)": None,
}


def _model_workspace(images: Path, data: Path, workdir: Path) -> Path:
    """A workspace with a head model (default features) trained on the photos' labels
    (``data/../labels.csv``, column ``state``), for the ``labeler predict`` row."""

    import pandas as pd

    from labeler.labels import LabelStore
    from labeler.workspace import Workspace

    labeler = str(Path(sys.executable).with_name("labeler"))
    ws_dir = workdir / "model_ws"
    subprocess.run([labeler, "run", str(images), "-w", str(ws_dir), "--no-cluster"], check=True,
                   capture_output=True)  # fmt: skip
    ws = Workspace.open(ws_dir)
    labels = pd.read_csv(data.parent / "labels.csv")
    state = dict(zip(labels["file"], labels["state"], strict=True))
    faces = ws.faces().merge(ws.images()[["image_id", "path"]], on="image_id")
    truth = faces["path"].map(lambda p: state.get(Path(p).name.split("_", 1)[1]))
    store = LabelStore(ws.labels_db)
    for label, ids in faces[truth.notna()].groupby(truth[truth.notna()])["face_id"]:
        store.assign(ids.tolist(), "mask_state", label, annotator="bench", source="simulation")
    subprocess.run(
        [labeler, "train", "-w", str(ws_dir), "--folds", "2", "--no-label-errors"],
        check=True,
        capture_output=True,
    )
    return ws_dir


def _measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """Run ``cmd``: its result, wall s, CPU s and peak RSS (GB) of that command alone.

    ``os.wait4`` returns the rusage of this one child together with the descendants it waited
    for, so the peak is the largest process *of this command* (not of the whole bench) and the
    CPU time includes its worker processes.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, child.returncode, out.read(), err.read())
    return proc, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1e6


def shipped(
    images: Path, workdir: Path, runs: int, data: Path, only: Sequence[str] = ()
) -> list[dict[str, object]]:
    """Whole-process timings of the commands in :data:`SHIPPED` (see the module docstring);
    ``only``: the commands whose name contains one of these (the naive one always runs)."""
    import statistics

    import pandas as pd

    labeler = str(Path(sys.executable).with_name("labeler"))
    naive = str(Path(__file__).with_name("naive_pipeline.py"))
    chosen = {
        k: v for k, v in SHIPPED.items() if not only or v is None or any(o in k for o in only)
    }
    results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in chosen}
    steps: dict[str, float] = {}
    model_ws = (
        _model_workspace(images, data, workdir)
        if any(v == ["predict"] for v in chosen.values())
        else None
    )
    for r in range(runs):
        for name, extra in chosen.items():
            ws = workdir / f"ws_{r}"
            shutil.rmtree(ws, ignore_errors=True)
            preds = workdir / "preds.csv"
            if extra is None:
                cmd = [sys.executable, naive, str(images)]
            elif extra == ["predict"]:
                cmd = [labeler, "predict", str(images), "-w", str(model_ws), "--out", str(preds)]
                cmd += ["--force"]
            else:
                cmd = [labeler, "run", str(images), "-w", str(ws), *extra]
            proc, wall, cpu, peak = _measured(cmd)
            if proc.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
            if extra is None:
                faces = int(proc.stdout.split()[1])
            elif extra == ["predict"]:
                faces = len(pd.read_csv(preds))
                if "Feedback manager" in proc.stderr or "XNNPACK" in proc.stderr:
                    raise RuntimeError(f"TFLite start-up lines on stderr: {proc.stderr[-500:]}")
            else:
                faces = len(pd.read_parquet(ws / "faces.parquet"))
                if name.endswith("(default)"):
                    res = json.loads((ws / "steps" / "run_result.json").read_text())
                    steps = {k: 1000 * v / faces for k, v in res.get("timings", {}).items()}
            results[name].append((faces / wall, 1000 * cpu / faces, peak, faces))
            print(
                f"run {r} {name}: {faces} faces, {wall:.1f} s, {faces / wall:.1f} faces/s",
                flush=True,
            )
            shutil.rmtree(ws, ignore_errors=True)
    naive_rates = [x[0] for x in results["naive (bench/naive_pipeline.py)"]]
    rows = []
    for name, xs in results.items():
        rates = [x[0] for x in xs]
        rows.append(
            {
                "command": name,
                "faces": xs[0][3],
                "faces_s_median": statistics.median(rates),
                "faces_s_min": min(rates),
                "faces_s_max": max(rates),
                "cpu_ms_per_face": statistics.median(x[1] for x in xs),
                "peak_rss_gb": max(x[2] for x in xs),
                "vs_naive": statistics.median(
                    a / b for a, b in zip(rates, naive_rates, strict=True)
                ),
            }
        )
    rows.append({"command": "steps of the default run, wall ms/face", **steps})
    return rows


def stage_costs(files: list[Path], n: int = 120) -> dict[str, float]:
    """CPU ms per face of each stage of the default ``labeler run``, one thread (process CPU
    time, MediaPipe's own threads included), measured by running the stream's own functions
    on ``n`` photos: :func:`labeler.detect.pipeline.cut_faces` (its decode, detector calls,
    upright check and warps timed inside it), the crop files written, then batches of 64
    faces through :class:`labeler.embeddings.embed.FeatureBlocks` (its region cuts, each
    region's model call and the cues timed inside it) and the faces table written per chunk.
    In the real run the stages overlap in threads; these are their costs, not wall times.
    """
    import tempfile

    import cv2
    import pandas as pd

    import labeler.detect.pipeline as dp
    import labeler.embeddings.embed as emb
    from labeler.detect.pipeline import DetectConfig, cut_faces, face_row
    from labeler.embeddings import get_backbone
    from labeler.faces.records import FaceCrops
    from labeler.ingest import _read_one
    from labeler.pipeline import feature_inputs
    from labeler.workspace import Workspace

    cv2.setNumThreads(1)
    clock = time.process_time
    acc: dict[str, float] = {}
    inside: list[str] = []  # the timed stage now running (nested calls count once, outermost)

    def timed(owner: object, name: str, stage: str) -> None:
        f = getattr(owner, name)

        def g(*a: object, **k: object) -> object:
            if inside:
                return f(*a, **k)
            inside.append(stage)
            t = clock()
            try:
                return f(*a, **k)
            finally:
                acc[stage] = acc.get(stage, 0.0) + clock() - t
                inside.pop()

        setattr(owner, name, g)

    regions = feature_inputs("auto", "timm:efficientnet_lite0")[0]  # (region, size)
    cfg = DetectConfig()
    det = cfg.build_detector()
    models = {
        size: get_backbone("timm:efficientnet_lite0", num_threads=1, input_size=size)
        for size in dict.fromkeys(s for _, s in regions)
    }
    blocks = emb.FeatureBlocks(
        [(m, [r for r, s in regions if s == size]) for size, m in models.items()], cues=True
    )
    blank = np.zeros((256, 256, 3), np.uint8)
    cut_faces(files[0], det, cfg, box=True)  # warm-up, not counted
    blocks.compute([FaceCrops("w", blank, blank)])
    timed(dp, "decode_image", "decode (photo, DCT-scaled)")
    timed(dp, "detect_rotated", "upright check (its detector calls + evidence)")
    timed(det, "detect", "detection (BlazeFace, first pass)")
    timed(dp, "align_face", "align (warp)")
    timed(dp, "encode_jpeg", "crop JPEG encode (aligned + box)")
    timed(dp, "decode_crop_bytes", "crops as stored (JPEG decode in memory)")
    timed(emb, "prepare_crop", "regions cut + resized")
    timed(emb, "compute_cues", "cues")
    for size, m in models.items():
        timed(m, "embed", "model forward (3 regions)" + (f" at {size} px" if size else ""))
    acc.clear()
    faces: list[FaceCrops] = []
    other = {"ingest (read, hash, header)": 0.0, "crop files written": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws", create=True)
        rows: list[dict[str, object]] = []
        t_detect = 0.0
        for f in files[:n]:
            t = clock()
            _read_one(f.parent, 0, f.name, 0)
            t1 = clock()
            cuts = cut_faces(f, det, cfg, box=True)
            t2 = clock()
            for i, c in enumerate(cuts):
                row = face_row(ws, f"{len(rows):016x}", i, c.detection, det.name)
                dp.write_bytes(ws.root / str(row["crop_path"]), c.aligned_jpeg)
                dp.write_bytes(ws.box_crop_path(str(row["face_id"])), c.box_jpeg or b"")
                rows.append(row)
                faces.append(FaceCrops(str(row["face_id"]), c.aligned, c.box))
            other["ingest (read, hash, header)"] += t1 - t
            other["crop files written"] += clock() - t2
            t_detect += t2 - t1
        t = clock()
        for start in range(0, len(faces), 64):
            blocks.compute(faces[start : start + 64])
        t_embed = clock() - t
        t = clock()
        for start in range(0, len(rows), 77):  # faces.parquet rewritten per committed chunk
            ws.write_faces(pd.DataFrame(rows[: start + 77], columns=dp.FACES_SCHEMA.names))
        other["tables (faces.parquet per chunk)"] = clock() - t
    embed_side = ("regions cut + resized", "cues")
    in_embed = sum(v for k, v in acc.items() if k in embed_side or k.startswith("model"))
    in_detect = sum(acc.values()) - in_embed
    k = 1000 / max(len(faces), 1)
    out = {name: k * v for name, v in {**acc, **other}.items()}
    out["cut_faces rest (rows, box cut, resize for detection, Python)"] = k * max(
        t_detect - in_detect, 0.0
    )
    out["FeatureBlocks rest (batch arrays, concat)"] = k * max(t_embed - in_embed, 0.0)
    out["total"] = k * (t_detect + t_embed + sum(other.values()))
    out["outside the model"] = out["total"] - k * sum(
        v for name, v in acc.items() if name.startswith("model")
    )
    out["faces"] = float(len(faces))
    return out


def _run_info(photos: int, runs: int, load_start: float) -> dict[str, object]:
    """When and where a ``--shipped`` run was taken (the last row of its JSON)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return {
        "command": "run info",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": commit,
        "photos": photos,
        "runs": runs,
        "cores": os.cpu_count(),
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
    }


def _cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument(
        "--repeat", type=int, default=1, help="copies of the image set (for big machines)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--naive-limit", type=int, default=1000, help="images for the (slow) naive rate"
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--shipped", action="store_true", help="whole-process timings (see above)")
    ap.add_argument("--runs", type=int, default=3, help="runs per command with --shipped")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="with --shipped: only the commands whose name contains this (repeatable; naive always)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("labeler.pipeline").setLevel(logging.INFO)  # the fused pass's phases
    if not args.data.is_dir():
        print(f"no data at {args.data}; pass --data DIR of face photos", file=sys.stderr)
        return 0
    import cv2

    from labeler.detect import get_detector
    from labeler.detect.pipeline import detect_and_align

    if args.shipped:
        workdir = Path(tempfile.mkdtemp(prefix="labeler-bench-"))
        load_start = os.getloadavg()[0]
        try:
            images = _images(args.data, args.repeat, workdir)
            rows = shipped(images, workdir, args.runs, args.data, args.only)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        n = len(list(args.data.iterdir())) * args.repeat
        print(f"\n{n} photos, {os.cpu_count()} cores, median of {args.runs} runs (min-max)")
        print("| command | faces | faces/s | CPU ms/face | peak RSS GB | vs naive |")
        print("|---|---|---|---|---|---|")
        for r in rows[:-1]:  # the last row: steps of the default run
            print(
                f"| {r['command']} | {r['faces']} | {r['faces_s_median']:.1f} "
                f"({r['faces_s_min']:.1f}-{r['faces_s_max']:.1f}) | {r['cpu_ms_per_face']:.1f} "
                f"| {r['peak_rss_gb']:.2f} | {r['vs_naive']:.2f}x |"
            )
        print(
            "steps of the default run, wall ms/face: "
            + ", ".join(f"{k} {v:.1f}" for k, v in rows[-1].items() if k != "command")
        )
        stages = stage_costs(sorted(args.data.iterdir()))
        print("\nCPU ms per face of each stage of the default run (one thread, 120 photos):")
        print("| stage | CPU ms/face |\n|---|---|")
        for k, v in stages.items():
            print(f"| {k} | {v:.1f} |")
        rows.append({"command": "CPU ms/face per stage (one thread)", **stages})
        rows.append(_run_info(n, args.runs, load_start))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="labeler-bench-"))
    try:
        images = _images(args.data, args.repeat, workdir)
        files = sorted(images.iterdir())
        rows: dict[str, object] = {"images": len(files), "cores": os.cpu_count()}
        rows.update(bench_decode(files[:100]))
        rows.update(bench_detect(files[:100]))
        det = get_detector("mediapipe")
        crops = [c for f in files[:64] for _, c in detect_and_align(f, det)]
        crops224 = np.stack(
            [cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA) for c in crops]
        )
        reps = max(1, 256 // len(crops224))
        rows.update(bench_embed(np.concatenate([crops224] * reps), args.device))
        rows["e2e_naive_faces_s"] = naive_e2e(files[: args.naive_limit], args.device)
        if _cuda(args.device):  # the CPU path on the GPU box, for comparison
            fps, timings, _ = labeler_e2e(images, workdir, args.device, engine="threads")
            rows["e2e_labeler_threads_faces_s"] = fps
            rows.update({f"threads_{k}_s": v for k, v in timings.items()})
        fps, timings, n = labeler_e2e(images, workdir, args.device)
        rows["e2e_labeler_faces_s"] = fps
        rows["e2e_faces"] = n
        rows.update({f"labeler_{k}_s": v for k, v in timings.items()})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ratio = rows["e2e_labeler_faces_s"] / rows["e2e_naive_faces_s"]  # type: ignore[operator]
    table = [
        (
            "decode 1024 JPEG, ms/img",
            f"{rows['decode_full_ms']:.1f} (cv2 full)",
            f"{rows['decode_draft_ms']:.1f} (DCT-scaled)",
        ),
        ("detect, ms/img", "", f"{rows['detect_ms']:.1f}"),
        (
            "embed, crops/s",
            f"{rows['embed_eager_crops_s']:.0f} (torch eager)",
            f"{rows['embed_labeler_crops_s']:.0f} ({rows['embed_runtime']})",
        ),
        (
            "end-to-end, faces/s",
            f"{rows['e2e_naive_faces_s']:.1f} (naive)",
            f"{rows['e2e_labeler_faces_s']:.1f} (labeler run)",
        ),
        ("labeler vs naive", "", f"{ratio:.2f}x"),
    ]
    if "e2e_labeler_threads_faces_s" in rows:
        table.insert(
            -1,
            (
                "end-to-end, faces/s",
                "",
                f"{rows['e2e_labeler_threads_faces_s']:.1f} (run, CPU detect threads)",
            ),
        )
    print(f"\n{rows['images']} images, {rows['e2e_faces']} faces, {rows['cores']} cores")
    print(f"{'stage':<26}{'naive':<28}{'labeler':<28}")
    for name, a, b in table:
        print(f"{name:<26}{a:<28}{b:<28}")
    for prefix in ("labeler_", "threads_"):
        steps = [
            f"{k[len(prefix) : -2]} {v:.2f}"
            for k, v in rows.items()
            if k.startswith(prefix) and k.endswith("_s") and not k.endswith("faces_s")
        ]
        if steps:
            print(f"{prefix[:-1]} step seconds: " + ", ".join(steps))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
