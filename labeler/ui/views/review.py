"""Review: the Suggest step and its suggestion groups, and the suspected label errors.

Nothing here can wreck the labels: only groups whose out-of-fold precision holds up are
pre-ticked, suspects never are, Accept is never the primary button, each accept is one
event, Undo / Redo sit on the page and a banner says what the last click changed."""

from __future__ import annotations

import streamlit as st

from labeler.ui import components, data, state, suggest_panel
from labeler.ui.state import K

ws = state.workspace()
st.header("Review", divider="gray")
store = data.store(ws)
names = store.schema().names
state.show_flash()
suggest_panel.banner(ws)

c1, c2, c3 = st.columns([2, 3, 2], vertical_alignment="bottom")
with c1:
    fld = components.field_picker(names, key=K.review_field)
with c2:
    kind = st.radio(
        "Queue", ["Suggestions", "Suspected errors"], horizontal=True, key=K.review_kind
    )
with c3:
    suggest_panel.undo_redo(ws)

suggest_panel.suggest_bar(ws, fld)
if kind == "Suggestions":
    min_precision = st.slider(
        "Minimum measured precision", 0.0, 1.0, 0.0, 0.05, key=K.review_min,
        help="Hide suggestion groups whose out-of-fold precision is lower.",
    )  # fmt: skip
    suggest_panel.groups_view(ws, store, fld, min_precision)
else:
    suggest_panel.suspects_view(ws, store, fld)
