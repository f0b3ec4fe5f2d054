"""Labeled splits out of the tool: the manifest and its writer (:mod:`.manifest`, ``labeler
export``), the layouts other tools load (:mod:`.formats`: Hugging Face, COCO, Label Studio,
FiftyOne), leak-free splits grouped by person and stratified by class (:mod:`.splits`), and
the persons they are grouped by (:mod:`.persons`).

``from labeler.export import export, ExportConfig`` keeps working; the names load lazily, so
importing :mod:`labeler.export.splits` alone does not load the manifest writer.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "ExportConfig": "manifest",
    "ExportResult": "manifest",
    "export": "manifest",
    "labels_manifest": "manifest",
    "clusters_manifest": "manifest",
    "label_table": "manifest",
    "assign_splits": "splits",
    "find_persons": "persons",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
