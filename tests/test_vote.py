"""A trained model's vote in the Suggest step (issue #32): the core on hand-made features
with a known answer, and the workspace shell on real faces (mfr2, built by 'labeler run' in
the test, a head trained by 'labeler train'): the run keeps its out-of-fold probabilities,
the Suggest step reads them and caches the saved model's for the other faces, resumably."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import assign_truth, shared_dataset

from labeler.errors import InputError
from labeler.loop.suggest import SuggestConfig, suggest
from labeler.loop.vote import ModelVote


def _weak_features(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 states whose features barely show them, and a model that knows them 90 % of the
    time (its probabilities held out, as a run's out-of-fold ones are). Returns
    ``(X, state, vote)``."""
    rng = np.random.default_rng(seed)
    state = rng.integers(0, 3, n)
    X = np.concatenate(
        [0.5 * np.eye(3)[state] + rng.normal(0, 1, (n, 3)), rng.normal(0, 1, (n, 13))], axis=1
    )
    guess = np.where(rng.random(n) < 0.9, state, rng.integers(0, 3, n))
    vote = np.full((n, 3), 0.05)
    vote[np.arange(n), guess] = 0.9
    return X, state, vote


def test_suggest_mixes_in_a_trained_models_vote():
    X, state, vote = _weak_features()
    y = np.where(np.arange(len(state)) < 150, state, -1)
    unl = y < 0
    plain = suggest(X, y)
    voted = suggest(X, y, vote=vote)
    acc_plain = (plain.pred[unl] == state[unl]).mean()
    acc_voted = (voted.pred[unl] == state[unl]).mean()
    assert acc_plain < 0.6 and acc_voted > 0.85, (acc_plain, acc_voted)
    # the precision shown is measured on the mixture's out-of-fold rows: it holds
    shown = voted.precision[unl].mean()
    assert abs(shown - acc_voted) < 0.08, (shown, acc_voted)
    assert voted.vote_weight >= 0.5  # measured on the out-of-fold rows: the vote knows more
    # a vote that knows nothing gets (almost) no say where the features know the states
    Xs = np.concatenate([3.0 * np.eye(3)[state] + np.random.default_rng(1).normal(0, 1, (600, 3)),
                         X[:, 3:]], axis=1)  # fmt: skip
    noise = np.random.default_rng(2).dirichlet(np.ones(3), len(state))
    sure, guessed = suggest(Xs, y), suggest(Xs, y, vote=noise)
    assert guessed.vote_weight <= 0.2, guessed.vote_weight
    assert (guessed.pred[unl] == state[unl]).mean() >= (sure.pred[unl] == state[unl]).mean() - 0.02
    # weight 0 is the Suggest step alone
    alone = suggest(X, y, vote=vote, config=SuggestConfig(vote_weight=0.0))
    assert np.array_equal(alone.pred, plain.pred)
    np.testing.assert_allclose(alone.proba, plain.proba, atol=1e-6)
    with pytest.raises(ValueError, match="vote has shape"):
        suggest(X, y, vote=vote[:10])


def test_a_vote_is_aligned_to_the_suggest_steps_classes():
    v = ModelVote(
        "r",
        ("a", "b", "c"),
        np.array(["f0", "f1"]),
        np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]),
        np.array([True, False]),
    )
    got = v.aligned(["c", "a", "d"])
    np.testing.assert_allclose(got[0], [0.5 / 0.7, 0.2 / 0.7, 0.0])
    np.testing.assert_allclose(got[1], [1.0, 0.0, 0.0])
    # a face the run only gives classes the labels no longer have: equal shares
    np.testing.assert_allclose(v.aligned(["a", "b"])[1], [0.5, 0.5])


