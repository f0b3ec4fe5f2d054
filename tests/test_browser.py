"""The app in a real browser: `labeler app` in a subprocess, driven by headless Chromium.

Needs Debian's chromium (`apt-get install chromium`) and the playwright python package; skips
cleanly otherwise (never downloads a browser). Every server is stopped by
:func:`appserver.running_app`, also when a test fails. With LABELER_UPDATE_SCREENSHOT set,
the screenshots are copied to docs/ (the README's and docs/APP.md's pictures).

* ``test_bulk_label_a_cluster_in_chromium``: untick an outlier, assign, lasso on the map.
* ``test_annotator_needs_in_chromium`` (issue 15, items 1-5): the name asked once per browser,
  the source photo of a sideways selfie (and selfies stored sideways / upside down found
  upright), keyboard labeling, range ticks, a dropdown opened by the first click after a
  checkbox, the map's hover (the face's thumbnail, cluster and label), legend and lasso
  summary.
* ``test_scripted_annotator_labels_mfr2`` (slow): labels all of ../shared/data/mfr2 through
  the UI and reports clicks per face.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from appserver import running_app
from appserver import settle as _settle
from synthetic import synthetic_workspace

from labeler.labels import LabelStore

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"
FIELD = "mask_state"


def _need_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")


def _keep(shot: Path, name: str) -> None:
    """Copy a screenshot to docs/ when asked (LABELER_UPDATE_SCREENSHOT)."""
    assert shot.stat().st_size > 10_000
    if os.environ.get("LABELER_UPDATE_SCREENSHOT"):
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / name)


@pytest.fixture
def synthetic_app(tmp_path):
    _need_browser()
    ws = synthetic_workspace(tmp_path / "ws", n_faces=72, n_clusters=4, seed=1)
    with running_app(ws.root, env={"LABELER_ANNOTATOR": "browser"}) as (url, _proc):
        yield ws, url


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def test_bulk_label_a_cluster_in_chromium(synthetic_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ws, url = synthetic_app
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/cluster_view", wait_until="domcontentloaded")
        assign = page.get_by_role("button", name=re.compile(r"^Assign 'correct' to \d+ unlabeled"))
        expect(assign).to_be_visible(timeout=60_000)
        n = int(re.search(r"to (\d+) unlabeled", assign.inner_text()).group(1))
        # click the last face out of the selection (an outlier), then label the rest
        page.locator("[class*='st-key-sel_'] label").last.click()
        expect(page.get_by_text(f"{n - 1} of {n} faces selected")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name=re.compile(r"^Assign 'correct' to \d+ unlabeled")).click()
        expect(
            page.get_by_text(re.compile(rf"Labeled {n - 1} faces mask_state=correct"))
        ).to_be_visible(timeout=30_000)
        cur = LabelStore(ws.labels_db).current(FIELD)
        assert len(cur) == n - 1
        assert set(cur["value"]) == {"correct"} and set(cur["annotator"]) == {"browser"}
        assert set(cur["source"]) == {"selection"}
        page.mouse.wheel(0, -5000)
        page.wait_for_timeout(1500)  # let the thumbnails settle
        shot = tmp_path / "screenshot.png"
        page.screenshot(path=str(shot))
        page.goto(url + "/", wait_until="domcontentloaded")
        expect(page.get_by_text(re.compile(rf"mask_state: {n - 1} of 72 faces"))).to_be_visible(
            timeout=30_000
        )
        # the map: lasso the right half of the plot, label every face inside
        page.goto(url + "/map", wait_until="domcontentloaded")
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        plot.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        _lasso(page, plot, [(0.5, 0.02), (0.98, 0.02), (0.98, 0.98), (0.5, 0.98)])
        chosen = page.get_by_text(re.compile(r"^\d+ faces? selected"))
        expect(chosen).to_be_visible(timeout=30_000)
        button = page.get_by_role("button", name=re.compile(r"^Assign 'correct' to \d+ unlabeled"))
        k = int(re.search(r"to (\d+) unlabeled", button.inner_text()).group(1))
        button.click()
        expect(page.get_by_text(re.compile(rf"Labeled {k} faces?"))).to_be_visible(timeout=30_000)
        browser.close()
    events = LabelStore(ws.labels_db).history(limit=None)
    assert events["n_faces"].tolist()[0] == k and 0 < k < 72
    _keep(shot, "screenshot.png")


def _lasso(page, plot, points: list[tuple[float, float]]) -> None:
    """Draw a closed lasso through ``points`` (fractions of the plot area)."""
    b = plot.bounding_box()
    xy = [(b["x"] + b["width"] * fx, b["y"] + b["height"] * fy) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in [*xy[1:], xy[0]]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


# --- issue 15: what annotators need (items 1-5), on real faces ----------------------------------


def _real_workspace(root: Path, photos: Path):
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    ws = Workspace.open(root, create=True)
    run_pipeline(photos, ws, config=RunConfig(device="cpu"))
    return ws


@pytest.fixture
def sideways_app(tmp_path):
    """12 MFR2 photos plus three of them stored sideways or upside down (turned 90 / 270 /
    180 degrees, no EXIF)."""
    _need_browser()
    from conftest import shared_dataset
    from PIL import Image

    data = shared_dataset("mfr2")
    photos = tmp_path / "photos"
    photos.mkdir()
    files = sorted((data / "images").iterdir())[:12]
    for f in files:
        shutil.copy(f, photos / f.name)
    sideways = []
    for f, turn in ((files[0], 90), (files[2], 270), (files[5], 180)):  # found upright
        name = f"sideways_{turn}_{f.name}"
        Image.open(f).convert("RGB").rotate(-turn, expand=True).save(photos / name)
        sideways.append(name)
    ws = _real_workspace(tmp_path / "ws", photos)
    with running_app(ws.root) as (url, _proc):  # no LABELER_ANNOTATOR: the app must ask
        yield ws, url, sideways


def _face_of(ws, name: str) -> tuple[str, int]:
    """(face_id, rotation) of the largest face of the photo called ``name``."""
    faces = ws.faces().merge(ws.images()[["image_id", "path"]], on="image_id")
    faces = faces[faces["path"] == name]
    row = faces.loc[((faces.x1 - faces.x0) * (faces.y1 - faces.y0)).idxmax()]
    return str(row["face_id"]), int(row["rotation"])


def _cluster_of(ws, face_id: str) -> int:
    from labeler.cluster import store as cluster_store

    run = cluster_store.load_run(ws)
    return int(run.labels[list(run.face_ids).index(face_id)])


def _reading_order(page) -> list[str]:
    """The cluster grid's faces as an annotator reads them, row by row (the grid fills its
    columns in turn, so the page's element order runs down each column)."""
    return page.evaluate(
        """() => [...document.querySelectorAll("[class*='st-key-sel_']")].map(e => {
            const r = e.getBoundingClientRect();
            const k = [...e.classList].find(c => c.startsWith('st-key-sel_')).slice(11);
            return [Math.round(r.top / 8), r.left, k]; })
          .sort((a, b) => a[0] - b[0] || a[1] - b[1]).map(x => x[2])"""
    )


