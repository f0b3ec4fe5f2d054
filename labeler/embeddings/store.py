"""Feature vectors on disk: ``(face_id, vector)`` Parquet shards aligned to ``faces.parquet``.

One *key* (``"<backbone>__<region>"``, e.g. ``efficientnet_lite0__lower`` or ``cues__face``)
is one directory ``ws.embeddings_dir / key``::

    config.json          {"key", "dim", "rerun", "fingerprint", "config"}: the producer's
                         resolved configuration and the command that recreates the set
    part-00000.parquet   face_id: string, vector: fixed_size_list<float32, dim>
    part-00001.parquet   ... (shards are appended by resumable producers)

Any producer of per-face features stores them here (:func:`save_vectors`); every consumer
reads them with :func:`load_embeddings`, which returns rows in ``faces.parquet`` order
whatever the shard layout, batch size or worker count that wrote them. Vectors are stored
as produced (raw pooled CNN features are not normalised); ``normalize=True`` or
:func:`l2_normalize` gives unit rows.

>>> ids, X = load_embeddings(ws, embedding_key("timm:efficientnet_lite0", "lower"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.errors import InputError
from labeler.workspace import (
    Workspace,
    WorkspaceError,
    align_to_faces,
    read_json,
    write_json,
    write_table,
)

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SHARD_GLOB = "part-*.parquet"
_SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")
_SAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


_KEY_RE = re.compile(r"^(?P<name>.+?)(?:-(?P<size>[0-9]+)px)?__(?P<region>[^_].*)$")


def parse_key(key: str) -> tuple[str, int | None, str]:
    """``(backbone part, input size or None, region)`` of an embedding key.

    >>> parse_key("efficientnet_lite0-128px__nose")
    ('efficientnet_lite0', 128, 'nose')
    >>> parse_key("efficientnet_lite0__box")
    ('efficientnet_lite0', None, 'box')
    """
    m = _KEY_RE.match(key)
    if m is None:
        raise ValueError(f"{key!r} is not an embedding key (BACKBONE[-Npx]__REGION)")
    return m["name"], None if m["size"] is None else int(m["size"]), m["region"]


def embedding_key(backbone: str, region: str) -> str:
    """The storage key of features from ``backbone`` on ``region``.

    ``embedding_key("timm:efficientnet_lite0", "lower") == "efficientnet_lite0__lower"``;
    the default ``timm:`` prefix is dropped, other unsafe characters become ``-``.
    """
    name = str(backbone).strip()
    if name.startswith("timm:"):
        name = name[len("timm:") :]
    name = _SAFE.sub("-", name).strip("-.")
    reg = _SAFE.sub("-", str(region).strip()).strip("-.")
    if not name or not reg or "__" in reg:
        raise ValueError(
            f"cannot make an embedding key from backbone={backbone!r}, region={region!r}"
        )
    return f"{name}__{reg}"


def key_prefix(backbone: str) -> str:
    """The part of every key of ``backbone`` before ``__<region>``:
    ``key_prefix("timm:efficientnet_lite0") == "efficientnet_lite0"``."""
    return split_key(embedding_key(backbone, "face"))[0]


def split_key(key: str) -> tuple[str, str]:
    """``"efficientnet_lite0__lower"`` -> ``("efficientnet_lite0", "lower")``."""
    name, sep, region = key.rpartition("__")
    if not sep or not name or not region:
        raise InputError(f"{key!r} is not an embedding key ('<backbone>__<region>')")
    return name, region


def embedding_dir(ws: Workspace, key: str) -> Path:
    split_key(key)
    return ws.embeddings_dir / key


def default_rerun(ws: Workspace, key: str) -> str:
    name, region = split_key(key)
    return f"labeler embed -w {ws.root} --backbone {name} --region {region}"


def l2_normalize(X: np.ndarray, *, eps: float = 1e-12, batch: int = 65_536) -> np.ndarray:
    """Rows of ``X (N, D)`` scaled to unit length (zero rows stay zero), float32.

    Works in batches of ``batch`` rows, so a float16 memmap never becomes one big float64 copy.
    """
    X = X if isinstance(X, np.memmap) else np.asarray(X)
    out = np.empty(X.shape, dtype=np.float32)
    for start in range(0, X.shape[0], batch):
        block = np.asarray(X[start : start + batch], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, np.maximum(norms, eps), out=out[start : start + batch])
    return out


@dataclass(frozen=True)
class EmbeddingInfo:
    """What :func:`list_embeddings` reports for one stored key."""

    key: str
    backbone: str
    region: str
    dim: int
    n_rows: int
    n_shards: int
    path: Path
    rerun: str


# --- validation ------------------------------------------------------------------------------


def _as_ids(face_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    ids = np.asarray(
        list(face_ids) if not isinstance(face_ids, np.ndarray) else face_ids, dtype=object
    )
    if ids.ndim != 1:
        raise ValueError(f"face_ids must be 1-D, got shape {ids.shape}")
    return ids


def _validate(face_ids: np.ndarray, X: np.ndarray, *, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{what}: vectors must be 2-D (N, D), got shape {X.shape}")
    if len(face_ids) != len(X):
        raise ValueError(
            f"{what}: {len(X)} vectors but {len(face_ids)} face_ids; pass one id per row"
        )
    if X.shape[1] == 0:
        raise ValueError(f"{what}: vectors have 0 columns")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise ValueError(f"{what}: {bad} rows contain NaN or inf; fix the producer before saving")
    if any(not isinstance(i, str) or not i for i in face_ids):
        raise ValueError(f"{what}: face_ids must be non-empty strings")
    u, counts = np.unique(face_ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{what}: duplicate face_id {u[counts > 1][0]!r}")
    return X


def vectors_table(face_ids: np.ndarray, X: np.ndarray) -> pa.Table:
    """``(face_id string, vector fixed_size_list<float32, D>)`` table."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    flat = pa.array(X.reshape(-1), type=pa.float32())
    vec = pa.FixedSizeListArray.from_arrays(flat, X.shape[1])
    return pa.table({"face_id": pa.array(face_ids.astype(str), type=pa.string()), "vector": vec})


