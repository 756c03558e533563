"""What the HF LLaVA-OneVision patch accepts: mixed batches, several videos per sample, images with videos,
ragged frame counts; and the clear errors it gives for bad input."""

import hf_tiny as tiny
import pytest
import torch
import transformers
from torch import nn

from dyntok_plugin import UnsupportedModelError, patch_llava

FRAMES = 2
MIXED_OK = tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= (4, 54)


def _last_logits(model, samples, side="right", **pixels):
    """Logits at each sample's last real position, for a batch of `samples`."""
    batch = tiny.pad_batch(samples, side=side)
    out = model(**batch, **pixels)
    if side == "left":
        return out.logits[:, -1]
    # The mask of the sequence that ran: an unpadded batch whose samples DynTok shortens differently is re-padded
    # on the left; a right-padded one stays right-padded.
    mask = out.attention_mask
    last = mask.shape[1] - 1 - mask.flip(-1).long().argmax(-1)
    assert last.tolist() == [n - 1 for n in _spliced_lengths(model, samples, mask.shape[1])] or not bool(mask.all())
    return out.logits[torch.arange(len(last)), last]


def _spliced_lengths(model, samples, width):
    counts = iter(s.tokens_out for s in model.dyntok.last_stats)
    lengths = []
    for sample in samples:
        ids = torch.tensor(sample)
        runs = _video_runs(ids)
        lengths.append(len(sample) - sum(runs) + sum(next(counts) for _ in _split_runs(runs)))
    return lengths


