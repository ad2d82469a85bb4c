"""Deterministic embedded default assets: captions corpus, tokenizer and tiny Qwen3 / Qwen3-VL checkpoints.

>>> from autoquant_sweep.embedded import ensure_embedded_assets
>>> assets = ensure_embedded_assets()  # doctest: +SKIP
"""

from .assets import EmbeddedAssets, default_cache_root, ensure_embedded_assets
from .captions import (
    CAPTION_SUBSET_SIZES,
    generate_captions,
    generate_heldout_captions,
    generate_training_captions,
)

__all__ = [
    "CAPTION_SUBSET_SIZES",
    "EmbeddedAssets",
    "default_cache_root",
    "ensure_embedded_assets",
    "generate_captions",
    "generate_heldout_captions",
    "generate_training_captions",
]
