"""Numerics at the ends of the float range (issue 18, item 7): the cosine neither overflows nor underflows, and
finite features are never rejected as non-finite."""

import pytest
import torch

from dyntok_plugin import DynTokConfig
from dyntok_plugin.core import DynTokCompressor


def _compress(features, threshold=0.9, marker="none"):
    comp = DynTokCompressor(hidden_size=features.shape[-1], config=DynTokConfig(threshold=threshold, marker=marker))
    return comp(features)


@pytest.mark.parametrize("scale", [1e-20, 1e-30, 1e20, 1e30])
def test_similarity_is_scale_free_at_the_ends_of_float32(scale):
    torch.manual_seed(0)
    features = torch.randn(2, 3, 5, 8)
    features[:, :, 2] = features[:, :, 1]  # identical neighbours must merge
    reference = _compress(features)
    scaled = _compress(features * scale)
    assert scaled.stats.tokens_out == reference.stats.tokens_out < 2 * 3 * 5
    assert torch.equal(scaled.token_map, reference.token_map)


def test_finite_features_near_the_float32_maximum_are_accepted():
    features = torch.full((1, 2, 3, 4), 3e38)
    features[0, 0, 1] = -3e38
    out = _compress(features, threshold=1.0)
    assert out.stats.tokens_out == 6 and bool(torch.isfinite(out.tokens).all())
    with pytest.raises(ValueError, match="NaN or Inf"):
        _compress(torch.full((1, 2, 3, 4), float("inf")))
