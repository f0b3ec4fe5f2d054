"""Feature specs and block combination (labeler.features)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tinyws

from labeler.features import combine_blocks, load_features, parse_spec, resolve_spec


def test_parse_spec():
    assert parse_spec("cues__face") == [("cues__face", 1.0)]
    assert parse_spec("a__x + b__y*0.25") == [("a__x", 1.0), ("b__y", 0.25)]
    with pytest.raises(ValueError, match="bad weight"):
        parse_spec("a__x*heavy")
    with pytest.raises(ValueError, match="empty block"):
        parse_spec("a__x++b__y")
    with pytest.raises(ValueError, match="> 0"):
        parse_spec("a__x*0")


def test_combine_blocks_balances_a_wide_block_against_a_narrow_one():
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(300, 1280)) * 5.0  # a CNN block: many columns, big numbers
    narrow = rng.normal(size=(300, 6))  # a few cue columns
    X = combine_blocks([wide, narrow], dims=32)
    assert X.shape == (300, 32 + 6) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    share_narrow = float((X[:, 32:] ** 2).sum(1).mean())
    assert 0.35 < share_narrow < 0.65  # equal weights -> about half the energy each
    Xw = combine_blocks([wide, narrow], weights=[1.0, 3.0], dims=32)
    assert float((Xw[:, 32:] ** 2).sum(1).mean()) > 0.65
    assert combine_blocks([narrow], dims=0).shape == (300, 6)  # dims=0: no PCA


def test_combine_blocks_refuses_mismatched_rows():
    with pytest.raises(ValueError, match="300 rows"):
        combine_blocks([np.zeros((300, 4)), np.zeros((299, 4))])
    with pytest.raises(ValueError, match="no feature blocks"):
        combine_blocks([])


def test_resolve_auto_falls_back_and_says_so(caplog):
    bb = "efficientnet_lite0"
    full = ["cues__face", f"{bb}__nose", f"{bb}__mouth_chin", f"{bb}__box", f"{bb}__lower"]
    assert [k for k, _ in resolve_spec("auto", full)] == full[:4]
    # "fast": the same blocks at 128 px; a block stored only at another size stands in
    s = f"{bb}-128px"
    fast = ["cues__face", f"{s}__nose", f"{s}__mouth_chin", f"{s}__box"]
    assert [k for k, _ in resolve_spec("fast", fast + full[1:])] == fast
    assert [k for k, _ in resolve_spec("fast", full)] == full[:4]
    assert [k for k, _ in resolve_spec("auto", fast[:2] + full[2:4])] == fast[:2] + full[2:4]
    # a workspace embedded before the box crop existed keeps working, and says what is missing
    with caplog.at_level(logging.WARNING, logger="labeler.features"):
        assert [k for k, _ in resolve_spec("auto", full[:3])] == full[:3]
    assert f"{bb}__box not stored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="labeler.features"):
        blocks = resolve_spec("auto", ["cues__face", f"{bb}__lower", f"{bb}__face"])
    assert blocks == [("cues__face", 0.25), (f"{bb}__lower", 0.5)]
    assert "not stored" in caplog.text
    assert resolve_spec("auto", [f"{bb}__face"]) == [(f"{bb}__face", 1.0)]
    with pytest.raises(ValueError, match="labeler embed"):
        resolve_spec("auto", [])
    with pytest.raises(ValueError, match="not stored"):
        resolve_spec(f"cues__face+{bb}__nose", ["cues__face"])


def _workspace_with_blocks(tmp_path, blocks: dict[str, np.ndarray]):
    from labeler.embeddings.store import save_vectors
    from labeler.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws", create=True)
    n = len(next(iter(blocks.values())))
    ids = [f"{i:016x}_0" for i in range(n)]
    ws.write_faces(tinyws.stub_faces(ids))
    for key, X in blocks.items():
        # stored in reverse order: load_features must realign to faces.parquet
        save_vectors(ws, key, ids[::-1], X[::-1], {"test": True})
    return ws, ids


SPEC = "cues__face+efficientnet_lite0__nose*0.5"


def _cues_and_nose(tmp_path, seed: int):
    """A workspace of 40 faces with a 10-d cues block and a 64-d nose block (random, stored
    out of order): ``(ws, ids, cues, cnn)``; :data:`SPEC` names both."""
    rng = np.random.default_rng(seed)
    cues = rng.normal(size=(40, 10)).astype(np.float32)
    cnn = rng.normal(size=(40, 64)).astype(np.float32)
    ws, ids = _workspace_with_blocks(
        tmp_path, {"cues__face": cues, "efficientnet_lite0__nose": cnn}
    )
    return ws, ids, cues, cnn


def test_load_features_aligns_to_faces(tmp_path):
    rng = np.random.default_rng(1)
    cues = rng.normal(size=(40, 10)).astype(np.float32)
    cnn = rng.normal(size=(40, 64)).astype(np.float32)
    ws, ids = _workspace_with_blocks(
        tmp_path, {"cues__face": cues, "efficientnet_lite0__nose": cnn}
    )
    fids, X = load_features(ws, "cues__face+efficientnet_lite0__nose*0.5", dims=32)
    assert list(fids) == ids and X.shape == (40, 10 + 32)
    np.testing.assert_allclose(
        X, combine_blocks([cues, cnn], weights=[1.0, 0.5], dims=32), atol=1e-5
    )
    fids2, X2 = load_features(ws, "cues__face", face_ids=ids[5:10])
    np.testing.assert_allclose(X2, combine_blocks([cues[5:10]]), atol=1e-5)
    _, Xa = load_features(ws, dims=32)  # auto: cues + nose present, mouth_chin missing
    assert Xa.shape == (40, 42)


def test_load_features_caches_the_combined_matrix_and_notices_new_shards(
    tmp_path, monkeypatch, caplog
):
    """The second read comes from WS/cache without combining again; a new shard, other
    faces or another spec is another key; a damaged or unwritable cache is recomputed."""
    import labeler.features as features
    from labeler.embeddings.store import save_vectors

    ws, ids, cues, cnn = _cues_and_nose(tmp_path, 2)
    spec = SPEC
    calls = []
    real = features.combine_blocks
    monkeypatch.setattr(
        features, "combine_blocks", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    _, X1 = load_features(ws, spec, dims=32)
    cached = list((ws.root / features.CACHE_DIR).glob("features-*.npy"))
    assert len(calls) == 1 and len(cached) == 1
    _, X2 = load_features(ws, spec, dims=32)
    assert len(calls) == 1 and np.array_equal(X1, X2) and X2.dtype == np.float32
    X2[:] = 0  # the caller's copy: the cache is not changed through it
    assert np.array_equal(load_features(ws, spec, dims=32)[1], X1)

    load_features(ws, spec, dims=16)  # another feature set: its own file
    load_features(ws, spec, dims=32, face_ids=ids[:20])  # other faces: another state
    assert len(calls) == 3

    # a new shard of a block (faces embedded again): recomputed, the old state dropped
    more = np.random.default_rng(2).normal(size=(40, 64)).astype(np.float32)
    save_vectors(ws, "efficientnet_lite0__nose", ids, more, {"test": True})
    _, X4 = load_features(ws, spec, dims=32)
    assert len(calls) == 4 and not np.allclose(X4, X1)
    assert np.array_equal(X4, real([cues, more], weights=[1.0, 0.5], dims=32))  # newest wins
    names = [p.name for p in (ws.root / features.CACHE_DIR).glob("features-*.npy")]
    assert len(names) == 2  # dims 32 (its newest state only) and dims 16

    # damaged: recomputed and rewritten
    ws2, _ = _workspace_with_blocks(tmp_path / "b", {"cues__face": cues})
    _, good = load_features(ws2, "cues__face")
    (path,) = (ws2.root / features.CACHE_DIR).glob("features-*.npy")
    path.write_bytes(b"not a numpy file")
    with caplog.at_level(logging.WARNING, logger="labeler.features"):
        _, again = load_features(ws2, "cues__face")
    assert np.array_equal(again, good) and "unreadable" in caplog.text
    assert np.array_equal(np.load(path), good)

    # unwritable: a file where the folder should be; the features still come
    ws3, _ = _workspace_with_blocks(tmp_path / "c", {"cues__face": cues})
    (ws3.root / features.CACHE_DIR).write_text("in the way")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="labeler.features"):
        _, X3 = load_features(ws3, "cues__face")
    assert np.array_equal(X3, good) and "not written" in caplog.text


def test_feature_cache_sees_a_block_rewritten_at_once_with_the_same_size(tmp_path):
    """Delete a block and store other vectors of the same shape right away (same size, the
    same clock tick, maybe the same inode): the cache key still changes (the files' tails)."""
    import shutil

    from labeler.embeddings.store import embedding_dir, save_vectors

    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 12)).astype(np.float32)
    b = rng.normal(size=(30, 12)).astype(np.float32)
    ws, ids = _workspace_with_blocks(tmp_path, {"cues__face": a})
    _, Xa = load_features(ws, "cues__face")
    shutil.rmtree(embedding_dir(ws, "cues__face"))
    save_vectors(ws, "cues__face", ids, b, {"test": True})
    _, Xb = load_features(ws, "cues__face")
    np.testing.assert_allclose(Xb, combine_blocks([b]), atol=1e-6)
    assert not np.allclose(Xa, Xb)


