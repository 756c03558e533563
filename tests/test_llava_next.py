"""DynTok on the real LLaVA-NeXT code (PyPI fork `llavaction`): layouts, similarity source, batches, generate,
images, unpatch and preconditions, on tiny random models on CPU."""

import copy
import logging

import pytest
import torch
from torch import nn

import llava_next_tiny as tiny  # noqa: E402

tiny.require_host()
from dyntok_plugin import DynTokCompressor, DynTokConfig, UnsupportedModelError, patch_llava, unpatch_llava  # noqa: E402
from dyntok_plugin.patches import llava_next  # noqa: E402

SIZES = [(tiny.PIXELS, tiny.PIXELS)]


def logits(model, input_ids, images, modalities, attention_mask=None):
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, images=images, modalities=modalities,
                    image_sizes=SIZES * len(images), output_hidden_states=False)
    return out.logits


def generate(model, input_ids, images, modalities, attention_mask=None, **kwargs):
    return model.generate(input_ids, attention_mask=attention_mask, images=images, modalities=modalities,
                          image_sizes=SIZES * len(images), max_new_tokens=5, do_sample=False,
                          pad_token_id=0, **kwargs)


def one_video(frames=3, seed=0):
    return torch.tensor([tiny.prompt()]), [tiny.video(frames, seed)], ["video"]


def test_recognised_by_methods_not_by_name():
    model = tiny.tiny_model()
    assert llava_next.is_supported(model)
    assert not llava_next.is_supported(nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError, match="LlavaQwenForCausalLM"):
        patch_llava(nn.Linear(2, 2))


@pytest.mark.parametrize("threshold", [1.0, 7.5])
def test_no_merge_with_row_marker_equals_stock_grid_layout(threshold):
    model = tiny.tiny_model(mm_newline_position="grid")
    ids, images, modalities = one_video()
    stock = logits(model, ids, images, modalities)
    patch_llava(model, threshold=threshold, marker="row")
    assert torch.equal(logits(model, ids, images, modalities), stock)
    assert model.dyntok.last_stats[0].tokens_out == 3 * 4 * 5


@pytest.mark.parametrize("position, marker", [("one_token", "video"), ("frame", "frame")])
def test_no_merge_reproduces_other_stock_layouts(position, marker):
    model = tiny.tiny_model(mm_newline_position=position)
    ids, images, modalities = one_video(frames=2)
    stock = logits(model, ids, images, modalities)
    patch_llava(model, threshold=1.0, marker=marker)
    assert model.config.mm_newline_position == position  # the config keeps the checkpoint's layout
    assert torch.equal(logits(model, ids, images, modalities), stock)
    assert model.config.mm_newline_position == position


def test_similarity_comes_from_pre_projector_features_and_tower_runs_once():
    model = tiny.tiny_model()
    ids, images, modalities = one_video(frames=3, seed=4)
    calls = []
    model.get_model().vision_tower.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        vision = model.get_model().vision_tower(images[0])
        projected = model.get_2dPool(model.get_model().mm_projector(vision)).reshape(3, 4, 4, -1)
        pooled_vision = model.get_2dPool(vision).reshape(3, 4, 4, -1)
    config = DynTokConfig(threshold=0.8)
    newline = model.get_model().image_newline
    expected_vision = DynTokCompressor(tiny.HIDDEN, config, marker=newline)(projected, pooled_vision).tokens
    expected_projected = DynTokCompressor(tiny.HIDDEN, config, marker=newline)(projected).tokens
    assert expected_vision.shape != expected_projected.shape  # the two similarity spaces disagree on this clip

    for similarity, expected in (("vision", expected_vision), ("projected", expected_projected)):
        patch_llava(model, threshold=0.8, similarity=similarity)
        calls.clear()
        embeds, _, _ = tiny.embeds(model, ids, images, modalities)
        assert len(calls) == 1
        visual = embeds[0, 2:2 + expected.shape[0]]
        torch.testing.assert_close(visual, expected, rtol=1e-6, atol=1e-6)
        assert embeds.shape[1] == 4 + expected.shape[0]


