"""The Streamlit app driven through AppTest by widget keys, on a workspace the test writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest
from synthetic import synthetic_workspace

from labeler import ui
from labeler.cluster import store as cluster_store
from labeler.labels import LabelStore
from labeler.ui import chart, data, photos
from labeler.ui.state import ENV_ANNOTATOR, ENV_WORKSPACE, KNN_PREFIX, SELECT_PREFIX, K

APP = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
PAGES = [script for script, _, _ in ui.PAGES]
FIELD = "mask_state"


@pytest.fixture(scope="module")
def ws_template(tmp_path_factory):
    return synthetic_workspace(tmp_path_factory.mktemp("tmpl") / "ws", n_faces=60, n_clusters=3)


@pytest.fixture
def ws(tmp_path, ws_template, monkeypatch):
    """A fresh copy of the synthetic workspace per test (labels and runs change)."""
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(ws_template.root, root)
    from labeler.workspace import Workspace, write_json

    meta = Workspace(root).meta()
    meta["roots"] = [str(root / "photos")]
    write_json(root / "workspace.json", meta)
    monkeypatch.setenv(ENV_WORKSPACE, str(root))
    monkeypatch.setenv(ENV_ANNOTATOR, "tester")
    return Workspace.open(root)


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page != PAGES[0]:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def members(ws, cluster: int) -> list[str]:
    run = cluster_store.load_run(ws)
    return [str(f) for f in run.face_ids[run.labels == cluster]]


def biggest_cluster(ws) -> int:
    run = cluster_store.load_run(ws)
    ids, counts = np.unique(run.labels[run.labels >= 0], return_counts=True)
    return int(ids[np.argmax(counts)])


def labels_now(ws, field: str = FIELD) -> dict[str, str]:
    return LabelStore(ws.labels_db).current_values(field)


def test_every_page_renders(ws):
    at = open_page(PAGES[0])
    titles = []
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        titles.append(at.header[0].value)
    assert titles == ["Overview", "Clusters", "Cluster view", "Map", "Review", "Settings", "Try it"]


def test_pages_without_a_cluster_run_say_what_to_run(ws):
    (ws.clusters_dir / "current.json").unlink()
    for page in ["views/clusters.py", "views/cluster_view.py", "views/map.py"]:
        at = open_page(page)
        assert "labeler cluster" in at.info[0].value


def test_bulk_assign_a_cluster(ws):
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    at.selectbox(key=K.assign_value).set_value("nose_exposed").run()
    at.button(key=K.assign_btn).click().run()
    assert not at.exception
    got = labels_now(ws)
    assert got == {f: "nose_exposed" for f in members(ws, c)}
    cur = LabelStore(ws.labels_db).current(FIELD)
    assert set(cur["source"]) == {"cluster"} and set(cur["annotator"]) == {"tester"}
    assert "Labeled" in at.success[0].value


def test_exclude_outliers_then_assign_undo_redo(ws):
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    ids = members(ws, c)
    out = [f for f in ids if at.checkbox(key=SELECT_PREFIX + f).value][-2:]  # two shown faces
    for f in out:
        at.checkbox(key=SELECT_PREFIX + f).uncheck().run()
    at.button(key=K.assign_btn).click().run()
    got = labels_now(ws)
    assert set(got) == set(ids) - set(out)
    assert set(LabelStore(ws.labels_db).current(FIELD)["source"]) == {"selection"}

    at.button(key=K.undo_btn).click().run()
    assert labels_now(ws) == {}
    at.button(key=K.redo_btn).click().run()
    assert labels_now(ws) == got
    kinds = LabelStore(ws.labels_db).history(limit=None)["kind"].tolist()
    assert kinds == ["redo", "undo", "assign"]


def test_select_none_and_all(ws):
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    at.button(key=K.select_none_btn).click().run()
    assert at.button(key=K.assign_btn).disabled
    shown = [cb for cb in at.checkbox if cb.key.startswith(SELECT_PREFIX)]
    assert shown and not any(cb.value for cb in shown)
    shown[0].check().run()
    at.button(key=K.assign_btn).click().run()
    assert list(labels_now(ws)) == [shown[0].key[len(SELECT_PREFIX) :]]
    at.button(key=K.select_all_btn).click().run()
    assert all(cb.value for cb in at.checkbox if cb.key.startswith(SELECT_PREFIX))


def test_split_out_unselected_then_revert(ws):
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    before = cluster_store.current_run_id(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    ids = members(ws, c)
    out = ids[:3]
    for f in out:
        at.checkbox(key=SELECT_PREFIX + f).uncheck().run()
    at.button(key=K.split_out_btn).click().run()
    assert not at.exception
    after = cluster_store.current_run_id(ws)
    assert after != before
    run = cluster_store.load_run(ws)
    moved = run.labels[np.isin(run.face_ids, out)]
    assert len(set(moved)) == 1 and moved[0] not in (c, -1)
    assert set(members(ws, c)) == set(ids) - set(out)
    assert run.params["n_clusters"] == 4 and run.params["edit"]["op"] == "move"
    at.button(key=K.revert_btn).click().run()
    assert cluster_store.current_run_id(ws) == before


def test_split_by_similarity_and_merge(ws):
    """Split (the cluster's faces become new clusters), then merge a part into another
    cluster: noise faces that suggested the merged-away part now suggest the target."""
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    ids = members(ws, c)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    at.button(key=K.split_k_btn).click().run()
    assert not at.exception
    run = cluster_store.load_run(ws)
    parts = run.params["edit"]["into"]
    assert run.params["edit"]["op"] == "split" and len(parts) == 2 and members(ws, c) == []
    assert sorted(members(ws, parts[0]) + members(ws, parts[1])) == sorted(ids)
    assert at.selectbox(key=K.cluster_pick).value == parts[0]  # the page shows a part
    assert not ({int(x) for x in run.suggested} - set(run.labels.tolist()))
    # merge the second part into another cluster
    other = next(x for x in (0, 1, 2) if x != c)
    noise = run.labels < 0
    at.selectbox(key=K.cluster_pick).set_value(parts[1]).run()
    at.selectbox(key=f"{K.merge_target}_{parts[1]}").set_value(other).run()
    at.button(key=K.merge_btn).click().run()
    assert not at.exception
    merged = cluster_store.load_run(ws)
    assert members(ws, parts[1]) == [] and merged.params["n_clusters"] == 3
    assert parts[1] not in merged.suggested.tolist()
    np.testing.assert_array_equal(
        merged.suggested[noise], np.where(run.suggested == parts[1], other, run.suggested)[noise]
    )
    runs = cluster_store.list_runs(ws).set_index("run_id")
    assert runs.loc[merged.params["run_id"], "n_clusters"] == 3  # run lists see the edit


@pytest.fixture(scope="module")
def real_template(tmp_path_factory):
    """40 MFR2 photos through 'labeler run' (detect, align, embed, cluster) on the CPU."""
    from conftest import shared_dataset

    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    folder = tmp_path_factory.mktemp("mfr2") / "folder"
    folder.mkdir()
    for f in sorted((shared_dataset("mfr2") / "images").iterdir())[:40]:
        (folder / f.name).write_bytes(f.read_bytes())
    ws = Workspace.open(folder.parent / "ws", create=True)
    run_pipeline(folder, ws, config=RunConfig(device="cpu"))
    return ws


@pytest.fixture
def real_ws(tmp_path, real_template, monkeypatch):
    import shutil

    from labeler.workspace import Workspace

    shutil.copytree(real_template.root, tmp_path / "ws")
    monkeypatch.setenv(ENV_WORKSPACE, str(tmp_path / "ws"))
    monkeypatch.setenv(ENV_ANNOTATOR, "tester")
    return Workspace.open(tmp_path / "ws")


def test_cluster_edits_on_real_faces(real_ws):
    """Move out, split by similarity, merge and revert through the Cluster view on a real
    run: each edit is labeler.cluster.edit's (the run's saved vectors), recounts the run's
    clusters for 'labeler cluster --list', and Revert walks back one edit at a time."""
    from labeler.cluster.edit import split_labels

    ws = real_ws
    first = cluster_store.load_run(ws)
    n0 = first.params["n_clusters"]
    assert n0 >= 2 and cluster_store.load_vectors(ws) is not None
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    ids = members(ws, c)
    for f in ids[-2:]:
        at.checkbox(key=SELECT_PREFIX + f).uncheck().run()
    at.button(key=K.split_out_btn).click().run()
    assert not at.exception
    moved = cluster_store.load_run(ws)
    new = moved.params["edit"]["into"]
    assert sorted(members(ws, new)) == sorted(ids[-2:]) and moved.params["n_clusters"] == n0 + 1

    at.selectbox(key=K.cluster_pick).set_value(c).run()
    at.number_input(key=K.split_k).set_value(3).run()
    at.button(key=K.split_k_btn).click().run()
    assert not at.exception
    split = cluster_store.load_run(ws)
    want = split_labels(cluster_store.load_vectors(ws), moved.labels, c, n_parts=3)
    np.testing.assert_array_equal(split.labels, want)  # the one implementation, run vectors
    assert split.params["n_clusters"] == n0 + 3 and split.params["parent"] == moved.params["run_id"]

    parts = split.params["edit"]["into"]
    at.selectbox(key=K.cluster_pick).set_value(parts[2]).run()
    at.selectbox(key=f"{K.merge_target}_{parts[2]}").set_value(parts[0]).run()
    at.button(key=K.merge_btn).click().run()
    assert not at.exception
    merged = cluster_store.load_run(ws)
    assert members(ws, parts[2]) == [] and merged.params["n_clusters"] == n0 + 2
    listed = cluster_store.list_runs(ws).set_index("run_id")["n_clusters"]
    assert listed[merged.params["run_id"]] == n0 + 2 and listed[first.params["run_id"]] == n0

    for back in (split, moved, first):
        at.button(key=K.revert_btn).click().run()
        assert not at.exception
        assert cluster_store.current_run_id(ws) == back.params["run_id"]
    assert at.button(key=K.revert_btn).disabled  # the first run has no parent


def test_more_like_this_labels_neighbours(ws):
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    query = at.selectbox(key=K.knn_face).value
    at.number_input(key=K.knn_k).set_value(8).run()
    at.button(key=K.knn_btn).click().run()
    knn_boxes = [cb for cb in at.checkbox if cb.key.startswith(KNN_PREFIX)]
    assert len(knn_boxes) == 8
    knn_boxes[0].uncheck().run()
    at.button(key=K.knn_assign_btn).click().run()
    got = labels_now(ws)
    assert query in got and len(got) == 8  # query + 7 ticked neighbours
    assert knn_boxes[0].key[len(KNN_PREFIX) :] not in got


def test_clusters_page_sorts_and_opens_a_cluster(ws):
    c = biggest_cluster(ws)
    some = members(ws, c)[:5]
    LabelStore(ws.labels_db).assign(some, FIELD, "correct", annotator="x", source="selection")
    at = open_page("views/clusters.py")
    at.radio(key=K.clusters_sort).set_value("unlabeled").run()
    assert not at.exception
    summary = data.cluster_summary(ws, FIELD)
    assert summary.set_index("cluster").loc[c, "labeled"] == 5
    at.button(key=f"open_{c}").click().run()
    assert not at.exception
    assert at.session_state[K.cluster] == c
    assert at.header[0].value == "Cluster view"


# Review: suggestion groups, precision-gated pre-ticks, Undo/Redo on the page and suspects
# never pre-ticked are tested in tests/test_review.py (the page was redesigned for #11).


def test_settings_annotator_and_schema(ws):
    at = open_page("views/settings.py")
    at.text_input(key=K.settings_annotator).set_value("alice").run()
    at.text_input(key=f"new_value_{FIELD}").set_value("on_forehead").run()
    at.button(key=f"add_value_{FIELD}").click().run()
    assert LabelStore(ws.labels_db).schema().values(FIELD)[-1] == "on_forehead"
    at.text_input(key=K.new_field_name).set_value("glasses").run()
    at.text_input(key=K.new_field_values).set_value("none, clear, sun").run()
    at.button(key=K.new_field_btn).click().run()
    assert LabelStore(ws.labels_db).schema().values("glasses") == ("none", "clear", "sun")
    # the name is used for labels given on other pages
    at.switch_page("views/cluster_view.py").run()
    at.selectbox(key=K.assign_value).set_value("on_forehead").run()
    at.button(key=K.assign_btn).click().run()
    cur = LabelStore(ws.labels_db).current(FIELD)
    assert set(cur["annotator"]) == {"alice"} and set(cur["value"]) == {"on_forehead"}


def test_map_selection_labels_every_face_inside(ws):
    run = cluster_store.load_run(ws)
    at = open_page("views/map.py")
    rows = np.flatnonzero(run.labels == biggest_cluster(ws))
    at.session_state[K.map_selection] = rows
    at.run()
    at.button(key=K.map_assign_btn).click().run()
    assert not at.exception
    assert set(labels_now(ws)) == {str(f) for f in run.face_ids[rows]}
    for colour in ["label", "suggestion"]:
        at.radio(key=K.map_color).set_value(colour).run()
        assert not at.exception


def test_rows_in_selection_box_lasso_points():
    xy = np.array([[0, 0], [1, 1], [2, 2], [5, 5], [0.5, 1.5]], np.float32)
    box = {"box": [{"x": [2.5, -0.1], "y": [-0.1, 2.5]}]}
    assert chart.rows_in_selection(xy, box).tolist() == [0, 1, 2, 4]
    tri = {"lasso": [{"x": [-1, 3, -1], "y": [-1, -1, 3]}]}  # lower-left triangle
    assert chart.rows_in_selection(xy, tri).tolist() == [0, 1, 4]
    pts = {"points": [{"customdata": [3]}, {"customdata": 99}]}
    assert chart.rows_in_selection(xy, pts).tolist() == [3]
    clicked = {
        "points": [{"curve_number": 1, "point_index": 0}, {"curve_number": 5, "point_index": 0}]
    }
    trace_rows = (np.array([0, 1]), np.array([4, 2]))
    assert chart.rows_in_selection(xy, clicked, trace_rows).tolist() == [4]
    assert chart.rows_in_selection(xy, {}).tolist() == []


def test_map_sample_is_bounded_and_keeps_every_cluster():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 300, 133_000)
    labels[:3] = 999  # a tiny cluster
    rows = data.map_sample(labels, max_points=20_000)
    assert len(rows) <= 20_000 and len(np.unique(rows)) == len(rows)
    assert set(np.unique(labels[rows])) == set(np.unique(labels))
    assert data.map_sample(labels[:100], max_points=20_000).tolist() == list(range(100))


def test_try_it_with_an_upload_and_a_broken_file(ws):
    from PIL import Image

    at = open_page("views/try_it.py")
    img = Image.open(io.BytesIO(data.crop_bytes(ws, members(ws, biggest_cluster(ws))[0])))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    at.file_uploader(key=K.try_upload).set_value(("face.png", buf.getvalue(), "image/png")).run()
    assert not at.exception
    assert len(at.image) >= 2  # the photo and at least one face crop
    assert len(at.dataframe) == 1
    at.file_uploader(key=K.try_upload).set_value(("broken.jpg", b"not a jpeg", "image/jpeg")).run()
    assert not at.exception and "Could not read" in at.error[0].value


def test_images_are_served_only_from_the_workspace(ws, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    assert data.image_bytes(ws, secret) is None
    assert data.image_bytes(ws, ws.root / "photos" / ".." / ".." / "secret.jpg") is None
    assert data.crop_bytes(ws, "../../../../secret") is None
    photo = next((ws.root / "photos").iterdir())
    assert data.image_bytes(ws, photo) == photo.read_bytes()


def test_no_workspace_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(ENV_WORKSPACE, raising=False)
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert "labeler app -w WORKSPACE" in at.error[0].value


def test_cli_app_command(ws, tmp_path):
    from labeler.cli import cli
    from labeler.cli.app import streamlit_command

    cmd = streamlit_command(str(ws.root), host="0.0.0.0", port=9999)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("labeler/ui/app.py")
    assert cmd[cmd.index("--server.port") + 1] == "9999"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert cmd[-2:] == ["--workspace", str(ws.root)]
    res = CliRunner().invoke(cli, ["app", "--help"])
    assert res.exit_code == 0 and "--port" in res.output
    res = CliRunner().invoke(cli, ["app", "-w", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "not a labeler workspace" in res.output


def test_two_annotators_see_each_others_labels_on_rerun(ws, monkeypatch):
    c = biggest_cluster(ws)
    ids = members(ws, c)
    monkeypatch.setenv(ENV_ANNOTATOR, "ann")
    a = open_page("views/cluster_view.py")
    monkeypatch.setenv(ENV_ANNOTATOR, "bob")
    b = open_page("views/cluster_view.py")
    # ann labels the whole cluster; bob (overlapping) re-labels the first face a moment later
    a.button(key=K.assign_btn).click().run()
    b.button(key=K.select_none_btn).click().run()
    b.checkbox(key=SELECT_PREFIX + ids[0]).check().run()
    b.selectbox(key=K.assign_value).set_value("no_mask").run()
    b.button(key=K.assign_btn).click().run()  # Enter: ann's label stays (not silent)
    assert labels_now(ws)[ids[0]] == "correct"
    assert "have labels already" in b.info[0].value
    relabel = b.button(key=K.relabel_btn)
    assert relabel.label == "Relabel 1 face now correct by ann as 'no_mask'"  # count, owner
    relabel.click().run()  # the explicit choice
    a.run()  # ann's next rerun shows bob's label
    assert "[no_mask]" in a.checkbox(key=SELECT_PREFIX + ids[0]).label
    assert "[correct]" in a.checkbox(key=SELECT_PREFIX + ids[1]).label
    cur = LabelStore(ws.labels_db).current(FIELD).set_index("face_id")
    assert cur.loc[ids[0], "annotator"] == "bob" and cur.loc[ids[1], "annotator"] == "ann"
    # undo is per annotator: ann's undo keeps bob's later label
    a.button(key=K.undo_btn).click().run()
    assert labels_now(ws) == {ids[0]: "no_mask"}


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stopping_labeler_app_stops_its_server(ws, sig):
    """A supervisor's SIGTERM (or Ctrl+C) to `labeler app` leaves no Streamlit server behind."""
    import os
    import signal
    import time

    from appserver import answers, pids_mentioning, running_app

    with running_app(ws.root) as (url, proc):
        assert answers(url)
        assert proc.pid in pids_mentioning(str(ws.root))
        os.kill(proc.pid, getattr(signal, sig))
        proc.wait(20)
        end = time.time() + 10
        while time.time() < end and (pids_mentioning(str(ws.root)) or answers(url)):
            time.sleep(0.2)
        assert pids_mentioning(str(ws.root)) == []
        assert not answers(url)


