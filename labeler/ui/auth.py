"""Sign-in for the app when it listens beyond this computer (see :mod:`labeler.ui.access`).

The server's bind address decides (``server.address``, what ``labeler app --host`` sets),
never the caller's address: bound to a loopback address the app asks a name as always
(unless ``labeler app --sign-in``, for a reverse proxy on this computer); bound to anything
else (``0.0.0.0``, a LAN address, or Streamlit's default of every
interface) every session must sign in with a name and password made by
``labeler annotators add NAME``. Until it has, the router draws :func:`login_page` and stops:
no page runs, so no face, count or media URL reaches that browser. Signed in, the session's
annotator is the signed-in name; the URL's ``?annotator=``, the name cookie and
``$LABELER_ANNOTATOR`` are ignored. A signed cookie (HMAC, :func:`access.sign_session`)
keeps the sign-in across reloads for a week; a password reset, a removal or Sign out (in
any browser of that annotator) ends it everywhere. Failed sign-ins are throttled per name
(and per client only through a trusted proxy: :func:`access.throttle_keys`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import streamlit as st

from labeler.errors import InputError, LabelerError
from labeler.labels.names import annotator_name, printable
from labeler.ui import access
from labeler.ui.args import ANNOTATOR_KEY, workspace_path

#: session keys (internal, never bound to a widget)
USER = "_auth_user"  # the signed-in annotator's stored name
TOKEN = "_auth_token"  # the annotator's salt at sign-in (a reset or removal signs out)
COOKIE_SET = "_auth_cookie_set"  # the session cookie was written for this name
SIGNED_OUT = "_auth_signed_out"  # ignore the browser's cookie in this session
FLASH = "_auth_flash"
#: widget keys
NAME = "login_name"
PASSWORD = "login_password"
SIGN_IN_BTN = "login_btn"
SIGN_OUT_BTN = "logout_btn"
COOKIE = "labeler_session"
FAIL_DELAY_S = 1.0  # every failed sign-in waits this long (on top of scrypt)


def required() -> bool:
    """Whether sessions must sign in: the server is reachable from the network, or
    ``labeler app --sign-in`` asked for it (a loopback address behind a reverse proxy).

    ``server.address`` unset means Streamlit listens on every interface; only a script run
    with no browser connection at all (``AppTest``: no request headers) counts as local.
    """
    if _sign_in_asked():
        return True
    address = st.get_option("server.address")
    if not address:
        try:
            return bool(dict(st.context.headers))
        except Exception:  # no script run context: nothing is served
            return False
    return not access.is_loopback(str(address))


def _sign_in_asked() -> bool:
    """``--sign-in`` after ``--`` on the streamlit command line (what ``labeler app`` passes)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sign-in", action="store_true")
    return bool(parser.parse_known_args(sys.argv[1:])[0].sign_in)


def _root() -> Path | None:
    path = workspace_path()
    return Path(path) if path else None


def signed_in() -> str | None:
    """The signed-in annotator of this session (auth mode), after checking the credential
    still holds; a session without one is signed in by a valid cookie, if it has one."""
    root = _root()
    if root is None:
        return None
    try:
        return _check(root)
    except LabelerError:  # an unreadable store signs nobody in; the sign-in page says why
        _forget()
        return None


def _check(root: Path) -> str | None:
    name = st.session_state.get(USER)
    if name:
        if access.session_token(root, name) == st.session_state.get(TOKEN):
            return str(name)
        _forget()  # removed, or given a new password since
        return None
    if st.session_state.get(SIGNED_OUT):
        return None
    name = access.session_name(root, _cookie())
    if name:
        _remember(root, name)
        st.session_state[COOKIE_SET] = name  # the browser has it already
    return name


def _remember(root: Path, name: str) -> None:
    st.session_state[USER] = name
    st.session_state[TOKEN] = access.session_token(root, name)
    st.session_state[ANNOTATOR_KEY] = name  # per-annotator preferences key on it


def _forget() -> None:
    for key in (USER, TOKEN, COOKIE_SET, ANNOTATOR_KEY):
        st.session_state.pop(key, None)


def _cookie() -> str | None:
    try:
        value = st.context.cookies.get(COOKIE)
    except Exception:  # no browser connection
        return None
    return value if isinstance(value, str) and value else None


def _throttle_keys(name: str) -> list[str]:
    """:func:`access.throttle_keys` for this request: the proxy's ``X-Forwarded-For`` is
    trusted only when the app listens on a loopback address with ``--sign-in`` (then every
    browser reaches it through the reverse proxy on this computer)."""
    address = st.get_option("server.address")
    trusted = _sign_in_asked() and bool(address) and access.is_loopback(str(address))
    try:
        forwarded = st.context.headers.get("X-Forwarded-For")
    except Exception:  # no browser connection
        forwarded = None
    return access.throttle_keys(name, forwarded_for=forwarded, trusted_proxy=trusted)


