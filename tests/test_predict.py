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


def test_predict_cli_stderr_has_no_tflite_lines_and_try_it_crop_is_upright(trained, tmp_path):
    """`labeler predict` in a real process: the TFLite runtime's start-up lines (printed by
    its C++ code on fd 2) stay off stderr; a photo stored sideways gives the same face, its
    crop upright (what the app's Try it shows) and the same label as the upright photo."""
    import subprocess
    import sys
    from pathlib import Path

    from skimage.data import astronaut

    from labeler.detect import get_detector
    from labeler.predict import predict_image
    from labeler.train import load_model

    photos = tmp_path / "sideways_test"
    photos.mkdir()
    rgb = astronaut()
    Image.fromarray(rgb).save(photos / "up.png")
    Image.fromarray(np.rot90(rgb, k=-1).copy()).save(photos / "turned_90.png")
    out = tmp_path / "p.csv"
    labeler = str(Path(sys.executable).with_name("labeler"))
    proc = subprocess.run(
        [labeler, "predict", str(photos), "-w", str(trained.ws.root), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    for noise in ("Feedback manager", "XNNPACK", "inference_feedback_manager", "absl::"):
        assert noise not in proc.stderr, proc.stderr
    df = pd.read_csv(out).set_index("path")
    assert len(df) == 2 and df.loc["up.png", "mask_state"] == df.loc["turned_90.png", "mask_state"]
    # Try it (predict_image on the decoded array): the crop of the sideways photo is upright
    model, det = load_model(trained.ws), get_detector("mediapipe")
    (up,) = predict_image(rgb, model, det)
    (turned,) = predict_image(np.rot90(rgb, k=-1).copy(), model, det)
    a, b = up.crop.astype(np.float32).ravel(), turned.crop.astype(np.float32).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8  # the same upright face (turned: ~0)
    assert turned.labels == up.labels


def test_quiet_native_stderr_drops_only_the_runtime_lines(tmp_path):
    """Lines written to fd 2 inside the guard come back, except the TFLite start-up ones."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from labeler.detect.mediapipe import quiet_native_stderr\n"
        "with quiet_native_stderr():\n"
        "    os.write(2, b'W0 inference_feedback_manager.cc:114] Feedback manager requires x\\n')\n"
        "    os.write(2, b'a line of the user\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "a line of the user\nafter\n"


def test_detector_start_up_lines_stay_off_stderr_after_the_graph_is_built(tmp_path):
    """MediaPipe opens its calculators (and the TFLite interpreter logs) on its own threads
    after the graph's constructor returns: the guard must last until a frame went through,
    else the lines land on stderr whenever the first photo comes late (a flaky CI failure
    of test_rotation_predict)."""
    import subprocess
    import sys

    code = (
        "import os, time\n"
        "from labeler.detect import get_detector\n"
        "det = get_detector('mediapipe')\n"
        "det._graph(0)\n"
        "time.sleep(1.0)\n"  # the first photo comes late (a slow decode, a busy machine)
        "os.write(2, b'end\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "end\n", proc.stderr
