"""Edges of the HF patch (issue 18): statistics per model, assigned settings, settings types, torch.compile,
checkpoint settings and input checks."""

import dataclasses
import json

import hf_tiny as tiny
import numpy as np
import pytest
import torch

from dyntok_plugin import DynTokConfig, is_patched, patch_llava, unpatch_llava
from dyntok_plugin.api import unwrap_model

FRAMES = 2


def _inputs(side="right"):
    samples = [
        tiny.sample_ids(tiny.text_ids(4, seed=1), ("video", FRAMES), tiny.text_ids(3, seed=2)),
        tiny.sample_ids(tiny.text_ids(2, seed=3), ("video", FRAMES), tiny.text_ids(5, seed=4)),
    ]
    batch = tiny.pad_batch(samples, side=side)
    batch["pixel_values_videos"] = tiny.random_videos(2, FRAMES, seed=5)
    return batch


def _text_only():
    return tiny.pad_batch([tiny.text_ids(5, seed=6)])


def test_statistics_belong_to_the_model_and_a_call_without_video_clears_them():
    shared = DynTokConfig(threshold=0.7)
    first, second = tiny.build_tiny_llava_onevision(), tiny.build_tiny_llava_onevision(seed=1)
    patch_llava(first, config=shared)
    with pytest.raises(ValueError, match="already live on another model"):
        patch_llava(second, config=shared)
    assert not is_patched(second)
    patch_llava(second, config=dataclasses.replace(shared))
    first(**_inputs())
    assert len(first.dyntok.last_stats) == 2
    second(**_text_only())
    assert second.dyntok.last_stats == [] and len(first.dyntok.last_stats) == 2
    first.generate(**_inputs(side="left"), max_new_tokens=3, do_sample=False)
    assert len(first.dyntok.last_stats) == 2  # the decode steps (no video) keep the prompt's statistics
    first(**_text_only())
    assert first.dyntok.last_stats == []
    first(**_inputs())
    first.generate(**_text_only(), max_new_tokens=2, do_sample=False)
    assert first.dyntok.last_stats == []
    unpatch_llava(first)
    patch_llava(second, config=shared)  # free again once its model is unpatched


def test_an_assigned_config_takes_effect_in_the_compressor_and_the_saved_config(tmp_path):
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    model.dyntok = DynTokConfig(threshold=-1.5, marker="frame")
    model(**_inputs())
    assert [s.tokens_out for s in model.dyntok.last_stats] == [FRAMES * tiny.POOLED + FRAMES] * 2
    assert model.config.dyntok["marker"] == "frame" and model.config.dyntok["threshold"] == -1.5
    model.dyntok.threshold = 0.25  # the adopted config is the live one: edits reach model.config
    assert model.config.dyntok["threshold"] == 0.25
    model.dyntok = DynTokConfig(threshold=0.5, marker="video")  # saved at once, without a call in between
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["dyntok"]
    assert (saved["marker"], saved["threshold"]) == ("video", 0.5) and model.config.dyntok["marker"] == "video"
    unpatch_llava(model)
    assert "save_pretrained" not in model.__dict__ and not hasattr(model.config, "dyntok")


def test_assigning_none_is_refused_at_the_next_call_and_unpatch_still_restores():
    model = tiny.build_tiny_llava_onevision()
    batch = _inputs()
    stock = model(**batch).logits
    patch_llava(model, threshold=0.7)
    model.dyntok = None
    with pytest.raises(TypeError, match="unpatch_llava"):
        model(**batch)
    unpatch_llava(model)
    assert not is_patched(model) and "forward" not in model.__dict__
    assert torch.equal(model(**batch).logits, stock)
    patch_llava(model, threshold=0.7)
    model.dyntok = None
    patch_llava(model, threshold=0.5)  # re-patching also works
    assert model.dyntok.threshold == 0.5
    model(**batch)
    unpatch_llava(model)
    assert not hasattr(model.config, "dyntok")


def test_numpy_settings_become_python_numbers():
    cfg = DynTokConfig(
        threshold=np.float32(0.5), train_threshold_range=np.array([0.25, 0.75]), max_tokens=np.int64(40),
        seed=np.int64(3),
    )
    assert cfg.to_dict() == {
        "threshold": 0.5, "train_threshold_range": [0.25, 0.75], "similarity": "vision", "marker": "row",
        "max_tokens": 40, "target_ratio": None, "seed": 3, "pad_to_multiple_of": None,
    }
    assert type(cfg.threshold) is float and type(cfg.max_tokens) is int and type(cfg.seed) is int
    cfg.update(max_tokens=None, target_ratio=np.float64(0.5))
    cfg.threshold = np.array(0.25)
    assert type(cfg.target_ratio) is float and type(cfg.threshold) is float
    json.dumps(cfg.to_dict())
    with pytest.raises(ValueError, match="threshold"):
        DynTokConfig(threshold=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="max_tokens"):
        DynTokConfig(max_tokens=np.float64(40.5))


def test_a_torch_compiled_model_is_unwrapped():
    model = tiny.build_tiny_llava_onevision()
    compiled = torch.compile(model)
    assert unwrap_model(compiled) is model
    assert patch_llava(compiled, threshold=0.7) is compiled
    assert is_patched(model) and compiled.dyntok is model.dyntok
    batch = _inputs(side="left")
    out = compiled.generate(**batch, max_new_tokens=2, do_sample=False)
    assert len(model.dyntok.last_stats) == 2 and out.shape[1] == batch["input_ids"].shape[1] + 2
    unpatch_llava(compiled)
    assert not is_patched(model)


