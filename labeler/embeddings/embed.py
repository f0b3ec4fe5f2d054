"""The embed step, one stream: faces' crops (in memory) -> every feature block -> shards.

One loop computes features (:func:`embed_stream`): batches of :class:`labeler.faces.records.
FaceCrops` go through :class:`FeatureBlocks` (each CNN region, all regions of one input size
in one model call, and the colour cues) and :class:`BlockWriters` (one writer per stored
key). Its sources: ``labeler run``'s detection queue (the crops as stored, handed over in
memory), the crop files (:func:`embed_workspace`, :func:`embed_faces` for ``labeler embed``,
:func:`cues_workspace`), the Ray engine's actors (:mod:`labeler.embeddings.ray_engine`, the
same :class:`FeatureBlocks` remotely, :func:`write_stream` on the driver) and
``labeler predict`` (:mod:`labeler.predict`, no writer). It is

* **resumable**: shards are written atomically every ``shard_size`` faces and a re-run skips
  the face_ids already stored, so a killed run resumes where it stopped and gives the same
  result as an uninterrupted one;
* **incremental**: faces added to ``faces.parquet`` later are embedded, old ones are not;
* **overlapped**: crop files are decoded by a thread pool a few batches ahead of the model
  (libjpeg and OpenCV release the GIL); in ``labeler run`` detection threads feed it.

Region crops are resized to the model input with ``cv2.INTER_AREA`` when shrinking and
``cv2.INTER_LINEAR`` when enlarging (a region is stretched to the square input: every face
gets the same geometry). The crops in memory are the stored crops' pixels (the JPEG bytes
written, decoded whole, :func:`labeler.imageio.decode_crop_bytes`), so a face embedded
from memory and from its files gets the same vector (the raw warp instead would move
EfficientNet-Lite0 vectors to cosine ~0.96 of the stored crops').
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from labeler._io import progress_bar
from labeler.embeddings import store
from labeler.embeddings.types import Backbone, BackboneConfig, BackboneError
from labeler.errors import InputError
from labeler.faces.cues import CUES_KEY, compute_cues, cue_names
from labeler.faces.cues import VERSION as CUES_VERSION
from labeler.faces.cues import WORK_SIZE as CUES_WORK_SIZE
from labeler.faces.records import FaceCrops
from labeler.faces.regions import CROP_SIZE, crop_region, get_region
from labeler.workspace import Workspace, WorkspaceError, iter_batches, jsonable

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
    config: EmbedConfig | None  # None for the colour cues (no model)


# --- pixels ----------------------------------------------------------------------------------


def prepare_crop(
    crop: np.ndarray, *, region: str = "face", size: int = 224, out: np.ndarray | None = None
) -> np.ndarray:
    """Cut ``region`` out of an aligned crop ``(H, H, 3)`` uint8 and resize it to
    ``(size, size, 3)`` (into ``out`` when given: a slice of a batch, no extra copy)."""
    import cv2

    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"expected a square RGB crop (H, H, 3), got shape {crop.shape}")
    part = crop_region(crop, region)
    h, w = part.shape[:2]
    if (h, w) == (size, size):
        if out is None:
            return np.ascontiguousarray(part, dtype=np.uint8)
        out[...] = part
        return out
    interp = cv2.INTER_AREA if (h >= size and w >= size) else cv2.INTER_LINEAR
    if out is None:
        return cv2.resize(part, (size, size), interpolation=interp)
    cv2.resize(part, (size, size), dst=out, interpolation=interp)
    return out


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
    """Embed in-memory crops ``(N, H, H, 3)`` uint8 -> float32 ``(N, dim)`` (raw features):
    aligned crops for the landmark regions, the *box* crops (``FaceCrops.box``) for
    ``region="box"`` (an aligned crop given as a box computes other features)."""
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

    Box crops that are missing are written first (:mod:`labeler.faces.boxcrops`); raises
    ``WorkspaceError`` naming the fix when aligned crops are missing.
    """
    done = store.stored_ids(ws, key)
    todo = faces.loc[~faces["face_id"].isin(done), ["face_id"]].copy()
    if crop == "box" and len(todo):
        from labeler.faces.boxcrops import box_crops_workspace

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
            f"({_diff(old['fingerprint'], jsonable(config.fingerprint()))}); pass --force to "
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


