"""Issue 22, access control on a real socket: ``labeler app --host 0.0.0.0`` reached through
127.0.0.1 (the test's traffic stays on this computer; the app's bind address is what turns
sign-in on) and driven by headless Chromium.

Needs Debian's chromium and the playwright python package; skips cleanly otherwise. With
LABELER_AUTH_SHOTS=DIR the sign-in page's screenshot is copied to DIR/login.png.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from appserver import running_app
from appserver import settle as _settle
from synthetic import synthetic_workspace

from labeler.labels import LabelStore
from labeler.ui import access

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
MEDIA = re.compile(r"(?<!/static)/media/")  # what st.image serves (not the app's fonts)
SECRET_WORDS = re.compile(r"\bfaces?\b|mask_state|correct|Labeling as|cluster \d", re.I)


def _need_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")


def _sees_only_the_sign_in(page) -> None:
    """The page shows the sign-in form and nothing of the workspace."""
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Sign in to label")).to_be_visible(timeout=60_000)
    _settle(page, 800)
    html = page.content()
    assert not MEDIA.search(html)  # no crop, no photo, no file of any kind
    assert page.locator("img").count() == 0
    text = page.locator("body").inner_text()
    assert not SECRET_WORDS.search(text), text
    assert page.get_by_label("Password", exact=True).count() == 1
    assert page.locator(".st-key-assign_btn").count() == 0


def _sign_in(page, name: str, password: str) -> None:
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_only_invited_annotators_label_over_the_network(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _need_browser()
    ws = synthetic_workspace(tmp_path / "ws", n_faces=72, n_clusters=4, seed=1)
    invite = access.add_annotator(ws.root, "Ann Lee")
    env = {"LABELER_ANNOTATOR": "from-the-environment"}  # must be ignored too
    with (
        running_app(ws.root, host="0.0.0.0", env=env) as (url, _proc),
        sync_playwright() as p,
    ):
        assert url.startswith("http://127.0.0.1:")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)

        # anonymous: the sign-in form only, on every page, whatever the URL says
        anon = browser.new_context(viewport={"width": 1200, "height": 800})
        page = anon.new_page()
        for path in ("/", "/cluster_view?annotator=intruder", "/?annotator=intruder"):
            page.goto(url + path, wait_until="domcontentloaded")
            _sees_only_the_sign_in(page)
            page.keyboard.press("Enter")  # the app's 'assign' key does nothing here
            _settle(page)
            _sees_only_the_sign_in(page)
        shot = tmp_path / "login.png"
        page.screenshot(path=str(shot))
        # a wrong password (and a right one for a name that does not exist) is refused
        _sign_in(page, "Ann Lee", invite.password[::-1])
        expect(page.get_by_text("Wrong name or password.")).to_be_visible(timeout=30_000)
        _sees_only_the_sign_in(page)
        _sign_in(page, "intruder", invite.password)
        expect(page.get_by_text("Wrong name or password.")).to_be_visible(timeout=30_000)
        _sees_only_the_sign_in(page)
        anon.close()
        assert LabelStore(ws.labels_db).history(limit=None).empty

        # the invited annotator signs in on a URL naming someone else and bulk-labels a cluster
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.goto(url + "/cluster_view?annotator=someone_else", wait_until="domcontentloaded")
        _sees_only_the_sign_in(page)
        _sign_in(page, "ann lee", invite.password)
        expect(page.get_by_text(re.compile(r"Labeling as Ann Lee"))).to_be_visible(timeout=60_000)
        assign = page.locator(".st-key-assign_btn button")
        expect(assign).to_be_visible(timeout=60_000)
        _settle(page, 1000)
        assert MEDIA.search(page.content())  # now the faces are there
        assign.click()
        expect(page.get_by_text(re.compile(r"Labeled \d+ faces? mask_state="))).to_be_visible(
            timeout=30_000
        )
        events = LabelStore(ws.labels_db).history(limit=None)
        assert len(events) == 1
        assert events["annotator"].tolist() == ["Ann Lee"]
        assert set(LabelStore(ws.labels_db).current("mask_state")["annotator"]) == {"Ann Lee"}

        # a reload keeps the sign-in (signed cookie), still as Ann Lee whatever the URL says
        page.goto(url + "/?annotator=someone_else", wait_until="domcontentloaded")
        expect(page.get_by_text(re.compile(r"Labeling as Ann Lee"))).to_be_visible(timeout=60_000)
        # another browser profile (no cookie) and a forged cookie are both locked out
        other = browser.new_context()
        other.add_cookies([{"name": "labeler_session", "value": "416e6e204c6565.9999999999.00",
                            "url": url}])  # fmt: skip
        page = other.new_page()
        page.goto(url + "/cluster_view?annotator=Ann%20Lee", wait_until="domcontentloaded")
        _sees_only_the_sign_in(page)
        browser.close()
    assert len(LabelStore(ws.labels_db).history(limit=None)) == 1
    if os.environ.get("LABELER_AUTH_SHOTS"):
        out = Path(os.environ["LABELER_AUTH_SHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out / "login.png")
