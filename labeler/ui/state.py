"""The one module that reads and writes ``st.session_state`` (typed accessors, named keys).

Widget keys used by pages are listed in :class:`Keys` so tests can drive them by name.
The workspace comes from ``--workspace`` after ``--`` on the streamlit command line (what
``labeler app`` passes) or the ``LABELER_WORKSPACE`` environment variable (AppTest, scripts).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from labeler.errors import InputError
from labeler.labels.names import MAX_ANNOTATOR_LEN, annotator_name
from labeler.ui.args import ANNOTATOR_KEY, workspace_path
from labeler.ui.args import ENV_WORKSPACE as ENV_WORKSPACE  # re-exported: tests, scripts
from labeler.workspace import Workspace

if TYPE_CHECKING:
    from labeler.ui.data import RunView

ENV_ANNOTATOR = "LABELER_ANNOTATOR"
#: The annotator's name travels in the URL (``?annotator=NAME``: reloads and bookmarks keep
#: it) and in a cookie of that name (a new tab in the same browser finds it).
QUERY_ANNOTATOR = "annotator"
COOKIE_ANNOTATOR = "labeler_annotator"
MAX_NAME = MAX_ANNOTATOR_LEN


@dataclass(frozen=True)
class Keys:
    """Session-state keys (widgets and internal state)."""

    # internal (never bound to a widget: survive page switches)
    annotator: str = ANNOTATOR_KEY
    cookie_written: str = "_cookie_written"  # the name last stored in the browser's cookie
    cursor: str = "_cursor"  # dict[cluster, face_id]: the keyboard cursor in the grid
    anchor: str = "_anchor"  # dict[cluster, face_id]: the last face ticked (range ticks)
    inspect: str = "_inspect"  # face_id whose source photo is shown
    cluster: str = "_cluster"
    deselected: str = "_deselected"  # dict[cluster, set[face_id]]
    knn_query: str = "_knn_query"
    map_selection: str = "_map_selection"  # np.ndarray of row indices into the run
    flash: str = "_flash"
    field: str = "_field"
    prefs: str = "_prefs"  # dict[annotator, dict[widget key, value]]: kept across pages
    value_field: str = "_value_field"  # the field the label picker's value belongs to
    value_cluster: str = "_value_cluster"  # the cluster the label picker was last drawn for
    map_chart_n: str = "_map_chart_n"  # bumped to give the map a fresh chart (no old lasso)
    # widgets
    name_prompt: str = "name_prompt"
    name_prompt_btn: str = "name_prompt_btn"
    settings_annotator: str = "settings_annotator"
    page_size: str = "page_size"
    range_ticks: str = "range_ticks"
    photo_buttons: str = "photo_buttons"
    cursor_prev_btn: str = "cursor_prev_btn"
    cursor_next_btn: str = "cursor_next_btn"
    cursor_tick_btn: str = "cursor_tick_btn"
    value_key_btn: str = "value_key_btn"  # + index: the number-key label buttons
    knn_show_labeled: str = "knn_show_labeled"
    map_clusters: str = "map_clusters"
    cluster_pick: str = "cluster_pick"
    grid_page: str = "grid_page"
    outliers_first: str = "outliers_first"
    assign_field: str = "assign_field"
    assign_value: str = "assign_value"
    assign_btn: str = "assign_btn"
    relabel_btn: str = "relabel_btn"
    rest_btn: str = "rest_btn"
    invert_btn: str = "invert_btn"
    select_all_btn: str = "select_all_btn"
    select_none_btn: str = "select_none_btn"
    undo_btn: str = "undo_btn"
    redo_btn: str = "redo_btn"
    split_out_btn: str = "split_out_btn"
    split_k: str = "split_k"
    split_k_btn: str = "split_k_btn"
    merge_target: str = "merge_target"
    merge_btn: str = "merge_btn"
    revert_btn: str = "revert_btn"
    regroup_btn: str = "regroup_btn"
    regroup_revert_btn: str = "regroup_revert_btn"
    knn_face: str = "knn_face"
    knn_k: str = "knn_k"
    knn_btn: str = "knn_btn"
    knn_assign_btn: str = "knn_assign_btn"
    knn_relabel_btn: str = "knn_relabel_btn"
    knn_close_btn: str = "knn_close_btn"
    clusters_sort: str = "clusters_sort"
    clusters_page: str = "clusters_page"
    clusters_field: str = "clusters_field"
    map_color: str = "map_color"
    map_chart: str = "map_chart"
    map_assign_btn: str = "map_assign_btn"
    map_relabel_btn: str = "map_relabel_btn"
    map_clear_btn: str = "map_clear_btn"
    review_field: str = "review_field"
    review_kind: str = "review_kind"
    review_min: str = "review_min"
    review_accept_btn: str = "review_accept_btn"
    review_reject_btn: str = "review_reject_btn"
    review_accept_all_btn: str = "review_accept_all_btn"
    new_field_name: str = "new_field_name"
    new_field_values: str = "new_field_values"
    new_field_btn: str = "new_field_btn"
    try_upload: str = "try_upload"
    try_camera_on: str = "try_camera_on"
    try_camera: str = "try_camera"


K = Keys()

# per-face widget keys
SELECT_PREFIX = "sel_"  # cluster grid checkbox: selected for the bulk action
PHOTO_PREFIX = "photo_"  # button under a thumbnail: show the source photo
KNN_PREFIX = "near_"  # neighbours grid checkbox
REVIEW_PREFIX = "rv_"  # review grid checkbox


def workspace() -> Workspace:
    """The open workspace; stops the page with a clear message when there is none."""
    path = workspace_path()
    if not path:
        st.error("No workspace given: start the app with 'labeler app -w WORKSPACE'.")
        st.stop()
    try:
        return Workspace.open(path)
    except Exception as exc:  # WorkspaceError / permissions: show one line, not a traceback
        st.error(str(exc))
        st.stop()
        raise  # unreachable; st.stop raises


def clean_name(name: object) -> str:
    """An annotator name as stored (:func:`labeler.labels.names.annotator_name`): NFKC,
    inner whitespace collapsed; :class:`~labeler.errors.InputError` (one line naming the
    name and the rule) when it is empty, longer than :data:`MAX_NAME` or carries a control,
    bidi or invisible character. Never cut short: a name is stored as typed or not at all."""
    return annotator_name(name)


def _valid_name(name: object) -> str | None:
    """``name`` as :func:`clean_name` stores it, or None when it is missing or refused."""
    if not name:
        return None
    try:
        return clean_name(name)
    except InputError:
        return None


def annotator() -> str | None:
    """The annotator's name, or None when this browser never gave one.

    Looked up in this session, then the URL (``?annotator=``), the browser's cookie and
    ``$LABELER_ANNOTATOR`` (scripts, tests). Never the OS user: two people who never set a
    name must not share one (undo is per name). When the app listens beyond this computer
    it is the signed-in name only (:mod:`labeler.ui.auth`), never one from the URL.
    """
    from labeler.ui import auth

    if auth.required():
        return auth.signed_in()
    name = st.session_state.get(K.annotator)
    if not name:  # the first of them that is a valid name (a bad one is skipped, not kept)
        sources = (
            lambda: st.query_params.get(QUERY_ANNOTATOR),
            lambda: _cookie(COOKIE_ANNOTATOR),
            lambda: os.environ.get(ENV_ANNOTATOR),
        )
        name = next((n for get in sources if (n := _valid_name(get()))), None)
        if name:
            st.session_state[K.annotator] = name
    return str(name) if name else None


def require_annotator() -> str:
    """The annotator's name (the router asks for it before any page runs)."""
    name = annotator()
    if not name:
        st.error("No annotator name yet: reload the page and enter your name.")
        st.stop()
    return str(name)


