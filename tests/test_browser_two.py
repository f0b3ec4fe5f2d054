"""Two annotators at once in real browsers (issue 31): annotator A's page is drawn, annotator
B labels some of its faces in another browser, then A presses. Every bulk path (Cluster
view Enter, "the rest", More like this, the Map's lasso, Review's Accept) leaves B's labels
as B set them and tells A how many and whose. Also: Enter in the More like this panel acts
on the panel, the Map has Undo, the label picker survives the Map, and 'not a face' never
carries into the next cluster.

`labeler app` on a real workspace (mfr2, built by 'labeler run'), two Chromium contexts (two
browsers: separate cookies and sessions). Needs Debian's chromium and playwright; skips
cleanly otherwise.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from appserver import running_app
from appserver import settle as _settle
from test_browser import _browser, _lasso, _need_browser, _open_cluster, _picked

from labeler.labels import LabelStore

pytestmark = pytest.mark.browser

FIELD = "mask_state"
KEY = {"correct": "1", "no_mask": "5"}  # the picker's number keys (mfr2's schema order)
MEANWHILE = r"{n} faces? (?:was|were) labeled no_mask by bea meanwhile and (?:was|were) left"


@pytest.fixture(scope="module")
def mfr2_ws(tmp_path_factory):
    _need_browser()
    from conftest import shared_dataset

    from labeler.cluster.types import ClusterConfig
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    data = shared_dataset("mfr2")
    ws = Workspace.open(tmp_path_factory.mktemp("two") / "ws", create=True)
    # six groups of about 45 faces (the default makes two of mfr2's 269): a page each path
    run_pipeline(
        data / "images", ws, config=RunConfig(device="cpu", cluster=ClusterConfig(n_clusters=6))
    )
    return ws


def _ids(page, prefix: str) -> list[tuple[str, bool]]:
    """(face id, ticked) of the checkboxes keyed ``prefix + face_id`` on the page, in order."""
    return page.evaluate(
        """(prefix) => [...document.querySelectorAll(`[class*='st-key-${prefix}']`)]
            .filter(e => e.querySelector('input[type=checkbox]'))
            .map(e => [[...e.classList].find(c => c.startsWith('st-key-' + prefix))
                       .slice(7 + prefix.length), e.querySelector('input').checked])""",
        prefix,
    )


def _b_labels(page, url: str, cluster: int, faces: list[str]) -> None:
    """Annotator B, in her own browser: the cluster's grid, only ``faces`` ticked, no_mask,
    Enter."""
    from playwright.sync_api import expect

    _open_cluster(page, url, cluster)
    page.locator(".st-key-select_none_btn button").click()
    _settle(page)
    for f in faces:
        page.locator(f".st-key-sel_{f} label").click()
        _settle(page, 200)
    page.keyboard.press(KEY["no_mask"])
    _settle(page)
    _enter(page)
    expect(page.get_by_text(f"Labeled {len(faces)} faces mask_state=no_mask")).to_be_visible(
        timeout=30_000
    )


def _enter(page) -> None:
    """Enter as a key shortcut (nothing focused: a focused button would take it)."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.keyboard.press("Enter")


def _told(page, n_changed: int, n_meanwhile: int, shot: Path | None = None) -> None:
    """A's page says what happened: the count changed, and B's faces left as they are."""
    from playwright.sync_api import expect

    said = page.get_by_text(re.compile(MEANWHILE.format(n=n_meanwhile)))
    expect(said.first).to_be_visible(timeout=30_000)
    text = said.first.inner_text()
    if n_changed:
        assert re.search(rf"(Labeled|Accepted) {n_changed} faces?", text), text
    if shot is not None:
        page.screenshot(path=str(shot))


def _by_bea(store: LabelStore, faces: list[str]) -> bool:
    cur = store.current(FIELD).set_index("face_id")
    return all(cur.at[f, "value"] == "no_mask" and cur.at[f, "annotator"] == "bea" for f in faces)


