"""``labeler embed --engine ray``: the Ray Data pipeline equals the local engine row for row."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from test_embeddings import add_faces, make_ws

from labeler.embeddings import store
from labeler.workspace import Workspace

pytestmark = pytest.mark.ray


@pytest.fixture(scope="session")
def ray_session(request, tmp_path_factory):
    """One local Ray session (2 CPUs) for all Ray tests; workers share the tests' ONNX cache
    (pytest's cache dir, as in test_embeddings.py, else a temp dir)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    old = os.environ.get("LABELER_CACHE")
    plugin = getattr(request.config, "cache", None)
    cache = plugin.mkdir("labeler_cache") if plugin else tmp_path_factory.mktemp("ray_cache")
    os.environ["LABELER_CACHE"] = str(cache)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("LABELER_CACHE", None)
    else:
        os.environ["LABELER_CACHE"] = old


def test_ray_engine_equals_local_engine_and_resumes(tmp_path, ray_session):
    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import embed_faces
    from labeler.embeddings.ray_engine import embed_faces_ray

    a = make_ws(tmp_path / "ray", 40)
    b = Workspace.open(shutil.copytree(a.root, tmp_path / "local"))
    res = embed_faces_ray(a, region="lower", device="cpu", batch_size=8, shard_size=16)
    # the CPU default, as the local engine's: the int8 model
    assert (res.key, res.n_new, res.n_before) == ("efficientnet_lite0-int8__lower", 40, 0)
    assert res.config.engine == "ray" and ray_session.is_initialized()  # the session is reused
    bb = get_backbone(device="cpu", runtime="onnx")
    embed_faces(b, bb, region="lower", batch_size=8, shard_size=16)

    def same() -> None:
        ia, xa = store.load_embeddings(a, res.key)
        ib, xb = store.load_embeddings(b, res.key)
        assert list(ia) == list(ib) == list(a.faces()["face_id"])
        np.testing.assert_allclose(xa, xb, atol=1e-4)

    same()
    # resumable/incremental: only the new faces go through the pipeline
    add_faces(a, range(40, 46))
    add_faces(b, range(40, 46))
    again = embed_faces_ray(a, region="lower", device="cpu", batch_size=8, shard_size=16)
    assert (again.n_new, again.n_before) == (6, 40)
    embed_faces(b, bb, region="lower", batch_size=8, shard_size=16)
    same()
    nothing = embed_faces_ray(a, region="lower", device="cpu")
    assert nothing.n_new == 0


def test_cli_engine_ray(tmp_path, ray_session):
    from click.testing import CliRunner

    from labeler.cli import cli

    ws = make_ws(tmp_path / "ws", 5)
    args = ["embed", "-w", str(ws.root), "--engine", "ray", "--device", "cpu", "--no-progress"]
    out = CliRunner().invoke(cli, [*args, "--region", "nose"])
    assert out.exit_code == 0, out.output
    assert "efficientnet_lite0-int8__nose: embedded 5 faces" in out.output
    assert store.load_embeddings(ws, "efficientnet_lite0-int8__nose")[1].shape == (5, 1280)
