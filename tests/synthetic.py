"""A synthetic workspace (images, faces, crops, one cluster run) for the app's tests, the
browser smoke test and the benchmark. Not used by the app itself.

>>> ws = synthetic_workspace(tmp / "ws", n_faces=60, n_clusters=3)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from labeler.cluster.store import save_run
from labeler.cluster.types import ClusterResult
from labeler.workspace import FACES_SCHEMA, IMAGES_SCHEMA, Workspace, face_id_for

COLORS = [
    (220, 60, 60),
    (60, 160, 60),
    (60, 90, 220),
    (230, 180, 40),
    (150, 70, 190),
    (40, 180, 190),
]


def _jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _face_image(color: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A cartoon face: skin disc, two eyes, a coloured mask band over the lower half."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size, 3), 245, np.uint8)
    face = (xx - 0.5) ** 2 / 0.14 + (yy - 0.5) ** 2 / 0.2 < 1
    img[face] = (224, 188, 160)
    for ex in (0.37, 0.63):
        img[(xx - ex) ** 2 + (yy - 0.4) ** 2 < 0.0025] = (40, 30, 30)
    top = 0.55 + rng.uniform(-0.04, 0.04)
    img[face & (yy > top) & (yy < 0.82)] = color
    noise = rng.integers(-12, 12, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def synthetic_workspace(
    root: str | Path,
    *,
    n_faces: int = 60,
    n_clusters: int = 3,
    noise_frac: float = 0.05,
    crops_per_cluster: int | None = None,
    write_images: bool = True,
    big_cluster: int = 0,
    seed: int = 0,
) -> Workspace:
    """Write a workspace with ``n_faces`` faces in ``n_clusters`` clusters (+ noise).

    Images (one face each, 96 px JPEG) go to ``root/photos`` (an ingested root) when
    ``write_images``; crops (256 px) for every face, or the ``crops_per_cluster`` most central
    faces of each cluster. ``big_cluster``: the first that many faces all go to cluster 0.
    The cluster run is saved through :func:`labeler.cluster.store.save_run`.
    """
    rng = np.random.default_rng(seed)
    ws = Workspace.open(root, create=True)
    photos = ws.root / "photos"
    photos.mkdir(exist_ok=True)
    ws.add_root(photos)
    labels = rng.integers(0, n_clusters, n_faces).astype(np.int32)
    labels[rng.random(n_faces) < noise_frac] = -1
    labels[:big_cluster] = 0
    image_rows, face_rows, images = [], [], {}
    for i in range(n_faces):
        color = COLORS[labels[i] % len(COLORS)] if labels[i] >= 0 else (128, 128, 128)
        if write_images:
            data = _jpeg(_face_image(color, 96, rng))
            image_id = hashlib.sha1(data + str(i).encode()).hexdigest()[:16]
            images[image_id] = (data, color)
            (photos / f"img_{i:06d}.jpg").write_bytes(data)
        else:
            image_id = f"{i:016x}"
        fid = face_id_for(image_id, 0)
        image_rows.append((image_id, 0, f"img_{i:06d}.jpg", 0, 0.0, 96, 96, "ok", "", ""))
        face_rows.append(
            (fid, image_id, 0, 0.0, 0.0, 96.0, 96.0, 1.0, [0.0] * 8, "synthetic", True,
             ws.crop_path(fid).relative_to(ws.root).as_posix(), 0)
        )  # fmt: skip
    ws.write_images(pd.DataFrame(image_rows, columns=IMAGES_SCHEMA.names))
    faces = pd.DataFrame(face_rows, columns=FACES_SCHEMA.names)
    ws.write_faces(faces)

    centers = np.stack(
        [[np.cos(a), np.sin(a)] for a in np.linspace(0, 2 * np.pi, max(n_clusters, 1), endpoint=False)]
    ) * 10  # fmt: skip
    xy = np.where(
        labels[:, None] >= 0,
        centers[np.maximum(labels, 0)] + rng.normal(0, 1.0, (n_faces, 2)),
        rng.uniform(-14, 14, (n_faces, 2)),
    ).astype(np.float32)
    dist = np.linalg.norm(xy - centers[np.maximum(labels, 0)], axis=1)
    outlier = np.where(labels >= 0, np.clip(dist / 4, 0, 1), 1.0).astype(np.float32)
    suggested = np.where(labels >= 0, labels, np.argmin(((xy[:, None] - centers) ** 2).sum(-1), 1))
    result = ClusterResult(
        faces["face_id"].to_numpy(str), labels, outlier, xy, suggested.astype(np.int32),
        {"synthetic": True, "seed": seed, "n_faces": n_faces,
         "n_clusters": int(len(np.unique(labels[labels >= 0]))),
         "noise_fraction": round(float((labels < 0).mean()), 4)},
    )  # fmt: skip
    save_run(ws, result)

    todo = np.arange(n_faces)
    if crops_per_cluster is not None:
        order = np.lexsort((outlier, labels))
        rank = np.empty(n_faces, int)
        _, first = np.unique(labels[order], return_index=True)
        starts = np.repeat(first, np.diff(np.append(first, n_faces)))
        rank[order] = np.arange(n_faces) - starts
        todo = np.flatnonzero(rank < crops_per_cluster)
    cache: dict[int, bytes] = {}
    for i in todo:
        c = int(labels[i])
        if write_images:
            crop = _jpeg(_face_image(images[faces.image_id[i]][1], 256, rng))
        else:  # bench: one crop per cluster colour, reused
            if c not in cache:
                cache[c] = _jpeg(
                    _face_image(COLORS[c % len(COLORS)] if c >= 0 else (128,) * 3, 256, rng)
                )
            crop = cache[c]
        path = ws.crop_path(faces.face_id[i])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(crop)
    return ws
