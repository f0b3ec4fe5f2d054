"""Person grouping, so that no person ends up in two splits.

Three sources of a person id per face, combined by :func:`person_groups`:

- ``column``: a CSV the user supplies with a ``person`` column and either ``face_id`` or
  ``path`` (path of the source image relative to the ingested folder, or its file name).
- ``pattern``: a regular expression applied to the source path relative to the ingested
  folder; the first capture group (or the whole match) is the person, e.g.
  ``--person-pattern '^([^/]+)/'`` for one folder per person or ``'^(\\d+)_'`` for
  ``00042_Mask.jpg``-style names.
- ``embedding``: near-duplicate grouping of face embeddings. **Limits:** no face-recognition
  weights can be loaded offline, so this uses a generic (ImageNet) CNN embedding of the
  aligned face with a tight cosine threshold. It reliably joins the same photo re-encoded,
  resized, lightly cropped or flipped (the common leak in scraped sets), and bursts of
  near-identical shots; it does NOT recognise the same person across different photos
  (other clothes, light, pose). Supply a pattern or a column when identity matters.

Faces of the same source image always share a group (one scene must not straddle splits).
Groups are the connected components of all the links above (union-find).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

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


def near_duplicate_edges(
    X: np.ndarray, *, threshold: float = DEFAULT_DUPLICATE_THRESHOLD, block: int = 4096
) -> np.ndarray:
    """Pairs (i, j), i < j, whose cosine similarity is >= ``threshold``.

    X: (N, D) float vectors (normalised here). Exact, blockwise ``X @ X.T`` in float32:
    O(N^2 D) time but O(block * N) memory; ~100k faces of 1280-d take about a minute.
    """
    X = np.asarray(X, dtype=np.float32)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
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
        raise ValueError(f"--person-pattern {pattern!r} is not a valid regex: {exc}") from None
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
        raise ValueError(
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


def person_groups(
    ws: object,
    faces: pd.DataFrame | None = None,
    *,
    method: str = "auto",
    pattern: str | None = None,
    column_csv: str | Path | None = None,
    embedding_key: str | None = None,
    threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
) -> np.ndarray:
    """Person group of every face of ``faces`` (default: the workspace's faces), (N,) str.

    method: "auto" (column if given, else pattern if given, else embedding when stored, plus
    source image), "column", "pattern", "embedding", or "image" (source image only).
    Faces of one source image always share a group.
    """
    from labeler.workspace import Workspace

    assert isinstance(ws, Workspace)
    faces = ws.require_faces() if faces is None else faces
    rel = relative_paths(ws, faces)
    links: list[np.ndarray] = [faces["image_id"].astype(str).to_numpy(dtype=object)]
    if method == "auto":
        method = "column" if column_csv else "pattern" if pattern else "embedding"
    if method == "column":
        if not column_csv:
            raise ValueError("person grouping by column needs --person-csv FILE")
        links.append(persons_from_csv(column_csv, face_ids=faces["face_id"], paths=rel))
    elif method == "pattern":
        if not pattern:
            raise ValueError("person grouping by pattern needs --person-pattern REGEX")
        links.append(persons_from_pattern(rel, pattern))
    elif method == "embedding":
        X = _person_embedding(ws, faces, embedding_key)
        if X is not None:
            links.append(persons_from_embeddings(X, threshold=threshold).astype(str))
    elif method != "image":
        raise ValueError(
            f"unknown person grouping {method!r}; choose auto, column, pattern, embedding or image"
        )
    comp = combine_groups(*links)
    return np.asarray([f"p{c}" for c in comp], dtype=object)


def _person_embedding(ws: object, faces: pd.DataFrame, key: str | None) -> np.ndarray | None:
    """The stored embedding used for near-duplicate grouping (global face), or None."""
    try:
        from labeler.embeddings.store import list_embeddings, load_embeddings
    except ImportError:
        log.warning("no embedding store; person grouping falls back to source images")
        return None
    keys = [str(k) for k in list_embeddings(ws)] if key is None else [key]
    if key is None:
        face_keys = [k for k in keys if k.endswith("__face") and not k.startswith("cues")]
        keys = face_keys or []
    if not keys:
        log.warning(
            "no whole-face embedding stored; person grouping uses source images only "
            "(run 'labeler embed' or pass --person-pattern / --person-csv)"
        )
        return None
    ids, X = load_embeddings(ws, keys[0], face_ids=faces["face_id"].to_numpy())
    return np.asarray(X, dtype=np.float32)


def relative_paths(ws: object, faces: pd.DataFrame) -> list[str]:
    """Source image path of each face relative to its ingested folder ("" when unknown)."""
    images = ws.images()  # type: ignore[attr-defined]
    images = images.drop_duplicates("image_id").set_index("image_id")["path"]
    return faces["image_id"].map(images).fillna("").astype(str).tolist()
