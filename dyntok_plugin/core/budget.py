"""Budget mode's token counts: how many tokens a video of F frames gets when a budget alone decides.

A budget (`max_tokens`, or `target_ratio` of the pooled grid) is met exactly when no threshold competes with it, so
the count follows from the frame count and the grid alone, before any feature is computed. The compressor sizes
its merges with these numbers; serving engines that size a video's placeholder run before the encoder runs
(vLLM) count with them too, so both always agree.
"""

from __future__ import annotations

import math

from .config import DynTokConfig
from .markers import markers_per_video, token_floor


def requested_budget(config: DynTokConfig, frames: int, rows: int, cols: int) -> int:
    """The tokens the settings ask for (markers included), before the floor and the full grid bound them."""
    if config.max_tokens is not None:
        return config.max_tokens
    if config.target_ratio is None:
        raise ValueError("The settings have no budget: set max_tokens or target_ratio.")
    return math.floor(config.target_ratio * frames * rows * cols)


def budget_tokens(config: DynTokConfig, frames: int, rows: int, cols: int) -> int:
    """The tokens a video of `frames` frames of `rows` x `cols` pooled positions gets under the budget, markers
    included, when the budget alone decides (`threshold=None`): the budget raised to the floor (`target_ratio`)
    and capped at the uncompressed grid plus its markers. A `max_tokens` below the floor is an error."""
    floor = token_floor(config.marker, frames, rows)
    budget = requested_budget(config, frames, rows, cols)
    if budget < floor:
        if config.max_tokens is not None:
            raise ValueError(
                f"max_tokens={budget} is below the floor of {floor} tokens for a video of {frames} frames "
                f"with {rows} rows and marker={config.marker!r} (one token per row plus markers); "
                f"use max_tokens >= {floor}."
            )
        budget = floor
    return min(budget, frames * rows * cols + markers_per_video(config.marker, frames, rows))
