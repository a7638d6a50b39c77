"""lame_runtime — torch-free serving of LaME embeddings (NumPy in, NumPy out).

This package never imports torch or transformers. It also owns the *one* implementation of
preprocessing (tokenisation with ``tokenizers``, image transforms with NumPy/Pillow); training in
``lame`` calls the same functions, so train/serve skew is impossible by construction.
"""
from lame_runtime.images import ImageConfig, load_image, preprocess_images
from lame_runtime.text import SPECIAL_TOKENS, TextProcessor
from lame_runtime.preprocess import Preprocessor, format_query
from lame_runtime.artifact import Artifact, ArtifactError
from lame_runtime.embedder import Embedder
from lame_runtime.index import Index

__all__ = [
    "Embedder",
    "Index",
    "Artifact",
    "ArtifactError",
    "ImageConfig",
    "load_image",
    "preprocess_images",
    "SPECIAL_TOKENS",
    "TextProcessor",
    "Preprocessor",
    "format_query",
]