def test_head_features_keep_each_components_own_variance():
    """The Suggest step's features: standardised columns on their first principal
    components, not whitened (the strong directions keep their weight), over sqrt(columns)."""
    from labeler.features import head_features

    rng = np.random.default_rng(3)
    n = 600
    state = rng.integers(0, 2, n)
    # 2 blocks: one strong direction that carries the state, many weak noise directions
    a = np.outer(3.0 * state + rng.normal(0, 1, n), rng.normal(size=40)) + rng.normal(
        0, 0.3, (n, 40)
    )
    b = rng.normal(size=(n, 300))
    X = head_features([a.astype(np.float32), b.astype(np.float32)], dims=64)
    assert X.shape == (n, 64) and X.dtype == np.float32
    var = X.var(0)
    assert var[0] > 20 * var[-1]  # not whitened: the first component stays the strongest
    assert abs(np.corrcoef(X[:, 0], state)[0, 1]) > 0.7  # and it is the state's
    # the components are fitted on a sample of faces: nearly the same directions
    Xs = head_features([a.astype(np.float32), b.astype(np.float32)], dims=64, fit_rows=300)
    assert abs(np.corrcoef(Xs[:, 0], X[:, 0])[0, 1]) > 0.99
    # fewer columns than components: every column, standardised, over sqrt(columns)
    small = head_features([a[:, :5].astype(np.float32)], dims=64)
    np.testing.assert_allclose(small.std(0), 1 / np.sqrt(5), rtol=1e-3)


def test_the_head_features_are_cached_beside_the_grouping_matrix(tmp_path, monkeypatch):
    import labeler.features as features
    from labeler.features import features_for, head_features

    ws, ids, cues, cnn = _cues_and_nose(tmp_path, 4)
    spec = SPEC
    _, G = load_features(ws, spec, dims=32)
    calls = []
    real = features.head_features
    monkeypatch.setattr(features, "head_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    H = features_for(ws, spec, ids[::-1], head=True)
    np.testing.assert_allclose(H[::-1], head_features([cues, cnn]), atol=1e-5)
    assert len(list((ws.root / features.CACHE_DIR).glob("features-*.npy"))) == 2
    features_for(ws, spec, ids, head=True)
    assert calls == [1]  # the second read is the cache's
    assert np.array_equal(load_features(ws, spec, dims=32)[1], G)  # the grouping's kept
