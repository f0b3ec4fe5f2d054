"""Splits: stratified by class, grouped by person, reproducible; person grouping sources."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeler.export.persons import (
    combine_groups,
    persons_from_csv,
    persons_from_embeddings,
    persons_from_pattern,
)
from labeler.export.splits import assign_splits, leaking_groups, parse_ratios


def test_parse_ratios():
    assert parse_ratios("8:1:1") == pytest.approx((0.8, 0.1, 0.1))
    assert parse_ratios("0.7,0.3") == pytest.approx((0.7, 0.3))
    with pytest.raises(ValueError, match="8:1:1"):
        parse_ratios("a:b")
    with pytest.raises(ValueError):
        parse_ratios("1:1:1:1")


def test_balanced_set_hits_ratios_within_two_points():
    labels = np.repeat(["correct", "nose_exposed", "chin_exposed", "no_mask"], 250)
    splits = assign_splits(labels, ratios=(0.8, 0.1, 0.1), seed=3)
    df = pd.DataFrame({"label": labels, "split": splits})
    frac = df.groupby("label")["split"].value_counts(normalize=True).unstack()
    assert np.abs(frac["train"] - 0.8).max() <= 0.02
    assert np.abs(frac["val"] - 0.1).max() <= 0.02
    assert np.abs(frac["test"] - 0.1).max() <= 0.02


def test_groups_of_several_faces_keep_ratios_and_never_leak():
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for p in range(300):  # 300 persons, 1-6 faces each, one state per person
        k = int(rng.integers(1, 7))
        labels += [["correct", "no_mask", "on_chin"][p % 3]] * k
        groups += [f"p{p}"] * k
    splits = assign_splits(labels, groups, ratios=(0.7, 0.15, 0.15), seed=1)
    assert leaking_groups(splits, groups) == []
    df = pd.DataFrame({"label": labels, "split": splits})
    frac = df.groupby("label")["split"].value_counts(normalize=True).unstack()
    assert np.abs(frac["train"] - 0.7).max() <= 0.05


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=1, max_size=200),
    st.integers(0, 5),
)
def test_no_person_in_two_splits_property(rows, seed):
    labels = [f"c{c}" for c, _ in rows]
    groups = [f"g{g}" for _, g in rows]
    splits = assign_splits(labels, groups, ratios=(0.8, 0.1, 0.1), seed=seed)
    assert len(splits) == len(rows)
    assert set(splits) <= {"train", "val", "test"}
    assert leaking_groups(splits, groups) == []
    assert (assign_splits(labels, groups, ratios=(0.8, 0.1, 0.1), seed=seed) == splits).all()


def test_seed_changes_assignment_but_not_counts():
    labels = np.repeat(["a", "b"], 100)
    s0 = assign_splits(labels, seed=0)
    s1 = assign_splits(labels, seed=1)
    assert (s0 != s1).any()
    assert sorted(s0) == sorted(s1)


def test_two_ratios_give_train_test_and_zero_ratio_gets_nothing():
    labels = ["a"] * 20
    assert set(assign_splits(labels, ratios=(0.5, 0.5))) == {"train", "test"}
    assert "val" not in set(assign_splits(labels, ratios=(0.9, 0.0, 0.1)))


def test_persons_from_pattern_and_unmatched():
    paths = ["alice/1.jpg", "alice/2.jpg", "bob/1.jpg", "loose.jpg"]
    p = persons_from_pattern(paths, r"^([^/]+)/")
    assert p[0] == p[1] != p[2]
    assert p[3] == "path:loose.jpg"
    with pytest.raises(ValueError, match="not a valid regex"):
        persons_from_pattern(paths, "(")


def test_persons_from_csv_by_face_id_and_path(tmp_path):
    csv = tmp_path / "persons.csv"
    csv.write_text("path,person\nalice/1.jpg,A\n2.jpg,A\n")
    p = persons_from_csv(
        csv, face_ids=["f1", "f2", "f3"], paths=["alice/1.jpg", "alice/2.jpg", "x.jpg"]
    )
    assert p[0] == p[1] == "csv:A"
    assert p[2] == "face:f3"
    bad = tmp_path / "bad.csv"
    bad.write_text("who,file\nA,1.jpg\n")
    with pytest.raises(ValueError, match="bad.csv"):
        persons_from_csv(bad, face_ids=["f1"], paths=["1.jpg"])


def test_near_duplicate_embedding_groups():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 64))
    X = np.concatenate([base, base[:2] + rng.normal(size=(2, 64)) * 0.01])  # 2 near-dups
    g = persons_from_embeddings(X, threshold=0.95)
    assert g[5] == g[0] and g[6] == g[1]
    assert len(set(g)) == 5


def test_combine_groups_is_transitive():
    a = ["x", "x", "y", "z"]
    b = ["1", "2", "2", "3"]
    g = combine_groups(a, b)
    assert g[0] == g[1] == g[2] != g[3]
