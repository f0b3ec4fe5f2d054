"""Fine-tuning's checkpoints: a write interrupted midway leaves the previous checkpoint whole,
and the run resumes from it (real EfficientNet-Lite0 on tiny crops the test paints, CPU)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import tinyws

from labeler.train.finetune import FinetuneConfig, _load_resume_checkpoint, finetune

# finetune(threads=1) pins torch to one thread for the whole process: set back after each test
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_threads_restored")]

CLASSES = ["correct", "no_mask"]
CFG = FinetuneConfig(image_size=64, epochs=2, batch_size=8, device="cpu", patience=10, threads=1)
TRAIN, VAL = np.arange(12), np.arange(12, 16)

# Epoch 1 of the run in a process whose files may not grow past LIMIT bytes (RLIMIT_FSIZE,
# SIGXFSZ ignored): writing last.pt stops midway with EFBIG, as on a full disk.
INTERRUPTED = """
import errno, resource, signal, sys
import numpy as np
from labeler.train.finetune import FinetuneConfig, finetune
crops, out, limit = np.load(sys.argv[1]), sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
cfg = FinetuneConfig(image_size=64, epochs=2, batch_size=8, device="cpu", patience=10, threads=1)
try:
    finetune(crops, np.arange(16) % 2, classes=["correct", "no_mask"], train_idx=np.arange(12),
             val_idx=np.arange(12, 16), out_dir=out, config=cfg)
except OSError as exc:
    print("write failed:", exc)
    sys.exit(3 if exc.errno == errno.EFBIG else 4)
"""


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, capsys):
    rng = np.random.default_rng(0)
    crops = np.stack([tinyws.face_image(CLASSES[i % 2], rng, size=96) for i in range(16)])
    y = np.arange(16) % 2
    out = tmp_path / "run"
    first = finetune(
        crops,
        y,
        classes=CLASSES,
        train_idx=TRAIN,
        val_idx=VAL,
        out_dir=out,
        config=CFG,
        stop_after_epoch=0,
    )
    assert len(first.history) == 1
    last = out / "last.pt"
    before = sha(last)

    np.save(tmp_path / "crops.npy", crops)
    limit = last.stat().st_size // 2  # best.pt (weights only, ~1/3 of last.pt) still fits
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, str(tmp_path / "crops.npy"), str(out), str(limit)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the write really failed midway
    assert "last.pt" in proc.stdout  # ... on the temporary file beside last.pt
    assert sha(last) == before  # the previous checkpoint, byte for byte
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert _load_resume_checkpoint(last)["epoch"] == 0

    capsys.readouterr()
    resumed = finetune(
        crops,
        y,
        classes=CLASSES,
        train_idx=TRAIN,
        val_idx=VAL,
        out_dir=out,
        config=CFG,
        progress=True,
    )
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert resumed.history[0] == first.history[0]
    assert _load_resume_checkpoint(last)["epoch"] == 1
    # its own bar: the one epoch left, with rate and time left
    assert "finetune run: 100%" in capsys.readouterr().err


def test_a_saved_model_computes_what_it_computed_in_training(tmp_path):
    """best.pt is rebuilt in the architecture it was trained in (the shipped weights' TF-ported
    EfficientNet-Lite0: 'same' padding, BN eps 1e-3), so the loaded model gives the trained
    model's outputs; timm's plain efficientnet_lite0 takes the same tensors but computes
    something else (the validation scores and the saved model's disagreed)."""
    import torch

    from labeler.train.finetune import _save_weights, create_model, load_finetuned

    cfg = FinetuneConfig(image_size=64)
    model = create_model(cfg.backbone, 3).eval()
    _save_weights(tmp_path / "best.pt", model, ["a", "b", "c"], cfg)
    loaded = load_finetuned(tmp_path / "best.pt")["model"]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(x), loaded(x)
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()