def _open_cluster(page, url: str, cluster: int) -> None:
    """Clusters page -> the cluster's Open button (the cards name noise 'Noise')."""
    page.goto(url + "/clusters", wait_until="domcontentloaded")
    page.locator("[class*='st-key-open_'] button").first.wait_for(timeout=60_000)
    _settle(page, 1000)
    button = page.locator(f".st-key-open_{cluster} button")
    while not button.is_visible():  # later pages of cards
        nxt = page.locator(".st-key-clusters_page button[data-testid='stNumberInputStepUp']")
        nxt.click()
        _settle(page, 1000)
    button.click()
    page.get_by_role("heading", name="Cluster view").wait_for(timeout=60_000)
    _settle(page, 1500)


def test_annotator_needs_in_chromium(sideways_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ws, url, sideways = sideways_app
    with sync_playwright() as p:
        browser = _browser(p)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = ctx.new_page()

        # 3. a name is asked on the first visit, kept in the URL and for new tabs (cookie)
        page.goto(url + "/", wait_until="domcontentloaded")
        expect(page.get_by_text("Who is labeling?")).to_be_visible(timeout=60_000)
        _settle(page)
        page.screenshot(path=str(tmp_path / "name.png"))
        page.get_by_label("Your name").fill("Ann")
        page.get_by_role("button", name="Start labeling").click()
        expect(page.get_by_text(re.compile(r"Labeling as Ann"))).to_be_visible(timeout=30_000)
        assert "annotator=Ann" in page.url
        page.reload()
        expect(page.get_by_text(re.compile(r"Labeling as Ann"))).to_be_visible(timeout=30_000)
        tab = ctx.new_page()
        tab.goto(url + "/settings", wait_until="domcontentloaded")  # no name in this URL
        expect(tab.get_by_text(re.compile(r"Labeling as Ann"))).to_be_visible(timeout=30_000)
        tab.close()
        other = browser.new_context().new_page()  # another browser profile: asked again
        other.goto(url + "/", wait_until="domcontentloaded")
        expect(other.get_by_text("Who is labeling?")).to_be_visible(timeout=60_000)
        other.context.close()

        # 1 + 2. the sideways selfie: found upright, its source photo with box, path, score
        assert _face_of(ws, sideways[1])[1] == 90  # stored turned 270: 90 more is upright
        assert _face_of(ws, sideways[2])[1] == 180  # stored upside down
        fid, rotation = _face_of(ws, sideways[0])
        assert rotation == 270  # stored turned 90 clockwise: 270 more is upright
        _open_cluster(page, url, _cluster_of(ws, fid))
        page.locator(".st-key-photo_buttons label").click()  # a photo button on every face
        _settle(page)
        page.locator(f".st-key-photo_sel_{fid} button:visible").first.click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("photo turned 270° clockwise")).to_be_visible(timeout=30_000)
        expect(dialog.get_by_text(re.compile(r"sideways_.*\.png"))).to_be_visible()
        expect(dialog.get_by_text("whole-image fallback")).to_be_visible()
        page.wait_for_timeout(800)
        page.screenshot(path=str(tmp_path / "source.png"))
        page.keyboard.press("Escape")
        _settle(page)

        # 5. keyboard: 5 = no_mask, Space unticks the cursor's face, Right skips, Enter assigns
        assign = page.get_by_role("button", name=re.compile(r"^Assign '.*' to \d+ unlabeled"))
        n = int(re.search(r"to (\d+) unlabeled", assign.inner_text()).group(1))
        for key in ["5", " ", "ArrowRight", " "]:
            page.keyboard.press(key)
            _settle(page, 300)
        expect(page.get_by_text(f"{n - 2} of {n} faces selected")).to_be_visible(timeout=30_000)
        page.mouse.wheel(0, 300)
        page.screenshot(path=str(tmp_path / "keys.png"))
        page.keyboard.press("Enter")
        done = page.get_by_text(re.compile(rf"Labeled {n - 2} faces? mask_state=no_mask"))
        expect(done).to_be_visible(timeout=30_000)
        cur = LabelStore(ws.labels_db).current(FIELD)
        assert len(cur) == n - 2 and set(cur["annotator"]) == {"Ann"}

        # 5. range ticks: two clicks untick faces 2..5
        page.locator(".st-key-select_all_btn button").click()
        _settle(page)
        page.locator(".st-key-range_ticks label").click()
        _settle(page)
        order = _reading_order(page)
        page.locator(f".st-key-sel_{order[1]} label").click()
        _settle(page)
        page.locator(f".st-key-sel_{order[4]} label").click()
        _settle(page)
        expect(page.get_by_text(f"{n - 4} of {n} faces selected")).to_be_visible(timeout=30_000)

        # 6. the first click on a dropdown right after a checkbox opens it (not only focuses)
        page.locator(f".st-key-sel_{order[6]} label").click()
        page.locator(".st-key-assign_value").get_by_role("combobox").click()
        expect(page.get_by_role("listbox")).to_be_visible(timeout=15_000)
        _settle(page, 300)
        expect(page.get_by_role("listbox")).to_be_visible()  # the rerun did not close it
        page.get_by_role("option", name="correct").click()
        expect(
            page.get_by_role("button", name=re.compile(r"^Assign 'correct' to \d+ unlabeled"))
        ).to_be_visible(timeout=30_000)

        # 4. the map: legend names clusters, hover names cluster and label, lasso summary
        page.goto(url + "/map", wait_until="domcontentloaded")
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        plot.wait_for(timeout=60_000)
        _settle(page, 1500)
        legend = " ".join(page.locator(".js-plotly-plot .legendtext").all_text_contents())
        assert re.search(r"cluster \d+ \(\d+\)", legend), legend
        # a point with no other within plotly's 20 px hover distance: twins (a photo and its
        # sideways copy) sit on one spot, and which of them plotly names is then a tie
        x, y = page.evaluate(
            """() => { const gd = document.querySelector('.js-plotly-plot');
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
            const r = gd.getBoundingClientRect();
            const pts = gd.data.flatMap((t) => t.x.map((v, i) =>
                [r.left + xa._offset + xa.l2p(v), r.top + ya._offset + ya.l2p(t.y[i])]));
            const lone = pts.filter((p, i) =>
                pts.every((q, j) => i === j || Math.hypot(p[0] - q[0], p[1] - q[1]) > 30));
            return lone[0] || [null, null]; }"""
        )
        assert x is not None, "every point of the map has another within 30 px"
        page.mouse.move(x - 6, y - 6)
        page.mouse.move(x, y, steps=3)
        hover = page.locator(".hoverlayer .hovertext")
        expect(hover).to_be_visible(timeout=10_000)
        assert re.search(r"(cluster \d+|noise) · (no_mask|\(unlabeled\))", hover.text_content())
        # the hovered point's face: its thumbnail cell, from a sheet the browser could load
        thumb = page.locator("#labeler-map-thumb")
        expect(thumb).to_be_visible(timeout=10_000)
        k = int(thumb.get_attribute("data-point"))  # the hovered point's place in the sample
        text = page.evaluate(
            """(k) => { for (const t of document.querySelector('.js-plotly-plot').data) {
                 const i = t.customdata.findIndex((c) => c[1] === k);
                 if (i >= 0) return t.text[i]; } }""",
            k,
        )
        assert text == hover.text_content()  # the face shown is the point plotly names
        sheet = re.search(r'url\("?([^")]+)', thumb.evaluate("e => e.style.backgroundImage"))
        assert page.request.get(sheet.group(1)).headers["content-type"] == "image/jpeg"
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "map_hover.png"))
        page.mouse.move(x, y - 2000 if y > 2000 else 3, steps=4)  # off the chart: it goes
        expect(thumb).to_be_hidden(timeout=5_000)
        _lasso(page, plot, [(0.02, 0.02), (0.98, 0.02), (0.98, 0.98), (0.02, 0.98)])
        chosen = page.get_by_text(re.compile(r"^\d+ faces? selected"))
        expect(chosen).to_be_visible(timeout=30_000)
        assert int(chosen.inner_text().split()[0]) == len(ws.faces())
        expect(page.get_by_text(re.compile(r"Clusters: .*· labels: "))).to_be_visible()
        page.wait_for_timeout(800)
        page.screenshot(path=str(tmp_path / "map_lasso.png"))
        browser.close()
    for name in ["name", "source", "keys", "map_hover", "map_lasso"]:
        _keep(tmp_path / f"{name}.png", f"app_{name}.png")