# --- issue 15: what annotators need ----------------------------------------------------------


def test_a_name_is_asked_first_and_never_the_os_user(ws, monkeypatch):
    import getpass

    from labeler.ui.state import QUERY_ANNOTATOR

    monkeypatch.delenv(ENV_ANNOTATOR)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert at.header[0].value == "Who is labeling?"  # no page before a name
    assert getpass.getuser() not in [t.value for t in at.text_input]
    at.text_input(key=K.name_prompt).set_value("  Ann   Lee ").run()
    at.button(key=K.name_prompt_btn).click().run()
    assert not at.exception
    assert at.query_params[QUERY_ANNOTATOR] == ["Ann Lee"]  # the URL keeps it across reloads
    assert at.header[0].value == "Overview"
    assert any("Labeling as **Ann Lee**" in c.value for c in at.caption)
    at.switch_page("views/cluster_view.py").run()
    assert at.query_params[QUERY_ANNOTATOR] == ["Ann Lee"]  # page links drop it: put back
    at.button(key=K.assign_btn).click().run()
    assert set(LabelStore(ws.labels_db).current(FIELD)["annotator"]) == {"Ann Lee"}
    # a reload (new session) with the URL's name needs no prompt
    again = AppTest.from_file(APP, default_timeout=60)
    again.query_params[QUERY_ANNOTATOR] = "Ann Lee"
    again.run()
    assert again.header[0].value == "Overview"