def test_token_counts_follow_threshold_within_bounds():
    model = tiny.tiny_model()
    ids, images, modalities = one_video(frames=3, seed=1)
    patch_llava(model, threshold=1.0)
    lengths = []
    for threshold in (1.0, 0.9, 0.7, 0.3, -1.1):
        model.dyntok.threshold = threshold  # live setting: read at the next call
        embeds, _, _ = tiny.embeds(model, ids, images, modalities)
        stats = model.dyntok.last_stats[0]
        assert embeds.shape[1] == 4 + stats.tokens_out
        assert stats.threshold == threshold
        lengths.append(stats.tokens_out)
    assert lengths[0] == 3 * 4 * 5 and lengths[-1] == 3 * 4 * 2
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) > 2


def test_unpatch_restores_stock_behaviour_and_settings():
    model = tiny.tiny_model(mm_newline_position="one_token")
    ids, images, modalities = one_video()
    stock = logits(model, ids, images, modalities)
    keys = list(model.state_dict())
    patch_llava(model, threshold=0.5)
    patch_llava(model, threshold=0.6)  # re-patching replaces, never stacks
    assert len(model.get_model().mm_projector._forward_pre_hooks) == 1
    assert list(model.state_dict()) == keys
    patched = logits(model, ids, images, modalities)
    assert patched.shape[1] < stock.shape[1]
    unpatch_llava(model)
    assert model.config.mm_newline_position == "one_token"
    assert not hasattr(model, "dyntok") and not hasattr(model.config, "dyntok")
    assert not {"add_token_per_grid", "prepare_inputs_labels_for_multimodal"} & set(model.__dict__)
    assert len(model.get_model().mm_projector._forward_pre_hooks) == 0
    assert torch.equal(logits(model, ids, images, modalities), stock)


def test_unpatch_removes_a_newline_setting_the_config_never_had():
    model = tiny.tiny_model()
    del model.config.mm_newline_position  # the host then defaults to one_token
    patch_llava(model, threshold=1.0, marker="video")
    unpatch_llava(model)
    assert not hasattr(model.config, "mm_newline_position")


def test_batch_of_videos_with_different_lengths_equals_single_runs():
    model = tiny.tiny_model()
    patch_llava(model, threshold=0.75)
    prompts = [tiny.prompt((5,), (7, 8, 9)), tiny.prompt((5, 6, 10, 11), (7,))]
    videos = [tiny.video(2, seed=2), tiny.video(4, seed=3)]
    ids, mask = tiny.left_pad(prompts)
    batch_embeds, batch_mask, _ = tiny.embeds(model, ids, videos, ["video", "video"], attention_mask=mask)
    batch_stats = list(model.dyntok.last_stats)
    assert [s.frames for s in batch_stats] == [2, 4]
    batch_tokens = generate(model, ids, videos, ["video", "video"], attention_mask=mask)
    for i, (p, v) in enumerate(zip(prompts, videos)):
        single_ids = torch.tensor([p])
        single_embeds, _, _ = tiny.embeds(model, single_ids, [v], ["video"])
        assert model.dyntok.last_stats == [batch_stats[i]]
        assert torch.equal(batch_embeds[i][batch_mask[i].bool()], single_embeds[0])
        single_tokens = generate(model, single_ids, [v], ["video"])
        assert torch.equal(batch_tokens[i, : single_tokens.shape[1]], single_tokens[0])


def test_generate_with_cache_equals_recomputation():
    model = tiny.tiny_model()
    patch_llava(model, threshold=0.7)
    ids, images, modalities = one_video(frames=3, seed=5)
    cached = generate(model, ids, images, modalities, use_cache=True)
    recomputed = generate(model, ids, images, modalities, use_cache=False)
    assert cached.shape[1] >= 1
    assert torch.equal(cached, recomputed)


