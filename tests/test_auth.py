"""Access control when the app listens beyond this computer (issue 22): the credential store
(``labeler.ui.access``), ``labeler annotators``, the refused start on 0.0.0.0, and the
sign-in gate driven through AppTest with ``server.address`` set as ``labeler app --host``
sets it. The real-socket, real-browser test is ``tests/test_browser_auth.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic import synthetic_workspace

from labeler.cli import cli
from labeler.labels import LabelStore
from labeler.ui import access

APP = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
FIELD = "mask_state"


# --- the credential store ------------------------------------------------------------------------


def test_password_verifies_and_only_its_salted_hash_is_stored(tmp_path):
    invite = access.add_annotator(tmp_path, "  Ann   Lee ")
    assert invite.name == "Ann Lee" and len(invite.password) >= 16
    assert access.verify(tmp_path, "Ann Lee", invite.password) == "Ann Lee"
    assert access.verify(tmp_path, "ann lee", invite.password) == "Ann Lee"  # any case
    assert access.verify(tmp_path, "Ann Lee", invite.password + "x") is None
    assert access.verify(tmp_path, "Ann Lee", invite.password.upper()) is None
    assert access.verify(tmp_path, "Ann Lee", "") is None
    assert access.verify(tmp_path, "Bob", invite.password) is None  # another name
    text = access.store_path(tmp_path).read_text()
    assert invite.password not in text
    assert invite.password.encode().hex() not in text
    entry = json.loads(text)["annotators"]["Ann Lee"]
    assert set(entry) == {"salt", "hash", "scrypt", "created"}
    assert len(bytes.fromhex(entry["salt"])) == 16 and len(bytes.fromhex(entry["hash"])) == 32
    # the hash is scrypt of the password with that salt (not of anything else)
    import hashlib

    want = hashlib.scrypt(invite.password.encode(), salt=bytes.fromhex(entry["salt"]),
                          n=2**14, r=8, p=1, dklen=32)  # fmt: skip
    assert want.hex() == entry["hash"]


def test_salts_are_unique_and_a_reset_changes_salt_and_password(tmp_path):
    names = [f"annotator {i}" for i in range(8)]
    invites = [access.add_annotator(tmp_path, n) for n in names]
    data = json.loads(access.store_path(tmp_path).read_text())["annotators"]
    salts = {e["salt"] for e in data.values()}
    hashes = {e["hash"] for e in data.values()}
    assert len(salts) == len(names) and len(hashes) == len(names)
    assert len({i.password for i in invites}) == len(names)
    old = invites[0]
    new = access.reset_password(tmp_path, old.name.upper())
    assert new.name == old.name and new.password != old.password
    assert access.verify(tmp_path, old.name, old.password) is None
    assert access.verify(tmp_path, old.name, new.password) == old.name
    after = json.loads(access.store_path(tmp_path).read_text())["annotators"][old.name]
    assert after["salt"] != data[old.name]["salt"]
    assert [a.name for a in access.annotators(tmp_path)] == names  # order kept


def test_the_file_is_0600_whatever_the_umask_and_written_atomically(tmp_path):
    old = os.umask(0)
    try:
        access.add_annotator(tmp_path, "ann")
        access.add_annotator(tmp_path, "bob")
        access.remove_annotator(tmp_path, "ann")
    finally:
        os.umask(old)
    path = access.store_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotators.json"]  # no temp files
    assert [a.name for a in access.annotators(tmp_path)] == ["bob"]


def test_refusals_are_one_line_naming_the_file_and_the_fix(tmp_path):
    from labeler.errors import ExistsError, InputError, NotFoundError

    access.add_annotator(tmp_path, "Ann")
    with pytest.raises(ExistsError, match="labeler annotators reset NAME"):
        access.add_annotator(tmp_path, "ANN")
    with pytest.raises(NotFoundError, match="no annotator 'Zed'"):
        access.remove_annotator(tmp_path, "Zed")
    with pytest.raises(InputError, match="1 to 40 characters"):
        access.add_annotator(tmp_path, "   ")
    with pytest.raises(InputError, match="1 to 40 characters"):
        access.add_annotator(tmp_path, "x" * 41)
    access.store_path(tmp_path).write_text("{not json")
    with pytest.raises(
        InputError, match=r"annotators\.json cannot be read.*labeler annotators add"
    ):
        access.verify(tmp_path, "Ann", "whatever")
    assert access.annotators(tmp_path / "nowhere") == []


def test_session_cookies_are_signed_expire_and_die_with_a_reset_or_removal(tmp_path):
    access.add_annotator(tmp_path, "Ann")
    access.add_annotator(tmp_path, "Bob")
    cookie = access.sign_session(tmp_path, "ann", now=1000.0)
    assert access.session_name(tmp_path, cookie, now=1001.0) == "Ann"
    days = access.SESSION_DAYS * 86400
    assert access.session_name(tmp_path, cookie, now=1000.0 + days + 1) is None  # expired
    name_hex, expires, mac = cookie.split(".")
    bob = b"Bob".hex()
    assert access.session_name(tmp_path, f"{bob}.{expires}.{mac}", now=1001.0) is None
    later = str(int(expires) + days)
    assert access.session_name(tmp_path, f"{name_hex}.{later}.{mac}", now=1001.0) is None
    for junk in ("", "x", "a.b.c", "zz.1.2", f"{name_hex}.{expires}"):
        assert access.session_name(tmp_path, junk, now=1001.0) is None
    access.reset_password(tmp_path, "Ann")
    assert access.session_name(tmp_path, cookie, now=1001.0) is None
    bob_cookie = access.sign_session(tmp_path, "Bob", now=1000.0)
    assert access.session_name(tmp_path, bob_cookie, now=1001.0) == "Bob"
    access.remove_annotator(tmp_path, "Bob")
    assert access.session_name(tmp_path, bob_cookie, now=1001.0) is None
    # another workspace's secret signs nothing here
    other = tmp_path / "other"
    other.mkdir()
    access.add_annotator(other, "Ann")
    assert access.session_name(tmp_path, access.sign_session(other, "Ann")) is None


def test_throttle_slows_repeated_failures_and_forgets_after_success():
    t = access.Throttle(free=3, cap=10)
    keys = ["name:ann", "ip:10.0.0.9"]
    for _ in range(2):
        t.failed(keys, now=0.0)
    assert t.wait(keys, now=0.0) == 0
    t.failed(keys, now=0.0)
    assert t.wait(keys, now=0.0) == 1.0
    t.failed(keys, now=0.0)
    assert t.wait(["ip:10.0.0.9"], now=0.0) == 2.0
    assert t.wait(["name:bob"], now=0.0) == 0  # others unaffected
    for _ in range(20):
        t.failed(keys, now=0.0)
    assert t.wait(keys, now=0.0) == 10  # capped
    t.succeeded(keys)
    assert t.wait(keys, now=0.0) == 0


def test_made_up_names_never_delay_a_real_annotator():
    """Issue 31: 10 failed sign-ins under made-up names from one client (or from every client
    behind one proxy) left another annotator's right password waiting 28 s. Keys are the
    name and, through a trusted proxy only, the client the proxy names."""
    t = access.Throttle()
    # no trusted proxy: the socket address is not a key at all
    for i in range(50):
        t.failed(access.throttle_keys(f"guess{i}"), now=0.0)
    assert t.wait(access.throttle_keys("Ann"), now=0.0) == 0
    # through the trusted proxy: the guesser's client is slowed, Ann's client is not
    guesser = "203.0.113.9"
    for i in range(50):
        t.failed(access.throttle_keys(f"x{i}", forwarded_for=guesser, trusted_proxy=True), now=0)
    ann = access.throttle_keys("Ann", forwarded_for="198.51.100.7", trusted_proxy=True)
    assert ann == ["name:ann", "client:198.51.100.7"] and t.wait(ann, now=0.0) == 0
    slow = access.throttle_keys("Bea", forwarded_for=guesser, trusted_proxy=True)
    assert t.wait(slow, now=0.0) == 300.0  # the guesser's own client waits, capped
    # a client cannot forge its way out: the proxy's own address is the last entry
    forged = access.throttle_keys("y", forwarded_for=f"198.51.100.7, {guesser}", trusted_proxy=True)
    assert forged[-1] == f"client:{guesser}"
    # an untrusted header is ignored
    assert access.throttle_keys("Ann", forwarded_for=guesser) == ["name:ann"]


def test_throttle_memory_is_bounded_and_quiet_keys_are_forgotten():
    t = access.Throttle(max_keys=1000, forget_s=60.0)
    for i in range(20_000):
        t.failed([f"name:made-up-{i}"], now=float(i) * 0.001)
    assert len(t) == 1000
    t.failed(["name:ann"] * 6, now=30.0)  # Ann's key: 6 failures, then quiet
    assert t.wait(["name:ann"], now=30.0) > 0
    t.failed(["name:late"], now=30.0 + 61.0)
    assert len(t) == 1 and t.wait(["name:ann"], now=91.0) == 0


def test_sign_out_ends_every_session_of_the_annotator_cookies_copied_included(tmp_path):
    access.add_annotator(tmp_path, "Ann")
    invite = access.add_annotator(tmp_path, "Bob")
    copied = access.sign_session(tmp_path, "Ann")  # e.g. copied to another browser
    other_browser = access.sign_session(tmp_path, "Ann")
    bob = access.sign_session(tmp_path, "Bob")
    token = access.session_token(tmp_path, "Ann")
    assert access.session_name(tmp_path, copied) == "Ann"
    assert access.end_sessions(tmp_path, "ann") == "Ann"
    assert access.session_name(tmp_path, copied) is None
    assert access.session_name(tmp_path, other_browser) is None
    assert access.session_token(tmp_path, "Ann") != token  # open sessions end at next click
    assert access.session_name(tmp_path, bob) == "Bob"  # only Ann's
    assert access.verify(tmp_path, "Bob", invite.password) == "Bob"
    fresh = access.sign_session(tmp_path, "Ann")  # signing in again works
    assert access.session_name(tmp_path, fresh) == "Ann"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("::", False), ("", False), (None, False),
     ("192.168.1.20", False), ("myhost.lan", False)],
)  # fmt: skip
def test_loopback_addresses(host, loopback):
    assert access.is_loopback(host) is loopback


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws_template(tmp_path_factory):
    return synthetic_workspace(tmp_path_factory.mktemp("tmpl") / "ws", n_faces=40, n_clusters=3)


@pytest.fixture
def ws(tmp_path, ws_template):
    from labeler.workspace import Workspace, write_json

    root = tmp_path / "ws"
    shutil.copytree(ws_template.root, root)
    meta = Workspace(root).meta()
    meta["roots"] = [str(root / "photos")]
    write_json(root / "workspace.json", meta)
    return Workspace.open(root)


def test_annotators_commands(ws):
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    out = runner.invoke(cli, ["annotators", "list", *w])
    assert out.exit_code == 0 and "no annotators" in out.output
    out = runner.invoke(cli, ["annotators", "add", "Ann", *w])
    assert out.exit_code == 0, out.output
    password = re.search(r"^  (\S+)$", out.output, re.M).group(1)
    assert access.verify(ws.root, "Ann", password) == "Ann"
    out = runner.invoke(cli, ["annotators", "add", "ann", *w])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "already" in out.output
    out = runner.invoke(cli, ["annotators", "reset", "ANN", *w])
    new = re.search(r"^  (\S+)$", out.output, re.M).group(1)
    assert new != password and access.verify(ws.root, "Ann", new) == "Ann"
    assert access.verify(ws.root, "Ann", password) is None
    out = runner.invoke(cli, ["annotators", "list", *w])
    assert out.output.startswith("Ann  (added ")
    out = runner.invoke(cli, ["annotators", "remove", "ann", *w])
    assert out.exit_code == 0 and access.annotators(ws.root) == []
    out = runner.invoke(cli, ["annotators", "remove", "ann", *w])
    assert out.exit_code == 1 and "no annotator 'ann'" in out.output


def test_app_on_0000_without_annotators_refuses_before_serving(ws):
    """A subprocess, as a user runs it: one line, non-zero, nothing started (no store created,
    no backup taken, the port never answers)."""
    from appserver import answers, free_port

    port = free_port()
    cmd = [sys.executable, "-c", "from labeler.cli import main; main()", "app", "-w",
           str(ws.root), "--host", "0.0.0.0", "--port", str(port)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("Error: --host 0.0.0.0 lets anyone on the network")
    assert f"labeler annotators add NAME -w {ws.root}" in done.stderr
    assert not ws.labels_db.exists() and not (ws.root / "backups").exists()
    assert not answers(f"http://127.0.0.1:{port}")
    # with an annotator it passes the check (the loopback default never needed one)
    from labeler.cli.app import access_check

    assert access_check(ws, "127.0.0.1") == []
    access.add_annotator(ws.root, "Ann")
    assert access_check(ws, "0.0.0.0") == ["Ann"]


# --- the sign-in gate (AppTest; the server's address set as 'labeler app --host' sets it) --------


@pytest.fixture
def network_app(ws, monkeypatch):
    from streamlit import config

    from labeler.ui.state import ENV_ANNOTATOR, ENV_WORKSPACE

    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    monkeypatch.setenv(ENV_ANNOTATOR, "from-the-environment")  # must be ignored
    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    yield ws
    config.set_option("server.address", old)


def _fresh(query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def _nothing_of_the_data(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.header] == ["Sign in to label"]
    assert len(at.get("imgs")) == 0  # no face crop, no media
    shown = " ".join(str(e.value) for kind in ("markdown", "caption", "metric", "error")
                     for e in getattr(at, kind))  # fmt: skip
    assert not re.search(r"\d+ faces|cluster|correct|mask_state", shown, re.I), shown
    assert [t.key for t in at.text_input] == ["login_name", "login_password"]


def test_a_session_that_has_not_signed_in_sees_only_the_sign_in_form(network_app):
    ws = network_app
    access.add_annotator(ws.root, "Ann")
    for query in (None, {"annotator": "intruder"}):
        at = _fresh(query)
        _nothing_of_the_data(at)
        at.switch_page("views/cluster_view.py").run()  # a page's URL does not get around it
        _nothing_of_the_data(at)
    assert LabelStore(ws.labels_db).history(limit=None).empty


def test_sign_in_then_labels_carry_the_signed_in_name_not_the_urls(network_app):
    from labeler.ui import auth
    from labeler.ui.state import K

    ws = network_app
    password = access.add_annotator(ws.root, "Ann Lee").password
    at = _fresh({"annotator": "someone_else"})
    at.text_input(key=auth.NAME).set_value("ann lee")
    at.text_input(key=auth.PASSWORD).set_value("not the password")
    at.button(key=auth.SIGN_IN_BTN).click().run()
    _nothing_of_the_data(at)
    assert any("Wrong name or password" in e.value for e in at.error)
    at.text_input(key=auth.NAME).set_value("ann lee")
    at.text_input(key=auth.PASSWORD).set_value(password)
    at.button(key=auth.SIGN_IN_BTN).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.header[0].value == "Overview"
    assert any("Labeling as **Ann Lee**" in c.value for c in at.caption)
    assert at.query_params["annotator"] == ["someone_else"]  # never taken from there
    at.switch_page("views/cluster_view.py").run()
    at.button(key=K.assign_btn).click().run()
    assert not at.exception, [e.value for e in at.exception]
    events = LabelStore(ws.labels_db).history(limit=None)
    assert len(events) == 1 and set(events["annotator"]) == {"Ann Lee"}
    # settings: no name box, a sign-out button; signing out locks the app again
    at.switch_page("views/settings.py").run()
    assert K.settings_annotator not in [t.key for t in at.text_input]
    at.button(key=auth.SIGN_OUT_BTN).click().run()
    _nothing_of_the_data(at)
    # a removed annotator's open session ends at the next click
    at.text_input(key=auth.NAME).set_value("Ann Lee")
    at.text_input(key=auth.PASSWORD).set_value(password)
    at.button(key=auth.SIGN_IN_BTN).click().run()
    assert at.header[0].value == "Settings"
    access.add_annotator(ws.root, "Bob")
    access.remove_annotator(ws.root, "Ann Lee")
    at.run()
    _nothing_of_the_data(at)


def test_on_the_network_with_no_annotators_the_page_says_how_to_add_one(network_app):
    at = _fresh()
    assert not at.exception
    assert any("labeler annotators add NAME" in e.value for e in at.error)
    assert len(at.text_input) == 0


def test_sign_in_on_loopback_behind_a_proxy(ws, monkeypatch):
    """'labeler app --sign-in' (127.0.0.1 behind a TLS proxy) passes --sign-in to the script,
    which then asks a sign-in although the server is on loopback."""
    import click

    from labeler.cli.app import access_check, streamlit_command
    from labeler.ui.state import ENV_ANNOTATOR, ENV_WORKSPACE

    cmd = streamlit_command(str(ws.root), sign_in=True)
    assert cmd[cmd.index("--") :] == ["--", "--workspace", str(ws.root), "--sign-in"]
    assert "--sign-in" not in streamlit_command(str(ws.root))
    with pytest.raises(click.ClickException, match="--sign-in asks every browser to sign in"):
        access_check(ws, "127.0.0.1", sign_in=True)
    access.add_annotator(ws.root, "Ann")
    assert access_check(ws, "127.0.0.1", sign_in=True) == ["Ann"]
    monkeypatch.setenv(ENV_WORKSPACE, str(ws.root))
    monkeypatch.setenv(ENV_ANNOTATOR, "tester")
    monkeypatch.setattr(sys, "argv", ["app.py", "--sign-in"])
    _nothing_of_the_data(_fresh({"annotator": "tester"}))
    monkeypatch.setattr(sys, "argv", ["app.py"])  # the same without --sign-in: no sign-in
    at = _fresh()
    assert at.header[0].value == "Overview"