# --- the one stream: every feature block from crops in memory ---------------------------------


class FeatureBlocks:
    """Computes every block of a feature set for a batch of faces from their crops in memory:
    the CNN regions (one model call per batch and input size, all its regions together) and
    the colour cues (:func:`labeler.faces.cues.compute_cues`) of the aligned crops.

    ``groups``: ``(backbone, regions)`` pairs, one per input size. The only place features
    are computed: ``labeler run``, ``labeler embed`` (crops read from their files),
    ``labeler predict`` and the Ray engine all call :meth:`compute`.

    >>> blocks = FeatureBlocks([(get_backbone("timm:efficientnet_lite0"), ["nose"])], cues=True)  # doctest: +SKIP
    >>> blocks.compute([FaceCrops("f", crop)])  # doctest: +SKIP
    {'timm-efficientnet_lite0__nose': array(...), 'cues__face': array(...)}
    """

    def __init__(
        self,
        groups: Sequence[tuple[Backbone, Sequence[str]]],
        *,
        cues: bool = False,
        batch_size: int = 64,
    ) -> None:
        self.groups = [(bb, list(dict.fromkeys(rs))) for bb, rs in groups if len(rs)]
        for _, regions in self.groups:
            for r in regions:
                get_region(r)
        self.cues = bool(cues)
        self.batch_size = int(batch_size)

    @property
    def keys(self) -> list[str]:
        """The stored keys of the blocks, in order."""
        keys = [store.embedding_key(bb.config.key_name, r) for bb, rs in self.groups for r in rs]
        return keys + ([CUES_KEY] if self.cues else [])

    @property
    def kinds(self) -> tuple[str, ...]:
        """The crops (``aligned``, ``box``) the blocks read."""
        kinds = {get_region(r).crop for _, rs in self.groups for r in rs}
        if self.cues:
            kinds.add("aligned")
        return tuple(k for k in ("aligned", "box") if k in kinds)

    def compute(self, faces: Sequence[FaceCrops]) -> dict[str, np.ndarray]:
        """``key -> (len(faces), dim)`` float32 for every block."""
        n = len(faces)
        out: dict[str, np.ndarray] = {}
        for bb, regions in self.groups:
            size = bb.input_size
            pixels = np.empty((len(regions) * n, size, size, 3), np.uint8)
            for j, r in enumerate(regions):
                kind = get_region(r).crop
                for i, f in enumerate(faces):
                    prepare_crop(f.crop(kind), region=r, size=size, out=pixels[j * n + i])
            # the model sees at most batch_size crops a call (activations of 192 crops at
            # 224 px take ~2 GB more memory)
            step = self.batch_size
            X = np.concatenate(
                [bb.embed(pixels[i : i + step]) for i in range(0, len(pixels), step)]
            )
            for j, r in enumerate(regions):
                key = store.embedding_key(bb.config.key_name, r)
                out[key] = np.asarray(X[j * n : (j + 1) * n], np.float32)
        if self.cues:
            out[CUES_KEY] = compute_cues(_stack([f.aligned for f in faces]))
        return out


def _stack(crops: Sequence[np.ndarray]) -> np.ndarray:
    """(N, S, S, 3) uint8 of same-size crops (resized to the first one's side when not)."""
    import cv2

    if not crops:
        return np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    side = crops[0].shape[0]
    return np.stack(
        [
            c
            if c.shape[:2] == (side, side)
            else cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA)
            for c in crops
        ]
    )


def cues_config() -> dict[str, Any]:
    """The ``config.json`` payload of the cues block (its version decides reuse)."""
    return {
        "what": "colour-invariant mask cues",
        "version": CUES_VERSION,
        "names": cue_names(),
        "work_size": CUES_WORK_SIZE,
    }


