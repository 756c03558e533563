"""Measure DynTok on encoded videos: tokens per frame, ratio-vs-threshold curves, threshold for a target ratio.

Per-threshold results come from the core `DynTokCompressor` itself, so what is reported is
what a patched model would do with the same features. Sweeps and the threshold search use the sorted
left-neighbour similarities: the output length only changes at those values, so the search is exact,
and its answer is then run through the compressor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.compressor import DynTokCompressor, DynTokOutput
from ..core.config import DynTokConfig
from ..core.grouping import left_similarity
from ..core.markers import token_floor

__all__ = ["Calibration", "compress", "find_threshold", "ratio_curve", "tokens_per_frame"]


@dataclass(frozen=True)
class Calibration:
    """The threshold found for a target ratio over several videos, and what it achieves."""

    target_ratio: float
    threshold: float
    ratio: float
    tokens_in: int
    tokens_out: int
    per_video_ratio: tuple


def compress(features: Tensor, similarity_features: Tensor, threshold: float, marker: str = "row") -> DynTokOutput:
    """One video through the core compressor at `threshold` (similarity on `similarity_features`)."""
    config = DynTokConfig(threshold=threshold, marker=marker)
    compressor = DynTokCompressor(hidden_size=features.shape[-1], config=config)
    return compressor(features, similarity_features=similarity_features)


def tokens_per_frame(output: DynTokOutput) -> Tensor:
    """Tokens each frame contributes, markers counted with the frame they close: `(F,)` int64."""
    frames = output.token_map.shape[0]
    frame_of_token = torch.full((output.tokens.shape[0],), -1, dtype=torch.long)
    frame_ids = torch.arange(frames).view(frames, 1, 1).expand_as(output.token_map)
    frame_of_token[output.token_map.flatten()] = frame_ids.flatten()
    frame_of_token = torch.cummax(frame_of_token, 0).values
    return torch.bincount(frame_of_token, minlength=frames)


def ratio_curve(
    videos: Sequence[tuple[Tensor, Tensor]], thresholds: Sequence[float], marker: str = "row"
) -> tuple[Tensor, Tensor]:
    """Tokens out per video and threshold, `(V, T)` int64, plus tokens in per video `(V,)`.

    `videos` holds `(features, similarity_features)` pairs (grids may differ). A video keeps one
    token per row plus its markers, plus one per left-neighbour similarity `<= tau`: counted with
    one sort per video, so a fine sweep costs no more than a coarse one (tests check it against the
    compressor's own output lengths).
    """
    grid = torch.tensor([float(t) for t in thresholds], dtype=torch.float64)
    counts, tokens_in = [], []
    for features, similarity_features in videos:
        frames, rows, cols = features.shape[:3]
        ordered = torch.sort(left_similarity(similarity_features).flatten().double()).values
        counts.append(token_floor(marker, frames, rows) + torch.searchsorted(ordered, grid, right=True))
        tokens_in.append(frames * rows * cols)
    return torch.stack(counts), torch.tensor(tokens_in)


def _core_lengths(videos: Sequence[tuple[Tensor, Tensor]], threshold: float, marker: str) -> list:
    """Tokens out per video from the core compressor's batched entry point, one call per grid size (Qwen VL
    checkpoints give videos of other aspect ratios other grids)."""
    compressor = DynTokCompressor(hidden_size=videos[0][0].shape[-1], config=DynTokConfig(threshold=threshold,
                                                                                          marker=marker))
    by_grid: dict = {}
    for index, (features, _) in enumerate(videos):
        by_grid.setdefault(tuple(features.shape[1:3]), []).append(index)
    lengths = [0] * len(videos)
    for members in by_grid.values():
        batch = compressor.compress_batch(torch.cat([videos[i][0] for i in members]),
                                          [videos[i][0].shape[0] for i in members],
                                          torch.cat([videos[i][1] for i in members]))
        for index, length in zip(members, batch.lengths):
            lengths[index] = length
    return lengths


def find_threshold(
    videos: Sequence[tuple[Tensor, Tensor]], target_ratio: float, marker: str = "row"
) -> Calibration:
    """The largest threshold whose ratio over all `videos` (tokens out / tokens in) stays at or below the target.

    Raises `ValueError` naming the reachable range when even merging every row exceeds the target.
    """
    if not math.isfinite(target_ratio) or target_ratio <= 0:
        raise ValueError(f"target ratio must be a positive finite number, got {target_ratio!r}")
    similarity = torch.cat([left_similarity(v[1]).flatten() for v in videos]).double()
    per_video_in = [v[0].shape[0] * v[0].shape[1] * v[0].shape[2] for v in videos]
    tokens_in = sum(per_video_in)
    floor = sum(token_floor(marker, v[0].shape[0], v[0].shape[1]) for v in videos)
    boundaries = math.floor(target_ratio * tokens_in) - floor
    if boundaries < 0:
        raise ValueError(
            f"target ratio {target_ratio} is below the floor {floor / tokens_in:.4f} of these videos "
            f"(one token per row plus markers, marker={marker!r}); ask for a ratio >= {floor / tokens_in:.4f}"
        )
    ordered = torch.sort(similarity).values
    if boundaries >= ordered.numel():
        threshold = 1.0
    else:
        upper = ordered[boundaries]
        below = int(torch.searchsorted(ordered, upper)) - 1
        lower = float(ordered[below]) if below >= 0 else -1.0 - 1e-3
        threshold = (lower + float(upper)) / 2
    lengths = _core_lengths(videos, threshold, marker)
    tokens_out = sum(lengths)
    return Calibration(
        target_ratio=target_ratio,
        threshold=threshold,
        ratio=tokens_out / tokens_in,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        per_video_ratio=tuple(n / count for n, count in zip(lengths, per_video_in)),
    )
