"""The feature set the tool clusters on: stored blocks combined into one matrix.

A *spec* names stored feature sets (``labeler.embeddings.store`` keys) joined by ``+``, each
optionally weighted with ``*w``::

    "cues__face"                                        colour-invariant mask cues only
    "cues__face+timm-efficientnet_lite0__lower*0.5"     cues plus half-weight CNN lower face
    "auto"                                              the default (see AUTO_BLOCKS)
    "fast"                                              the same blocks, model at 128 px

Each block is standardised per column, reduced by PCA to at most ``dims`` components
(fitted on that block only), scaled so its total variance equals its weight (so a 1280-d CNN
block cannot drown 80 cue columns), then the blocks are concatenated and every row is
L2-normalised. :func:`combine_blocks` is the pure function; :func:`load_features` reads the
workspace.

Example::

    face_ids, X = load_features(ws)            # (N,), (N, D) float32, rows unit length
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labeler.errors import InputError, WorkspaceError

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

# "auto": the blocks tried in order, with their weights; missing ones are skipped (logged).
# Chosen from the feature lab (bench/bench_features.py, bench/FEATURES.md), on all shared sets
# at once: the nose-band and mouth-chin crops of the landmark-aligned face carry the mask
# state where landmarks are right (pasted masks: head accuracy 0.98); the box crop (the
# detector's box + 20 %, not aligned by landmarks, labeler.faces.boxcrops) keeps the face when
# landmarks fail under masks, in profile or blur (real crowd photos: 0.884 -> 0.902, webfaces
# 0.988 -> 0.992, maskedfacenet 0.982 -> 0.985); the colour-invariant cues get a fifth of the
# variance (the only block that does not depend on what the masks look like).
AUTO_BLOCKS: tuple[tuple[str, float], ...] = (
    ("cues__face", 0.25),
    ("{backbone}__nose", 0.5),
    ("{backbone}__mouth_chin", 0.5),
    ("{backbone}__box", 0.5),
)
# "fast": the same blocks with the model at FAST_INPUT_SIZE px instead of its own 224 (about the
# pixels the regions have: the nose band is ~123x56 px of the 256 px aligned crop): 3.9x less
# model time per block, the same linear-head ceiling on every shared set, but a grouping and a
# Suggest loop that cost more actions (realmasks interactive eff95 19 vs 28 and maskedfacenet
# eff98 20 vs 55, medians over cluster seeds; bench/FEATURES.md "Input size per region"), so
# it is an option for very large folders, not the default.
FAST_INPUT_SIZE = 128
FAST_BLOCKS: tuple[tuple[str, float], ...] = tuple(
    (k.replace("{backbone}__", f"{{backbone}}-{FAST_INPUT_SIZE}px__"), w) for k, w in AUTO_BLOCKS
)
#: named feature specs: ``--features auto`` (the default) or ``--features fast``
PRESETS: dict[str, tuple[tuple[str, float], ...]] = {"auto": AUTO_BLOCKS, "fast": FAST_BLOCKS}
# used for "auto" when no block of AUTO_BLOCKS is stored
AUTO_FALLBACK_REGIONS = ("lower", "face")
DEFAULT_DIMS = 64


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """``"a+b*0.5"`` -> ``[("a", 1.0), ("b", 0.5)]``."""
    out: list[tuple[str, float]] = []
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise InputError(
                f"empty block in feature spec {spec!r}; write e.g. 'cues__face+KEY*0.5'"
            )
        key, _, w = part.partition("*")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise InputError(f"bad weight {w!r} in feature spec {spec!r}; write KEY*0.5") from None
        if weight <= 0:
            raise InputError(f"weight of {key!r} must be > 0 in feature spec {spec!r}")
        out.append((key.strip(), weight))
    return out


def _pca(Z: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    n, d = Z.shape
    if dims <= 0:
        return Z
    k = min(dims, d, max(n - 1, 1))
    if k >= d:
        return Z
    from sklearn.decomposition import PCA

    return (
        PCA(n_components=k, random_state=seed, svd_solver="auto")
        .fit_transform(Z)
        .astype(np.float32)
    )


def combine_blocks(
    blocks: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None = None,
    dims: int = DEFAULT_DIMS,
    seed: int = 0,
) -> np.ndarray:
    """Combine feature blocks (each (N, D_i)) into one (N, D) float32 matrix of unit rows.

    weights: relative weight per block (default 1 each): the share of the total variance a
    block gets. dims: PCA components kept per block (typical 16-64; a block with fewer
    columns is kept whole; 0 = no PCA).
    """
    if not blocks:
        raise WorkspaceError("no feature blocks to combine; run 'labeler embed' first")
    n = len(blocks[0])
    weights = [1.0] * len(blocks) if weights is None else list(weights)
    if len(weights) != len(blocks):
        raise ValueError(f"{len(blocks)} blocks but {len(weights)} weights")
    parts = []
    for B, w in zip(blocks, weights, strict=True):
        B = np.asarray(B, dtype=np.float32)
        if B.ndim != 2 or len(B) != n:
            raise ValueError(f"every block needs {n} rows (N, D); got shape {B.shape}")
        Z = (B - B.mean(0)) / (B.std(0) + 1e-6)
        Z = _pca(Z, dims, seed)
        total = float((Z**2).sum() / max(n, 1))
        parts.append(Z * np.sqrt(w / max(total, 1e-12)))
    X = np.concatenate(parts, axis=1)
    X /= np.clip(np.linalg.norm(X, axis=1, keepdims=True), 1e-12, None)
    return X.astype(np.float32)


#: principal components of the features a linear head learns on (:func:`head_features`)
HEAD_DIMS = 256
#: faces (a random sample) the principal components are fitted on
HEAD_FIT_ROWS = 20_000


def head_features(
    blocks: Sequence[np.ndarray],
    *,
    dims: int = HEAD_DIMS,
    fit_rows: int = HEAD_FIT_ROWS,
    seed: int = 0,
) -> np.ndarray:
    """The features the Suggest step's ridge head learns on (N, k) float32: every column of
    every block standardised, projected on their first ``dims`` principal components
    (fitted on up to ``fit_rows`` faces), **not whitened**, divided by sqrt(columns).

    Why not :func:`combine_blocks` (made for grouping): its 64 components a block, each
    scaled to unit variance by the head, give a linear head as much noise as signal. Kept
    unwhitened, the ridge penalty shrinks the weak directions most, as it would on all the
    columns: on realmasks, half the scenes labeled, the Suggest step's suggestions for the
    other half were 0.856 right on the grouping's features, 0.892 on all 4,065 columns and
    0.890 on these 256 components (``bench/EFFORT.md``, "The Suggest step's own features").
    Spec weights are the grouping's and are not used here. The 1/sqrt(columns) scale makes
    the head's L2 strength the same for any number of columns.
    """
    if not blocks:
        raise WorkspaceError("no feature blocks; run 'labeler embed' first")
    n = len(blocks[0])
    D = int(sum(np.shape(b)[1] for b in blocks))
    moments = []
    for b in blocks:
        b = np.asarray(b, dtype=np.float32)
        moments.append((b.mean(0), b.std(0) + 1e-6))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, min(n, fit_rows), replace=False))

    def standard(rows: np.ndarray | slice) -> np.ndarray:
        return np.concatenate(
            [
                (np.asarray(b[rows], np.float32) - m) / s
                for b, (m, s) in zip(blocks, moments, strict=True)
            ],
            axis=1,
        )

    k = min(dims, D, max(len(pick) - 1, 1))
    W = None  # fewer columns than components: all of them
    if k < D:
        from sklearn.decomposition import PCA

        W = PCA(n_components=k, random_state=seed).fit(standard(pick)).components_
        W = W.astype(np.float32)
    out = np.empty((n, k), np.float32)
    for r in range(0, n, 8192):  # row blocks: one standardised copy of 8,192 faces at a time
        Z = standard(slice(r, r + 8192))
        out[r : r + 8192] = Z if W is None else Z @ W.T
    return out / np.float32(np.sqrt(D))


def _default_backbone() -> str:
    from labeler.embeddings.backbones import DEFAULT_BACKBONE
    from labeler.embeddings.store import key_prefix

    return key_prefix(DEFAULT_BACKBONE)


INT8 = "-int8"


def _engine_key(key: str, stored: Sequence[str] = ()) -> str:
    """The preset's ``key`` as this workspace's engine stores it: ``<backbone>-int8[-Npx]__r``
    when its features of that backbone are int8, or, with none stored yet, when
    ``precision="auto"`` means the int8 model on the CPU
    (:data:`labeler.embeddings.backbones.CPU_AUTO_PRECISION`); else ``key`` itself."""
    from labeler.embeddings.backbones import CPU_AUTO_PRECISION, stored_precision
    from labeler.embeddings.store import parse_key

    if key.startswith("cues__"):
        return key
    name = parse_key(key)[0]
    precision = stored_precision(stored, name) or CPU_AUTO_PRECISION
    return _precision_twin(key) if precision == "int8" and not name.endswith(INT8) else key


def _precision_twin(key: str) -> str:
    """The same block (backbone, size, region) as the other engine stores it:
    ``efficientnet_lite0-128px__nose`` <-> ``efficientnet_lite0-int8-128px__nose``."""
    from labeler.embeddings.store import parse_key

    name, size, region = parse_key(key)
    other = name.removesuffix(INT8) if name.endswith(INT8) else name + INT8
    return f"{other}{'' if size is None else f'-{size}px'}__{region}"


def _other_engine(key: str, stored: Sequence[str]) -> str:
    """``key``, or the same block (backbone, size, region) from the other engine (int8 or
    float) when only that one is stored."""
    if key in stored or key.startswith("cues__"):
        return key
    try:
        twin = _precision_twin(key)
    except ValueError:
        return key
    if twin in stored:
        log.info("features: %s not stored; using %s (the other engine's)", key, twin)
        return twin
    return key


def _stored_size(key: str, stored: Sequence[str]) -> str:
    """``key`` (in the form the default engine stores it, see :func:`_engine_key`), or else
    the stored block of the same backbone and region from the other engine (float or int8:
    the same features within the tolerance bench/FEATURES.md gives), else at another input
    size (a workspace embedded before the sizes changed). Each stored key holds the rows of
    one engine only; a workspace's blocks are read, never mixed."""
    from labeler.embeddings.store import parse_key

    if key.startswith("cues__"):
        return key
    preferred = _engine_key(key, stored)
    if preferred in stored:
        return preferred
    if key in stored:
        return key
    name, size, region = parse_key(key)
    base = name.removesuffix(INT8)
    alternatives = []
    for other in stored:
        try:
            o_name, o_size, o_region = parse_key(other)
        except ValueError:
            continue
        if (o_name.removesuffix(INT8), o_region) == (base, region):
            alternatives.append((o_size != size, other))  # the same size first
    if alternatives:
        other = min(alternatives)[1]
        log.info("features: %s not stored; using %s", preferred, other)
        return other
    return preferred


