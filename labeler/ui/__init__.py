"""The Streamlit labeling app: ``app.py`` is the router, ``views/`` the thin pages,
``state`` the typed session state, ``data`` the cached loaders. Start it with
``labeler app -w WORKSPACE``."""

#: The app's pages in menu order: (script under ``labeler/ui``, title, icon); the first is
#: the default. Importing this module imports no Streamlit.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("views/overview.py", "Overview", ":material/dashboard:"),
    ("views/clusters.py", "Clusters", ":material/grid_view:"),
    ("views/cluster_view.py", "Cluster view", ":material/photo_library:"),
    ("views/map.py", "Map", ":material/scatter_plot:"),
    ("views/review.py", "Review", ":material/fact_check:"),
    ("views/settings.py", "Settings", ":material/settings:"),
    ("views/try_it.py", "Try it", ":material/photo_camera:"),
)
