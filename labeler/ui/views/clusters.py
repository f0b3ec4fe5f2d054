"""Clusters: one card per cluster with medoid thumbnails, size and label mix; sortable."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

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