# --- issue 19: no label changes by accident ----------------------------------------------------


def _count(locator, pattern: str) -> int:
    """The number ``pattern``'s group 1 finds in a button's text (the count it states)."""
    expect_text = locator.inner_text()
    m = re.search(pattern, expect_text)
    assert m, (pattern, expect_text)
    return int(m.group(1).replace(",", ""))


def _picked(page):
    """The Cluster view's label picker (its value: the label Enter would assign)."""
    return page.locator(".st-key-assign_value").get_by_role("combobox")


def _goto(page, title: str) -> None:
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title).wait_for(timeout=60_000)
    _settle(page, 800)


def test_no_silent_relabel_in_chromium(mfr2_workspace, tmp_path):
    """Every way the app labels many faces at once leaves existing labels alone unless the
    explicit Relabel button is used, and that button's count is the count changed: the
    Cluster view (Enter, a label picker that comes back as left), the Map (Enter after a
    lasso), More like this (labeled neighbours never pre-ticked), keys while the source photo
    is open; Invert, "the rest", not a face."""
    from playwright.sync_api import expect, sync_playwright

    from labeler.cluster import store as cluster_store
    from labeler.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(mfr2_workspace[0].root, root)
    ws = Workspace.open(root)
    run = cluster_store.load_run(ws)
    ids, counts = np.unique(run.labels, return_counts=True)
    big, small = (int(c) for c in ids[np.argsort(-counts)][:2])
    members = [str(f) for f in run.face_ids[run.labels == big]]
    others = [str(f) for f in run.face_ids[run.labels == small]]
    store = LabelStore(ws.labels_db)
    pre = members[1::3][:20]  # labeled before, by someone else
    store.assign(pre, FIELD, "no_mask", annotator="earlier", source="cluster")
    with (
        running_app(root, env={"LABELER_ANNOTATOR": "ann"}) as (url, _proc),
        sync_playwright() as p,
    ):
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        _open_cluster(page, url, big)  # the cluster view's grid shows the biggest cluster

        # the label picker comes back as the annotator left it (not the first value)
        page.keyboard.press("3")
        _settle(page)
        expect(_picked(page)).to_have_value("chin_exposed")
        _goto(page, "Overview")
        _goto(page, "Cluster view")
        expect(_picked(page)).to_have_value("chin_exposed")

        # Enter labels the ticked faces that have no label; the 20 no_mask faces keep theirs
        assign = page.locator(".st-key-assign_btn button")
        n_new = _count(assign, r"to (\d+) unlabeled")
        assert n_new == len(members) - len(pre)
        relabel = page.locator(".st-key-relabel_btn button").first
        want = f"Relabel {len(pre)} faces now no_mask by earlier as 'chin_exposed'"
        assert relabel.inner_text() == want  # the count and whose labels they are
        page.keyboard.press("Enter")
        expect(page.get_by_text(f"Labeled {n_new} faces mask_state=chin_exposed")).to_be_visible(
            timeout=30_000
        )
        before = store.current_values(FIELD)
        assert {before[f] for f in pre} == {"no_mask"}
        assert sum(v == "chin_exposed" for v in before.values()) == n_new
        _settle(page, 800)
        page.mouse.wheel(0, 250)
        page.wait_for_timeout(800)
        page.screenshot(path=str(tmp_path / "relabel.png"))

        # the explicit choice: the count it states is the count it changes, in one event
        m = _count(relabel, r"^Relabel (\d+) faces? now no_mask")
        relabel.click()
        expect(page.get_by_text(re.compile(rf"{m} faces? of them relabeled"))).to_be_visible(
            timeout=30_000
        )
        after = store.current_values(FIELD)
        changed = [f for f in after if after[f] != before.get(f)]
        assert m == len(pre) == len(changed) and set(changed) == set(pre)
        assert store.history(limit=1)["n_faces"].tolist() == [m]
        page.locator(".st-key-undo_btn button").click()  # undo is exact: the 20 are back
        expect(page.get_by_text(re.compile(r"Undid event \d+"))).to_be_visible(timeout=30_000)
        assert store.current_values(FIELD) == before
        _settle(page)

        # keys do nothing while the source photo is open
        n_events = len(store.history(limit=None))
        page.locator(".st-key-select_none_btn button").click()
        _settle(page)
        on_page = set(
            page.evaluate(
                """() => [...document.querySelectorAll("[class*='st-key-sel_']")].map(e =>
                [...e.classList].find(c => c.startsWith('st-key-sel_')).slice(11))"""
            )
        )
        one = next(f for f in pre if f in on_page)  # a labeled face the grid's page shows
        page.locator(f".st-key-sel_{one} label").click()  # the click moves the outline
        _settle(page)
        if page.locator(".st-key-photo_buttons input").is_checked():
            page.locator(".st-key-photo_buttons label").click()  # back on the outline only
            _settle(page)
        assert page.locator("[class*='st-key-photo_sel_']").count() == 1
        page.keyboard.press("p")  # P: the outlined face's source photo
        expect(page.get_by_role("dialog")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("dialog").get_by_text(one).first).to_be_visible()
        for key in ["1", "Enter"]:
            page.keyboard.press(key)
            page.wait_for_timeout(700)
        _settle(page)
        assert len(store.history(limit=None)) == n_events
        page.keyboard.press("Escape")
        _settle(page)
        expect(_picked(page)).to_have_value("chin_exposed")

        # more like this, labeled faces shown too: none of them comes pre-ticked
        page.get_by_text("More like this").click()
        _settle(page)
        page.locator(".st-key-knn_btn button").click()
        _settle(page)
        page.locator(".st-key-knn_show_labeled label").click()
        _settle(page, 800)
        near = page.evaluate(
            """() => [...document.querySelectorAll("[class*='st-key-near_']")].map(e =>
                [e.textContent.trim(), e.querySelector('input').checked])"""
        )
        assert near and any(cap != "unlabeled" for cap, _ in near)
        assert not any(ticked for cap, ticked in near if cap != "unlabeled"), near
        page.get_by_text("More like this").click()
        _settle(page)

        # the other cluster: not a face (key 0), then Invert and "the rest"
        _open_cluster(page, url, small)
        shown = page.evaluate(
            """() => [...document.querySelectorAll("[class*='st-key-sel_']")].map(e =>
                [...e.classList].find(c => c.startsWith('st-key-sel_')).slice(11))"""
        )
        others = [*shown[:2], *[f for f in others if f not in shown[:2]]]
        page.locator(".st-key-select_none_btn button").click()
        _settle(page)
        page.locator(f".st-key-sel_{others[0]} label").click()
        _settle(page)
        for key in ["0", "Enter"]:
            page.keyboard.press(key)
            _settle(page)
        expect(page.get_by_text("Labeled 1 face mask_state=not_a_face")).to_be_visible(
            timeout=30_000
        )
        assert store.not_faces() == {others[0]}
        page.locator(f".st-key-sel_{others[1]} label").click()  # tick one more, then invert
        _settle(page)
        page.locator(".st-key-invert_btn button").first.click()
        _settle(page)
        expect(
            page.get_by_text(f"{len(others) - 2} of {len(others)} faces selected")
        ).to_be_visible(timeout=30_000)
        for key in ["5", "Enter"]:
            page.keyboard.press(key)
            _settle(page)
        rest = page.locator(".st-key-rest_btn button").first
        assert _count(rest, r"the rest: (\d+) unticked unlabeled") == 1
        page.keyboard.press("1")
        _settle(page)
        rest.click()
        expect(page.get_by_text("Labeled 1 face mask_state=correct")).to_be_visible(timeout=30_000)
        now = store.current_values(FIELD)
        assert now[others[1]] == "correct" and now[others[0]] == "not_a_face"
        assert sum(now.get(f) == "no_mask" for f in others) == len(others) - 2
        _goto(page, "Overview")
        expect(page.get_by_test_id("stMetric").filter(has_text="Not a face")).to_contain_text("1")

        # the map: a lasso over every face, Enter: no label changes (all are labeled now)
        store.undo("ann")  # the small cluster's last label: one unlabeled face again
        before = store.current_values(FIELD)
        _goto(page, "Map")
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        plot.wait_for(timeout=60_000)
        _settle(page, 1500)
        top = plot.bounding_box()["y"]
        _lasso(page, plot, [(0.01, 0.01), (0.99, 0.01), (0.99, 0.99), (0.01, 0.99)])
        expect(page.get_by_text(re.compile(r"^\d+ faces? selected"))).to_be_visible(timeout=30_000)
        _settle(page, 800)
        assert abs(plot.bounding_box()["y"] - top) < 2  # the chart did not jump
        assign = page.locator(".st-key-map_assign_btn button")
        assert _count(assign, r"to (\d+) unlabeled") == 1
        relabel = page.locator(".st-key-map_relabel_btn button").first
        m = _count(relabel, r"^Relabel (\d+) faces? now")
        picked = _picked(page).input_value()  # the last label picked: 'correct' ("the rest")
        assert picked == "correct"
        assert m == sum(v != picked for v in before.values())
        page.mouse.wheel(0, 450)  # the selection's controls are below the chart
        page.wait_for_timeout(800)
        page.screenshot(path=str(tmp_path / "map_relabel.png"))
        page.keyboard.press("Enter")
        expect(page.get_by_text("Labeled 1 face mask_state=correct")).to_be_visible(timeout=30_000)
        after = store.current_values(FIELD)
        assert {f: v for f, v in after.items() if f in before} == before  # nothing relabeled
        # a second lasso, then Clear selection: the lasso and the dimmed points go too
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        _settle(page, 1000)
        _lasso(page, plot, [(0.01, 0.01), (0.6, 0.01), (0.6, 0.99), (0.01, 0.99)])
        expect(page.get_by_text(re.compile(r"^\d+ faces? selected"))).to_be_visible(timeout=30_000)
        shapes = """() => { const gd = document.querySelector('.js-plotly-plot');
            return (gd.layout.selections || []).length + document.querySelectorAll(
              '.js-plotly-plot .select-outline, .js-plotly-plot .selectionlayer path').length; }"""
        assert page.evaluate(shapes) > 0
        page.locator(".st-key-map_clear_btn button").click()
        _settle(page, 1500)
        assert page.evaluate(shapes) == 0
        expect(page.get_by_text(re.compile(r"^\d+ faces? selected"))).to_have_count(0)
        browser.close()
    _keep(tmp_path / "relabel.png", "app_relabel.png")
    _keep(tmp_path / "map_relabel.png", "app_map_relabel.png")


