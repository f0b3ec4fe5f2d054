"""A workspace with known labels, read the way a simulated session sees it.

:func:`join_truth` joins a CSV of true labels per image to the workspace's faces;
:func:`session_inputs` and :func:`split_vectors_of` give a session the cluster run's groups,
the features the Suggest step learns on and the vectors the app's *split by similarity* uses,
all aligned to those faces (``labeler simulate`` and the benches).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from labeler.errors import InputError

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)


def join_truth(
    ws: Workspace,
    truth_csv: str,
    *,
    truth_column: str = "state",
    file_column: str = "file",
    all_faces: bool = False,
) -> Any:
    """faces.parquet rows with a ``truth`` column joined from a CSV by source image path.

    A CSV ``file`` value matches an image whose path (relative to its ingested root) equals
    it, or ends with it after whole path components (``images/a.jpg`` matches ``a.jpg``
    entries and vice versa), or, last, has the same file name. Faces of images with no
    truth row are dropped (logged). A per-image label describes one face: by default it goes
    to the image's largest face and the image's other faces (bystanders, false detections)
    are left out of the measurement (logged); ``all_faces=True`` gives every face of the
    image the image's label. Returns a DataFrame with ``face_id`` and ``truth`` in
    faces.parquet order.
    """
    import pandas as pd

    table = pd.read_csv(truth_csv)
    for col in (truth_column, file_column):
        if col not in table.columns:
            raise InputError(
                f"{truth_csv} has no column {col!r} (columns: {', '.join(map(str, table.columns))}); "
                "pass --truth-column/--file-column"
            )
    keys = table[file_column].astype(str).str.replace("\\", "/", regex=False).str.lstrip("./")
    lookup = dict(zip(keys, table[truth_column].astype(str), strict=True))
    by_name: dict[str, str | None] = {}
    for k, v in lookup.items():
        name = k.rsplit("/", 1)[-1]
        by_name[name] = v if name not in by_name or by_name[name] == v else None

    faces = ws.require_faces()
    images = ws.images()
    paths = dict(zip(images["image_id"], images["path"].astype(str), strict=True))

    def find(path: str | None) -> str | None:
        if path is None:
            return None
        parts = path.replace("\\", "/").split("/")
        for i in range(len(parts)):
            hit = lookup.get("/".join(parts[i:]))
            if hit is not None:
                return hit
        for k, v in lookup.items():  # a CSV path longer than the ingested relative path
            if k.endswith("/" + path):
                return v
        return by_name.get(parts[-1])

    cache: dict[str, str | None] = {}
    truth = []
    for image_id in faces["image_id"]:
        if image_id not in cache:
            cache[image_id] = find(paths.get(image_id))
        truth.append(cache[image_id])
    out = pd.DataFrame({"face_id": faces["face_id"].astype(str), "truth": truth})
    if not all_faces:
        area = (faces["x1"] - faces["x0"]) * (faces["y1"] - faces["y0"])
        largest = area.groupby(faces["image_id"]).transform("max")
        first = ~pd.DataFrame({"i": faces["image_id"], "a": area}).duplicated(["i", "a"])
        keep = (area == largest) & first
        others = int((~keep & out["truth"].notna()).sum())
        if others:
            log.info("%d faces besides each image's largest left out (use all_faces)", others)
        out.loc[~keep.to_numpy(), "truth"] = None
    missing = int(out["truth"].isna().sum())
    if missing == len(out):
        raise InputError(
            f"no face of the workspace matched a row of {truth_csv} by {file_column!r}; "
            "check --file-column (it must hold image paths relative to the ingested folder)"
        )
    if missing:
        log.warning(
            "%d of %d faces have no truth in %s (no row, or not their image's largest face); left out",
            missing,
            len(out),
            truth_csv,
        )
    return out.dropna(subset=["truth"]).reset_index(drop=True)


def split_vectors_of(
    ws: Workspace, run: Any, face_ids: Any, run_id: str | None = None
) -> np.ndarray:
    """(N, d) the vectors the app's *split by similarity* uses for ``face_ids`` (the run's
    saved vectors, as :func:`labeler.cluster.edit.split_cluster` with ``X=None``; its 2-D map
    when it kept none)."""
    from labeler.cluster.store import load_vectors
    from labeler.workspace import align_to_faces

    V = load_vectors(ws, run.params.get("run_id") or run_id)
    if V is None:
        V = run.xy
    fix = f"re-run 'labeler cluster -w {ws.root}'"
    return align_to_faces(
        np.asarray(face_ids).astype(str),
        np.asarray(run.face_ids).astype(str),
        np.asarray(V, np.float32),
        what="the cluster run's vectors",
        fix=fix,
    )


def session_inputs(
    ws: Workspace, face_ids: Any, *, run_id: str | None = None, features: str = "auto"
) -> tuple[np.ndarray, np.ndarray, Any]:
    """What a simulated session on the workspace sees for ``face_ids`` (N,): the cluster run's
    groups (N,), the feature matrix (N, D) of ``features`` as the Suggest step learns on it
    (``load_features(..., head=True)``) and the run itself."""
    from labeler.cluster.store import load_run
    from labeler.features import load_features
    from labeler.workspace import align_to_faces

    ids = np.asarray(face_ids).astype(str)
    run = load_run(ws, run_id)
    fix = f"re-run 'labeler cluster -w {ws.root}'"
    groups = align_to_faces(ids, run.face_ids, run.labels, what="the cluster run", fix=fix)
    fids, X = load_features(ws, features, head=True)
    X = align_to_faces(
        ids,
        np.asarray(fids).astype(str),
        X,
        what=f"features {features!r}",
        fix="re-run 'labeler embed'",
    )
    return groups, X, run
