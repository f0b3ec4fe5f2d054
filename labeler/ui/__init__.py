"""The Streamlit labeling app: ``app.py`` is the router, ``views/`` the thin pages,
``state`` the typed session state, ``data`` the cached loaders. Start it with
``labeler app -w WORKSPACE``."""
