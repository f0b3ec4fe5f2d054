"""Try it: upload a photo (or take one) and see each face's predicted labels and confidence."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from labeler.ui import data, models, state
from labeler.ui.state import K

#: How big a face's crop is shown (px), whatever the number of faces.
CROP_SHOW = 224

ws = state.workspace()
st.header("Try it", divider="gray")
st.caption("Photos you upload here are classified in memory and never stored.")

loaded, missing = models.models(ws)
if not loaded:
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

from labeler.imageio import ImageDecodeError, decode_image  # noqa: E402  (once a photo arrives)

try:  # the decode of ingest and `labeler predict` (EXIF orientation applied)
    rgb = decode_image(source.getvalue(), name=getattr(source, "name", "the photo")).rgb
except ImageDecodeError as exc:  # a broken upload: say so, do not crash the page
    st.error(f"Could not read {exc}. Upload a JPEG, PNG, WebP or BMP photo.")
    st.stop()

with st.spinner("Detecting faces…"):
    preds, detector_name = models.predict_photo(rgb, loaded)
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
