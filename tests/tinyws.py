"""A tiny real workspace written by tests: source JPEGs, images/faces tables, aligned crops
and a stored feature set, with classes that differ visibly (colour of the lower face) and in
the features. Shared by the train/export/propagate/predict tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FEATURE_KEY = "test__face"
COLOURS = {
    "correct": (40, 90, 200),
    "no_mask": (205, 150, 120),
    "nose_exposed": (40, 200, 90),
    "chin_exposed": (200, 40, 160),
    "on_chin": (230, 230, 40),
}


@dataclass(frozen=True)
class TinyWorkspace:
    ws: object
    source: Path
    truth: pd.Series  # face_id -> class
    person: pd.Series  # face_id -> person name


def stub_faces(
    face_ids: list[str], *, detector: str = "none", crop_paths: list[str] | None = None
) -> pd.DataFrame:
    """A ``faces.parquet`` table for vectors a test makes: one whole-image face per image
    (``image_id`` = the face id before ``_``), no geometry, crops at ``crop_paths`` if given."""
    from labeler.workspace import FACES_SCHEMA

    n = len(face_ids)
    return pd.DataFrame(
        {
            "face_id": list(face_ids),
            "image_id": [f.rsplit("_", 1)[0] for f in face_ids],
            "face_index": 0,
            "x0": 0.0,
            "y0": 0.0,
            "x1": 1.0,
            "y1": 1.0,
            "score": 1.0,
            "landmarks": [[0.0] * 8] * n,
            "detector": detector,
            "whole_image": True,
            "crop_path": crop_paths if crop_paths is not None else "",
        },
        columns=FACES_SCHEMA.names,
    )


def face_image(label: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A face-like picture: skin disc, dark eyes, the lower face painted in the class colour."""
    img = np.full((size, size, 3), 235, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    face = ((xx - size / 2) / (0.36 * size)) ** 2 + ((yy - size * 0.55) / (0.45 * size)) ** 2 < 1
    img[face] = (205, 150, 120)
    for ex in (0.355, 0.645):
        eye = (xx - ex * size) ** 2 + (yy - 0.4 * size) ** 2 < (0.04 * size) ** 2
        img[eye] = (30, 20, 20)
    lower = face & (yy > 0.55 * size)
    img[lower] = COLOURS[label]
    noise = rng.integers(-12, 13, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def build(
    root: Path,
    counts: dict[str, int],
    *,
    faces_per_person: int = 1,
    seed: int = 0,
    dim: int = 16,
    feature_noise: float = 0.3,
) -> TinyWorkspace:
    """Write a workspace under ``root/ws`` with ``counts[label]`` faces of each label.

    Faces come in persons of ``faces_per_person`` faces (one label per person) stored in
    folders ``person_XXX/``; one face per source image.
    """
    from PIL import Image

    from labeler.embeddings.store import save_vectors
    from labeler.workspace import Workspace

    rng = np.random.default_rng(seed)
    source = root / "photos"
    ws = Workspace.open(root / "ws", create=True)
    ws.add_root(source)
    images, faces, truth, person = [], [], {}, {}
    centres = {c: rng.normal(size=dim) * 3 for c in COLOURS}
    feats = []
    p = 0
    for label, n in counts.items():
        for i in range(n):
            if i % faces_per_person == 0:
                p += 1
            rel = f"person_{p:03d}/{label}_{i:03d}.jpg"
            path = source / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            rgb = face_image(label, rng)
            Image.fromarray(rgb).save(path, quality=90)
            data = path.read_bytes()
            image_id = hashlib.sha1(data).hexdigest()[:16]
            face_id = f"{image_id}_0"
            crop = ws.crop_path(face_id)
            crop.parent.mkdir(parents=True, exist_ok=True)
            crop.write_bytes(data)
            images.append(
                dict(
                    image_id=image_id,
                    root=0,
                    path=rel,
                    size_bytes=len(data),
                    mtime=0.0,
                    width=256,
                    height=256,
                    status="ok",
                    error="",
                    duplicate_of="",
                )
            )
            lm = [0.355 * 256, 0.4 * 256, 0.645 * 256, 0.4 * 256, 128, 0.575 * 256, 128, 0.73 * 256]
            faces.append(
                dict(
                    face_id=face_id,
                    image_id=image_id,
                    face_index=0,
                    x0=10.0,
                    y0=12.0,
                    x1=246.0,
                    y1=250.0,
                    score=0.99,
                    landmarks=np.array(lm, np.float32),
                    detector="test",
                    whole_image=False,
                    crop_path=str(crop.relative_to(ws.root)),
                )
            )
            truth[face_id] = label
            person[face_id] = f"person_{p:03d}"
            feats.append(centres[label] + rng.normal(size=dim) * feature_noise * 3)
    ws.write_images(pd.DataFrame(images))
    faces_df = pd.DataFrame(faces)
    ws.write_faces(faces_df)
    save_vectors(
        ws,
        FEATURE_KEY,
        faces_df["face_id"].tolist(),
        np.asarray(feats, np.float32),
        {"what": "test"},
    )
    return TinyWorkspace(ws, source, pd.Series(truth), pd.Series(person))


def label_all(tiny: TinyWorkspace, *, field: str = "mask_state", flip: dict | None = None) -> None:
    """Label every face with its truth (``flip``: face_id -> wrong label)."""
    from labeler.labels import LabelStore

    store = LabelStore(tiny.ws.labels_db)
    truth = tiny.truth.copy()
    for fid, v in (flip or {}).items():
        truth[fid] = v
    for label, ids in truth.groupby(truth):
        store.assign(ids.index.tolist(), field, label, annotator="test", source="simulation")
