"""Patching mechanics on tiny Qwen VL hosts: exact unpatch, the plugin-owned marker, settings through
save_pretrained/from_pretrained, wrappers, bad input and the transformers floor."""

import pytest
import qwen_tiny as qt
import torch

from dyntok_plugin import DynTokConfig, patch_llava, patch_model, unpatch_llava, unpatch_model
from dyntok_plugin.hf import synthetic_qwen as sq
from dyntok_plugin.patches import hf_qwen_vl
from dyntok_plugin.patches.hf_qwen_vl import plugin_marker


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_unpatch_restores_the_stock_model_exactly(kind):
    model = qt.build(kind)
    batch = qt.inputs(model, qt.samples())
    stock = model(**batch).logits
    keys, attributes = list(model.state_dict()), set(model.__dict__)
    patch_model(model, threshold=0.5, marker="row")  # the neutral alias
    assert plugin_marker(model) is not None and "dyntok_marker" in model.state_dict()
    assert not torch.equal(model(**batch).logits, stock)
    unpatch_model(model)
    assert list(model.state_dict()) == keys and set(model.__dict__) == attributes
    assert not hasattr(model.config, "dyntok") and type(model).forward is model.forward.__func__
    assert torch.equal(model(**batch).logits, stock)
    patch_llava(model, threshold=0.5)  # marker "none": no parameter is added
    assert list(model.state_dict()) == keys
    unpatch_llava(model)


def test_the_plugin_marker_survives_repatching_and_takes_the_models_dtype():
    model = qt.build("qwen2_5_vl").to(torch.float64)
    patch_llava(model, threshold=0.5, marker="frame")
    marker = plugin_marker(model)
    assert marker.dtype == torch.float64 and marker.requires_grad
    with torch.no_grad():
        marker.fill_(0.25)
    patch_llava(model, threshold=0.6, marker="row")
    assert plugin_marker(model) is marker and bool((marker == 0.25).all())
    assert model.dyntok.threshold == 0.6 and model.dyntok.marker == "row"


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_settings_survive_save_and_reload(kind, tmp_path):
    model = qt.build(kind)
    batch = qt.inputs(model, qt.samples())
    patch_llava(model, threshold=0.45, similarity="projected", target_ratio=0.6)
    expected = model(**batch)
    model.save_pretrained(tmp_path)
    reloaded = sq.model_class(model.config).from_pretrained(tmp_path).eval()
    assert reloaded.config.dyntok["threshold"] == 0.45
    patch_llava(reloaded)
    assert model.dyntok == reloaded.dyntok
    assert reloaded.dyntok.marker == "none"
    valid = expected.attention_mask.bool()  # padding positions differ with the attention kernel
    torch.testing.assert_close(reloaded(**batch).logits[valid], expected.logits[valid], rtol=1e-5, atol=1e-5)


def test_a_given_config_is_used_as_is_and_live_changes_apply():
    model = qt.build("qwen3_vl")
    batch = qt.inputs(model, qt.samples())
    patch_llava(model, config=DynTokConfig(threshold=1.0, marker="none"))
    full = model(**batch).logits.shape[1]
    model.dyntok.threshold = -2.0  # every row of every slice becomes one token
    out = model(**batch)
    assert [s.tokens_out for s in model.dyntok.last_stats] == [2 * 3, 1 * 4, 2 * 3]
    assert out.logits.shape[1] < full
    model(**qt.inputs(model, [[sq.text_ids(4, 1)]]))
    assert model.dyntok.last_stats == []  # a call without video has no statistics


def test_peft_wrapped_model_is_patched_through_the_wrapper():
    peft = pytest.importorskip("peft")
    model = qt.build("qwen2_5_vl")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    patch_llava(wrapped, threshold=0.5)
    batch = qt.inputs(model, qt.samples())
    assert wrapped(**batch).logits.shape[1] < batch["input_ids"].shape[1]
    assert wrapped.dyntok is model.dyntok
    unpatch_llava(wrapped)
    assert "forward" not in model.__dict__


def test_grid_not_matching_the_pixels_is_named():
    model = qt.build("qwen2_5_vl")
    patch_llava(model, threshold=0.5)
    batch = qt.inputs(model, qt.samples())
    grid = batch["video_grid_thw"].clone()
    grid[0, 1] += 2
    with pytest.raises(ValueError, match="video_grid_thw .* pixel_values_videos"):
        model(**dict(batch, video_grid_thw=grid))
    with pytest.raises(ValueError, match="needs video_grid_thw"):
        model(**{k: v for k, v in batch.items() if k != "video_grid_thw"})


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_placeholder_runs_not_matching_the_grid_are_named(kind):
    model = qt.build(kind)
    patch_llava(model, threshold=0.5)
    batch = qt.inputs(model, qt.samples(image=False), side="left")
    ids = batch["input_ids"].clone()
    first = int((ids[0] == sq.VIDEO_ID).nonzero()[0, 0])
    ids[0, first] = sq.FIRST_TEXT_ID  # one placeholder fewer in the first run
    with pytest.raises(ValueError, match="placeholder run 0 has"):
        model(**dict(batch, input_ids=ids))
    extra = batch["video_grid_thw"][:1]
    more = dict(batch, video_grid_thw=torch.cat([batch["video_grid_thw"], extra]),
                pixel_values_videos=torch.cat([batch["pixel_values_videos"],
                                               batch["pixel_values_videos"][: int(extra.prod())]]))
    runs, described = (5, 7) if kind == "qwen3_vl" else (3, 4)  # Qwen3-VL: one run per temporal slice
    with pytest.raises(ValueError, match=f"hold {runs} video placeholder runs but video_grid_thw describes {described}"):
        model(**more)


def test_inputs_embeds_with_videos_is_refused():
    model = qt.build("qwen3_vl")
    patch_llava(model)
    batch = qt.inputs(model, qt.samples())
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        model(**dict(batch, inputs_embeds=embeds))


def test_transformers_below_the_floor_is_refused(monkeypatch):
    model = qt.build("qwen2_5_vl")
    monkeypatch.setattr(hf_qwen_vl, "transformers_version", lambda: (5, 17))
    with pytest.raises(RuntimeError, match=r"transformers >= 5\.18"):
        patch_llava(model)
    assert "forward" not in model.__dict__


def test_a_marker_layout_switched_on_after_patching_with_none_is_refused():
    model = qt.build(qt.FAST_KINDS[0])
    patch_llava(model, threshold=0.5)  # the host's default marker "none": no learnable marker is registered
    model.dyntok.marker = "row"
    with pytest.raises(ValueError, match=r"after patching with marker='none'.*unpatch_llava\(model\), then "):
        model(**qt.inputs(model, qt.samples()))
    unpatch_llava(model)
    patch_llava(model, threshold=0.5, marker="row")
    model(**qt.inputs(model, qt.samples()))
    assert plugin_marker(model).requires_grad


def test_a_marker_kept_for_re_patching_follows_the_model_to_its_dtype():
    model = qt.build(qt.FAST_KINDS[0])
    patch_llava(model, threshold=0.5, marker="row")
    unpatch_llava(model)
    model.to(torch.float64)
    patch_llava(model, threshold=0.5, marker="row")
    assert plugin_marker(model).dtype == torch.float64


def test_unpatch_forgets_dyntoks_rope_deltas():
    model = qt.build(qt.FAST_KINDS[0])
    patch_llava(model, target_ratio=0.5, threshold=None)
    model(**qt.inputs(model, qt.samples()))
    assert model.model.rope_deltas is not None
    unpatch_llava(model)
    assert model.model.rope_deltas is None