def test_image_samples_are_untouched():
    stock = tiny.tiny_model()
    model = tiny.tiny_model()
    patch_llava(model, threshold=0.5)
    image = tiny.video(1, seed=6)[0]
    crops = tiny.video(2, seed=7)  # anyres: base image + one crop
    prompts = [tiny.prompt((5,), (7, 8)), tiny.prompt((5, 6), (7,)), tiny.prompt((9,), (7,))]
    ids, mask = tiny.left_pad(prompts)
    items, modalities = [tiny.video(3, seed=8), image, crops], ["video", "image", "image"]
    ours, ours_mask, _ = tiny.embeds(model, ids, items, modalities, attention_mask=mask)
    reference, reference_mask, _ = tiny.embeds(stock, ids, items, modalities, attention_mask=mask)
    assert len(model.dyntok.last_stats) == 1
    for i in (1, 2):
        assert torch.equal(ours[i][ours_mask[i].bool()], reference[i][reference_mask[i].bool()])
    single = torch.tensor([prompts[1]])
    assert torch.equal(logits(model, single, [image], ["image"]), logits(stock, single, [image], ["image"]))
    assert model.dyntok.last_stats == []


def test_layout_change_is_logged_once_with_the_way_back(caplog):
    model = tiny.tiny_model(mm_newline_position="one_token")
    ids, images, modalities = one_video()
    patch_llava(model, threshold=0.7)
    with caplog.at_level(logging.WARNING, logger=llava_next.__name__):
        logits(model, ids, images, modalities)
        logits(model, ids, images, modalities)
    records = [r for r in caplog.records if r.name == llava_next.__name__]
    assert len(records) == 1 and "one_token" in records[0].message and "marker='video'" in records[0].message
    caplog.clear()
    patch_llava(model, threshold=0.7, marker="video")
    with caplog.at_level(logging.WARNING, logger=llava_next.__name__):
        logits(model, ids, images, modalities)
    assert not [r for r in caplog.records if r.name == llava_next.__name__]


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"mm_patch_merge_type": "spatial"}, "image_newline.*spatial_unpad"),
        ({"mm_patch_merge_type": "flat"}, "mm_patch_merge_type='flat'"),
        ({"add_faster_video": True}, "add_faster_video = False"),
    ],
)
def test_unmet_preconditions_raise_before_changing_anything(overrides, match):
    model = tiny.tiny_model(**overrides)
    position = model.config.mm_newline_position
    with pytest.raises(ValueError, match=match):
        patch_llava(model, threshold=0.7)
    assert llava_next.STATE_ATTRIBUTE not in model.__dict__ and "add_token_per_grid" not in model.__dict__
    assert model.config.mm_newline_position == position


def test_non_square_patch_grid_is_rejected():
    model = tiny.tiny_model()

    class WideTower(tiny.TinyTower):
        num_patches = 72  # 8x9: not square

    model.get_model().vision_tower = WideTower()
    with pytest.raises(ValueError, match="not a square 8x8 grid"):
        patch_llava(model)


def test_calls_that_would_skip_dyntok_raise():
    model = tiny.tiny_model()
    patch_llava(model, threshold=0.7)
    ids = torch.tensor([tiny.prompt()])
    clip = tiny.video(3)
    with pytest.raises(ValueError, match=r"modalities=\['video'\]"):
        model(input_ids=ids, images=[clip], image_sizes=SIZES)
    with pytest.raises(ValueError, match=r"modalities=\['video'\]"):
        model.generate(ids, images=[clip], image_sizes=SIZES, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"modalities=\['video'\]"):
        model(input_ids=ids, images=[clip], modalities=None, image_sizes=SIZES)
    with pytest.raises(ValueError, match="one entry per item"):
        logits(model, ids, [clip, clip], ["video"])
    with pytest.raises(ValueError, match=r"images=\[video\]"):
        model(input_ids=ids, images=clip, modalities=["video"], image_sizes=SIZES)
    model.config.mm_newline_position = "one_token"  # the checkpoint's own layout may change; DynTok still runs
    logits(model, ids, [clip], ["video"])
    assert len(model.dyntok.last_stats) == 1 and model.config.mm_newline_position == "one_token"


