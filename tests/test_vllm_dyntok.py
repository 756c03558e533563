"""vLLM with DynTok settings in the checkpoint's config equals the patched Hugging Face model: the video embeddings
vLLM feeds the language model, the prompt token counts and the greedy outputs, for one video, a batch of requests
with different frame counts, two videos in one prompt, and an image beside a video.

One engine serves the whole module (CPU, float32, in-process). The checkpoint is saved from the patched HF model,
so its config carries the `dyntok` entry the patch mirrors there (budget mode: threshold None, target_ratio).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
import vllm_tiny  # noqa: E402
from transformers import AutoProcessor  # noqa: E402

from dyntok_plugin import patch_llava  # noqa: E402
from dyntok_plugin.core import DynTokConfig, budget_tokens  # noqa: E402

SETTINGS = {"threshold": None, "target_ratio": 0.6}
POOLED = vllm_tiny.POOLED


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(engine, patched HF model, processor), the engine loaded from a checkpoint saved by the patched model."""
    model = vllm_tiny.tiny_model()
    patch_llava(model, **SETTINGS)
    assert model.config.dyntok["target_ratio"] == SETTINGS["target_ratio"]  # the patch mirrors its settings there
    folder = vllm_tiny.save_published_layout(tmp_path_factory.mktemp("dyntok-ckpt"), model)
    llm = vllm_tiny.start_engine(folder)
    vllm_tiny.record_video_embeddings(llm)
    yield llm, model, AutoProcessor.from_pretrained(folder)
    vllm_tiny.stop_engine(llm)


def budget(frames: int) -> int:
    return budget_tokens(DynTokConfig(**SETTINGS), frames, POOLED, POOLED)


def compare(setup, text: str, videos: list, images: list | None = None, vllm_out=None):
    """Runs the patched HF model on the same request and checks vLLM's result against it."""
    llm, model, processor = setup
    inputs = vllm_tiny.hf_inputs(processor, text, videos, images)
    new_tokens, embeds, length = vllm_tiny.hf_generate(model, inputs)
    lengths = [budget(len(video)) for video in videos]
    assert len(vllm_out.prompt_token_ids) == length
    assert list(vllm_out.outputs[0].token_ids) == new_tokens
    return [embeds[rows] for rows in vllm_tiny.video_rows(inputs, lengths)], lengths


def request(text: str, videos: list, images: list | None = None) -> dict:
    data = {"video": videos if len(videos) > 1 else videos[0]} if videos else {}
    if images:
        data["image"] = images[0]
    return {"prompt": text, "multi_modal_data": data}


def test_one_video_equals_the_patched_hf_model(setup):
    llm = setup[0]
    video = vllm_tiny.frames(3)
    text = vllm_tiny.prompt("video")
    out = llm.generate([request(text, [video])], vllm_tiny.greedy(), use_tqdm=False)[0]
    expected, lengths = compare(setup, text, [video], vllm_out=out)
    recorded = vllm_tiny.take_video_embeddings(llm)
    assert [r.shape[0] for r in recorded] == lengths == [budget(3)]
    assert budget(3) < 3 * POOLED * POOLED + 1  # DynTok did shorten the video
    torch.testing.assert_close(recorded[0], expected[0], rtol=0, atol=1e-4)


def test_a_batch_of_requests_with_different_frame_counts(setup):
    llm = setup[0]
    counts = (2, 5, 8)
    videos = [vllm_tiny.frames(count, start=index) for index, count in enumerate(counts)]
    text = vllm_tiny.prompt("video")
    outs = llm.generate([request(text, [video]) for video in videos], vllm_tiny.greedy(), use_tqdm=False)
    recorded = vllm_tiny.take_video_embeddings(llm)
    assert sorted(r.shape[0] for r in recorded) == sorted(budget(c) for c in counts)
    by_length = {r.shape[0]: r for r in recorded}  # the engine may encode the videos in any order
    for video, out in zip(videos, outs):
        expected, lengths = compare(setup, text, [video], vllm_out=out)
        torch.testing.assert_close(by_length[lengths[0]], expected[0], rtol=0, atol=1e-4)


def test_two_videos_in_one_prompt(setup):
    llm = setup[0]
    videos = [vllm_tiny.frames(4), vllm_tiny.frames(2, start=7)]
    text = vllm_tiny.prompt("video", "video")
    out = llm.generate([request(text, videos)], vllm_tiny.greedy(), use_tqdm=False)[0]
    expected, lengths = compare(setup, text, videos, vllm_out=out)
    recorded = vllm_tiny.take_video_embeddings(llm)
    assert [r.shape[0] for r in recorded] == lengths
    for got, want in zip(recorded, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_an_image_beside_a_video_is_untouched(setup):
    llm = setup[0]
    video = vllm_tiny.frames(3, start=2)
    image = vllm_tiny.frames(1, start=40)[0]
    text = vllm_tiny.prompt("image", "video")
    out = llm.generate([request(text, [video], [image])], vllm_tiny.greedy(), use_tqdm=False)[0]
    expected, _ = compare(setup, text, [video], [image], vllm_out=out)
    recorded = vllm_tiny.take_video_embeddings(llm)
    torch.testing.assert_close(recorded[0], expected[0], rtol=0, atol=1e-4)
    image_only = llm.generate([request(vllm_tiny.prompt("image"), [], [image])], vllm_tiny.greedy(),
                              use_tqdm=False)[0]
    _, model, processor = setup
    stock = processor(text=vllm_tiny.prompt("image"), images=[image], return_tensors="pt")["input_ids"]
    assert len(image_only.prompt_token_ids) == stock.shape[1]  # the image keeps every one of its tokens
    assert vllm_tiny.take_video_embeddings(llm) == []
