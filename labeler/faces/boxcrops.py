"""Box crops: each face as the upright square around its detection box, not landmark-aligned.

The aligned crop (``crops/<ab>/<face_id>.jpg``, written by ``labeler detect``) trusts four
landmarks. On real photos those are often wrong where it matters most: under a mask, in
profile, in blur or at a crowd's edge, so an aligned crop can show an ear or a cheek. The box
crop trusts only the detector's box (:func:`labeler.faces.align.box_crop`: the box plus 20 % on each
side, turned upright by the right angle its landmarks point to, grey beyond the photo's edge), so the
``box`` region's embedding (:data:`labeler.faces.regions.REGIONS`) still sees the whole face and the
mask on it. On ``realmasks`` a linear head on the box crop alone reaches 0.90 accuracy where
the whole aligned crop reaches 0.86 (``bench/FEATURES.md``).

:func:`box_crops_workspace` writes ``crops/<ab>/<face_id>.box.jpg`` for every face that has
none yet: one decode per photo at the JPEG DCT scale its smallest face needs. It is
resumable (a file that exists is kept) and deterministic, whichever path detected the faces.

Example::

    n_new = box_crops_workspace(ws)      # after labeler detect; a no-op when all are there
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labeler.faces.align import BOX_MARGIN, box_crop, upright_turn
from labeler.faces.regions import CROP_SIZE

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

JPEG_QUALITY = 92


#: Box crops are cut from a decode whose longest side is at least this (the detect step's
#: own decode, :data:`labeler.detect.pipeline.DETECT_SIDE`), so the crops ``labeler detect``
#: writes from its decode and those written later from the file are the same pixels.
MIN_DECODE_SIDE = 512


def box_crops_from(
    rgb: np.ndarray,
    scale: tuple[float, float],
    boxes: Sequence[tuple[float, float, float, float]],
    landmarks: Sequence[np.ndarray],
    *,
    size: int = CROP_SIZE,
) -> list[np.ndarray]:
    """Box crops ``(size, size, 3)`` uint8 of faces with ``boxes`` / ``landmarks`` (original
    EXIF-upright pixels) from a decode ``rgb`` of the photo with ``scale`` original pixels per
    decoded pixel; each turned upright by :func:`labeler.faces.align.upright_turn` of its landmarks
    (set too for faces that were found turned)."""
    fx, fy = scale
    return [
        box_crop(
            rgb,
            (x0 / fx, y0 / fy, x1 / fx, y1 / fy),
            rotation=upright_turn(np.asarray(lm, np.float32)),
            size=size,
        )
        for (x0, y0, x1, y1), lm in zip(boxes, landmarks, strict=True)
    ]


def needed_side(
    width: int, height: int, boxes: Sequence[tuple[float, float, float, float]], size: int
) -> int:
    """The ``min_side`` to decode a photo ``width x height`` at so that the box crop of its
    smallest face in ``boxes`` (original pixels) still has ``size`` pixels; at least
    :data:`MIN_DECODE_SIDE`, at most the photo's longest side."""
    long_side = max(int(width), int(height), 1)
    sides = [max(x1 - x0, y1 - y0, 1e-3) * (1 + 2 * BOX_MARGIN) for x0, y0, x1, y1 in boxes]
    need = min(long_side, int(math.ceil(long_side * size / min(sides)))) if sides else long_side
    return max(MIN_DECODE_SIDE, need)


def photo_box_crops(
    path: str | Path, faces: Any, *, width: int, height: int, size: int = CROP_SIZE
) -> list[np.ndarray]:
    """Box crops of ``faces`` (rows with ``x0, y0, x1, y1`` and ``landmarks``) of the photo
    at ``path`` of ``width x height`` pixels, in row order (see :func:`box_crops_from`)."""
    from labeler.imageio import decode_image

    boxes = [(float(r.x0), float(r.y0), float(r.x1), float(r.y1)) for r in faces.itertuples()]
    dec = decode_image(path, min_side=needed_side(width, height, boxes, size))
    return box_crops_from(dec.rgb, dec.scale, boxes, list(faces["landmarks"]), size=size)


def box_crops_workspace(
    ws: Workspace,
    *,
    faces: Any = None,
    workers: int | None = None,
    size: int = CROP_SIZE,
) -> int:
    """Write the box crop of every face of ``ws`` (or of the ``faces`` rows given, a slice of
    ``faces.parquet``) that has none; returns how many were written.

    A photo that can no longer be read (moved, deleted) raises ``WorkspaceError`` naming it
    and the fix; the crops written before stay (the next run resumes).
    """
    import os

    from labeler.errors import WorkspaceError
    from labeler.imageio import ImageDecodeError, write_jpeg

    faces = ws.faces() if faces is None else faces
    if faces.empty:
        return 0
    missing = np.array([not ws.box_crop_path(f).is_file() for f in faces["face_id"]])
    if not missing.any():
        return 0
    todo = faces.loc[missing]
    sizes = ws.images().drop_duplicates("image_id").set_index("image_id")[["width", "height"]]
    todo = todo.assign(
        _path=ws.face_image_paths(todo).to_numpy(),
        _w=sizes["width"].reindex(todo["image_id"]).to_numpy(),
        _h=sizes["height"].reindex(todo["image_id"]).to_numpy(),
    )
    groups = list(todo.groupby("_path", sort=False))

    def one(item: tuple[str, Any]) -> int:
        path, rows = item
        w, h = int(rows["_w"].iloc[0]), int(rows["_h"].iloc[0])
        try:
            crops = photo_box_crops(path, rows, width=w, height=h, size=size)
        except (ImageDecodeError, OSError) as exc:
            raise WorkspaceError(
                f"cannot read {path} for its box crops ({exc}); put the photo back where "
                f"'labeler ingest' found it, or re-run 'labeler run' on its folder"
            ) from None
        for fid, crop in zip(rows["face_id"], crops, strict=True):
            write_jpeg(ws.box_crop_path(fid), crop, quality=JPEG_QUALITY)
        return len(crops)

    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="labeler-box") as pool:
        n = sum(pool.map(one, groups))
    log.info("box crops: wrote %d for %d photos", n, len(groups))
    return n
