"""Cluster view: a paged grid of one cluster's faces. Click faces out of the selection
(outliers), assign one label to the selection, undo/redo, split, merge, "more like this".

Actions run in button callbacks (before the page renders), so one click = one rerun.
Bulk actions label only unlabeled faces; a labeled face changes only through the Relabel
button, which names how many faces, which labels it replaces and whose. Every one writes
through :func:`components.write_plan` with the labels the page showed: a face someone labeled
since is left as it is, and the message says how many and by whom.
Keyboard: 1-9 pick a label, 0 *not a face*, Enter assigns it, Left/Right move the cursor,
Space ticks or unticks the cursor's face and moves on. With *Range ticks* on, a click ticks
or unticks every face between it and the previous click (what shift-click does elsewhere).
"""

from __future__ import annotations

import math
from functools import partial

import streamlit as st

from labeler.cluster import edit
from labeler.labels import AssignPlan, plan_assign
from labeler.ui import components, data, state
from labeler.ui.state import KNN_PREFIX, SELECT_PREFIX, K

PAGE_SIZES = (48, 96, 192, 480)

ws = state.workspace()
st.header("Cluster view", divider="gray")
view = state.require_run_view(ws)
run = view.run
schema = data.schema(ws)
state.show_flash()


# --- actions (callbacks) ---------------------------------------------------------------------
def assign_selection(cluster: int, members: tuple[str, ...], fld: str,
                     shown: dict[str, str]) -> None:  # fmt: skip
    """Assign the label picked now to the unlabeled faces ticked now (Enter). The ticks and
    the label are read at click time, not from the last render: a key press can arrive
    before the rerun of the previous one shows. The labels are those the page showed
    (``shown``, of ``fld``): a face labeled since (by anyone) is left and reported. Faces
    with a label keep it: only the Relabel button changes them."""
    out = state.deselected(cluster)
    picked = [f for f in members if f not in out]
    value = st.session_state.get(K.assign_value)
    if not picked or value not in components.label_values(schema, fld):
        state.flash("Nothing to assign: tick faces and pick a label.", "info")
        return
    plan = plan_assign(picked, shown, str(value))
    if not plan.new:
        state.flash(
            f"The {data.plural(len(picked), 'ticked face')} have labels already: nothing "
            "changed. Use Relabel to change them.", "info",
        )  # fmt: skip
        return
    source = "cluster" if not out & set(members) else "selection"
    components.write_plan(ws, plan, fld, source)


def split_out(cluster: int, faces: list[str]) -> None:
    new = edit.move_faces(ws, faces, cluster)
    state.reset_selection(cluster)
    state.flash(
        f"Moved {data.plural(len(faces), 'face')} out of cluster {cluster} into cluster "
        f"{new.params['edit']['into']} (run {new.params['run_id']})."
    )


def split_k(cluster: int) -> None:
    k = int(st.session_state[K.split_k])
    new = edit.split_cluster(ws, None, cluster, n_parts=k)
    state.reset_selection(cluster)
    state.set_cluster(new.params["edit"]["into"][0])  # the biggest part
    parts = ", ".join(str(p) for p in new.params["edit"]["into"])
    state.flash(f"Split cluster {cluster} into {parts} (run {new.params['run_id']}).")


def merge(cluster: int, key: str) -> None:
    target = int(st.session_state[key])
    new = edit.merge_clusters(ws, [cluster, target], into=target)
    state.set_cluster(target)
    state.flash(f"Merged cluster {cluster} into {target} (run {new.params['run_id']}).")


def knn_assign(plan: AssignPlan, fld: str, relabel: bool) -> None:
    result = components.write_plan(ws, plan, fld, "selection", relabel=relabel)
    if result is not None or not plan.faces(relabel=relabel):  # refused: the neighbours stay
        state.set_knn_query(None)


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

members = [str(f) for f in run.face_ids[view.members[cluster]]]
desel = state.deselected(cluster)
desel &= set(members)
selected = [f for f in members if f not in desel]

# --- label the selection --------------------------------------------------------------------
if st.session_state.get(K.value_cluster) != cluster:  # 'not a face' stays with its cluster
    components.drop_destructive(schema, key_value=K.assign_value)
