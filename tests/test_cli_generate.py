"""`dyntok generate` on a tiny random LLaVA-OneVision checkpoint saved to a temporary folder, with a real clip."""

from __future__ import annotations

import json

import pytest
import torch

import hf_tiny
import media
from cli_runner import run
from dyntok_plugin.cli.encoders import SIGLIP_MEAN, SIGLIP_STD, frames_to_pixels
from dyntok_plugin.hf.common import bilinear_pool
from dyntok_plugin.video import load_video

FRAMES = 3
PROMPT = "what is happening in the video ?"
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return hf_tiny.save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3)


def generate(checkpoint, *extra) -> tuple:
    code, stdout, stderr = run(["generate", "--model", checkpoint, "--video", media.CITY_CLIP, "--prompt", PROMPT,
                                "--frames", FRAMES, "--max-new-tokens", NEW_TOKENS, *extra])
    assert code == 0, stderr
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["frames"])
    frames, tokens_in, tokens_out, ratio, threshold = lines[header + 1].split()
    legend = lines[header + 2]  # the line under the one-video table says what each column is
    assert all(f"{column}: " in legend for column in ("frames", "tokens in", "tokens out", "ratio", "threshold"))
    stages = [line.split("] ")[1].split(":")[0] for line in stderr.splitlines() if line.startswith("[")]
    assert stages == ["load model", "decode", "generate"]
    return "\n".join(lines[: header - 1]), int(frames), int(tokens_in), int(tokens_out), float(ratio)


def stock_answer(checkpoint) -> str:
    """Greedy answer of the unpatched model on inputs built the stock way (one placeholder run of F*h*w+1)."""
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, after = text.split("<video>")
    ids = (tokenizer(before, add_special_tokens=False)["input_ids"] + hf_tiny.sample_ids(("video", FRAMES))
           + tokenizer(after, add_special_tokens=False)["input_ids"])
    pixels = frames_to_pixels(load_video(media.CITY_CLIP, FRAMES), hf_tiny.IMAGE_SIZE, SIGLIP_MEAN, SIGLIP_STD)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                pixel_values_videos=pixels[None], max_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def test_generate_prints_an_answer_and_the_statistics(checkpoint):
    answer, frames, tokens_in, tokens_out, ratio = generate(checkpoint, "--threshold", "0.7")
    grid = hf_tiny.POOLED
    assert answer.strip()
    assert (frames, tokens_in) == (FRAMES, FRAMES * grid * grid)
    assert FRAMES * grid * 2 <= tokens_out <= FRAMES * grid * (grid + 1)  # all merged .. nothing merged, row markers
    assert ratio == pytest.approx(tokens_out / tokens_in, abs=1e-4)


def test_generate_without_merging_equals_the_stock_model(checkpoint):
    answer, _, tokens_in, tokens_out, _ = generate(checkpoint, "--threshold", "1.5", "--marker", "video")
    assert tokens_out == tokens_in + 1  # the stock layout: the pooled grid and one newline
    assert answer == stock_answer(checkpoint)


def test_generate_rejects_a_checkpoint_of_another_kind(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "qwen")
    code, stdout, stderr = run(["generate", "--model", tmp_path / "qwen", "--video", media.CITY_CLIP,
                                "--prompt", PROMPT])
    assert code == 2 and stdout == ""
    progress, error = stderr.splitlines()  # the stage it failed in, then the one-line error
    assert progress.startswith("[1/3 ") and "load model" in progress
    assert error.startswith("dyntok generate: error:") and "is a 'qwen2' model; give a LLaVA-OneVision checkpoint" in error


def test_inspect_with_the_checkpoint_counts_what_the_patched_model_uses(checkpoint, tmp_path):
    thresholds = ("0.92", "0.95")
    code, _, stderr = run(["inspect", media.CITY_CLIP, "--model", checkpoint, "--frames", FRAMES,
                           "--threshold", *thresholds, "--out", tmp_path])
    assert code == 0, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["grid"] == [hf_tiny.POOLED, hf_tiny.POOLED]
    inspected = [r["tokens_out"] for r in summary["results"]]
    generated = [generate(checkpoint, "--threshold", t)[3] for t in thresholds]
    assert inspected == generated
    assert inspected[0] < inspected[1]


def test_pooling_matches_the_host_model(checkpoint):
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint).eval()
    owner = model.model if hasattr(getattr(model, "model", None), "apply_pooling") else model
    grid = torch.randn(2, hf_tiny.GRID, hf_tiny.GRID, 5)
    host = owner.apply_pooling(grid.flatten(1, 2)).view(2, hf_tiny.POOLED, hf_tiny.POOLED, 5)
    torch.testing.assert_close(bilinear_pool(grid, hf_tiny.GRID), host, rtol=0, atol=0)
