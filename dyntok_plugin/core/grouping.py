"""Which pooled tokens open a new group: left-neighbour similarity, thresholds and exact budgets.

Everything here is vectorised over all frames of all videos at once (frames of several videos are concatenated
along the first axis) and runs without host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Videos are separated in the sort key by this offset; cosine similarities live in [-1, 1].
_VIDEO_KEY_STRIDE = 4.0


@torch.no_grad()
def left_similarity(features: Tensor) -> Tensor:
    """Cosine similarity of every token with its left neighbour, `(T, h, w, C) -> (T, h, w-1)` in float32.

    Each vector is first divided by its largest magnitude (in float32, float64 for float64 input), so that finite
    features near the float range's ends neither overflow nor underflow; then `<a, b> / sqrt(|a|^2 |b|^2)`, so that
    identical vectors give exactly 1; zero vectors give 0; the result is clamped to [-1, 1].
    """
    accumulate = torch.float64 if features.dtype == torch.float64 else torch.float32
    x = features.to(accumulate)
    x = (x / x.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(accumulate).tiny)).float()
    squared_norm = (x * x).sum(-1)
    dot = (x[:, :, 1:] * x[:, :, :-1]).sum(-1)
    denominator = torch.sqrt(squared_norm[:, :, 1:].double() * squared_norm[:, :, :-1].double()).float()
    similarity = torch.where(denominator > 0, dot / denominator.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return similarity.clamp(-1.0, 1.0)


@torch.no_grad()
def group_starts(
    similarity: Tensor,
    frame_video: Tensor,
    thresholds: Tensor,
    capacity: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Decide which tokens open a group, and the threshold in effect per video.

    Args:
        similarity: `(T, h, w-1)` left-neighbour similarities.
        frame_video: `(T,)` video index of each frame.
        thresholds: `(V,)` float64 thresholds (`+inf` when a budget alone decides).
        capacity: `(V,)` int64 number of boundaries (beyond column 0) each video may keep, or `None` for no budget.

    Returns:
        `(T, h, w)` bool group starts (column 0 always True) and `(V,)` float64 effective thresholds.
    """
    frames, rows, pairs_per_row = similarity.shape
    s = similarity.double()
    boundary = s <= thresholds[frame_video].view(frames, 1, 1)
    effective = thresholds.clone()
    if capacity is not None and pairs_per_row > 0:
        pair_video = frame_video.repeat_interleave(rows * pairs_per_row)
        key = s.flatten() + _VIDEO_KEY_STRIDE * pair_video.double()
        order = torch.sort(key, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        # index_add_, not bincount: bincount reads its input's maximum back to the host on CUDA.
        pairs_per_video = torch.zeros_like(capacity).index_add_(
            0, frame_video, torch.full_like(frame_video, rows * pairs_per_row)
        )
        first_pair = torch.cumsum(pairs_per_video, 0) - pairs_per_video
        rank_in_video = rank - first_pair[pair_video]
        within_budget = (rank_in_video < capacity[pair_video]).view_as(boundary)
        candidates = torch.zeros_like(thresholds).index_add_(0, pair_video, boundary.flatten().double())
        binding = candidates > capacity.double()
        kth = (first_pair + capacity - 1).clamp(0, order.numel() - 1)
        kth_similarity = torch.where(capacity > 0, s.flatten()[order[kth]], float("-inf"))
        effective = torch.where(binding, kth_similarity, thresholds)
        boundary &= within_budget
    starts = torch.ones(frames, rows, pairs_per_row + 1, dtype=torch.bool, device=similarity.device)
    starts[:, :, 1:] = boundary
    return starts, effective