st.session_state[K.value_cluster] = cluster
fld, value = components.label_picker(
    schema, key_field=K.assign_field, key_value=K.assign_value, cols=top[1:]
)
components.label_keys(schema, fld, key_value=K.assign_value)
labels = data.labels(ws, fld)
order = components.label_values(schema, fld)
plan = components.plan_for(ws, selected, fld, value, labels)
# keys act on what is in front of the annotator: with More like this open, Enter is the
# panel's (its neighbours), never the grid's behind it
panel_open = state.knn_query() is not None
components.assign_buttons(
    plan,
    key=K.assign_btn,
    relabel_key=K.relabel_btn,
    shortcut=None if panel_open else "Enter",
    on_new=partial(assign_selection, cluster, tuple(members), fld, labels),
    # the explicit choice: the faces the button names, as the page showed them, one event
    on_relabel=partial(components.write_plan, ws, plan, fld, "selection", relabel=True),
)
rest = [f for f in members if f in desel and f not in labels]
rest_plan = plan_assign(rest, labels, value)  # unlabeled as shown: only those stay so
b1, b2, b3, b4, b5 = st.columns([1, 1, 1.2, 2.6, 2], vertical_alignment="bottom")
b1.button(
    "Select all", key=K.select_all_btn, width="stretch",
    on_click=state.reset_selection, args=(cluster,),
)  # fmt: skip
b2.button(
    "Select none", key=K.select_none_btn, width="stretch",
    on_click=state.reset_selection, args=(cluster,), kwargs={"none_of": members},
)  # fmt: skip
b3.button(
    "Invert", key=K.invert_btn, width="stretch", icon=":material/flip:",
    help="Tick the unticked faces and untick the ticked ones",
    on_click=state.invert_selection, args=(cluster, members),
)  # fmt: skip
b4.button(
    f"Assign '{components.value_name(value)}' to the rest: "
    f"{data.plural(len(rest), 'unticked unlabeled face')}",
    key=K.rest_btn, width="stretch", disabled=not rest,
    help="After labeling the ticked faces: give the faces you left out their label.",
    on_click=components.write_plan, args=(ws, rest_plan, fld, "selection"),
)  # fmt: skip
with b5:
    components.undo_redo(ws)

done = sum(1 for f in members if f in labels)
g1, g2, g3, g6, g4, g5 = st.columns([3.2, 1.3, 1.1, 1.1, 1, 1], vertical_alignment="center")
g1.caption(
    f"{len(selected):,} of {len(members):,} faces selected · {done:,} labeled for {fld}. "
    "Untick a face to leave it out (outliers). Keys: 1-9 label, 0 not a face, Enter assign "
    "to the unlabeled ticked faces"
    + (" of the similar-faces panel open below (Close it to label this grid)" if panel_open else "")
    + ", Left/Right move, Space tick, P the outlined face's source photo."
)
outliers_first = g2.toggle("Most outlying first", key=K.outliers_first)
range_ticks = g3.toggle("Range ticks", key=K.range_ticks,
                        help="A click ticks or unticks every face since the previous click")  # fmt: skip
photo_all = g6.toggle(
    "Photo buttons", key=K.photo_buttons,
    help="A source-photo button on every face (pages redraw about twice as slowly). "
    "Without: on the outlined face only (P); a click on a face moves the outline.",
)  # fmt: skip
state.sticky(K.page_size)
page_size = int(g4.selectbox("Per page", PAGE_SIZES, key=K.page_size))
state.keep(K.page_size)
n_pages = max(1, math.ceil(len(members) / page_size))
page = g5.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key=K.grid_page)
ordered = members[::-1] if outliers_first else members
page = min(int(page), n_pages)
shown = ordered[(page - 1) * page_size : page * page_size]


def _set_box(fid: str, value: bool) -> None:
    (desel.discard if value else desel.add)(fid)
    st.session_state[f"{SELECT_PREFIX}{fid}"] = value


def _toggle(fid: str, value: bool) -> None:
    start = state.anchor(cluster)
    if st.session_state.get(K.range_ticks) and start in shown and start != fid:
        i, j = sorted((shown.index(start), shown.index(fid)))
        for other in shown[i : j + 1]:
            _set_box(other, value)
    (desel.discard if value else desel.add)(fid)
    state.set_anchor(cluster, fid)
    state.set_cursor(cluster, fid)


cur = state.cursor(cluster)
if cur not in shown:
    cur = shown[0] if shown else None


def _move(step: int) -> None:
    if not shown:
        return
    i = shown.index(cur) if cur in shown else 0
    state.set_cursor(cluster, shown[max(0, min(len(shown) - 1, i + step))])


def _tick_cursor() -> None:
    if cur is None:
        return
    _set_box(cur, cur in desel)  # flip
    state.set_anchor(cluster, cur)
    _move(+1)


