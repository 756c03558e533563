"""Patching mechanics on the HF LLaVA-OneVision host: unpatch, re-patch, wrappers (PEFT, accelerate), attention
implementations, dtypes, gradient checkpointing, live and persisted settings."""

import functools
import inspect

import hf_tiny as tiny
import pytest
import torch

from dyntok_plugin import DynTokConfig, patch_llava, unpatch_llava

FRAMES = 2


def _inputs(labels=False, side="right"):
    samples = [
        tiny.sample_ids(tiny.text_ids(4, seed=1), ("video", FRAMES), tiny.text_ids(3, seed=2)),
        tiny.sample_ids(tiny.text_ids(2, seed=3), ("video", FRAMES), tiny.text_ids(5, seed=4)),
    ]
    batch = tiny.pad_batch(samples, side=side, labels=labels)
    batch["pixel_values_videos"] = tiny.random_videos(2, FRAMES, seed=5)
    return batch


def _dyntok_attributes(model):
    return sorted(k for k in model.__dict__ if "dyntok" in k.lower())


def test_unpatch_restores_stock_exactly():
    model = tiny.build_tiny_llava_onevision()
    batch = _inputs()
    stock = model(**batch).logits
    keys = list(model.state_dict())
    patch_llava(model, threshold=0.7)
    assert "forward" in model.__dict__ and "generate" in model.__dict__
    assert model(**batch).logits.shape != stock.shape
    assert list(model.state_dict()) == keys  # the borrowed marker adds no weights
    unpatch_llava(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert _dyntok_attributes(model) == [] and not hasattr(model.config, "dyntok")
    assert type(model).forward is model.forward.__func__
    assert torch.equal(model(**batch).logits, stock)


def test_patching_twice_changes_settings_without_stacking():
    model = tiny.build_tiny_llava_onevision()
    batch = _inputs()
    patch_llava(model, threshold=0.9)
    first = model.forward
    patch_llava(model, threshold=-1.5, marker="frame")
    assert model.forward is not first
    assert model.forward.__wrapped__.__func__ is type(model).forward  # wraps the class forward, not a wrapper
    assert model.generate.__wrapped__.__func__ is type(model).generate
    model(**batch)
    assert [s.tokens_out for s in model.dyntok.last_stats] == [FRAMES * tiny.POOLED + FRAMES] * 2
    unpatch_llava(model)
    assert "forward" not in model.__dict__


def test_wrappers_keep_the_signature_generate_and_trainer_inspect():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model)
    params = inspect.signature(model.forward).parameters
    assert {"pixel_values_videos", "position_ids", "labels", "attention_mask"} <= set(params)
    assert inspect.signature(model.generate) == inspect.signature(type(model).generate.__get__(model))


def test_positional_arguments_and_position_ids_are_respliced():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    batch = _inputs(side="right")
    by_name = model(**batch).logits
    mask = batch["attention_mask"]
    stale = torch.arange(mask.shape[1]).expand_as(mask)  # positions for the unspliced length
    with_positions = model(**batch, position_ids=stale).logits  # rebuilt for the spliced length
    valid = _valid_rows(batch, model.dyntok.last_stats, by_name.shape[1]).flip(-1)  # right padding
    torch.testing.assert_close(with_positions[valid], by_name[valid])
    positional = model(batch["input_ids"], None, None, batch["pixel_values_videos"], attention_mask=mask).logits
    assert torch.equal(positional, by_name)
    left = _inputs(side="left")
    settings = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    by_keyword = model.generate(**left, **settings)
    ids = left.pop("input_ids")
    assert torch.equal(model.generate(ids, **left, **settings), by_keyword)  # `inputs`, generate's first argument


def test_live_settings_stats_and_persistence_round_trip(tmp_path):
    model = tiny.build_tiny_llava_onevision()
    batch = _inputs()
    patch_llava(model, threshold=0.6, marker="row", target_ratio=0.5)
    assert isinstance(model.dyntok, DynTokConfig)
    model(**batch)
    stats = model.dyntok.last_stats
    assert len(stats) == 2 and all(s.tokens_out == int(0.5 * FRAMES * tiny.POOLED**2) for s in stats)
    assert all(s.frames == FRAMES and s.tokens_in == FRAMES * tiny.POOLED**2 for s in stats)
    model.dyntok.update(target_ratio=None, threshold=2.0)  # live: the next call uses the new settings
    model(**batch)
    assert [s.tokens_out for s in model.dyntok.last_stats] == [FRAMES * tiny.POOLED * (tiny.POOLED + 1)] * 2

    model.dyntok.update(threshold=0.55, target_ratio=0.75)
    model.dyntok.marker = "frame"  # live edits reach model.config, so save_pretrained keeps them
    model.save_pretrained(tmp_path)
    from transformers import LlavaOnevisionForConditionalGeneration

    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert _dyntok_attributes(loaded) == []  # loading never patches by itself
    patch_llava(loaded)
    assert loaded.dyntok.to_dict() == model.dyntok.to_dict()
    assert (loaded.dyntok.threshold, loaded.dyntok.target_ratio, loaded.dyntok.marker) == (0.55, 0.75, "frame")
    expected = model(**batch)
    real = expected.attention_mask.bool()  # an unpadded batch is re-padded on the left: compare real positions
    torch.testing.assert_close(loaded(**batch).logits[real], expected.logits[real])

    patch_llava(loaded)  # no settings on a patched model: keeps the live ones
    assert loaded.dyntok.marker == "frame"
    patch_llava(loaded, threshold=0.3)  # explicit settings replace them, and the saved ones come back on unpatch
    assert loaded.config.dyntok["threshold"] == 0.3
    unpatch_llava(loaded)
    assert loaded.config.dyntok["threshold"] == 0.55 and loaded.config.dyntok["marker"] == "frame"
    patch_llava(loaded)
    assert loaded.dyntok.marker == "frame"


