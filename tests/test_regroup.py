"""Groups that learn: the unlabeled faces regrouped in the space the labels taught.

The core on hand-made looks with a known answer, the simulated annotator that uses it only
where the groups it opened were impure, the cluster edit it saves (labeled faces keep their
groups, Revert undoes it) and the workspace shell on real faces (mfr2, built by
'labeler run' in the test)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assign_truth, shared_dataset

from labeler.errors import InputError
from labeler.loop.regroup import RegroupConfig, learned_space, regroup
from labeler.loop.simulate import InteractiveConfig, simulate


def _scenes(n: int = 480, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Faces of 3 states shot in 4 scenes: the scene dominates the looks (what the first
    grouping sees), the state is a weaker direction of the features. Returns
    ``(X (n, 12), V (n, 8) the looks, state (n,), scene (n,))``."""
    rng = np.random.default_rng(seed)
    state = rng.integers(0, 3, n)
    scene = rng.integers(0, 4, n)
    looks = 4.0 * np.eye(8)[scene * 2] + rng.normal(0, 0.6, (n, 8))
    signal = 1.5 * np.eye(4)[state] + rng.normal(0, 0.5, (n, 4))
    return np.concatenate([looks, signal], axis=1), looks, state, scene


def _purity(groups: np.ndarray, truth: np.ndarray) -> float:
    right = sum(np.bincount(truth[groups == g]).max() for g in np.unique(groups))
    return right / len(groups)


def test_regroup_makes_the_unlabeled_faces_groups_purer():
    X, V, state, scene = _scenes()
    y = np.where(scene < 2, state, -1)  # two scenes labeled, two not
    unl = y < 0
    out = regroup(X, y, V, config=RegroupConfig(group_size=40))
    assert (out.group[~unl] == -1).all() and (out.group[unl] >= 0).all()
    assert out.size.sum() == unl.sum() and out.size.tolist() == sorted(out.size, reverse=True)
    assert out.n_labels == int((~unl).sum())
    before = _purity(scene[unl], state[unl])  # the looks' groups: a scene each
    after = _purity(out.group[unl], state[unl])
    assert before < 0.5 and after > 0.9, (before, after)
    # each group names the state most of its faces are predicted: on these looks, the
    # state of nearly every face
    assert ((out.share >= 1 / 3) & (out.share <= 1.0)).all()
    assert (out.value[out.group[unl]] == state[unl]).mean() > 0.85
    # weight 0: by looks alone, as impure as before
    looks_only = regroup(X, y, V, config=RegroupConfig(group_size=40, weight=0.0))
    assert _purity(looks_only.group[unl], state[unl]) < 0.6


def test_regroup_says_what_it_needs():
    X, V, state, _ = _scenes(n=60)
    with pytest.raises(InputError, match="two at least"):
        regroup(X, np.where(state == 0, 0, -1), V)
    with pytest.raises(InputError, match="nothing to regroup"):
        regroup(X, state, V)
    with pytest.raises(ValueError, match="one row per face"):
        regroup(X[:-1], state, V)
    Z = learned_space(np.eye(3)[state], V, 3.0)
    assert Z.shape == (60, 3 + V.shape[1])
    assert np.allclose(np.linalg.norm(Z[:, 3:], axis=1), 1.0)


def test_the_annotator_regroups_only_where_the_groups_were_impure():
    X, V, state, scene = _scenes(n=600, seed=1)
    truth = np.array(["a", "b", "c"])[state]
    # the first grouping follows the scenes: every group mixes the three states
    impure = scene * 3 + np.random.default_rng(0).integers(0, 3, len(scene))
    on = simulate(impure, truth, strategy="interactive", features=X, split_vectors=V)
    off = simulate(impure, truth, strategy="interactive", features=X, split_vectors=V,
                   config=InteractiveConfig(regroup=None))  # fmt: skip
    assert on.kinds.get("regroup", 0) >= 1 and "regroup" not in off.kinds
    # on Gaussian looks the Suggest step's groups already carry what the head knows, so
    # the regroup costs about its own click here (on real photos it pays: the realmasks
    # test in test_simulate.py and bench/results/regroup.md)
    assert on.actions95 <= off.actions95 + 3, (on.summary(), off.summary())
    assert [r["kind"] for r in on.log].count("regroup") == on.kinds["regroup"]
    # groups that were pure: nothing to mend, the annotator keeps them
    pure = simulate(state, truth, strategy="interactive", features=X, split_vectors=V)
    assert "regroup" not in pure.kinds


@pytest.fixture(scope="module")
def mfr2_ws(tmp_path_factory):
    from labeler.labels import LabelStore
    from labeler.loop.truth import join_truth
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    data = shared_dataset("mfr2")
    ws = Workspace.open(tmp_path_factory.mktemp("mfr2") / "ws", create=True)
    run_pipeline(data / "images", ws, config=RunConfig(device="cpu"))
    LabelStore(ws.labels_db).add_field("state", ["masked", "no_mask"])
    return ws, join_truth(ws, str(data / "labels.csv"))