# --- a scripted annotator labels MFR2 through the UI -------------------------------------------


class Annotator:
    """Drives the app like a person would and counts every mouse click and key press.

    It sees the faces (truth from labels.csv stands in for the person's eyes) and reads the
    app's state only from the page: which faces a grid shows, their captions (current label)
    and whether their box is ticked.
    """

    def __init__(self, page, truth: dict[str, str]) -> None:
        self.page = page
        self.truth = truth
        self.clicks = 0
        self.keys = 0
        self.settle_s: list[float] = []
        self.misses = 0  # clicks on a select box that did not open it

    def _done(self) -> None:
        t0 = time.perf_counter()
        _settle(self.page, 0)
        self.settle_s.append(time.perf_counter() - t0)

    def click(self, locator) -> None:
        locator.click()
        self.clicks += 1
        self._done()

    def key(self, name: str) -> None:
        self.page.keyboard.press(name)
        self.keys += 1
        self._done()

    def choose(self, widget_key: str, option: str) -> None:
        """Open a select box and pick ``option`` (two clicks)."""
        box = self.page.locator(f".st-key-{widget_key}")
        box.wait_for(timeout=60_000)
        item = self.page.get_by_role("option", name=option, exact=True)
        for _ in range(3):  # a click sometimes only focuses the box: click again, counted
            self.click(box)
            try:
                item.wait_for(timeout=3_000)
                break
            except Exception:
                self.misses += 1
        self.click(item)
        self.page.wait_for_function(
            "() => !document.querySelector('[role=combobox][aria-expanded=true]')"
        )

    def go(self, page_title: str) -> None:
        """Open a page from the sidebar (one click)."""
        self.click(self.page.get_by_role("link", name=page_title))
        self.page.get_by_role("heading", name=page_title).wait_for(timeout=60_000)
        _settle(self.page, 800)

    def grid(self) -> list[tuple[str, str, bool]]:
        """(face_id, caption, ticked) of the faces the cluster grid shows, in order."""
        return self.page.evaluate(
            """() => [...document.querySelectorAll("[class*='st-key-sel_']")].map(e => {
                const k = [...e.classList].find(c => c.startsWith('st-key-sel_'));
                return [k.slice('st-key-sel_'.length), e.textContent.trim(),
                        e.querySelector('input').checked]; })"""
        )

    def label_cluster(self, values: list[str]) -> int:
        """Label every unlabeled face of the open cluster; returns the assign actions.

        Each round takes the cheapest way the page offers to label the most faces per click:
        tick the faces of one value (from the ticks as they are, from *Select none*, or from
        *Invert*) and press its number key and Enter; or, when the faces left unticked and
        unlabeled are all of one value, its number key and *Assign ... to the rest*. Where the
        app would relabel ticked faces that have a label (the app before bulk actions skipped
        labeled faces: no *Invert* button), those must be unticked too.
        """
        skips_labeled = self.page.locator(".st-key-invert_btn").count() > 0
        actions = 0
        for _ in range(20):
            faces = self.grid()
            todo = [(f, t) for f, cap, t in faces if cap == "unlabeled"]
            if not todo:
                return actions
            plans = []  # (faces labeled per click, value, how, faces to click)
            for value in values:
                gain = sum(self.truth[f] == value for f, _ in todo)
                if not gain:
                    continue
                want = {f: self.truth[f] == value for f, _, _ in faces}
                matters = [(f, t) for f, cap, t in faces
                           if cap == "unlabeled" or (not skips_labeled and not want[f])]  # fmt: skip
                ways = {
                    "as is": [f for f, t in matters if t != want[f]],
                    "select_none_btn": [f for f, cap, _ in faces if cap == "unlabeled" and want[f]],
                }
                if skips_labeled:
                    ways["invert_btn"] = [f for f, t in matters if (not t) != want[f]]
                for how, clicks in ways.items():
                    cost = len(clicks) + 2 + (how != "as is")
                    plans.append((gain / cost, value, how, clicks))
                rest = [f for f, t in todo if not t]
                if skips_labeled and rest and all(self.truth[f] == value for f in rest):
                    plans.append((len(rest) / 2, value, "rest_btn", []))
            _, value, how, clicks = max(plans, key=lambda p: (p[0], -len(p[3])))
            if how == "rest_btn":
                self.key(str(values.index(value) + 1))
                self.click(self.page.locator(".st-key-rest_btn button").first)
            else:
                if how != "as is":
                    self.click(self.page.locator(f".st-key-{how} button").first)
                for f in clicks:
                    self.click(self.page.locator(f".st-key-sel_{f} label"))
                self.key(str(values.index(value) + 1))
                self.key("Enter")
            actions += 1
        raise AssertionError(f"cluster not labeled after {actions} actions: {self.grid()}")


