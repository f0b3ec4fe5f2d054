"""``collect_info()``: versions, compute device, backbones, detectors and regions (for bug reports)."""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata

log = logging.getLogger(__name__)

_PACKAGES = (
    ("labeler", "labeler"),
    ("torch", "torch"),
    ("timm", "timm"),
    ("onnxruntime", "onnxruntime"),
    ("faiss", "faiss-cpu"),
)


def _version(dist: str) -> str:
    for name in (dist, dist.replace("-cpu", "-gpu"), dist.replace("-cpu", "-gpu-cu12")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def _device() -> str:
    try:
        import torch
    except ImportError:
        return f"cpu ({os.cpu_count()} cores; torch not installed)"
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"cuda: {torch.cuda.get_device_name(0)}" + (f" (+{n - 1} more)" if n > 1 else "")
    return f"cpu ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def _detectors() -> str:
    from labeler.detect import available_detectors

    return ", ".join(available_detectors()) or "none"


def collect_info() -> dict[str, str]:
    """Ordered ``{name: value}`` strings: versions, device, backbones, detectors, regions."""
    from labeler.embeddings.backbones import available_backbones
    from labeler.faces.regions import REGIONS

    info = {name: _version(dist) for name, dist in _PACKAGES}
    info = {
        "labeler": info["labeler"],
        "python": platform.python_version(),
        **{k: v for k, v in info.items() if k != "labeler"},
    }
    info["device"] = _device()
    info["backbones"] = ", ".join(
        [*available_backbones(), "timm:<any timm model> (hub download or --weights FILE)"]
    )
    info["detectors"] = _detectors()
    info["regions"] = ", ".join(REGIONS)
    return info
