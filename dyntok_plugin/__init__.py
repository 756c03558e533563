"""DynTok dynamic visual-token compression for LLaVA-OneVision, as a one-call plugin.

Layers, each importing only from those before it: `dyntok_plugin.core` (the method, torch only) ←
`dyntok_plugin.hf` (Hugging Face helpers) ← `dyntok_plugin.patches` (one module per host) ← `dyntok_plugin.api`
(`patch_llava`) ← `dyntok_plugin.cli`, `dyntok_plugin.eval`, `dyntok_plugin.train`. See docs/architecture.md.

>>> from dyntok_plugin import patch_llava
>>> patch_llava(model, threshold=0.7)  # doctest: +SKIP
"""

from .api import is_patched, patch_llava, patch_model, unpatch_llava, unpatch_model
from .core import DynTokBatchOutput, DynTokCompressor, DynTokConfig, DynTokOutput, DynTokStats, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "DynTokBatchOutput",
    "DynTokCompressor",
    "DynTokConfig",
    "DynTokOutput",
    "DynTokStats",
    "UnsupportedModelError",
    "is_patched",
    "patch_llava",
    "patch_model",
    "unpatch_llava",
    "unpatch_model",
]