class BlockWriters:
    """One writer per stored key of ``blocks``: checks each stored set against the blocks'
    configuration (refusing to mix features), remembers which faces each key already has,
    and appends shards of the new vectors (:class:`ShardWriter`)."""

    def __init__(
        self,
        ws: Workspace,
        blocks: FeatureBlocks,
        *,
        shard_size: int = 2048,
        overwrite: bool = False,
        rerun: str | None = None,
        engine: str = "local",
    ) -> None:
        self.ws, self.blocks = ws, blocks
        self.configs: dict[str, EmbedConfig] = {}
        for bb, regions in blocks.groups:
            for r in regions:
                config = make_config(
                    bb,
                    region=r,
                    batch_size=blocks.batch_size,
                    shard_size=shard_size,
                    engine=engine,
                )
                prepare_key(ws, config, overwrite=overwrite, rerun=rerun)
                self.configs[config.key] = config
        if blocks.cues:
            old = store.read_config(ws, CUES_KEY) or {}
            if overwrite or (old and old.get("config", old).get("version") != CUES_VERSION):
                store.delete_embeddings(ws, CUES_KEY)
            store.write_config(
                ws,
                CUES_KEY,
                dim=len(cue_names()),
                config=cues_config(),
                fingerprint={"version": CUES_VERSION},
                rerun=f"labeler run IMAGES -w {ws.root}",
            )
        self.done = {k: store.stored_ids(ws, k) for k in blocks.keys}
        self.writers = {k: ShardWriter(ws, k, shard_size) for k in blocks.keys}

    def refresh(self) -> None:
        """Add the faces other writers stored meanwhile to the ones each key has."""
        for key, done in self.done.items():
            done.update(store.stored_ids(self.ws, key))

    def missing(self, face_ids: Iterable[str]) -> list[str]:
        """Of ``face_ids``, those some key has no vector for."""
        return [f for f in face_ids if any(f not in d for d in self.done.values())]

    def add(self, face_ids: Sequence[str], X: dict[str, np.ndarray]) -> None:
        for key, writer in self.writers.items():
            done = self.done[key]
            keep = [i for i, f in enumerate(face_ids) if f not in done]
            if keep:
                ids = [face_ids[i] for i in keep]
                writer.add(ids, X[key][keep])
                done.update(ids)

    def close(self) -> None:
        errors = []
        for writer in self.writers.values():
            try:
                writer.close()
            except Exception as exc:  # close every writer, then raise the first error
                errors.append(exc)
        if errors:
            raise errors[0]

    def results(self, n_faces: int, n_before: dict[str, int], seconds: float) -> list[EmbedResult]:
        return [
            EmbedResult(
                key=k,
                path=store.embedding_dir(self.ws, k),
                n_faces=n_faces,
                n_new=w.written,
                n_before=n_before.get(k, 0),
                seconds=seconds,
                config=self.configs.get(k),
            )
            for k, w in self.writers.items()
        ]


def embed_stream(
    batches: Iterable[Sequence[FaceCrops]],
    writers: BlockWriters,
    *,
    bar: Any = None,
) -> int:
    """THE embedding loop: for each batch of faces (crops in memory), every block of
    ``writers.blocks`` (:meth:`FeatureBlocks.compute`), written by the one writer per key
    (:func:`write_stream`). Faces every key already has are skipped. Returns faces embedded.
    """

    def computed() -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        for batch in batches:
            want = set(writers.missing(f.face_id for f in batch))
            faces = [f for f in batch if f.face_id in want]
            if faces:
                yield [f.face_id for f in faces], writers.blocks.compute(faces)
            if bar is not None:
                bar.update(len(batch))

    return write_stream(computed(), writers)


def write_stream(
    results: Iterable[tuple[Sequence[str], dict[str, np.ndarray]]], writers: BlockWriters
) -> int:
    """Write ``(face_ids, {key: vectors})`` results (computed here by :func:`embed_stream`, or
    remotely by the Ray engine's actors with the same :class:`FeatureBlocks`) through the one
    writer per key. On any error the finished shards are written (the next run resumes) and
    it re-raises. Returns the faces written."""
    n = 0
    try:
        for ids, X in results:
            writers.add(list(ids), X)
            n += len(ids)
        writers.close()
    except BaseException:  # keep what is finished (Ctrl-C, a broken crop): the re-run resumes
        with contextlib.suppress(Exception):
            writers.close()
        raise
    return n


