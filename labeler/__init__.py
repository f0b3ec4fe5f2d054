"""labeler: raw face photos -> aligned crops -> embeddings -> clusters -> labels -> splits.

Importing the package is cheap: heavy libraries (torch, faiss, umap, streamlit) are imported
inside the functions that use them.
"""

__version__ = "0.1.0"
