"""``labeler embed --engine ray``: the embed step as a Ray Data pipeline.

manifest (face_id, crop path) -> ``map_batches`` decode/cut/resize tasks on CPUs ->
``map_batches`` model stage on a fixed actor pool (one actor per GPU with ``num_gpus=1`` on
CUDA clusters, a small CPU pool otherwise) -> the driver appends the same
``(face_id, vector)`` shards as the local engine, so runs are resumable and interchangeable
with ``--engine local``. On one machine the local engine is faster (no serialisation); Ray
pays off across several GPU nodes. Ray is imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from labeler._io import progress_bar
from labeler.embeddings.embed import (
    BlockWriters,
    EmbedResult,
    FeatureBlocks,
    load_crop,
    make_config,
    plan_todo,
    write_stream,
)
from labeler.errors import InputError
from labeler.faces.records import FaceCrops
from labeler.faces.regions import CROP_SIZE, get_region
from labeler.workspace import Workspace

log = logging.getLogger(__name__)


def decode_batch(batch: dict[str, np.ndarray], *, kind: str) -> dict[str, Any]:
    """Ray task body: ``{"face_id", "path"}`` -> ``{"face_id", "crops" (N, 256, 256, 3)
    uint8}``, the crop files of ``kind`` (aligned or box) decoded as the local engine does."""
    crops = [load_crop(p, size=CROP_SIZE) for p in batch["path"]]
    pixels = np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return {"face_id": np.asarray(batch["face_id"]), "crops": pixels}


class EmbedActor:
    """Ray actor: builds the backbone once, then computes the block of each batch with the
    same :class:`FeatureBlocks` as the local engine."""

    def __init__(
        self,
        backbone: str,
        weights: str | None,
        device: str,
        runtime: str,
        num_threads: int | None,
        cache_dir: str | None,
        region: str = "face",
        input_size: int | None = None,
        batch_size: int = 32,
        precision: str = "auto",
    ) -> None:
        from labeler.embeddings.backbones import get_backbone

        bb = get_backbone(
            backbone,
            weights=weights,
            device=device,
            runtime=runtime,
            precision=precision,
            num_threads=num_threads,
            cache_dir=cache_dir,
            input_size=input_size,
        )
        self.blocks = FeatureBlocks([(bb, [region])], batch_size=batch_size)
        self.kind = get_region(region).crop
        (self.key,) = self.blocks.keys

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(f) for f in batch["face_id"]]
        crops = np.ascontiguousarray(batch["crops"])
        faces = [
            FaceCrops(f, c, None) if self.kind == "aligned" else FaceCrops(f, c[:0], c)
            for f, c in zip(ids, crops, strict=True)
        ]
        return {"face_id": np.asarray(ids), "vector": self.blocks.compute(faces)[self.key]}


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
    t0 = time.perf_counter()
    with ray_session(address) as ray:
        from labeler.embeddings.backbones import workspace_precision
        from labeler.embeddings.store import list_embeddings

        # the workspace's precision (never int8 and float features mixed in one workspace)
        device, precision = workspace_precision(list_embeddings(ws), backbone, device=device)
        plan = plan_actors(ray, device=device, runtime=runtime, num_actors=num_actors)
        bconf = actor_backbone_config(plan, backbone, weights, precision, input_size)
        config = make_config(
            bconf, region=region, batch_size=batch_size, shard_size=shard_size, engine="ray"
        )
        faces = ws.require_faces()
        # the driver's writer is the local engine's (BlockWriters: config check, resume)
        writers = BlockWriters(
            ws,
            FeatureBlocks([(_ConfigOnly(bconf), [region])], batch_size=batch_size),  # type: ignore[list-item]
            shard_size=shard_size,
            overwrite=overwrite,
            engine="ray",
        )
        todo, n_done = plan_todo(ws, config.key, faces, crop=get_region(region).crop)
        ws.save_step_config("embed", asdict(config))
        if len(todo):
            # the workers read the crop files (labeler run --engine ray ships them instead)
            check_cluster(ray, Path(todo["path"].iloc[0]), what="the workspace")
            import ray.data

            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            block_rows = max(batch_size, min(4 * batch_size, -(-len(todo) // plan.cpus)))
            blocks = [todo.iloc[i : i + block_rows] for i in range(0, len(todo), block_rows)]
            ds = ray.data.from_pandas(blocks)
            ds = ds.map_batches(
                decode_batch,
                fn_kwargs={"kind": get_region(region).crop},
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=plan.task_cpus,
            )
            ds = ds.map_batches(
                EmbedActor,
                fn_constructor_kwargs={
                    "backbone": backbone,
                    "weights": None if weights is None else str(Path(weights).resolve()),
                    "device": plan.device,
                    "runtime": plan.runtime,
                    "num_threads": plan.threads,
                    "cache_dir": plan.cache_dir,
                    "region": region,
                    "input_size": input_size,
                    "batch_size": batch_size,
                    "precision": plan.precision(precision),
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=plan.n_actors),
                num_cpus=plan.actor_cpus,
                num_gpus=1 if plan.on_gpu else 0,
            )
            bar = progress_bar(len(todo), desc=f"embed {config.key} (ray)", enabled=progress)

            def results() -> Any:
                for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    ids = [str(f) for f in out["face_id"]]
                    yield ids, {config.key: np.asarray(out["vector"], dtype=np.float32)}
                    bar.update(len(ids))

            try:
                write_stream(results(), writers)
            finally:
                bar.close()
    seconds = time.perf_counter() - t0
    from labeler.embeddings import store

    return EmbedResult(
        key=config.key,
        path=store.embedding_dir(ws, config.key),
        n_faces=len(faces),
        n_new=writers.writers[config.key].written,
        n_before=n_done,
        seconds=seconds,
        config=config,
    )


@dataclass(frozen=True)
class ActorPlan:
    """Where the model actors of a Ray pipeline run and how many there are."""

    on_gpu: bool
    device: str  # the actors' device: cuda (one actor a GPU) or cpu
    runtime: str
    n_actors: int
    threads: int | None  # the model's CPU threads in each actor (None: the runtime's own)
    cpus: int  # CPUs in the cluster
    cache_dir: str  # the ONNX cache the actors read (made once by the driver)
    #: CPUs each actor and each CPU task reserves: 1, or shares of one on a one-CPU cluster
    #: (an actor holding the only CPU would leave none for the tasks that feed it)
    actor_cpus: float = 1.0
    task_cpus: float = 1.0

    def precision(self, workspace: str) -> str:
        """The actors' precision: the GPU's own (bf16) there, the workspace's on CPUs."""
        return "auto" if self.on_gpu else workspace


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """The ``ray`` module, connected (:func:`connect`) for the block; a session this started
    is shut down after it. One line naming the extra when Ray is not installed."""
    from labeler._deps import require

    ray = require("ray", extra="ray", purpose="--engine ray")
    require("ray.data", extra="ray", purpose="--engine ray")
    started = connect(ray, address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def connect(ray: Any, address: str | None) -> bool:
    """Join this process's Ray session, else ``ray.init(address=address)``: ``None`` starts a
    new local session of this machine's cores (never a cluster Ray would find on its own:
    ``auto`` asks for that one). True when this call started it (the caller shuts it down)."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def plan_actors(
    ray: Any, *, device: str, runtime: str = "auto", num_actors: int | None = None
) -> ActorPlan:
    """The model actors for the cluster ``ray`` is connected to: one a GPU when it has GPUs
    (and ``device`` allows them), else a small CPU pool (one actor per 4 CPUs, at most 4),
    each with a share of the CPUs as model threads."""
    from labeler.embeddings.backbones import BackboneError
    from labeler.embeddings.onnx_runtime import onnx_cache_dir

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if device == "cuda" and not gpus:
        raise BackboneError("--device cuda but the Ray cluster has no GPUs; use --device cpu")
    on_gpu = gpus > 0 and device in ("auto", "cuda")
    if on_gpu:
        n = num_actors or gpus
        return ActorPlan(
            True,
            "cuda",
            "torch" if runtime == "auto" else runtime,
            n,
            None,
            cpus,
            str(onnx_cache_dir()),
        )
    n = num_actors or max(1, min(4, cpus // 4))
    threads = max(1, cpus // (2 * n))
    # each actor reserves the CPUs its model threads use; the rest feed it (on one CPU:
    # half each, or an actor would hold the only CPU and starve the tasks that feed it)
    actor_cpus = float(threads) if cpus >= n * threads + 1 else cpus / (2 * n)
    return ActorPlan(
        False, "cpu", runtime, n, threads, cpus, str(onnx_cache_dir()), actor_cpus,
        min(1.0, cpus - n * actor_cpus),
    )  # fmt: skip


def actor_backbone_config(
    plan: ActorPlan,
    backbone: str,
    weights: str | os.PathLike[str] | None,
    precision: str,
    input_size: int | None,
) -> Any:
    """The :class:`~labeler.embeddings.types.BackboneConfig` the actors of ``plan`` will run
    (their stored key and fingerprint), resolved on the driver, which also exports the ONNX
    file once into the cache the CPU actors read."""
    from labeler.embeddings.backbones import get_backbone

    probe = get_backbone(
        backbone,
        weights=weights,
        device="cpu",
        runtime="onnx" if plan.runtime in ("auto", "onnx") else "torch",
        precision=plan.precision(precision),
        cache_dir=plan.cache_dir,
        input_size=input_size,
    )
    bconf = probe.config
    if plan.on_gpu:
        bconf = replace(bconf, runtime="torch", device="cuda", precision="bf16", channels_last=True)
    return bconf


def _node_facts(sample: str | None) -> dict[str, Any]:
    """Ray task body of :func:`check_cluster`: what one node has."""
    import os
    import platform

    import labeler
    from labeler._deps import available

    return {
        "host": platform.node(),
        "labeler": labeler.__version__,
        "python": platform.python_version(),
        "reads_photos": sample is None or os.access(sample, os.R_OK),
        "missing": [m for m in ("mediapipe", "onnxruntime", "cv2") if not available(m)],
    }


def check_cluster(ray: Any, sample: Path | None, *, what: str) -> int:
    """One task on every alive node with CPUs: the same labeler and Python as the driver, its
    packages, and ``sample`` (a file of ``what``, e.g. the photo folder) readable at the same
    path. Raises :class:`InputError` (one line naming the node and the fix); returns the
    number of nodes."""
    import platform

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import labeler

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    facts = ray.remote(num_cpus=0.01)(_node_facts)
    got = ray.get(
        [
            facts.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(None if sample is None else str(sample))
            for n in nodes
        ]
    )
    for node, f in zip(nodes, got, strict=True):
        where = f"Ray node {f['host']} ({node.get('NodeManagerAddress')})"
        if f["labeler"] != labeler.__version__ or f["python"] != platform.python_version():
            raise InputError(
                f"{where} has labeler {f['labeler']} on Python {f['python']}, the driver "
                f"labeler {labeler.__version__} on Python {platform.python_version()}; install "
                "the same labeler[ray] on every node"
            )
        if f["missing"]:
            raise InputError(
                f"{where} lacks {', '.join(f['missing'])}; install labeler[ray] there as on the "
                "driver"
            )
        if not f["reads_photos"]:
            raise InputError(
                f"{where} cannot read {sample}: every node must see {what} at the same path (a "
                "shared file system such as NFS), or run with --engine local"
            )
    return len(nodes)


class _ConfigOnly:
    """The driver builds no model (the actors do): what :class:`BlockWriters` reads of one."""

    def __init__(self, config: Any) -> None:
        self.config = config