def test_source_photo_of_a_face(ws):
    from PIL import Image

    fid = members(ws, biggest_cluster(ws))[0]
    sp = photos.source_photo(ws, fid)
    assert sp is not None and sp.path.endswith(".jpg") and Path(sp.path).exists()
    assert sp.whole_image and sp.rotation == 0 and sp.detector == "synthetic"
    img = np.asarray(Image.open(io.BytesIO(sp.jpeg)).convert("RGB"))
    assert img.shape[:2] == (sp.height, sp.width)
    # the box is drawn in green along the photo's border (the synthetic face is the whole image)
    assert img[0, img.shape[1] // 2, 1] > 200 and img[0, img.shape[1] // 2, 0] < 80
    assert photos.source_photo(ws, "nope_0") is None
    # drawing: box outline and landmark dots on a grey picture
    out = photos.draw_face(np.full((100, 200, 3), 128, np.uint8), (20, 10, 80, 90),
                         np.array([[40, 40], [60, 40], [50, 55], [50, 70]]))  # fmt: skip
    assert tuple(out[10, 50]) == (0, 255, 64) and tuple(out[50, 150]) == (128, 128, 128)
    assert tuple(out[40, 40]) == (0, 255, 64)
    # the grid's photo button opens it without an error
    at = open_page("views/cluster_view.py")
    at.selectbox(key=K.cluster_pick).set_value(biggest_cluster(ws)).run()
    photo_btn = [b for b in at.button if b.key.startswith("photo_")][0]
    photo_btn.click().run()
    assert not at.exception  # (the dialog itself is checked in the browser test)
    assert at.session_state[K.inspect] == photo_btn.key.rsplit(SELECT_PREFIX, 1)[1]


def shown_faces(at: AppTest, columns: int = 8) -> list[str]:
    """The cluster grid's faces in display order (row by row: the grid fills its columns in
    turn, so the element tree lists them column by column)."""
    tree = [cb.key[len(SELECT_PREFIX) :] for cb in at.checkbox if cb.key.startswith(SELECT_PREFIX)]
    n = len(tree)
    order = [i for j in range(columns) for i in range(j, n, columns)]  # tree slot -> place
    out = [""] * n
    for slot, place in enumerate(order):
        out[place] = tree[slot]
    return out


def test_keyboard_buttons_pick_label_tick_and_move(ws):
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    ids = shown_faces(at)
    assert set(ids) == set(members(ws, c))
    at.button(key=f"{K.value_key_btn}5").click().run()  # key 5: the fifth value
    assert at.selectbox(key=K.assign_value).value == "no_mask"
    at.button(key=K.cursor_tick_btn).click().run()  # Space: untick the first face, move on
    at.button(key=K.cursor_next_btn).click().run()  # Right: skip one
    at.button(key=K.cursor_tick_btn).click().run()  # Space: untick the third face
    at.button(key=K.cursor_prev_btn).click().run()  # Left, Left: on the second face
    at.button(key=K.cursor_prev_btn).click().run()
    at.button(key=K.cursor_tick_btn).click().run()  # Space: untick it
    boxes = [at.checkbox(key=SELECT_PREFIX + f).value for f in ids[:4]]
    assert boxes == [False, False, False, True]
    for _ in range(3):
        at.button(key=K.cursor_prev_btn).click().run()  # Left stops at the first face
    at.button(key=K.cursor_tick_btn).click().run()  # Space: tick the first face again
    assert at.checkbox(key=SELECT_PREFIX + ids[0]).value
    at.button(key=K.assign_btn).click().run()  # Enter
    got = labels_now(ws)
    assert set(got) == set(members(ws, c)) - {ids[1], ids[2]}
    assert set(got.values()) == {"no_mask"}


def test_range_ticks_and_bigger_pages(ws):
    at = open_page("views/cluster_view.py")
    c = biggest_cluster(ws)
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    ids = shown_faces(at)
    at.toggle(key=K.range_ticks).set_value(True).run()
    at.checkbox(key=SELECT_PREFIX + ids[2]).uncheck().run()
    at.checkbox(key=SELECT_PREFIX + ids[7]).uncheck().run()  # unticks 2..7 in two clicks
    ticks = [at.checkbox(key=SELECT_PREFIX + f).value for f in ids[:10]]
    assert ticks == [True, True] + [False] * 6 + [True, True]
    at.checkbox(key=SELECT_PREFIX + ids[5]).check().run()  # ticks 5..7 back (from 7)
    ticks = [at.checkbox(key=SELECT_PREFIX + f).value for f in ids[:10]]
    assert ticks == [True, True, False, False, False, True, True, True, True, True]
    at.button(key=K.assign_btn).click().run()
    assert set(labels_now(ws)) == set(members(ws, c)) - set(ids[2:5])


def test_page_size(tmp_path, monkeypatch):
    big = synthetic_workspace(tmp_path / "big", n_faces=300, n_clusters=1, seed=3)
    monkeypatch.setenv(ENV_WORKSPACE, str(big.root))
    monkeypatch.setenv(ENV_ANNOTATOR, "tester")
    at = open_page("views/cluster_view.py")
    boxes = lambda: [cb for cb in at.checkbox if cb.key.startswith(SELECT_PREFIX)]  # noqa: E731
    assert len(boxes()) == 48
    at.selectbox(key=K.page_size).set_value(192).run()
    assert not at.exception and len(boxes()) == 192
    # the page size (and the label picked) come back after another page ran
    at.selectbox(key=K.assign_value).set_value("on_chin").run()
    at.switch_page("views/overview.py").run()
    at.switch_page("views/cluster_view.py").run()
    assert not at.exception and len(boxes()) == 192
    assert at.selectbox(key=K.assign_value).value == "on_chin"


def test_more_like_this_hides_labeled_faces(ws):
    c = biggest_cluster(ws)
    ids = members(ws, c)
    LabelStore(ws.labels_db).assign(ids[1:], FIELD, "correct", annotator="x", source="selection")
    at = open_page("views/cluster_view.py")
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    at.selectbox(key=K.knn_face).set_value(ids[0]).run()
    at.button(key=K.knn_btn).click().run()
    near = [cb.key[len(KNN_PREFIX) :] for cb in at.checkbox if cb.key.startswith(KNN_PREFIX)]
    assert near and not set(near) & set(ids[1:])  # none of the labeled ones
    at.toggle(key=K.knn_show_labeled).set_value(True).run()
    near = [cb.key[len(KNN_PREFIX) :] for cb in at.checkbox if cb.key.startswith(KNN_PREFIX)]
    assert set(near) & set(ids[1:])


def test_overview_counts_each_face_once(ws):
    ids = members(ws, biggest_cluster(ws))
    store = LabelStore(ws.labels_db)
    for _ in range(3):  # the same faces labeled again and again
        store.assign(ids, FIELD, "correct", annotator="ann", source="selection")
    store.assign(ids[:2], FIELD, "no_mask", annotator="bob", source="selection")
    store.assign(ids[:1], "gender", "female", annotator="ann", source="selection")
    act = data.annotator_activity(store.activity(), store.current()).set_index("annotator")
    assert act.loc["ann", "faces"] == len(ids) - 1  # the two bob relabeled... one back by gender
    assert act.loc["bob", "faces"] == 2
    assert act["faces"].sum() <= len(ids) + 1
    at = open_page(PAGES[0])
    table = next(d.value for d in at.dataframe if "annotator" in d.value.columns)
    table = table.set_index("annotator")
    assert table.loc["ann", "faces"] == len(ids) - 1


def test_map_selection_summary_counts_faces_not_drawn():
    clusters = np.array([0, 0, 0, -1, -1, 1])
    labels = np.array(["a", "a", "(unlabeled)", "(unlabeled)", "b", "a"], dtype=object)
    info = chart.selection_summary(np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2]), clusters, labels)
    assert info["total"] == 5 and info["drawn"] == 3 and info["hidden"] == 2
    assert info["by_cluster"] == {"cluster 0": 3, "noise": 2}
    assert info["by_label"] == {"a": 2, "(unlabeled)": 2, "b": 1}


