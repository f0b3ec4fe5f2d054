"""The workspace: one directory of Parquet tables, cached crops and a SQLite label log.

Layout (all paths relative to the workspace root)::

    workspace.json                 roots of the ingested folders, format version
    images.parquet                 one row per file seen (IMAGES_SCHEMA)
    faces.parquet                  one row per face, keyed by ``face_id`` (FACES_SCHEMA)
    detect_log.parquet             one row per processed image (n_faces, error): resume state
    crops/<ab>/<face_id>.jpg       aligned face crops, sharded by the first 2 hex of face_id
    embeddings/<backbone>__<region>/part-*.parquet   (face_id, vector) shards + config.json
    clusters/<run_id>/...          cluster runs (see labeler.cluster)
    labels.db                      SQLite (WAL) append-only label event log
    steps/<step>.json              the resolved config of the last run of each step

Every artifact aligns to ``faces`` by ``face_id``: :func:`align_to_faces` is the one place
that reorders rows and refuses mismatches.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labeler._io import atomic_path, atomic_write_bytes
from labeler.errors import WorkspaceError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# --- table contracts -------------------------------------------------------------------------

IMAGES_SCHEMA = pa.schema(
    [
        (
            "image_id",
            pa.string(),
        ),  # sha1 of the file bytes (first 16 hex); "path:<sha1>" if unreadable
        ("root", pa.int32()),  # index into workspace.json "roots"
        ("path", pa.string()),  # path relative to the root, POSIX separators
        ("size_bytes", pa.int64()),
        ("mtime", pa.float64()),
        ("width", pa.int32()),  # after EXIF orientation; 0 when unreadable
        ("height", pa.int32()),
        ("status", pa.string()),  # ok | error | duplicate
        ("error", pa.string()),  # one-line reason when status == error
        ("duplicate_of", pa.string()),  # path of the first copy when status == duplicate
    ]
)

# Canonical landmark order used by every detector: 4 points, (x, y) in source-image pixels.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth")

FACES_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),  # f"{image_id}_{face_index}", stable across re-runs
        ("image_id", pa.string()),
        ("face_index", pa.int32()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("score", pa.float32()),
        ("landmarks", pa.list_(pa.float32(), 8)),  # LANDMARK_NAMES as x, y pairs
        ("detector", pa.string()),
        ("whole_image", pa.bool_()),  # no detection: the whole (crop-like) image stands in
        ("crop_path", pa.string()),  # relative to the workspace
        # degrees clockwise the photo was turned to find the face upright (0/90/180/270;
        # null in workspaces detected before rotations were tried)
        ("rotation", pa.int16()),
    ]
)


def face_id_for(image_id: str, face_index: int) -> str:
    """The stable id of the ``face_index``-th face of an image."""
    return f"{image_id}_{face_index}"


# --- small IO helpers ------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types, exactly as :func:`write_json` stores it and ``json``
    reads it back: dataclasses and dicts become dicts with str keys, tuples lists, paths
    strings, numpy scalars Python numbers. Compare a config with a stored one through this."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def new_run_id(suffix: str = "") -> str:
    """A new run id, ``YYYYmmdd-HHMMSS-<6 hex>[-<suffix>]`` in UTC: sorts by creation time
    and is unique across processes started in the same second (cluster runs, model runs)."""
    with _RUN_ID_LOCK:  # a random start per process, then a counter: never twice in one
        tail = next(_RUN_ID_COUNTER) % 0x1000000  # process (random 6 hex digits collided)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{tail:06x}"
    return f"{stamp}-{suffix}" if suffix else stamp


_RUN_ID_LOCK = threading.Lock()
_RUN_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` (see :func:`jsonable`) as indented, key-sorted JSON, atomically."""
    atomic_write_bytes(path, json.dumps(jsonable(obj), indent=2, sort_keys=True).encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_table(
    path: Path, table: pa.Table | pd.DataFrame, schema: pa.Schema | None = None
) -> None:
    """Atomically write a Parquet table (validated against ``schema`` when given)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    elif schema is not None:
        table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def empty_table(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


# --- alignment -------------------------------------------------------------------------------


def align_to_faces(
    face_ids: Sequence[str], row_ids: Sequence[str], values: np.ndarray, *, what: str, fix: str
) -> np.ndarray:
    """Reorder ``values`` (rows keyed by ``row_ids``) to the order of ``face_ids``.

    Raises ``ValueError`` naming ``what`` and ``fix`` when any face has no row, or when
    ``row_ids`` and ``values`` disagree in length.
    """
    if len(row_ids) != len(values):
        raise WorkspaceError(f"{what} has {len(values)} rows but {len(row_ids)} ids; {fix}")
    index = pd.Index(row_ids)
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise WorkspaceError(f"{what} has duplicate face_id {dup!r}; {fix}")
    pos = index.get_indexer(pd.Index(face_ids))
    missing = int((pos < 0).sum())
    if missing:
        raise WorkspaceError(
            f"{what} covers {len(face_ids) - missing} of {len(face_ids)} faces; {fix}"
        )
    return values[pos]


# --- the workspace object --------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """Paths and table access for one workspace directory. Cheap to construct.

    ``root`` may be a ``str`` or any path-like (stored as a :class:`~pathlib.Path`);
    :meth:`open` also resolves it and checks that it is a workspace.
    """

    root: Path

    def __post_init__(self) -> None:
        if not isinstance(self.root, Path):
            try:
                root = Path(os.fspath(self.root))
            except TypeError:
                raise TypeError(
                    f"Workspace root must be a str or path, got {type(self.root).__name__} "
                    f"{self.root!r}; pass the workspace directory, e.g. Workspace.open('ws')"
                ) from None
            object.__setattr__(self, "root", root)

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, create: bool = False) -> Workspace:
        root = Path(root).expanduser().resolve()
        ws = cls(root)
        if create:
            root.mkdir(parents=True, exist_ok=True)
            if not ws.meta_path.exists():
                write_json(ws.meta_path, {"format_version": FORMAT_VERSION, "roots": []})
        elif not ws.meta_path.exists():
            raise WorkspaceError(
                f"{root} is not a labeler workspace (no workspace.json); "
                "create one with 'labeler ingest IMAGES -w WORKSPACE'"
            )
        return ws

    # paths
    @property
    def meta_path(self) -> Path:
        return self.root / "workspace.json"

    @property
    def images_path(self) -> Path:
        return self.root / "images.parquet"

    @property
    def faces_path(self) -> Path:
        return self.root / "faces.parquet"

    @property
    def crops_dir(self) -> Path:
        return self.root / "crops"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def clusters_dir(self) -> Path:
        return self.root / "clusters"

    @property
    def labels_db(self) -> Path:
        return self.root / "labels.db"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def step_config_path(self, step: str) -> Path:
        return self.root / "steps" / f"{step}.json"

    # meta
    def meta(self) -> dict[str, Any]:
        return read_json(self.meta_path)

    def roots(self) -> list[Path]:
        return [Path(p) for p in self.meta().get("roots", [])]

    def add_root(self, folder: Path) -> int:
        """Register an image folder; returns its index (existing index if already known)."""
        folder = Path(folder).resolve()
        meta = self.meta()
        roots = meta.setdefault("roots", [])
        if str(folder) in roots:
            return roots.index(str(folder))
        roots.append(str(folder))
        write_json(self.meta_path, meta)
        return len(roots) - 1

    def follows_links(self, root_index: int) -> bool:
        """Whether links under the ingested folder ``root_index`` may lead out of it
        (``labeler ingest --follow-links``; :mod:`labeler.fence`). False until asked for."""
        meta = self.meta()
        roots = meta.get("roots", [])
        return 0 <= root_index < len(roots) and roots[root_index] in meta.get("follow_links", [])

    def set_follow_links(self, root_index: int, follow: bool) -> None:
        """Record whether links under the folder ``root_index`` may lead out of it; ingest,
        export and the app read it from here (``workspace.json`` ``"follow_links"``)."""
        meta = self.meta()
        folder = meta["roots"][root_index]
        following = [r for r in meta.get("follow_links", []) if r != folder]
        if follow:
            following.append(folder)
        if following != meta.get("follow_links", []):
            meta["follow_links"] = following
            write_json(self.meta_path, meta)

    def save_step_config(self, step: str, config: Any) -> None:
        write_json(self.step_config_path(step), config)

    # tables
    def images(self) -> pd.DataFrame:
        if not self.images_path.exists():
            return empty_table(IMAGES_SCHEMA)
        return pq.read_table(self.images_path, schema=IMAGES_SCHEMA).to_pandas()

    def write_images(self, df: pd.DataFrame) -> None:
        if df["path"].duplicated().any() and df.duplicated(["root", "path"]).any():
            raise WorkspaceError("images table has duplicate (root, path) rows")
        write_table(self.images_path, df, IMAGES_SCHEMA)

    def faces(self) -> pd.DataFrame:
        if not self.faces_path.exists():
            return empty_table(FACES_SCHEMA)
        return pq.read_table(self.faces_path, schema=FACES_SCHEMA).to_pandas()

    def require_faces(self) -> pd.DataFrame:
        faces = self.faces()
        if faces.empty:
            raise WorkspaceError(
                f"{self.root} has no faces yet; run 'labeler detect -w {self.root}' first"
            )
        return faces

    def write_faces(self, df: pd.DataFrame) -> None:
        if df["face_id"].duplicated().any():
            dup = df.loc[df["face_id"].duplicated(), "face_id"].iloc[0]
            raise WorkspaceError(f"faces table has duplicate face_id {dup!r}")
        if "rotation" not in df:  # tables made before rotations were tried: unknown (null)
            df = df.assign(rotation=pd.array([None] * len(df), dtype="Int16"))
        write_table(self.faces_path, df, FACES_SCHEMA)

    def image_path(self, root_index: int, rel_path: str) -> Path:
        return self.roots()[root_index] / rel_path

    def crop_path(self, face_id: str) -> Path:
        return self.crops_dir / face_id[:2] / f"{face_id}.jpg"

    def box_crop_path(self, face_id: str) -> Path:
        """The face's box crop (:mod:`labeler.faces.boxcrops`), beside its aligned crop."""
        return self.crops_dir / face_id[:2] / f"{face_id}.box.jpg"

    def face_image_paths(self, faces: pd.DataFrame | None = None) -> pd.Series:
        """Absolute source path of each face's image, indexed like ``faces``."""
        faces = self.faces() if faces is None else faces
        images = self.images()
        images = images[images["status"] == "ok"].drop_duplicates("image_id")
        roots = self.roots()
        lookup = {
            r.image_id: str(roots[int(r.root)] / r.path) for r in images.itertuples(index=False)
        }
        return faces["image_id"].map(lookup)

    def resolve_inside(self, path: str | os.PathLike[str]) -> Path:
        """Return ``path`` resolved if it lies inside the workspace or an ingested root.

        The app serves images only through this check, whatever a request asks for. A path
        under an ingested folder goes through that folder's fence
        (:func:`labeler.fence.resolve_inside`, with the folder's ``--follow-links`` setting):
        a link out of the folder, a device or a FIFO raises :class:`~labeler.fence.FenceError`
        (a ``PermissionError``), exactly as ingest and export refuse it.
        """
        from labeler.fence import FenceError, resolve_inside, within

        meta = self.meta()
        roots = [Path(p) for p in meta.get("roots", [])]
        following = set(meta.get("follow_links", []))

        def fenced(base: Path, rel: Path, follow: bool, fallback: Path) -> Path:
            try:
                return resolve_inside(base, rel, follow_links=follow)
            except FenceError:
                raise
            except OSError:  # missing or unreadable: the caller's read fails and says so
                return fallback

        given = Path(os.path.abspath(path))  # as named, links not resolved yet
        # the deepest folder that holds it as named: a workspace inside a photo folder (or
        # the other way round) keeps its own rule
        holders = [b for b in [self.root, *roots] if within(given, b)]
        if holders:
            base = max(holders, key=lambda b: len(b.parts))
            if base != self.root:
                rel = given.relative_to(base)
                real = Path(os.path.realpath(given))
                return fenced(base, rel, str(base) in following, real)
        p = given.resolve()
        if within(p, self.root):
            return p
        for base in roots:
            if within(p, base):  # a path from elsewhere that leads into a photo folder
                return fenced(base, p.relative_to(base), False, p)
        raise PermissionError(f"{p} is outside the workspace and its ingested folders")


def iter_batches(items: Sequence[Any] | Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Yield lists of at most ``size`` items."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