def set_annotator(name: str) -> None:
    """Label as ``name`` from now on, in this tab, its URL and (next run) the browser cookie.

    :class:`~labeler.errors.InputError` from :func:`clean_name` for a name it refuses:
    nothing is stored then (the caller shows the one line with ``st.error``)."""
    from labeler.ui import auth

    name = clean_name(name)
    if auth.required():  # signed in: the name is the sign-in's
        return
    st.session_state[K.annotator] = name
    st.query_params[QUERY_ANNOTATOR] = name


def keep_annotator_in_browser(name: str) -> None:
    """Put ``name`` back into the URL (page links drop query parameters) and, once after a
    change, into a cookie (a one-line script). Signed in (:mod:`labeler.ui.auth`): a signed
    session cookie instead, and nothing in the URL."""
    from labeler.ui import auth

    if auth.required():
        auth.keep_signed_in(name)
        return
    if st.query_params.get(QUERY_ANNOTATOR) != name:
        st.query_params[QUERY_ANNOTATOR] = name
    if st.session_state.get(K.cookie_written) != name and _cookie(COOKIE_ANNOTATOR) != name:
        st.session_state[K.cookie_written] = name
        value = json.dumps(name).replace("<", "\\u003c")  # a name cannot close the script
        st.html(
            "<script>document.cookie = "
            f"'{COOKIE_ANNOTATOR}=' + encodeURIComponent({value}) + "
            "'; path=/; max-age=31536000; SameSite=Lax';</script>",
            unsafe_allow_javascript=True,
        )


