"""The HF patch reads the configured vision feature layer(s) exactly like the stock model, whichever they are."""

import hf_tiny as tiny
import pytest
import torch

from dyntok_plugin import patch_llava

FRAMES = 2


@pytest.mark.parametrize("layer", [-1, -2, 1, [-2, -1]])
@pytest.mark.parametrize("strategy", ["full", "default"])
def test_identity_for_every_feature_layer(layer, strategy):
    model = tiny.build_tiny_llava_onevision(vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    if strategy == "default":
        # "default" drops the first token, which leaves a 63-token grid: not square, so the stock model itself
        # cannot pool it. The patch must then fail as loudly as the host, not silently.
        batch = tiny.pad_batch([tiny.sample_ids(tiny.text_ids(3, seed=1), ("video", FRAMES))])
        videos = tiny.random_videos(1, FRAMES, seed=2)
        with pytest.raises(Exception) as stock_error:
            model(**batch, pixel_values_videos=videos)
        patch_llava(model, threshold=1.0, marker="video")
        with pytest.raises(type(stock_error.value)):
            model(**batch, pixel_values_videos=videos)
        return
    batch = tiny.pad_batch([tiny.sample_ids(tiny.text_ids(3, seed=1), ("video", FRAMES), tiny.text_ids(2, seed=3))])
    videos = tiny.random_videos(1, FRAMES, seed=2)
    stock = model(**batch, pixel_values_videos=videos).logits
    patch_llava(model, threshold=1.0, marker="video")
    assert torch.equal(model(**batch, pixel_values_videos=videos).logits, stock)
    patch_llava(model, threshold=0.5)
    merged = model(**batch, pixel_values_videos=videos).logits
    (stats,) = model.dyntok.last_stats
    assert stats.tokens_out < FRAMES * tiny.POOLED * (tiny.POOLED + 1)  # some tokens merged
    assert merged.shape[1] == stock.shape[1] - tiny.video_tokens(FRAMES) + stats.tokens_out


def test_hidden_states_of_other_layers_are_not_kept(monkeypatch):
    """Only the selected layer's output is held: the tower is not asked for all hidden states."""
    model = tiny.build_tiny_llava_onevision()
    tower = model.model.vision_tower if hasattr(model, "model") and hasattr(model.model, "vision_tower") else (
        model.vision_tower
    )
    seen = []
    original = tower.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("output_hidden_states"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tower, "forward", spy)
    patch_llava(model, threshold=0.7)
    batch = tiny.pad_batch([tiny.sample_ids(tiny.text_ids(3, seed=1), ("video", FRAMES))])
    model(**batch, pixel_values_videos=tiny.random_videos(1, FRAMES, seed=2))
    assert seen and not any(seen)