def test_map_takes_only_the_clusters_kept(ws):
    run = cluster_store.load_run(ws)
    c = biggest_cluster(ws)
    rows = np.flatnonzero((run.labels == c) | (run.labels != c))[:40]  # several clusters
    at = open_page("views/map.py")
    at.session_state[K.map_selection] = rows
    at.run()
    keep = [(cl, n) for cl, n in at.multiselect(key=K.map_clusters).value if cl == c]
    at.multiselect(key=K.map_clusters).set_value(keep).run()
    at.button(key=K.map_assign_btn).click().run()
    assert not at.exception
    want = {str(f) for f in run.face_ids[rows[run.labels[rows] == c]]}
    assert set(labels_now(ws)) == want


def test_settings_show_an_example_face_per_value(ws):
    ids = members(ws, biggest_cluster(ws))
    LabelStore(ws.labels_db).assign(ids, FIELD, "on_chin", annotator="x", source="selection")
    assert data.examples(ws, FIELD) == {"on_chin": min(ids)}
    at = open_page("views/settings.py")
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "mask pulled down below the mouth" in text
    assert "optional — optional" not in text and "(optional)" in text


def test_thumbnail_sheets_put_each_face_in_its_cell():
    from PIL import Image

    def jpeg(v: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (v, 255 - v, 40)).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    faces = [jpeg(v) for v in range(0, 250, 10)] + [None, b"not an image"]  # 25 + 2
    ts = chart.thumbnail_sheets(faces, cell=16, cols=4)
    assert ts.per_sheet == 16 and len(ts.sheets) == 2
    first = np.asarray(Image.open(io.BytesIO(ts.sheets[0])).convert("RGB"), np.int32)
    second = np.asarray(Image.open(io.BytesIO(ts.sheets[1])).convert("RGB"), np.int32)
    assert first.shape == (64, 64, 3) and second.shape == (48, 64, 3)  # 11 faces: 3 rows
    for k in (0, 5, 15, 17, 24):
        sheet, j = (first, k) if k < 16 else (second, k - 16)
        y, x = (j // 4) * 16 + 8, (j % 4) * 16 + 8
        assert abs(sheet[y, x, 0] - 10 * k) < 12, k  # the k-th face, in row-major order
    assert np.abs(second[8 + 16 * 2, 8 + 16 * 1] - 200).max() < 12  # None: a grey cell
    assert np.abs(second[8 + 16 * 2, 8 + 16 * 2] - 200).max() < 12  # undecodable: grey
    with pytest.raises(ValueError, match="cell"):
        chart.thumbnail_sheets(faces, cell=4)
    # sheets made on threads, each face read there by `read`: the same bytes as one thread
    by_id = dict(enumerate(faces))
    threads = chart.thumbnail_sheets(list(by_id), cell=16, cols=2, read=by_id.get, workers=3)
    one = chart.thumbnail_sheets(faces, cell=16, cols=2, workers=1)
    assert len(one.sheets) == 7 and threads == one


def test_the_maps_crop_reader_reads_only_inside_the_workspace(ws, tmp_path, caplog):
    """The map's thumbnails read 20,000 crops; the reader resolves each crop folder once, and
    still refuses a crop (or a crop folder) that links outside the workspace."""
    faces = ws.faces()["face_id"].astype(str).tolist()
    with_crop = [f for f in faces if ws.crop_path(f).exists()]
    a, b, c = with_crop[:3]
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(ws.crop_path(b).read_bytes())
    ws.crop_path(b).unlink()
    ws.crop_path(b).symlink_to(secret)  # a crop linked outside the workspace
    inner = ws.crop_path(c).with_name("inner.jpg")
    inner.write_bytes(ws.crop_path(c).read_bytes())
    ws.crop_path(c).unlink()
    ws.crop_path(c).symlink_to(inner)  # a crop linked inside: fine
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "zz_0.jpg").write_bytes(secret.read_bytes())
    (ws.crops_dir / "zz").symlink_to(outside)  # a whole crop folder linked outside
    read = chart.crop_reader(ws)
    assert read(a) == ws.crop_path(a).read_bytes()
    assert read(c) == inner.read_bytes()
    assert read(b) is None and read("zz_0") is None
    assert read("no_such_face") is None  # no file: None, no error
    refused = [r.getMessage() for r in caplog.records if "refused to read" in r.getMessage()]
    assert len(refused) == 2
    # the same answers as the workspace's own check, face by face
    for f in (a, b, c, "zz_0"):
        try:
            ws.resolve_inside(ws.crop_path(f))
            assert read(f) is not None
        except PermissionError:
            assert read(f) is None


