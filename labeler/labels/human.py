"""The human labels a model learns from: one field's current values, in the faces order.

Training (``labeler train``), suspects and the Suggest step read labels through
:func:`human_labels`, so they all see the same rows: suggestions never count, faces no longer
in the faces table and faces marked ``not_a_face`` in any field are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from labeler.labels.store import LabelStore

if TYPE_CHECKING:  # pragma: no cover
    from labeler.workspace import Workspace


def human_labels(ws: Workspace, field: str, faces: pd.DataFrame | None = None) -> pd.DataFrame:
    """Current human labels of ``field`` in faces order: face_id, value, source, annotator, ts.

    Suggestions never appear here (they live in their own table). Faces no longer in the
    faces table, and faces marked ``not_a_face`` in any field, are dropped.
    """
    faces = ws.require_faces() if faces is None else faces
    store = LabelStore(ws.labels_db)
    cur = store.current(field)
    cur = cur[cur["value"].notna() & ~cur["face_id"].isin(store.not_faces())]
    order = pd.Series(np.arange(len(faces)), index=faces["face_id"].to_numpy())
    cur = cur[cur["face_id"].isin(order.index)].copy()
    cur["_pos"] = cur["face_id"].map(order)
    return cur.sort_values("_pos").drop(columns="_pos").reset_index(drop=True)
