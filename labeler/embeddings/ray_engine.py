"""``labeler embed --engine ray``: the embed step as a Ray Data pipeline.

manifest (face_id, crop path) -> ``map_batches`` decode/cut/resize tasks on CPUs ->
``map_batches`` model stage on a fixed actor pool (one actor per GPU with ``num_gpus=1`` on
CUDA clusters, a small CPU pool otherwise) -> the driver appends the same
``(face_id, vector)`` shards as the local engine, so runs are resumable and interchangeable
with ``--engine local``. On one machine the local engine is faster (no serialisation); Ray
pays off across several GPU nodes. Ray is imported only here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from labeler.embeddings.embed import (
    EmbedResult,
    ShardWriter,
    _progress,
    load_crops,
    make_config,
    plan_todo,
    prepare_key,
)
from labeler.regions import get_region
from labeler.workspace import Workspace

log = logging.getLogger(__name__)


def decode_batch(batch: dict[str, np.ndarray], *, region: str, size: int) -> dict[str, Any]:
    """Ray task body: ``{"face_id", "path"}`` -> ``{"face_id", "pixels" (N, S, S, 3) uint8}``."""
    pixels = load_crops(list(batch["path"]), region=region, size=size)
    return {"face_id": np.asarray(batch["face_id"]), "pixels": pixels}


class EmbedActor:
    """Ray actor: builds the backbone once, then embeds pixel batches."""

    def __init__(
        self,
        backbone: str,
        weights: str | None,
        device: str,
        runtime: str,
        num_threads: int | None,
        cache_dir: str | None,
        input_size: int | None = None,
    ) -> None:
        from labeler.embeddings.backbones import get_backbone

        self.backbone = get_backbone(
            backbone,
            weights=weights,
            device=device,
            runtime=runtime,
            num_threads=num_threads,
            cache_dir=cache_dir,
            input_size=input_size,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "face_id": np.asarray(batch["face_id"]),
            "vector": self.backbone.embed(np.ascontiguousarray(batch["pixels"])),
        }


def embed_faces_ray(
    ws: Workspace,
    *,
    backbone: str = "timm:efficientnet_lite0",
    region: str = "face",
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    runtime: str = "auto",
    batch_size: int = 32,
    shard_size: int = 2048,
    overwrite: bool = False,
    address: str | None = None,
    num_actors: int | None = None,
    progress: bool | None = None,
    input_size: int | None = None,
) -> EmbedResult:
    """Like :func:`labeler.embeddings.embed.embed_faces`, on a Ray cluster.

    Uses the running Ray session if there is one, else ``ray.init(address=address)``
    (``None``: a local session, shut down again at the end). ``device``: ``auto`` uses the
    cluster's GPUs when it has any. Every node must see the workspace path (shared file
    system) and have labeler installed; the driver writes the shards.
    """
    from labeler._deps import require
    from labeler.embeddings.backbones import BackboneError, get_backbone
    from labeler.embeddings.onnx_runtime import onnx_cache_dir

    ray = require("ray", extra="ray", purpose="--engine ray")
    require("ray.data", extra="ray", purpose="--engine ray")

    t0 = time.perf_counter()
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False} if address is None else {}
        ray.init(address=address, log_to_driver=False, **kwargs)
        started = True
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        if device == "cuda" and not gpus:
            raise BackboneError("--device cuda but the Ray cluster has no GPUs; use --device cpu")
        on_gpu = gpus > 0 and device in ("auto", "cuda")
        actor_device = "cuda" if on_gpu else "cpu"
        actor_runtime = "torch" if on_gpu and runtime == "auto" else runtime
        if on_gpu:
            n_actors = num_actors or gpus
            actor_cpus, threads = 1, None
        else:
            n_actors = num_actors or max(1, min(4, cpus // 4))
            actor_cpus = 1
            threads = max(1, cpus // (2 * n_actors))
        cache = str(onnx_cache_dir())

        # the driver resolves the config (and exports the ONNX file once for the CPU actors)
        probe = get_backbone(
            backbone,
            weights=weights,
            device="cpu",
            runtime="onnx" if actor_runtime in ("auto", "onnx") else "torch",
            cache_dir=cache,
            input_size=input_size,
        )
        bconf = probe.config
        if on_gpu:
            bconf = replace(
                bconf, runtime="torch", device="cuda", precision="bf16", channels_last=True
            )
        del probe
        config = make_config(
            bconf, region=region, batch_size=batch_size, shard_size=shard_size, engine="ray"
        )
        faces = ws.require_faces()
        prepare_key(ws, config, overwrite=overwrite)
        todo, n_done = plan_todo(ws, config.key, faces, crop=get_region(region).crop)
        ws.save_step_config("embed", asdict(config))
        writer = ShardWriter(ws, config.key, shard_size)
        if len(todo):
            import ray.data

            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            block_rows = max(batch_size, min(4 * batch_size, -(-len(todo) // cpus)))
            blocks = [todo.iloc[i : i + block_rows] for i in range(0, len(todo), block_rows)]
            ds = ray.data.from_pandas(blocks)
            ds = ds.map_batches(
                decode_batch,
                fn_kwargs={"region": region, "size": bconf.input_size},
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=1,
            )
            ds = ds.map_batches(
                EmbedActor,
                fn_constructor_kwargs={
                    "backbone": backbone,
                    "weights": None if weights is None else str(Path(weights).resolve()),
                    "device": actor_device,
                    "runtime": actor_runtime,
                    "num_threads": threads,
                    "cache_dir": cache,
                    "input_size": input_size,
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                num_cpus=actor_cpus,
                num_gpus=1 if on_gpu else 0,
            )
            bar = _progress(len(todo), desc=f"embed {config.key} (ray)", enabled=progress)
            try:
                for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    writer.add(list(out["face_id"]), np.asarray(out["vector"], dtype=np.float32))
                    bar.update(len(out["face_id"]))
                writer.close()
            finally:
                bar.close()
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    from labeler.embeddings import store

    return EmbedResult(
        key=config.key,
        path=store.embedding_dir(ws, config.key),
        n_faces=len(faces),
        n_new=writer.written,
        n_before=n_done,
        seconds=seconds,
        config=config,
    )