def test_map_points_carry_their_row_and_thumbnail_cell(ws):
    view = data.run_view(ws)
    fig = chart.map_figure(ws, "mask_state", "cluster")
    for trace, rows in zip(fig.figure["data"], fig.trace_rows, strict=True):
        cd = np.asarray(trace["customdata"])
        assert cd[:, 0].tolist() == rows.tolist()  # a click selects the run row
        assert view.sample[cd[:, 1]].tolist() == rows.tolist()  # the cell shows that face
    ts = chart.map_thumbs(ws)
    assert len(ts.sheets) == -(-len(view.sample) // ts.per_sheet)
    # the page sends the figure checked once (a go.Figure, kept with the cached figure): the
    # browser gets the very spec the dict gives when plotly checks it on every rerun
    import plotly.io
    import plotly.tools

    def spec(figure) -> str:
        return plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(figure, True))

    again = chart.map_figure(ws, "mask_state", "cluster")
    assert again is fig and again.plotly is fig.plotly  # cached: checked once
    assert spec(fig.plotly) == spec(fig.figure)


# --- issue 31: two annotators at once, nothing lost ------------------------------------------


def _as(monkeypatch, name: str, page: str) -> AppTest:
    """A session of annotator ``name`` on ``page`` (the name stays with the session)."""
    monkeypatch.setenv(ENV_ANNOTATOR, name)
    return open_page(page)


