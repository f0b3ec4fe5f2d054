"""``labeler run``: ingest + detect + embed + cues + cluster, the one command for the common case.

Each step is incremental: re-running on the same folder is a no-op, and images added to the
folder since the last run are the only ones processed (then the grouping is refreshed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.cluster.types import ClusterConfig
from labeler.embeddings.types import DEFAULT_BACKBONE
from labeler.errors import InputError
from labeler.workspace import Workspace

if TYPE_CHECKING:
    from labeler.detect.pipeline import DetectResult
    from labeler.embeddings import Backbone
    from labeler.embeddings.embed import FeatureBlocks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Options of :func:`run_pipeline` (saved to ``steps/run.json``).

    ``cluster``: the options of the clustering step (the same as ``labeler cluster``'s,
    :class:`~labeler.cluster.types.ClusterConfig`), used when the workspace has no cluster
    run yet; ``None`` stops after embedding (``labeler run --no-cluster``). ``True`` and
    ``False`` are accepted for the defaults and for ``None``.
    """

    detector: str = "mediapipe"
    backbone: str = DEFAULT_BACKBONE
    features: str = "auto"
    device: str = "auto"
    batch_size: int = 64
    cluster: ClusterConfig | None = ClusterConfig()
    workers: int | None = None
    #: CPU threads of the model (default: all cores; its idle threads sleep, so while the
    #: detect threads run they share the cores, and the last batches get all of them)
    embed_threads: int | None = None
    #: ``auto``: the fused GPU pass (:mod:`labeler.detect.fused`) when the model runs on CUDA and the
    #: detector is MediaPipe; ``threads``: the CPU path everywhere; ``fused``: the fused pass
    #: (also on CPU: slower there, for checking it).
    detect_engine: str = "auto"
    #: symlinks may lead out of the photo folder (``--follow-links``, :mod:`labeler.fence`);
    #: ``None``: as the workspace recorded for the folder (off for a new one)
    follow_links: bool | None = None
    #: ``local``: this machine's threads; ``ray``: the whole stream on Ray Data
    #: (:mod:`labeler.ray_stream`), on the cluster at ``address`` (None: a local Ray session)
    engine: str = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise InputError(f"engine must be local or ray, got {self.engine!r}")
        if self.address is not None and self.engine != "ray":
            raise InputError("an address is for engine='ray' (--engine ray --address ...)")
        if isinstance(self.cluster, bool):  # the earlier on/off switch
            object.__setattr__(self, "cluster", ClusterConfig() if self.cluster else None)
        elif self.cluster is not None and not isinstance(self.cluster, ClusterConfig):
            raise TypeError(
                f"RunConfig.cluster must be a ClusterConfig or None, got {self.cluster!r}"
            )


@dataclass(frozen=True)
class RunResult:
    """What one ``labeler run`` did, with the seconds each step took."""

    images_ok: int
    image_errors: int
    faces: int
    embedded: dict[str, int]
    clusters: int | None
    timings: dict[str, float] = field(default_factory=dict)


def feature_inputs(spec: str, backbone: str) -> tuple[list[tuple[str, int | None]], bool]:
    """``(region, input size)`` pairs to embed with ``backbone`` (size ``None``: the model's
    own) and whether colour cues are needed for ``spec``.

    ``spec`` is a :mod:`labeler.features` spec (``auto``, or stored keys joined by ``+``); a
    bare region name (``face``, ``lower``...) means that one CNN block at the model's size.

    >>> feature_inputs("cues__face+efficientnet_lite0-96px__nose", "timm:efficientnet_lite0")
    ([('nose', 96)], True)
    """
    from labeler.embeddings.store import key_prefix, parse_key
    from labeler.faces.regions import REGIONS
    from labeler.features import PRESETS, parse_spec

    if spec in REGIONS:
        return [(spec, None)], False
    prefix = key_prefix(backbone)
    if spec in PRESETS:
        keys = [k.format(backbone=prefix) for k, _ in PRESETS[spec]]
    else:
        keys = [k for k, _ in parse_spec(spec)]
    regions = []
    for k in keys:
        if k.startswith("cues__"):
            continue
        name, size, region = parse_key(k)
        if name == prefix:
            regions.append((region, size))
    return regions, any(k.startswith("cues__") for k in keys)


