"""The Suggest step (labeler.loop.suggest / labeler.loop.step / labeler suggest): out-of-fold
confidence, suggestion groups, suspects, and the workspace shell on real faces."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import assign_truth, shared_dataset

from labeler.cli import cli
from labeler.labels import LabelStore
from labeler.loop.suggest import (
    SuggestConfig,
    _softmax,
    design_matrix,
    make_folds,
    reliability,
    ridge_scores,
    suggest,
)


def _blobs(n_per: int = 120, sep: float = 2.2, seed: int = 0, classes: int = 3):
    """Overlapping Gaussian classes: some faces are truly ambiguous."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16)) * sep
    X = np.concatenate([c + rng.normal(size=(n_per, 16)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per)
    return X, y


def test_out_of_fold_scores_equal_a_head_refit_without_the_fold():
    """The Gram-subtraction shortcut is exact: every labeled row is scored by a head that
    never saw it (oracle: fit again on the other folds)."""
    X, y = _blobs(40, seed=1)
    A = design_matrix(X)
    rows = np.arange(0, len(y), 2)
    yc = y[rows]
    w = np.ones(len(rows))
    folds = make_folds(len(rows), 4, None, seed=0)
    _, oof = ridge_scores(A, yc, rows, w, 3, 10.0, predict=np.arange(len(y)), folds=folds)
    for f in range(4):
        te = folds == f
        ref, _ = ridge_scores(A, yc[~te], rows[~te], w[~te], 3, 10.0, predict=rows[te])
        np.testing.assert_allclose(oof[te], ref, rtol=1e-6, atol=1e-8)


def test_a_face_never_scores_its_own_label():
    """A mislabeled face far inside another class: a head fitted on it would echo its label
    back; its out-of-fold prediction is its neighbours' class."""
    X, y = _blobs(60, sep=4.0, seed=2)
    y_given = y.copy()
    y_given[5] = 1  # truly class 0
    res = suggest(X, y_given)
    assert res.pred[5] == 0
    assert res.proba[5, 1] < 0.2


def test_confidence_is_calibrated_out_of_fold_and_on_the_unlabeled_faces():
    X, y = _blobs(300, sep=1.0, seed=3)
    rng = np.random.default_rng(0)
    y_given = np.where(rng.random(len(y)) < 0.5, y, -1)
    res = suggest(X, y_given)
    lab = y_given >= 0
    _, ece_oof = reliability(res.confidence[lab], res.pred[lab] == y[lab])
    _, ece_new = reliability(res.confidence[~lab], res.pred[~lab] == y[~lab])
    assert ece_oof <= 0.05 and ece_new <= 0.06
    # the measured precision of each group is what the unlabeled faces in it really reach
    for g in res.groups.itertuples():
        m = res.group == g.group
        if m.sum() >= 40:
            assert abs((y[m] == g.value).mean() - g.precision) < 0.12, g


def test_groups_best_first_least_sure_first_and_pretick_defended():
    X, y = _blobs(200, sep=1.4, seed=4)
    y_given = np.where(np.random.default_rng(1).random(len(y)) < 0.3, y, -1)
    res = suggest(X, y_given)
    g = res.groups
    assert len(g) >= 3 and (np.diff(g["expected"].to_numpy()) <= 1e-9).all()
    assert g["size"].sum() == (y_given < 0).sum() and (res.group[y_given >= 0] == -1).all()
    members = res.group_members(0)
    assert (np.diff(res.confidence[members]) >= 0).all()
    assert (g["pretick"] == (g["lower"] >= SuggestConfig().pretick)).all()
    for row in g[g["pretick"]].itertuples():  # what is pre-ticked is right
        assert (y[res.group == row.group] == row.value).mean() >= 0.9


def test_faces_unlike_every_labeled_face_are_not_measured():
    """Two classes of two looks each; whole looks labeled, as bulk actions leave them. The
    faces of the looks nobody labeled are marked not measured (the precision measured on
    the labels says nothing about them); those of the labeled looks are measured. Labels
    spread at random leave nearly every face measured."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, 16)) * 3.0  # looks: 0, 1 of class 0; 2, 3 of class 1
    look = np.repeat(np.arange(4), 150)
    X = (centres[look] + rng.normal(size=(len(look), 16))).astype(np.float32)
    y = look // 2
    given = np.where(np.isin(look, [0, 2]) & (rng.random(len(y)) < 0.6), y, -1)
    res = suggest(X, given, cv_groups=np.where(given >= 0, look, -1))
    unl = given < 0
    seen, novel = unl & np.isin(look, [0, 2]), unl & np.isin(look, [1, 3])
    assert res.measured[seen].mean() >= 0.8 and res.measured[novel].mean() <= 0.1
    assert res.measured[given >= 0].all()
    assert (res.groups["measured"] == [res.measured[res.group == g].sum()
                                       for g in res.groups["group"]]).all()  # fmt: skip
    spread = np.where(rng.random(len(y)) < 0.3, y, -1)
    assert suggest(X, spread).measured[spread < 0].mean() >= 0.85
    off = suggest(X, given, cv_groups=np.where(given >= 0, look, -1),
                  config=SuggestConfig(unmeasured_quantile=0))  # fmt: skip
    assert off.measured.all() and (off.pred == res.pred).all()


def test_nothing_is_guessed_from_one_class_or_too_few_labels():
    X, y = _blobs(20, seed=5)
    one = np.where(y == 0, 0, -1)
    assert suggest(X, one).groups.empty and (suggest(X, one).pred == -1).all()
    few = np.full(len(y), -1)
    few[[0, 25]] = [0, 1]
    assert suggest(X, few).groups.empty
    with pytest.raises(ValueError, match="pass \\(N, D\\)"):
        suggest(X[:5], y)


def test_suspects_need_enough_labels_and_stay_a_small_share():
    """30 hand-labeled faces, all right: nothing is flagged (the old page flagged 16)."""
    X, y = _blobs(10, sep=1.0, seed=6)
    assert len(suggest(X, y).suspects) == 0
    # 600 faces with 6 flipped labels: the flips are found, at most 2 % flagged
    X, y = _blobs(200, sep=4.0, seed=7)
    flipped = np.array([3, 50, 220, 300, 450, 590])
    y_noisy = y.copy()
    y_noisy[flipped] = (y[flipped] + 1) % 3
    sus = suggest(X, y_noisy).suspects
    assert len(sus) <= 0.02 * len(y)
    assert set(flipped) <= set(sus.tolist())


def test_suspect_rule_gates_on_class_size_band_precision_and_share():
    """select_suspects on hand-made out-of-fold probabilities: each gate can drop a face."""
    from labeler.loop.suspects import select_suspects

    yc = np.array([0] * 20 + [1] * 20)
    oof = np.tile([0.97, 0.03], (40, 1))
    oof[20:] = [0.03, 0.97]
    oof[[3, 7]] = [0.02, 0.98]  # two 0-labels the evidence contradicts
    oof[11] = [0.15, 0.85]  # contradicted, but p(given) 0.15 > 1 - min_precision
    counts = np.bincount(yc)
    prec = np.full(40, 0.95)
    rows = select_suspects(yc, oof, counts=counts, band_precision=prec, share=0.1)
    assert rows.tolist() == [3, 7]  # 11 is not confident enough; most contradicted first
    assert select_suspects(yc, oof, counts=counts, band_precision=prec, share=0.02).tolist() == [3]
    low = prec.copy()
    low[3] = 0.8  # the band of face 3 was right only 80 % of the time in cross-validation
    assert select_suspects(yc, oof, counts=counts, band_precision=low, share=0.1).tolist() == [7]
    assert len(select_suspects(yc, oof, counts=counts, band_precision=prec, min_class=21)) == 0


def test_the_suggest_step_on_a_workspace_stores_the_flipped_label_as_a_suspect(tmp_path):
    """One pipeline for suspects: the Suggest step writes them (method 'suggest'), pending
    until the face is relabeled; a later run replaces them."""
    import tinyws

    from labeler.loop.step import METHOD, suggest_workspace

    t = tinyws.build(tmp_path, {"correct": 20, "no_mask": 20}, faces_per_person=2)
    wrong = t.truth.index[25]  # a no_mask face labeled correct
    tinyws.label_all(t, flip={wrong: "correct"})
    run = suggest_workspace(t.ws, feature_spec=tinyws.FEATURE_KEY)
    assert run.suspects["face_id"].tolist() == [wrong]
    row = run.suspects.iloc[0]
    assert row["given"] == "correct" and row["suggested"] == "no_mask" and row["score"] > 0.9
    store = LabelStore(t.ws.labels_db)
    stored = store.suspects("mask_state", pending=True)
    assert stored["face_id"].tolist() == [wrong] and set(stored["method"]) == {METHOD}
    store.assign([wrong], "mask_state", "no_mask", annotator="t", source="single")
    assert store.suspects("mask_state", pending=True).empty
    run = suggest_workspace(t.ws, feature_spec=tinyws.FEATURE_KEY)
    assert run.suspects.empty and store.suspects("mask_state").empty


def test_softmax_temperature_sharpens():
    S = np.array([[1.0, 0.0]])
    assert _softmax(S, 0.1)[0, 0] > _softmax(S, 1.0)[0, 0] > 0.5


# --- the workspace shell on real faces (mfr2: 163 photos, ~20 s to build) ---------------------


@pytest.fixture(scope="module")
def mfr2_template(tmp_path_factory):
    from labeler.loop.truth import join_truth
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    data = shared_dataset("mfr2")
    ws = Workspace.open(tmp_path_factory.mktemp("mfr2") / "ws", create=True)
    run_pipeline(data / "images", ws, config=RunConfig(device="cpu"))
    truth = join_truth(ws, str(data / "labels.csv"))
    store = LabelStore(ws.labels_db)
    store.add_field("state", ["masked", "no_mask"])
    return ws, truth


@pytest.fixture
def mfr2_ws(mfr2_template, tmp_path):
    """A copy of the MFR2 workspace per test: the tests label it (one 40 faces, one all of
    them), and sharing one store made each test's labels the next one's input (in the
    other order the 40-label test found 163 labels)."""
    import shutil

    from labeler.workspace import Workspace

    ws, truth = mfr2_template
    return Workspace.open(shutil.copytree(ws.root, tmp_path / "ws")), truth


def _accuracy(store: LabelStore, truth: pd.DataFrame) -> float:
    cur = store.current_values("state")
    return float(
        np.mean([cur.get(f) == t for f, t in zip(truth.face_id, truth.truth, strict=True)])
    )


def test_suggest_cli_suggests_in_groups_and_preticked_accepts_never_hurt(mfr2_ws):
    ws, truth = mfr2_ws
    store = LabelStore(ws.labels_db)
    seen = truth.sample(40, random_state=0)
    assign_truth(store, seen, "state")
    labels_before = store.current("state")
    res = CliRunner().invoke(cli, ["suggest", "-w", str(ws.root), "--field", "state"])
    assert res.exit_code == 0, res.output
    assert "right in CV" in res.output and "suggestions for state" in res.output
    # suggestions only, never labels
    assert store.current("state").equals(labels_before)
    from labeler.loop.step import load_run

    meta, faces = load_run(ws, "state")
    assert meta["n_labeled"] == 40 and len(faces) == len(ws.faces()) - 40
    before = _accuracy(store, truth)
    for g in meta["groups"]:
        if g["pretick"]:
            ids = faces.loc[faces["group"] == g["group"], "face_id"]
            store.assign(ids, "state", g["value"], annotator="t", source="suggestion")
    assert _accuracy(store, truth) >= before


def test_all_true_labels_give_few_suspects_and_nothing_to_accept(mfr2_ws):
    from labeler.loop.step import suggest_workspace

    ws, truth = mfr2_ws
    store = LabelStore(ws.labels_db)
    for value, part in truth.groupby("truth"):
        store.assign(part.face_id, "state", value, annotator="t", source="selection")
    run = suggest_workspace(ws, field="state")
    labeled = int(store.current("state")["face_id"].isin(truth.face_id).sum())
    assert len(run.suspects) <= 0.02 * labeled
    # suspects are never pre-ticked; the truth-labeled faces have no pending suggestion
    pending = store.suggestions("state", pending=True)
    assert not pending["face_id"].isin(truth.face_id).any()
    assert _accuracy(store, truth) == 1.0


@pytest.mark.parametrize("name", ["suggest", "propagate"])  # propagate: the alias
def test_suggest_without_labels_is_one_clean_line(tmp_path, name):
    from labeler.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws", create=True)
    res = CliRunner().invoke(cli, [name, "-w", str(ws.root)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "no faces yet" in res.output


def test_background_suggest_on_a_workspace_without_features_logs_one_line(tmp_path, caplog):
    """The app starts Suggest on its own after a few labels; on a workspace whose faces were
    never embedded that is a step to run first (one line in the log and on the page), not a
    bug with a traceback."""
    import tinyws

    from labeler.loop import step
    from labeler.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws", create=True)
    ids = [f"{i:05d}_0" for i in range(6)]
    ws.write_faces(tinyws.stub_faces(ids))
    LabelStore(ws.labels_db).assign(
        ids[:4], "mask_state", "no_mask", annotator="t", source="selection"
    )
    with caplog.at_level("WARNING", logger="labeler.loop.step"):
        step.start_background(ws, "mask_state").join(timeout=60)
    status = step.read_status(ws, "mask_state")
    assert status["state"] == "error" and "\n" not in status["message"]
    assert status["pid"] != os.getpid()  # a child process: the app's GIL stays free
    assert "labeler embed" in status["message"] or "labeler run" in status["message"], status
    (rec,) = [r for r in caplog.records if r.name == "labeler.loop.step"]
    assert rec.levelname == "WARNING" and rec.exc_info is None
    assert status["message"].split(": ", 1)[1] in rec.getMessage()


def test_trained_head_confidence_is_tempered_by_its_out_of_fold_errors(tmp_path):
    """A logistic head on 300 noisy dims is ~100 % sure of its own training faces while
    cross-validation is much weaker; the temperature fitted out-of-fold brings it down."""
    from labeler.train.head import calibrate, cross_val_proba, fit_head, load_head, save_head

    rng = np.random.default_rng(0)
    y = np.repeat(["masked", "no_mask"], 60)
    X = rng.normal(size=(120, 300))
    X[:, 0] += np.where(y == "masked", 1.0, -1.0)  # a weak real signal
    oof = cross_val_proba(X, y, folds=5)
    head = fit_head(X, y)
    assert head.predict_proba(X).max(1).mean() > 0.97  # sure of its training faces
    tempered, summary = calibrate(head, oof, y)
    assert summary["temperature"] > 1.5
    assert summary["oof_ece_after"] < summary["oof_ece_before"]
    assert tempered.predict_proba(X).max(1).mean() < 0.9
    save_head(tempered, tmp_path / "h.npz")
    again = load_head(tmp_path / "h.npz")
    np.testing.assert_allclose(again.predict_proba(X), tempered.predict_proba(X))


@pytest.mark.slow
def test_all_true_labels_on_real_crowd_crops_flag_at_most_two_percent(tmp_path):
    """realmasks (real crops, noisy labels): 500 photos built by 'labeler run', every true
    label entered; the Suggest step flags <= 2 % and pre-ticks nothing that could be wrong."""
    import shutil

    from labeler.loop.step import suggest_workspace
    from labeler.loop.truth import join_truth
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    data = shared_dataset("realmasks")
    table = pd.read_csv(data / "labels.csv").sample(500, random_state=0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in table["file"]:
        shutil.copyfile(data / "images" / name, photos / name)
    table.to_csv(tmp_path / "labels.csv", index=False)
    ws = Workspace.open(tmp_path / "ws", create=True)
    run_pipeline(photos, ws, config=RunConfig(device="cpu"))
    truth = join_truth(ws, str(tmp_path / "labels.csv"))
    store = LabelStore(ws.labels_db)
    store.add_field("state", sorted(truth["truth"].unique()))
    for value, part in truth.groupby("truth"):
        store.assign(part.face_id, "state", value, annotator="t", source="selection")
    run = suggest_workspace(ws, field="state")
    assert len(run.suspects) <= 0.02 * len(truth)
    before = _accuracy(store, truth)
    for g in run.groups[run.groups["pretick"]].itertuples():  # faces without a truth row only
        ids = run.faces.loc[run.faces["group"] == g.group, "face_id"]
        assert not ids.isin(truth.face_id).any()
        store.assign(ids, "state", g.value, annotator="t", source="suggestion")
    assert _accuracy(store, truth) == before == 1.0
