"""Edge cases, gradients, training thresholds, marker ownership and statistics of DynTokCompressor."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from dyntok_plugin import DynTokCompressor, DynTokConfig
from reference import reference_dyntok


def compressor(dim: int = 6, **settings) -> DynTokCompressor:
    return DynTokCompressor(dim, DynTokConfig(**settings))


@pytest.mark.parametrize("marker", ["row", "frame", "video", "none"])
def test_threshold_at_least_one_is_the_pooled_grid(marker):
    features = torch.randn(3, 4, 5, 6)
    features[:, :, 1] = features[:, :, 0]  # duplicates: similarity exactly 1 still does not merge
    for tau in (1.0, 1.5):
        out = compressor(threshold=tau, marker=marker)(features)
        assert torch.equal(out.tokens[~out.is_marker], features.reshape(-1, 6))
        assert torch.equal(out.tokens[out.token_map.flatten()], features.reshape(-1, 6))


@pytest.mark.parametrize("marker", ["row", "frame", "video", "none"])
def test_threshold_below_minus_one_gives_one_token_per_row(marker):
    features = torch.randn(2, 3, 7, 6)
    out = compressor(threshold=-1.01, marker=marker)(features)
    content = out.tokens[~out.is_marker]
    assert content.shape[0] == 2 * 3
    torch.testing.assert_close(content, features.mean(2).reshape(-1, 6))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 5), (1, 5, 1), (4, 1, 3), (2, 3, 1)])
def test_degenerate_grids(shape):
    features = torch.randn(*shape, 6)
    for tau in (-2.0, 0.0, 2.0):
        out = compressor(threshold=tau)(features)
        ref = reference_dyntok(features.double(), None, tau, "row", out.tokens[out.is_marker][0].double())
        assert torch.equal(out.token_map, ref.token_map)
        torch.testing.assert_close(out.tokens.double(), ref.tokens, atol=1e-6, rtol=1e-6)


def test_constant_rows_merge_completely():
    row = torch.randn(6)
    features = row.expand(2, 3, 5, 6).clone()
    out = compressor(threshold=0.99, marker="none")(features)
    assert out.tokens.shape[0] == 2 * 3
    torch.testing.assert_close(out.tokens, row.expand(6, 6))


def test_zero_vectors_have_similarity_zero():
    features = torch.zeros(1, 1, 4, 3)
    features[0, 0, 2] = torch.tensor([1.0, 0.0, 0.0])
    # Similarity 0 everywhere: merged for tau < 0, kept for tau >= 0.
    assert compressor(3, threshold=-0.01, marker="none")(features).tokens.shape[0] == 1
    assert compressor(3, threshold=0.0, marker="none")(features).tokens.shape[0] == 4


def test_duplicated_tokens_merge_and_budget_ties_break_by_position():
    features = torch.randn(1, 2, 6, 4)
    features[0, 0] = features[0, 0, 0]  # row 0: six identical tokens (all similarities exactly 1)
    features[0, 1] = features[0, 1, 0]
    out = compressor(4, threshold=0.999, marker="none")(features)
    assert out.tokens.shape[0] == 2
    # Budget of 4 allows two boundaries among ten pairs that all tie at 1: the earliest positions win.
    out = compressor(4, threshold=None, max_tokens=4, marker="none")(features)
    assert out.token_map[0, 0].tolist() == [0, 1, 2, 2, 2, 2]
    assert out.token_map[0, 1].tolist() == [3, 3, 3, 3, 3, 3]


def test_budget_floor_errors_and_ratio_clamps(caplog):
    features = torch.randn(2, 3, 5, 6)
    with pytest.raises(ValueError, match="floor of 12 tokens"):
        compressor(threshold=None, max_tokens=11)(features)
    with caplog.at_level(logging.WARNING, logger="dyntok_plugin.core.compressor"):
        comp = compressor(threshold=None, target_ratio=0.05)
        out = comp(features)
        comp(features)
    assert out.tokens.shape[0] == 12
    assert sum("below the floor" in r.message for r in caplog.records) == 1


def test_budget_caps_threshold_and_reports_effective_threshold():
    features = torch.randn(2, 3, 8, 6)
    comp = compressor(threshold=0.95)
    free = comp(features)
    comp.config.max_tokens = free.tokens.shape[0] - 5
    capped = comp(features)
    assert capped.tokens.shape[0] == free.tokens.shape[0] - 5
    assert capped.stats.threshold < 0.95
    assert free.stats.threshold == 0.95
    comp.config.max_tokens = free.tokens.shape[0] + 5
    assert torch.equal(comp(features).tokens, free.tokens)


def test_gradcheck_features_and_marker():
    marker = torch.randn(5, dtype=torch.float64, requires_grad=True)
    holder = {"marker": marker}
    comp = DynTokCompressor(5, DynTokConfig(threshold=0.2), marker=lambda: holder["marker"])
    features = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    features[:, :, 1] = features[:, :, 0] * 2  # guaranteed merges
    assert comp(features).tokens.shape[0] < 2 * 2 * 5

    def run(x, m):
        holder["marker"] = m
        return comp(x).tokens

    assert torch.autograd.gradcheck(run, (features.requires_grad_(), marker))


def test_gradients_reach_features_and_owned_marker():
    comp = compressor(threshold=0.3)
    features = torch.randn(2, 3, 4, 6, requires_grad=True)
    comp(features).tokens.sum().backward()
    assert features.grad is not None and comp.marker.grad is not None
    assert comp.marker.grad.abs().sum() > 0


def test_borrowed_marker_is_not_copied_nor_registered():
    host_marker = nn.Parameter(torch.randn(6))
    comp = DynTokCompressor(6, DynTokConfig(threshold=0.5), marker=host_marker)
    assert list(comp.parameters()) == [] and comp.state_dict() == {}
    features = torch.randn(1, 2, 3, 6)
    out = comp(features)
    assert torch.equal(out.tokens[out.is_marker], host_marker.detach().expand(2, 6))
    out.tokens.sum().backward()
    assert host_marker.grad is not None
    with torch.no_grad():
        host_marker.mul_(2)  # later changes are seen: the marker was borrowed, not copied
    assert torch.equal(comp(features).tokens[-1], host_marker.detach())


def test_callable_marker_is_read_each_call():
    holder = {"marker": torch.zeros(6)}
    comp = DynTokCompressor(6, DynTokConfig(threshold=0.5), marker=lambda: holder["marker"])
    features = torch.randn(1, 2, 3, 6)
    assert comp(features).tokens[-1].abs().sum() == 0
    holder["marker"] = torch.ones(6)
    assert torch.equal(comp(features).tokens[-1], torch.ones(6))
    holder["marker"] = torch.ones(5)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        comp(features)


def test_training_thresholds_are_drawn_per_video_reproducibly():
    features = torch.randn(6, 3, 5, 6)
    frames = [1, 2, 3]

    def draws(seed):
        comp = compressor(threshold=0.7, train_threshold_range=(0.2, 0.9), seed=seed).train()
        return [[s.threshold for s in comp.compress_batch(features, frames).stats] for _ in range(3)]

    first, again, other = draws(5), draws(5), draws(6)
    assert first == again and first != other
    flat = [t for call in first for t in call]
    assert all(0.2 <= t <= 0.9 for t in flat)
    assert len(set(flat)) == len(flat)  # independent per video and per call


def test_eval_mode_uses_the_fixed_threshold():
    features = torch.randn(2, 3, 5, 6)
    comp = compressor(threshold=0.4, train_threshold_range=(0.0, 0.9), seed=1).eval()
    outs = [comp(features) for _ in range(2)]
    assert outs[0].stats.threshold == outs[1].stats.threshold == 0.4
    assert torch.equal(outs[0].tokens, outs[1].tokens)


def test_training_draws_use_global_rng_without_seed():
    features = torch.randn(2, 3, 5, 6)
    comp = compressor(train_threshold_range=(-1.0, 1.0)).train()
    torch.manual_seed(3)
    first = comp(features).stats.threshold
    torch.manual_seed(3)
    assert comp(features).stats.threshold == first


def test_projected_similarity_ignores_similarity_features():
    features = torch.randn(2, 3, 5, 6)
    sim = torch.randn(2, 3, 5, 4)
    projected = DynTokCompressor(6, DynTokConfig(threshold=0.1, similarity="projected"))
    assert torch.equal(projected(features, sim).token_map, projected(features).token_map)
    vision = DynTokCompressor(6, DynTokConfig(threshold=0.1))
    ref = reference_dyntok(features.double(), sim.double(), 0.1, "row", torch.zeros(6))
    assert torch.equal(vision(features, sim).token_map, ref.token_map)


def test_stats_and_live_config():
    cfg = DynTokConfig(threshold=1.5, marker="video")
    comp = DynTokCompressor(6, cfg)
    features = torch.randn(2, 3, 4, 6)
    out = comp(features)
    assert out.stats.frames == 2 and out.stats.tokens_in == 24 and out.stats.tokens_out == 25
    assert out.stats.ratio == pytest.approx(25 / 24)
    assert cfg.last_stats == comp.last_stats == [out.stats]
    cfg.threshold = -2.0
    assert comp(features).stats.tokens_out == 2 * 3 + 1
    assert "threshold=-2.0" in repr(comp)


def test_similarities_are_skipped_only_when_nothing_can_merge(monkeypatch):
    from dyntok_plugin.core import compressor as compressor_module

    calls = []
    real = compressor_module.left_similarity
    monkeypatch.setattr(compressor_module, "left_similarity", lambda x: calls.append(1) or real(x))
    features = torch.randn(2, 3, 5, 8)
    cases = [  # settings, training, whether the similarities are read
        (dict(threshold=1.0), False, False),
        (dict(threshold=3.5, marker="none"), False, False),
        (dict(threshold=0.999), False, True),
        (dict(threshold=1.0, max_tokens=20), False, True),
        (dict(threshold=None, target_ratio=0.5), False, True),
        (dict(threshold=1.0, train_threshold_range=(0.6, 0.9)), True, True),
        (dict(threshold=1.0, train_threshold_range=(0.6, 0.9)), False, False),
    ]
    for settings, training, needed in cases:
        comp = DynTokCompressor(8, DynTokConfig(**settings)).train(training)
        assert comp.similarity_needed() is needed, settings
        calls.clear()
        out = comp(features, torch.randn(2, 3, 5, 4))
        assert bool(calls) is needed, settings
        if not needed:  # the pooled grid itself, as if the similarities had been computed
            reference = reference_dyntok(features, None, threshold=settings["threshold"],
                                         marker=settings.get("marker", "row"), marker_vector=comp.marker)
            torch.testing.assert_close(out.tokens.double(), reference.tokens, rtol=0, atol=0)
