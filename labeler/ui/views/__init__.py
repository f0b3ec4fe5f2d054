"""Thin Streamlit pages; each calls library functions through ``labeler.ui.data``."""
