"""``labeler run --engine ray``: the whole stream of ``labeler run`` as one Ray Data pipeline.

photos ``(image_id, path)`` -> ``map_batches`` cut tasks on the cluster's CPUs (decode, the
upright check, detection, alignment, the box crop: :func:`labeler.detect.pipeline.cut_photo`,
the local engine's own per-photo path) -> ``map_batches`` feature actors (every block of the
feature set and the colour cues: :class:`labeler.embeddings.embed.FeatureBlocks`, one actor a
GPU where the cluster has GPUs) -> the driver, which writes the crop files, the faces rows
and the feature shards through :func:`labeler.detect.pipeline.detect_workspace` (this module's
:class:`RayRunEngine` is a :class:`~labeler.detect.pipeline.DetectEngine`). Commits, the detect
log, resuming and the feature keys are the local engine's, so a workspace can be continued by
either engine.

What the cluster needs (checked at start by :func:`check_cluster`, one task on every node):
the photo folder readable at the same path on every node (Ray Data's convention for file
inputs: a shared file system), and the same labeler on every node with its detector and
model packages. The workspace is written by the driver only; workers never touch it.

Faults are Ray's: a task on a node that dies is retried elsewhere and its lost outputs are
rebuilt from lineage, a dead actor is restarted (Ray Data's defaults), and rows come back in
input order, so the result does not change. A killed driver loses at most the chunk in
flight; the next run resumes from the detect log, as with the local engine.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labeler.embeddings.ray_engine import check_cluster

if TYPE_CHECKING:
    import pyarrow as pa

    from labeler.detect.pipeline import DetectConfig, ImageOutcome
    from labeler.embeddings.embed import BlockWriters
    from labeler.embeddings.ray_engine import ActorPlan
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

#: What a feature actor holds (its model, runtime and libraries: about 1.3 GB measured on the
#: CPU), declared so that Ray places actors where they fit; being unlike the cut tasks' needs,
#: it also keeps Ray Data from fusing the two stages into one actor process.
ACTOR_MEMORY = int(1.5 * 2**30)

#: Photos per Ray block (one cut task each): small, so a retried task redoes little and the
#: cluster's CPUs share the work evenly; more on big folders, so that there are at most
#: ``MAX_BLOCKS`` (Ray Data spends about 4 ms making a block and 15 ms running one: a no-op
#: stream of 133,000 rows in blocks of 8 did not end within 300 s on 2 cores; in 1,024
#: blocks it took 45 s, 5.5 s of it to plan).
PHOTOS_PER_BLOCK = 8
MAX_BLOCKS = 1024
#: Faces whose crop files the driver reads and ships at a time (about 400 MB of JPEG bytes),
#: when a run finds faces without features (detected by ``labeler detect``, or by a run that
#: was killed between a commit and its shards).
EMBED_WINDOW = 8192


# --- on the workers ----------------------------------------------------------------------

_DETECTORS: dict[str, Any] = {}


def _detector(cfg: DetectConfig) -> Any:
    """One detector per worker process and configuration (a worker runs many tasks)."""
    key = repr(cfg)
    if key not in _DETECTORS:
        _DETECTORS[key] = cfg.build_detector()
    return _DETECTORS[key]


def cut_batch(batch: pa.Table, *, cfg: DetectConfig, box: bool | None) -> pa.Table:
    """Ray task body: ``(image_id, path)`` rows -> ``(image_id, payload)``, the payload one
    photo's :func:`~labeler.detect.pipeline.cut_photo` (detections, crop JPEG bytes, the error
    or note, timings), pickled."""
    import pyarrow as pa

    from labeler.detect.pipeline import cut_photo
    from labeler.workspace import face_id_for

    det = _detector(cfg)
    payloads = []
    ids = batch.column("image_id").to_pylist()
    for image_id, path in zip(ids, batch.column("path").to_pylist(), strict=True):
        got = cut_photo(Path(path), det, cfg, box=box, stored=False)
        payloads.append(
            pickle.dumps(
                {
                    "detector": det.name,
                    "face_ids": [face_id_for(image_id, i) for i in range(len(got.cuts))],
                    "detections": [c.detection for c in got.cuts],
                    "aligned": [c.aligned_jpeg for c in got.cuts],
                    "box": [c.box_jpeg for c in got.cuts],
                    "error": got.error,
                    "note": got.note,
                    "decode_s": got.decode_s,
                    "detect_s": got.detect_s,
                },
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        )
    return pa.table(
        {"image_id": pa.array(ids, pa.string()), "payload": pa.array(payloads, pa.binary())}
    )


@dataclass(frozen=True)
class BlockSpec:
    """What a feature actor builds: the backbone once per input size with its regions, the
    cues, and how it runs (from the driver's :class:`~labeler.embeddings.ray_engine.ActorPlan`)."""

    backbone: str
    groups: tuple[tuple[int | None, tuple[str, ...]], ...]
    cues: bool
    device: str
    runtime: str
    precision: str
    threads: int | None
    cache_dir: str
    batch_size: int
    weights: str | None = None


class FeatureActor:
    """Ray actor: builds the :class:`~labeler.embeddings.embed.FeatureBlocks` of ``spec``
    once, then adds each photo's vectors (``key -> (faces, dim)``, pickled) to its row. The
    crops are decoded from the JPEG bytes the workspace stores, as the local engine does."""

    def __init__(self, spec: BlockSpec) -> None:
        from labeler.embeddings.backbones import get_backbone
        from labeler.embeddings.embed import FeatureBlocks

        groups = [
            (
                get_backbone(
                    spec.backbone,
                    weights=spec.weights,
                    device=spec.device,
                    runtime=spec.runtime,
                    precision=spec.precision,
                    num_threads=spec.threads,
                    cache_dir=spec.cache_dir,
                    input_size=size,
                ),
                list(regions),
            )
            for size, regions in spec.groups
        ]
        self.blocks = FeatureBlocks(groups, cues=spec.cues, batch_size=spec.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        photos = [pickle.loads(p) for p in batch.column("payload").to_pylist()]
        faces = [face for ph in photos for face in face_crops(ph)]
        X = self.blocks.compute(faces) if faces else {}
        return with_results(batch, photos, lambda a, b: {k: v[a:b] for k, v in X.items()})


def with_results(batch: pa.Table, photos: list[dict[str, Any]], part: Any) -> pa.Table:
    """``batch`` with a ``vectors`` column: for each photo, ``part(first, end)`` of the
    batch's face rows (its faces), pickled."""
    import pyarrow as pa

    out, start = [], 0
    for ph in photos:
        n = len(ph["face_ids"])
        out.append(pickle.dumps(part(start, start + n), protocol=pickle.HIGHEST_PROTOCOL))
        start += n
    return batch.append_column("vectors", pa.array(out, pa.binary()))


def face_crops(photo: dict[str, Any]) -> list[Any]:
    """The :class:`~labeler.faces.records.FaceCrops` of one payload (crops decoded from the
    stored JPEG bytes, so the pixels equal those of the crop files)."""
    from labeler.faces.records import FaceCrops
    from labeler.imageio import decode_crop_bytes

    return [
        FaceCrops(fid, decode_crop_bytes(a), None if b is None else decode_crop_bytes(b))
        for fid, a, b in zip(photo["face_ids"], photo["aligned"], photo["box"], strict=True)
    ]


# --- on the driver -----------------------------------------------------------------------


def photo_table(image_ids: Sequence[str], paths: Sequence[str | Path]) -> pa.Table:
    """The ``(image_id, path)`` table a photo stream starts from."""
    import pyarrow as pa

    return pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "path": pa.array([str(p) for p in paths], pa.string()),
        }
    )


