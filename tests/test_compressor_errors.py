"""Every bad input to DynTokConfig and DynTokCompressor raises an exception that names the problem."""

from __future__ import annotations

import math

import pytest
import torch

from dyntok_plugin import DynTokCompressor, DynTokConfig


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"threshold": math.nan}, "threshold must be any finite float"),
        ({"threshold": math.inf}, "threshold must be any finite float"),
        ({"threshold": "0.7"}, "threshold must be"),
        ({"threshold": None}, "threshold=None needs a budget"),
        ({"marker": "grid"}, r"marker must be one of \('row', 'frame', 'video', 'none'\)"),
        ({"similarity": "pixels"}, r"similarity must be one of \('vision', 'projected'\)"),
        ({"max_tokens": 0}, "max_tokens must be a positive int"),
        ({"max_tokens": 10.5}, "max_tokens must be a positive int"),
        ({"target_ratio": 0.0}, r"target_ratio must be in \(0, 1\]"),
        ({"target_ratio": 1.5}, r"target_ratio must be in \(0, 1\]"),
        ({"max_tokens": 10, "target_ratio": 0.5}, "at most one budget"),
        ({"train_threshold_range": (0.9, 0.5)}, "lo <= hi"),
        ({"train_threshold_range": (0.5,)}, "pair"),
        ({"train_threshold_range": (0.5, math.nan)}, r"train_threshold_range\[1\]"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_invalid_config_values(settings, message):
    with pytest.raises(ValueError, match=message):
        DynTokConfig(**settings)


def test_live_assignment_is_validated_and_atomic_update_works():
    cfg = DynTokConfig()
    with pytest.raises(ValueError, match="threshold must be"):
        cfg.threshold = math.nan
    assert cfg.threshold == 0.7
    with pytest.raises(ValueError, match="needs a budget"):
        cfg.threshold = None
    cfg.update(threshold=None, target_ratio=0.4)
    assert cfg.threshold is None and cfg.target_ratio == 0.4
    with pytest.raises(ValueError, match="no field"):
        cfg.update(thresold=0.5)
    assert DynTokConfig.from_dict(cfg.to_dict()) == cfg


def make(dim=6, **settings):
    return DynTokCompressor(dim, DynTokConfig(**settings))


@pytest.mark.parametrize(
    "features, message, error",
    [
        (torch.randn(3, 4, 6), r"shape \(frames, h, w, dim\)", ValueError),
        (torch.randn(1, 3, 4, 4, 6), r"shape \(frames, h, w, dim\)", ValueError),
        (torch.randn(2, 3, 4, 5), "hidden size 5 but the compressor was built for hidden_size=6", ValueError),
        (torch.randn(0, 3, 4, 6), "zero frames", ValueError),
        (torch.randn(2, 0, 4, 6), "empty grid", ValueError),
        (torch.ones(2, 3, 4, 6, dtype=torch.long), "floating-point", TypeError),
        ([[1.0]], "torch.Tensor", TypeError),
    ],
)
def test_bad_features(features, message, error):
    with pytest.raises(error, match=message):
        make()(features)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_features_are_rejected(bad):
    features = torch.randn(2, 3, 4, 6)
    features[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="^features contain NaN or Inf"):
        make()(features)
    similarity = torch.randn(2, 3, 4, 5)
    similarity[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="^similarity_features contain NaN or Inf"):
        make()(torch.randn(2, 3, 4, 6), similarity)


def test_mismatched_similarity_features():
    with pytest.raises(ValueError, match=r"share \(F, h, w\)"):
        make()(torch.randn(2, 3, 4, 6), torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match="similarity_features must have shape"):
        make()(torch.randn(2, 3, 4, 6), torch.randn(2, 12, 6))


def test_bad_batches():
    comp = make()
    with pytest.raises(ValueError, match="sums to 5 but features have 4 frames"):
        comp.compress_batch(torch.randn(4, 3, 4, 6), [2, 3])
    with pytest.raises(ValueError, match="at least one frame"):
        comp.compress_batch(torch.randn(4, 3, 4, 6), [4, 0])


def test_budget_below_floor_names_the_floor():
    with pytest.raises(ValueError, match=r"floor of 9 tokens.*use max_tokens >= 9"):
        make(threshold=None, max_tokens=8, marker="frame")(torch.randn(3, 2, 4, 6))


def test_marker_and_construction_errors():
    with pytest.raises(ValueError, match=r"shape \(6,\) to match hidden_size=6"):
        DynTokCompressor(6, DynTokConfig(), marker=torch.zeros(5))
    with pytest.raises(TypeError, match="marker must be None, a tensor or a callable"):
        DynTokCompressor(6, DynTokConfig(), marker="image_newline")
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        DynTokCompressor(0, DynTokConfig())
    with pytest.raises(TypeError, match="config must be a DynTokConfig"):
        DynTokCompressor(6, {"threshold": 0.5})