k1, k2, k3, _ = st.columns([1.3, 1.1, 1.6, 4])
k1.button("Previous", key=K.cursor_prev_btn, icon=":material/arrow_back:", shortcut="Left",
          on_click=_move, args=(-1,), width="stretch")  # fmt: skip
k2.button("Next", key=K.cursor_next_btn, icon=":material/arrow_forward:", shortcut="Right",
          on_click=_move, args=(+1,), width="stretch")  # fmt: skip
k3.button("Tick / untick", key=K.cursor_tick_btn, icon=":material/check_box:",
          shortcut="Space", on_click=_tick_cursor, width="stretch")  # fmt: skip

components.thumb_grid(
    ws,
    shown,
    prefix=SELECT_PREFIX,
    checked=lambda f: f not in desel,
    captions=components.caption_for(labels, order),
    on_toggle=_toggle,
    cursor=cur,
    photo_buttons=photo_all,
)
components.photo_dialog(ws)

# --- structure: split / merge / revert -------------------------------------------------------
with st.expander("Split or merge this cluster", expanded=False):
    noise = cluster < 0
    s1, s2 = st.columns(2)
    with s1:
        st.button(
            f"Move the {len(desel):,} unselected faces to a new cluster",
            key=K.split_out_btn,
            disabled=noise or not desel or not selected,
            on_click=split_out,
            args=(cluster, sorted(desel)),
        )
        k = st.number_input("Parts", 2, 8, 2, key=K.split_k)
        st.button(
            f"Split into {k} by similarity", key=K.split_k_btn, disabled=noise,
            on_click=split_k, args=(cluster,),
        )  # fmt: skip
    with s2:
        targets = [c for c in options if c >= 0 and c != cluster]
        merge_key = f"{K.merge_target}_{cluster}"
        if targets:
            st.selectbox("Merge into", targets, key=merge_key)
        st.button(
            "Merge", key=K.merge_btn, disabled=noise or not targets,
            on_click=merge, args=(cluster, merge_key),
        )  # fmt: skip
        st.button(
            "Revert last split/merge/regroup", key=K.revert_btn,
            disabled=not run.params.get("parent"), on_click=components.revert_run, args=(ws,),
        )  # fmt: skip

# --- more like this --------------------------------------------------------------------------
with st.expander("More like this", expanded=state.knn_query() is not None):
    q1, q2, q3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    query = q1.selectbox(
        "Face", shown, key=K.knn_face, format_func=lambda f: f"{f} ({labels.get(f, '—')})"
    )
    k = q2.number_input("Neighbours", 4, 200, 24, step=4, key=K.knn_k)
    q3.button("Find similar", key=K.knn_btn, on_click=state.set_knn_query, args=(query,))
    show_labeled = st.session_state.get(K.knn_show_labeled, False)
    q = state.knn_query()
    near: list[str] = []
    if q:
        near = data.more_like_this(
            ws, view, q, k=int(k), exclude=None if show_labeled else set(labels)
        )
        # the buttons (and what Enter does here) right under "Find similar", so the count
        # they state is in view; the grid's ticks of the previous run name the faces
        ticked = [f for f in near if st.session_state.get(f"{KNN_PREFIX}{f}", f not in labels)]
        knn_plan = components.plan_for(ws, [q, *ticked], fld, value, labels)
        a1, a2, a3 = st.columns([3, 2, 1], vertical_alignment="bottom")
        components.assign_buttons(
            knn_plan,
            key=K.knn_assign_btn,
            relabel_key=K.knn_relabel_btn,
            shortcut="Enter",
            cols=(a1, a2),
            on_new=partial(knn_assign, knn_plan, fld, False),
            on_relabel=partial(knn_assign, knn_plan, fld, True),
        )
        a3.button("Close", key=K.knn_close_btn, icon=":material/close:", width="stretch",
                  on_click=state.set_knn_query, args=(None,),
                  help="Close the panel: Enter labels the cluster's grid again")  # fmt: skip
        st.caption("Enter assigns to the ticked unlabeled faces of this panel (the query face "
                   "included).")  # fmt: skip
    st.toggle("Show faces already labeled too", key=K.knn_show_labeled)
    if q:
        st.image(
            data.crop_bytes(ws, q) or components.placeholder(), caption=f"query {q}", width=128
        )
        if not near:
            st.caption("Every similar face is labeled already.")
        components.thumb_grid(
            ws,
            near,
            prefix=KNN_PREFIX,
            checked=lambda f: f not in labels,  # never pre-tick a labeled face
            captions=components.caption_for(labels, order),
        )
