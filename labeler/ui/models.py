"""The trained models behind the Try it page (cached per models folder) and one photo through
them (:func:`labeler.predict.predict_image`: the same detection, upright check and crops as
``labeler predict``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import streamlit as st

from labeler.ui.data import _mtime, schema
from labeler.workspace import Workspace

log = logging.getLogger(__name__)


@st.cache_resource(max_entries=2, show_spinner="Loading models…")
def _models(root: str, stamp: float, fields: tuple[str, ...]) -> tuple[list, list[str]]:
    ws = Workspace(Path(root))
    models, missing = [], []
    from labeler.train import load_model

    for f in fields:
        try:
            models.append(load_model(ws, field=f))
        except (FileNotFoundError, KeyError, ValueError) as exc:
            log.info("no model for %s: %s", f, exc)
            missing.append(f)
    return models, missing


def models(ws: Workspace) -> tuple[list, list[str]]:
    """(loaded models, fields without a model) for the schema's fields; cached per models dir."""
    fields = tuple(schema(ws).names)
    return _models(str(ws.root), _mtime(ws.models_dir), fields)


def predict_photo(rgb: np.ndarray, models: list) -> tuple[list, str]:
    """Detect, align and classify the faces of one photo (H, W, 3) uint8.

    Uses mediapipe when installed, else treats the whole image as one face. Returns
    (``labeler.predict.FacePrediction`` list, detector name).
    """
    from labeler._deps import MissingDependency
    from labeler.detect import get_detector
    from labeler.predict import predict_image

    try:
        detector, name = get_detector("mediapipe"), "mediapipe"
    except (MissingDependency, ImportError):
        detector, name = get_detector("none"), "none"
    return predict_image(rgb, models, detector), name
