"""Router of the labeling app (``labeler app -w WORKSPACE`` runs ``streamlit run`` on this file).

Pages are thin scripts in ``views/`` (not ``pages/``: Streamlit would also serve a
``pages/`` folder as a second, router-less app); session state lives in :mod:`labeler.ui.state`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from labeler.ui import state

st.set_page_config(page_title="labeler", page_icon=":material/face:", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/clusters.py", title="Clusters", icon=":material/grid_view:"),
    st.Page("views/cluster_view.py", title="Cluster view", icon=":material/photo_library:"),
    st.Page("views/map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page("views/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("views/settings.py", title="Settings", icon=":material/settings:"),
    st.Page("views/try_it.py", title="Try it", icon=":material/photo_camera:"),
]

page = st.navigation(PAGES)
with st.sidebar:
    ws_path = state.workspace_path()
    st.caption(
        f"Workspace: **{Path(ws_path).name}**" if ws_path else "No workspace",
        help=ws_path,
    )
    st.caption(f"Annotator: **{state.annotator()}** (change in Settings)")
page.run()