def _video_runs(ids):
    runs, current = [], 0
    for is_video in (ids == tiny.VIDEO_ID).tolist() + [False]:
        if is_video:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def _split_runs(runs):
    """One entry per video: each run here holds whole FRAMES-frame videos."""
    return [None for run in runs for _ in range(run // tiny.video_tokens(FRAMES))]


def test_several_videos_per_sample_and_touching_runs_match_running_alone():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    videos = tiny.random_videos(4, FRAMES, seed=1)
    two = tiny.sample_ids(tiny.text_ids(2, 2), ("video", FRAMES), tiny.text_ids(3, 3), ("video", FRAMES), [9])
    touching = tiny.sample_ids(tiny.text_ids(4, 4), ("video", FRAMES), ("video", FRAMES), [10, 11])
    alone = torch.cat(
        [_last_logits(model, [two], pixel_values_videos=videos[:2]),
         _last_logits(model, [touching], pixel_values_videos=videos[2:])]
    )
    batched = _last_logits(model, [two, touching], pixel_values_videos=videos)
    assert len(model.dyntok.last_stats) == 4
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_text_only_sample_in_a_video_batch_is_untouched():
    model = tiny.build_tiny_llava_onevision()
    text = tiny.text_ids(6, 5)
    stock = model(**tiny.pad_batch([text])).logits[0, -1]
    patch_llava(model, threshold=0.7)
    video = tiny.sample_ids(tiny.text_ids(3, 6), ("video", FRAMES), tiny.text_ids(3, 7))
    batched = _last_logits(model, [video, text], side="left", pixel_values_videos=tiny.random_videos(1, FRAMES))
    torch.testing.assert_close(batched[1], stock, rtol=1e-5, atol=1e-5)


def test_videos_of_different_lengths_as_a_list():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    short, long = tiny.random_videos(1, 2, seed=8)[0], tiny.random_videos(1, 4, seed=9)[0]
    a = tiny.sample_ids([5, 6], ("video", 2), [7])
    b = tiny.sample_ids([8], ("video", 4), [9, 10])
    alone = torch.cat([_last_logits(model, [a], side="left", pixel_values_videos=[short]),
                       _last_logits(model, [b], side="left", pixel_values_videos=[long])])
    batched = _last_logits(model, [a, b], side="left", pixel_values_videos=[short, long])
    assert [s.frames for s in model.dyntok.last_stats] == [2, 4]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not MIXED_OK, reason="images and videos in one call need transformers >= 4.54")
def test_image_sample_and_image_with_video_in_one_batch():
    model = tiny.build_tiny_llava_onevision()
    pixels, sizes = tiny.random_images(2, seed=10)
    image_only = tiny.sample_ids([5], ("image", 1), [6, 7])
    both = tiny.sample_ids([8], ("image", 1), [9], ("video", FRAMES), [10])
    videos = tiny.random_videos(1, FRAMES, seed=11)
    stock_image = model(**tiny.pad_batch([image_only]), pixel_values=pixels[:1], image_sizes=sizes[:1]).logits[0, -1]
    stock_both = model(**tiny.pad_batch([both]), pixel_values=pixels[1:], image_sizes=sizes[1:],
                       pixel_values_videos=videos).logits[0, -1]
    patch_llava(model, threshold=1.0, marker="video")  # identity: must equal stock with images present
    batched = _last_logits(model, [image_only, both], side="left", pixel_values=pixels, image_sizes=sizes,
                           pixel_values_videos=videos)
    torch.testing.assert_close(batched, torch.stack([stock_image, stock_both]), rtol=1e-5, atol=1e-5)
    model.dyntok.update(threshold=0.7, marker="row")
    alone = _last_logits(model, [both], side="left", pixel_values=pixels[1:], image_sizes=sizes[1:],
                         pixel_values_videos=videos)
    batched = _last_logits(model, [image_only, both], side="left", pixel_values=pixels, image_sizes=sizes,
                           pixel_values_videos=videos)
    torch.testing.assert_close(batched[1], alone[0], rtol=1e-5, atol=1e-5)
    out = model.generate(**tiny.pad_batch([image_only, both]), pixel_values=pixels, image_sizes=sizes,
                         pixel_values_videos=videos, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[0] == 2


@pytest.mark.skipif(MIXED_OK, reason="only transformers < 4.54 rejects images with videos")
def test_images_with_videos_rejected_on_old_transformers():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model)
    pixels, sizes = tiny.random_images(1)
    ids = tiny.sample_ids([8], ("image", 1), ("video", FRAMES))
    with pytest.raises(ValueError, match="4.54"):
        model(**tiny.pad_batch([ids]), pixel_values=pixels, image_sizes=sizes,
              pixel_values_videos=tiny.random_videos(1, FRAMES))


def _patched():
    model = tiny.build_tiny_llava_onevision()
    return patch_llava(model, threshold=0.7)


def test_placeholder_run_not_matching_the_frames():
    model = _patched()
    ids = tiny.sample_ids([5], ("video", 3), [6])
    with pytest.raises(ValueError, match=r"run of 49 .*expect \[33\]"):
        model(**tiny.pad_batch([ids]), pixel_values_videos=tiny.random_videos(1, 2))
    short = ids[:1] + ids[2:]  # one placeholder lost, e.g. by truncation
    with pytest.raises(ValueError, match=r"run of 48 .*expect \[49\]"):
        model(**tiny.pad_batch([short]), pixel_values_videos=tiny.random_videos(1, 3))


def test_more_videos_than_placeholder_runs():
    model = _patched()
    ids = tiny.sample_ids([5], ("video", FRAMES), [6])
    with pytest.raises(ValueError, match="holds 2 videos .* only 1"):
        model(**tiny.pad_batch([ids]), pixel_values_videos=tiny.random_videos(2, FRAMES))
    with pytest.raises(ValueError, match=r"run of 33 .* only 1 video"):
        model(**tiny.pad_batch([ids, ids]), pixel_values_videos=tiny.random_videos(1, FRAMES))


def test_frames_of_the_wrong_size_or_rank():
    model = _patched()
    batch = tiny.pad_batch([tiny.sample_ids([5], ("video", FRAMES))])
    with pytest.raises(ValueError, match="Resize the frames to 32x32"):
        model(**batch, pixel_values_videos=torch.zeros(1, FRAMES, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(num_videos, frames, channels, height, width\)"):
        model(**batch, pixel_values_videos=torch.zeros(FRAMES, 3, 32, 32))
    with pytest.raises(TypeError, match="pixel_values_videos must be a tensor"):
        model(**batch, pixel_values_videos="video.mp4")


def test_non_finite_pixels_and_missing_input_ids():
    model = _patched()
    batch = tiny.pad_batch([tiny.sample_ids([5], ("video", FRAMES))])
    videos = tiny.random_videos(1, FRAMES)
    videos[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(**batch, pixel_values_videos=videos)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(ValueError, match="needs input_ids"):
        model(inputs_embeds=embeds, pixel_values_videos=tiny.random_videos(1, FRAMES))


def test_unsupported_models_name_the_supported_classes():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text_model = Qwen2ForCausalLM(Qwen2Config(**tiny.tiny_config().text_config.to_dict()))
    for model in (nn.Linear(2, 2), text_model):
        with pytest.raises(TypeError, match="LlavaOnevisionForConditionalGeneration") as info:
            patch_llava(model)
        assert isinstance(info.value, UnsupportedModelError)
    assert not any("forward" in m.__dict__ for m in (text_model,))
