"""`labeler run`: the one command for the common case, on images the test generates."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from labeler.cli import cli
from labeler.demo import make_demo_set


def test_help_does_not_import_torch():
    code = (
        "import sys; from labeler.cli import cli\n"
        "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('torch', 'timm', 'faiss', 'streamlit', 'umap', 'mediapipe') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_run_on_a_missing_folder_is_one_clean_line(tmp_path):
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "nope"), "-w", str(tmp_path / "ws")])
    assert res.exit_code != 0
    assert "Traceback" not in res.output and "nope" in res.output


@pytest.mark.slow
def test_run_then_rerun_then_add_images(tmp_path):
    from labeler.cluster.store import current_run_id, load_run
    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import load_crops
    from labeler.embeddings.store import list_embeddings, load_embeddings
    from labeler.pipeline import feature_inputs
    from labeler.workspace import Workspace

    demo = make_demo_set(tmp_path / "demo", per_state=3, seed=1)
    folder = tmp_path / "photos"
    folder.mkdir()
    files = sorted(demo.images.iterdir())
    for f in files[:10]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ws_dir = tmp_path / "ws"
    runner = CliRunner()

    res = runner.invoke(cli, ["run", str(folder), "-w", str(ws_dir)])
    assert res.exit_code == 0, res.output
    assert "10 images ok, 1 unreadable" in res.output
    ws = Workspace.open(ws_dir)
    faces = ws.faces()
    assert len(faces) >= 10
    regions, need_cues = feature_inputs("auto", "timm:efficientnet_lite0")
    stored = list_embeddings(ws)
    assert need_cues and "cues__face" in stored
    for region in regions:
        key = next(k for k in stored if k.endswith(f"__{region}"))
        ids, X = load_embeddings(ws, key)
        assert list(ids) == faces["face_id"].tolist()
        # the overlapped detect+embed run gives the model's own output for each crop
        bb = get_backbone("timm:efficientnet_lite0", device="cpu")
        paths = [ws.crop_path(f) for f in ids]
        want = bb.embed(load_crops(paths, region=region, size=bb.input_size))
        np.testing.assert_allclose(X, want, atol=1e-3)
    first_run = current_run_id(ws)
    assert first_run is not None

    # a second run on the same folder is a no-op
    res = runner.invoke(cli, ["run", str(folder), "-w", str(ws_dir)])
    assert res.exit_code == 0, res.output
    assert current_run_id(ws) == first_run
    assert ws.faces()["face_id"].tolist() == faces["face_id"].tolist()

    # new photos: only they are processed, and they join the existing clusters
    for f in files[10:]:
        shutil.copy(f, folder / f.name)
    res = runner.invoke(cli, ["run", str(folder), "-w", str(ws_dir)])
    assert res.exit_code == 0, res.output
    grown = ws.faces()
    assert len(grown) > len(faces)
    assert grown["face_id"].iloc[: len(faces)].tolist() == faces["face_id"].tolist()
    run = load_run(ws)
    assert current_run_id(ws) != first_run
    assert set(run.face_ids) == set(grown["face_id"])
    old = load_run(ws, first_run)
    before = dict(zip(old.face_ids, old.labels, strict=True))
    after = dict(zip(run.face_ids, run.labels, strict=True))
    assert all(after[f] == before[f] for f in before)  # placing keeps the old assignments