@st.cache_resource(show_spinner=False)
def _throttle() -> access.Throttle:
    """One failed-sign-in counter for every session of this server."""
    return access.Throttle()


def _sign_in() -> None:
    root = _root()
    typed = str(st.session_state.get(NAME, ""))
    password = str(st.session_state.get(PASSWORD, ""))
    st.session_state[PASSWORD] = ""
    if root is None or not typed.strip() or not password:
        st.session_state[FLASH] = "Enter your name and the password you were given."
        return
    try:  # NFKC, as 'labeler annotators add' stored it; no control or bidi characters
        name = annotator_name(typed)
    except InputError as exc:
        st.session_state[FLASH] = str(exc)
        return
    keys = _throttle_keys(name)
    wait = _throttle().wait(keys)
    if wait > 0:
        st.session_state[FLASH] = f"Too many failed sign-ins; try again in {wait:.0f} s."
        return
    try:
        stored = access.verify(root, name, password)
    except LabelerError as exc:
        st.session_state[FLASH] = str(exc)
        return
    if stored is None:
        _throttle().failed(keys)
        time.sleep(FAIL_DELAY_S)
        st.session_state[FLASH] = "Wrong name or password."
        return
    _throttle().succeeded(keys)
    _remember(root, stored)
    st.session_state.pop(SIGNED_OUT, None)


def sign_out() -> None:
    """End the annotator's sign-in everywhere (:func:`access.end_sessions`: every cookie
    made for them stops working, their other open sessions end at their next click) and
    drop this browser's cookie."""
    root, name = _root(), st.session_state.get(USER)
    if root is not None and name:
        try:
            access.end_sessions(root, str(name))
        except LabelerError:  # removed meanwhile: nothing left to end
            pass
    _forget()
    st.session_state[SIGNED_OUT] = True


def login_page() -> None:
    """The only thing a session that has not signed in sees: a name and a password."""
    root = _root()
    if root is not None and st.session_state.get(SIGNED_OUT):
        _write_cookie("", max_age=0)
    st.header("Sign in to label")
    try:
        known = bool(root and access.annotators(root))
    except LabelerError as exc:
        st.error(str(exc))
        return
    if not known:
        st.error(
            "This app listens beyond this computer but its workspace has no annotators: "
            "the owner adds them with 'labeler annotators add NAME -w WORKSPACE'."
        )
        return
    st.markdown(
        "This labeling app is shared over the network: sign in with your name and the "
        "password the workspace owner gave you (`labeler annotators add NAME`)."
    )
    left, _ = st.columns([2, 3])
    with left, st.form("login_form", enter_to_submit=True):
        st.text_input("Name", key=NAME, max_chars=access.MAX_NAME)
        st.text_input("Password", key=PASSWORD, type="password")
        st.form_submit_button("Sign in", type="primary", key=SIGN_IN_BTN, on_click=_sign_in)
        message = st.session_state.pop(FLASH, None)
        if message:
            st.error(message)


def markdown_text(text: object) -> str:
    """``text`` shown as itself in ``st.markdown``: control and bidi characters escaped
    (:func:`~labeler.labels.names.printable`), Markdown's punctuation backslash-escaped (a
    name like ``[x](http://...)`` is no link, ``**`` no bold, ``:red[x]`` no colour)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:=])", r"\\\1", printable(text))


def keep_signed_in(name: str) -> None:
    """Once per sign-in, give the browser a signed cookie so a reload stays signed in."""
    root = _root()
    if root is None or st.session_state.get(COOKIE_SET) == name:
        return
    st.session_state[COOKIE_SET] = name
    _write_cookie(access.sign_session(root, name), max_age=access.SESSION_DAYS * 86400)


def _write_cookie(value: str, *, max_age: int) -> None:
    st.html(
        "<script>document.cookie = "
        f"'{COOKIE}=' + {json.dumps(value)} + '; path=/; max-age={int(max_age)}; "
        "SameSite=Strict' + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )


def account_section() -> None:
    """Settings, when signed in: who, and a way out (the name is the sign-in's)."""
    name = st.session_state.get(USER, "")
    st.markdown(
        f"Signed in as **{markdown_text(name)}**: every label you give carries this name. "
        "The workspace owner manages names and passwords with 'labeler annotators'."
    )
    st.button("Sign out", key=SIGN_OUT_BTN, on_click=sign_out)
