"""bench/bench_scale.py's replicated workspace keeps the workspace contract: it loads through
the normal API, face ids are unique, every block is aligned to faces, copies are near (not
exact) copies of their source, and crops and photos are there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from synthetic import synthetic_workspace  # noqa: E402


@pytest.fixture(scope="module")
def bench_scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from labeler.embeddings.store import save_vectors

    ws = synthetic_workspace(tmp_path_factory.mktemp("base") / "ws", n_faces=40, n_clusters=3)
    ids = ws.faces()["face_id"].to_numpy(dtype=object)
    rng = np.random.default_rng(0)
    save_vectors(ws, "cues__face", ids, rng.normal(size=(40, 8)), {"producer": "test"})
    save_vectors(ws, "efficientnet_lite0__nose", ids, rng.normal(size=(40, 16)), {"p": "test"})
    return ws


def test_replica_keeps_the_contract(bench_scale, base, tmp_path):
    from labeler.embeddings.store import load_embeddings, read_config
    from labeler.workspace import Workspace

    rep = bench_scale.replicate(base.root, tmp_path / "ws_300", 300, noise=0.05)
    assert (rep.faces, rep.base_faces, rep.replicas) == (300, 40, 8)
    info = bench_scale.check_replica(rep.root)
    assert info["faces"] == 300 and info["images"] == 300
    ws = Workspace.open(rep.root)
    faces = ws.faces()
    assert faces["face_id"].is_unique
    assert (faces["face_id"] == faces["image_id"] + "_" + faces["face_index"].astype(str)).all()
    assert all(ws.crop_path(f).is_file() for f in faces["face_id"])
    assert ws.face_image_paths(faces).map(lambda p: Path(p).is_file()).all()
    log = pd.read_parquet(rep.root / "detect_log.parquet")
    assert sorted(log["image_id"]) == sorted(ws.images()["image_id"])

    src = pd.read_parquet(rep.root / "bench_source.parquet")
    assert src["face_id"].tolist() == faces["face_id"].tolist()
    for key in ("cues__face", "efficientnet_lite0__nose"):
        assert read_config(ws, key) == read_config(base, key)
        _, X = load_embeddings(ws, key)
        _, Xb = load_embeddings(base, key, face_ids=src["source_face_id"].to_numpy())
        first = src["replica"].to_numpy() == 0
        np.testing.assert_array_equal(X[first], Xb[first])  # replica 0 is the base itself
        diff = np.abs(X[~first] - Xb[~first])
        assert (diff > 0).all(axis=1).all() and diff.max() < 0.5  # near, not exact, copies


def test_labels_of_both_cases(bench_scale, base, tmp_path):
    from labeler.labels import LabelStore

    rep = bench_scale.replicate(base.root, tmp_path / "ws", 300, noise=0.05)
    truth = np.asarray(["correct", "no_mask", "nose_exposed"] * 100, dtype=object)
    events = bench_scale.write_labels(rep.root, truth, "A")
    labels = LabelStore(rep.root / "labels.db").current_values("mask_state")
    assert len(labels) == 300 and events == 3
    ids = pd.read_parquet(rep.root / "faces.parquet")["face_id"]
    assert all(labels[f] == t for f, t in zip(ids, truth, strict=True))