class MissingCropsError(WorkspaceError, FileNotFoundError):
    """Crop files of faces in ``faces.parquet`` are missing (the fix: ``labeler detect``)."""


def read_face_crops(
    ws: Workspace, faces: pd.DataFrame, kinds: Sequence[str]
) -> Callable[[list[str]], list[FaceCrops]]:
    """A reader of the crop files of ``faces`` (``kinds``): ``face_ids -> [FaceCrops]``,
    each crop decoded whole once for all its blocks. Raises :class:`MissingCropsError`
    naming the fix, before any work, when crop files are missing."""
    paths = {
        kind: dict(zip(faces["face_id"], crop_paths(ws, faces, crop=kind), strict=True))
        for kind in kinds
    }
    missing = [p for kind in kinds for p in paths[kind].values() if not Path(p).is_file()]
    if missing:
        raise MissingCropsError(
            f"{len(missing)} of {len(faces) * len(kinds)} face crops are missing, e.g. "
            f"{missing[0]}; re-run 'labeler detect -w {ws.root}' to write them"
        )

    def read(ids: list[str]) -> list[FaceCrops]:
        return [
            FaceCrops(
                f,
                load_crop(paths["aligned"][f], size=CROP_SIZE)
                if "aligned" in kinds
                else np.zeros((0, 0, 3), np.uint8),
                load_crop(paths["box"][f], size=CROP_SIZE) if "box" in kinds else None,
            )
            for f in ids
        ]

    return read


def embed_workspace(
    ws: Workspace,
    blocks: FeatureBlocks,
    *,
    source: Iterable[Sequence[FaceCrops]] | None = None,
    shard_size: int = 2048,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool | None = None,
    desc: str | None = None,
) -> list[EmbedResult]:
    """Every block of ``blocks`` for the faces of ``faces.parquet`` missing from some key.

    ``source``: batches of faces with their crops in memory (``labeler run``'s detection
    queue, :class:`labeler.faces.records.FaceQueue`), embedded first; then the faces still
    missing (all of them without ``source``) from their crop files, read by ``workers``
    threads a few batches ahead (box crops that are missing are written from the photos
    first, :mod:`labeler.faces.boxcrops`). One loop (:func:`embed_stream`), one writer per key.
    Resumable and incremental per key: shards every ``shard_size`` faces, stored faces
    skipped. Returns one :class:`EmbedResult` per key, in ``blocks.keys`` order.
    """
    t0 = time.perf_counter()
    if source is None:
        ws.require_faces()  # no faces table: one line naming the fix, before any work
    writers = BlockWriters(ws, blocks, shard_size=shard_size, overwrite=overwrite)
    seen: list[pd.DataFrame] = []

    def from_files() -> Iterator[Sequence[FaceCrops]]:
        faces = ws.require_faces()  # after the source: the faces detection committed
        seen.append(faces)
        writers.refresh()  # another writer (the fused pass) may have stored some
        todo = faces[faces["face_id"].isin(set(writers.missing(faces["face_id"])))]
        log.info("%s: %d faces to embed from crop files", "+".join(blocks.keys), len(todo))
        if not len(todo):
            return
        if "box" in blocks.kinds:
            from labeler.faces.boxcrops import box_crops_workspace

            box_crops_workspace(ws, faces=todo)
        read = read_face_crops(ws, todo, blocks.kinds)
        ids = list(todo["face_id"])
        bar = progress_bar(
            len(ids), desc=desc or f"embed {len(blocks.keys)} blocks", enabled=progress
        )
        try:
            for batch in prefetch(
                iter_batches(ids, blocks.batch_size),
                read,
                workers=workers,
                depth=max(2, workers * 2),
            ):
                yield batch
                bar.update(len(batch))
        finally:
            bar.close()

    def all_batches() -> Iterator[Sequence[FaceCrops]]:
        if source is not None:
            yield from source
        yield from from_files()

    embed_stream(all_batches(), writers)
    seconds = time.perf_counter() - t0
    known = set(seen[0]["face_id"]) if seen else set()
    n_before = {k: len(known & writers.done[k]) - w.written for k, w in writers.writers.items()}
    results = writers.results(len(known), n_before, seconds)
    log.info("embedded in %.1f s: %s", seconds, {r.key: r.n_new for r in results})
    return results


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
    """Embed the ``region`` of every face in ``faces.parquet`` not stored yet under the key
    (``labeler embed``): :func:`embed_workspace` with one block, crops read from their files.

    Args:
        backbone: from :func:`labeler.embeddings.get_backbone`.
        region: a name in :data:`labeler.faces.regions.REGIONS` (face, lower, nose, mouth_chin, ...).
        batch_size: faces per model call (32-256 on a GPU).
        shard_size: faces per Parquet shard: a killed run loses at most this many.
        workers: decode threads (0: decode in the calling thread).
        decode: ``cpu`` (PIL/libjpeg) or ``cuda`` (nvJPEG via torchvision, torch+CUDA only).
        overwrite: delete stored vectors of this key first (needed after changing weights).
        progress: tqdm bar on stderr (None: only on a terminal).

    Returns an :class:`EmbedResult`; vectors go to ``ws.embeddings_dir / key``.
    """
    config = make_config(
        backbone, region=region, batch_size=batch_size, shard_size=shard_size, decode=decode
    )
    ws.require_faces()
    ws.save_step_config("embed", asdict(config))
    if decode == "cuda":
        return _embed_faces_cuda(
            ws, backbone, config, workers=workers, overwrite=overwrite, progress=progress
        )
    blocks = FeatureBlocks([(backbone, [region])], batch_size=batch_size)
    (res,) = embed_workspace(
        ws,
        blocks,
        shard_size=shard_size,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
        desc=f"embed {config.key}",
    )
    return replace(res, config=config)


