"""The label store: event log semantics, undo/redo, schema, suggestions, concurrency."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeler.labels import DEFAULT_SCHEMA, MASK_STATES, NOT_A_FACE, LabelStore, plan_assign

FIELD = "mask_state"


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    return LabelStore(tmp_path / "labels.db")


def state(store: LabelStore, field: str | None = None) -> dict[tuple[str, str], str]:
    cur = store.current(field)
    return {(r.face_id, r.field): r.value for r in cur.itertuples()}


def test_assign_and_current(store):
    e1 = store.assign(["a", "b", "c"], FIELD, "correct", annotator="ann", source="cluster")
    e2 = store.assign(["c", "d"], FIELD, "no_mask", annotator="ann", source="selection")
    assert e2 > e1
    cur = store.current(FIELD).set_index("face_id")
    assert list(store.current().columns) == [
        "face_id",
        "field",
        "value",
        "source",
        "annotator",
        "ts",
        "event_id",
    ]
    assert cur["value"].to_dict() == {
        "a": "correct",
        "b": "correct",
        "c": "no_mask",
        "d": "no_mask",
    }
    assert cur.loc["c", "source"] == "selection" and cur.loc["a", "event_id"] == e1
    assert store.current_values(FIELD) == cur["value"].to_dict()
    assert sorted(store.event_faces(e2)) == ["c", "d"]


def test_clear_removes_label_and_fields_are_independent(store):
    store.assign(["a", "b"], FIELD, "correct", annotator="x", source="single")
    store.assign(["a"], "gender", "female", annotator="x", source="single")
    store.assign(["a"], FIELD, None, annotator="x", source="single")
    assert state(store) == {("b", FIELD): "correct", ("a", "gender"): "female"}
    wide = store.current_wide([FIELD, "gender"]).set_index("face_id")
    assert wide.loc["a", "gender"] == "female" and pd.isna(wide.loc["a", FIELD])


def test_rejects_bad_input_with_a_fix(store):
    with pytest.raises(ValueError, match="not allowed .*Settings"):
        store.assign(["a"], FIELD, "half_on", annotator="x", source="single")
    with pytest.raises(KeyError, match="not in the schema"):
        store.assign(["a"], "hat", "red", annotator="x", source="single")
    with pytest.raises(ValueError, match="no face_ids"):
        store.assign([], FIELD, "correct", annotator="x", source="single")
    with pytest.raises(ValueError, match="source"):
        store.assign(["a"], FIELD, "correct", annotator="x", source="magic")
    with pytest.raises(TypeError):
        store.assign("abc", FIELD, "correct", annotator="x", source="single")
    assert store.history().empty  # nothing half-written


def test_undo_redo_stack_per_annotator(store):
    e1 = store.assign(["a", "b"], FIELD, "correct", annotator="ann", source="cluster")
    e2 = store.assign(["b", "c"], FIELD, "no_mask", annotator="ann", source="cluster")
    e3 = store.assign(["c"], FIELD, "on_chin", annotator="bob", source="single")
    # ann's undo only touches ann's events; bob's later label on c survives
    assert store.undo("ann") == e2
    assert state(store, FIELD) == {
        ("a", FIELD): "correct",
        ("b", FIELD): "correct",
        ("c", FIELD): "on_chin",
    }
    assert store.undo("ann") == e1
    assert state(store, FIELD) == {("c", FIELD): "on_chin"}
    assert store.undo("ann") is None
    assert store.redo("ann") == e1
    assert store.redo("ann") == e2
    assert store.redo("ann") is None
    assert state(store, FIELD)[("b", FIELD)] == "no_mask"
    # a new action clears the redo stack
    store.undo("ann")
    store.assign(["z"], FIELD, "correct", annotator="ann", source="single")
    assert store.redo("ann") is None
    # undo/redo are themselves logged events
    hist = store.history(limit=None)
    assert set(hist["kind"]) == {"assign", "undo", "redo"}
    assert hist.loc[hist["kind"] == "undo", "target"].tolist()[-1] == e2
    assert store.undo("bob") == e3 and store.can_undo("bob") is False


def test_schema_editing_persists(store):
    assert store.schema() == DEFAULT_SCHEMA
    assert store.schema().values(FIELD) == MASK_STATES
    store.add_value(FIELD, "mask_on_forehead")
    store.add_field("glasses", ["none", "clear", "sun"])
    again = LabelStore(store.db_path).schema()
    assert again.values(FIELD)[-1] == "mask_on_forehead"
    assert again.values("glasses") == ("none", "clear", "sun")
    store.assign(["a"], "glasses", "sun", annotator="x", source="single")
    with pytest.raises(ValueError, match="already exists"):
        store.add_field("glasses", ["x"])
    with pytest.raises(ValueError, match="non-empty"):
        store.add_value(FIELD, " ")


def test_suggestions_and_suspects_review_queue(store):
    store.assign(["a"], FIELD, "correct", annotator="x", source="cluster")
    sug = pd.DataFrame(
        {
            "face_id": ["a", "b", "c"],
            "field": FIELD,
            "value": ["correct", "no_mask", "on_chin"],
            "confidence": [0.9, 0.8, 0.95],
        }
    )
    assert store.write_suggestions(sug, "knn") == 3
    assert store.suggestions(FIELD)["face_id"].tolist() == ["c", "a", "b"]
    pending = store.suggestions(FIELD, pending=True)
    assert pending["face_id"].tolist() == ["c", "b"]  # a already carries the suggestion
    store.reject(pending.iloc[[0]], FIELD, annotator="x")
    assert store.accept(store.suggestions(FIELD, pending=True), FIELD, annotator="x")
    assert store.suggestions(FIELD, pending=True).empty
    assert state(store, FIELD)[("b", FIELD)] == "no_mask"
    assert ("c", FIELD) not in state(store, FIELD)
    assert store.current(FIELD).set_index("face_id").loc["b", "source"] == "suggestion"

    sus = pd.DataFrame(
        {"face_id": ["a", "b"], "field": FIELD, "given": ["correct", "no_mask"]}
        | {"suggested": ["nose_exposed", "correct"], "score": [0.7, 0.9]}
    )
    store.write_suspects(sus, "suggest")
    assert store.suspects(FIELD, pending=True)["face_id"].tolist() == ["b", "a"]
    store.reject(store.suspects(FIELD).iloc[[0]], FIELD, annotator="x", kind="suspect")
    store.accept(
        store.suspects(FIELD, pending=True), FIELD, annotator="x", value_column="suggested"
    )
    assert state(store, FIELD)[("a", FIELD)] == "nose_exposed"
    assert store.suspects(FIELD, pending=True).empty
    # re-writing a method's suggestions replaces them
    store.write_suggestions(sug.iloc[:1], "knn")
    assert len(store.suggestions(FIELD)) == 1
    # a later run that finds no suspects for the field clears the old ones
    assert len(store.suspects(FIELD)) == 2
    store.write_suspects(sus.iloc[:0], "suggest", fields=[FIELD])
    assert store.suspects(FIELD).empty


def test_version_changes_on_every_write(store):
    v0 = store.version()
    store.assign(["a"], FIELD, "correct", annotator="x", source="single")
    v1 = store.version()
    store.undo("x")
    v2 = store.version()
    store.write_suggestions(
        pd.DataFrame(
            {"face_id": ["a"], "field": [FIELD], "value": ["correct"], "confidence": [1.0]}
        ),
        "m",
    )
    assert len({v0, v1, v2, store.version()}) == 4


def test_database_is_wal(store):
    store.assign(["a"], FIELD, "correct", annotator="x", source="single")
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_activity_per_annotator(store):
    store.assign(["a", "b"], FIELD, "correct", annotator="ann", source="cluster")
    store.assign(["c"], FIELD, "correct", annotator="bob", source="single")
    store.undo("bob")
    act = store.activity().set_index("annotator")
    assert act.loc["ann", "faces"] == 2 and act.loc["bob", "faces"] == 0
    assert act.loc["bob", "events"] == 2


# --- concurrency -----------------------------------------------------------------------------


def _writer(db: str, name: str, n: int, barrier: threading.Barrier | None) -> None:
    store = LabelStore(db)
    if barrier is not None:
        barrier.wait()
    for i in range(n):
        # overlapping selections: every writer touches the shared ids s0..s9 each time
        ids = [f"s{j}" for j in range(10)] + [f"{name}_{i}"]
        store.assign(ids, FIELD, MASK_STATES[i % 5], annotator=name, source="selection")


def _check_after_concurrent(db: Path, names: list[str], n: int) -> None:
    store = LabelStore(db)
    hist = store.history(limit=None)
    assert len(hist) == len(names) * n  # no event lost
    assert (hist.groupby("annotator").size() == n).all()
    last = hist.sort_values("event_id").iloc[-1]
    cur = store.current(FIELD).set_index("face_id")
    for j in range(10):  # final state of the shared faces = the last committed write
        assert cur.loc[f"s{j}", "event_id"] == last.event_id
        assert cur.loc[f"s{j}", "value"] == last.value
    for name in names:
        assert all(f"{name}_{i}" in cur.index for i in range(n))


def test_two_threads_write_overlapping_faces(tmp_path):
    db = tmp_path / "labels.db"
    LabelStore(db).schema()  # create
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=_writer, args=(str(db), n, 60, barrier)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check_after_concurrent(db, ["a", "b"], 60)


def test_two_processes_write_overlapping_faces(tmp_path):
    db = tmp_path / "labels.db"  # not created beforehand: both processes race to create it
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), n, 40, None)) for n in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    _check_after_concurrent(db, ["p", "q"], 40)


# --- properties ------------------------------------------------------------------------------

face_ids = st.lists(st.sampled_from([f"f{i}" for i in range(12)]), min_size=1, max_size=8)
actions = st.lists(
    st.tuples(st.sampled_from(["ann", "bob"]), face_ids, st.sampled_from([*MASK_STATES, None])),
    min_size=1,
    max_size=6,
)
HYP = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYP
@given(history=actions, who=st.sampled_from(["ann", "bob"]))
def test_undo_then_redo_is_identity(tmp_path_factory, history, who):
    store = LabelStore(tmp_path_factory.mktemp("db") / "labels.db")
    for annotator, ids, value in history:
        store.assign(ids, FIELD, value, annotator=annotator, source="selection")
    before = state(store)
    undone = store.undo(who)
    if undone is None:
        assert store.redo(who) is None
    else:
        assert store.redo(who) == undone
    assert state(store) == before


@HYP
@given(history=actions, selected=face_ids, value=st.sampled_from(MASK_STATES))
def test_bulk_label_touches_exactly_the_selection(tmp_path_factory, history, selected, value):
    store = LabelStore(tmp_path_factory.mktemp("db") / "labels.db")
    for annotator, ids, v in history:
        store.assign(ids, FIELD, v, annotator=annotator, source="selection")
    store.assign(["g0"], "gender", "male", annotator="ann", source="single")
    before = state(store)
    eid = store.assign(selected, FIELD, value, annotator="ann", source="selection")
    after = state(store)
    assert sorted(store.event_faces(eid)) == sorted(set(selected))
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert {f for f, _ in changed} <= set(selected)
    assert all(after[(f, FIELD)] == value for f in selected)
    assert {k: v for k, v in after.items() if k[0] not in selected} == {
        k: v for k, v in before.items() if k[0] not in selected
    }


def test_counts(store):
    store.assign(["a", "b"], FIELD, "correct", annotator="x", source="cluster")
    store.assign(["b"], FIELD, "no_mask", annotator="x", source="single")
    got = store.counts().set_index(["field", "value"])["faces"].to_dict()
    assert got == {(FIELD, "correct"): 1, (FIELD, "no_mask"): 1}


# --- issue 31: two annotators at once, nothing lost -------------------------------------------


def _who(store: LabelStore, field: str = FIELD) -> dict[str, tuple[str, str]]:
    cur = store.current(field)
    return {r.face_id: (r.value, r.annotator) for r in cur.itertuples()}


def test_checked_assign_leaves_faces_labeled_meanwhile(tmp_path):
    """Two sessions on one store: Ann plans an assign, Bea labels some of those faces, Ann's
    assign (checked when it runs) changes only the faces still unlabeled and names Bea."""
    ann, bea = LabelStore(tmp_path / "labels.db"), LabelStore(tmp_path / "labels.db")
    ids = [f"f{i}" for i in range(10)]
    plan = plan_assign(ids, ann.current_values(FIELD), "no_mask")  # Ann's page is drawn
    assert plan.new == tuple(ids)
    bea.assign(ids[:3], FIELD, "correct", annotator="Bea", source="selection")  # meanwhile
    res = ann.assign_checked(plan.faces(relabel=False), FIELD, "no_mask",
                             seen=plan.seen(relabel=False), annotator="Ann", source="selection")  # fmt: skip
    now = _who(ann)
    assert {f: now[f] for f in ids[:3]} == dict.fromkeys(ids[:3], ("correct", "Bea"))
    assert {f: now[f] for f in ids[3:]} == dict.fromkeys(ids[3:], ("no_mask", "Ann"))
    assert res.changed == tuple(ids[3:]) and res.relabeled == ()
    assert sorted(ann.event_faces(res.event_id)) == ids[3:]  # one event, only those faces
    assert res.meanwhile == {("Bea", "correct"): tuple(ids[:3])}
    assert res.meanwhile_text() == (
        "3 faces were labeled correct by Bea meanwhile and were left as they are"
    )
    # again, now that every face is labeled: nothing is written, no empty event
    n_events = len(ann.history(limit=None))
    again = ann.assign_checked(ids, FIELD, "no_mask", seen=dict.fromkeys(ids),
                               annotator="Ann", source="selection")  # fmt: skip
    assert again.event_id is None and again.changed == ()
    assert len(ann.history(limit=None)) == n_events


def test_checked_relabel_changes_only_faces_as_the_page_showed_them(tmp_path):
    """The explicit Relabel, planned when Pat's labels were shown: faces Bea relabeled since
    and faces Pat's undo unlabeled since are left and reported; the rest are relabeled. The
    plan names the owners of the labels it would replace."""
    pat, bea = LabelStore(tmp_path / "labels.db"), LabelStore(tmp_path / "labels.db")
    ann = LabelStore(tmp_path / "labels.db")
    ids = [f"f{i}" for i in range(6)]
    pat.assign(ids[:4], FIELD, "correct", annotator="Pat", source="cluster")
    pat.assign(ids[4:], FIELD, "correct", annotator="Pat", source="cluster")
    owners = {f: who for f, (_, who) in ann.labels_of(FIELD, ids).items()}
    plan = plan_assign(ids, ann.current_values(FIELD), "no_mask", owners=owners)
    assert plan.relabel == tuple(ids) and plan.relabel_text() == "6 faces now correct by Pat"
    bea.assign(ids[:2], FIELD, "on_chin", annotator="Bea", source="selection")
    pat.undo("Pat")  # ids[4:] unlabeled again
    res = ann.assign_checked(plan.faces(relabel=True), FIELD, "no_mask",
                             seen=plan.seen(relabel=True), relabel=True, annotator="Ann",
                             source="selection")  # fmt: skip
    now = _who(ann)
    assert now == {ids[0]: ("on_chin", "Bea"), ids[1]: ("on_chin", "Bea"),
                   ids[2]: ("no_mask", "Ann"), ids[3]: ("no_mask", "Ann")}  # fmt: skip
    assert res.changed == res.relabeled == tuple(ids[2:4])
    assert res.meanwhile == {("Bea", "on_chin"): tuple(ids[:2]), ("Pat", None): tuple(ids[4:])}
    assert res.meanwhile_text() == (
        "4 faces were changed meanwhile and were left as they are: labeled on_chin by Bea (2), "
        "unlabeled by Pat (2)"
    )
    # without relabel, a labeled face is never changed, even one shown as labeled
    res = ann.assign_checked(ids[2:4], FIELD, "correct", seen=dict.fromkeys(ids[2:4], "no_mask"),
                             annotator="Ann", source="selection")  # fmt: skip
    assert res.changed == () and res.unchanged == tuple(ids[2:4]) and not res.meanwhile


def test_checked_assign_sees_not_a_face_as_the_pages_do(tmp_path):
    """A face marked not_a_face in any field shows as not_a_face on every page: marked so
    meanwhile, it is left; shown so, it is relabeled on request like any labeled face."""
    ann, bea = LabelStore(tmp_path / "labels.db"), LabelStore(tmp_path / "labels.db")
    ann.assign(["a"], "gender", NOT_A_FACE, annotator="Ann", source="single")
    bea.assign(["b"], "gender", NOT_A_FACE, annotator="Bea", source="single")  # meanwhile
    seen = {"a": NOT_A_FACE, "b": None, "c": None}
    res = ann.assign_checked(list(seen), FIELD, "correct", seen=seen, relabel=True,
                             annotator="Ann", source="selection")  # fmt: skip
    assert res.changed == ("a", "c") and res.meanwhile == {("Bea", NOT_A_FACE): ("b",)}
    assert ann.current_values(FIELD) == {"a": "correct", "c": "correct"}


actors = st.sampled_from(["ann", "bob"])
labels_or_none = st.sampled_from([*MASK_STATES[:3], NOT_A_FACE, None])


@HYP
@given(
    history=actions,
    meanwhile=st.lists(st.tuples(actors, face_ids, labels_or_none), max_size=4),
    selected=face_ids,
    value=st.sampled_from(MASK_STATES[:3]),
    relabel=st.booleans(),
)
def test_a_bulk_action_never_changes_a_face_changed_since_it_was_drawn(
    tmp_path_factory, history, meanwhile, selected, value, relabel
):
    """Whatever happened before and between drawing and pressing: the checked assign changes
    exactly the selected faces still as shown (not at the value, labeled only on relabel),
    every face changed since is left as it is and reported, no other face changes."""
    db = tmp_path_factory.mktemp("db") / "labels.db"
    ann, bob = LabelStore(db), LabelStore(db)
    for who, ids, v in history:
        LabelStore(db).assign(ids, FIELD, v, annotator=who, source="selection")
    shown = ann.current_values(FIELD)
    shown.update(dict.fromkeys(ann.not_faces(), NOT_A_FACE))  # as ui.data.labels shows them
    seen = {f: shown.get(f) for f in selected}  # what the page showed of the selection
    for who, ids, v in meanwhile:
        field = FIELD if v != NOT_A_FACE else "gender"
        bob.assign(ids, field, v, annotator=who, source="selection")
    before = state(ann, None)
    now = ann.current_values(FIELD)
    now.update(dict.fromkeys(ann.not_faces(), NOT_A_FACE))
    res = ann.assign_checked(selected, FIELD, value, seen=seen, relabel=relabel, annotator="ann",
                             source="selection")  # fmt: skip
    after = state(ann, None)
    moved = {f for (f, _), v in after.items() if before.get((f, _)) != v}
    moved |= {f for f, _ in before.keys() - after.keys()}
    want = {
        f for f in seen
        if now.get(f) == seen[f] and now.get(f) != value and (relabel or now.get(f) is None)
    }  # fmt: skip
    assert moved == set(res.changed) == want
    assert all(after[(f, FIELD)] == value for f in want)
    stale = {f for f in seen if now.get(f) != seen[f]}
    assert {f for fs in res.meanwhile.values() for f in fs} == stale
    assert not stale & moved
    assert (res.event_id is None) == (not want)