def resolve_spec(spec: str, stored: Sequence[str]) -> list[tuple[str, float]]:
    """The blocks ``spec`` means for a workspace holding the ``stored`` keys.

    ``auto`` keeps the present blocks of :data:`AUTO_BLOCKS` (logging the missing ones; the
    lower-face CNN block at weight 0.5 stands in when no CNN region block is there); with
    none present it falls back to one stored CNN block (lower face, then whole face, then any).
    """
    stored = list(stored)
    if spec not in PRESETS:
        # a named block stored only by the other engine (int8 <-> float) is read from there
        blocks = [(_other_engine(k, stored), w) for k, w in parse_spec(spec)]
        missing = [k for k, _ in blocks if k not in stored]
        if missing:
            hint = (
                "labeler run IMAGES -w WS (it computes the cues)"
                if any(k.startswith("cues") for k in missing)
                else "labeler embed"
            )
            raise WorkspaceError(
                f"feature spec {spec!r} names {', '.join(missing)}, not stored "
                f"(stored: {', '.join(stored) or 'none'}); run '{hint}'"
            )
        return blocks
    backbone = _default_backbone()
    wanted = [(_stored_size(k.format(backbone=backbone), stored), w) for k, w in PRESETS[spec]]
    blocks = [(k, w) for k, w in wanted if k in stored]
    missing = [k for k, _ in wanted if k not in stored]
    lower = _stored_size(f"{backbone}__{AUTO_FALLBACK_REGIONS[0]}", stored)
    if (
        len(blocks) < len(wanted)
        and lower in stored
        and not any(k.startswith(backbone) for k, _ in blocks)
    ):
        blocks.append((lower, 0.5))  # no region crops of the nose/mouth: the lower face instead
    if missing:
        log.warning(
            "features %r: %s not stored; using %s",
            spec,
            ", ".join(missing),
            ", ".join(k for k, _ in blocks) or "a fallback",
        )
    if blocks:
        return blocks
    for region in AUTO_FALLBACK_REGIONS:
        key = _stored_size(f"{backbone}__{region}", stored)
        if key in stored:
            return [(key, 1.0)]
    if stored:
        return [(stored[0], 1.0)]
    raise WorkspaceError("the workspace has no stored features; run 'labeler embed' first")