def _table_vectors(table: pa.Table, *, source: str) -> tuple[np.ndarray, np.ndarray]:
    col = table.column("vector")
    if not pa.types.is_fixed_size_list(col.type):
        raise WorkspaceError(
            f"{source}: column 'vector' is {col.type}, expected fixed_size_list<float>"
        )
    dim = col.type.list_size
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    X = values.reshape(len(arr), dim)
    ids = np.asarray(table.column("face_id").to_pylist(), dtype=object)
    return ids, X


# --- shards ----------------------------------------------------------------------------------


def shard_paths(ws: Workspace, key: str) -> list[Path]:
    """Complete shards of ``key`` in index order (temp files of killed writers are ignored)."""
    d = embedding_dir(ws, key)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _SHARD_RE.match(p.name))]
    return [p for _, p in sorted(found)]  # by number: part-100000 after part-99999


def read_config(ws: Workspace, key: str) -> dict[str, Any] | None:
    path = embedding_dir(ws, key) / CONFIG_NAME
    return read_json(path) if path.is_file() else None


def _config_payload(
    ws: Workspace,
    key: str,
    *,
    dim: int,
    config: Any,
    fingerprint: dict[str, Any] | None,
    rerun: str | None,
) -> dict[str, Any]:
    return {
        "key": key,
        "dim": int(dim),
        "dtype": "float32",
        "rerun": rerun or default_rerun(ws, key),
        "fingerprint": fingerprint or {},
        "config": config,
    }


def write_config(
    ws: Workspace,
    key: str,
    *,
    dim: int,
    config: Any,
    fingerprint: dict[str, Any] | None = None,
    rerun: str | None = None,
) -> None:
    """Write ``config.json`` of ``key`` (atomic)."""
    payload = _config_payload(ws, key, dim=dim, config=config, fingerprint=fingerprint, rerun=rerun)
    write_json(embedding_dir(ws, key) / CONFIG_NAME, payload)


def stored_ids(ws: Workspace, key: str) -> set[str]:
    """face_ids already present in the shards of ``key`` (reads only that column)."""
    ids: set[str] = set()
    for p in shard_paths(ws, key):
        ids.update(pq.read_table(p, columns=["face_id"]).column("face_id").to_pylist())
    return ids


def append_shard(ws: Workspace, key: str, face_ids: Sequence[str], X: np.ndarray) -> Path:
    """Write the next shard ``part-NNNNN.parquet`` of ``key`` atomically; returns its path.

    The caller writes ``config.json`` first (:func:`write_config`) and never appends ids
    that are already stored (:func:`stored_ids`).
    """
    ids = _as_ids(face_ids)
    X = _validate(ids, X, what=f"shard of {key}")
    cfg = read_config(ws, key)
    if cfg is not None and int(cfg["dim"]) != X.shape[1]:
        raise ValueError(f"shard of {key} has dim {X.shape[1]} but config.json says {cfg['dim']}")
    existing = shard_paths(ws, key)
    nxt = int(_SHARD_RE.match(existing[-1].name).group(1)) + 1 if existing else 0  # type: ignore[union-attr]
    path = embedding_dir(ws, key) / f"part-{nxt:05d}.parquet"
    write_table(path, vectors_table(ids, X))
    return path


def read_vectors(ws: Workspace, key: str) -> tuple[np.ndarray, np.ndarray]:
    """All stored ``(face_ids (N,), X (N, D))`` of ``key`` in shard order (not aligned)."""
    cfg = read_config(ws, key)
    paths = shard_paths(ws, key)
    if cfg is None and not paths:
        have = ", ".join(list_embeddings(ws)) or "none"
        name, region = split_key(key)
        raise WorkspaceError(
            f"{ws.root} has no embeddings {key!r} (stored: {have}); run "
            f"'labeler embed -w {ws.root} --backbone {name} --region {region}'"
        )
    dim = int(cfg["dim"]) if cfg else None
    id_parts, x_parts = [], []
    for p in paths:
        ids, X = _table_vectors(pq.read_table(p), source=str(p))
        if dim is not None and X.shape[1] != dim:
            raise WorkspaceError(
                f"{p} has vectors of dim {X.shape[1]} but config.json says {dim}; {_fix(ws, key, cfg)}"
            )
        id_parts.append(ids)
        x_parts.append(X)
    if not x_parts:
        return np.zeros(0, dtype=object), np.zeros((0, dim or 0), np.float32)
    return np.concatenate(id_parts), np.concatenate(x_parts)


