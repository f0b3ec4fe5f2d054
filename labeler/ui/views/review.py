"""Review: machine suggestions and suspected label errors, most confident first; accept or
reject in bulk."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from labeler.ui import components, data, state
from labeler.ui.state import REVIEW_PREFIX, K

PAGE_SIZE = 48

ws = state.workspace()
st.header("Review", divider="gray")
store = data.store(ws)
schema = store.schema()
names = schema.names
state.show_flash()

c1, c2, c3 = st.columns([1, 2, 2])
with c1:
    current_field = state.field(names[0])
    fld = st.selectbox(
        "Field", names, index=names.index(current_field) if current_field in names else 0,
        key=K.review_field,
    )  # fmt: skip
    state.set_field(fld)
with c2:
    kind = st.radio(
        "Queue", ["Suggestions", "Suspected errors"], horizontal=True, key=K.review_kind
    )
with c3:
    min_conf = st.slider("Minimum confidence", 0.0, 1.0, 0.5, 0.05, key=K.review_min)

suspects = kind == "Suspected errors"
if suspects:
    items = store.suspects(fld, pending=True).rename(columns={"score": "confidence"})
    value_col = "suggested"
else:
    items = store.suggestions(fld, pending=True)
    items = items.drop_duplicates("face_id")  # best method's suggestion per face
    value_col = "value"
items = items[items["confidence"] >= min_conf].reset_index(drop=True)

if items.empty:
    st.info(
        "Nothing to review. Suggestions come from 'labeler propagate' / 'labeler train' "
        "once some faces are labeled."
    )
    st.stop()

st.caption(f"{len(items):,} pending {kind.lower()} for {fld} with confidence ≥ {min_conf:.2f}")
page = items.iloc[:PAGE_SIZE]
info = {
    r.face_id: (
        f"{r.given} → {r.suggested} {r.confidence:.2f}"
        if suspects
        else f"→ {r.value} {r.confidence:.2f}"
    )
    for r in page.itertuples()
}
ticked = components.thumb_grid(
    ws, page["face_id"].tolist(), prefix=REVIEW_PREFIX, checked=lambda f: True,
    captions=info.get,
)  # fmt: skip
chosen = page[page["face_id"].isin(ticked)]


def accept(items: pd.DataFrame) -> None:
    events = store.accept(items, fld, annotator=state.annotator(), value_column=value_col)
    state.clear_widget_keys(REVIEW_PREFIX)
    state.flash(f"Accepted {len(items):,} ({len(events)} events).")


def reject(items: pd.DataFrame) -> None:
    store.reject(
        items, fld, annotator=state.annotator(), kind="suspect" if suspects else "suggestion"
    )
    state.clear_widget_keys(REVIEW_PREFIX)
    state.flash(f"Rejected {len(items):,}.", "info")


b1, b2, b3 = st.columns(3)
b1.button(
    f"Accept {len(chosen)} ticked", key=K.review_accept_btn, type="primary",
    disabled=chosen.empty, on_click=accept, args=(chosen,),
)  # fmt: skip
b2.button(
    f"Reject {len(chosen)} ticked", key=K.review_reject_btn,
    disabled=chosen.empty, on_click=reject, args=(chosen,),
)  # fmt: skip
b3.button(
    f"Accept all {len(items):,} ≥ {min_conf:.2f}", key=K.review_accept_all_btn,
    on_click=accept, args=(items,),
)  # fmt: skip
components.undo_redo(ws)
