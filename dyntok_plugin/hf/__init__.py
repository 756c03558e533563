"""Hugging Face helpers shared by the HF host patches and the tools above them.

Host-generic pieces live here so that a second host family plugs in beside LLaVA-OneVision without copying them:
`splice` (replace placeholder runs by variable-length tokens, re-pad ids, mask and labels), `vision_features`
(one selected layer of a vision tower, through hooks), `bilinear_pool`, `find_parts` (where a model keeps its
vision tower, projector, marker and language model) and the version helper every transformers difference goes
through (`transformers_version`, `dtype_argument`).
"""

from .checkpoints import dtype_argument
from .common import bilinear_pool, pooled_side, transformers_version, video_token_id, vision_features
from .parts import ModelParts, find_parts
from .splice import IGNORE_INDEX, splice

__all__ = [
    "IGNORE_INDEX",
    "ModelParts",
    "bilinear_pool",
    "dtype_argument",
    "find_parts",
    "pooled_side",
    "splice",
    "transformers_version",
    "video_token_id",
    "vision_features",
]