@pytest.fixture(scope="module")
def mfr2_workspace(tmp_path_factory):
    _need_browser()
    from conftest import shared_dataset

    data = shared_dataset("mfr2")
    root = tmp_path_factory.mktemp("mfr2")
    return _real_workspace(root / "ws", data / "images"), data / "labels.csv"


#: The mixed real workspace: a fixed random sample of realmasks (crowd crops from web photos
#: with correct, incorrectly worn and no masks), so groups are mixed and labeled faces sit
#: among unlabeled ones.
MIXED_N = 240


@pytest.fixture(scope="module")
def mixed_workspace(tmp_path_factory):
    _need_browser()
    import pandas as pd
    from conftest import shared_dataset

    data = shared_dataset("realmasks")
    table = pd.read_csv(data / "labels.csv").sample(n=MIXED_N, random_state=0)
    root = tmp_path_factory.mktemp("mixed")
    photos = root / "photos"
    photos.mkdir()
    for name in table["file"]:
        shutil.copy(data / "images" / name, photos / name)
    table[["file", "state"]].to_csv(root / "labels.csv", index=False)
    return _real_workspace(root / "ws", photos), root / "labels.csv"


def scripted_session(ws0, truth_csv: Path, tmp_path: Path) -> tuple[dict, Path]:
    """Label every face of a copy of ``ws0`` through the browser (see :class:`Annotator`);
    returns the report (clicks and keys per face, ...) and the copy's root."""
    from playwright.sync_api import expect, sync_playwright

    from labeler.cluster import store as cluster_store
    from labeler.loop.truth import join_truth
    from labeler.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(ws0.root, root)
    ws = Workspace.open(root)
    truth = join_truth(ws, str(truth_csv), all_faces=True)
    truth = dict(zip(truth["face_id"], truth["truth"], strict=True))
    faces = ws.faces()["face_id"].tolist()
    assert set(truth) == set(faces)
    run = cluster_store.load_run(ws)
    ids, counts = np.unique(run.labels, return_counts=True)
    sizes = {int(c): int(n) for c, n in zip(ids, counts, strict=True)}
    values = sorted(set(truth.values()))
    t_start = time.perf_counter()
    with running_app(ws.root) as (url, _proc), sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        ann = Annotator(page, truth)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.get_by_label("Your name").fill("scripted")
        ann.click(page.get_by_role("button", name="Start labeling"))
        # the field, once: Settings -> Add a field
        ann.go("Settings")
        page.get_by_label("Field name").fill("mask")
        page.get_by_label("Values, comma separated").fill(", ".join(values))
        ann.click(page.locator(".st-key-new_field_btn button"))
        expect(page.get_by_text("Added field 'mask'")).to_be_visible(timeout=30_000)
        ann.go("Cluster view")
        ann.choose("assign_field", "mask")
        ann.choose("page_size", "480")
        actions = 0
        order = sorted(sizes, key=lambda c: (c < 0, -sizes[c]))
        for i, c in enumerate(order):
            if i:
                name = "noise" if c < 0 else f"cluster {c}"
                ann.choose("cluster_pick", f"{name} ({sizes[c]:,} faces)")
            shown = min(sizes[c], 480)  # the grid of this cluster is there
            page.wait_for_function(
                f"() => document.querySelectorAll(\"[class*='st-key-sel_']\").length == {shown}"
            )
            _settle(page, 300)
            actions += ann.label_cluster(values)
        page.mouse.wheel(0, -20_000)
        _settle(page, 800)
        page.screenshot(path=str(tmp_path / "done.png"), full_page=False)
        # the map of the labeled set: coloured by label
        ann.go("Map")
        page.locator(".st-key-map_color label").filter(has_text="label").click()
        _settle(page, 1500)
        page.screenshot(path=str(tmp_path / "map_labels.png"))
        browser.close()
    minutes = (time.perf_counter() - t_start) / 60
    got = LabelStore(ws.labels_db).current_values("mask")
    n = len(faces)
    report = {
        "faces": n,
        "clusters": len([c for c in sizes if c >= 0]),
        "noise": sizes.get(-1, 0),
        "assign actions": actions,
        "clicks": ann.clicks,
        "key presses": ann.keys,
        "clicks + keys per face": round((ann.clicks + ann.keys) / n, 3),
        "clicks per face": round(ann.clicks / n, 3),
        "labeled right": sum(got.get(f) == t for f, t in truth.items()),
        "select-box clicks that only focused": ann.misses,
        "median click-to-settle s": round(float(np.median(ann.settle_s)), 2),
        "p90 click-to-settle s": round(float(np.percentile(ann.settle_s, 90)), 2),
        "minutes": round(minutes, 1),
    }
    print("SCRIPTED ANNOTATOR", root, json.dumps(report))
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2))
    assert got == truth, report  # every face, every label right
    return report, root


@pytest.mark.slow
def test_scripted_annotator_labels_mfr2(mfr2_workspace, tmp_path):
    """All MFR2 faces labeled masked / no_mask through the browser; clicks per face reported
    (docs/APP.md). The annotator adds the field in Settings, then works cluster by cluster
    on the Cluster view with the number keys and Enter, unticking faces that differ."""
    report, _ = scripted_session(*mfr2_workspace, tmp_path)
    assert report["clicks + keys per face"] < 0.5, report  # one by one: 2 per face
    _keep(tmp_path / "done.png", "app_mfr2_done.png")
    _keep(tmp_path / "map_labels.png", "app_mfr2_map.png")


@pytest.mark.slow
def test_scripted_annotator_labels_mixed_real_faces(mixed_workspace, tmp_path):
    """The same annotator on 240 realmasks crowd crops (3 states, mixed groups)."""
    report, _ = scripted_session(*mixed_workspace, tmp_path)
    assert report["clicks + keys per face"] < 1.0, report
    _keep(tmp_path / "done.png", "app_mixed_done.png")
