"""Map: the 2-D layout of all faces; box or lasso a region to label every face inside it.

At most ``data.MAP_MAX_POINTS`` points (a stratified sample, cached per run) are drawn; a
box/lasso selects ALL faces inside the shape server side, including those not drawn, and is
kept as one compact array of row indices. *Assign* (Enter) labels the unlabeled faces of
the selection; faces with a label change only through the *Relabel* button, which names
their count. *Undo* / *Redo* at the top take back the annotator's last action.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from labeler._deps import require
from labeler.labels import AssignPlan
from labeler.ui import chart, components, data, state
from labeler.ui.state import K

ws = state.workspace()
st.header("Map", divider="gray")
state.show_flash()
view = state.require_run_view(ws)
run = view.run
store = data.store(ws)
schema = data.schema(ws)


def assign(plan: AssignPlan, fld: str, relabel: bool) -> None:
    """Write the faces the button named, as the page showed them (one event; a face labeled
    since is left and reported), then clear the selection and the shape (kept when the store
    refused the write: the error says why, the selection stays)."""
    result = components.write_plan(ws, plan, fld, "selection", relabel=relabel)
    if result is None and plan.faces(relabel=relabel):
        return
    state.clear_map_selection()
    st.session_state.pop(K.map_clusters, None)


top = st.columns([1, 1.5, 1.5, 1.3], vertical_alignment="bottom")
fld, value = components.label_picker(
    schema, key_field=K.assign_field, key_value=K.assign_value, cols=top[:2]
)
color_by = top[2].radio(
    "Colour by", ["cluster", "label", "suggestion"], horizontal=True, key=K.map_color
)
with top[3]:  # the annotator's own last action, undone here (no trip to another page)
    components.undo_redo(ws)
fig = chart.map_figure(ws, fld, color_by)
st.caption(
    f"Showing {len(view.sample):,} of {len(run.face_ids):,} faces. Hover a point for its "
    "face, cluster and label, click it to select the face; a box or lasso selects every face "
    "inside it (the numbers on the map are cluster numbers)."
)
require("plotly", purpose="the map page")
event = st.plotly_chart(
    fig.plotly,
    key=state.map_chart_key(),
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    config={"displaylogo": False},
)
selection = dict(event.selection) if event is not None and hasattr(event, "selection") else {}
if state.is_new_map_event(selection):
    state.set_map_selection(chart.rows_in_selection(run.xy, selection, fig.trace_rows))
    drawn = chart.rows_in_selection(run.xy, {"points": selection.get("points") or []},
                                   fig.trace_rows)  # fmt: skip
    st.session_state["_map_drawn"] = drawn
    st.session_state["_map_shape"] = bool(selection.get("box") or selection.get("lasso"))
    st.session_state.pop(K.map_clusters, None)

rows = state.map_selection()
labels_now = data.labels_by_row(ws, fld)
# the selection's controls come below the chart: the chart never jumps when they appear
with st.container():
    if len(rows):
        drawn = st.session_state.get("_map_drawn", rows)
        info = chart.selection_summary(rows, drawn, run.labels, labels_now)
        hidden = (
            f" — **{info['hidden']:,} of them not drawn** (sampled out, or in a group hidden "
            "from the legend)"
            if info["hidden"] and st.session_state.get("_map_shape")
            else ""
        )
        st.markdown(
            f"**{data.plural(int(info['total']), 'face')} selected**{hidden}. "
            "Clusters: " + ", ".join(f"{k} {v}" for k, v in info["by_cluster"].items())
            + " · labels: " + ", ".join(f"{k} {v}" for k, v in info["by_label"].items())
        )  # fmt: skip
        present = [(int(c), int(n)) for c, n in pd.Series(run.labels[rows]).value_counts()
                   .sort_index().items()]  # fmt: skip
        if len(present) > 1:
            keep = st.multiselect(
                "Take the faces of", present, default=present, key=K.map_clusters,
                format_func=lambda cn: f"{chart.cluster_name(cn[0])} ({cn[1]})",
            )  # fmt: skip
        taken = rows
        if len(present) > 1:
            taken = rows[np.isin(run.labels[rows], [c for c, _ in keep])]
        plan = components.plan_for(ws, run.face_ids[taken].tolist(), fld, value)
        b1, b2, b3 = st.columns([3, 3, 1.2])
        components.assign_buttons(
            plan, key=K.map_assign_btn, relabel_key=K.map_relabel_btn, cols=(b1, b2),
            on_new=partial(assign, plan, fld, False),
            on_relabel=partial(assign, plan, fld, True),
        )  # fmt: skip
        b3.button(
            "Clear selection", key=K.map_clear_btn, on_click=state.clear_map_selection,
            width="stretch",
        )  # fmt: skip
    else:
        st.caption("Drag a box or lasso on the map (toolbar, top right) to select faces; "
                   "what it takes and the buttons to label it appear here.")  # fmt: skip
if len(rows):  # below the chart: a glimpse of what is selected
    preview = [str(f) for f in run.face_ids[rows[np.argsort(run.outlier_score[rows])][:16]]]
    st.caption("Most central selected faces (the photo button shows where a face came from)")
    cols = st.columns(8)
    for i, fid in enumerate(preview):
        r = int(view.row_of.get_loc(fid))
        with cols[i % 8]:
            st.image(data.crop_bytes(ws, fid) or components.placeholder(), width="stretch",
                     caption=f"{chart.cluster_name(int(run.labels[r]))} · {labels_now[r]}")  # fmt: skip
            st.button("Photo", key=f"map_photo_{fid}", icon=":material/image:",
                      on_click=components.open_photo, args=(fid,), type="tertiary")  # fmt: skip
components.photo_dialog(ws)
# last, so that the map is on screen first: the thumbnails its hover shows (hidden sheets)
components.map_hover_thumbnails(chart.map_thumbs(ws))
