"""Overview: faces, labels per field and value, progress, latest activity per annotator."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from labeler.labels import NOT_A_FACE
from labeler.ui import data, state

ws = state.workspace()
st.header("Overview", divider="gray")
state.show_flash()

faces = data.faces(ws)
view = data.run_view(ws)
store = data.store(ws)
schema = store.schema()
counts = store.counts()
act = data.activity(ws)

n = len(faces)
not_faces = len(store.not_faces())
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Faces", f"{n:,}")
c2.metric("Clusters", "—" if view is None else f"{int((view.sizes.index >= 0).sum()):,}")
c3.metric("Labels given", f"{int(counts['faces'].sum()):,}")
c4.metric("Not a face", f"{not_faces:,}", help="False detections marked 'not a face' (key 0): "
          "left out of training and export; Undo or a relabel brings a face back.")  # fmt: skip
c5.metric("Annotators", f"{len(act):,}")
if view is None:
    st.info(f"No cluster run yet: run `labeler cluster -w {ws.root}` to group the faces.")

st.subheader("Progress")
for f in schema.fields:
    done = int(counts.loc[counts["field"] == f.name, "faces"].sum())
    frac = done / n if n else 0.0
    st.progress(min(frac, 1.0), text=f"{f.name}: {done:,} of {n:,} faces ({frac:.0%})")

st.subheader("Labels per field and value")
cols = st.columns(max(1, len(schema.fields)))
for col, f in zip(cols, schema.fields, strict=True):
    per_value = counts[counts["field"] == f.name].set_index("value")["faces"]
    shown = [*f.values, NOT_A_FACE] if NOT_A_FACE in per_value.index else list(f.values)
    table = pd.DataFrame({"value": shown})
    table["faces"] = table["value"].map(per_value).fillna(0).astype(int)
    with col:
        st.markdown(f"**{f.name}**" + (" (optional)" if f.optional else ""))
        st.dataframe(table, hide_index=True, key=f"overview_counts_{f.name}")

st.subheader("Latest activity per annotator")
if act.empty:
    st.caption("No labels yet.")
else:
    act = act.copy()
    act["last"] = [
        dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") for t in act["last_ts"]
    ]
    st.caption(
        "faces: faces whose current label (any field) this annotator gave; a face relabeled "
        "later counts for whoever labeled it last."
    )
    st.dataframe(
        act[["annotator", "faces", "labels", "events", "last"]],
        hide_index=True,
        key="overview_activity",
    )
    hist = store.history(limit=20)
    hist["time"] = [dt.datetime.fromtimestamp(t).strftime("%H:%M:%S") for t in hist["ts"]]
    st.dataframe(
        hist[["time", "annotator", "kind", "field", "value", "n_faces", "source", "undone"]],
        hide_index=True,
        key="overview_history",
    )
