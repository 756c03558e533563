"""With the plugin installed but no DynTok settings, vLLM's LLaVA-OneVision is vLLM's own, bit for bit; settings
that cannot be served fail when the engine starts, with a message that names the fix.

One engine without settings serves the module (CPU, float32, in-process); the failing starts stop in the model's
constructor, before any memory is profiled.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
import vllm_tiny  # noqa: E402

POOLED = vllm_tiny.POOLED


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return vllm_tiny.save_published_layout(tmp_path_factory.mktemp("stock-ckpt"), vllm_tiny.tiny_model())


@pytest.mark.parametrize("settings, message", [
    ({"threshold": 0.7}, "no budget"),
    ({"threshold": 0.7, "target_ratio": 0.5}, '"threshold": null'),
    ({"target_ratio": 0}, r"target_ratio must be in \(0, 1\]"),
    ({"max_tokens": 5}, "max_tokens >= 8"),  # below the floor of a one-frame video (4 rows + 4 row markers)
])
def test_settings_that_cannot_be_served_fail_at_engine_start(checkpoint, settings, message):
    with pytest.raises(Exception, match=message):
        vllm_tiny.start_engine(checkpoint, hf_overrides={"dyntok": settings})


def test_without_settings_the_model_is_vllms_own(checkpoint):
    from vllm.model_executor.models.llava_onevision import LlavaOnevisionForConditionalGeneration as Stock

    llm = vllm_tiny.start_engine(checkpoint)
    try:
        def compare_with_stock(model):
            """Each video's embeddings next to what vLLM's own method makes of the same pixels."""
            model.stock_pairs = []
            original = model._process_video_pixels

            def both(inputs):
                out = original(inputs)
                model.stock_pairs.append((out, Stock._process_video_pixels(model, inputs)))
                return out

            model._process_video_pixels = both
            return type(model).__name__, model.dyntok_video

        (name, compressor), = llm.apply_model(compare_with_stock)
        assert name == "DynTokLlavaOnevisionForConditionalGeneration" and compressor is None  # the plugin is there
        # One frame count: vLLM 0.32's own list path (videos of different lengths in one batch) returns (1, N, D)
        # chunks that its model runner then rejects; without settings that stays vLLM's behaviour.
        counts = (3, 3)
        text = vllm_tiny.prompt("video")
        requests = [{"prompt": text, "multi_modal_data": {"video": vllm_tiny.frames(c, start=i)}}
                    for i, c in enumerate(counts)]
        outs = llm.generate(requests, vllm_tiny.greedy(), use_tqdm=False)
        text_tokens = len(vllm_tiny.build_tokenizer()(text)["input_ids"]) - 1
        assert [len(o.prompt_token_ids) for o in outs] == [text_tokens + c * POOLED * POOLED + 1 for c in counts]
        pairs = llm.apply_model(lambda model: model.stock_pairs)[0]
        assert pairs
        for ours, stock in pairs:
            assert len(ours) == len(stock)
            assert all(torch.equal(a, b) for a, b in zip(ours, stock))
    finally:
        vllm_tiny.stop_engine(llm)
