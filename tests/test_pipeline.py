"""`labeler run`: the one command for the common case, on images the test generates."""

from __future__ import annotations

import re
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
def test_run_then_rerun_then_add_images(tmp_path, caplog):
    from labeler.cluster.store import current_run_id, load_run
    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import load_crops
    from labeler.embeddings.store import list_embeddings, load_embeddings
    from labeler.faces.regions import get_region
    from labeler.pipeline import feature_inputs
    from labeler.workspace import Workspace

    demo = make_demo_set(tmp_path / "demo", per_state=3, seed=1)
    folder = tmp_path / "photos"
    folder.mkdir()
    files = sorted(demo.images.iterdir())
    for f in files[:10]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # a sound header with damaged pixels: the header-only ingest of `run` lets it through,
    # detection's decode finds it, and it is reported unreadable all the same
    whole = files[10].read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    ws_dir = tmp_path / "ws"
    runner = CliRunner()

    res = runner.invoke(cli, ["run", str(folder), "-w", str(ws_dir)])
    assert res.exit_code == 0, res.output
    assert "10 images ok, 2 unreadable" in res.output
    # the grouping says each phase as it ends, without -v, as `labeler cluster` does
    lines = [r.getMessage() for r in caplog.records if r.name == "labeler.cluster.run"]
    phases = [
        m.groups() for s in lines if (m := re.match(r"cluster: \w+ \S+ s \((\d+)/(\d+)\)", s))
    ]
    assert phases and phases[-1][0] == phases[-1][1], lines  # every planned phase, in order
    ws = Workspace.open(ws_dir)
    images = ws.images().set_index("path")
    assert images.loc["truncated.jpg", "status"] == "error"
    assert "truncated.jpg" in images.loc["truncated.jpg", "error"]
    assert "truncated" in images.loc["truncated.jpg", "error"]
    faces = ws.faces()
    assert len(faces) >= 10
    regions, need_cues = feature_inputs("auto", "timm:efficientnet_lite0")
    stored = list_embeddings(ws)
    assert need_cues and "cues__face" in stored
    assert regions and all(size is None for _, size in regions)  # the model's own 224 px
    for region, size in regions:
        key = f"efficientnet_lite0-int8__{region}"  # the CPU default: the int8 model
        assert key in stored
        ids, X = load_embeddings(ws, key)
        assert list(ids) == faces["face_id"].tolist()
        # the overlapped detect+embed run gives the model's own output for each crop file,
        # at the block's input size (it took the files' bytes from memory, one model call
        # for all regions)
        bb = get_backbone("timm:efficientnet_lite0", device="cpu", input_size=size)
        assert bb.input_size == 224 and not bb.config.resized
        on_box = get_region(region).crop == "box"  # the box region reads the box crops
        paths = [ws.box_crop_path(f) if on_box else ws.crop_path(f) for f in ids]
        want = bb.embed(load_crops(paths, region=region, size=bb.input_size))
        # the run embeds the crops as stored, handed over in memory: the model's own output
        # for each crop file
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


def test_run_config_composes_a_cluster_config():
    from labeler.cluster.types import ClusterConfig
    from labeler.pipeline import RunConfig, asks_for_new_clusters

    assert RunConfig().cluster == ClusterConfig()
    assert RunConfig(cluster=False).cluster is None  # the earlier on/off switch
    assert RunConfig(cluster=True).cluster == ClusterConfig()
    cfg = ClusterConfig(algorithm="kmeans", n_clusters=3)
    assert RunConfig(cluster=cfg).cluster is cfg
    with pytest.raises(TypeError, match="ClusterConfig or None"):
        RunConfig(cluster={"algorithm": "kmeans"})
    resolved = {"algorithm": "kmeans", "n_clusters": 3, "min_cluster_size": 5, "seed": 0}
    assert not asks_for_new_clusters(ClusterConfig(), resolved)
    assert not asks_for_new_clusters(cfg, resolved)
    assert asks_for_new_clusters(ClusterConfig(algorithm="kmeans", n_clusters=4), resolved)
    assert asks_for_new_clusters(ClusterConfig(seed=1), resolved)
    assert asks_for_new_clusters(ClusterConfig(algorithm="hdbscan"), resolved)


@pytest.mark.slow
def test_run_passes_clustering_options(tmp_path):
    from labeler.cluster.store import current_run_id, list_runs, load_run
    from labeler.workspace import Workspace, read_json

    demo = make_demo_set(tmp_path / "demo", per_state=2, seed=3)
    ws_dir = tmp_path / "ws"
    runner = CliRunner()
    base = ["run", str(demo.images), "-w", str(ws_dir), "--device", "cpu"]

    res = runner.invoke(cli, [*base, "--algorithm", "kmeans", "--n-clusters", "3"])
    assert res.exit_code == 0, res.output
    assert "clusters: 3" in res.output
    ws = Workspace.open(ws_dir)
    run = load_run(ws)
    assert run.params["algorithm"] == "kmeans"
    assert run.params["config"]["n_clusters"] == 3
    assert sorted(set(run.labels.tolist())) == [0, 1, 2]
    assert len(run.face_ids) == len(ws.faces()) >= 10
    saved = read_json(ws.step_config_path("run"))
    assert saved["cluster"]["algorithm"] == "kmeans" and saved["cluster"]["n_clusters"] == 3

    # asking again for the same grouping keeps the run; another k re-clusters everything
    first = current_run_id(ws)
    res = runner.invoke(cli, [*base, "--algorithm", "kmeans", "--n-clusters", "3"])
    assert res.exit_code == 0, res.output
    assert current_run_id(ws) == first
    res = runner.invoke(cli, [*base, "--algorithm", "kmeans", "--n-clusters", "4"])
    assert res.exit_code == 0, res.output
    assert current_run_id(ws) != first
    run = load_run(ws)
    assert run.params["config"]["n_clusters"] == 4
    assert sorted(set(run.labels.tolist())) == [0, 1, 2, 3]
    # plain 'labeler run' (default options) leaves the chosen grouping alone
    res = runner.invoke(cli, base)
    assert res.exit_code == 0, res.output
    assert load_run(ws).params["config"]["n_clusters"] == 4
    assert len(list_runs(ws)) == 2

    # --no-cluster embeds and stops
    res = runner.invoke(cli, ["run", str(demo.images), "-w", str(tmp_path / "ws2"), "--no-cluster"])
    assert res.exit_code == 0, res.output
    assert current_run_id(Workspace.open(tmp_path / "ws2")) is None


def test_feature_inputs_of_the_presets():
    from labeler.pipeline import feature_inputs

    bb = "timm:efficientnet_lite0"
    assert feature_inputs("auto", bb) == (
        [("nose", None), ("mouth_chin", None), ("box", None)],
        True,
    )
    assert feature_inputs("fast", bb) == ([("nose", 128), ("mouth_chin", 128), ("box", 128)], True)
    assert feature_inputs("face", bb) == ([("face", None)], False)
    spec = "efficientnet_lite0-96px__nose*0.5+efficientnet_lite0__box"
    assert feature_inputs(spec, bb) == ([("nose", 96), ("box", None)], False)
