"""A face shown on the photo it came from, its box and landmarks drawn (the source-photo
dialog). The photo is read only through :func:`labeler.ui.data.image_bytes`, which checks it
with :meth:`labeler.workspace.Workspace.resolve_inside`: the photo folder's fence
(:mod:`labeler.fence`), the rule ingest and ``export --source-images`` apply, so a link that
leads out of the folder (unless it was ingested with ``--follow-links``), a device or a FIFO
is never opened and the dialog shows no photo."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from labeler.ui.data import _mtime, image_bytes
from labeler.workspace import Workspace

log = logging.getLogger(__name__)


@st.cache_resource(max_entries=4, show_spinner=False)
def _face_details(root: str, faces_mtime: float, images_mtime: float) -> pd.DataFrame:
    ws = Workspace(Path(root))
    f = ws.faces()
    images = ws.images()[["image_id", "root", "path", "width", "height"]]
    images = images.drop_duplicates("image_id")
    return f.merge(images, on="image_id", how="left").set_index("face_id")


@dataclass(frozen=True)
class SourcePhoto:
    """A face shown on the photo it came from (what the annotator needs to judge a crop)."""

    face_id: str
    path: str  # the photo's file, as ingested
    jpeg: bytes | None  # the photo (longest side <= max_side) with the face's box drawn
    width: int  # the photo's size in pixels (after EXIF orientation)
    height: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the photo's pixels
    score: float
    detector: str
    whole_image: bool  # no face found: the whole image stands in for it
    rotation: int  # degrees the photo was turned clockwise to find the face upright


def draw_face(
    rgb: np.ndarray,
    box: tuple[float, float, float, float],
    landmarks: np.ndarray,
    *,
    color: tuple[int, int, int] = (0, 255, 64),
) -> np.ndarray:
    """A copy of ``rgb`` (H, W, 3) uint8 with ``box`` (x0, y0, x1, y1) outlined and the 4
    ``landmarks`` ((4, 2), same pixels) marked, line width ~1/150 of the longest side."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    lw = max(2, round(max(img.size) / 150))
    draw.rectangle([float(v) for v in box], outline=color, width=lw)
    for x, y in np.asarray(landmarks, dtype=np.float32).reshape(-1, 2):
        r = lw * 1.5
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    return np.asarray(img)


@st.cache_data(max_entries=64, show_spinner=False)
def _source_photo(root: str, face_id: str, stamp: float, max_side: int) -> SourcePhoto | None:
    from labeler.imageio import ImageDecodeError, decode_image, encode_jpeg

    ws = Workspace(Path(root))
    details = _face_details(root, stamp, _mtime(ws.images_path))
    if face_id not in details.index:
        return None
    row = details.loc[face_id]
    roots = ws.roots()
    path = str(ws.image_path(int(row["root"]), str(row["path"]))) if len(roots) else ""
    box = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
    jpeg = None
    raw = image_bytes(ws, path) if path else None
    if raw is not None:
        try:
            dec = decode_image(raw, max_side=max_side)
        except ImageDecodeError as exc:
            log.warning("cannot show %s: %s", path, exc)
        else:
            sx, sy = dec.scale  # original pixels per decoded pixel
            small = (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)
            lm = np.asarray(row["landmarks"], dtype=np.float32).reshape(-1, 2) / [sx, sy]
            jpeg = encode_jpeg(draw_face(dec.rgb, small, lm), quality=88)
    rotation = row.get("rotation")
    return SourcePhoto(
        face_id=face_id,
        path=path,
        jpeg=jpeg,
        width=int(row["width"]) if pd.notna(row["width"]) else 0,
        height=int(row["height"]) if pd.notna(row["height"]) else 0,
        box=box,
        score=float(row["score"]),
        detector=str(row["detector"]),
        whole_image=bool(row["whole_image"]),
        rotation=int(rotation) if rotation is not None and pd.notna(rotation) else 0,
    )


def source_photo(ws: Workspace, face_id: str, *, max_side: int = 1000) -> SourcePhoto | None:
    """The photo ``face_id`` was cut from, with its box and landmarks drawn (None for an
    unknown face). The photo is read only through :func:`image_bytes` (workspace and
    ingested folders only); ``jpeg`` is None when it cannot be read any more."""
    return _source_photo(str(ws.root), str(face_id), _mtime(ws.faces_path), max_side)
