"""Router of the labeling app (``labeler app -w WORKSPACE`` runs ``streamlit run`` on this file).

Pages are thin scripts in ``views/`` (not ``pages/``: Streamlit would also serve a
``pages/`` folder as a second, router-less app); session state lives in :mod:`labeler.ui.state`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from labeler.ui import PAGES, state

st.set_page_config(page_title="labeler", page_icon=":material/face:", layout="wide")

page = st.navigation(
    [
        st.Page(script, title=title, icon=icon, default=i == 0)
        for i, (script, title, icon) in enumerate(PAGES)
    ]
)
with st.sidebar:
    ws_path = state.workspace_path()
    st.caption(
        f"Workspace: **{Path(ws_path).name}**" if ws_path else "No workspace",
        help=ws_path,
    )
    st.caption(f"Annotator: **{state.annotator()}** (change in Settings)")
page.run()