def test_two_videos_in_one_sample_are_compressed_in_order():
    model = tiny.tiny_model()
    patch_llava(model, threshold=0.7)
    first, second = tiny.video(2, seed=9), tiny.video(3, seed=10)
    ids = torch.tensor([[5, tiny.IMAGE_TOKEN, 6, tiny.IMAGE_TOKEN, 7]])
    both, _, _ = tiny.embeds(model, ids, [first, second], ["video", "video"])
    counts = [s.tokens_out for s in model.dyntok.last_stats]
    assert [s.frames for s in model.dyntok.last_stats] == [2, 3]
    alone = [tiny.embeds(model, torch.tensor([tiny.prompt((5,), (6,))]), [v], ["video"])[0][0, 1:-1]
             for v in (first, second)]
    assert torch.equal(both[0, 1:1 + counts[0]], alone[0])
    assert torch.equal(both[0, 2 + counts[0]:2 + counts[0] + counts[1]], alone[1])


def test_peft_wrapped_model_is_patched_and_restored():
    peft = pytest.importorskip("peft")
    model = tiny.tiny_model()
    ids, images, modalities = one_video()
    stock = logits(model, ids, images, modalities)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    patch_llava(wrapped, threshold=0.6)
    assert wrapped.dyntok is model.dyntok
    assert logits(wrapped, ids, images, modalities).shape[1] == 4 + model.dyntok.last_stats[0].tokens_out
    unpatch_llava(wrapped)
    assert torch.equal(logits(wrapped, ids, images, modalities), stock)  # LoRA B starts at zero


def test_bfloat16_model_keeps_its_dtype():
    model = tiny.tiny_model().to(torch.bfloat16)
    patch_llava(model, threshold=0.7)
    ids, images, modalities = one_video()
    embeds, _, _ = tiny.embeds(model, ids, [images[0].to(torch.bfloat16)], modalities)
    assert embeds.dtype == torch.bfloat16 and torch.isfinite(embeds.float()).all()
    assert 3 * 4 * 2 <= model.dyntok.last_stats[0].tokens_out <= 3 * 4 * 5


def test_a_deep_copy_is_patched_on_its_own():
    model = tiny.tiny_model()
    patch_llava(model, threshold=0.7)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.get_model().image_newline.fill_(3.0)
    ids, images, modalities = one_video()
    clone_embeds, _, _ = tiny.embeds(clone, ids, images, modalities)
    model_embeds, _, _ = tiny.embeds(model, ids, images, modalities)
    markers = (clone_embeds[0] == 3.0).all(-1)
    assert int(markers.sum()) == 3 * 4  # one per row, read from the clone's own newline
    assert not (model_embeds[0] == 3.0).all(-1).any()
    unpatch_llava(clone)
    assert llava_next.STATE_ATTRIBUTE in model.__dict__


def test_a_config_saved_while_patched_keeps_the_original_layout(tmp_path):
    model = tiny.tiny_model(mm_newline_position="one_token")
    ids, images, modalities = one_video()
    patch_llava(model, threshold=0.5)
    logits(model, ids, images, modalities)
    model.config.save_pretrained(tmp_path)
    reloaded = type(model.config).from_pretrained(tmp_path)
    assert reloaded.mm_newline_position == "one_token" and reloaded.dyntok["threshold"] == 0.5
    fresh = tiny.tiny_model(**{k: v for k, v in reloaded.to_dict().items() if k in ("mm_newline_position", "dyntok")})
    patch_llava(fresh)  # the saved settings
    assert fresh.dyntok.threshold == 0.5
    unpatch_llava(fresh)
    assert fresh.config.mm_newline_position == "one_token"


def test_statistics_are_cleared_by_a_call_without_video_but_kept_through_decoding():
    model = tiny.tiny_model()
    patch_llava(model, threshold=0.7)
    ids, images, modalities = one_video()
    generate(model, ids, images, modalities)
    assert len(model.dyntok.last_stats) == 1  # decode steps (no images, with a cache) keep the prompt's statistics
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert model.dyntok.last_stats == []
