"""labeler predict: detect + align + classify photos the test writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tinyws
from click.testing import CliRunner
from PIL import Image

from labeler.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def trained(tmp_path):
    """A workspace whose head model is trained on the colour cues of its crops."""
    from labeler.embeddings.embed import cues_workspace

    t = tinyws.build(tmp_path, {"correct": 15, "no_mask": 15})
    cues_workspace(t.ws)
    tinyws.label_all(t)
    res = run(
        "train",
        "-w",
        str(t.ws.root),
        "--features",
        "cues__face",
        "--folds",
        "3",
        "--no-label-errors",
    )
    assert res.exit_code == 0, res.output
    return t


def test_predict_cli_on_new_images(trained, tmp_path):
    rng = np.random.default_rng(123)
    photos = tmp_path / "new"
    (photos / "sub").mkdir(parents=True)
    truth = {}
    for i, label in enumerate(["correct", "no_mask", "correct", "no_mask"]):
        rel = f"sub/img_{i}.png" if i % 2 else f"img_{i}.jpg"
        Image.fromarray(tinyws.face_image(label, rng)).save(photos / rel)
        truth[rel] = label
    (photos / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "preds.csv"
    res = run(
        "predict", str(photos), "-w", str(trained.ws.root), "--out", str(out), "--detector", "none"
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    for col in [
        "path",
        "face_index",
        "x0",
        "y0",
        "x1",
        "y1",
        "mask_state",
        "mask_state_confidence",
    ]:
        assert col in df.columns
    assert len(df) == 4  # the broken file is skipped
    assert (df["mask_state"] == df["path"].map(truth)).all()
    assert df["mask_state_confidence"].between(0.5, 1).all()
    # refuses to overwrite without --force
    res = run(
        "predict", str(photos), "-w", str(trained.ws.root), "--out", str(out), "--detector", "none"
    )
    assert res.exit_code != 0 and "--force" in res.output


def test_predict_image_on_a_real_photo_with_mediapipe(trained):
    from skimage.data import astronaut

    from labeler.detect import get_detector
    from labeler.predict import predict_image
    from labeler.train import load_model

    rgb = astronaut()
    preds = predict_image(rgb, load_model(trained.ws), get_detector("mediapipe"))
    assert len(preds) == 1
    p = preds[0]
    assert not p.whole_image and p.crop.shape == (256, 256, 3)
    x0, y0, x1, y1 = p.box
    assert 120 < (x0 + x1) / 2 < 300 and 30 < (y0 + y1) / 2 < 250  # the astronaut's face
    assert p.labels["mask_state"] in ("correct", "no_mask")
    assert sum(p.probs["mask_state"].values()) == pytest.approx(1.0)


def test_predict_without_model_is_a_clean_error(tmp_path):
    t = tinyws.build(tmp_path, {"correct": 2, "no_mask": 2})
    img = tmp_path / "x.jpg"
    Image.fromarray(tinyws.face_image("correct", np.random.default_rng(0))).save(img)
    res = run(
        "predict",
        str(img),
        "-w",
        str(t.ws.root),
        "--out",
        str(tmp_path / "p.csv"),
        "--detector",
        "none",
    )
    assert res.exit_code != 0 and "labeler train" in res.output and "Traceback" not in res.output


def test_predict_image_label_follows_the_face_not_the_class_list(trained):
    """The label is the model's answer for this face (two classes: any label would pass a
    membership check): the astronaut's bare face is no_mask (p 0.98 measured), the same photo
    with the lower face painted in the mask colour is correct (p 0.92), and each label is the
    argmax of its probabilities with that probability as confidence."""
    from skimage.data import astronaut

    from labeler.detect import get_detector
    from labeler.predict import predict_image
    from labeler.train import load_model

    model, detector = load_model(trained.ws), get_detector("mediapipe")
    rgb = astronaut()
    (bare,) = predict_image(rgb, model, detector)
    x0, y0, x1, y1 = (int(v) for v in bare.box)
    masked = rgb.copy()
    masked[(y0 + y1) // 2 + (y1 - y0) // 10 : y1, x0:x1] = tinyws.COLOURS["correct"]
    (painted,) = predict_image(masked, model, detector)
    for p, want in ((bare, "no_mask"), (painted, "correct")):
        probs = p.probs["mask_state"]
        assert p.labels["mask_state"] == want, probs
        assert probs[want] == max(probs.values()) == p.confidence["mask_state"] > 0.8