def _fix(ws: Workspace, key: str, cfg: dict[str, Any] | None) -> str:
    rerun = (cfg or {}).get("rerun") or default_rerun(ws, key)
    return f"re-run '{rerun}'"


def load_embeddings(
    ws: Workspace,
    key: str,
    *,
    face_ids: Sequence[str] | None = None,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of ``key`` aligned to ``face_ids`` (default: ``faces.parquet`` order).

    Returns ``(face_ids (N,) object array, X float32 (N, D))``; row ``i`` of ``X`` belongs to
    ``face_ids[i]``. Raises ``WorkspaceError`` naming the command to re-run when a face has
    no vector (e.g. faces were added after the last ``labeler embed``). Vectors of faces no
    longer in ``faces.parquet`` are ignored. ``normalize=True`` L2-normalises the rows.
    """
    if face_ids is None:
        face_ids = ws.faces()["face_id"].to_numpy(dtype=object)
    want = _as_ids(face_ids)
    ids, X = read_vectors(ws, key)
    cfg = read_config(ws, key)
    try:
        out = align_to_faces(want, ids, X, what=f"embeddings {key}", fix=_fix(ws, key, cfg))
    except ValueError as exc:
        raise WorkspaceError(str(exc)) from None
    out = np.ascontiguousarray(out, dtype=np.float32)
    return want, (l2_normalize(out) if normalize else out)


def save_vectors(
    ws: Workspace,
    key: str,
    face_ids: Sequence[str],
    X: np.ndarray,
    config: Any,
    *,
    rerun: str | None = None,
    shard_rows: int = 100_000,
) -> Path:
    """Store (replace) the feature set ``key``: one vector per face, any producer.

    Args:
        face_ids: ``(N,)`` unique ids from ``faces.parquet``.
        X: ``(N, D)`` finite floats (stored as float32).
        config: the producer's resolved config (dataclass or dict), saved as ``config.json``.
        rerun: the command that recreates the set, quoted in errors (default: ``labeler embed``).

    The new set is written beside the old one and swapped in, so a crash leaves one of them.

    >>> save_vectors(ws, "cues__face", ids, cues, {"producer": "labeler.faces.cues"})  # doctest: +SKIP
    """
    ids = _as_ids(face_ids)
    X = _validate(ids, X, what=f"save_vectors({key!r})")
    known = ws.faces()["face_id"]
    if len(known):
        unknown = ~np.isin(ids.astype(str), known.to_numpy(dtype=str))
        if unknown.any():
            raise ValueError(
                f"save_vectors({key!r}): {int(unknown.sum())} face_ids are not in faces.parquet, "
                f"e.g. {ids[unknown][0]!r}; compute features for the workspace's faces"
            )
    final = embedding_dir(ws, key)
    tmp = final.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        payload = _config_payload(
            ws, key, dim=X.shape[1], config=config, fingerprint=None, rerun=rerun
        )
        write_json(tmp / CONFIG_NAME, payload)
        for i, start in enumerate(range(0, max(len(ids), 1), shard_rows)):
            part = vectors_table(ids[start : start + shard_rows], X[start : start + shard_rows])
            write_table(tmp / f"part-{i:05d}.parquet", part)
        trash = None
        if final.exists():
            trash = final.parent / f".{key}.{uuid.uuid4().hex[:8]}.old"
            final.rename(trash)
        tmp.rename(final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %d vectors of dim %d as %s", len(ids), X.shape[1], key)
    return final


def delete_embeddings(ws: Workspace, key: str) -> None:
    """Remove the stored set ``key`` (no error if absent)."""
    d = embedding_dir(ws, key)
    if d.exists():
        trash = d.parent / f".{key}.{uuid.uuid4().hex[:8]}.old"
        d.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


def list_embeddings(ws: Workspace) -> dict[str, EmbeddingInfo]:
    """Stored feature sets, ``{key: EmbeddingInfo}`` sorted by key (row counts from metadata)."""
    out: dict[str, EmbeddingInfo] = {}
    root = ws.embeddings_dir
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(".") or "__" not in d.name:
            continue
        cfg = read_config(ws, d.name) or {}
        paths = shard_paths(ws, d.name)
        if not paths and not cfg:
            continue
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        dim = int(cfg.get("dim", 0))
        if not dim and paths:
            dim = pq.read_schema(paths[0]).field("vector").type.list_size
        name, region = split_key(d.name)
        out[d.name] = EmbeddingInfo(
            key=d.name,
            backbone=name,
            region=region,
            dim=dim,
            n_rows=n,
            n_shards=len(paths),
            path=d,
            rerun=cfg.get("rerun") or default_rerun(ws, d.name),
        )
    return out