def run_pipeline(
    folder: str | Path, ws: Workspace, *, config: RunConfig = RunConfig()
) -> RunResult:
    """Run every step on ``folder`` into ``ws``; returns a :class:`RunResult`.

    >>> run_pipeline("photos", Workspace.open("ws", create=True))  # doctest: +SKIP
    """
    from labeler.ingest import ingest_folder

    timings: dict[str, float] = {}
    ws.save_step_config("run", config)

    t = time.perf_counter()
    # header only: detection decodes every photo next and records the damaged ones
    ingested = ingest_folder(
        ws, folder, workers=config.workers, verify_side=0, follow_links=config.follow_links
    )
    timings["ingest"] = time.perf_counter() - t
    log.info("ingest: %s", ingested)

    regions, need_cues = feature_inputs(config.features, config.backbone)
    t = time.perf_counter()
    if config.engine == "ray":
        from labeler.ray_stream import detect_and_embed_ray

        local_only = {
            "--workers": config.workers,
            "--embed-threads": config.embed_threads,
            "--detect-engine": None if config.detect_engine == "auto" else config.detect_engine,
        }
        if any(v is not None for v in local_only.values()):
            log.warning(
                "%s apply to the local engine only; on Ray the cluster's CPUs set the tasks "
                "and the actors' threads",
                ", ".join(k for k, v in local_only.items() if v is not None),
            )

        detected, embedded = detect_and_embed_ray(
            ws,
            detector=config.detector,
            backbone=config.backbone,
            inputs=regions,
            cues=need_cues,
            device=config.device,
            batch_size=config.batch_size,
            address=config.address,
        )
    else:
        detected, embedded = _detect_and_embed(ws, config, _blocks(ws, config, regions, need_cues))
    timings["detect+embed"] = time.perf_counter() - t
    log.info("detect: %s", detected)
    _record_decode_errors(ws)

    faces = ws.faces()
    n_clusters: int | None = None
    if len(faces):
        if config.cluster is not None:
            n_clusters, timings["cluster"] = _refresh_clusters(ws, config)
    else:
        log.warning("no faces found in %s; nothing to embed or cluster", folder)

    status = ws.images()["status"]
    result = RunResult(
        images_ok=int((status == "ok").sum()),
        image_errors=int((status == "error").sum()),
        faces=len(faces),
        embedded=embedded,
        clusters=n_clusters,
        timings=timings,
    )
    ws.save_step_config("run_result", result)
    return result


def _blocks(
    ws: Workspace, config: RunConfig, regions: list[tuple[str, int | None]], cues: bool
) -> FeatureBlocks:
    """The local engine's :class:`~labeler.embeddings.embed.FeatureBlocks`: one model per
    input size, at the precision the workspace's features were made with."""
    from labeler.embeddings import get_backbone
    from labeler.embeddings.backbones import workspace_precision
    from labeler.embeddings.embed import FeatureBlocks
    from labeler.embeddings.store import list_embeddings

    # a workspace keeps the precision its features were made with (never int8 and float mixed)
    device, precision = workspace_precision(
        list_embeddings(ws), config.backbone, device=config.device
    )
    groups: list[tuple[Backbone, list[str]]] = []  # one model per input size
    for size in dict.fromkeys(s for _, s in regions):
        bb = get_backbone(
            config.backbone,
            device=device,
            precision=precision,
            num_threads=config.embed_threads,
            input_size=size,
        )
        groups.append((bb, [r for r, s in regions if s == size]))
    return FeatureBlocks(groups, cues=cues, batch_size=config.batch_size)


def _record_decode_errors(ws: Workspace) -> None:
    """Photos that passed the header-only ingest but failed to decode in detect become
    ``error`` rows of the images table, with the decoder's one-line reason."""
    from labeler.detect.pipeline import read_detect_log
    from labeler.ingest import record_unreadable

    dl = read_detect_log(ws)
    bad = dl[dl["error"].notna()]
    record_unreadable(ws, dict(zip(bad["image_id"], bad["error"], strict=True)))


def _detect_and_embed(
    ws: Workspace, config: RunConfig, blocks: FeatureBlocks
) -> tuple[DetectResult, dict[str, int]]:
    """Detect and embed at the same time, as one stream: the detect threads (or the fused
    GPU pass) write each face's row and crop files and put its crops' pixels on a bounded
    queue (:class:`labeler.faces.records.FaceQueue`); one embedding thread takes them in batches
    and computes every feature block from those pixels (:func:`embed_workspace`: ONNX
    Runtime and torch release the GIL, so the model runs while decode and detection go on),
    then embeds from the crop files the faces the queue did not bring (an earlier,
    interrupted run). Both steps stay resumable: an interrupted run leaves committed faces
    and embedded shards, and the next run continues each step where it stopped.
    """
    import threading

    from labeler.detect.pipeline import default_chunk_size, detect_workspace
    from labeler.embeddings.embed import embed_workspace
    from labeler.faces.records import FaceQueue

    embedded: dict[str, int] = {}
    errors: list[BaseException] = []
    n_images = int((ws.images()["status"] == "ok").sum())
    chunk = default_chunk_size(n_images)
    engine = _fused_engine(config, *(blocks.groups[0] if blocks.groups else (None, [])))
    # the fused pass writes its own shards: its faces (and those of the photos it hands to
    # the CPU path) are embedded after it, from the crop files, so no two writers share a key
    queue = FaceQueue(FACE_QUEUE_SIZE, kinds=blocks.kinds) if engine is None else None

    def embedder() -> None:
        try:
            for res in embed_workspace(
                ws,
                blocks,
                source=queue.batches(blocks.batch_size) if queue is not None else None,
                workers=config.workers or 2,
                progress=None,
            ):
                embedded[res.key] = res.n_new
        except BaseException as exc:  # re-raised in the caller's thread
            if queue is not None:
                queue.abort()
            errors.append(exc)

    worker = threading.Thread(target=embedder, name="labeler-embed", daemon=True)
    if queue is not None and blocks.keys:
        worker.start()
    try:
        detected = detect_workspace(
            ws,
            detector=config.detector,
            workers=config.workers,
            chunk_size=max(chunk, 1024) if engine is not None else chunk,
            progress=None,
            engine=engine,
            face_sink=queue,
        )
    finally:
        if engine is not None:
            engine.close()
            log.info("fused GPU pass: %s", engine.stats)
        if queue is not None:
            queue.close()
            if worker.is_alive():
                worker.join()
    if queue is None and blocks.keys and ws.faces_path.exists():
        embedder()  # after the fused pass, from the crop files
    if errors:
        raise errors[0]
    if queue is not None:
        log.info("faces handed over in memory: %s", queue.stats())
    return detected, embedded


