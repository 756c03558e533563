"""What DynTok did during an evaluation: token counts per sample, and their run-level totals and means.

Kept apart from lmms-eval's types so the arithmetic reads (and tests) without lmms-eval installed; `lmms`
attaches the per-sample dicts to each answer's token counts and hands the means to lmms-eval's throughput log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from .backends import Prompt, split_by_prompt
from ..core.stats import DynTokStats


def sample_stats(prompts: Sequence[Prompt], stats: Optional[Sequence[DynTokStats]]) -> List[dict]:
    """One batch's per-video statistics summed per sample (in batch order); `stats` is None when DynTok is off.

    Every sample gets `dyntok_videos` and `dyntok_frames`; with DynTok on also `dyntok_tokens_in`,
    `dyntok_tokens_out`, `dyntok_ratio` and the thresholds in effect, one per video.
    """
    per_sample = [
        {"dyntok_videos": len(p.videos), "dyntok_frames": sum(int(v.shape[0]) for v in p.videos)} for p in prompts
    ]
    if stats is None:
        return per_sample
    stats = list(stats)
    expected = sum(len(p.videos) for p in prompts)
    if len(stats) != expected:
        raise RuntimeError(
            f"DynTok reported {len(stats)} video statistics for a batch of {expected} videos; the model did "
            "not run its videos through DynTok. Check that the checkpoint is a LLaVA-OneVision video model."
        )
    for own, entry in zip(split_by_prompt(stats, prompts), per_sample):
        tokens_in = sum(s.tokens_in for s in own)
        tokens_out = sum(s.tokens_out for s in own)
        entry.update(
            dyntok_tokens_in=tokens_in,
            dyntok_tokens_out=tokens_out,
            dyntok_ratio=tokens_out / tokens_in if tokens_in else None,
            dyntok_threshold=[s.threshold if np.isfinite(s.threshold) else None for s in own],
        )
    return per_sample


@dataclass
class RunTotals:
    """Sums over one `generate_until` run: DynTok's videos and tokens, generated tokens and generation time."""

    videos: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    generated: int = 0
    seconds: float = 0.0

    def add_sample(self, stats: dict, output_tokens: int) -> None:
        """Count one answered sample: its `sample_stats` entry and the tokens generated for it."""
        if "dyntok_tokens_in" in stats:
            self.videos += stats["dyntok_videos"]
            self.tokens_in += stats["dyntok_tokens_in"]
            self.tokens_out += stats["dyntok_tokens_out"]
        self.generated += output_tokens

    def dyntok_means(self) -> Optional[dict]:
        """Run-level ratio and tokens per video, or None when no video went through DynTok."""
        if not self.videos:
            return None
        return {
            "dyntok_ratio": self.tokens_out / self.tokens_in,
            "dyntok_tokens_in_per_video": self.tokens_in / self.videos,
            "dyntok_tokens_out_per_video": self.tokens_out / self.videos,
        }
