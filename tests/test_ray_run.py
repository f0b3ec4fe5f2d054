"""``labeler run --engine ray``: the whole stream on Ray Data gives the local engine's workspace.

Every run here is the CLI in its own process, as users run it: the local engine's workspace
of the real MFR2 photos is the reference; the Ray runs (a local Ray session, and a cluster of
a head and two worker nodes on 127.0.0.1 with one CPU each) must give the same faces and
boxes, identical crop files, every feature block within 1e-3 cosine and the same grouping,
also when a worker node is killed mid-run and when the driver is killed and run again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLI = [sys.executable, "-c", "from labeler.cli import main; main()"]


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    """The environment of the CLI processes: one ONNX cache for all of them."""
    pytest.importorskip("ray", reason="optional extra not installed: ray")
    plugin = getattr(request.config, "cache", None)
    cache = plugin.mkdir("labeler_cache") if plugin else tmp_path_factory.mktemp("cache")
    return {**os.environ, "LABELER_CACHE": str(cache), "RAY_DEDUP_LOGS": "0"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The MFR2 photos, copied (the workspace records the folder)."""
    src = shared_dataset("mfr2") / "images"
    return Path(shutil.copytree(src, tmp_path_factory.mktemp("mfr2") / "images"))


def run(env, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [*CLI, *args, "--no-progress"], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(env, photos, tmp_path_factory) -> Path:
    """The local engine's workspace of the MFR2 photos (default features and grouping)."""
    ws = tmp_path_factory.mktemp("local") / "ws"
    run(env, "run", str(photos), "-w", str(ws))
    return ws


def assert_same_workspace(got: Path, want: Path, *, grouping: bool = True) -> None:
    """Same faces and boxes, identical crop files, every block within 1e-3 cosine, and (with
    ``grouping``) the same default grouping."""
    from labeler.cluster.store import current_run_id, load_run
    from labeler.embeddings import store
    from labeler.workspace import Workspace

    a, b = Workspace.open(got), Workspace.open(want)
    fa = a.faces().sort_values("face_id").reset_index(drop=True)
    fb = b.faces().sort_values("face_id").reset_index(drop=True)
    assert len(fa) == len(fb) > 150
    assert list(fa["face_id"]) == list(fb["face_id"])
    box = ["x0", "y0", "x1", "y1"]
    np.testing.assert_allclose(fa[box].to_numpy(), fb[box].to_numpy(), atol=1e-3)
    for fid, path in zip(fa["face_id"], fa["crop_path"], strict=True):
        assert (a.root / path).read_bytes() == (b.root / path).read_bytes(), fid
        if a.box_crop_path(fid).exists() or b.box_crop_path(fid).exists():
            assert a.box_crop_path(fid).read_bytes() == b.box_crop_path(fid).read_bytes(), fid
    keys = sorted(store.list_embeddings(b))
    assert len(keys) == 4 and sorted(store.list_embeddings(a)) == keys  # 3 CNN blocks + cues
    for key in keys:
        ia, xa = store.load_embeddings(a, key)
        ib, xb = store.load_embeddings(b, key)
        assert sorted(ia) == sorted(ib) == list(fa["face_id"]), key
        xb = xb[pd.Series(np.arange(len(ib)), index=ib)[ia].to_numpy()]
        cos = (xa * xb).sum(1) / np.linalg.norm(xa, axis=1) / np.linalg.norm(xb, axis=1)
        assert cos.min() >= 1 - 1e-3, (key, cos.min())
    if grouping:
        ra, rb = load_run(a, current_run_id(a)), load_run(b, current_run_id(b))
        la = pd.Series(ra.labels, index=ra.face_ids)
        lb = pd.Series(rb.labels, index=rb.face_ids)[la.index]
        pairs = pd.crosstab(la.to_numpy(), lb.to_numpy())
        assert (pairs.gt(0).sum(axis=1) == 1).all() and (pairs.gt(0).sum(axis=0) == 1).all(), pairs


def test_ray_run_equals_the_local_engine_on_mfr2(env, photos, reference, tmp_path):
    ws = tmp_path / "ray"
    out = run(env, "run", str(photos), "-w", str(ws), "--engine", "ray")
    assert "163 images ok" in out.stdout and "166 faces" in out.stdout
    assert_same_workspace(ws, reference)


def test_a_workspace_begun_locally_is_continued_by_ray(env, photos, reference, tmp_path):
    """Half the photos by the local engine, then the whole folder by Ray: the faces, crops
    and features equal one local run (the grouping places new faces: not compared)."""
    part = tmp_path / "images"
    part.mkdir()
    names = sorted(p.name for p in photos.iterdir())
    for name in names[:80]:
        shutil.copy(photos / name, part / name)
    ws = tmp_path / "ws"
    run(env, "run", str(part), "-w", str(ws), "--no-cluster")
    for name in names[80:]:
        shutil.copy(photos / name, part / name)
    out = run(env, "run", str(part), "-w", str(ws), "--engine", "ray", "--no-cluster", "-v")
    assert "detect: 83 images to process, 80 already done" in out.stderr
    assert_same_workspace(ws, reference, grouping=False)


@pytest.fixture(scope="module")
def cluster(env):
    """A head and two worker nodes on 127.0.0.1, one CPU each (Ray's own multi-node test
    cluster: separate raylets and object stores, as on separate machines)."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    workers = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def _start(env, photos: Path, ws: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "run", str(photos), "-w", str(ws), "--engine", "ray", "--address", address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_first_commit(ws: Path, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Images in the detect log once the first chunk is committed (the run not finished)."""
    import pyarrow.parquet as pq

    log_path = ws / "detect_log.parquet"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        if log_path.exists():
            try:
                return pq.read_metadata(log_path).num_rows
            except OSError:  # being renamed into place
                pass
        time.sleep(0.05)
    raise AssertionError("no chunk committed in time")


def test_a_worker_node_killed_mid_run_changes_nothing(env, photos, reference, cluster, tmp_path):
    c, workers = cluster
    ws = tmp_path / "ws"
    proc = _start(env, photos, ws, c.address)
    done = _wait_for_first_commit(ws, proc)
    assert done < 163
    c.remove_node(workers.pop(0), allow_graceful=False)  # kill -9 of its raylet and workers
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err[-3000:]
    assert "166 faces" in out
    assert_same_workspace(ws, reference)
    workers.append(c.add_node(num_cpus=1))  # the next test gets two worker nodes again
    c.wait_for_nodes()


def test_a_killed_driver_resumes_on_the_next_run(env, photos, reference, cluster, tmp_path):
    c, _ = cluster
    ws = tmp_path / "ws"
    proc = _start(env, photos, ws, c.address)
    _wait_for_first_commit(ws, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    import pyarrow.parquet as pq

    done = pq.read_metadata(ws / "detect_log.parquet").num_rows
    assert 0 < done < 163
    out = run(
        env, "run", str(photos), "-w", str(ws), "--engine", "ray", "--address", c.address, "-v"
    )
    assert f"detect: {163 - done} images to process, {done} already done" in out.stderr
    assert_same_workspace(ws, reference)


def test_a_node_that_cannot_read_the_photos_is_one_line(env, cluster, tmp_path):
    """The start check runs on every node; a photo folder not on a shared file system is
    named with the fix (here no node can read the path, so the first one is named)."""
    c, _ = cluster
    code = (
        "import ray, sys\n"
        "from pathlib import Path\n"
        "from labeler.embeddings.ray_engine import check_cluster\n"
        "from labeler.errors import InputError\n"
        f"ray.init(address={c.address!r}, log_to_driver=False)\n"
        f"print(check_cluster(ray, None, what='the photo folder'))\n"
        "try:\n"
        f"    check_cluster(ray, Path({str(tmp_path / 'nowhere.jpg')!r}), what='the photo folder')\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "3", out.stdout + out.stderr[-2000:]
    assert len(lines) == 2 and "cannot read" in lines[1] and "shared file system" in lines[1]


def test_ray_predict_equals_the_local_engine(env, photos, reference, tmp_path):
    """A head trained on the default features of the MFR2 faces (masked or not): ``labeler
    predict --engine ray`` writes the local engine's rows, the probabilities within 1e-4."""
    from labeler.labels import LabelStore
    from labeler.workspace import Workspace

    ws = Workspace.open(shutil.copytree(reference, tmp_path / "ws"))
    truth = pd.read_csv(shared_dataset("mfr2") / "labels.csv").set_index("file")["state"]
    images = ws.images().set_index("image_id")["path"].map(lambda p: Path(p).name)
    faces = ws.faces()
    state = (
        faces["image_id"].map(images).map(truth).map({"masked": "correct", "no_mask": "no_mask"})
    )
    store = LabelStore(ws.labels_db)
    for label, ids in faces["face_id"].groupby(state.to_numpy()):
        store.assign(ids.tolist(), "mask_state", label, annotator="test", source="simulation")
    run(env, "train", "-w", str(ws.root), "--folds", "3", "--no-label-errors")
    some = tmp_path / "new"
    some.mkdir()
    for name in sorted(p.name for p in photos.iterdir())[::8]:
        shutil.copy(photos / name, some / name)
    (some / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.csv"
        run(env, "predict", str(some), "-w", str(ws.root), "--out", str(out), "--engine", engine)
        outs[engine] = pd.read_csv(out)
    a, b = outs["local"], outs["ray"]
    assert len(a) == len(b) >= 20 and list(a.columns) == list(b.columns)
    assert not a["path"].str.contains("broken").any()
    pd.testing.assert_frame_equal(
        a.drop(columns="mask_state_confidence"), b.drop(columns="mask_state_confidence")
    )
    np.testing.assert_allclose(a["mask_state_confidence"], b["mask_state_confidence"], atol=1e-4)


def test_bad_photos_are_recorded_by_ray_as_by_the_local_engine(env, photos, tmp_path):
    """A truncated JPEG and a file that is no image are recorded with the local engine's
    one-line reasons and the run goes on; the good photos give the same faces."""
    from labeler.workspace import Workspace

    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(p.name for p in photos.iterdir())[:4]:
        shutil.copy(photos / name, folder / name)
    good = (photos / sorted(p.name for p in photos.iterdir())[5]).read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "notes.jpg").write_bytes(b"not a photo at all")
    tables = {}
    for engine in ("local", "ray"):
        ws = tmp_path / engine
        out = run(env, "run", str(folder), "-w", str(ws), "--no-cluster", "--engine", engine)
        assert "4 images ok, 2 unreadable" in out.stdout, out.stdout
        w = Workspace.open(ws)
        tables[engine] = (
            w.images()[["path", "status", "error"]].sort_values("path").reset_index(drop=True),
            w.faces()[["face_id", "x0", "y0", "x1", "y1"]].sort_values("face_id"),
        )
    pd.testing.assert_frame_equal(tables["local"][0], tables["ray"][0])
    pd.testing.assert_frame_equal(tables["local"][1], tables["ray"][1])
    errors = tables["ray"][0].dropna(subset=["error"])
    assert set(errors["path"]) == {"truncated.png", "notes.jpg"}
    assert all("\n" not in e and len(e) < 300 for e in errors["error"])


def test_faces_detected_before_are_embedded_by_ray_from_their_crops(
    env, photos, tmp_path, monkeypatch
):
    """A workspace whose faces ``labeler detect`` made (no features yet), run with
    ``--engine ray``: the driver ships the crop files to the feature actors a window at a time
    (windows of 50 here); the result equals the same workspace run by the local engine."""
    import labeler.ray_stream as ray_stream
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    detected = tmp_path / "detected"
    run(env, "ingest", str(photos), "-w", str(detected))
    run(env, "detect", "-w", str(detected))
    local = Path(shutil.copytree(detected, tmp_path / "local"))
    run(env, "run", str(photos), "-w", str(local), "--no-cluster")
    monkeypatch.setattr(ray_stream, "EMBED_WINDOW", 50)
    monkeypatch.setenv("LABELER_CACHE", env["LABELER_CACHE"])
    res = run_pipeline(
        photos, Workspace.open(detected), config=RunConfig(engine="ray", cluster=None)
    )
    assert res.faces == 166 and all(n == 166 for n in res.embedded.values()), res.embedded
    assert_same_workspace(detected, local, grouping=False)
