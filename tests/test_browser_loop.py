"""The learning loop in a real browser: `labeler app` in a subprocess on a small real
workspace (mfr2, built by 'labeler run'), driven by headless Chromium: press Suggest, accept
one suggestion group, undo it on the Review page.

Needs Debian's chromium and the playwright python package; skips cleanly otherwise (never
downloads a browser). Saves the screenshot to docs/review_suggest.png when
LABELER_UPDATE_SCREENSHOT is set.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from appserver import running_app
from conftest import shared_dataset

from labeler.labels import LabelStore

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
DOCS = Path(__file__).resolve().parents[1] / "docs"
AS_MASK_STATE = {"masked": "correct", "no_mask": "no_mask"}


@pytest.fixture
def labeled_mfr2(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    from labeler.loop.truth import join_truth
    from labeler.pipeline import RunConfig, run_pipeline
    from labeler.workspace import Workspace

    data = shared_dataset("mfr2")
    ws = Workspace.open(tmp_path / "ws", create=True)
    run_pipeline(data / "images", ws, config=RunConfig(device="cpu"))
    truth = join_truth(ws, str(data / "labels.csv"))
    store = LabelStore(ws.labels_db)
    for value, part in truth.sample(50, random_state=0).groupby("truth"):
        store.assign(part.face_id, "mask_state", AS_MASK_STATE[value], annotator="seed",
                     source="selection")  # fmt: skip
    return ws


def test_suggest_accept_a_group_and_undo_in_chromium(labeled_mfr2, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ws = labeled_mfr2
    store = LabelStore(ws.labels_db)
    before = store.current("mask_state")
    shot = tmp_path / "review_suggest.png"
    with running_app(ws.root, env={"LABELER_ANNOTATOR": "browser"}) as (url, _proc):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(url + "/review", wait_until="domcontentloaded")
                suggest = page.get_by_role("button", name=re.compile("Suggest"))
                expect(suggest).to_be_visible(timeout=60_000)
                suggest.click()
                # the run ends in the background; the page redraws with its groups
                expect(page.get_by_text(re.compile(r"In cross-validation \d+ ?% of faces"))
                       ).to_be_visible(timeout=90_000)  # fmt: skip
                boxes = page.locator("[data-testid='stCheckbox'] input")
                expect(boxes.first).to_be_attached(timeout=30_000)
                if not boxes.first.is_checked():  # a group not pre-ticked: tick two faces
                    for i in (1, 2):
                        page.locator("[data-testid='stCheckbox']").nth(i - 1).click()
                        expect(page.get_by_role("button", name=re.compile(
                            rf"^Accept {i} ticked as"))).to_be_visible(timeout=30_000)  # fmt: skip
                accept = page.get_by_role("button", name=re.compile(r"^Accept \d+ ticked as"))
                expect(accept).to_be_enabled(timeout=30_000)
                n = int(re.search(r"Accept (\d+)", accept.inner_text()).group(1))
                accept.click()
                banner = page.get_by_text(re.compile(rf"Accepted {n} faces as"))
                expect(banner).to_be_visible(timeout=30_000)
                after = store.current("mask_state")
                assert len(after) == len(before) + n
                assert set(after.loc[after["source"] == "suggestion", "annotator"]) == {"browser"}
                page.mouse.wheel(0, -5000)
                page.wait_for_timeout(1500)  # let the thumbnails settle
                page.screenshot(path=str(shot), full_page=False)
                page.get_by_role("button", name=re.compile(r"Undo$")).click()
                expect(page.get_by_text(re.compile(r"Undid event \d+"))).to_be_visible(
                    timeout=30_000
                )
            finally:
                browser.close()
    undone = store.current("mask_state")
    assert len(undone) == len(before) and (undone["source"] != "suggestion").all()
    assert shot.stat().st_size > 10_000
    if os.environ.get("LABELER_UPDATE_SCREENSHOT"):
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / "review_suggest.png")
