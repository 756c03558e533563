"""The settings a served model carries (`dyntok_plugin.vllm.serving_config`) and budget mode's counts
(`dyntok_plugin.core.budget_tokens`): what vLLM reserves is what the compressor makes. No vLLM needed."""

from __future__ import annotations

import types

import pytest
import torch

from dyntok_plugin.core import DynTokCompressor, DynTokConfig, budget_tokens
from dyntok_plugin.vllm import serving_config
from dyntok_plugin.vllm.budget import BudgetVideoCompressor


def config_with(settings):
    return types.SimpleNamespace(dyntok=settings)


@pytest.mark.parametrize("marker", ["row", "frame", "video", "none"])
@pytest.mark.parametrize("budget", [{"target_ratio": 0.05}, {"target_ratio": 0.4}, {"target_ratio": 1.0},
                                    {"max_tokens": 60}, {"max_tokens": 10_000}])
def test_the_count_is_what_the_compressor_makes(marker, budget):
    settings = DynTokConfig(threshold=None, marker=marker, **budget)
    frames = [1, 3, 2]
    rows, cols = 4, 5
    features = torch.randn(sum(frames), rows, cols, 8)
    batch = DynTokCompressor(8, settings).eval().compress_batch(features, frames)
    assert batch.lengths == [budget_tokens(settings, f, rows, cols) for f in frames]
    compressed = BudgetVideoCompressor(settings, 8, lambda: torch.zeros(8)).compress(features, frames, None)
    assert [c.shape[0] for c in compressed] == batch.lengths


def test_counts_rise_to_the_floor_and_stop_at_the_full_grid():
    ratio = DynTokConfig(threshold=None, target_ratio=0.25)
    assert budget_tokens(ratio, 3, 4, 4) == 3 * 4 + 3 * 4  # 0.25 * 48 = 12 tokens, below the floor of 24
    full = DynTokConfig(threshold=None, max_tokens=10_000, marker="video")
    assert budget_tokens(full, 3, 4, 4) == 3 * 16 + 1  # the stock LLaVA-OneVision layout, uncompressed
    with pytest.raises(ValueError, match="max_tokens >= 48"):
        budget_tokens(DynTokConfig(threshold=None, max_tokens=40), 6, 4, 4)


def test_no_settings_means_no_dyntok():
    assert serving_config(types.SimpleNamespace()) is None
    assert serving_config(config_with(None)) is None


@pytest.mark.parametrize("settings", [{"target_ratio": 0.3}, {"max_tokens": 100, "marker": "frame"},
                                      '{"target_ratio": 0.3}', DynTokConfig(threshold=None, target_ratio=0.3),
                                      {**DynTokConfig(threshold=None, target_ratio=0.3).to_dict()}])
def test_budget_settings_are_read_with_no_threshold(settings):
    config = serving_config(config_with(settings))
    assert config.threshold is None and config.has_budget


@pytest.mark.parametrize("settings, message", [
    ({"threshold": 0.7}, "no budget"),
    ({}, "no budget"),
    (DynTokConfig().to_dict(), "no budget"),  # what patch_llava(model) saves: a threshold alone
    ({"threshold": 0.7, "target_ratio": 0.3}, '"threshold": null'),
    ({"target_ratio": 1.5}, r"target_ratio must be in \(0, 1\]"),
    ({"target_ratio": 0.3, "colour": "red"}, "Unknown DynTok setting"),
    ("target_ratio=0.3", "not JSON"),
    ([0.3], "must be a dict"),
])
def test_settings_that_cannot_be_served_name_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        serving_config(config_with(settings))


def test_an_unsupported_vllm_gets_a_warning_and_its_own_models(monkeypatch, caplog):
    vllm = pytest.importorskip("vllm")
    from vllm import ModelRegistry

    import dyntok_plugin.vllm as plugin

    registered = []
    monkeypatch.setattr(ModelRegistry, "register_model", lambda *a: registered.append(a))
    monkeypatch.setattr(vllm, "__version__", "0.40.1")
    with caplog.at_level("WARNING"):
        plugin.register()
    assert registered == [] and "supports vLLM >=0.32,<0.33" in caplog.text and "0.40.1" in caplog.text