def _embed_faces_cuda(
    ws: Workspace,
    backbone: Backbone,
    config: EmbedConfig,
    *,
    workers: int,
    overwrite: bool,
    progress: bool | None,
) -> EmbedResult:
    """``--decode cuda``: crop files decoded by nvJPEG on the GPU, the region cut there, then
    the same writer as every other path (:class:`BlockWriters`)."""
    from labeler.embeddings import gpu

    t0 = time.perf_counter()
    faces = ws.require_faces()
    prepare_key(ws, config, overwrite=overwrite)
    todo, n_done = plan_todo(ws, config.key, faces, crop=get_region(config.region).crop)
    writer = ShardWriter(ws, config.key, config.shard_size)
    batches = iter_batches(list(zip(todo["face_id"], todo["path"], strict=True)), config.batch_size)

    def read(batch: list[tuple[str, str]]) -> tuple[list[str], list[bytes]]:
        return [f for f, _ in batch], [Path(p).read_bytes() for _, p in batch]

    bar = progress_bar(len(todo), desc=f"embed {config.key}", enabled=progress)
    try:
        for ids, datas in prefetch(batches, read, workers=workers, depth=max(2, workers * 2)):
            pixels = gpu.decode_crops_cuda(
                datas, region=config.region, size=backbone.input_size, device=backbone.config.device
            )
            writer.add(ids, backbone.embed(pixels))
            bar.update(len(ids))
        writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        raise
    finally:
        bar.close()
    return EmbedResult(
        key=config.key,
        path=store.embedding_dir(ws, config.key),
        n_faces=len(faces),
        n_new=writer.written,
        n_before=n_done,
        seconds=time.perf_counter() - t0,
        config=config,
    )


def cues_workspace(
    ws: Workspace, *, batch_size: int = 256, force: bool = False, workers: int = 2
) -> tuple[int, int]:
    """The colour cues (``cues__face``) of every face of the workspace not stored yet (all of
    them with ``force``, or when the stored ones are of another cue version), from the
    aligned crop files: :func:`embed_workspace` with the cues block. Returns
    ``(computed, total)``."""
    blocks = FeatureBlocks([], cues=True, batch_size=batch_size)
    (res,) = embed_workspace(ws, blocks, overwrite=force, workers=workers, progress=False)
    return res.n_new, res.n_faces