@pytest.fixture
def ws(tmp_path, mfr2_ws):
    import shutil

    from labeler.workspace import Workspace

    template, truth = mfr2_ws
    shutil.copytree(template.root, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws"), truth


def test_regroup_faces_is_a_revertible_edit(ws):
    from labeler.cluster import edit
    from labeler.cluster.store import load_run

    ws, _ = ws
    run = load_run(ws)
    ids = np.asarray(run.face_ids).astype(str)
    moved = ids[::2]
    new = edit.regroup_faces(ws, moved, np.arange(len(moved)) % 2, edit={"field": "f"})
    assert new.params["edit"]["op"] == "regroup" and new.params["parent"] == run.params["run_id"]
    top = int(run.labels.max())
    got = dict(zip(np.asarray(new.face_ids).astype(str), new.labels, strict=True))
    assert sorted({int(got[f]) for f in moved}) == [top + 1, top + 2]
    old = dict(zip(ids, run.labels, strict=True))
    assert all(got[f] == old[f] for f in ids[1::2])
    assert load_run(ws).params["run_id"] == new.params["run_id"]
    assert edit.revert(ws) == run.params["run_id"]
    with pytest.raises(InputError, match="not in run"):
        edit.regroup_faces(ws, ["nope_0"], [0])


def test_regroup_workspace_on_real_faces(ws):
    """mfr2 (real faces, masked and unmasked): label most faces, regroup the rest."""
    from click.testing import CliRunner

    from labeler.cli import cli
    from labeler.cluster import edit
    from labeler.cluster.store import load_run
    from labeler.labels import LabelStore
    from labeler.loop.regroup import regroup_workspace

    ws, truth = ws
    store = LabelStore(ws.labels_db)
    few = truth.sample(10, random_state=0)
    assign_truth(store, few, "state", "a")
    with pytest.raises(InputError, match="needs 100"):
        regroup_workspace(ws, "state")
    res = CliRunner().invoke(cli, ["regroup", "-w", str(ws.root), "--field", "state"])
    assert res.exit_code == 1 and "needs 100: label a few more groups" in res.output
    labeled = truth.sample(frac=0.6, random_state=1)
    assign_truth(store, labeled, "state", "a")
    before = load_run(ws)
    events = store.version()
    new, out, classes = regroup_workspace(ws, "state", config=RegroupConfig(min_labels=50))
    assert store.version() == events  # no label was written
    assert set(classes) == {"masked", "no_mask"}
    ids = np.asarray(new.face_ids).astype(str)
    lab = set(store.current("state").dropna(subset=["value"])["face_id"])
    old = dict(zip(np.asarray(before.face_ids).astype(str), before.labels, strict=True))
    for f, g in zip(ids, new.labels, strict=True):
        if f in lab:
            assert g == old[f]  # labeled faces keep their groups
        else:
            assert g > before.labels.max()  # every unlabeled face is in a new group
    unl = np.array([f not in lab for f in ids])
    # on these faces the learned space puts masked and unmasked faces apart
    tr = truth.set_index("face_id")["truth"]
    new_groups = new.labels[unl]
    states = tr.reindex(ids[unl]).to_numpy()
    known = ~tr.reindex(ids[unl]).isna().to_numpy()
    codes = np.unique(states[known], return_inverse=True)[1]
    assert _purity(new_groups[known], codes) >= 0.95
    assert out.size.sum() == unl.sum()
    assert edit.revert(ws) == before.params["run_id"]

    # the same from the command line
    extra = truth[~truth.face_id.isin(lab)].head(5)
    assign_truth(store, extra, "state", "a")
    res = CliRunner().invoke(cli, ["regroup", "-w", str(ws.root), "--field", "state"])
    assert res.exit_code == 0, res.output
    assert f"regrouped {int(unl.sum()) - 5} unlabeled faces" in res.output
    assert load_run(ws).params["parent"] == before.params["run_id"]


def test_clusters_page_regroups_in_one_click_with_a_second_annotator(ws, monkeypatch):
    """The Clusters page offers the regroup with what it will change, disabled (and why)
    before 100 labels; the click regroups what is unlabeled *when it is pressed*: faces a
    second annotator labeled after the page was drawn keep their groups. Revert goes back."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from labeler.cluster.store import load_run
    from labeler.labels import LabelStore
    from labeler.ui.state import ENV_ANNOTATOR, ENV_WORKSPACE, K

    ws, truth = ws
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    monkeypatch.setenv(ENV_ANNOTATOR, "ann")
    app = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
    store = LabelStore(ws.labels_db)
    at = AppTest.from_file(app, default_timeout=120)
    at.run()
    at.switch_page("views/clusters.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key=K.clusters_field).set_value("state").run()
    assert at.button(key=K.regroup_btn).disabled
    assert any("Not yet" in m.value and "100 labels" in m.value for m in at.markdown)

    first = truth.sample(110, random_state=2)
    assign_truth(store, first, "state", "ann")
    at.run()
    btn = at.button(key=K.regroup_btn)
    n_faces = len(load_run(ws).face_ids)  # the truth rows and 3 bystanders without one
    assert not btn.disabled and f"Regroup {n_faces - 110:,} unlabeled" in btn.label
    # annotator B labels five more faces after A's page was drawn
    rest = truth[~truth.face_id.isin(first.face_id)]
    late = rest.head(5)
    assign_truth(store, late, "state", "bee")
    before = load_run(ws)
    events, labels = store.version()[0], store.current("state")
    btn.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert store.version()[0] == events  # the regroup wrote no label
    assert store.current("state").equals(labels)
    new = load_run(ws)
    assert new.params["edit"]["op"] == "regroup" and new.params["edit"]["field"] == "state"
    old = dict(zip(np.asarray(before.face_ids).astype(str), before.labels, strict=True))
    got = dict(zip(np.asarray(new.face_ids).astype(str), new.labels, strict=True))
    assert all(got[f] == old[f] for f in late.face_id)  # B's faces keep their groups
    done = set(first.face_id) | set(late.face_id)
    assert all((got[f] > before.labels.max()) == (f not in done) for f in got)
    assert new.params["edit"]["n_faces"] == n_faces - 115
    assert any("Regrouped" in s.value and "Revert goes back" in s.value for s in at.success)
    at.button(key=K.regroup_revert_btn).click().run()
    assert load_run(ws).params["run_id"] == before.params["run_id"]
