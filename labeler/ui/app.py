"""Router of the labeling app (``labeler app -w WORKSPACE`` runs ``streamlit run`` on this file).

Pages are thin scripts in ``views/`` (not ``pages/``: Streamlit would also serve a
``pages/`` folder as a second, router-less app); session state lives in :mod:`labeler.ui.state`.
Before any page runs, the router makes sure the workspace opens and the annotator has a name
(asked once per browser, kept in the URL and a cookie, shown at the top of every page).
When the server listens beyond this computer, a session that has not signed in
(:mod:`labeler.ui.auth`) sees the sign-in form and nothing else: the router stops before any
page, bar or background job touches the workspace.
"""

from __future__ import annotations

import streamlit as st

from labeler.ui import PAGES, auth, components, state, suggest_panel

st.set_page_config(page_title="labeler", page_icon=":material/face:", layout="wide")

locked = auth.required() and not auth.signed_in()
page = st.navigation(
    [
        st.Page(script, title=title, icon=icon, default=i == 0)
        for i, (script, title, icon) in enumerate(PAGES)
    ],
    position="hidden" if locked else "sidebar",
)
if locked:  # no page, no workspace data, no media before a valid sign-in
    auth.login_page()
    st.stop()
ws = state.workspace()
components.style()
name = state.annotator()
if not name:
    components.name_prompt()
    st.stop()
state.keep_annotator_in_browser(name)
components.who_bar(ws, name)
suggest_panel.auto_suggest(ws)  # retrain in the background after every N new labels
page.run()