def _cookie(name: str) -> str | None:
    from urllib.parse import unquote

    try:
        value = st.context.cookies.get(name)
    except Exception:  # no browser connection (AppTest, bare script)
        return None
    return unquote(value) if isinstance(value, str) and value else None


def field(default: str) -> str:
    """The label field the annotator works on (shared across pages)."""
    return str(st.session_state.get(K.field) or default)


def set_field(name: str) -> None:
    st.session_state[K.field] = name


def _prefs() -> dict:
    who = st.session_state.get(K.annotator) or ""
    return st.session_state.setdefault(K.prefs, {}).setdefault(who, {})


def sticky(key: str, default: object = None) -> None:
    """Give widget ``key`` the annotator's last value before it is drawn.

    Streamlit forgets a widget's value when a page without it runs; a widget drawn with
    :func:`sticky` first and :func:`keep` after comes back as the annotator left it
    (per annotator and field of work, e.g. the label last picked, the page size)."""
    if key not in st.session_state:
        value = _prefs().get(key, default)
        if value is not None:
            st.session_state[key] = value


def keep(key: str) -> None:
    """Remember widget ``key``'s value for :func:`sticky`."""
    if key in st.session_state:
        _prefs()[key] = st.session_state[key]


def remembered(key: str, default: object = None) -> object:
    """The value :func:`keep` last stored for ``key``."""
    return _prefs().get(key, default)


def remember(key: str, value: object) -> None:
    _prefs()[key] = value


def cluster() -> int | None:
    value = st.session_state.get(K.cluster)
    return None if value is None else int(value)


def set_cluster(value: int | None) -> None:
    st.session_state[K.cluster] = value
    st.session_state.pop(K.knn_query, None)


def cursor(cluster_id: int) -> str | None:
    """The face the keyboard cursor is on in ``cluster_id``'s grid (None: the first shown)."""
    return st.session_state.setdefault(K.cursor, {}).get(int(cluster_id))


def set_cursor(cluster_id: int, face_id: str | None) -> None:
    st.session_state.setdefault(K.cursor, {})[int(cluster_id)] = face_id


def anchor(cluster_id: int) -> str | None:
    """The face last ticked or unticked in ``cluster_id``'s grid (start of a range)."""
    return st.session_state.setdefault(K.anchor, {}).get(int(cluster_id))


def set_anchor(cluster_id: int, face_id: str | None) -> None:
    st.session_state.setdefault(K.anchor, {})[int(cluster_id)] = face_id


