"""Classify faces in new photos: detect, align, run the trained model(s).

:func:`predict_image` is the one function behind ``labeler predict`` and the app's try-it
page. A model per label field (``labeler.train.load_model``) may be passed together; each
adds a predicted label and confidence per face.

>>> det = get_detector("mediapipe")                                   # doctest: +SKIP
>>> model = load_model(ws)                                           # doctest: +SKIP
>>> [(p.box, p.labels) for p in predict_image(rgb, model, det)]      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labeler.errors import NotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FacePrediction:
    """One face of a photo: box (x0, y0, x1, y1) in source pixels, detector score, the
    aligned crop (256, 256, 3) uint8, and per field the label, confidence and all probs."""

    face_index: int
    box: tuple[float, float, float, float]
    score: float
    whole_image: bool
    crop: np.ndarray
    labels: dict
    confidence: dict
    probs: dict


def predict_image(
    image: np.ndarray | str | os.PathLike[str],
    model: Any | Sequence[Any],
    detector: Any,
) -> list[FacePrediction]:
    """Detect + align + classify every face of one image.

    image: (H, W, 3) uint8 RGB or a path. model: a ``LoadedModel`` or a list of them (one
    per field). detector: from ``labeler.detect.get_detector``. Faces left to right.
    """
    from labeler.detect.pipeline import detect_and_align

    models = list(model) if isinstance(model, (list, tuple)) else [model]
    pairs = detect_and_align(image, detector)
    if not pairs:
        return []
    crops = np.stack([c for _, c in pairs])
    per_model = [(m, m.predict_proba(crops)) for m in models]
    out = []
    for i, (det, crop) in enumerate(pairs):
        labels, conf, probs = {}, {}, {}
        for m, P in per_model:
            j = int(P[i].argmax())
            labels[m.field] = m.classes[j]
            conf[m.field] = float(P[i, j])
            probs[m.field] = {c: float(p) for c, p in zip(m.classes, P[i], strict=True)}
        out.append(
            FacePrediction(
                face_index=i,
                box=tuple(float(v) for v in det.box),
                score=float(det.score),
                whole_image=bool(det.whole_image),
                crop=crop,
                labels=labels,
                confidence=conf,
                probs=probs,
            )
        )
    return out


def predictions_frame(
    path: str, preds: Sequence[FacePrediction], fields: Sequence[str]
) -> pd.DataFrame:
    """Rows for one image: path, face_index, x0, y0, x1, y1, det_score, whole_image, and per
    field ``<field>`` and ``<field>_confidence``."""
    rows = []
    for p in preds:
        row = {
            "path": path,
            "face_index": p.face_index,
            "x0": round(p.box[0], 2),
            "y0": round(p.box[1], 2),
            "x1": round(p.box[2], 2),
            "y1": round(p.box[3], 2),
            "det_score": round(p.score, 4),
            "whole_image": p.whole_image,
        }
        for f in fields:
            row[f] = p.labels.get(f, "")
            row[f"{f}_confidence"] = round(p.confidence.get(f, float("nan")), 4)
        rows.append(row)
    cols = ["path", "face_index", "x0", "y0", "x1", "y1", "det_score", "whole_image"]
    cols += [c for f in fields for c in (f, f"{f}_confidence")]
    return pd.DataFrame(rows, columns=cols)


def list_images(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """(absolute path, display path) of the image files named or found in folders (sorted)."""
    from labeler.imageio import IMAGE_EXTENSIONS

    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    out.append((f, f.relative_to(p).as_posix()))
        elif p.is_file():
            out.append((p, str(item)))
        else:
            raise NotFoundError(f"{p} is neither an image file nor a folder")
    return out


def predict_files(
    inputs: Iterable[str | os.PathLike[str]], models: Sequence[Any], detector: Any
) -> pd.DataFrame:
    """Predictions for every image under ``inputs`` (files or folders); unreadable files are
    logged and skipped. Columns as in :func:`predictions_frame`."""
    from labeler.imageio import ImageDecodeError

    fields = [m.field for m in models]
    frames = [predictions_frame("", [], fields)]
    for path, shown in list_images(inputs):
        try:
            preds = predict_image(path, models, detector)
        except ImageDecodeError as exc:
            log.warning("skipping %s", exc)
            continue
        frames.append(predictions_frame(shown, preds, fields))
    return pd.concat(frames, ignore_index=True)
