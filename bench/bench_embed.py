"""Embedding throughput: crops/s of each runtime and decode path, printed as a table.

    python bench/bench_embed.py [--data DIR] [--n 64] [--batch-size 32] [--repeats 3]

Real face photos (default ``../shared/data/maskedfacenet_1024/images``, 1024 px JPEGs) are
resized to 256 px aligned-crop stand-ins in memory and re-encoded as JPEG, then timed:

* CPU model: torch eager fp32 (NCHW, the naive baseline), torch channels_last,
  labeler's torch backbone, onnxruntime (labeler's CPU default);
* CUDA model (when a GPU is present): torch fp32 vs bf16 autocast + channels_last;
* decode: PIL/libjpeg on CPU threads vs batched nvJPEG on the GPU (crop + resize included),
  and end-to-end (decode + model) with each.

Skips cleanly (exit 0) when the data folder is absent.

``--model-cost``: the model alone, CPU ms per crop (the process's CPU time, best of
``--repeats``: robust when other jobs share the cores) and wall ms, at batch 32 and 64 with
``--threads`` threads, for each engine of the same weights against today's default
(onnxruntime fp32) in the same run::

    python bench/bench_embed.py --model-cost --threads 2 [--size 224]

``--calibrate --ws-root DIR``: measure the int8 activation ranges on the nose-band,
mouth-chin and box crops of 64 faces of each workspace under ``DIR`` (built by
``bench/bench_features.py``) and write ``labeler/embeddings/int8_ranges.py``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "maskedfacenet_1024" / "images"


def load_crops(data: Path, n: int) -> tuple[list[np.ndarray], list[bytes]]:
    """``n`` photos -> 256 px RGB crops and their JPEG bytes (quality 90)."""
    import cv2
    from PIL import Image

    files = sorted(p for p in data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    crops, blobs = [], []
    for p in files:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        side = min(rgb.shape[:2])
        crop = cv2.resize(rgb[:side, :side], (256, 256), interpolation=cv2.INTER_AREA)
        crops.append(crop)
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return crops, blobs


def timeit(fn, *, repeats: int, sync=None) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def end_to_end(
    blobs: list[bytes], backbone, *, region: str, batch_size: int, decode: str, workers: int
) -> float:
    """Seconds for ``embed_faces`` over a temporary workspace holding ``blobs`` as crops."""
    import tempfile

    import pandas as pd

    from labeler.embeddings.embed import embed_faces
    from labeler.workspace import Workspace

    with tempfile.TemporaryDirectory() as d:
        ws = Workspace.open(d, create=True)
        rows = []
        for i, blob in enumerate(blobs):
            fid = f"{i:016x}_0"
            path = ws.crop_path(fid)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            rows.append(
                {
                    "face_id": fid,
                    "image_id": fid[:16],
                    "face_index": 0,
                    **dict.fromkeys(("x0", "y0", "x1", "y1", "score"), 0.0),
                    "landmarks": [0.0] * 8,
                    "detector": "bench",
                    "whole_image": True,
                    "crop_path": "",
                }
            )
        ws.write_faces(pd.DataFrame(rows))
        t = time.perf_counter()
        embed_faces(
            ws,
            backbone,
            region=region,
            batch_size=batch_size,
            decode=decode,
            workers=workers,
            progress=False,
        )
        return time.perf_counter() - t


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cost(fn, batch: np.ndarray, *, repeats: int) -> tuple[float, float]:
    """``(CPU ms, wall ms)`` per crop of ``fn(batch)``: the best of ``repeats`` after a warm-up."""
    fn(batch)
    cpu, wall = float("inf"), float("inf")
    for _ in range(repeats):
        c, t = _cpu_s(), time.perf_counter()
        fn(batch)
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, _cpu_s() - c)
    return 1000 * cpu / len(batch), 1000 * wall / len(batch)


def model_cost(args: argparse.Namespace, crops: list[np.ndarray]) -> int:
    """The --model-cost table: each engine vs onnxruntime fp32 (today's CPU default)."""
    import cv2
    import torch

    from labeler.embeddings import get_backbone
    from labeler.embeddings.backbones import resolve_spec
    from labeler.embeddings.weights import build_feature_model

    torch.set_num_threads(args.threads)
    size = args.size
    pixels = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])
    while len(pixels) < 64:
        pixels = np.concatenate([pixels, pixels])
    engines: list[tuple[str, object]] = []
    kw = {"device": "cpu", "input_size": size}
    ort32 = get_backbone(runtime="onnx", precision="fp32", num_threads=args.threads, **kw)
    engines.append(("onnxruntime fp32 (today's CPU default)", ort32.embed))
    try:
        ort8 = get_backbone(runtime="onnx", precision="int8", num_threads=args.threads, **kw)
        engines.append(("onnxruntime int8 (labeler.embeddings.quantize)", ort8.embed))
    except Exception as exc:  # noqa: BLE001 - a row that cannot run is reported, not fatal
        print(f"# int8 row skipped: {exc}", file=sys.stderr)
    fm, _ = build_feature_model(resolve_spec("timm:efficientnet_lite0"))
    fm = fm.eval()

    def eager(module, channels_last: bool):
        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(batch)
            with torch.inference_mode():
                if not channels_last:  # the permuted uint8 view, made NCHW-contiguous
                    x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
                return module(x).numpy()

        return run

    engines.append(("torch eager fp32, NCHW", eager(fm, False)))
    fm_cl = fm.to(memory_format=torch.channels_last)
    engines.append(("torch eager fp32, channels_last + inference_mode", eager(fm_cl, True)))
    try:
        with torch.no_grad():
            traced = torch.jit.freeze(
                torch.jit.trace(fm_cl, torch.from_numpy(pixels[:2]), check_trace=False)
            )
        engines.append(("torch.jit trace + freeze (oneDNN fusion)", eager(traced, True)))
    except Exception as exc:  # noqa: BLE001
        print(f"# torch.jit row skipped: {exc}", file=sys.stderr)
    ref = ort32.embed(pixels[:32])
    rows = []
    for what, fn in engines:
        feats = np.asarray(fn(pixels[:32]), dtype=np.float32)
        cos = (feats * ref).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(ref, axis=1)
        for bs in (32, 64):
            cpu, wall = cost(fn, pixels[:bs], repeats=args.repeats)
            rows.append((what, bs, cpu, wall, float(cos.min())))
    print(
        f"# model cost: EfficientNet-Lite0 @ {size} px, {args.threads} threads, "
        f"{len(crops)} real crops ({args.data}); torch {torch.__version__}; "
        f"os.cpu_count {os.cpu_count()}; CPU ms = process CPU time, best of {args.repeats}"
    )
    print(
        "| engine | batch | CPU ms/crop | wall ms/crop | CPU vs ORT fp32 | min cosine to ORT fp32 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    base = {bs: cpu for what, bs, cpu, _, _ in rows if what.startswith("onnxruntime fp32")}
    for what, bs, cpu, wall, cos in rows:
        print(f"| {what} | {bs} | {cpu:.2f} | {wall:.2f} | {base[bs] / cpu:.2f}x | {cos:.4f} |")
    return 0


def calibrate_ranges(ws_root: Path, *, size: int = 224, per_set: int = 64) -> Path:
    """Measure the int8 ranges on the lab workspaces' region crops and write the ranges file."""
    import tempfile

    import onnx

    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import crop_paths, load_crops
    from labeler.embeddings.quantize import (
        RANGES_FILE,
        calibrate,
        early_nodes,
        preprocess,
        write_ranges,
    )
    from labeler.faces.regions import get_region
    from labeler.workspace import Workspace

    rng = np.random.default_rng(0)
    crops = []
    sets = sorted(p for p in ws_root.iterdir() if (p / "faces.parquet").exists())
    for path in sets:
        faces = Workspace.open(path).faces()
        pick = faces.iloc[np.sort(rng.permutation(len(faces))[:per_set])]
        ws = Workspace.open(path)
        for region in ("nose", "mouth_chin", "box"):
            paths = crop_paths(ws, pick, crop=get_region(region).crop)
            crops.append(load_crops(list(paths), region=region, size=size))
    pixels = np.concatenate(crops)
    bb = get_backbone(device="cpu", runtime="onnx", precision="fp32", input_size=size)
    with tempfile.TemporaryDirectory() as d:
        pre = preprocess(bb.path, Path(d) / "pre.onnx")
        ranges = calibrate(pre, (pixels[i : i + 32] for i in range(0, len(pixels), 32)))
        keep = early_nodes(onnx.load(str(pre)))
    payload = {
        "arch": bb.config.arch,
        "input_size": size,
        "measured_on": f"{len(pixels)} nose/mouth_chin/box crops of {', '.join(p.name for p in sets)}",
        "method": "mean over batches of 32 of the 0.01/99.99 percentiles",
        "keep_float": keep,
        "ranges": {k: [round(lo, 6), round(hi, 6)] for k, (lo, hi) in ranges.items()},
    }
    write_ranges(payload)
    print(f"wrote {RANGES_FILE} ({len(ranges)} tensors, {len(pixels)} crops)")
    return RANGES_FILE


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=64, help="crops to use")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--gpu-batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--region", default="face")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cuda: require the GPU rows; cpu: skip them; auto: GPU rows when CUDA is there",
    )
    ap.add_argument("--model-cost", action="store_true", help="the model-only cost table")
    ap.add_argument("--size", type=int, default=224, help="model input size for --model-cost")
    ap.add_argument("--calibrate", action="store_true", help="write the int8 ranges file")
    ap.add_argument("--ws-root", type=Path, default=Path("/tmp/featws"))
    args = ap.parse_args()
    if args.calibrate:
        calibrate_ranges(args.ws_root)
        return 0
    if not args.data.is_dir():
        print(f"skip: {args.data} not found (pass --data DIR with face photos)")
        return 0

    if args.model_cost:
        return model_cost(args, load_crops(args.data, args.n)[0])
    import torch

    from labeler.embeddings import get_backbone
    from labeler.embeddings.backbones import resolve_spec
    from labeler.embeddings.embed import prepare_crop
    from labeler.embeddings.weights import build_timm_model, data_config

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 1
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    crops, blobs = load_crops(args.data, args.n)
    if not crops:
        print(f"skip: no images in {args.data}")
        return 0
    spec = resolve_spec("timm:efficientnet_lite0")
    size = spec.input_size or 224
    region = args.region
    pixels = np.stack([prepare_crop(c, region=region, size=size) for c in crops])
    bs = min(args.batch_size, len(pixels))
    batch = pixels[:bs]
    rows: list[tuple[str, int, float]] = []  # (what, batch, seconds per batch)

    def decode_cpu(blob: bytes) -> np.ndarray:
        from PIL import Image

        return prepare_crop(
            np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")), region=region, size=size
        )

    # -- CPU decode -----------------------------------------------------------------------
    for workers in sorted({1, args.threads}):
        with ThreadPoolExecutor(workers) as pool:
            t = timeit(
                lambda pool=pool: list(pool.map(decode_cpu, blobs[:bs])), repeats=args.repeats
            )
        rows.append((f"decode+crop+resize CPU, PIL, {workers} thread(s)", bs, t))

    # -- CPU models -----------------------------------------------------------------------
    model, _, _ = build_timm_model(spec)
    _, mean, std = data_config(spec, model)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    x = ((torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - m) / s).contiguous()

    def eager(mod, inp):
        with torch.inference_mode():
            return mod.forward_head(mod.forward_features(inp), pre_logits=True)

    rows.append(
        ("torch eager fp32 CPU (NCHW)", bs, timeit(lambda: eager(model, x), repeats=args.repeats))
    )
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    rows.append(
        (
            "torch channels_last fp32 CPU",
            bs,
            timeit(lambda: eager(model_cl, x_cl), repeats=args.repeats),
        )
    )
    tb = get_backbone(device="cpu", runtime="torch")
    rows.append(
        (
            "labeler torch backbone CPU (uint8 in)",
            bs,
            timeit(lambda: tb.embed(batch), repeats=args.repeats),
        )
    )
    try:
        ob = get_backbone(device="cpu", runtime="onnx", num_threads=args.threads)
    except Exception as exc:  # e.g. a GPU image whose onnx/protobuf pair cannot export
        print(f"# onnxruntime rows skipped: {exc}", file=sys.stderr)
        ob = None
    if ob is not None:
        rows.append(
            (
                "onnxruntime CPU (labeler default on CPU)",
                bs,
                timeit(lambda: ob.embed(batch), repeats=args.repeats),
            )
        )
        diff = float(np.abs(tb.embed(batch) - ob.embed(batch)).max())
        t = end_to_end(blobs, ob, region=region, batch_size=bs, decode="cpu", workers=args.threads)
        rows.append((f"labeler embed end-to-end, ORT ({len(blobs)} crops)", len(blobs), t))
    else:
        diff = float("nan")

    # -- CUDA -----------------------------------------------------------------------------
    if use_cuda:
        from labeler.embeddings.gpu import decode_crops_cuda

        sync = torch.cuda.synchronize
        gbs = args.gpu_batch_size  # crops are repeated to fill a GPU batch
        reps = max(1, -(-4 * gbs // len(pixels)))
        gpix = np.concatenate([pixels] * reps)[:gbs]
        gblobs = (blobs * reps)[:gbs]
        e2e_blobs = (blobs * reps)[: 4 * gbs]  # 4 batches through embed_faces
        greps = max(args.repeats, 10)
        dev_model = build_timm_model(spec)[0].cuda().eval()
        xg = (
            (torch.from_numpy(gpix).cuda().permute(0, 3, 1, 2).float() / 255 - m.cuda()) / s.cuda()
        ).contiguous()
        rows.append(
            (
                "torch CUDA fp32 (NCHW)",
                gbs,
                timeit(lambda: eager(dev_model, xg), repeats=greps, sync=sync),
            )
        )
        fp32 = get_backbone(device="cuda", runtime="torch", precision="fp32", channels_last=False)
        rows.append(
            (
                "labeler CUDA fp32, uint8 in, pinned copy",
                gbs,
                timeit(lambda: fp32.embed(gpix), repeats=greps, sync=sync),
            )
        )
        bf16 = get_backbone(device="cuda", runtime="torch", precision="bf16", channels_last=True)
        rows.append(
            (
                "labeler CUDA bf16 + channels_last",
                gbs,
                timeit(lambda: bf16.embed(gpix), repeats=greps, sync=sync),
            )
        )
        with ThreadPoolExecutor(args.threads) as pool:
            t_cpu_dec = timeit(lambda: np.stack(list(pool.map(decode_cpu, gblobs))), repeats=greps)
            rows.append((f"decode CPU ({args.threads} threads)", gbs, t_cpu_dec))
            rows.append(
                (
                    "end-to-end: CPU decode + CUDA bf16",
                    gbs,
                    timeit(
                        lambda: bf16.embed(np.stack(list(pool.map(decode_cpu, gblobs)))),
                        repeats=greps,
                        sync=sync,
                    ),
                )
            )
        dec = lambda: decode_crops_cuda(gblobs, region=region, size=size)  # noqa: E731
        rows.append(("decode GPU (nvJPEG, batched)", gbs, timeit(dec, repeats=greps, sync=sync)))
        rows.append(
            (
                "end-to-end: GPU decode + CUDA bf16",
                gbs,
                timeit(lambda: bf16.embed(dec()), repeats=greps, sync=sync),
            )
        )
        for dec_kind in ("cpu", "cuda"):
            t = end_to_end(
                e2e_blobs,
                bf16,
                region=region,
                batch_size=gbs,
                decode=dec_kind,
                workers=args.threads,
            )
            rows.append((f"labeler embed end-to-end, bf16, {dec_kind} decode", len(e2e_blobs), t))
        device = torch.cuda.get_device_name(0)
    else:
        device = "GPU rows skipped (--device cpu or no CUDA device)"

    # -- table ----------------------------------------------------------------------------
    print(
        f"# embed throughput: EfficientNet-Lite0 @ {size}px, region={region}, {len(crops)} crops from {args.data}"
    )
    print(
        f"# CPU threads {args.threads} (os.cpu_count {os.cpu_count()}); {device}; torch {torch.__version__}"
    )
    base = next(t / b for w, b, t in rows if w.startswith("torch eager fp32 CPU"))
    print(f"| {'path':<44} | batch | crops/s | ms/batch | vs torch eager CPU |")
    print(f"|{'-' * 46}|------:|--------:|---------:|-------------------:|")
    for what, b, t in rows:
        vs = "-" if what.startswith("decode") else f"{base / (t / b):.1f}x"
        print(f"| {what:<44} | {b:5d} | {b / t:7.1f} | {t * 1000:8.1f} | {vs:>18} |")
    print(f"# max |torch - onnxruntime| feature difference: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
