"""dyntok_plugin.cli.calibrate: sweeps and the threshold search agree with the core compressor, exactly."""

from __future__ import annotations

import math

import pytest
import torch

from dyntok_plugin.cli.calibrate import compress, find_threshold, ratio_curve, tokens_per_frame
from dyntok_plugin.core.compressor import DynTokCompressor
from dyntok_plugin.core.config import DynTokConfig
from dyntok_plugin.core.grouping import left_similarity


def smooth_video(frames: int, seed: int, rows: int = 6, cols: int = 7, dim: int = 16) -> torch.Tensor:
    """Features with correlated left neighbours (a random walk along each row), so thresholds matter."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(frames, rows, cols, dim, generator=gen)
    return torch.cumsum(steps, dim=2) + 0.5 * torch.randn(frames, rows, 1, dim, generator=gen)


def core_lengths(videos, threshold: float, marker: str) -> list:
    config = DynTokConfig(threshold=threshold, marker=marker)
    comp = DynTokCompressor(hidden_size=videos[0][0].shape[-1], config=config)
    return [comp(f, similarity_features=s).stats.tokens_out for f, s in videos]


@pytest.fixture
def videos():
    first, second = smooth_video(3, seed=1), smooth_video(2, seed=2)
    return [(first, first.flip(-1) * 2.0), (second, second)]  # vision features differ from the merged ones


@pytest.mark.parametrize("marker", ["row", "frame", "video", "none"])
def test_ratio_curve_matches_the_compressor(videos, marker):
    thresholds = [-1.5, -0.3, 0.0, 0.4, 0.7, 0.9, 0.97, 1.0, 1.2]
    counts, tokens_in = ratio_curve(videos, thresholds, marker)
    assert tokens_in.tolist() == [3 * 6 * 7, 2 * 6 * 7]
    for k, tau in enumerate(thresholds):
        assert counts[:, k].tolist() == core_lengths(videos, tau, marker)


@pytest.mark.parametrize("target", [0.29, 0.35, 0.5, 0.8, 1.0])
def test_find_threshold_is_the_largest_threshold_within_the_target(videos, target):
    result = find_threshold(videos, target)
    budget = math.floor(target * result.tokens_in)
    assert result.tokens_out == sum(core_lengths(videos, result.threshold, "row")) <= budget
    similarities = torch.cat([left_similarity(s).flatten() for _, s in videos])
    above = similarities[similarities > result.threshold]
    if above.numel():  # the next similarity value up would keep one more boundary: over the budget
        assert sum(core_lengths(videos, float(above.min()), "row")) > budget


def test_find_threshold_handles_ties():
    video = torch.ones(2, 3, 5, 4)  # every left-neighbour similarity is exactly 1
    result = find_threshold([(video, video)], 0.5)
    assert result.tokens_out == 2 * 3 * 2  # all merged: one token and one marker per row
    assert result.tokens_out <= math.floor(0.5 * result.tokens_in)


def test_unreachable_target_names_the_floor(videos):
    with pytest.raises(ValueError, match=r"below the floor 0\.2857"):  # (1 token + 1 marker) / 7 per row
        find_threshold(videos, 0.2)


@pytest.mark.parametrize("marker", ["row", "frame", "video", "none"])
def test_tokens_per_frame_adds_up_and_counts_markers_with_their_frame(videos, marker):
    features, similarity = videos[0]
    out = compress(features, similarity, 0.8, marker)
    per_frame = tokens_per_frame(out)
    assert per_frame.sum().item() == out.tokens.shape[0]
    merged = out.token_map[:, :, 1:] == out.token_map[:, :, :-1]
    groups = (~merged).sum(dim=(1, 2)) + out.token_map.shape[1]
    markers = {"row": torch.full((3,), 6), "frame": torch.ones(3), "none": torch.zeros(3),
               "video": torch.tensor([0, 0, 1])}[marker]
    assert per_frame.tolist() == (groups + markers).long().tolist()