def test_unpatch_refuses_to_drop_a_wrapper_added_later():
    model = tiny.build_tiny_llava_onevision()
    batch = _inputs()
    stock = model(**batch).logits
    patch_llava(model, threshold=0.7)
    patched_forward = model.forward
    model.forward = functools.wraps(patched_forward)(lambda *a, **k: patched_forward(*a, **k))
    with pytest.raises(RuntimeError, match="wrapped again after patch_llava"):
        unpatch_llava(model)
    assert model.dyntok.threshold == 0.7  # nothing was half-removed
    model.forward = patched_forward
    unpatch_llava(model)
    assert torch.equal(model(**batch).logits, stock)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_attention_implementations(attention):
    model = tiny.build_tiny_llava_onevision(attn_implementation=attention)
    batch = _inputs(side="left")
    stock = model(**batch).logits
    patch_llava(model, threshold=1.0, marker="video")
    assert torch.equal(model(**batch).logits, stock)
    model.dyntok.update(threshold=0.7, marker="row")
    merged = model(**batch).logits
    eager = tiny.build_tiny_llava_onevision(attn_implementation="eager")
    patch_llava(eager, threshold=0.7)
    valid = _valid_rows(batch, model.dyntok.last_stats, merged.shape[1])
    torch.testing.assert_close(merged[valid], eager(**batch).logits[valid], rtol=1e-4, atol=1e-4)


def _valid_rows(batch, stats, width):
    """Mask of the non-padding positions of a left-padded spliced batch."""
    lengths = [int(m.sum()) - tiny.video_tokens(FRAMES) + s.tokens_out for m, s in zip(batch["attention_mask"], stats)]
    return torch.stack([torch.arange(width) >= width - n for n in lengths])


def test_bfloat16():
    model = tiny.build_tiny_llava_onevision(dtype=torch.bfloat16)
    batch = _inputs()
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(torch.bfloat16)
    stock = model(**batch).logits
    patch_llava(model, threshold=1.0, marker="video")
    assert torch.equal(model(**batch).logits, stock)
    model.dyntok.update(threshold=0.7, marker="row")
    out = model(**batch)
    assert out.logits.dtype == stock.dtype and torch.isfinite(out.logits).all()  # 4.45 upcasts logits
    left = _inputs(side="left")
    left["pixel_values_videos"] = left["pixel_values_videos"].to(torch.bfloat16)
    _assert_generates(model, left)


def _assert_generates(model, batch, new=3):
    """Greedy generate returns the caller's prompt followed by exactly `new` tokens."""
    out = model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    prompt = batch["input_ids"]
    assert out.shape == (prompt.shape[0], prompt.shape[1] + new)
    assert torch.equal(out[:, : prompt.shape[1]], prompt)