def _bea_labels(ws, faces: list[str], value: str = "correct") -> None:
    LabelStore(ws.labels_db).assign(faces, FIELD, value, annotator="Bea", source="selection")


def _who(ws) -> dict[str, tuple[str, str]]:
    cur = LabelStore(ws.labels_db).current(FIELD)
    return {r.face_id: (r.value, r.annotator) for r in cur.itertuples()}


def _told(at: AppTest) -> str:
    return " ".join(m.value for m in [*at.warning, *at.success, *at.info, *at.error])


def test_the_rest_leaves_faces_labeled_meanwhile(ws, monkeypatch):
    """Ann's "Assign ... to the rest" was drawn before Bea labeled 3 of those faces: Bea's
    labels stay, the other faces get Ann's, and Ann's page says how many were left and whose."""
    c = biggest_cluster(ws)
    ids = members(ws, c)
    ann = _as(monkeypatch, "Ann", "views/cluster_view.py")
    ann.selectbox(key=K.cluster_pick).set_value(c).run()
    ann.button(key=K.select_none_btn).click().run()  # every face unticked: all are "the rest"
    ann.selectbox(key=K.assign_value).set_value("no_mask").run()
    assert ann.button(key=K.rest_btn).label.endswith(f"{len(ids)} unticked unlabeled faces")
    _bea_labels(ws, ids[:3])  # meanwhile, in another browser
    ann.button(key=K.rest_btn).click().run()
    assert not ann.exception
    now = _who(ws)
    assert {f: now[f] for f in ids[:3]} == dict.fromkeys(ids[:3], ("correct", "Bea"))
    assert {f: now[f] for f in ids[3:]} == dict.fromkeys(ids[3:], ("no_mask", "Ann"))
    told = _told(ann)
    assert f"Labeled {len(ids) - 3} faces" in told
    assert "3 faces were labeled correct by Bea meanwhile and were left as they are" in told


