"""Issue 31, sign-in behind a reverse proxy, in real browsers: ``labeler app --sign-in`` on
127.0.0.1 reached only through a reverse proxy on 127.0.0.1 (``tests/proxy.py``: HTTP, the
websocket, ``X-Forwarded-For``), as the README sets it up.

* Wrong passwords under made-up names from one client slow that client, never another
  annotator: Ann, from her own address, signs in at once.
* A session cookie copied to another browser before Sign out fails after it.
* The crops of a signed-in page (``/media/...``): what a client with no session gets, from
  Streamlit directly and through the README's proxy rule.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest
from appserver import running_app
from appserver import settle as _settle
from proxy import reverse_proxy
from synthetic import synthetic_workspace
from test_browser_auth import ARGS, CHROMIUM, _need_browser, _sees_only_the_sign_in, _sign_in

from labeler.ui import access

pytestmark = pytest.mark.browser

GUESSER, ANN = "203.0.113.9", "198.51.100.7"


def _status(url: str, cookie: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _alert(page) -> str:
    _settle(page, 300)
    return page.locator("[data-testid='stAlert']").last.inner_text()


def test_behind_a_proxy_guessers_sign_out_and_media(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _need_browser()
    ws = synthetic_workspace(tmp_path / "ws", n_faces=72, n_clusters=4, seed=1)
    ann = access.add_annotator(ws.root, "Ann")
    with (
        running_app(ws.root, extra=("--sign-in",)) as (app_url, _proc),
        reverse_proxy(app_url) as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)

        # a guesser: 10 wrong passwords under made-up names, from one address
        guesser = browser.new_context(extra_http_headers={"X-Test-Client": GUESSER}).new_page()
        guesser.goto(url + "/", wait_until="domcontentloaded")
        _sees_only_the_sign_in(guesser)
        said = []
        for i in range(10):
            _sign_in(guesser, f"made-up-{i}", "not-the-password")
            expect(
                guesser.get_by_text(re.compile("Wrong name or password|Too many"))
            ).to_be_visible(timeout=30_000)
            said.append(_alert(guesser))
        assert said[0] == "Wrong name or password."
        assert any(s.startswith("Too many failed sign-ins") for s in said), said  # slowed

        # Ann, from her own address, right after: in at once, never told to wait
        ctx = browser.new_context(extra_http_headers={"X-Test-Client": ANN},
                                  viewport={"width": 1400, "height": 1000})  # fmt: skip
        page = ctx.new_page()
        page.goto(url + "/cluster_view", wait_until="domcontentloaded")
        _sees_only_the_sign_in(page)
        t0 = time.perf_counter()
        _sign_in(page, "Ann", ann.password)
        expect(page.get_by_text(re.compile(r"Labeling as Ann"))).to_be_visible(timeout=60_000)
        signed_in_s = time.perf_counter() - t0
        assert "Too many" not in page.locator("body").inner_text()
        assert signed_in_s < 15, signed_in_s  # scrypt and a page draw, no throttle wait
        expect(page.locator(".st-key-assign_btn button")).to_be_visible(timeout=60_000)
        _settle(page, 1500)

        # the crops of Ann's page, fetched by a client with no session at all
        media = sorted(set(re.findall(r"(?<!/static)(/media/[\w.-]+)", page.content())))
        assert len(media) >= 10, len(media)
        direct = [_status(app_url + m) for m in media]
        proxied = [_status(url + m) for m in media]
        with reverse_proxy(app_url, media_needs_cookie=True) as guarded:
            ruled = [_status(guarded + m) for m in media]
            cookie = None
            end = time.time() + 30
            while cookie is None and time.time() < end:  # written by the page's script
                cookie = next((c for c in ctx.cookies() if c["name"] == "labeler_session"),
                              None)  # fmt: skip
                time.sleep(0.2)
            assert cookie is not None
            with_cookie = [_status(guarded + m, f"labeler_session={cookie['value']}")
                           for m in media[:5]]  # fmt: skip
        # Streamlit serves a drawn page's media to anyone with the URL (the README says so);
        # the proxy rule the README gives refuses them without a session cookie
        assert set(direct) == {200} and set(proxied) == {200}
        assert set(ruled) == {403} and set(with_cookie) == {200}
        print(
            f"media of a signed-in page: {len(media)} URLs; no session: Streamlit "
            f"{direct.count(200)}/{len(media)} answered 200, behind the README's rule "
            f"{ruled.count(403)}/{len(media)} refused; Ann signed in in {signed_in_s:.1f} s "
            f"after {len(said)} guesses ({sum(s.startswith('Too many') for s in said)} "
            "told to wait)"
        )

        # a copy of Ann's cookie in another browser works ... until Ann signs out
        other = browser.new_context(extra_http_headers={"X-Test-Client": ANN})
        other.add_cookies([cookie])
        copy = other.new_page()
        copy.goto(url + "/", wait_until="domcontentloaded")
        expect(copy.get_by_text(re.compile(r"Labeling as Ann"))).to_be_visible(timeout=60_000)
        page.goto(url + "/settings", wait_until="domcontentloaded")
        page.get_by_role("button", name="Sign out").click()
        _sees_only_the_sign_in(page)
        copy.reload(wait_until="domcontentloaded")
        _sees_only_the_sign_in(copy)
        later = browser.new_context()
        later.add_cookies([cookie])
        fresh = later.new_page()
        fresh.goto(url + "/cluster_view", wait_until="domcontentloaded")
        _sees_only_the_sign_in(fresh)
        # and Ann signs in again as before
        _sign_in(fresh, "ann", ann.password)
        expect(fresh.get_by_text(re.compile(r"Labeling as Ann"))).to_be_visible(timeout=60_000)
        browser.close()