#: Faces (aligned + box crop pixels, ~400 KB) detection may hand ahead of the embedder.
FACE_QUEUE_SIZE = 512


def _torch_on_cuda(backbone: Backbone | None) -> bool:
    """The model runs in torch on a CUDA device (GPU decode and the fused pass apply)."""
    return (
        backbone is not None
        and backbone.config.runtime == "torch"
        and backbone.config.device.startswith("cuda")
    )


def _fused_engine(config: RunConfig, backbone: Backbone | None, regions: list[str]) -> Any:
    """The fused GPU pass when ``config.detect_engine`` asks for it (see :class:`RunConfig`)."""
    if config.detect_engine not in ("auto", "threads", "fused"):
        raise InputError(
            f"detect_engine must be auto, threads or fused, got {config.detect_engine!r}"
        )
    if config.detect_engine == "threads" or config.detector != "mediapipe":
        return None
    cuda = _torch_on_cuda(backbone)
    if config.detect_engine == "auto" and not cuda:
        return None
    from labeler.detect.fused import FusedEngine

    # on CPU with ONNX Runtime the engine writes crops only; the closing embed pass embeds them
    torch_rt = backbone is not None and backbone.config.runtime == "torch"
    return FusedEngine(
        backbone if torch_rt else None,
        regions=regions,
        device=backbone.config.device if cuda else "cpu",  # type: ignore[union-attr]
    )


def _refresh_clusters(ws: Workspace, config: RunConfig) -> tuple[int, float]:
    """Cluster with ``config.cluster`` when no run exists, or when it sets an option the
    current run was not made with (:func:`asks_for_new_clusters`); otherwise place the new
    faces into the current run.

    New faces join the existing clusters and map by their nearest neighbours
    (:func:`labeler.cluster.place.place_new_faces`), so labels and cluster ids stay stable;
    ``labeler cluster`` re-clusters everything.
    """
    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.place import place_new_faces
    from labeler.cluster.run import fit_clusters
    from labeler.cluster.store import current_run_id, load_run, save_run

    t = time.perf_counter()
    cluster_config = config.cluster if config.cluster is not None else ClusterConfig()
    current = current_run_id(ws)
    if current is None or asks_for_new_clusters(
        cluster_config, load_run(ws, current).params.get("config", {})
    ):
        face_ids, X, spec = load_cluster_features(ws, config.features)
        fit = fit_clusters(face_ids, X, config=cluster_config, feature_spec=spec)
        save_run(ws, fit.result, artifacts=fit.artifacts)
        labels = fit.result.labels
    else:
        run_id, n_new = place_new_faces(ws, feature_spec=config.features)
        log.info("cluster: placed %d new faces into the current run", n_new)
        labels = load_run(ws, run_id).labels
    n = len(set(labels.tolist()) - {-1})
    return n, time.perf_counter() - t


def asks_for_new_clusters(config: ClusterConfig, run_config: dict[str, Any]) -> bool:
    """True when ``config`` sets an option (a field that differs from ``ClusterConfig()``)
    to another value than ``run_config``, the resolved config saved with a run: then
    ``labeler run`` re-clusters instead of placing new faces into that run.

    >>> asks_for_new_clusters(ClusterConfig(), {"algorithm": "hdbscan"})
    False
    >>> asks_for_new_clusters(ClusterConfig(algorithm="kmeans"), {"algorithm": "hdbscan"})
    True
    """
    from dataclasses import fields

    default = ClusterConfig()
    for f in fields(ClusterConfig):
        asked = getattr(config, f.name)
        if asked == getattr(default, f.name):
            continue
        if run_config.get(f.name) != asked:
            return True
    return False