def test_enter_leaves_faces_labeled_meanwhile_and_says_so(ws, monkeypatch):
    """Enter on a page drawn before Bea (her own session) labeled 2 of the ticked faces: her
    labels stay, and the count differs from the button's with the reason on the page."""
    c = biggest_cluster(ws)
    ann = _as(monkeypatch, "Ann", "views/cluster_view.py")
    ann.selectbox(key=K.cluster_pick).set_value(c).run()
    ids = shown_faces(ann)
    n = len(members(ws, c))
    assert ann.button(key=K.assign_btn).label == f"Assign 'correct' to {n} unlabeled faces"
    bea = _as(monkeypatch, "Bea", "views/cluster_view.py")
    bea.selectbox(key=K.cluster_pick).set_value(c).run()
    bea.button(key=K.select_none_btn).click().run()
    for f in ids[:2]:
        bea.checkbox(key=SELECT_PREFIX + f).check().run()
    bea.selectbox(key=K.assign_value).set_value("no_mask").run()
    bea.button(key=K.assign_btn).click().run()
    ann.button(key=K.assign_btn).click().run()  # Enter, on the page drawn before
    assert not ann.exception
    now = _who(ws)
    assert {f: now[f] for f in ids[:2]} == dict.fromkeys(ids[:2], ("no_mask", "Bea"))
    assert sum(v == ("correct", "Ann") for v in now.values()) == n - 2
    told = _told(ann)
    assert f"Labeled {n - 2} faces" in told
    assert "2 faces were labeled no_mask by Bea meanwhile and were left as they are" in told


def test_relabel_names_the_owner_and_leaves_faces_changed_meanwhile(ws, monkeypatch):
    """The explicit Relabel says whose labels it replaces; pressed after Bea relabeled 2 of
    them, it changes only the faces still as the page showed them."""
    c = biggest_cluster(ws)
    ids = members(ws, c)
    LabelStore(ws.labels_db).assign(ids, FIELD, "correct", annotator="Pat", source="cluster")
    ann = _as(monkeypatch, "Ann", "views/cluster_view.py")
    ann.selectbox(key=K.cluster_pick).set_value(c).run()
    ann.selectbox(key=K.assign_value).set_value("no_mask").run()
    relabel = ann.button(key=K.relabel_btn)
    assert relabel.label == f"Relabel {len(ids)} faces now correct by Pat as 'no_mask'"
    _bea_labels(ws, ids[:2], "on_chin")
    relabel.click().run()
    now = _who(ws)
    assert {f: now[f] for f in ids[:2]} == dict.fromkeys(ids[:2], ("on_chin", "Bea"))
    assert {f: now[f] for f in ids[2:]} == dict.fromkeys(ids[2:], ("no_mask", "Ann"))
    told = _told(ann)
    assert f"{len(ids) - 2} faces of them relabeled" in told
    assert "2 faces were labeled on_chin by Bea meanwhile and were left as they are" in told


