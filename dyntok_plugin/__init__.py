"""DynTok dynamic visual-token compression for LLaVA-OneVision, as a one-call plugin.

>>> from dyntok_plugin import patch_llava
>>> patch_llava(model, threshold=0.7)  # doctest: +SKIP
"""

from .api import is_patched, patch_llava, unpatch_llava
from .compressor import DynTokBatchOutput, DynTokCompressor, DynTokOutput
from .config import DynTokConfig
from .errors import UnsupportedModelError
from .stats import DynTokStats

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
    "unpatch_llava",
]
