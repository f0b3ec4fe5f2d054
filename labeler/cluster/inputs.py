"""The features a clustering run works on, read from a workspace.

Kept apart from :mod:`labeler.cluster.run` (arrays only) so that the workspace-level steps
(``labeler cluster``, ``labeler place``, ``labeler run``) share one loader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from labeler.workspace import Workspace


def load_cluster_features(ws: Workspace, spec: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """Features for clustering: ``(face_ids (N,), X (N, D) float32, spec used)``.

    A stored embedding key as ``spec`` is used as stored; anything else (``auto``, keys
    joined by ``+`` with weights) goes through :func:`labeler.features.load_features`
    (blocks standardised, PCA-reduced, weighted).
    """
    from labeler.embeddings.store import list_embeddings, load_embeddings
    from labeler.features import load_features

    if spec in list_embeddings(ws):  # type: ignore[arg-type]
        fids, X = load_embeddings(ws, spec)  # type: ignore[arg-type]
        return np.asarray(fids, dtype=object).astype(str), X, spec
    fids, X = load_features(ws, spec=spec)
    return np.asarray(fids, dtype=object).astype(str), np.asarray(X, dtype=np.float32), spec