def test_unknown_saved_settings_name_the_checkpoint():
    model = tiny.build_tiny_llava_onevision()
    model.config.dyntok = {"threshold": 0.5, "setting_from_the_future": 1}
    with pytest.raises(ValueError, match="checkpoint") as error:
        patch_llava(model)
    assert "setting_from_the_future" in str(error.value) and "patch_llava(model, threshold=" in str(error.value)
    patch_llava(model, threshold=0.5)  # explicit settings win


@pytest.mark.parametrize("problem", ["short_mask", "long_mask", "short_labels", "1d_labels", "1d_ids"])
def test_inputs_of_the_wrong_shape_are_named(problem):
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    batch = _inputs()
    ids = batch["input_ids"]
    labels = ids.clone()
    if problem == "short_mask":
        batch["attention_mask"] = batch["attention_mask"][:, 1:]
    elif problem == "long_mask":
        batch["attention_mask"] = torch.cat([batch["attention_mask"], batch["attention_mask"][:, :2]], 1)
    elif problem == "short_labels":
        batch["labels"] = labels[:, :-3]
    elif problem == "1d_labels":
        batch["labels"] = labels[0]
    else:
        batch = {"input_ids": ids[0], "pixel_values_videos": batch["pixel_values_videos"][:1]}
    name = {"short_mask": "attention_mask", "long_mask": "attention_mask", "1d_ids": "input_ids"}.get(problem, "labels")
    with pytest.raises(ValueError, match=name) as error:
        model(**batch)
    assert ("unsqueeze(0)" if problem == "1d_ids" else "must match") in str(error.value)


def test_an_unpadded_batch_ends_each_sample_at_the_last_position_and_returns_its_mask():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    samples = [
        tiny.sample_ids(tiny.text_ids(3, seed=s), ("video", FRAMES), tiny.text_ids(4, seed=s + 1)) for s in (1, 3)
    ]
    videos = tiny.random_videos(2, FRAMES, seed=5)
    alone, lengths = [], []
    for i, sample in enumerate(samples):
        alone.append(model(**tiny.pad_batch([sample]), pixel_values_videos=videos[i : i + 1]).logits[0, -1])
        lengths.append(len(sample) - tiny.video_tokens(FRAMES) + model.dyntok.last_stats[0].tokens_out)
    assert lengths[0] != lengths[1]  # equal prompts, different DynTok lengths
    for mask in (None, torch.ones(2, len(samples[0]), dtype=torch.long)):
        out = model(input_ids=torch.tensor(samples), attention_mask=mask, pixel_values_videos=videos)
        torch.testing.assert_close(out.logits[:, -1], torch.stack(alone), rtol=1e-5, atol=1e-5)
        assert out.attention_mask.shape == out.logits.shape[:2]
        assert out.attention_mask.sum(1).tolist() == lengths and bool(out.attention_mask[:, -1].all())


def test_generate_lengths_and_the_streamer_count_the_callers_prompt():
    from transformers.generation.streamers import BaseStreamer

    class Recorder(BaseStreamer):
        def __init__(self):
            self.values, self.ended = [], False

        def put(self, value):
            self.values.append(value.clone())

        def end(self):
            self.ended = True

    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    batch = _inputs(side="left")
    width = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_length=width + 3, min_length=width + 3, do_sample=False)
    assert out.shape[1] == width + 3 and model.dyntok.last_stats[0].tokens_out < tiny.video_tokens(FRAMES)
    model.generation_config.max_length = width + 2  # the model's default counts the caller's prompt too
    assert model.generate(**batch, min_length=width + 2, do_sample=False).shape[1] == width + 2
    single = {key: value[:1] for key, value in batch.items()}
    recorder = Recorder()
    out = model.generate(**single, max_new_tokens=3, min_new_tokens=3, do_sample=False, streamer=recorder)
    assert torch.equal(recorder.values[0].reshape(single["input_ids"].shape), single["input_ids"])
    assert torch.cat([v.reshape(-1) for v in recorder.values[1:]]).tolist() == out[0, width:].tolist()
    assert recorder.ended


def test_pickling_a_patched_model_is_refused_naming_save_pretrained_and_deepcopy_still_works():
    import copy
    import io
    import pickle

    model = tiny.build_tiny_llava_onevision()
    batch = _inputs()
    patch_llava(model, threshold=0.7)
    for save in (pickle.dumps, lambda m: torch.save(m, io.BytesIO())):
        with pytest.raises(TypeError, match="save_pretrained"):
            save(model)
    twin = copy.deepcopy(model)
    assert is_patched(twin) and twin.dyntok is not model.dyntok
    torch.testing.assert_close(twin(**batch).logits, model(**batch).logits)
    twin.dyntok.threshold = -1.5
    twin(**batch)
    assert [s.tokens_out for s in twin.dyntok.last_stats] == [2 * FRAMES * tiny.POOLED] * 2
    unpatch_llava(model)
    assert "__reduce_ex__" not in model.__dict__
    restored = pickle.loads(pickle.dumps(model))
    assert not is_patched(restored)