@pytest.fixture(scope="module")
def mfr2_trained(tmp_path_factory):
    """mfr2 through 'labeler run', 60 % of its faces labeled, a head trained on them."""
    from click.testing import CliRunner

    from labeler.cli import cli
    from labeler.labels import LabelStore
    from labeler.loop.truth import join_truth
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    data = shared_dataset("mfr2")
    ws = Workspace.open(tmp_path_factory.mktemp("mfr2v") / "ws", create=True)
    run_pipeline(data / "images", ws, config=RunConfig(device="cpu"))
    store = LabelStore(ws.labels_db)
    store.add_field("state", ["masked", "no_mask"])
    truth = join_truth(ws, str(data / "labels.csv"))
    labeled = truth.sample(frac=0.6, random_state=0)
    assign_truth(store, labeled, "state", "a")
    res = CliRunner().invoke(
        cli,
        ["train", "-w", str(ws.root), "--field", "state", "--mode", "head", "--model", "h",
         "--no-label-errors", "--persons", "image", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return ws, truth, labeled


@pytest.fixture
def trained(tmp_path, mfr2_trained):
    import shutil

    from labeler.workspace import Workspace

    template, truth, labeled = mfr2_trained
    shutil.copytree(template.root, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws"), truth, labeled


def test_a_run_keeps_its_out_of_fold_probabilities(trained):
    from labeler.loop.vote import OOF_FILE
    from labeler.workspace import read_json

    ws, truth, labeled = trained
    oof = pd.read_parquet(ws.models_dir / "h" / OOF_FILE)
    assert set(oof["face_id"]) == set(labeled["face_id"])
    assert list(oof.columns) == ["face_id", "masked", "no_mask"]
    np.testing.assert_allclose(oof[["masked", "no_mask"]].sum(axis=1), 1.0, atol=1e-5)
    # the report was made from these very predictions
    tr = labeled.set_index("face_id").loc[oof["face_id"], "truth"].to_numpy()
    pred = np.where(oof["no_mask"] > oof["masked"], "no_mask", "masked")
    rep = read_json(ws.models_dir / "h" / "config.json")["report"]
    assert (pred == tr).mean() == pytest.approx(rep["accuracy"], abs=1e-9)


def test_suggest_with_the_trained_model(trained, monkeypatch):
    from click.testing import CliRunner

    from labeler.cli import cli
    from labeler.loop import vote as vote_mod
    from labeler.loop.step import load_meta
    from labeler.train.runs import load_model

    ws, truth, labeled = trained
    ids = ws.faces()["face_id"].to_numpy().astype(str)
    res = CliRunner().invoke(
        cli, ["suggest", "-w", str(ws.root), "--field", "state", "--model", "current"]
    )
    assert res.exit_code == 0, res.output
    assert "with the vote of h" in res.output
    assert load_meta(ws, "state")["model"] == "h"
    parts = sorted((ws.root / "cache").glob("vote-h-*/part-*.parquet"))
    scored = pd.concat([pd.read_parquet(p) for p in parts])
    lab = set(labeled["face_id"])
    assert set(scored["face_id"]) == {f for f in ids if f not in lab}  # the others: cached

    # the saved model's probabilities for faces it never saw, its out-of-fold ones for the rest
    v = vote_mod.model_vote(ws, ids, field="state")
    assert v.run_id == "h" and v.trained_on.sum() == len(lab)
    model = load_model(ws, "h", field="state")
    new = ~v.trained_on
    np.testing.assert_allclose(v.proba[new], vote_mod.model_proba(model, ws, ids[new]), atol=1e-5)
    right = (np.asarray(model.classes)[v.proba.argmax(1)] ==
             truth.set_index("face_id")["truth"].reindex(ids).to_numpy())  # fmt: skip
    assert right[new].mean() > 0.9  # masked against unmasked: the head knows it

    # an interrupted first vote resumes: the parts written stay, only the rest is scored
    for p in parts:
        p.unlink()
    calls: list[int] = []
    real = vote_mod.model_proba

    def dies_on_the_third(model, ws, face_ids, head=None):
        calls.append(len(face_ids))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, ws, face_ids, head)

    monkeypatch.setattr(vote_mod, "model_proba", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        vote_mod.model_vote(ws, ids, field="state", chunk=8)
    assert len(list((ws.root / "cache").glob("vote-h-*/part-*.parquet"))) == 2
    calls.clear()
    monkeypatch.setattr(vote_mod, "model_proba", real)
    counted: list[int] = []
    monkeypatch.setattr(
        vote_mod, "model_proba", lambda m, w, f, h=None: counted.append(len(f)) or real(m, w, f, h)
    )
    again = vote_mod.model_vote(ws, ids, field="state", chunk=8)
    assert sum(counted) == int(new.sum()) - 16  # two parts of 8 were kept
    np.testing.assert_allclose(again.proba, v.proba, atol=1e-5)
    counted.clear()
    vote_mod.model_vote(ws, ids, field="state", chunk=8)
    assert counted == []  # all cached


def test_a_vote_says_what_is_wrong(trained):
    from labeler.loop.step import suggest_workspace
    from labeler.loop.vote import OOF_FILE, model_vote

    ws, _, _ = trained
    with pytest.raises(InputError, match="run h was trained for 'state', not 'mask_state'"):
        model_vote(ws, ws.faces()["face_id"], field="mask_state", run="h")
    (ws.models_dir / "h" / OOF_FILE).unlink()
    with pytest.raises(InputError, match=r"has no oof.parquet .* train again: 'labeler train"):
        suggest_workspace(ws, field="state", model="current", write=False)


def test_the_review_page_turns_the_vote_on_for_every_annotator(trained, monkeypatch):
    """No toggle without a run that can vote; with one, annotator A turns it on, and the
    Suggest run annotator B then starts takes the vote; the status line says whose and how
    much. Off again: the next run is the Suggest step's alone."""
    import time
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from labeler.loop import step
    from labeler.loop.vote import OOF_FILE
    from labeler.ui.state import ENV_ANNOTATOR, ENV_WORKSPACE, K
    from labeler.ui.suggest_panel import SK

    app = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
    ws, _, _ = trained
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))

    def review(who: str) -> AppTest:
        monkeypatch.setenv(ENV_ANNOTATOR, who)
        at = AppTest.from_file(app, default_timeout=90)
        at.run()
        at.switch_page("views/review.py").run()
        at.selectbox(key=K.review_field).set_value("state").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    def done(after: float = 0.0) -> dict:
        for _ in range(600):
            status = step.read_status(ws, "state")
            if status["state"] in ("done", "error") and status.get("started", 0) > after:
                return status
            time.sleep(0.2)
        raise TimeoutError(status)

    oof = ws.models_dir / "h" / OOF_FILE
    oof.rename(oof.with_suffix(".bak"))
    assert not [t for t in review("a").toggle if t.key == SK.vote]  # nothing that can vote
    oof.with_suffix(".bak").rename(oof)

    a = review("a")
    first = done()  # the page started a run by itself (the labels had none yet): no vote
    assert step.load_meta(ws, "state")["model"] is None
    toggle = a.toggle(key=SK.vote)
    assert toggle.value is False and "Trained model votes (h, macro-F1" in toggle.label
    toggle.set_value(True).run()
    assert step.vote_setting(ws, "state") == "current"
    b = review("b")
    assert b.toggle(key=SK.vote).value is True  # one setting for the workspace
    b.button(key=SK.suggest_btn).click().run()
    assert done(after=first["started"])["state"] == "done"
    meta = step.load_meta(ws, "state")
    assert meta["model"] == "h" and 0 <= meta["vote_weight"] <= 0.9  # its share, measured
    b.run()
    assert any("the vote of h at" in c.value for c in b.caption)

    a.run()
    a.toggle(key=SK.vote).set_value(False).run()
    assert step.vote_setting(ws, "state") is None
    step.start_background(ws, "state", model=step.vote_setting(ws, "state")).join()
    assert step.load_meta(ws, "state")["model"] is None
