"""Try it: upload a photo (or take one) and see each face's predicted labels and confidence."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import streamlit as st

from labeler.ui import data, state
from labeler.ui.state import K

#: How big a face's crop is shown (px), whatever the number of faces.
CROP_SHOW = 224

ws = state.workspace()
st.header("Try it", divider="gray")
st.caption("Photos you upload here are classified in memory and never stored.")

models, missing = data.models(ws)
if not models:
    st.info(
        "No trained model yet: label some clusters, then run "
        f"`labeler train -w {ws.root}`. Faces are still detected below."
    )
elif missing:
    st.caption(f"No model for: {', '.join(missing)}")

upload = st.file_uploader("Photo", type=["jpg", "jpeg", "png", "webp", "bmp"], key=K.try_upload)
shot = (
    st.camera_input("Camera", key=K.try_camera)
    if st.toggle("Use the camera", key=K.try_camera_on)
    else None
)
source = upload or shot
if source is None:
    st.stop()

from PIL import Image, ImageOps  # noqa: E402  (only once a photo arrives)

try:
    rgb = np.asarray(
        ImageOps.exif_transpose(Image.open(io.BytesIO(source.getvalue()))).convert("RGB")
    )
except Exception as exc:  # a broken upload: say so, do not crash the page
    st.error(f"Could not read {getattr(source, 'name', 'the photo')}: {exc}")
    st.stop()

with st.spinner("Detecting faces…"):
    preds, detector_name = data.predict_photo(rgb, models)
st.image(
    rgb,
    caption=f"{rgb.shape[1]}x{rgb.shape[0]} · {data.plural(len(preds), 'face')} · "
    f"detector {detector_name}",
    width=480,
)
if not preds:
    st.warning("No face found.")
    st.stop()
cols = st.columns(4)  # one face or many: each crop at the same, sensible size
rows = []
for i, p in enumerate(preds):
    with cols[i % len(cols)]:
        text = ", ".join(f"{f}: {v} ({p.confidence[f]:.0%})" for f, v in p.labels.items())
        st.image(p.crop, caption=text or f"face {p.face_index}", width=CROP_SHOW)
    rows.append(
        {"face": p.face_index, **{f: f"{v} ({p.confidence[f]:.2f})" for f, v in p.labels.items()}}
    )
st.dataframe(pd.DataFrame(rows), hide_index=True, key="try_table")
