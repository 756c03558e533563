"""The lmms-eval LLaVA-NeXT backend (`eval_backends.LlavaNextBackend`) on a tiny random `llavaction` model, with an
offline tokenizer and LLaVA-NeXT's own SigLIP image processor: prompt encoding, batched generation, scoring and the
input lengths it reports under DynTok. Needs no lmms-eval; skipped where `llavaction` is not installed."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import hf_tiny
import llava_next_tiny as tiny

tiny.require_host()

from dyntok_plugin import patch_llava  # noqa: E402
from dyntok_plugin.eval.backends import LlavaNextBackend, Prompt, _llava_dtype, llava_package  # noqa: E402

GREEDY = {"max_new_tokens": 4, "temperature": 0}


def clip(frames: int, seed: int) -> np.ndarray:
    """uint8 RGB frames `(frames, 40, 48, 3)`, as lmms-eval decodes them (the processor resizes to 32 px)."""
    return np.random.default_rng(seed).integers(0, 256, (frames, 40, 48, 3), dtype=np.uint8)


@pytest.fixture
def backend() -> LlavaNextBackend:
    siglip = importlib.import_module(f"{tiny.PACKAGE}.model.multimodal_encoder.siglip_encoder")
    size = {"height": tiny.PIXELS, "width": tiny.PIXELS}
    processor = siglip.SigLipImageProcessor(size=(tiny.PIXELS, tiny.PIXELS), crop_size=size)
    return LlavaNextBackend(tiny.tiny_model(), hf_tiny.build_tokenizer(), processor, "qwen_1_5", tiny.PACKAGE)


def test_the_installed_fork_is_found():
    assert llava_package() in ("llava", "llavaction")


def test_encode_gives_one_batch_row_with_one_placeholder_per_visual(backend):
    ids, visuals, modalities, sizes = backend._encode(Prompt("what is in the video ?", videos=[clip(3, 0), clip(2, 1)]))
    assert ids.dim() == 2 and ids.shape[0] == 1
    assert int((ids == tiny.IMAGE_TOKEN).sum()) == 2
    assert [tuple(v.shape) for v in visuals] == [(3, 3, tiny.PIXELS, tiny.PIXELS), (2, 3, tiny.PIXELS, tiny.PIXELS)]
    assert modalities == ["video", "video"] and sizes == [(48, 40), (48, 40)]
    context = backend._encode(Prompt("what is in the video ?", videos=[clip(3, 0)]))[0]
    longer = backend._encode(Prompt("what is in the video ?", [clip(3, 0)], continuation="w50 w51"), True)[0]
    assert longer.shape[1] == context.shape[1] + 2 and torch.equal(longer[:, :context.shape[1]], context)


def test_batched_generation_equals_one_prompt_at_a_time(backend):
    prompts = [Prompt("what is in the video ?", videos=[clip(3, 0)]),
               Prompt("what is happening in the video ? w60 w61 w62", videos=[clip(2, 1)])]
    batched = backend.generate(prompts, GREEDY)
    alone = [backend.generate([p], GREEDY)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert all(0 < g.output_tokens <= GREEDY["max_new_tokens"] for g in batched)
    assert all(g.input_tokens is None for g in batched)  # unknown without DynTok's statistics


def test_loglikelihood_agrees_with_greedy_generation(backend):
    prompt = Prompt("what is in the video ?", videos=[clip(3, 0)])
    answer = backend.generate([prompt], GREEDY)[0]
    words = answer.text.split()
    assert len(words) == GREEDY["max_new_tokens"]  # plain words, so the text tokenises back to the same ids
    greedy_score, greedy = backend.loglikelihood(Prompt(prompt.context, prompt.videos, continuation=answer.text))
    assert greedy and greedy_score < 0
    other = " ".join(["w99" if words[0] != "w99" else "w98", *words[1:]])
    other_score, other_greedy = backend.loglikelihood(Prompt(prompt.context, prompt.videos, continuation=other))
    assert not other_greedy and other_score < greedy_score


def test_loglikelihood_rejects_an_empty_continuation(backend):
    with pytest.raises(ValueError, match="empty continuation"):
        backend.loglikelihood(Prompt("what is in the video ?", videos=[clip(2, 0)], continuation=""))


def test_input_tokens_count_the_video_tokens_dyntok_kept(backend):
    patch_llava(backend.model, threshold=0.5, marker="row")
    prompts = [Prompt("what is in the video ?", videos=[clip(3, 0)]), Prompt("is the video ?", videos=[clip(2, 1)])]
    generations = backend.generate(prompts, GREEDY)
    stats = list(backend.model.dyntok.last_stats)
    for prompt, generation, video in zip(prompts, generations, stats):
        text = backend._encode(prompt)[0].shape[1] - 1  # the placeholder stands for the video's tokens
        assert generation.input_tokens == text + video.tokens_out
    assert [s.tokens_out for s in stats] != [3 * 4 * 5, 2 * 4 * 5]  # 0.5 merged something in the noise clips


@pytest.mark.parametrize("saved, expected", [("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "float16")])
def test_auto_dtype_keeps_the_checkpoints_where_the_builder_can(tmp_path, saved, expected):
    tiny.tiny_config(torch_dtype=saved).save_pretrained(tmp_path)
    assert _llava_dtype(str(tmp_path), "auto") == expected  # float32: the builder's default, float16
    assert _llava_dtype(str(tmp_path), "bfloat16") == "bfloat16"


def test_a_dtype_the_builder_cannot_load_is_refused(tmp_path):
    tiny.tiny_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="float16 or bfloat16 weights only, got dtype='float32'"):
        _llava_dtype(str(tmp_path), "float32")
