"""The DynTok method on plain tensors: settings, grouping, the compressor, the fused kernels, statistics, errors.

This layer imports only `torch` (and `triton` when present); it knows nothing about any host model. Every layer
above it (`dyntok_plugin.hf`, the host patches, the public API, the command line, evaluation and training) calls in
here, never the other way.
"""

from .budget import budget_tokens
from .compressor import DynTokBatchOutput, DynTokCompressor, DynTokOutput
from .config import MARKERS, SIMILARITIES, DynTokConfig
from .errors import UnsupportedModelError
from .stats import DynTokStats

__all__ = [
    "MARKERS",
    "SIMILARITIES",
    "DynTokBatchOutput",
    "DynTokCompressor",
    "DynTokConfig",
    "DynTokOutput",
    "DynTokStats",
    "UnsupportedModelError",
    "budget_tokens",
]