def test_gradient_checkpointing_matches_plain_training():
    batch = _inputs(labels=True)
    results = []
    for checkpointing in (False, True):
        model = tiny.build_tiny_llava_onevision().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        patch_llava(model, threshold=0.7)
        loss = model(**batch).loss
        loss.backward()
        projector = tiny._owner(model).multi_modal_projector
        results.append((loss.detach(), [p.grad.clone() for p in projector.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for plain, checkpointed in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(plain, checkpointed)


def test_peft_lora_wrapped_model():
    from peft import LoraConfig, get_peft_model

    base = tiny.build_tiny_llava_onevision()
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    batch = _inputs(labels=True)
    stock = peft_model(**batch).logits
    patch_llava(peft_model, threshold=1.0, marker="video")
    assert torch.equal(peft_model(**batch).logits, stock)
    peft_model.dyntok.update(threshold=0.7, marker="row")
    peft_model.train()
    out = peft_model(**batch)
    out.loss.backward()
    lora = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora and all(p.grad is not None for p in lora)
    peft_model.eval()
    _assert_generates(peft_model, _inputs(side="left"))
    unpatch_llava(peft_model)
    assert "forward" not in base.__dict__
    torch.testing.assert_close(peft_model(**_inputs()).logits, stock)


def test_accelerate_offload_hooks_are_preserved():
    from accelerate import cpu_offload

    model = tiny.build_tiny_llava_onevision()
    batch = _inputs()
    stock = model(**batch).logits
    cpu_offload(model, execution_device=torch.device("cpu"))
    hooked = model.forward
    assert tiny._owner(model).image_newline.device.type == "meta"  # weights really are offloaded
    patch_llava(model, threshold=1.0, marker="video")
    assert model.forward.__wrapped__ is hooked
    assert torch.equal(model(**batch).logits, stock)
    model.dyntok.update(threshold=-1.5, marker="row")  # every row merges into one token plus its marker
    assert model(**batch).logits.shape[1] == stock.shape[1] - tiny.video_tokens(FRAMES) + 2 * FRAMES * tiny.POOLED
    unpatch_llava(model)
    assert model.forward is hooked
    assert torch.equal(model(**batch).logits, stock)


def test_generate_with_several_returned_sequences_keeps_each_prompt():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    batch = _inputs(side="left")
    out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, num_beams=2, num_return_sequences=2,
                         do_sample=False, return_dict_in_generate=True)
    prompt = batch["input_ids"]
    assert out.sequences.shape == (4, prompt.shape[1] + 3)
    assert torch.equal(out.sequences[:, : prompt.shape[1]], prompt.repeat_interleave(2, dim=0))


def test_deep_copy_runs_on_its_own_weights_and_settings():
    import copy

    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    batch = _inputs()
    before = model(**batch).logits
    twin = copy.deepcopy(model)
    assert twin.forward.__self__ is twin and twin.generate.__self__ is twin
    torch.testing.assert_close(twin(**batch).logits, before)
    with torch.no_grad():
        tiny._owner(twin).image_newline.mul_(3.0)  # the marker of the copy only
    assert not torch.allclose(twin(**batch).logits, before)
    twin.dyntok.threshold = 2.0
    twin(**batch)
    assert model.dyntok.threshold == 0.7
    assert twin.dyntok.last_stats[0].tokens_out == FRAMES * tiny.POOLED * (tiny.POOLED + 1)
    torch.testing.assert_close(model(**batch).logits, before)
    unpatch_llava(twin)
    assert "forward" not in twin.__dict__ and "forward" in model.__dict__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_pooling_equals_the_host_pooling_at_real_size(dtype):
    from types import SimpleNamespace

    from dyntok_plugin.hf.common import bilinear_pool
    from transformers.models.llava_onevision import modeling_llava_onevision as host_module

    host_class = getattr(host_module, "LlavaOnevisionModel", host_module.LlavaOnevisionForConditionalGeneration)
    vision = SimpleNamespace(image_size=384, patch_size=14)  # SigLIP-so400m: 27 x 27 -> 14 x 14
    owner = SimpleNamespace(config=SimpleNamespace(vision_config=vision))
    for channels in (896, 1152):  # LLM width of the 0.5B model, SigLIP width
        features = torch.randn(3, 27 * 27, channels).to(dtype)
        stock = host_class.apply_pooling(owner, features)
        assert torch.equal(bilinear_pool(features, 27).reshape(stock.shape), stock)


def test_a_host_with_another_pooling_is_followed():
    import types

    model = tiny.build_tiny_llava_onevision()
    owner = tiny._owner(model)

    def average_pooling(self, features):
        grid = features.view(features.shape[0], tiny.GRID, tiny.GRID, -1).permute(0, 3, 1, 2)
        return torch.nn.functional.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)

    owner.apply_pooling = types.MethodType(average_pooling, owner)
    batch = _inputs()
    stock = model(**batch).logits
    patch_llava(model, threshold=1.0, marker="video")
    assert torch.equal(model(**batch).logits, stock)


@pytest.mark.parametrize("settings, training, poolings", [
    (dict(threshold=1.0, marker="video"), False, 1),  # nothing can merge: the vision features are not pooled
    (dict(threshold=0.7), False, 2),
    (dict(threshold=1.0, train_threshold_range=(0.6, 0.9)), True, 2),
    (dict(threshold=0.7, similarity="projected"), False, 1),
])
def test_the_vision_similarity_is_pooled_only_when_it_can_matter(monkeypatch, settings, training, poolings):
    from dyntok_plugin.patches import hf_llava_onevision as patch_module

    calls = []
    real = patch_module._pool
    monkeypatch.setattr(patch_module, "_pool", lambda host, features: calls.append(1) or real(host, features))
    model = tiny.build_tiny_llava_onevision().train(training)
    stock = model(**_inputs()).logits
    patch_llava(model, **settings)
    logits = model(**_inputs()).logits
    assert len(calls) == poolings
    if settings.get("marker") == "video":
        assert torch.equal(logits, stock)
