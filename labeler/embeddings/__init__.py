"""Embeddings: pretrained backbones turn aligned face crops (or regions of them) into vectors.

Importing this package is cheap (no torch): the registry holds strings until
:func:`get_backbone` builds a model.

* :func:`get_backbone` / :func:`available_backbones` / :func:`register_backbone`: the registry.
* :func:`labeler.embeddings.embed.embed_faces`: the workspace step behind ``labeler embed``.
* :mod:`labeler.embeddings.store`: ``(face_id, vector)`` shards aligned to ``faces.parquet``.
"""

from labeler.embeddings.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneConfig,
    BackboneError,
    BackboneSpec,
    available_backbones,
    get_backbone,
    register_backbone,
)
from labeler.embeddings.embed import EmbedConfig, EmbedResult, embed_crops, embed_faces
from labeler.embeddings.store import (
    EmbeddingInfo,
    embedding_key,
    l2_normalize,
    list_embeddings,
    load_embeddings,
    save_vectors,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneConfig",
    "BackboneError",
    "BackboneSpec",
    "EmbedConfig",
    "EmbedResult",
    "EmbeddingInfo",
    "available_backbones",
    "embed_crops",
    "embed_faces",
    "embedding_key",
    "get_backbone",
    "l2_normalize",
    "list_embeddings",
    "load_embeddings",
    "register_backbone",
    "save_vectors",
]
