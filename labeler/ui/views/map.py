"""Map: the 2-D layout of all faces; box or lasso a region to label every face inside it.

At most ``data.MAP_MAX_POINTS`` points (a stratified sample, cached per run) are drawn; a
box/lasso selects ALL faces inside the shape server side, including those not drawn, and is
kept as one compact array of row indices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from labeler._deps import require
from labeler.ui import components, data, state
from labeler.ui.state import K

ws = state.workspace()
st.header("Map", divider="gray")
state.show_flash()
view = state.require_run_view(ws)
run = view.run
store = data.store(ws)
schema = data.schema(ws)


def assign(face_ids: list[str], fld: str, value: str) -> None:
    eid = store.assign(face_ids, fld, value, annotator=state.annotator(), source="selection")
    state.set_map_selection(None)
    state.flash(f"Labeled {len(face_ids):,} faces {fld}={value} (event {eid}).")


top = st.columns([1, 1.5, 1.5])
fld, value = components.label_picker(
    schema, key_field=K.assign_field, key_value=K.assign_value, cols=top[:2]
)
color_by = top[2].radio(
    "Colour by", ["cluster", "label", "suggestion"], horizontal=True, key=K.map_color
)
fig = data.map_figure(ws, fld, color_by)
st.caption(
    f"Showing {len(view.sample):,} of {len(run.face_ids):,} faces; "
    "a box or lasso selects every face inside it."
)
require("plotly", purpose="the map page")
controls = st.container()  # filled below, once the chart reported its selection
event = st.plotly_chart(
    fig.figure,
    key=K.map_chart,
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    config={"displaylogo": False},
)
selection = dict(event.selection) if event is not None and hasattr(event, "selection") else {}
if state.is_new_map_event(selection):
    state.set_map_selection(data.rows_in_selection(run.xy, selection, fig.trace_rows))

rows = state.map_selection()
with controls:
    if len(rows):
        lab = data.labels_by_row(ws, fld)[rows]
        mix = pd.Series(lab).value_counts()
        st.markdown(
            f"**{len(rows):,} faces selected** · " + ", ".join(f"{k} {v}" for k, v in mix.items())
        )
        b1, b2 = st.columns([3, 1])
        b1.button(
            f"Assign '{value}' to the {len(rows):,} selected faces", key=K.map_assign_btn,
            type="primary", on_click=assign, args=(run.face_ids[rows].tolist(), fld, value),
        )  # fmt: skip
        b2.button(
            "Clear selection", key=K.map_clear_btn, on_click=state.set_map_selection, args=(None,)
        )
    else:
        st.caption("Drag a box or lasso on the map (toolbar, top right) to select faces.")
if len(rows):  # below the chart: a glimpse of what is selected
    preview = [str(f) for f in run.face_ids[rows[np.argsort(run.outlier_score[rows])][:16]]]
    st.caption("Most central selected faces")
    cols = st.columns(8)
    for i, fid in enumerate(preview):
        img = data.crop_bytes(ws, fid)
        if img:
            cols[i % 8].image(img, width="stretch")