def test_two_annotators_every_bulk_path_leaves_the_other_s_labels(mfr2_ws, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from labeler.cluster import store as cluster_store
    from labeler.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(mfr2_ws.root, root)
    ws = Workspace.open(root)
    run = cluster_store.load_run(ws)
    ids, counts = np.unique(run.labels[run.labels >= 0], return_counts=True)
    by_size = [int(c) for c in ids[np.argsort(-counts)]]
    assert len(by_size) >= 6, by_size
    store = LabelStore(ws.labels_db)
    timings: dict[str, float] = {}
    with running_app(root) as (url, _proc), sync_playwright() as p:
        browser = _browser(p)
        pages = {}
        for who in ("ann", "bea"):
            ctx = browser.new_context(viewport={"width": 1500, "height": 1100})
            page = ctx.new_page()
            page.goto(f"{url}/?annotator={who}", wait_until="domcontentloaded")
            page.get_by_role("heading").first.wait_for(timeout=60_000)
            _settle(page, 500)
            pages[who] = page
        a, b = pages["ann"], pages["bea"]

        # 1. Cluster view, Enter: A's grid drawn (every face ticked, 'correct' picked)
        c = by_size[0]
        _open_cluster(a, url, c)
        a.keyboard.press(KEY["correct"])
        _settle(a)
        shown = [f for f, ticked in _ids(a, "sel_") if ticked]
        n_button = int(re.search(r"to (\d+) unlabeled", a.locator(".st-key-assign_btn button")
                                 .inner_text()).group(1))  # fmt: skip
        theirs = shown[2:7]
        _b_labels(b, url, c, theirs)
        t0 = time.perf_counter()
        _enter(a)
        _told(a, n_button - len(theirs), len(theirs), tmp_path / "enter.png")
        timings["cluster view Enter"] = time.perf_counter() - t0
        assert _by_bea(store, theirs)

        # 2. "the rest": A unticks everything, picks 'correct'; B labels 4; A presses
        c = by_size[1]
        _open_cluster(a, url, c)
        a.locator(".st-key-select_none_btn button").click()
        _settle(a)
        a.keyboard.press(KEY["correct"])
        _settle(a)
        rest = a.locator(".st-key-rest_btn button").first
        n_rest = int(re.search(r"the rest: (\d+) unticked", rest.inner_text()).group(1))
        theirs = [f for f, _ in _ids(a, "sel_")][:4]
        _b_labels(b, url, c, theirs)
        t0 = time.perf_counter()
        rest.click()
        _told(a, n_rest - len(theirs), len(theirs), tmp_path / "rest.png")
        timings["the rest"] = time.perf_counter() - t0
        assert _by_bea(store, theirs)

        # 3. More like this: Enter acts on the panel's neighbours, not the grid behind it
        c = by_size[2]
        _open_cluster(a, url, c)
        grid = [f for f, _ in _ids(a, "sel_")]
        a.get_by_text("More like this").click()
        _settle(a)
        find = a.locator(".st-key-knn_btn button")
        find.evaluate("e => e.scrollIntoView({block: 'center'})")  # as one looks at the panel
        find.click()
        _settle(a, 800)
        near = [f for f, ticked in _ids(a, "near_") if ticked]
        knn_btn = a.locator(".st-key-knn_assign_btn button")
        expect(knn_btn).to_be_in_viewport(timeout=30_000)  # the count it states is in view
        n_knn = int(re.search(r"to (\d+) unlabeled", knn_btn.inner_text()).group(1))
        theirs = [f for f in near if f in grid][:3]
        assert len(theirs) == 3, (near, grid)
        before = store.current_values(FIELD)
        _b_labels(b, url, c, theirs)
        t0 = time.perf_counter()
        _enter(a)  # the panel is open: its Enter
        _told(a, n_knn - len(theirs), len(theirs), tmp_path / "knn.png")
        timings["More like this"] = time.perf_counter() - t0
        assert _by_bea(store, theirs)
        after = store.current_values(FIELD)
        changed = {f for f in after if after[f] != before.get(f)} - set(theirs)
        assert changed <= set(near) | {grid[0]}, "Enter labeled faces outside the panel"
        assert len(changed) == n_knn - len(theirs)

        # 4. Map: lasso everything; B labels 5; A presses Enter; then the Map's own Undo
        c = by_size[3]
        a.get_by_role("link", name="Map").click()
        a.get_by_role("heading", name="Map").wait_for(timeout=60_000)
        _settle(a, 1500)
        expect(_picked(a)).to_have_value("correct")  # the picker survived the trip
        plot = a.locator(".js-plotly-plot .nsewdrag").first
        _lasso(a, plot, [(0.01, 0.01), (0.99, 0.01), (0.99, 0.99), (0.01, 0.99)])
        expect(a.get_by_text(re.compile(r"^\d+ faces? selected"))).to_be_visible(timeout=30_000)
        _settle(a, 800)
        map_btn = a.locator(".st-key-map_assign_btn button")
        n_map = int(re.search(r"to (\d+) unlabeled", map_btn.inner_text()).group(1))
        members = [str(f) for f in run.face_ids[run.labels == c]]
        unlabeled = [f for f in members if f not in store.current_values(FIELD)]
        _open_cluster(b, url, c)
        theirs = [f for f, _ in _ids(b, "sel_") if f in unlabeled][:5]
        _b_labels(b, url, c, theirs)
        before = store.current_values(FIELD)
        t0 = time.perf_counter()
        _enter(a)
        _told(a, n_map - len(theirs), len(theirs), tmp_path / "map.png")
        timings["Map"] = time.perf_counter() - t0
        assert _by_bea(store, theirs)
        after = store.current_values(FIELD)
        assert {f: v for f, v in after.items() if f in before} == before  # nobody relabeled
        a.locator(".st-key-undo_btn button").click()
        expect(a.get_by_text(re.compile(r"Undid event \d+"))).to_be_visible(timeout=30_000)
        assert store.current_values(FIELD) == before  # exact, and B's 5 stay
        assert _by_bea(store, theirs)

        # 5. Review: both open the same suggestion group; B accepts 3 of its faces; A accepts
        a.get_by_role("link", name="Review").click()
        a.get_by_role("heading", name="Review").wait_for(timeout=60_000)
        a.get_by_role("button", name=re.compile("Suggest")).click()
        expect(a.get_by_text(re.compile(r"In cross-validation \d+ ?% of faces"))).to_be_visible(
            timeout=120_000
        )
        _settle(a, 800)
        b.get_by_role("link", name="Review").click()
        b.get_by_role("heading", name="Review").wait_for(timeout=60_000)
        expect(b.get_by_text(re.compile(r"In cross-validation \d+ ?% of faces"))).to_be_visible(
            timeout=60_000
        )
        _settle(b, 800)
        rv = _ids(a, "rv_")
        assert rv == _ids(b, "rv_")  # the same group, the same faces
        for f, ticked in rv:  # A ticks every face of the group
            if not ticked:
                a.locator(f".st-key-rv_{f} label").click()
                _settle(a, 200)
        for f, ticked in _ids(b, "rv_")[3:]:  # B keeps 3 ticked
            if ticked:
                b.locator(f".st-key-rv_{f} label").click()
                _settle(b, 200)
        for f, ticked in _ids(b, "rv_")[:3]:
            if not ticked:
                b.locator(f".st-key-rv_{f} label").click()
                _settle(b, 200)
        accept_b = b.get_by_role("button", name=re.compile(r"^Accept 3 ticked as"))
        value = re.search(r"ticked as (\S+)", accept_b.inner_text()).group(1)
        accept_b.click()
        expect(b.get_by_text(re.compile(r"Accepted 3 faces as"))).to_be_visible(timeout=30_000)
        theirs = [f.split("_", 1)[1] for f, _ in rv[:3]]
        accept_a = a.get_by_role("button", name=re.compile(r"^Accept \d+ ticked as"))
        n_a = int(re.search(r"Accept (\d+)", accept_a.inner_text()).group(1))
        t0 = time.perf_counter()
        accept_a.click()
        said = a.get_by_text(re.compile(rf"3 faces were labeled {value} by bea meanwhile"))
        expect(said.first).to_be_visible(timeout=30_000)
        timings["Review Accept"] = time.perf_counter() - t0
        assert re.search(rf"Accepted {n_a - 3} faces?", said.first.inner_text())
        a.screenshot(path=str(tmp_path / "review.png"))
        cur = store.current(FIELD).set_index("face_id")
        assert set(cur.loc[theirs, "annotator"]) == {"bea"}

        # 6. 'not a face' stays with its cluster: the next one opens with the last other value
        _open_cluster(a, url, by_size[4])
        a.keyboard.press("0")
        _settle(a)
        expect(_picked(a)).to_have_value("not a face")
        assert "not a face" in a.locator(".st-key-assign_btn button").inner_text()
        _open_cluster(a, url, by_size[5])
        expect(_picked(a)).not_to_have_value("not a face")
        assert "not a face" not in a.locator(".st-key-assign_btn button").inner_text()
        browser.close()
    for name, shot in (("enter", "enter.png"), ("map", "map.png"), ("review", "review.png")):
        assert (tmp_path / shot).stat().st_size > 10_000, name
    print("click to message shown (s):", {k: round(v, 2) for k, v in timings.items()})
