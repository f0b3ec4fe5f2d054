"""Clusters: one card per cluster with medoid thumbnails, size and label mix; sortable.
Regroup: the unlabeled faces, regrouped in one click by what the labels taught
(:func:`labeler.loop.regroup.regroup_workspace`); Revert goes back."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from labeler.labels import NOT_A_FACE
from labeler.loop.regroup import MIN_LABELS
from labeler.ui import components, data, state
from labeler.ui.state import K

CARDS_PER_PAGE = 12
CARDS_PER_ROW = 3

ws = state.workspace()
st.header("Clusters", divider="gray")
state.show_flash()
view = state.require_run_view(ws)

schema = data.schema(ws)
names = schema.names
c1, c2, c3 = st.columns([1, 2, 1])
with c1:
    fld = components.field_picker(names, key=K.clusters_field)
with c2:
    sort = st.radio(
        "Sort by", ["size", "impurity", "unlabeled"], horizontal=True, key=K.clusters_sort
    )
summary = data.cluster_summary(ws, fld)
ascending = False
summary = summary.sort_values([sort, "cluster"], ascending=[ascending, True], kind="stable")
summary = pd.concat([summary[summary["cluster"] >= 0], summary[summary["cluster"] < 0]])
n_pages = max(1, math.ceil(len(summary) / CARDS_PER_PAGE))
with c3:
    page = st.number_input("Page", 1, n_pages, 1, key=K.clusters_page)
st.caption(
    f"{len(summary):,} groups, {int(summary['labeled'].sum()):,} of "
    f"{int(summary['size'].sum()):,} faces labeled for {fld}"
)


def regroup_now(fld: str) -> None:
    """Regroup the faces without a label for ``fld`` (a new run; no label is written) in a
    child process, ``labeler regroup``: at 133,000 faces it works for over a minute, and in
    the app's process its Python parts would hold the GIL that every annotator's page needs.
    """
    import subprocess
    import sys

    with st.spinner("Regrouping the unlabeled faces (about a minute at 100,000 faces)…"):
        done = subprocess.run(
            [sys.executable, "-c", "from labeler.cli import main; main()", "regroup",
             "-w", str(ws.root), "--field", fld],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if done.returncode:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        state.flash(
            lines[-1] if lines else f"labeler regroup stopped ({done.returncode})", "warning"
        )
        return
    said = done.stdout.strip().splitlines()[-1]
    state.flash(
        said[:1].upper() + said[1:] + ". Labeled faces kept their groups. Revert goes back."
    )


n_labeled = int(summary["labeled"].sum())
n_unlabeled = int(summary["size"].sum()) - n_labeled
n_states = len(set(data.labels(ws, fld).values()) - {NOT_A_FACE})
last = view.run.params.get("edit") or {}
why_not = (
    "every face is labeled" if not n_unlabeled
    else f"these groups were regrouped from these {n_labeled:,} labels; label some first"
    if last.get("op") == "regroup" and last.get("field") == fld
    and last.get("n_labels") == n_labeled
    else f"it needs {MIN_LABELS} labels of two states or more (now {n_labeled:,} of "
    f"{n_states})" if n_labeled < MIN_LABELS or n_states < 2
    else ""
)  # fmt: skip
with st.container(border=True):
    r1, r2, r3 = st.columns([5, 2, 1.6], vertical_alignment="center")
    r1.markdown(
        f"**Groups that learn.** The groups were made before any label. *Regroup* fits a "
        f"head on the {n_labeled:,} labels of {fld} and puts the {n_unlabeled:,} unlabeled "
        "faces in new groups of about 120, by the state each looks like and by its looks. "
        "Labeled faces keep their groups; no label changes. It pays where the groups you "
        "opened held faces of other states." + (f" Not yet: {why_not}." if why_not else "")
    )
    r2.button(
        f"Regroup {n_unlabeled:,} unlabeled faces", key=K.regroup_btn,
        disabled=bool(why_not), on_click=regroup_now, args=(fld,), width="stretch",
        icon=":material/auto_awesome_mosaic:",
    )  # fmt: skip
    r3.button(
        "Revert", key=K.regroup_revert_btn, disabled=not view.run.params.get("parent"),
        on_click=components.revert_run, args=(ws,), width="stretch", help="Back to the run before the last regroup, "
        "split or merge",
    )  # fmt: skip

chunk = summary.iloc[(page - 1) * CARDS_PER_PAGE : page * CARDS_PER_PAGE]
for start in range(0, len(chunk), CARDS_PER_ROW):
    cols = st.columns(CARDS_PER_ROW)
    for col, row in zip(cols, chunk.iloc[start : start + CARDS_PER_ROW].itertuples(), strict=False):
        c = int(row.cluster)
        with col, st.container(border=True):
            name = "Noise (unclustered)" if c < 0 else f"Cluster {c}"
            st.markdown(f"**{name}** · {int(row.size):,} faces")
            thumbs = st.columns(4)
            for t, fid in zip(thumbs, list(row.medoids)[:4], strict=False):
                img = data.crop_bytes(ws, fid)
                if img:
                    t.image(img, width="stretch")
            frac = row.labeled / row.size if row.size else 0.0
            st.progress(frac, text=f"{int(row.labeled):,} labeled · impurity {row.impurity:.2f}")
            st.caption(row.mix or "no labels yet")
            if st.button("Open", key=f"open_{c}", width="stretch"):
                state.set_cluster(c)
                st.switch_page("views/cluster_view.py")
