"""Person grouping, so that no person ends up in two splits.

Sources of a person id per face, chosen by :func:`find_persons` (``method="auto"`` takes the
first that applies):

- ``column``: a CSV the user supplies with a ``person`` column and either ``face_id`` or
  ``path`` (path of the source image relative to the ingested folder, or its file name).
- ``pattern``: a regular expression applied to the source path relative to the ingested
  folder; the first capture group (or the whole match) is the person, e.g.
  ``--person-pattern '^([^/]+)/'`` for one folder per person or ``'^(\\d+)_'`` for
  ``00042_Mask.jpg``-style names.
- ``identity`` (the default when face-recognition-models is installed): every cue that says "same person"
  becomes a link, and persons are the groups the links join (transitively), built for
  recall because a missed merge leaks a person into two splits while an extra merge only
  makes the split coarser. The cues (:func:`identity_links`):

  * the same source image (hard: never cut);
  * copies: near-duplicates, mirrors and crops of one photo, by a stored whole-face
    embedding (cosine >= :data:`COPY_THRESHOLD`; merged before every other soft link);
  * EXIF: photos of one camera taken within :data:`EXIF_SECONDS` of each other (weak);
  * identity descriptors: dlib's ResNet face descriptor (128-d, trained for face
    recognition; the weights ship in the ``face-recognition-models`` package, CC0; run by
    onnxruntime, :mod:`labeler.export.identity`, 15.9x less CPU than dlib's code) computed
    from labeler's own aligned crops, never from dlib's detector. The crop is resampled to
    dlib's 150 px chip (eyes where dlib's aligner puts them), everything below the eyes is
    painted grey for masked and unmasked faces alike (a mask then cannot pull a face towards
    other masked people) and the descriptor is the mean of the chip's and its mirror's.
    Pairs closer than :data:`LINK_THRESHOLD` are linked; closer than :data:`SURE_THRESHOLD`
    counts as a sure link, the rest as weak links. Descriptors are cached in
    ``WORKSPACE/identity/``. Only faces whose eyes are at least
    :data:`MIN_IDENTITY_EYE_PX` pixels apart in their photo are described and linked:
    below it the descriptor cannot tell people apart (it links faces of different scenes),
    so a small face joins its person by the other cues only, and its descriptor time is saved.

  Links are merged strongest first (union-find) under a guard: no group may grow above
  ``max_share`` of the faces (the smallest split's share for an export, one fold for
  ``train``), else the requested ratios could not be met; a link that would break the
  guard is cut (the weakest links come last, so they are the ones cut), and the cut is
  logged and reported (:class:`Persons.confidence`). Thresholds measured on MFR2 and a
  copy-augmented MFR2 (``bench/bench_persons.py``, ``bench/PERSONS.md``).
- ``embedding``: near-duplicates of a stored generic whole-face embedding (copies of one
  photo, not the same person across photos).
- ``image``: the source image only.

Faces of the same source image always share a group (one scene must not straddle splits).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from labeler.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

# cosine similarity above which two faces count as the same photo / same person (generic CNN)
DEFAULT_DUPLICATE_THRESHOLD = 0.95


def connected_groups(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by ``edges`` (E, 2) -> (N,) int64 labels.

    Labels are numbered by first appearance, so they are deterministic.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[comp]


#: above this many faces, pair searches (copies, identity links) use a FAISS IVF index
#: (each face's nearest ``NEIGHBOURS_LARGE``, then the exact threshold) instead of all pairs:
#: all pairs cost O(N^2) (about 6 min and a 2 GB block for copies at 133,000 faces)
EXACT_PAIRS_MAX = 20_000
#: neighbours looked up per face on large sets; a face's links beyond them still join it
#: to its group through the others (groups are connected components)
NEIGHBOURS_LARGE = 32


def _nearest(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` Euclidean neighbours of every row of ``X`` (N, D) float32 among
    the rows (itself included): ``(ids (N, k) int64, squared distances (N, k))``; a FAISS
    IVF index (cells of ~90 rows, 32 cells probed: the pairs these links need are far closer
    than the rest). ``labeler.cluster.knn`` builds the same kind of index for cosine kNN."""
    from labeler._deps import require

    faiss = require("faiss", purpose="nearest-neighbour search (pip install faiss-cpu)")
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    nlist = int(max(1, min(4 * np.sqrt(n), n // 40)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
    index.cp.seed = 0
    rng = np.random.default_rng(0)
    train = X[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))]
    index.train(train)
    index.add(X)
    index.nprobe = min(32, nlist)
    scores, ids = index.search(X, int(min(k, n)))
    return ids, scores


def _pca(X: np.ndarray, dims: int) -> np.ndarray:
    """``X`` (N, D) projected on its first ``dims`` principal axes (fit on 20,000 rows)."""
    if X.shape[1] <= dims:
        return X
    rng = np.random.default_rng(0)
    sample = X[np.sort(rng.choice(len(X), min(len(X), 20_000), replace=False))]
    mean = sample.mean(0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    out = np.empty((len(X), dims), np.float32)
    for start in range(0, len(X), 16_384):
        out[start : start + 16_384] = (X[start : start + 16_384] - mean) @ vt[:dims].T
    return out


def _pairs(rows: np.ndarray, ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
    i = np.broadcast_to(rows[:, None], ids.shape)[keep]
    j = ids[keep]
    e = np.stack([np.minimum(i, j), np.maximum(i, j)], 1)
    e = e[e[:, 0] != e[:, 1]]
    return np.unique(e, axis=0).astype(np.int64) if len(e) else np.zeros((0, 2), np.int64)


def near_duplicate_edges(
    X: np.ndarray, *, threshold: float = DEFAULT_DUPLICATE_THRESHOLD, block: int = 4096
) -> np.ndarray:
    """Pairs (i, j), i < j, whose cosine similarity is >= ``threshold``.

    X: (N, D) float vectors (normalised here). Up to :data:`EXACT_PAIRS_MAX` rows exact,
    blockwise ``X @ X.T`` in float32 (O(N^2 D) time, O(block * N) memory); above, each row's
    :data:`NEIGHBOURS_LARGE` nearest by a FAISS IVF index, kept at the same threshold.
    """
    X = np.asarray(X, dtype=np.float32)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if len(X) > EXACT_PAIRS_MAX:
        # candidates: nearest in a 64-d PCA space (copies are nearest in any projection),
        # then the exact cosine of each candidate pair
        ids, _ = _nearest(_pca(X, 64), NEIGHBOURS_LARGE)
        e = _pairs(np.arange(len(X)), ids, ids >= 0)
        cos = (
            np.concatenate(
                [
                    np.einsum("ij,ij->i", X[c[:, 0]], X[c[:, 1]])
                    for c in np.array_split(e, max(1, len(e) // 32_768))
                ]
            )
            if len(e)
            else np.zeros(0)
        )  # in chunks: 4 M pairs x 1,280 floats would be 20 GB
        return e[cos >= threshold]
    out = []
    for start in range(0, len(X), block):
        sims = X[start : start + block] @ X.T
        i, j = np.nonzero(sims >= threshold)
        i = i + start
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def persons_from_embeddings(
    X: np.ndarray, *, threshold: float = DEFAULT_DUPLICATE_THRESHOLD
) -> np.ndarray:
    """Group near-duplicate faces: (N, D) embeddings -> (N,) int64 group ids (see module limits)."""
    return connected_groups(len(X), near_duplicate_edges(X, threshold=threshold))


def persons_from_pattern(paths: Sequence[str], pattern: str) -> np.ndarray:
    """Person id per path from a regex: the first capture group, else the whole match.

    Paths that do not match keep their own path as the person (they stay alone) and are
    counted in a warning. Returns (N,) object array of strings.
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise InputError(f"--person-pattern {pattern!r} is not a valid regex: {exc}") from None
    out = []
    misses = 0
    for p in paths:
        m = rx.search(str(p))
        if m is None:
            misses += 1
            out.append(f"path:{p}")
        else:
            out.append("re:" + (m.group(1) if m.groups() else m.group(0)))
    if misses:
        log.warning(
            "--person-pattern %r matched %d of %d paths; unmatched faces are their own person",
            pattern,
            len(out) - misses,
            len(out),
        )
    return np.asarray(out, dtype=object)


def persons_from_csv(
    csv_path: str | Path, *, face_ids: Sequence[str], paths: Sequence[str]
) -> np.ndarray:
    """Person id per face from a user CSV with columns ``person`` and ``face_id`` or ``path``.

    ``path`` matches the source path relative to the ingested folder, or else the file name.
    Faces the CSV does not cover are their own person (warned). Returns (N,) object array.
    """
    csv_path = Path(csv_path)
    table = pd.read_csv(csv_path, dtype=str)
    if "person" not in table.columns or not ({"face_id", "path"} & set(table.columns)):
        raise InputError(
            f"{csv_path} has columns {list(table.columns)}; it needs 'person' and 'face_id' or 'path'"
        )
    face_ids = [str(f) for f in face_ids]
    paths = [str(p) for p in paths]
    person = pd.Series([None] * len(face_ids), dtype=object)
    if "face_id" in table.columns:
        lookup = table.dropna(subset=["face_id"]).set_index("face_id")["person"]
        lookup = lookup[~lookup.index.duplicated()]
        person = pd.Series(face_ids).map(lookup)
    if "path" in table.columns:
        by_path = table.dropna(subset=["path"]).drop_duplicates("path").set_index("path")["person"]
        by_name = by_path.copy()
        by_name.index = [Path(p).name for p in by_name.index]
        by_name = by_name[~by_name.index.duplicated()]
        from_path = pd.Series(paths).map(by_path)
        from_name = pd.Series([Path(p).name for p in paths]).map(by_name)
        person = person.fillna(from_path).fillna(from_name)
    missing = int(person.isna().sum())
    if missing:
        log.warning(
            "%s covers %d of %d faces; the rest are their own person",
            csv_path,
            len(person) - missing,
            len(person),
        )
    person = person.astype(object)
    out = np.where(person.isna(), ["face:" + f for f in face_ids], "csv:" + person.astype(str))
    return np.asarray(out, dtype=object)


def combine_groups(*groupings: Sequence | np.ndarray | None) -> np.ndarray:
    """Union of several groupings of the same N rows: rows linked by any grouping share a group.

    Returns (N,) int64 component ids numbered by first appearance.
    """
    groupings = [np.asarray(g, dtype=object) for g in groupings if g is not None]
    if not groupings:
        raise ValueError("combine_groups needs at least one grouping")
    n = len(groupings[0])
    edges = []
    for g in groupings:
        if len(g) != n:
            raise ValueError(f"groupings disagree in length: {len(g)} vs {n}")
        codes, _ = pd.factorize(pd.Series(g).astype(str))
        order = np.argsort(codes, kind="stable")
        sc = codes[order]
        same = sc[1:] == sc[:-1]
        edges.append(np.stack([order[:-1][same], order[1:][same]], 1))
    return connected_groups(n, np.concatenate(edges))


METHODS = ("auto", "column", "pattern", "identity", "embedding", "image")

#: dlib ResNet descriptor distance (Euclidean, mirror-averaged eye-region chip) under which
#: two faces are linked as one person; measured on MFR2 and a copy-augmented MFR2 by
#: ``bench/bench_persons.py`` (pairwise precision 0.46, recall 0.82 at this distance:
#: tuned for recall, the guard keeps the groups small enough for the splits).
IDENTITY_THRESHOLD = 0.50
#: links closer than this are "sure" (pairwise precision 0.94 on the copy-augmented MFR2);
#: faces that joined their group only through links between the two are counted as weak
SURE_THRESHOLD = 0.40
#: cosine of a stored whole-face embedding from which two faces are copies of one photo
#: (mirrored, cropped, re-encoded): 0.92 of such pairs, no pair of different photos, on the
#: copy-augmented MFR2
COPY_THRESHOLD = 0.90
#: descriptor links kept per face (its nearest under the threshold): bounds the links on
#: large sets; masked faces have many close neighbours, so it must stay well above a
#: person's photo count
NEIGHBOURS = 200
#: photos of one camera (EXIF Make + Model) taken this close in time are linked (weakly)
EXIF_SECONDS = 2.0
#: default guard: no group above this share of the faces (an 8:1:1 split's smallest part)
DEFAULT_MAX_SHARE = 0.10
IDENTITY_KEY = "dlib-resnet__eyes-mirror"
#: the 150 px dlib chip: where its aligner puts the eye centres (measured by mapping labeler's
#: eye landmarks into dlib.get_face_chip of shape_predictor_5 shapes on MFR2's bare faces)
CHIP_SIZE = 150
CHIP_EYES = np.array([[47.25, 48.0], [103.2, 48.0]], dtype=np.float64)
#: chip rows from here down (a little below the eyes) are painted grey before describing
OCCLUDE_FROM = 64
#: above this many faces, average linkage (O(N^2) memory) gives way to kNN components
_LINKAGE_MAX = 20_000
#: faces whose eyes lie fewer source pixels apart than this (the detector's landmarks: the
#: scale the aligned crop is made at) get no identity descriptor (never computed) and no
#: identity link; they join their person by the other cues only. dlib's chip puts the eyes
#: 56 px apart, so such a face is upsampled over 5.6x, and at 10 px between the pupils
#: people matching faces are at chance (Merino et al. 2025, arXiv:2503.20108). Measured on
#: realmasks (2,022 faces of 804 web scenes; bench/bench_persons_realmasks.py): the share
#: of pairs of different scenes closer than IDENTITY_THRESHOLD is 0.86 under 8 px, 0.41 at
#: 8-12, 0.26 at 12-16, 0.15-0.20 at 16-24 and 0.04-0.09 from 24 px (0.036 on MFR2, eyes
#: ~39 px apart, where the threshold was set). The rise is gradual; 16 px would cut more
#: false links (cross-scene sure links 75,908 -> 25,683 vs 52,241 here) but drops two of
#: MFR2's labeled faces (a 25 px misdetection on a mask, a turned face) and its persons
#: table gets worse (bench/PERSONS.md); 10 px leaves it unchanged.
MIN_IDENTITY_EYE_PX = 10.0


def sureness_line(confidence: dict) -> str:
    """One line on how sure a grouping is, from :meth:`LinkReport.as_dict`; "" when empty."""
    c = confidence
    if not c:
        return ""
    line = (
        f"{c['weak_faces']} of {c['n_faces']} faces joined their person only through a weak "
        f"link; largest person {c['largest']} faces ({c['largest_share']:.0%})"
    )
    small = c.get("no_identity", {}).get("too_small", 0)
    if small:
        line += (
            f"; {small} faces too small for the identity descriptor (eyes under "
            f"{c['no_identity']['min_eye_px']:g} px apart in their photo): linked by source "
            "image, copies and EXIF only"
        )
    if c["cut_links"]:
        line += (
            f"; {c['cut_links']} links cut so that no person exceeds {c['max_share']:.0%} "
            f"of the faces ({c['cut_faces']} faces touched: they may be one person in two "
            "splits)"
        )
    return line


@dataclass(frozen=True)
class Persons:
    """The person of each face and how it was found.

    ids: (N,) str person ids ("p0", "p1", ...); method: the source used (column, pattern,
    identity, embedding or image); detail: one line for reports; confidence: how sure the
    grouping is (see :class:`LinkReport`; empty for the explicit methods).
    """

    ids: np.ndarray
    method: str
    detail: str
    confidence: dict = field(default_factory=dict)

    @property
    def n_persons(self) -> int:
        return int(len(set(self.ids.tolist())))

    def summary(self) -> str:
        return f"{self.n_persons} persons in {len(self.ids)} faces by {self.method} ({self.detail})"

    def sureness(self) -> str:
        """One line on how sure the grouping is (:func:`sureness_line`)."""
        return sureness_line(self.confidence)

    def as_dict(self) -> dict:
        out = {
            "method": self.method,
            "detail": self.detail,
            "n_persons": self.n_persons,
            "n_faces": int(len(self.ids)),
        }
        if self.confidence:
            out["confidence"] = dict(self.confidence)
        return out


@dataclass(frozen=True)
class LinkReport:
    """How a grouping by links came out: ``groups`` (N,) int64 ids numbered by first
    appearance; ``links`` per cue; ``cut_links``: soft links the guard refused (the faces
    they would have joined may be one person in two splits); ``weak_faces``: faces outside
    the largest sure core of their group (joined only through a weak link); ``cap``: the
    largest group the guard allowed (faces)."""

    groups: np.ndarray
    links: dict
    cut_links: int
    cut_faces: int
    weak_faces: int
    cap: int
    cut_count: np.ndarray  # (N,) cut links touching each face
    too_small: int = 0  # faces below the identity floor: no descriptor, no identity link
    floor_px: float = 0.0  # that floor (eye distance in source pixels)

    def as_dict(self, max_share: float) -> dict:
        sizes = np.bincount(self.groups) if len(self.groups) else np.zeros(1, np.int64)
        n = max(len(self.groups), 1)
        return {
            "links": {k: int(v) for k, v in self.links.items()},
            "cut_links": int(self.cut_links),
            "cut_faces": int(self.cut_faces),
            "weak_faces": int(self.weak_faces),
            "n_faces": int(len(self.groups)),
            "largest": int(sizes.max()),
            "largest_share": round(float(sizes.max()) / n, 4),
            "max_share": float(max_share),
            "cap": int(self.cap),
            "no_identity": {"too_small": int(self.too_small), "min_eye_px": float(self.floor_px)},
        }


def identity_available() -> bool:
    """True when the face-recognition model file is installed (face-recognition-models)."""
    from labeler._deps import available

    return available("face_recognition_models")


def identity_chips(crops: np.ndarray) -> np.ndarray:
    """Aligned crops (N, S, S, 3) uint8 (``labeler.faces.regions.TEMPLATE``) -> dlib chips
    (N, 150, 150, 3) uint8 with the face below the eyes painted grey (see module doc)."""
    import cv2

    from labeler.faces.align import similarity_transform
    from labeler.faces.regions import TEMPLATE

    crops = np.asarray(crops, dtype=np.uint8)
    out = np.empty((len(crops), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        m = similarity_transform(TEMPLATE[:2] * crop.shape[1], CHIP_EYES)
        out[i] = cv2.warpAffine(
            np.ascontiguousarray(crop),
            m,
            (CHIP_SIZE, CHIP_SIZE),
            flags=cv2.INTER_AREA,
            borderMode=cv2.BORDER_REPLICATE,
        )
    out[:, OCCLUDE_FROM:] = 128
    return out


def identity_descriptors(crops: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """dlib ResNet identity descriptors of aligned crops: (N, S, S, 3) -> (N, 128) float32,
    the mean of the descriptors of the eye-region chip and of its mirror image (a mirrored
    copy of a photo then gets the same descriptor, and pairwise recall rises: PERSONS.md).

    dlib's model run by onnxruntime (:mod:`labeler.export.identity`: the same numbers as
    dlib's own code): 13.1 CPU ms a face (two chips) on one AVX2 core, 15.9x less than
    dlib's (bench/results/identity_speed.md).
    Raises MissingDependency when the model file is absent.
    """
    from labeler.export.identity import describe

    out = np.zeros((len(crops), 128), dtype=np.float32)
    for start in range(0, len(crops), batch):
        chips = identity_chips(crops[start : start + batch])
        vecs = describe(np.concatenate([chips, chips[:, :, ::-1]]))
        out[start : start + len(chips)] = (vecs[: len(chips)] + vecs[len(chips) :]) / 2
    return out


#: the identity cache is saved after this many new faces (and at the end): a run killed
#: mid-way keeps what it computed (minutes of CPU on a large set)
CACHE_EVERY = 4096


def _read_identity_cache(path: Path) -> dict[str, np.ndarray]:
    """``face_id -> (128,) float32`` from ``WORKSPACE/identity/<key>.parquet`` (either the
    fixed-size-list layout it is written in, or the list layout of earlier versions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.embeddings.store import _table_vectors

    table = pq.read_table(path)
    if pa.types.is_fixed_size_list(table.column("vector").type):  # the embeddings' layout
        ids, X = _table_vectors(table, source=str(path))
    else:
        ids = table.column("face_id").to_pylist()
        X = np.asarray(table.column("vector").to_pylist(), dtype=np.float32).reshape(len(ids), -1)
    return dict(zip(map(str, ids), X, strict=True))


def _write_identity_cache(path: Path, have: dict[str, np.ndarray]) -> None:
    from labeler.embeddings.store import vectors_table
    from labeler.workspace import write_table

    ids = np.asarray(list(have), dtype=object)
    X = np.stack(list(have.values())) if have else np.zeros((0, 128), np.float32)
    try:
        write_table(path, vectors_table(ids, X))
    except OSError as exc:  # a read-only workspace still gets its persons
        log.warning("could not cache identity descriptors in %s (%s)", path, exc)


def cached_identity_descriptors(
    ws: Workspace, face_ids: Sequence[str], *, progress: bool | None = None
) -> np.ndarray:
    """Identity descriptors of ``face_ids`` (N, 128), computed from the aligned crops for the
    faces not yet in ``WORKSPACE/identity/<key>.parquet`` and added there (saved every
    :data:`CACHE_EVERY` faces: a killed run resumes). ``progress``: a bar of the faces
    computed (rate and time left; ~13 CPU ms a face) on stderr (None: only on a terminal)."""
    from labeler._io import progress_bar
    from labeler.imageio import load_rgb

    face_ids = [str(f) for f in face_ids]
    path = ws.root / "identity" / f"{IDENTITY_KEY}.parquet"  # type: ignore[attr-defined]
    have: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            have = _read_identity_cache(path)
        except Exception as exc:  # a damaged cache is recomputed, never trusted
            log.warning("ignoring unreadable identity cache %s (%s); recomputing", path, exc)
    todo = [f for f in dict.fromkeys(face_ids) if f not in have]
    if todo:
        log.info("computing identity descriptors of %d faces", len(todo))
        unsaved = 0
        with progress_bar(len(todo), desc="identity descriptors", enabled=progress) as bar:
            for start in range(0, len(todo), 64):  # small steps: the bar's rate is live
                part = todo[start : start + 64]
                crops = []
                for f in part:
                    crop_file = ws.crop_path(f)  # type: ignore[attr-defined]
                    if not crop_file.is_file():
                        raise NotFoundError(
                            f"aligned crop {crop_file} is missing; re-run 'labeler detect -w {ws.root}'"  # type: ignore[attr-defined]
                        )
                    crops.append(load_rgb(crop_file))
                X = identity_descriptors(np.stack(crops))
                have.update(zip(part, X, strict=True))
                bar.update(len(part))
                unsaved += len(part)
                if unsaved >= CACHE_EVERY:
                    _write_identity_cache(path, have)
                    unsaved = 0
        if unsaved:
            _write_identity_cache(path, have)
    return (
        np.stack([np.asarray(have[f], dtype=np.float32) for f in face_ids])
        if face_ids
        else np.zeros((0, 128), np.float32)
    )


def persons_from_descriptors(X: np.ndarray, *, threshold: float = IDENTITY_THRESHOLD) -> np.ndarray:
    """Group identity descriptors (N, D) -> (N,) int64 person ids.

    Average linkage on Euclidean distances, cut at ``threshold`` (exact, O(N^2) memory; up
    to 20,000 faces). Above that, connected components of pairs closer than 0.8 x threshold
    (blockwise, exact). Ids are numbered by first appearance.
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    if n <= _LINKAGE_MAX:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        labels = fcluster(linkage(pdist(X), "average"), threshold, criterion="distance")
        return combine_groups(labels.astype(str))
    log.warning(
        "%d faces: persons by distance < %.2f links instead of average linkage", n, 0.8 * threshold
    )
    edges = []
    Xf = X.astype(np.float32)
    sq = (Xf**2).sum(1)
    for start in range(0, n, 4096):
        d2 = sq[start : start + 4096, None] + sq[None, :] - 2 * Xf[start : start + 4096] @ Xf.T
        i, j = np.nonzero(d2 <= (0.8 * threshold) ** 2)
        i = i + start
        keep = i < j
        edges.append(np.stack([i[keep], j[keep]], 1))
    return connected_groups(n, np.concatenate(edges))


def _union_find(n: int) -> tuple[np.ndarray, Callable[[int], int]]:
    parent = np.arange(n)

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return int(root)

    return parent, find


def link_groups(
    n: int,
    hard: np.ndarray,
    soft: np.ndarray,
    soft_dist: np.ndarray,
    *,
    cap: int,
    sure: float = SURE_THRESHOLD,
    cues: dict | None = None,
) -> LinkReport:
    """Groups of ``n`` faces joined by links, merged transitively under a size guard.

    hard: (H, 2) links that always merge (same image, copies, explicit persons), even past
    ``cap``. soft: (E, 2) links with a distance each (E,) (smaller = surer), merged in order
    of distance (Kruskal); a soft link whose two groups together would exceed ``cap`` faces
    is cut. Soft links under ``sure`` form the sure cores; faces outside the largest core of
    their group count as joined only through a weak link. Deterministic (stable order).

    >>> link_groups(4, np.array([[0, 1]]), np.array([[1, 2], [2, 3]]),
    ...             np.array([0.3, 0.45]), cap=3).groups.tolist()
    [0, 0, 0, 1]
    """
    hard = np.asarray(hard, dtype=np.int64).reshape(-1, 2)
    soft = np.asarray(soft, dtype=np.int64).reshape(-1, 2)
    soft_dist = np.asarray(soft_dist, dtype=np.float64).reshape(-1)
    parent, find = _union_find(n)
    core_parent, core_find = _union_find(n)
    size = np.ones(n, dtype=np.int64)
    for a, b in hard:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
            size[ra] += size[rb]
        ca, cb = core_find(a), core_find(b)
        if ca != cb:
            core_parent[cb] = ca
    cut = 0
    cut_count = np.zeros(n, dtype=np.int64)
    for k in np.argsort(soft_dist, kind="stable"):
        a, b = soft[k]
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if size[ra] + size[rb] > cap:
            cut += 1
            cut_count[a] += 1
            cut_count[b] += 1
            continue
        parent[rb] = ra
        size[ra] += size[rb]
        if soft_dist[k] < sure:
            ca, cb = core_find(a), core_find(b)
            if ca != cb:
                core_parent[cb] = ca
    roots = np.asarray([find(i) for i in range(n)], dtype=np.int64)
    cores = np.asarray([core_find(i) for i in range(n)], dtype=np.int64)
    groups = combine_groups(roots.astype(str)) if n else np.zeros(0, np.int64)
    weak = 0
    if n:
        pairs = pd.DataFrame({"g": groups, "c": cores})
        core_sizes = pairs.groupby(["g", "c"]).size()
        weak = int(n - core_sizes.groupby(level="g").max().sum())
    links = dict(cues or {})
    if cut:
        log.warning(
            "person guard: %d links cut so that no person exceeds %d faces; %d faces touched "
            "by a cut link may be one person in two splits (give --person-csv / "
            "--person-pattern if you know the persons)",
            cut,
            cap,
            int((cut_count > 0).sum()),
        )
    return LinkReport(groups, links, cut, int((cut_count > 0).sum()), weak, int(cap), cut_count)


def same_value_edges(values: Sequence) -> np.ndarray:
    """(E, 2) links chaining the rows that share a value (each value's rows in a chain)."""
    codes, _ = pd.factorize(pd.Series(np.asarray(values, dtype=object)).astype(str))
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    same = sc[1:] == sc[:-1]
    return np.stack([order[:-1][same], order[1:][same]], 1).astype(np.int64)


def descriptor_edges(
    X: np.ndarray, *, threshold: float, k: int = 30, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of (N, D) descriptors closer than ``threshold`` (Euclidean), at most
    the ``k`` nearest per row (bounds the links on large sets); returns edges (E, 2) and
    their distances (E,). Exact, blockwise, up to :data:`EXACT_PAIRS_MAX` rows; above, the
    ``k`` nearest per row by a FAISS IVF index."""
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n > EXACT_PAIRS_MAX:  # each row's nearest by a FAISS index, then the threshold
        ids, d2 = _nearest(X, k + 1)
        d = np.sqrt(np.maximum(d2, 0))
        e = _pairs(np.arange(n), ids, (ids >= 0) & (d < threshold))
        if not len(e):
            return e, np.zeros(0)
        return e, np.linalg.norm(X[e[:, 0]] - X[e[:, 1]], axis=1).astype(np.float64)
    sq = (X**2).sum(1)
    edges, dists = [], []
    for start in range(0, n, block):
        d2 = sq[start : start + block, None] + sq[None, :] - 2 * X[start : start + block] @ X.T
        d = np.sqrt(np.maximum(d2, 0))
        rows = np.arange(start, min(start + block, n))
        d[rows - start, rows] = np.inf
        kk = min(k, n - 1)
        if kk <= 0:
            break
        nn = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        nd = np.take_along_axis(d, nn, 1)
        i = np.repeat(rows, kk)
        j, dd = nn.ravel(), nd.ravel()
        keep = dd < threshold
        edges.append(np.stack([np.minimum(i, j)[keep], np.maximum(i, j)[keep]], 1))
        dists.append(dd[keep])
    if not edges:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    e, d = np.concatenate(edges), np.concatenate(dists)
    e, first = np.unique(e, axis=0, return_index=True)
    return e.astype(np.int64), d[first].astype(np.float64)


def exif_edges(paths: Sequence[str | Path | None], *, seconds: float = EXIF_SECONDS) -> np.ndarray:
    """(E, 2) links between rows whose source photos carry the same EXIF camera (Make +
    Model) and capture times (DateTimeOriginal, else DateTime) at most ``seconds`` apart:
    bursts of one scene. Rows without EXIF get no link. Reads headers only."""
    from datetime import datetime

    from PIL import Image

    stamps: dict[str, tuple[str, float] | None] = {}
    rows = []
    for i, p in enumerate(paths):
        key = str(p) if p is not None else ""
        if key not in stamps:
            stamps[key] = None
            try:
                with Image.open(key) as im:
                    ex = im.getexif()
                    when = ex.get_ifd(0x8769).get(0x9003) or ex.get(0x0132)
                    cam = f"{ex.get(0x010F, '')}|{ex.get(0x0110, '')}".strip()
                if when and cam != "|":
                    t = datetime.strptime(str(when).strip()[:19], "%Y:%m:%d %H:%M:%S")
                    stamps[key] = (cam, t.timestamp())
            except Exception:  # no EXIF, unreadable or odd dates: no link, never an error
                pass
        if stamps[key] is not None:
            rows.append((stamps[key][0], stamps[key][1], i))  # type: ignore[index]
    rows.sort()
    out = [
        (a[2], b[2])
        for a, b in zip(rows, rows[1:], strict=False)
        if a[0] == b[0] and b[1] - a[1] <= seconds
    ]
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _copy_embedding(ws: Workspace, faces: pd.DataFrame) -> tuple[np.ndarray | None, str]:
    """A stored generic embedding of the whole face (``__face``, else ``__box``) for copies."""
    from labeler.embeddings.store import list_embeddings, load_embeddings

    keys = [str(k) for k in list_embeddings(ws) if not str(k).startswith("cues")]
    keys = [k for k in keys if k.endswith("__face")] + [k for k in keys if k.endswith("__box")]
    if not keys:
        return None, ""
    try:
        _, X = load_embeddings(ws, keys[0], face_ids=faces["face_id"].to_numpy())
    except Exception as exc:  # an embedding that misses some faces: no copy links from it
        log.warning("copies not linked: embedding %s unusable (%s)", keys[0], exc)
        return None, ""
    return np.asarray(X, dtype=np.float32), keys[0]


def eye_distance_px(faces: pd.DataFrame) -> np.ndarray:
    """Distance between the eyes of each face in its source photo's pixels, (N,) float64,
    from the detector's landmarks (the scale the aligned crop was made at); a face without
    landmarks gets the template's share of its box side."""
    from labeler.faces.regions import TEMPLATE

    n = len(faces)
    out = np.full(n, np.nan)
    if "landmarks" in faces.columns:
        for i, lm in enumerate(faces["landmarks"].to_numpy()):
            if lm is not None and len(lm) >= 4 and np.any(lm):  # all zero: no landmarks
                out[i] = float(np.hypot(lm[2] - lm[0], lm[3] - lm[1]))
    missing = ~np.isfinite(out)
    if missing.any():
        side = np.maximum(faces["x1"] - faces["x0"], faces["y1"] - faces["y0"]).to_numpy(float)
        out[missing] = side[missing] * float(TEMPLATE[1, 0] - TEMPLATE[0, 0])
    return out


@dataclass(frozen=True)
class DescriptorLinks:
    """Identity links of a set of faces: ``edges`` (E, 2) rows of the faces given, i < j;
    ``dists`` (E,) descriptor distances; ``described`` (N,) bool, the faces that got a
    descriptor (the others are below :data:`MIN_IDENTITY_EYE_PX`); ``floor_px`` the floor."""

    edges: np.ndarray
    dists: np.ndarray
    described: np.ndarray
    floor_px: float

    @property
    def too_small(self) -> int:
        return int((~self.described).sum())


def descriptor_links(
    ws: Workspace,
    faces: pd.DataFrame,
    *,
    threshold: float = IDENTITY_THRESHOLD,
    min_eye_px: float | None = None,
    progress: bool | None = None,
) -> DescriptorLinks:
    """Identity links between ``faces`` closer than ``threshold`` (at most
    :data:`NEIGHBOURS` a face). Only faces whose eyes are at least ``min_eye_px`` source
    pixels apart (default :data:`MIN_IDENTITY_EYE_PX`) are described and linked: below it
    the descriptor links faces of different people (bench/PERSONS.md), and the descriptor
    time is saved. Descriptors come from (and go to) the workspace cache."""
    floor = MIN_IDENTITY_EYE_PX if min_eye_px is None else float(min_eye_px)
    described = eye_distance_px(faces) >= floor
    rows = np.flatnonzero(described)
    ids = faces["face_id"].astype(str).to_numpy()[rows].tolist()
    if len(rows) < len(faces):
        log.info(
            "identity: %d of %d faces have their eyes under %g px apart in their photo: no "
            "descriptor, no identity link",
            len(faces) - len(rows),
            len(faces),
            floor,
        )
    # every face's own descriptor: copies of one photo give the person several chances
    D = cached_identity_descriptors(ws, ids, progress=progress)
    e, d = descriptor_edges(D, threshold=threshold, k=NEIGHBOURS)
    return DescriptorLinks(rows[e].reshape(-1, 2).astype(np.int64), d, described, floor)


def identity_links(
    ws: Workspace,
    faces: pd.DataFrame,
    *,
    threshold: float = IDENTITY_THRESHOLD,
    max_share: float = DEFAULT_MAX_SHARE,
    exif: bool = True,
    progress: bool | None = None,
) -> tuple[LinkReport, str]:
    """Persons of ``faces`` by every "same person" cue (see the module doc); returns the
    :class:`LinkReport` and a one-line description of the cues used. ``progress``: see
    :func:`cached_identity_descriptors`."""
    n = len(faces)
    cues: dict[str, int] = {}
    image_edges = same_value_edges(faces["image_id"].astype(str).to_numpy())
    cues["same_image"] = len(image_edges)
    hard = [image_edges]
    used = ["same source image"]
    soft, soft_d = [np.zeros((0, 2), np.int64)], [np.zeros(0)]
    X, key = _copy_embedding(ws, faces)
    if X is not None:
        # copies merge before any descriptor link (distance below 0, all "sure") but the guard
        # can still cut them: a generic embedding can call many faces copies on some data
        copies = near_duplicate_edges(X, threshold=COPY_THRESHOLD)
        soft.append(copies)
        Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        cos = (Xn[copies[:, 0]] * Xn[copies[:, 1]]).sum(1) if len(copies) else np.zeros(0)
        soft_d.append(-cos.astype(np.float64))
        cues["copies"] = len(copies)
        used.append(f"copies ({key} cosine >= {COPY_THRESHOLD:.2f})")
    else:
        log.warning("no whole-face embedding stored: copies are linked by descriptors only")
    if exif:
        paths = ws.face_image_paths(faces).tolist()  # type: ignore[attr-defined]
        ex = exif_edges(paths)
        cues["exif"] = len(ex)
        if len(ex):
            soft.append(ex)
            soft_d.append(np.full(len(ex), float(threshold)))  # the weakest links
            used.append(f"EXIF camera + time within {EXIF_SECONDS:g} s")
    hard_all = np.concatenate(hard) if hard else np.zeros((0, 2), np.int64)
    ident = descriptor_links(ws, faces, threshold=threshold, progress=progress)
    cues["identity"] = len(ident.edges)
    cues["identity_sure"] = int((ident.dists < SURE_THRESHOLD).sum())
    soft.append(ident.edges)
    soft_d.append(ident.dists)
    used.append(
        f"dlib ResNet descriptors of the eye region (mirror-averaged) closer than "
        f"{threshold:.2f} (sure under {SURE_THRESHOLD:.2f}) for faces with eyes >= "
        f"{ident.floor_px:g} px apart"
    )
    cap = max(1, int(np.floor(max_share * n)))
    report = link_groups(
        n,
        hard_all,
        np.concatenate(soft),
        np.concatenate(soft_d),
        cap=cap,
        cues=cues,
    )
    report = replace(report, too_small=ident.too_small, floor_px=ident.floor_px)
    detail = (
        "links: " + "; ".join(used) + f"; merged strongest first, no person over "
        f"{max_share:.0%} of the faces"
    )
    return report, detail


def find_persons(
    ws: Workspace,
    faces: pd.DataFrame | None = None,
    *,
    method: str = "auto",
    pattern: str | None = None,
    column_csv: str | Path | None = None,
    embedding_key: str | None = None,
    threshold: float | None = None,
    max_share: float | None = None,
    progress: bool | None = None,
) -> Persons:
    """The person of every face of ``faces`` (default: the workspace's faces).

    method: "auto" (column if ``column_csv``, else pattern if ``pattern``, else identity
    links when face-recognition-models is installed, else near-duplicates of a stored whole-face embedding,
    else the source image), or one of "column", "pattern", "identity", "embedding",
    "image". Faces of one source image always share a person. ``max_share``: the identity
    guard, no person above this share of the faces (default :data:`DEFAULT_MAX_SHARE`;
    ``export`` passes its smallest split ratio, ``train`` one fold's share). ``progress``:
    a bar while identity descriptors are computed (None: only on a terminal).
    """
    from labeler.workspace import Workspace

    assert isinstance(ws, Workspace)
    faces = ws.require_faces() if faces is None else faces
    if method not in METHODS:
        raise InputError(f"unknown person grouping {method!r}; choose one of {', '.join(METHODS)}")
    rel = relative_paths(ws, faces)
    links: list[np.ndarray] = [faces["image_id"].astype(str).to_numpy(dtype=object)]
    if method == "auto":
        if column_csv:
            method = "column"
        elif pattern:
            method = "pattern"
        elif identity_available():
            method = "identity"
        else:
            log.warning(
                "face-recognition-models not installed: persons are near-duplicates "
                "only (pip install face-recognition-models==0.3.0, or pass --person-pattern)"
            )
            method = "embedding"
    if method == "column":
        if not column_csv:
            raise InputError("person grouping by column needs --person-csv FILE")
        links.append(persons_from_csv(column_csv, face_ids=faces["face_id"], paths=rel))
        detail = f"column 'person' of {column_csv}, joined with source images"
    elif method == "pattern":
        if not pattern:
            raise InputError("person grouping by pattern needs --person-pattern REGEX")
        links.append(persons_from_pattern(rel, pattern))
        detail = f"pattern {pattern!r} on the source paths, joined with source images"
    elif method == "identity":
        t = IDENTITY_THRESHOLD if threshold is None else float(threshold)
        share = DEFAULT_MAX_SHARE if max_share is None else float(max_share)
        report, detail = identity_links(ws, faces, threshold=t, max_share=share, progress=progress)
        persons = Persons(
            np.asarray([f"p{c}" for c in report.groups], dtype=object),
            method,
            detail,
            report.as_dict(share),
        )
        log.info("persons: %s; %s", persons.summary(), persons.sureness())
        return persons
    elif method == "embedding":
        t = DEFAULT_DUPLICATE_THRESHOLD if threshold is None else float(threshold)
        X, key = _person_embedding(ws, faces, embedding_key)
        if X is not None:
            links.append(persons_from_embeddings(X, threshold=t).astype(str))
            detail = f"near-duplicates of {key} (cosine >= {t:.2f}) and source images"
        else:
            method = "image"
            detail = "source images only (no whole-face embedding stored)"
    else:
        detail = "source images only"
    comp = combine_groups(*links)
    persons = Persons(np.asarray([f"p{c}" for c in comp], dtype=object), method, detail)
    log.info("persons: %s", persons.summary())
    return persons


def _person_embedding(
    ws: Workspace, faces: pd.DataFrame, key: str | None
) -> tuple[np.ndarray | None, str]:
    """The stored embedding used for near-duplicate grouping (global face), or None."""
    from labeler.embeddings.store import list_embeddings, load_embeddings

    keys = [str(k) for k in list_embeddings(ws)] if key is None else [key]
    if key is None:
        keys = [k for k in keys if k.endswith("__face") and not k.startswith("cues")]
    if not keys:
        log.warning(
            "no whole-face embedding stored; person grouping uses source images only "
            "(run 'labeler embed' or pass --person-pattern / --person-csv)"
        )
        return None, ""
    ids, X = load_embeddings(ws, keys[0], face_ids=faces["face_id"].to_numpy())
    return np.asarray(X, dtype=np.float32), keys[0]


def relative_paths(ws: Workspace, faces: pd.DataFrame) -> list[str]:
    """Source image path of each face relative to its ingested folder ("" when unknown)."""
    images = ws.images()  # type: ignore[attr-defined]
    images = images.drop_duplicates("image_id").set_index("image_id")["path"]
    return faces["image_id"].map(images).fillna("").astype(str).tolist()