def test_more_like_this_leaves_faces_labeled_meanwhile(ws, monkeypatch):
    c = biggest_cluster(ws)
    ann = _as(monkeypatch, "Ann", "views/cluster_view.py")
    ann.selectbox(key=K.cluster_pick).set_value(c).run()
    query = ann.selectbox(key=K.knn_face).value
    ann.number_input(key=K.knn_k).set_value(8).run()
    ann.button(key=K.knn_btn).click().run()
    near = [cb.key[len(KNN_PREFIX) :] for cb in ann.checkbox if cb.key.startswith(KNN_PREFIX)]
    assert len(near) == 8 and ann.button(key=K.knn_assign_btn).label.endswith("9 unlabeled faces")
    _bea_labels(ws, near[:2])
    ann.button(key=K.knn_assign_btn).click().run()
    now = _who(ws)
    assert {f: now[f] for f in near[:2]} == dict.fromkeys(near[:2], ("correct", "Bea"))
    assert {f: now[f] for f in [query, *near[2:]]} == dict.fromkeys(
        [query, *near[2:]], ("correct", "Ann")
    )
    assert "2 faces were labeled correct by Bea meanwhile" in _told(ann)


def test_map_assign_leaves_faces_labeled_meanwhile(ws, monkeypatch):
    run = cluster_store.load_run(ws)
    rows = np.flatnonzero(run.labels == biggest_cluster(ws))
    ids = [str(f) for f in run.face_ids[rows]]
    ann = _as(monkeypatch, "Ann", "views/map.py")
    ann.session_state[K.map_selection] = rows  # what a lasso leaves (see the test above)
    ann.run()
    ann.selectbox(key=K.assign_value).set_value("no_mask").run()
    assert ann.button(key=K.map_assign_btn).label == (
        f"Assign 'no_mask' to {len(ids)} unlabeled faces"
    )
    _bea_labels(ws, ids[:3])
    ann.button(key=K.map_assign_btn).click().run()
    assert not ann.exception
    now = _who(ws)
    assert {f: now[f] for f in ids[:3]} == dict.fromkeys(ids[:3], ("correct", "Bea"))
    assert {f: now[f] for f in ids[3:]} == dict.fromkeys(ids[3:], ("no_mask", "Ann"))
    told = _told(ann)
    assert f"Labeled {len(ids) - 3} faces" in told
    assert "3 faces were labeled correct by Bea meanwhile and were left as they are" in told


def test_the_label_picked_comes_back_after_the_map(ws):
    """The Map draws the label picker with the same key as the Cluster view: the label the
    annotator picked comes back on either page (it fell back to the first value)."""
    at = open_page("views/cluster_view.py")
    at.selectbox(key=K.assign_value).set_value("on_chin").run()
    at.switch_page("views/map.py").run()
    assert at.selectbox(key=K.assign_value).value == "on_chin"
    at.selectbox(key=K.assign_value).set_value("no_mask").run()
    at.switch_page("views/cluster_view.py").run()
    assert at.selectbox(key=K.assign_value).value == "no_mask"
    assert at.button(key=K.assign_btn).label.startswith("Assign 'no_mask' to ")


def test_not_a_face_never_carries_into_the_next_cluster(ws):
    """After "the rest" with *not a face*, the next cluster opens with the last other label
    picked, never "Assign 'not a face' to N unlabeled faces" as the primary action."""
    c = biggest_cluster(ws)
    other = next(x for x in (0, 1, 2) if x != c)
    at = open_page("views/cluster_view.py")
    at.selectbox(key=K.cluster_pick).set_value(c).run()
    at.button(key=f"{K.value_key_btn}5").click().run()  # no_mask
    at.button(key=K.select_none_btn).click().run()
    at.button(key=f"{K.value_key_btn}0").click().run()  # not a face
    assert "not a face" in at.button(key=K.rest_btn).label
    at.button(key=K.rest_btn).click().run()
    assert set(labels_now(ws).values()) == {"not_a_face"}
    assert at.selectbox(key=K.assign_value).value == "not_a_face"  # same cluster: kept
    at.selectbox(key=K.cluster_pick).set_value(other).run()
    assert at.selectbox(key=K.assign_value).value == "no_mask"
    assert at.button(key=K.assign_btn).label.startswith("Assign 'no_mask' to ")
    at.switch_page("views/overview.py").run()  # nor through another page
    at.switch_page("views/cluster_view.py").run()
    assert at.selectbox(key=K.assign_value).value == "no_mask"


def test_every_page_writes_labels_through_the_one_checked_helper():
    """No page can miss the check: in labeler/ui only components.write_plan writes labels
    (LabelStore.assign_checked); no module calls LabelStore.assign / accept (a DataFrame's
    keyword-only .assign is fine)."""
    import ast

    ui_dir = Path(ui.__file__).parent
    writers = {}
    for path in sorted(ui_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name == "assign_checked" or (name in ("assign", "accept") and node.args):
                writers.setdefault(name, []).append(f"{path.relative_to(ui_dir)}:{node.lineno}")
    assert set(writers) == {"assign_checked"}, writers
    assert [w.split(":")[0] for w in writers["assign_checked"]] == ["components.py"]
