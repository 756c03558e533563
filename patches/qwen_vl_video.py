"""The DynTok video tokens of a Qwen2.5-VL / Qwen3-VL model (the video half of `hf_qwen_vl`).

The stock `get_video_features` runs (vision blocks -> patch merger, and Qwen3-VL's DeepStack mergers); a forward
hook on the final merger appends to its output the mean of its input over each merge window (the `"vision"`
similarity features), so they come back in the same raster order as the merged tokens whatever order the tower
works in (Qwen2.5-VL's window attention permutes and restores it). Each video's merged grid `(t, h', w')` then goes
through DynTok: rows are the rows of each temporal slice, groups are means (float32 accumulation) and every
DeepStack level is merged with the same groups (zero on marker slots). Videos of the same merged grid shape are
compressed in one call (one call per distinct shape, never per video).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dyntok_plugin.core import DynTokCompressor
from dyntok_plugin.core.compressor import group_means


@dataclass
class CompressedVideos:
    """DynTok's output for all videos of a call, in the shapes the host consumes."""

    encoder_output: object  # the stock `get_video_features` output with per-video DynTok tokens (and levels)
    repeats: Tensor  # (sum t*h'*w',) tokens anchored at each merged-grid position, videos in order


def check_videos(pixels: Tensor, grid_thw: Tensor | None, merge: int) -> list:
    """The merged grids `(t, h', w')` per video; a `ValueError` naming the mismatch when `video_grid_thw` does
    not describe `pixel_values_videos` (one host read-back: the grid)."""
    if grid_thw is None:
        raise ValueError("pixel_values_videos needs video_grid_thw (one (t, h, w) row per video, from the processor).")
    if grid_thw.dim() != 2 or grid_thw.shape[-1] != 3 or grid_thw.shape[0] == 0:
        raise ValueError(f"video_grid_thw must be (num_videos, 3), got shape {tuple(grid_thw.shape)}.")
    grids = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
    rows = sum(t * h * w for t, h, w in grids)
    if pixels.dim() != 2 or pixels.shape[0] != rows:
        raise ValueError(
            f"video_grid_thw {grids} describes {rows} patch rows but pixel_values_videos has shape "
            f"{tuple(pixels.shape)}; pass the processor's pixel_values_videos and video_grid_thw together, "
            "one grid row per video, in the order of the videos."
        )
    bad = [g for g in grids if min(g) < 1 or g[1] % merge or g[2] % merge]
    if bad:
        raise ValueError(f"video_grid_thw rows {bad} are not positive multiples of spatial_merge_size={merge}.")
    return [(t, h // merge, w // merge) for t, h, w in grids]


@contextlib.contextmanager
def window_means_appended(merger: nn.Module, merge_unit: int, enabled: bool):
    """While active, the merger's output carries the mean of its input over each merge window as extra
    channels (its input holds `merge_unit` consecutive rows per merged token)."""
    if not enabled:
        yield
        return

    def hook(module, args, output):
        states = args[0]
        means = states.reshape(-1, merge_unit, states.shape[-1]).float().mean(1)
        return torch.cat([output, means.to(output.dtype)], dim=-1)

    handle = merger.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def compress_videos(owner: nn.Module, compressor: DynTokCompressor, pixels: Tensor, grid_thw: Tensor,
                    grids: list) -> CompressedVideos:
    """Stock `get_video_features` (with the window-mean hook for `similarity="vision"`), then DynTok per shape."""
    visual, hidden_size = owner.visual, compressor.hidden_size
    merge_unit = visual.spatial_merge_size**2
    vision = compressor.config.similarity == "vision" and compressor.similarity_needed()
    with window_means_appended(visual.merger, merge_unit, vision):
        output = owner.get_video_features(pixels, grid_thw, return_dict=True)
    merged = torch.cat(output.pooler_output) if len(output.pooler_output) > 1 else output.pooler_output[0]
    features, similarity = merged[:, :hidden_size], (merged[:, hidden_size:] if vision else None)
    levels = list(getattr(output, "deepstack_features", None) or [])
    stacked_levels = torch.cat([torch.cat(level) for level in levels], -1) if levels else None
    tokens, level_tokens, repeats, stats, lengths = _compress_by_shape(
        compressor, features, similarity, stacked_levels, grids
    )
    compressor.last_stats = stats
    compressor.config.last_stats = stats
    output.pooler_output = torch.split(tokens, lengths)
    if levels:
        output.deepstack_features = [torch.split(level, lengths) for level in level_tokens.split(hidden_size, -1)]
    output.last_hidden_state = None  # pre-merger states of the full grid: nothing downstream reads them
    return CompressedVideos(output, repeats)


def _compress_by_shape(compressor: DynTokCompressor, features: Tensor, similarity: Tensor | None,
                       levels: Tensor | None, grids: list) -> tuple:
    """DynTok over all videos, one `compress_batch` per distinct `(h', w')`; results put back in video order
    with one gather."""
    sizes = [t * h * w for t, h, w in grids]
    offsets = _starts(sizes)
    shapes = list(dict.fromkeys((h, w) for _, h, w in grids))
    device = features.device
    repeats = torch.zeros(features.shape[0], dtype=torch.long, device=device)
    order, tokens, level_tokens, stats, lengths = [], [], [], [None] * len(grids), [0] * len(grids)
    produced = 0
    for h, w in shapes:
        members = [v for v, g in enumerate(grids) if g[1:] == (h, w)]
        frames = [grids[v][0] for v in members]
        rows = None if len(shapes) == 1 else _ranges([offsets[v] for v in members], [sizes[v] for v in members])
        rows = None if rows is None else rows.to(device, non_blocking=True)
        take = (lambda x: x) if rows is None else (lambda x: x[rows])
        shape = (sum(frames), h, w, -1)
        batch = compressor.compress_batch(
            take(features).reshape(shape), frames, None if similarity is None else take(similarity).reshape(shape)
        )
        anchors = _anchors(batch.token_map, batch.tokens.shape[0])
        repeats = anchors if rows is None else repeats.index_copy(0, rows, anchors)
        tokens.append(batch.tokens)
        if levels is not None:
            level_tokens.append(group_means(take(levels), batch.token_map.flatten(), batch.tokens.shape[0]))
        starts = _starts(batch.lengths)
        for v, start, length, stat in zip(members, starts, batch.lengths, batch.stats):
            order.append((v, produced + start, length))
            stats[v], lengths[v] = stat, length
        produced += sum(batch.lengths)
    if len(shapes) == 1:
        return tokens[0], (level_tokens[0] if level_tokens else None), repeats, stats, lengths
    order.sort()
    gather = _ranges([start for _, start, _ in order], [length for _, _, length in order]).to(device)
    levels_out = torch.cat(level_tokens)[gather] if level_tokens else None
    return torch.cat(tokens)[gather], levels_out, repeats, stats, lengths


def _starts(sizes: list) -> list:
    """Offsets of consecutive blocks of `sizes`."""
    return torch.tensor([0] + list(sizes[:-1])).cumsum(0).tolist()


def _ranges(starts: list, sizes: list) -> Tensor:
    """`cat(arange(s, s + n) for s, n)`, built without a loop."""
    sizes_t = torch.tensor(sizes)
    block = torch.repeat_interleave(torch.arange(len(sizes)), sizes_t)
    within = torch.arange(int(sizes_t.sum())) - (torch.cumsum(sizes_t, 0) - sizes_t)[block]
    return torch.tensor(starts)[block] + within


def _anchors(token_map: Tensor, total: int) -> Tensor:
    """Per merged-grid position: 1 if it opens a group, plus the markers anchored there (the tokens between its
    group and the next, i.e. those closing its row, frame or video: they take this position's 3-D position).
    `token_map` indexes the batch's `total` tokens in order, so both follow from its steps."""
    index = token_map.flatten()
    opens = (torch.diff(index, prepend=index.new_full((1,), -1)) > 0).long()
    markers_after = (torch.diff(index, append=index.new_full((1,), total)) - 1).clamp_min(0)
    return opens + markers_after