def photo_dataset(
    table: pa.Table,
    first: Any,
    kwargs: dict[str, Any],
    actor: type,
    actor_args: tuple[Any, ...],
    plan: ActorPlan,
    batch_size: int,
) -> Any:
    """The pipeline: ``table`` in blocks of :data:`PHOTOS_PER_BLOCK` rows (at most
    :data:`MAX_BLOCKS` blocks) -> ``first(batch,
    **kwargs)`` as CPU tasks -> ``actor(*actor_args)`` on the plan's actor pool (one actor a
    GPU on GPU clusters), ``batch_size`` rows a call; rows come out in input order."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # chunks commit in input order
    step = max(PHOTOS_PER_BLOCK, -(-len(table) // MAX_BLOCKS))
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(table), step)])
    ds = ds.map_batches(first, fn_kwargs=kwargs, batch_format="pyarrow", num_cpus=plan.task_cpus)
    return ds.map_batches(
        actor,
        fn_constructor_args=actor_args,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.n_actors),
        num_cpus=plan.actor_cpus,
        memory=ACTOR_MEMORY,
        num_gpus=1 if plan.on_gpu else 0,
    )


def iterate(ds: Any) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """``(image_id, payload, vectors)`` of each row of ``ds``, unpickled, in order."""
    for out in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for image_id, payload, vectors in zip(
            out.column("image_id").to_pylist(),
            out.column("payload").to_pylist(),
            out.column("vectors").to_pylist(),
            strict=True,
        ):
            yield image_id, pickle.loads(payload), pickle.loads(vectors)


class RayRunEngine:
    """A :class:`~labeler.detect.pipeline.DetectEngine` that streams the photos through the
    Ray pipeline of this module: :meth:`start` plans the whole run once, each call then takes
    its chunk's photos from the stream (in input order), writes their crop files and hands
    their vectors to ``writers`` (flushed before the chunk's faces are committed)."""

    def __init__(
        self,
        ray: Any,
        spec: BlockSpec,
        plan: ActorPlan,
        writers: BlockWriters,
        *,
        progress: bool | None = None,
    ) -> None:
        self.ray, self.spec, self.plan, self.writers = ray, spec, plan, writers
        self.kinds = writers.blocks.kinds
        self.progress = progress
        self._rows: Iterator[tuple[str, dict[str, Any], dict[str, np.ndarray]]] | None = None
        self._bar: Any = None

    def start(self, ws: Workspace, items: list[tuple[str, Path]], cfg: DetectConfig) -> None:
        from labeler._io import progress_bar

        check_cluster(self.ray, items[0][1] if items else None, what="the photo folder")
        box = True if "box" in self.kinds else None
        ds = photo_dataset(
            photo_table([i for i, _ in items], [p for _, p in items]), cut_batch,
            {"cfg": cfg, "box": box}, FeatureActor, (self.spec,), self.plan, self.spec.batch_size,
        )  # fmt: skip
        self._rows = iterate(ds)
        self._bar = progress_bar(len(items), desc="run (ray)", enabled=self.progress, unit="img")

    def __call__(
        self, ws: Workspace, items: list[tuple[str, Path]], cfg: DetectConfig, cpu: Any
    ) -> list[ImageOutcome]:
        from labeler.detect.pipeline import ImageOutcome, store_face

        if self._rows is None:
            raise RuntimeError("RayRunEngine.start was not called before the first chunk")
        out = []
        for image_id, _ in items:
            got_id, ph, X = next(self._rows)
            if got_id != image_id:  # preserve_order: a bug, never the user's input
                raise RuntimeError(f"Ray stream out of order: {got_id} for {image_id}")
            rows = [
                store_face(ws, image_id, i, d, ph["detector"], ph["aligned"][i], ph["box"][i])
                for i, d in enumerate(ph["detections"])
            ]
            if rows:
                self.writers.add(ph["face_ids"], X)
            whole = any(d.whole_image for d in ph["detections"])
            out.append(
                ImageOutcome(
                    image_id,
                    rows,
                    whole,
                    ph["error"],
                    ph["decode_s"],
                    ph["detect_s"],
                    ph["note"],
                )
            )
            self._bar.update(1)
        for writer in self.writers.writers.values():
            writer.close()  # this chunk's vectors are on disk before its faces are committed
        return out

    def close(self) -> None:
        """End the stream (its iterator holds the dataset's execution open)."""
        if self._rows is not None:
            self._rows.close()  # type: ignore[attr-defined]
            self._rows = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def embed_missing(self, ws: Workspace) -> int:
        """Faces of ``faces.parquet`` some block lacks (an earlier run was killed between a
        commit and its shards, or ran other blocks): their crop files, read by the driver,
        through the same feature actors. Returns the faces embedded."""
        import pyarrow as pa

        from labeler.embeddings.embed import crop_paths

        faces = ws.faces()
        self.writers.refresh()
        todo = faces[faces["face_id"].isin(set(self.writers.missing(faces["face_id"])))]
        if not len(todo):
            return 0
        if "box" in self.kinds:
            from labeler.faces.boxcrops import box_crops_workspace

            box_crops_workspace(ws, faces=todo)
        n = 0
        for start in range(0, len(todo), EMBED_WINDOW):  # the driver holds one window's bytes
            part = todo.iloc[start : start + EMBED_WINDOW]
            aligned = crop_paths(ws, part, crop="aligned")
            boxes = crop_paths(ws, part, crop="box") if "box" in self.kinds else None
            payloads = [
                pickle.dumps(
                    {
                        "face_ids": [fid],
                        "aligned": [Path(a).read_bytes()],
                        "box": [None if boxes is None else Path(boxes.iloc[i]).read_bytes()],
                    }
                )
                for i, (fid, a) in enumerate(zip(part["face_id"], aligned, strict=True))
            ]
            table = pa.table(
                {
                    "image_id": pa.array(list(part["image_id"]), pa.string()),
                    "payload": pa.array(payloads, pa.binary()),
                }
            )
            ds = photo_dataset(
                table, _same, {}, FeatureActor, (self.spec,), self.plan, self.spec.batch_size
            )
            for _, ph, X in iterate(ds):
                self.writers.add(ph["face_ids"], X)
                n += len(ph["face_ids"])
        self.writers.close()
        log.info("embedded %d faces from their crop files on Ray", n)
        return n


def stream_photos(
    images: Sequence[tuple[Path, str]],
    cfg: DetectConfig,
    actor: type,
    actor_args: tuple[Any, ...],
    *,
    box: bool,
    batch_size: int = 64,
    address: str | None = None,
    progress: bool | None = None,
) -> Iterator[tuple[str, list[Any] | None, Any]]:
    """Photos through cut tasks and ``actor(*actor_args)`` (called on each batch of cut
    photos as :class:`FeatureActor` is; ``labeler predict --engine ray`` passes its classifier
    actor): ``(shown path, cuts or None when the photo could not be decoded, what the actor
    added)`` for each of ``images`` (``(path, shown)``), in order. The cuts carry the
    detections and the aligned crops' JPEG bytes."""
    from labeler._io import progress_bar
    from labeler.detect.pipeline import FaceCut
    from labeler.embeddings.ray_engine import plan_actors, ray_session

    with ray_session(address) as ray:
        if not images:
            return
        check_cluster(ray, images[0][0], what="the photo folder")
        plan = plan_actors(ray, device="auto")
        ds = photo_dataset(
            photo_table([shown for _, shown in images], [p for p, _ in images]), cut_batch,
            {"cfg": cfg, "box": True if box else None}, actor, actor_args, plan, batch_size,
        )  # fmt: skip
        with progress_bar(len(images), desc="photos (ray)", enabled=progress, unit="img") as bar:
            for shown, ph, added in iterate(ds):
                bar.update(1)
                if ph["error"] is not None:
                    log.warning("skipping %s", ph["error"])
                    yield shown, None, []
                    continue
                cuts = [
                    FaceCut(d, a, None)  # type: ignore[arg-type]
                    for d, a in zip(ph["detections"], ph["aligned"], strict=True)
                ]
                yield shown, cuts, added


def _same(batch: pa.Table) -> pa.Table:
    """The first stage of :meth:`RayRunEngine.embed_missing`: the payloads are made already."""
    return batch


def detect_and_embed_ray(
    ws: Workspace,
    *,
    detector: str,
    backbone: str,
    inputs: Sequence[tuple[str, int | None]],
    cues: bool,
    device: str = "auto",
    batch_size: int = 64,
    address: str | None = None,
    num_actors: int | None = None,
    progress: bool | None = None,
) -> tuple[Any, dict[str, int]]:
    """Detect and embed the workspace's new photos on Ray: ``inputs`` are the ``(region,
    input size)`` pairs of :func:`labeler.pipeline.feature_inputs`, ``cues`` the colour cues.
    Returns the :class:`~labeler.detect.pipeline.DetectResult` and the faces embedded per key.
    """
    from labeler.detect.pipeline import detect_workspace
    from labeler.embeddings.backbones import workspace_precision
    from labeler.embeddings.embed import BlockWriters, FeatureBlocks
    from labeler.embeddings.ray_engine import (
        _ConfigOnly,
        actor_backbone_config,
        plan_actors,
        ray_session,
    )
    from labeler.embeddings.store import list_embeddings

    t0 = time.perf_counter()
    with ray_session(address) as ray:
        dev, precision = workspace_precision(list_embeddings(ws), backbone, device=device)
        plan = plan_actors(ray, device=dev, num_actors=num_actors)
        sizes = list(dict.fromkeys(s for _, s in inputs))
        groups = tuple((s, tuple(r for r, s2 in inputs if s2 == s)) for s in sizes)
        configs = [actor_backbone_config(plan, backbone, None, precision, s) for s in sizes]
        writers = BlockWriters(
            ws,
            FeatureBlocks(
                [(_ConfigOnly(c), list(rs)) for c, (_, rs) in zip(configs, groups, strict=True)],  # type: ignore[misc]
                cues=cues,
                batch_size=batch_size,
            ),
            engine="ray",
        )
        spec = BlockSpec(
            backbone=backbone,
            groups=groups,
            cues=cues,
            device=plan.device,
            runtime=plan.runtime,
            precision=plan.precision(precision),
            threads=plan.threads,
            cache_dir=plan.cache_dir,
            batch_size=batch_size,
        )
        engine = RayRunEngine(ray, spec, plan, writers, progress=progress)
        before = {k: len(d) for k, d in writers.done.items()}
        try:
            # commits every default_chunk_size photos, as the local engine's run
            detected = detect_workspace(ws, detector=detector, progress=False, engine=engine)
            if writers.blocks.keys:
                engine.embed_missing(ws)
        finally:
            engine.close()
        writers.refresh()
        embedded = {k: len(d) - before[k] for k, d in writers.done.items()}
    log.info(
        "run on Ray: %d photos, %d faces in %.1f s (%d actors, %d CPUs)",
        detected.processed,
        detected.faces,
        time.perf_counter() - t0,
        plan.n_actors,
        plan.cpus,
    )
    return detected, embedded