def inspected() -> str | None:
    """The face whose source photo is open, if any."""
    return st.session_state.get(K.inspect)


def inspect(face_id: str | None) -> None:
    st.session_state[K.inspect] = face_id


def deselected(cluster_id: int) -> set[str]:
    """Faces of ``cluster_id`` the annotator clicked out of the selection (mutable set)."""
    table: dict[int, set[str]] = st.session_state.setdefault(K.deselected, {})
    return table.setdefault(int(cluster_id), set())


def reset_selection(cluster_id: int, *, none_of: list[str] | None = None) -> None:
    """Select all faces of the cluster (``none_of=None``) or none of ``none_of``."""
    table: dict[int, set[str]] = st.session_state.setdefault(K.deselected, {})
    table[int(cluster_id)] = set(none_of or [])
    clear_widget_keys(SELECT_PREFIX)


def invert_selection(cluster_id: int, members: list[str]) -> None:
    """Tick the unticked faces of the cluster and untick the ticked ones."""
    table: dict[int, set[str]] = st.session_state.setdefault(K.deselected, {})
    out = table.get(int(cluster_id), set())
    table[int(cluster_id)] = {f for f in members if f not in out}
    clear_widget_keys(SELECT_PREFIX)


def clear_widget_keys(prefix: str) -> None:
    for key in [k for k in st.session_state if str(k).startswith(prefix)]:
        del st.session_state[key]


def knn_query() -> str | None:
    return st.session_state.get(K.knn_query)


def set_knn_query(face_id: str | None) -> None:
    st.session_state[K.knn_query] = face_id
    clear_widget_keys(KNN_PREFIX)


def map_selection() -> np.ndarray:
    """Row indices (into the current run) selected on the map; empty when none."""
    sel = st.session_state.get(K.map_selection)
    return np.zeros(0, dtype=np.int64) if sel is None else sel


def set_map_selection(rows: np.ndarray | None) -> None:
    st.session_state[K.map_selection] = None if rows is None else np.asarray(rows, np.int64)


def clear_map_selection() -> None:
    """No faces selected on the map, and a fresh chart: the old box or lasso and the dimmed
    points go too (the chart keeps its selection as long as its key stays)."""
    set_map_selection(None)
    st.session_state.pop("_map_event", None)
    st.session_state[K.map_chart_n] = int(st.session_state.get(K.map_chart_n, 0)) + 1


def map_chart_key() -> str:
    return f"{K.map_chart}_{int(st.session_state.get(K.map_chart_n, 0))}"


def flash(message: str, kind: str = "success") -> None:
    """Queue a message shown once at the top of the next run."""
    st.session_state[K.flash] = (kind, message)


def require_run_view(ws: Workspace) -> RunView:
    """The current cluster run's view; without one, say how to make it and stop the page."""
    from labeler.ui import data

    view = data.run_view(ws)
    if view is None:
        st.info(f"No cluster run yet: run `labeler cluster -w {ws.root}`.")
        st.stop()
    return view


#: The height of a one-line message: without a message its place is kept empty, so that
#: the page below does not move when a message comes or goes (a grid of 96 faces that moves
#: is laid out and painted again: measured 0.9 s against 0.5 s for a label key after Undo).
FLASH_SLOT = '<div style="height: 3.25rem" aria-hidden="true"></div>'


def show_flash() -> None:
    """The last action's message, or an empty slot of its height."""
    item = st.session_state.pop(K.flash, None)
    if item:
        kind, message = item
        getattr(st, kind, st.info)(message)
    else:
        st.html(FLASH_SLOT)


def is_new_map_event(selection: dict) -> bool:
    """True once per new non-empty chart selection (the chart keeps re-reporting the last one)."""
    import json

    if not any(selection.get(k) for k in ("points", "box", "lasso")):
        return False
    sig = json.dumps(selection, sort_keys=True, default=str)
    if st.session_state.get("_map_event") == sig:
        return False
    st.session_state["_map_event"] = sig
    return True
