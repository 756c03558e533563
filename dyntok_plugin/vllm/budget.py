"""Budget-mode DynTok for a serving engine: the count it promised and the tokens it delivers, always equal.

`BudgetVideoCompressor.count` is what the engine reserves as placeholders for a video (from its frame count and
pooled grid alone); `compress` turns the pooled features of a batch of videos into one `(N_i, D)` chunk per video
with exactly that many tokens, and raises if the two ever disagree (the engine would otherwise fail later with a
less telling message). Host-neutral: the host module hands in pooled `(frames, rows, cols, D)` features, the
similarity features and its marker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

from torch import Tensor

from dyntok_plugin.core import DynTokCompressor, DynTokConfig, budget_tokens


class BudgetVideoCompressor:
    """DynTok with a budget and no threshold, in inference mode (a plain object: it registers no parameters)."""

    def __init__(self, config: DynTokConfig, hidden_size: int, marker: Callable[[], Tensor]):
        if config.threshold is not None or not config.has_budget:
            raise ValueError(
                f"BudgetVideoCompressor needs budget-mode settings (threshold=None with max_tokens or "
                f"target_ratio), got {config!r}; read them with dyntok_plugin.vllm.serving_config."
            )
        self.config = config
        self.compressor = DynTokCompressor(hidden_size=hidden_size, config=config, marker=marker).eval()

    def count(self, frames: int, rows: int, cols: int) -> int:
        """Tokens (markers included) a video of `frames` frames of `rows` x `cols` pooled positions becomes."""
        return budget_tokens(self.config, frames, rows, cols)

    def compress(
        self, features: Tensor, frames_per_video: Sequence[int], similarity_features: Optional[Tensor]
    ) -> tuple:
        """`(sum F_i, rows, cols, D)` pooled features of several videos -> one `(count(F_i), D)` chunk per video."""
        batch = self.compressor.compress_batch(features, frames_per_video, similarity_features)
        _, rows, cols, _ = features.shape
        promised = [self.count(frames, rows, cols) for frames in batch.frames_per_video]
        if batch.lengths != promised:
            raise RuntimeError(
                f"DynTok made {batch.lengths} tokens for videos of {batch.frames_per_video} frames but promised "
                f"{promised} placeholders; this is a bug in dyntok_plugin, please report it with the settings "
                f"{self.config.to_dict()!r}."
            )
        return batch.chunks()
