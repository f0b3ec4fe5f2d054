"""The labeling-effort metric and the simulated annotator, on hand-made cases with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tinyws
from hypothesis import given, settings
from hypothesis import strategies as st

from labeler.loop.effort import effort_from_curve, grouping_scores, noise_as_singletons
from labeler.loop.simulate import InteractiveConfig, simulate


def test_perfect_grouping_gives_n_over_classes():
    truth = np.repeat(["a", "b", "c", "d"], 25)
    groups = np.repeat([3, 1, 0, 2], 25)
    res = simulate(groups, truth)
    assert res.actions98 == 4 and res.eff98 == pytest.approx(100 / 4)
    assert res.eff95 == res.eff99 == pytest.approx(25.0)
    assert res.nmi == pytest.approx(1.0) and res.purity == pytest.approx(1.0)
    assert res.actions_total == 4 and res.kinds == {"bulk": 4}


def test_one_by_one_is_one():
    truth = np.array(list("aabbbcccc"))
    res = simulate(np.full(len(truth), -1), truth)
    assert res.eff95 == res.eff98 == res.eff99 == pytest.approx(1.0)
    assert res.actions_total == len(truth)


def test_noise_points_are_groups_of_one():
    # group 0: six "a"; four noise faces b, b, b, a. Noise as ONE group would take 1 action
    # (majority b) and leave the a wrong; as singletons it takes 4 actions, all right.
    truth = np.array(["a"] * 6 + ["b", "b", "b", "a"])
    groups = np.array([0] * 6 + [-1] * 4)
    res = simulate(groups, truth)
    assert res.kinds == {"bulk": 5}
    assert res.actions95 == 5 and res.eff95 == pytest.approx(10 / 5)
    assert list(res.curve) == [6, 7, 8, 9, 10]
    assert noise_as_singletons(groups).tolist() == [0] * 6 + [1, 2, 3, 4]


def test_mixed_group_then_corrections():
    truth = np.array(["a"] * 7 + ["b"] * 3)
    res = simulate(np.zeros(10, int), truth)
    assert list(res.curve) == [7, 8, 9, 10]
    assert res.actions95 == 4 and res.eff95 == pytest.approx(2.5)
    assert res.kinds == {"bulk": 1, "correct": 3}
    assert res.purity == pytest.approx(0.7)


def test_biggest_groups_first_and_threshold_crossing():
    # a 90-face pure group, then ten singletons: 95 % is first reached after 6 actions
    truth = np.array(["a"] * 90 + ["b"] * 10)
    groups = np.array([5] * 90 + list(range(10)))
    res = simulate(groups, truth)
    assert res.curve[0] == 90
    assert res.actions95 == 6 and res.eff95 == pytest.approx(95 / 6)
    assert res.actions99 == 10 and res.eff99 == pytest.approx(99 / 10)


def test_effort_from_curve_unreached():
    assert effort_from_curve(np.array([1, 2]), 10, 95) == (0.0, -1)
    assert effort_from_curve(np.array([5, 10]), 10, 95) == (5.0, 2)


def test_scores_of_random_grouping_are_low():
    rng = np.random.default_rng(0)
    truth = rng.choice(["a", "b"], 500)
    s = grouping_scores(rng.integers(0, 4, 500), truth)
    assert s["nmi"] < 0.05 and abs(s["ari"]) < 0.05


def test_bad_inputs_say_what_was_received():
    with pytest.raises(ValueError, match="groups has shape"):
        simulate(np.zeros(3), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="needs features"):
        simulate(np.zeros(3), np.array(["a", "b", "a"]), strategy="interactive")
    with pytest.raises(ValueError, match="unknown strategy"):
        simulate(np.zeros(3), np.array(["a", "b", "a"]), strategy="magic")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 5), st.sampled_from("abc")), min_size=1, max_size=60))
def test_plain_curve_laws(rows):
    groups = np.array([g for g, _ in rows])
    truth = np.array([t for _, t in rows])
    res = simulate(groups, truth)
    curve = res.curve
    assert curve[-1] == len(truth)  # always ends with everything right
    assert (np.diff(curve) >= 0).all()  # plain never makes things worse
    assert (curve >= np.arange(1, len(curve) + 1)).all()  # each action gains >= 1 face
    for lv in (95, 98, 99):
        assert getattr(res, f"eff{lv}") >= 1.0


def _blobs(n_per: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 6.0
    X = np.concatenate([c + rng.normal(size=(n_per, 8)) for c in centres]).astype(np.float32)
    truth = np.repeat(["no_mask", "correct", "on_chin"], n_per)
    return X, truth


def test_interactive_beats_plain_on_a_poor_grouping():
    X, truth = _blobs()
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 6, len(truth))  # a grouping that ignores the mask entirely
    plain = simulate(groups, truth)
    inter = simulate(groups, truth, strategy="interactive", features=X)
    assert inter.curve[-1] == len(truth)
    assert plain.eff98 < 3.0
    assert inter.eff98 > 3 * plain.eff98
    assert inter.actions_total == sum(inter.kinds.values())
    assert set(inter.kinds) <= {
        "bulk",
        "split",
        "regroup",
        "accept",
        "assign",
        "relabel",
        "correct",
    }
    assert inter.clicks == 2 * inter.actions_total - inter.kinds.get("regroup", 0)  # one click


def test_interactive_ignores_label_names_and_is_deterministic():
    X, truth = _blobs(seed=2)
    groups = np.random.default_rng(3).integers(0, 5, len(truth))
    renamed = np.array([{"no_mask": "x1", "correct": "x2", "on_chin": "x3"}[t] for t in truth])
    cfg = InteractiveConfig(split_parts=3)
    a = simulate(groups, truth, strategy="interactive", features=X, config=cfg)
    b = simulate(groups, renamed, strategy="interactive", features=X, config=cfg)
    c = simulate(groups, truth, strategy="interactive", features=X, config=cfg)
    assert a.actions98 == c.actions98 and np.array_equal(a.curve, c.curve)
    assert a.kinds["bulk"] == b.kinds["bulk"]


# --- the CLI on a tiny workspace ----------------------------------------------------------------


def _tiny_workspace(tmp_path):
    import pandas as pd

    from labeler.cluster.store import ClusterResult, save_run
    from labeler.embeddings.store import save_vectors
    from labeler.workspace import IMAGES_SCHEMA, Workspace

    X, truth = _blobs(n_per=20, seed=4)
    n = len(truth)
    folder = tmp_path / "photos"
    folder.mkdir()
    ws = Workspace.open(tmp_path / "ws", create=True)
    ws.add_root(folder)
    image_ids = [f"{i:016x}" for i in range(n)]
    paths = [f"sub/img_{i:03d}.jpg" for i in range(n)]
    images = pd.DataFrame(
        {
            "image_id": image_ids,
            "root": 0,
            "path": paths,
            "size_bytes": 1,
            "mtime": 0.0,
            "width": 64,
            "height": 64,
            "status": "ok",
            "error": None,
            "duplicate_of": None,
        },
        columns=IMAGES_SCHEMA.names,
    )
    ws.write_images(images)
    ids = [f"{i}_0" for i in image_ids]
    ws.write_faces(tinyws.stub_faces(ids))
    save_vectors(ws, "cues__face", ids, X, {"test": True})
    groups = np.random.default_rng(5).integers(-1, 4, n).astype(np.int32)
    run_id = save_run(
        ws,
        ClusterResult(
            face_ids=np.array(ids),
            labels=groups,
            outlier_score=np.zeros(n, np.float32),
            xy=np.zeros((n, 2), np.float32),
            suggested=np.maximum(groups, 0),
        ),
    )
    # the truth CSV names files relative to the folder above the ingested one; one row has no face
    csv = tmp_path / "labels.csv"
    rows = [{"file": f"photos/{p}", "state": t} for p, t in zip(paths, truth, strict=True)]
    rows.append({"file": "photos/sub/not_ingested.jpg", "state": "correct"})
    pd.DataFrame(rows).to_csv(csv, index=False)
    return ws, csv, run_id, groups, truth


def test_simulate_cli_prints_the_table_and_writes_json(tmp_path):
    import json

    from click.testing import CliRunner

    from labeler.cli import cli

    ws, csv, run_id, groups, truth = _tiny_workspace(tmp_path)
    res = CliRunner().invoke(
        cli, ["simulate", "-w", str(ws.root), "--truth", str(csv), "--features", "cues__face"]
    )
    assert res.exit_code == 0, res.output
    assert "plain" in res.output and "interactive" in res.output and "eff98" in res.output
    out = json.loads((ws.clusters_dir / run_id / "simulation.json").read_text())
    assert out["info"]["faces_with_truth"] == len(truth)
    assert out["plain"]["eff98"] == pytest.approx(simulate(groups, truth).eff98)
    assert out["interactive"]["actions_total"] >= 1


def test_simulate_cli_bad_column_is_one_clean_line(tmp_path):
    from click.testing import CliRunner

    from labeler.cli import cli

    ws, csv, *_ = _tiny_workspace(tmp_path)
    res = CliRunner().invoke(
        cli, ["simulate", "-w", str(ws.root), "--truth", str(csv), "--truth-column", "mask"]
    )
    assert res.exit_code != 0
    assert "no column 'mask'" in res.output and "Traceback" not in res.output


# --- on the real data ---------------------------------------------------------------------------


# Floors under what was measured on the default run (bench/EFFORT.md, "Default grouping",
# the Ward tree of issue 24, seed 0 and seeds 0-2 in bench/results/grouping.json):
# maskedfacenet plain eff98 54.4 (28.7-54.4), interactive eff98 69.0 (36.9-69.0); realmasks
# plain eff95 9.3 (9.3-9.7). The plain floors
# are issue 24's targets; the interactive floor catches regressions (an earlier bug gave
# 22.5), not the session's own swings.
MFN_PLAIN_EFF98_FLOOR = 25.0
INTERACTIVE_EFF98_FLOOR = 25.0
REALMASKS_PLAIN_EFF95_FLOOR = 6.0


def _default_run_effort(images: Path, truth_csv: Path, ws_dir: Path):
    from labeler.cluster.store import load_run
    from labeler.loop.simulate import simulate_workspace
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_dir, create=True)
    run_pipeline(images, ws, config=RunConfig(device="cpu"))
    results, info = simulate_workspace(ws, str(truth_csv))
    run = load_run(ws)
    # every face is in a group the annotator can open, none bigger than the biggest page
    assert (run.labels >= 0).all()
    assert np.bincount(run.labels).max() <= 480
    plain, inter = results["plain"], results["interactive"]
    # interactive no worse than plain at every level, as the issue measures it: the median
    # over cluster seeds (one seed's eff98 can swing by 40 % with a tiny change of features)
    medians = _median_effort_over_seeds(ws, truth_csv)
    for level in (95, 98, 99):
        assert medians["interactive"][level] >= medians["plain"][level], (level, medians)
    return plain, inter, info


def _median_effort_over_seeds(ws, truth_csv: Path, seeds: int = 5) -> dict[str, dict]:
    """Plain and interactive eff95/98/99, medians over cluster seeds 0..seeds-1 of the
    default grouping (what bench/bench_regroup.py measures)."""
    import statistics

    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.run import fit_clusters
    from labeler.cluster.types import ClusterConfig
    from labeler.loop.truth import join_truth, session_inputs
    from labeler.workspace import align_to_faces

    ids, Xc, _ = load_cluster_features(ws, "auto")
    ids = np.asarray(ids).astype(str)
    truth = join_truth(ws, str(truth_csv))
    tid = truth["face_id"].to_numpy(str)
    _, X, _ = session_inputs(ws, tid)
    got: dict[str, dict[int, list[float]]] = {"plain": {}, "interactive": {}}
    for seed in range(seeds):
        fit = fit_clusters(ids, Xc, config=ClusterConfig(seed=seed))
        g = align_to_faces(tid, ids, fit.result.labels, what="groups", fix="")
        V = align_to_faces(tid, ids, fit.artifacts.vectors, what="vectors", fix="")
        y = truth["truth"].to_numpy(str)
        for kind, r in (("plain", simulate(g, y)), ("interactive", simulate(
                g, y, strategy="interactive", features=X, split_vectors=V))):  # fmt: skip
            for level in (95, 98, 99):
                got[kind].setdefault(level, []).append(getattr(r, f"eff{level}"))
    return {k: {lv: statistics.median(v) for lv, v in d.items()} for k, d in got.items()}


@pytest.mark.slow
def test_effort_on_maskedfacenet(maskedfacenet, tmp_path):
    """The default 'labeler run' grouping and the interactive session on 1,054 faces.

    A regression in detection, alignment, cues, features, clustering or the session shows up
    here as a drop below the measured level.
    """
    plain, inter, info = _default_run_effort(
        maskedfacenet / "images", maskedfacenet / "labels.csv", tmp_path / "ws"
    )
    assert info["faces_with_truth"] >= 1054
    assert plain.eff98 >= MFN_PLAIN_EFF98_FLOOR, plain.summary()
    assert inter.eff98 >= INTERACTIVE_EFF98_FLOOR, inter.summary()


@pytest.mark.slow
def test_default_grouping_on_real_crowd_crops(realmasks, tmp_path):
    """Real crops (realmasks, 2,009 photos): plain bulk labeling of the default groups."""
    plain, inter, info = _default_run_effort(
        realmasks / "images", realmasks / "labels.csv", tmp_path / "ws"
    )
    assert info["faces_with_truth"] >= 1990
    assert plain.eff95 >= REALMASKS_PLAIN_EFF95_FLOOR, plain.summary()
    # groups that learn: the annotator regroups the unlabeled faces by what the labels
    # taught (the opened groups are impure here), and reaches 95 % with fewer actions
    from labeler.loop.simulate import simulate_workspace
    from labeler.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    off, _ = simulate_workspace(
        ws, str(realmasks / "labels.csv"), config=InteractiveConfig(regroup=None)
    )
    assert inter.kinds.get("regroup", 0) >= 1, inter.summary()
    assert inter.actions95 < off["interactive"].actions95, (
        inter.summary(), off["interactive"].summary())  # fmt: skip


def test_image_label_goes_to_the_largest_face_only(tmp_path):
    """A per-image truth row describes one face: bystanders and false detections in the
    same image are left out of the measurement unless all_faces is asked for."""
    import pandas as pd

    from labeler.loop.truth import join_truth
    from labeler.workspace import face_id_for

    ws, csv, _, _, truth = _tiny_workspace(tmp_path)
    faces = ws.faces()
    first = faces.iloc[0]
    extra = first.copy()
    extra["face_id"] = face_id_for(first["image_id"], 1)
    extra["face_index"] = 1
    extra["x1"], extra["y1"] = 0.5, 0.5  # a smaller second face in the first image
    ws.write_faces(pd.concat([faces, extra.to_frame().T], ignore_index=True))

    joined = join_truth(ws, str(csv))
    assert len(joined) == len(truth)
    assert extra["face_id"] not in set(joined["face_id"])
    assert first["face_id"] in set(joined["face_id"])

    every = join_truth(ws, str(csv), all_faces=True)
    assert len(every) == len(truth) + 1
    got = every.set_index("face_id")["truth"]
    assert got[extra["face_id"]] == got[first["face_id"]]


@pytest.mark.parametrize("strategy", ["plain", "interactive"])
def test_snapshot_holds_the_labels_after_k_actions(strategy):
    X, truth = _blobs(n_per=30, seed=2)
    groups = np.random.default_rng(3).integers(0, 5, len(truth))
    res = simulate(groups, truth, strategy=strategy, features=X, snapshot_at=4)
    snap = res.snapshot
    assert snap is not None and len(snap) == len(truth)
    assert int((snap == np.asarray(truth).astype(str)).sum()) == res.curve[3]
    assert simulate(groups, truth, strategy=strategy, features=X).snapshot is None


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("grouping", ["random", "perfect", "merged", "noise"])
def test_interactive_never_below_plain(seed, grouping):
    """At every level the session the app offers costs no more actions than plain bulk
    labeling, whatever the grouping: random, perfect, two classes merged, mostly noise."""
    X, truth = _blobs(n_per=40, seed=seed)
    rng = np.random.default_rng(seed)
    codes = np.unique(truth, return_inverse=True)[1]
    groups = {
        "random": rng.integers(0, 6, len(truth)),
        "perfect": codes,
        "merged": np.minimum(codes, 1),
        "noise": np.where(rng.random(len(truth)) < 0.7, -1, codes),
    }[grouping]
    plain = simulate(groups, truth)
    inter = simulate(groups, truth, strategy="interactive", features=X)
    for level in (95, 98, 99):
        assert getattr(inter, f"eff{level}") >= getattr(plain, f"eff{level}") - 1e-9, (
            level, plain.summary(), inter.summary())  # fmt: skip


def test_the_annotator_uses_the_apps_suggest_step(monkeypatch):
    """No second implementation: every retrain of the session is labeler.loop.suggest.suggest."""
    import labeler.loop.suggest

    calls = []
    real = labeler.loop.suggest.suggest

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(labeler.loop.suggest, "suggest", counted)
    X, truth = _blobs(seed=5)
    res = simulate(np.random.default_rng(0).integers(0, 5, len(truth)), truth,
                   strategy="interactive", features=X)  # fmt: skip
    group_actions = res.actions_total - res.kinds.get("correct", 0)
    assert len(calls) >= group_actions > 0


def test_the_annotator_splits_with_the_apps_split(monkeypatch):
    """No second implementation of *split by similarity*: the session calls
    labeler.cluster.edit.split_labels on the vectors the app splits (split_vectors)."""
    import labeler.cluster.edit

    calls = []
    real = labeler.cluster.edit.split_labels

    def counted(V, *args, **kwargs):
        calls.append(V.shape)
        return real(V, *args, **kwargs)

    monkeypatch.setattr(labeler.cluster.edit, "split_labels", counted)
    X, truth = _blobs(n_per=40, seed=1)
    groups = np.zeros(len(truth), int)  # one group holding all three states
    V = X[:, :5] + 0.0  # the run's vectors: other columns than the features
    res = simulate(groups, truth, strategy="interactive", features=X, split_vectors=V)
    assert res.kinds.get("split", 0) == len(calls) > 0
    assert all(shape[1] == 5 for shape in calls)
    with pytest.raises(ValueError, match="split_vectors"):
        simulate(groups, truth, strategy="interactive", features=X, split_vectors=V[:-1])


def test_the_session_log_explains_every_group_action():
    """Each group action is logged with its expected gain, plain's, and what it fixed; a
    deviation is only taken when its calibrated expectation beats plain's by the margin."""
    X, truth = _blobs(seed=3)
    groups = np.random.default_rng(4).integers(0, 5, len(truth))
    cfg = InteractiveConfig()
    res = simulate(groups, truth, strategy="interactive", features=X, config=cfg)
    kinds = [r["kind"] for r in res.log]
    assert kinds and set(kinds) <= {"bulk", "split", "regroup", "suggestion", "review"}
    for r in res.log:
        if r["kind"] in ("suggestion", "review"):
            assert r["expected"] > (1 + cfg.margin) * max(r["plain_expected"], 1.0) - 0.01
        assert r["fixed"] == res.curve[r["action"] - 1] - (
            res.curve[r["action"] - 2] if r["action"] > 1 else 0
        )
    assert "log" not in res.summary()
