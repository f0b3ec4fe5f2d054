"""Real-browser smoke test: `labeler app` in a subprocess, driven by headless Chromium.

Needs Debian's chromium (`make chromium`) and the playwright python package; skips cleanly
otherwise (never downloads a browser). Saves the screenshot to docs/screenshot.png when LABELER_UPDATE_SCREENSHOT is set.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from labeler.labels import LabelStore
from labeler.ui.synthetic import synthetic_workspace

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"labeler app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"labeler app did not answer at {url} within {timeout} s")


@pytest.fixture
def app_server(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (run 'make chromium')")
    pytest.importorskip("playwright.sync_api")
    ws = synthetic_workspace(tmp_path / "ws", n_faces=72, n_clusters=4, seed=1)
    port = _free_port()
    env = {**os.environ, "LABELER_ANNOTATOR": "browser"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from labeler.cli import main; main()",
            "app",
            "-w",
            str(ws.root),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield ws, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_bulk_label_a_cluster_in_chromium(app_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ws, url = app_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/cluster_view", wait_until="domcontentloaded")
        assign = page.get_by_role("button", name=re.compile(r"^Assign 'correct' to \d+ selected"))
        expect(assign).to_be_visible(timeout=60_000)
        n = int(re.search(r"to (\d+) selected", assign.inner_text()).group(1))
        # click the last face out of the selection (an outlier), then label the rest
        page.locator("[data-testid='stCheckbox']").last.click()
        expect(page.get_by_text(f"{n - 1} of {n} faces selected")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name=re.compile(r"^Assign 'correct' to")).click()
        expect(
            page.get_by_text(re.compile(rf"Labeled {n - 1} faces mask_state=correct"))
        ).to_be_visible(timeout=30_000)
        cur = LabelStore(ws.labels_db).current("mask_state")
        assert len(cur) == n - 1
        assert set(cur["value"]) == {"correct"} and set(cur["annotator"]) == {"browser"}
        assert set(cur["source"]) == {"selection"}
        page.mouse.wheel(0, -5000)  # back to the top of the page
        page.wait_for_timeout(1500)  # let the thumbnails settle
        shot = tmp_path / "screenshot.png"
        page.screenshot(path=str(shot))
        # the overview reflects the new labels too
        page.goto(url + "/", wait_until="domcontentloaded")
        expect(page.get_by_text(re.compile(rf"mask_state: {n - 1} of 72 faces"))).to_be_visible(
            timeout=30_000
        )
        # the map: lasso the right half of the plot, label every face inside
        page.goto(url + "/map", wait_until="domcontentloaded")
        plot = page.locator(".js-plotly-plot .nsewdrag").first
        plot.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        b = plot.bounding_box()
        pts = [(0.5, 0.02), (0.98, 0.02), (0.98, 0.98), (0.5, 0.98), (0.5, 0.02)]
        page.mouse.move(b["x"] + b["width"] * 0.5, b["y"] + b["height"] * 0.02)
        page.mouse.down()
        for fx, fy in pts[1:]:
            page.mouse.move(b["x"] + b["width"] * fx, b["y"] + b["height"] * fy, steps=6)
        page.mouse.up()
        chosen = page.get_by_text(re.compile(r"^\d+ faces selected"))
        expect(chosen).to_be_visible(timeout=30_000)
        k = int(chosen.inner_text().split()[0])
        page.get_by_role("button", name=re.compile(r"^Assign 'correct' to the")).click()
        expect(page.get_by_text(re.compile(rf"Labeled {k} faces"))).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "map.png"))
        browser.close()
    events = LabelStore(ws.labels_db).history(limit=None)
    assert events["n_faces"].tolist()[0] == k and 0 < k < 72
    assert shot.stat().st_size > 10_000
    if os.environ.get("LABELER_UPDATE_SCREENSHOT"):  # refresh the README's picture on request
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / "screenshot.png")
