"""The embed step: aligned crops -> region -> backbone -> ``(face_id, vector)`` shards.

:func:`embed_faces` is what ``labeler embed`` runs. It is

* **resumable**: shards are written atomically every ``shard_size`` faces and a re-run skips
  the face_ids already stored, so a killed run resumes where it stopped and gives the same
  result as an uninterrupted one;
* **incremental**: faces added to ``faces.parquet`` later are embedded, old ones are not;
* **overlapped**: crops are decoded (and cut, resized) by a thread pool a few batches ahead
  of the model (libjpeg and OpenCV release the GIL).

Region crops are resized to the model input with ``cv2.INTER_AREA`` when shrinking and
``cv2.INTER_LINEAR`` when enlarging (a region is stretched to the square input: every face
gets the same geometry). Crop files are decoded whole, so a crop read back from its JPEG
and the same crop handed over in memory (:func:`embed_regions` in ``labeler run``) go
through the same resize.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from labeler.cropcache import CropCache
from labeler.embeddings import store
from labeler.embeddings.types import Backbone, BackboneConfig, BackboneError
from labeler.errors import InputError, WorkspaceError
from labeler.regions import CROP_SIZE, crop_region, get_region
from labeler.workspace import Workspace, iter_batches, jsonable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DECODES = ("cpu", "cuda")
PREPROCESS_VERSION = 1  # bump when crop -> pixels changes (sizes >= 224 px are unchanged)


@dataclass(frozen=True)
class EmbedConfig:
    """The resolved configuration of one embed run (saved as the key's ``config.json``)."""

    key: str
    region: str
    backbone: BackboneConfig
    batch_size: int
    shard_size: int
    decode: str = "cpu"
    engine: str = "local"
    resize: str = "cv2 INTER_AREA down / INTER_LINEAR up, region stretched to the square input"
    preprocess_version: int = PREPROCESS_VERSION

    def fingerprint(self) -> dict[str, Any]:
        """What determines the vectors (a resumed run must match it)."""
        return {
            "region": self.region,
            "backbone": self.backbone.fingerprint(),
            "preprocess_version": self.preprocess_version,
        }


@dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed_faces` did."""

    key: str
    path: Path
    n_faces: int  # faces in faces.parquet
    n_new: int  # embedded by this run
    n_before: int  # already stored before this run
    seconds: float
    config: EmbedConfig


# --- pixels ----------------------------------------------------------------------------------


def prepare_crop(crop: np.ndarray, *, region: str = "face", size: int = 224) -> np.ndarray:
    """Cut ``region`` out of an aligned crop ``(H, H, 3)`` uint8 and resize it to ``(size, size, 3)``."""
    import cv2

    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"expected a square RGB crop (H, H, 3), got shape {crop.shape}")
    part = crop_region(crop, region)
    h, w = part.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(part, dtype=np.uint8)
    interp = cv2.INTER_AREA if (h >= size and w >= size) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(part), (size, size), interpolation=interp)


def load_crop(path: str | Path | bytes, *, region: str = "face", size: int = 224) -> np.ndarray:
    """Decode an aligned crop file (or its bytes) and return its ``region`` resized to
    ``(size, size, 3)`` uint8."""
    import io

    from PIL import Image

    if isinstance(path, bytes):
        source: Any = io.BytesIO(path)
        path = "<crop bytes>"
    else:
        source = path
    try:
        with Image.open(source) as im:
            # decoded whole (no DCT-scaled draft decode): the region is then resized exactly
            # as the in-memory crops of `labeler run` are, so both give the same features
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise WorkspaceError(
            f"cannot read crop {path} ({exc}); re-run 'labeler detect' to rewrite the crops"
        ) from None
    if rgb.shape[0] != rgb.shape[1]:
        side = min(rgb.shape[:2])
        rgb = rgb[:side, :side]
    return prepare_crop(rgb, region=region, size=size)


def load_crops(paths: Sequence[str | Path], *, region: str = "face", size: int = 224) -> np.ndarray:
    """``(N, size, size, 3)`` uint8 for a batch of crop files."""
    if not len(paths):
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([load_crop(p, region=region, size=size) for p in paths])


def prefetch(
    items: Iterable[T], fn: Callable[[T], R], *, workers: int = 2, depth: int = 4
) -> Iterator[R]:
    """``map(fn, items)`` computed by ``workers`` threads at most ``depth`` items ahead, in order."""
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labeler-decode") as pool:
        pending: deque = deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def embed_crops(
    backbone: Backbone,
    crops: Sequence[np.ndarray] | np.ndarray,
    *,
    region: str = "face",
    batch_size: int = 32,
) -> np.ndarray:
    """Embed in-memory aligned crops ``(N, H, H, 3)`` uint8 -> float32 ``(N, dim)`` (raw features)."""
    size = backbone.input_size
    out = []
    for start in range(0, len(crops), batch_size):
        batch = np.stack(
            [prepare_crop(c, region=region, size=size) for c in crops[start : start + batch_size]]
        )
        out.append(backbone.embed(batch))
    return np.concatenate(out) if out else np.zeros((0, backbone.dim), np.float32)


# --- the workspace step ----------------------------------------------------------------------


def crop_paths(ws: Workspace, faces: pd.DataFrame, *, crop: str = "aligned") -> pd.Series:
    """Absolute crop path of each face: ``faces.crop_path`` when set, else ``ws.crop_path``;
    with ``crop="box"`` the box crops (:meth:`Workspace.box_crop_path`)."""
    if crop == "box":
        return pd.Series([str(ws.box_crop_path(f)) for f in faces["face_id"]], index=faces.index)
    rel = (
        faces["crop_path"]
        if "crop_path" in faces
        else pd.Series([None] * len(faces), index=faces.index)
    )
    return pd.Series(
        [
            str(ws.root / r) if isinstance(r, str) and r else str(ws.crop_path(fid))
            for fid, r in zip(faces["face_id"], rel, strict=True)
        ],
        index=faces.index,
    )


def plan_todo(
    ws: Workspace, key: str, faces: pd.DataFrame, *, crop: str = "aligned"
) -> tuple[pd.DataFrame, int]:
    """Faces of ``faces`` without a stored vector under ``key``: ``(todo[face_id, path], n_done)``.

    Box crops that are missing are written first (:mod:`labeler.boxcrops`); raises
    ``WorkspaceError`` naming the fix when aligned crops are missing.
    """
    done = store.stored_ids(ws, key)
    todo = faces.loc[~faces["face_id"].isin(done), ["face_id"]].copy()
    if crop == "box" and len(todo):
        from labeler.boxcrops import box_crops_workspace

        box_crops_workspace(ws, faces=faces.loc[todo.index])
    todo["path"] = crop_paths(ws, faces.loc[todo.index], crop=crop)
    missing = [p for p in todo["path"] if not Path(p).is_file()]
    if missing:
        raise WorkspaceError(
            f"{len(missing)} of {len(todo)} face crops are missing, e.g. {missing[0]}; "
            f"re-run 'labeler detect -w {ws.root}' to write them"
        )
    n_done = int(faces["face_id"].isin(done).sum())
    return todo.reset_index(drop=True), n_done


def prepare_key(
    ws: Workspace, config: EmbedConfig, *, overwrite: bool = False, rerun: str | None = None
) -> None:
    """Check a stored set against ``config`` (refuse to mix features), then write config.json."""
    key = config.key
    old = store.read_config(ws, key)
    if overwrite:
        store.delete_embeddings(ws, key)
    elif (
        old is not None
        and old.get("fingerprint")
        and old["fingerprint"] != jsonable(config.fingerprint())
    ):
        raise InputError(
            f"embeddings {key} in {ws.root} were made with another configuration "
            f"({_diff(old['fingerprint'], jsonable(config.fingerprint()))}); pass --overwrite to "
            "recompute them, or choose another --backbone/--region"
        )
    store.write_config(
        ws,
        key,
        dim=config.backbone.dim,
        config=asdict(config),
        fingerprint=config.fingerprint(),
        rerun=rerun or _rerun(ws, config),
    )


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _diff(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: stored {va!r}, now {vb!r}"
    return ""


def _rerun(ws: Workspace, config: EmbedConfig) -> str:
    cmd = f"labeler embed -w {ws.root} --backbone {config.backbone.name} --region {config.region}"
    if config.backbone.custom_weights:
        cmd += f" --weights {config.backbone.weights}"
    return cmd


def make_config(
    backbone: Backbone | BackboneConfig,
    *,
    region: str,
    batch_size: int,
    shard_size: int,
    decode: str = "cpu",
    engine: str = "local",
) -> EmbedConfig:
    get_region(region)
    if batch_size < 1 or shard_size < 1:
        raise InputError(
            f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}"
        )
    if decode not in DECODES:
        raise InputError(f"unknown decode {decode!r}; use one of {', '.join(DECODES)}")
    bconf = backbone if isinstance(backbone, BackboneConfig) else backbone.config
    if decode == "cuda" and not (bconf.runtime == "torch" and bconf.device.startswith("cuda")):
        raise BackboneError(
            "--decode cuda needs the torch runtime on a CUDA device; use --decode cpu"
        )
    return EmbedConfig(
        key=store.embedding_key(bconf.key_name, region),
        region=region,
        backbone=bconf,
        batch_size=int(batch_size),
        shard_size=int(shard_size),
        decode=decode,
        engine=engine,
    )


def _progress(total: int, *, desc: str, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="face",
        file=sys.stderr,
        disable=None if enabled is None else not enabled,
        smoothing=0.1,
        dynamic_ncols=True,
    )


class ShardWriter:
    """Buffers ``(face_id, vector)`` rows and appends a shard every ``shard_size`` rows."""

    def __init__(self, ws: Workspace, key: str, shard_size: int) -> None:
        self.ws, self.key, self.shard_size = ws, key, shard_size
        self._ids: list[np.ndarray] = []
        self._vecs: list[np.ndarray] = []
        self._n = 0
        self.written = 0

    def add(self, face_ids: Sequence[str], X: np.ndarray) -> None:
        self._ids.append(np.asarray(face_ids, dtype=object))
        self._vecs.append(np.asarray(X, dtype=np.float32))
        self._n += len(X)
        while self._n >= self.shard_size:
            self._flush(self.shard_size)

    def close(self) -> None:
        if self._n:
            self._flush(self._n)

    def _flush(self, n: int) -> None:
        ids, X = np.concatenate(self._ids), np.concatenate(self._vecs)
        store.append_shard(self.ws, self.key, ids[:n], X[:n])
        self.written += n
        self._ids, self._vecs, self._n = [ids[n:]], [X[n:]], len(X) - n


def embed_faces(
    ws: Workspace,
    backbone: Backbone,
    *,
    region: str = "face",
    batch_size: int = 32,
    shard_size: int = 2048,
    workers: int = 2,
    decode: str = "cpu",
    overwrite: bool = False,
    progress: bool | None = None,
) -> EmbedResult:
    """Embed the ``region`` of every face in ``faces.parquet`` not stored yet under the key.

    Args:
        backbone: from :func:`labeler.embeddings.get_backbone`.
        region: a name in :data:`labeler.regions.REGIONS` (face, lower, nose, mouth_chin, ...).
        batch_size: faces per model call (32-256 on a GPU).
        shard_size: faces per Parquet shard: a killed run loses at most this many.
        workers: decode threads (0: decode in the calling thread).
        decode: ``cpu`` (PIL/libjpeg) or ``cuda`` (nvJPEG via torchvision, torch+CUDA only).
        overwrite: delete stored vectors of this key first (needed after changing weights).
        progress: tqdm bar on stderr (None: only on a terminal).

    Returns an :class:`EmbedResult`; vectors go to ``ws.embeddings_dir / key``.
    """
    t0 = time.perf_counter()
    config = make_config(
        backbone, region=region, batch_size=batch_size, shard_size=shard_size, decode=decode
    )
    faces = ws.require_faces()
    prepare_key(ws, config, overwrite=overwrite)
    todo, n_done = plan_todo(ws, config.key, faces, crop=get_region(region).crop)
    ws.save_step_config("embed", asdict(config))
    log.info("%s: %d faces to embed, %d already stored", config.key, len(todo), n_done)
    writer = ShardWriter(ws, config.key, shard_size)
    size = backbone.input_size
    batches = iter_batches(list(zip(todo["face_id"], todo["path"], strict=True)), batch_size)

    if decode == "cuda":
        from labeler.embeddings import gpu

        def read(batch: list[tuple[str, str]]) -> tuple[list[str], Any]:
            return [f for f, _ in batch], [Path(p).read_bytes() for _, p in batch]

    else:
        pin = backbone.config.runtime == "torch" and backbone.config.device.startswith("cuda")

        def read(batch: list[tuple[str, str]]) -> tuple[list[str], Any]:
            pixels = load_crops([p for _, p in batch], region=region, size=size)
            if pin:  # page-locked here, so the copy to the GPU can overlap the model
                import torch

                pixels = torch.from_numpy(pixels).pin_memory()
            return [f for f, _ in batch], pixels

    bar = _progress(len(todo), desc=f"embed {config.key}", enabled=progress)
    try:
        for ids, pixels in prefetch(batches, read, workers=workers, depth=max(2, workers * 2)):
            if decode == "cuda":
                pixels = gpu.decode_crops_cuda(
                    pixels, region=region, size=size, device=backbone.config.device
                )
            writer.add(ids, backbone.embed(pixels))
            bar.update(len(ids))
        writer.close()
    except BaseException:  # keep what is finished (Ctrl-C, a broken crop): the re-run resumes
        with contextlib.suppress(Exception):
            writer.close()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    log.info("%s: embedded %d faces in %.1f s", config.key, writer.written, seconds)
    return EmbedResult(
        key=config.key,
        path=store.embedding_dir(ws, config.key),
        n_faces=len(faces),
        n_new=writer.written,
        n_before=n_done,
        seconds=seconds,
        config=config,
    )


def embed_regions(
    ws: Workspace,
    backbone: Backbone,
    regions: Sequence[str],
    *,
    batch_size: int = 64,
    shard_size: int = 2048,
    workers: int = 2,
    cache: CropCache | None = None,
    cues_out: dict[str, np.ndarray] | None = None,
    progress: bool | None = None,
) -> list[EmbedResult]:
    """Embed several ``regions`` of every face in one pass: the crops of all of them go to the
    model together (they share ``backbone``'s input size, ``batch_size`` crops a call), each
    face's crops read once.

    The crops come from ``cache`` when detection handed them over in memory
    (:mod:`labeler.cropcache`, ``labeler run``), else from the JPEGs, as
    :func:`embed_faces` reads them. With ``cues_out`` the colour cues
    (:func:`labeler.cues.compute_cues`) of each face's aligned crop are put there too
    (``face_id -> vector``), from the same pixels. Resumable and incremental per key like
    :func:`embed_faces` (one ``EmbedResult`` per region, in order).
    """
    from labeler.cues import compute_cues

    t0 = time.perf_counter()
    regions = list(dict.fromkeys(regions))
    if not regions:
        return []
    configs = [
        make_config(backbone, region=r, batch_size=batch_size, shard_size=shard_size)
        for r in regions
    ]
    faces = ws.require_faces()
    todos: list[set[str]] = []
    n_done: list[int] = []
    for config in configs:
        prepare_key(ws, config, overwrite=False)
        done = store.stored_ids(ws, config.key)
        todos.append(set(faces.loc[~faces["face_id"].isin(done), "face_id"]))
        n_done.append(int(faces["face_id"].isin(done).sum()))
    union = faces[faces["face_id"].isin(set().union(*todos))]
    kinds = {get_region(r).crop for r in regions} | ({"aligned"} if cues_out is not None else set())
    if "box" in kinds and len(union):
        # box crops detection could not cut from its decode: write them from the photos now
        missing = [f for f in union["face_id"] if cache is None or (f, "box") not in cache]
        if missing:
            from labeler.boxcrops import box_crops_workspace

            box_crops_workspace(ws, faces=union[union["face_id"].isin(set(missing))])
    paths = {
        kind: dict(zip(union["face_id"], crop_paths(ws, union, crop=kind), strict=True))
        for kind in kinds
    }
    size = backbone.input_size
    writers = [ShardWriter(ws, c.key, shard_size) for c in configs]
    ids_all = list(union["face_id"])

    def crop_of(fid: str, kind: str) -> np.ndarray:
        data = cache.take(fid, kind) if cache is not None else None  # the file's bytes
        return load_crop(paths[kind][fid] if data is None else data, region="face", size=CROP_SIZE)

    def read(batch: list[str]) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        crops = {kind: [crop_of(f, kind) for f in batch] for kind in kinds}
        pixels = np.stack(
            [
                prepare_crop(c, region=r, size=size)
                for r in regions
                for c in crops[get_region(r).crop]
            ]
        )
        cues = compute_cues(np.stack(crops["aligned"])) if cues_out is not None else None
        return batch, pixels, cues

    bar = _progress(len(ids_all), desc=f"embed {len(regions)} regions", enabled=progress)
    try:
        for ids, pixels, cues in prefetch(
            iter_batches(ids_all, batch_size), read, workers=workers, depth=max(2, workers * 2)
        ):
            # (len(regions) * B, dim), region-major; the model sees at most batch_size crops
            # a call (its activations for 192 crops at 224 px would take ~2 GB more memory)
            X = np.concatenate(
                [
                    backbone.embed(pixels[i : i + batch_size])
                    for i in range(0, len(pixels), batch_size)
                ]
            )
            n = len(ids)
            for j, (writer, todo) in enumerate(zip(writers, todos, strict=True)):
                keep = [i for i, f in enumerate(ids) if f in todo]
                if keep:
                    writer.add([ids[i] for i in keep], X[j * n : (j + 1) * n][keep])
            if cues is not None and cues_out is not None:
                cues_out.update(zip(ids, cues, strict=True))
            bar.update(n)
        for writer in writers:
            writer.close()
    except BaseException:  # keep what is finished: the re-run resumes
        for writer in writers:
            with contextlib.suppress(Exception):
                writer.close()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    log.info("%s: embedded %d faces in %.1f s", "+".join(regions), len(ids_all), seconds)
    return [
        EmbedResult(
            key=c.key,
            path=store.embedding_dir(ws, c.key),
            n_faces=len(faces),
            n_new=w.written,
            n_before=d,
            seconds=seconds,
            config=c,
        )
        for c, w, d in zip(configs, writers, n_done, strict=True)
    ]
