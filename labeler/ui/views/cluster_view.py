"""Cluster view: a paged grid of one cluster's faces. Click faces out of the selection
(outliers), assign one label to the selection, undo/redo, split, merge, "more like this"."""

from __future__ import annotations

import math

import streamlit as st

from labeler.ui import components, data, runs, state
from labeler.ui.state import KNN_PREFIX, SELECT_PREFIX, K

PAGE_SIZE = 48

ws = state.workspace()
st.header("Cluster view", divider="gray")
state.show_flash()
view = data.run_view(ws)
if view is None:
    st.info(f"No cluster run yet: run `labeler cluster -w {ws.root}`.")
    st.stop()
run = view.run
store = data.store(ws)
schema = data.schema(ws)
who = state.annotator()

# --- which cluster -------------------------------------------------------------------------
options = sorted(view.members, key=lambda c: (c < 0, -len(view.members[c]), c))
chosen = state.cluster()
if chosen not in view.members:
    chosen = options[0]
if st.session_state.get(K.cluster_pick) != chosen:
    st.session_state[K.cluster_pick] = chosen
top = st.columns([2, 1, 1.5])
with top[0]:
    cluster = st.selectbox(
        "Cluster",
        options,
        key=K.cluster_pick,
        format_func=lambda c: (
            f"{'noise' if c < 0 else f'cluster {c}'} ({len(view.members[c]):,} faces)"
        ),
        on_change=lambda: state.set_cluster(st.session_state[K.cluster_pick]),
    )
if cluster != state.cluster():
    state.set_cluster(cluster)

rows = view.members[cluster]
members = [str(f) for f in run.face_ids[rows]]
desel = state.deselected(cluster)
desel &= set(members)
selected = [f for f in members if f not in desel]

# --- label the selection --------------------------------------------------------------------
fld, value = components.label_picker(
    schema, key_field=K.assign_field, key_value=K.assign_value, cols=top[1:]
)
labels = data.labels(ws, fld)
b1, b2, b3, b4 = st.columns([3, 1, 1, 2], vertical_alignment="bottom")
if b1.button(
    f"Assign '{value}' to {len(selected):,} selected",
    key=K.assign_btn,
    type="primary",
    disabled=not selected,
    width="stretch",
):
    source = "cluster" if not desel else "selection"
    eid = store.assign(selected, fld, value, annotator=who, source=source)
    state.flash(f"Labeled {len(selected):,} faces {fld}={value} (event {eid}).")
    st.rerun()
if b2.button("Select all", key=K.select_all_btn, width="stretch"):
    state.reset_selection(cluster)
    st.rerun()
if b3.button("Select none", key=K.select_none_btn, width="stretch"):
    state.reset_selection(cluster, none_of=members)
    st.rerun()
with b4:
    components.undo_redo(ws)

done = sum(1 for f in members if f in labels)
n_pages = max(1, math.ceil(len(members) / PAGE_SIZE))
g1, g2, g3 = st.columns([4, 1.2, 1], vertical_alignment="center")
g1.caption(
    f"{len(selected):,} of {len(members):,} faces selected · {done:,} labeled for {fld}. "
    "Untick a face to leave it out (outliers)."
)
outliers_first = g2.toggle("Most outlying first", key="outliers_first")
page = g3.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key=K.grid_page)
ordered = members[::-1] if outliers_first else members
shown = ordered[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]


def _toggle(fid: str, value: bool) -> None:
    (desel.discard if value else desel.add)(fid)


components.thumb_grid(
    ws,
    shown,
    prefix=SELECT_PREFIX,
    checked=lambda f: f not in desel,
    captions=components.caption_for(labels),
    on_toggle=_toggle,
)

# --- structure: split / merge / revert -------------------------------------------------------
with st.expander("Split or merge this cluster", expanded=False):
    noise = cluster < 0
    s1, s2 = st.columns(2)
    with s1:
        if st.button(
            f"Move the {len(desel):,} unselected faces to a new cluster",
            key=K.split_out_btn,
            disabled=noise or not desel or not selected,
        ):
            new = runs.split_out(ws, run, desel, cluster=cluster)
            state.reset_selection(cluster)
            state.flash(f"Split cluster {cluster}: new run {new}.")
            st.rerun()
        k = st.number_input("Parts", 2, 8, 2, key=K.split_k)
        if st.button(f"Split into {k} by similarity", key=K.split_k_btn, disabled=noise):
            X = runs.run_vectors(ws, run)  # None: split on the 2-D map
            new = runs.split_kmeans(ws, run, X, cluster=cluster, k=int(k))
            state.reset_selection(cluster)
            state.flash(f"Split cluster {cluster} into {k}: new run {new}.")
            st.rerun()
    with s2:
        targets = [c for c in options if c >= 0 and c != cluster]
        target = (
            st.selectbox("Merge into", targets, key=f"{K.merge_target}_{cluster}")
            if targets
            else None
        )
        if st.button("Merge", key=K.merge_btn, disabled=noise or target is None):
            new = runs.merge(ws, run, source=cluster, target=int(target))
            state.set_cluster(int(target))
            state.flash(f"Merged cluster {cluster} into {target}: new run {new}.")
            st.rerun()
        parent = run.params.get("parent")
        if st.button("Revert last split/merge", key=K.revert_btn, disabled=not parent):
            back = runs.revert_run(ws, run)
            state.flash(f"Back to run {back}." if back else "Nothing to revert.", "info")
            st.rerun()

# --- more like this --------------------------------------------------------------------------
with st.expander("More like this", expanded=state.knn_query() is not None):
    q1, q2, q3 = st.columns([3, 1, 1])
    query = q1.selectbox(
        "Face", shown, key=K.knn_face, format_func=lambda f: f"{f} ({labels.get(f, '—')})"
    )
    k = q2.number_input("Neighbours", 4, 200, 24, step=4, key=K.knn_k)
    if q3.button("Find similar", key=K.knn_btn) and query:
        state.set_knn_query(query)
    if state.knn_query():
        q = state.knn_query()
        st.image(
            data.crop_bytes(ws, q) or components._placeholder(), caption=f"query {q}", width=128
        )
        near = data.more_like_this(ws, view, q, k=int(k))
        picked = components.thumb_grid(
            ws,
            near,
            prefix=KNN_PREFIX,
            checked=lambda f: True,
            captions=components.caption_for(labels),
        )
        if st.button(
            f"Assign '{value}' to the query and {len(picked)} ticked neighbours",
            key=K.knn_assign_btn,
        ):
            eid = store.assign([q, *picked], fld, value, annotator=who, source="selection")
            state.set_knn_query(None)
            state.flash(f"Labeled {len(picked) + 1} faces {fld}={value} (event {eid}).")
            st.rerun()