def load_features(
    ws: Workspace,
    spec: str = "auto",
    *,
    dims: int = DEFAULT_DIMS,
    face_ids: Sequence[str] | None = None,
    head: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(face_ids (N,), X (N, D) float32)`` for ``spec`` in faces.parquet order.

    ``head=True``: the blocks as a linear head learns on them (:func:`head_features`, what
    the Suggest step and *Regroup* use) instead of combined for grouping.

    See the module docstring for the spec syntax and the combination. Raises ``ValueError``
    naming the command to run when a named block is not stored.

    The combined matrix is cached under ``WS/cache/`` (:func:`features_cache_path`), keyed by
    the blocks, their weights, ``dims``, the face ids and every stored file of the blocks
    (name, size, modification time, inode, tail): any new or rewritten shard or config is a
    new key. At 133,000 faces ``labeler suggest`` took 9.6 s with it against 58.2 s
    (``bench/results/features_cache.md``); the Suggest step and *Regroup* read it every
    run. A cache that cannot be read or written is recomputed (logged), never an error.
    """
    from labeler.embeddings.store import list_embeddings, load_embeddings

    stored = list(list_embeddings(ws))
    blocks = resolve_spec(spec, stored)
    if face_ids is None:
        face_ids = ws.require_faces()["face_id"].to_numpy(dtype=object)
    ids = np.asarray(face_ids, dtype=object)
    cache = features_cache_path(ws, blocks, HEAD_DIMS if head else dims, ids, head=head)
    X = _read_cache(cache, len(ids))
    if X is not None:
        log.info("features %s: cached %s", spec, cache.name)
        return ids, X
    mats = []
    for key, _ in blocks:
        _, B = load_embeddings(ws, key, face_ids=face_ids)
        mats.append(B)
    log.info("features %s -> %s%s", spec, " + ".join(f"{k}*{w:g}" for k, w in blocks),
             " (for a head)" if head else "")  # fmt: skip
    if head:
        X = head_features(mats)
    else:
        X = combine_blocks(mats, weights=[w for _, w in blocks], dims=dims)
    _write_cache(cache, X)
    return ids, X


def features_for(
    ws: Workspace, spec: str, face_ids: Sequence[str], *, head: bool = False
) -> np.ndarray:
    """(N, D) float32: :func:`load_features` of ``spec`` (``head``: as a head learns on them)
    in the order of ``face_ids`` (a cluster run's, say). Read for every face of the workspace,
    so every caller shares one cached matrix, then aligned; a face without features raises,
    naming the command to re-run."""
    from labeler.workspace import align_to_faces

    fids, X = load_features(ws, spec, head=head)
    return align_to_faces(
        list(face_ids), np.asarray(fids).astype(str), np.asarray(X),
        what=f"features {spec!r}", fix=f"re-run 'labeler run {ws.root}'",
    )  # fmt: skip


CACHE_DIR = "cache"
#: bytes read from the end of each stored file for the cache key: a file rewritten within the
#: file system's clock tick, with the same size and a reused inode, still changes its key
TAIL_BYTES = 65536


def features_cache_path(
    ws: Workspace,
    blocks: Sequence[tuple[str, float]],
    dims: int,
    face_ids: np.ndarray,
    *,
    head: bool = False,
) -> Path:
    """``WS/cache/features-<blocks>-<state>.npy``: ``<blocks>`` hashes the blocks, weights and
    dims (one file per feature set: a newer state replaces it), ``<state>`` the face ids and,
    of every file of the blocks' folders, its name, size, modification time, inode and last
    :data:`TAIL_BYTES` bytes."""
    import hashlib

    from labeler.embeddings.store import embedding_dir

    kind = (list(blocks), int(dims)) + (("head", HEAD_FIT_ROWS),) * head
    what = hashlib.sha1(repr(kind).encode()).hexdigest()[:12]
    state = hashlib.sha1("\n".join(map(str, face_ids)).encode())
    for key, _ in blocks:
        folder = embedding_dir(ws, key)
        for f in sorted(folder.iterdir()) if folder.is_dir() else ():
            st = f.stat()
            state.update(f"{key}/{f.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}\n".encode())
            with open(f, "rb") as fh:  # the tail: a Parquet footer (offsets, statistics)
                fh.seek(max(0, st.st_size - TAIL_BYTES))
                state.update(fh.read(TAIL_BYTES))
    return ws.root / CACHE_DIR / f"features-{what}-{state.hexdigest()[:16]}.npy"


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        X = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("feature cache %s unreadable (%s); recomputing", path, exc)
        return None
    if X.ndim != 2 or len(X) != n or X.dtype != np.float32:
        log.warning("feature cache %s has shape %s; recomputing", path, X.shape)
        return None
    return X


def _write_cache(path: Path, X: np.ndarray) -> None:
    """Write the cache atomically and drop the older states of the same feature set."""
    from labeler._io import atomic_path

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, X, allow_pickle=False)
        prefix = path.name.rsplit("-", 1)[0] + "-"
        for old in path.parent.glob(f"{prefix}*.npy"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning(
            "feature cache %s not written (%s); the features are recomputed next time", path, exc
        )
