"""Label propagation: spreading on the kNN graph, a probe, calibrated confidence."""

from __future__ import annotations

import numpy as np
import pytest
import tinyws
from click.testing import CliRunner

from labeler.cli import cli
from labeler.labels import LabelStore
from labeler.propagate import knn_graph, label_spreading, propagate_labels


def two_moons(n: int = 300, seed: int = 0):
    from sklearn.datasets import make_moons

    X, y = make_moons(n, noise=0.06, random_state=seed)
    return X.astype(np.float32), np.where(y == 0, "correct", "no_mask")


def test_spreading_follows_the_manifold_where_a_linear_probe_cannot():
    X, y = two_moons()
    labels = np.full(len(y), "", dtype=object)
    rng = np.random.default_rng(0)
    for c in ("correct", "no_mask"):
        labels[rng.choice(np.flatnonzero(y == c), 4, replace=False)] = c
    un = labels == ""
    spread = propagate_labels(X, labels, method="spreading", k=10)
    probe = propagate_labels(X, labels, method="probe")
    acc_s = (spread.value[un] == y[un]).mean()
    acc_p = (probe.value[un] == y[un]).mean()
    assert acc_s > 0.97
    assert acc_s > acc_p


def test_calibrated_confidence_tracks_accuracy():
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 3, n)
    X = np.eye(3)[y] * 1.5 + rng.normal(size=(n, 3))  # overlapping classes
    names = np.array(["a", "b", "c"])[y]
    labels = names.astype(object).copy()
    hidden = rng.random(n) < 0.5
    labels[hidden] = ""
    res = propagate_labels(X, labels, method="both")
    conf, ok = res.confidence[hidden], res.value[hidden] == names[hidden]
    # expected calibration error over 5 bins stays small, and confidence ranks correctness
    bins = np.clip((conf * 5).astype(int), 0, 4)
    ece = sum(
        abs(conf[bins == b].mean() - ok[bins == b].mean()) * (bins == b).mean()
        for b in range(5)
        if (bins == b).any()
    )
    assert ece < 0.1
    assert ok[conf > np.median(conf)].mean() > ok[conf <= np.median(conf)].mean()


def test_graph_is_symmetric_and_unreachable_rows_are_uniform():
    X = np.array([[0, 0], [0, 0.1], [5, 5], [5, 5.1]], np.float32)
    W = knn_graph(X, k=1)
    assert (abs(W - W.T) > 1e-9).nnz == 0
    F = label_spreading(W, np.array([0, -1, -1, -1]), 2)
    assert F[1, 0] > 0.99 and np.allclose(F[2], 0.5)


def test_needs_two_classes():
    with pytest.raises(ValueError, match="2 classes"):
        propagate_labels(np.zeros((4, 2)), ["a", "", "", ""])
    with pytest.raises(ValueError, match="--method"):
        propagate_labels(np.zeros((4, 2)), ["a", "b", "", ""], method="magic")


def test_propagate_cli_writes_suggestions_not_labels(tmp_path):
    t = tinyws.build(tmp_path, {"correct": 20, "no_mask": 20, "on_chin": 10})
    store = LabelStore(t.ws.labels_db)
    for c in ("correct", "no_mask", "on_chin"):
        store.assign(
            t.truth[t.truth == c].index[:3], "mask_state", c, annotator="ann", source="single"
        )
    before = store.current("mask_state")
    res = CliRunner().invoke(
        cli,
        ["propagate", "-w", str(t.ws.root), "--features", tinyws.FEATURE_KEY, "--method", "both"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    sug = store.suggestions("mask_state")
    assert len(sug) == 50 - 9 and set(sug["method"]) == {"propagate:both"}
    assert not sug["face_id"].isin(before["face_id"]).any()
    assert (sug["value"] == sug["face_id"].map(t.truth.to_dict())).mean() > 0.95
    assert sug["confidence"].between(0, 1).all()
    after = store.current("mask_state")  # human labels untouched
    assert after[["face_id", "value"]].equals(before[["face_id", "value"]])
