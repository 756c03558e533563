"""`dyntok inspect / calibrate / generate --model` with tiny random Qwen2.5-VL and Qwen3-VL checkpoints saved to a
temporary folder, on real clips; the tower features the command uses are checked against the stock model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import media
from cli_runner import run
from dyntok_plugin.hf import synthetic_qwen
from dyntok_plugin.cli.encoders import merged_video_features
from dyntok_plugin.hf.qwen_inputs import resized_size, video_pixels
from dyntok_plugin.video import load_video

FRAMES = 4  # two temporal slices
MAX_PIXELS = 4096  # the 480x270 clip becomes 48x80 px: a 12x20 patch grid, 6x10 merged tokens per slice
CITY_GRID = (6, 10)
PROMPT = "what is happening in the video ?"


@pytest.fixture(scope="module", params=synthetic_qwen.KINDS[:2])
def checkpoint(request, tmp_path_factory):
    return synthetic_qwen.save_random_qwen_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=1)


@pytest.fixture(scope="module")
def square_clip(tmp_path_factory):
    """The bundled clip cropped square and re-encoded: another aspect ratio, so another Qwen grid."""
    frames = load_video(media.CITY_CLIP, 12)[:, :, 105:375]
    return media.write_clip(tmp_path_factory.mktemp("square") / "city_square.mp4", np.ascontiguousarray(frames))


def test_resized_size_keeps_the_aspect_within_the_bounds():
    assert resized_size(270, 480, 8, max_pixels=MAX_PIXELS) == (48, 80)
    rows, cols = resized_size(1080, 1920, 28, max_pixels=448 * 448)
    assert rows % 28 == cols % 28 == 0 and rows * cols <= 448 * 448 and abs(cols / rows - 16 / 9) < 0.1
    with pytest.raises(ValueError, match="at least 1x1"):
        resized_size(0, 10, 8)


@pytest.mark.parametrize("kind", synthetic_qwen.KINDS)
def test_features_are_the_models_own_merged_tokens_and_window_means(kind):
    """The merged tokens equal the stock `get_video_features`; each similarity row is the mean of the four tower
    rows the merger turned into that token (matched through the merger itself, whatever order the tower uses)."""
    model = synthetic_qwen.random_qwen_vl(synthetic_qwen.qwen_vl_config(kind), seed=2)
    frames = load_video(media.CITY_CLIP, 3)  # odd: the last frame is repeated, as the processor does
    pixels, grid = video_pixels(frames, model.config.vision_config, max_pixels=MAX_PIXELS)
    assert grid.tolist() == [[2, 12, 20]]
    (features, similarity), = merged_video_features(model, pixels, grid)
    assert features.shape == (2, *CITY_GRID, model.config.vision_config.out_hidden_size)
    with torch.no_grad():
        stock = model.model.get_video_features(pixels, grid)
        tower = model.model.visual(pixels, grid_thw=grid).last_hidden_state
        merged = model.model.visual.merger(tower)
    torch.testing.assert_close(features.flatten(0, 2), torch.cat(stock.pooler_output), rtol=0, atol=0)
    means = tower.reshape(-1, 4, tower.shape[-1]).mean(1)
    order = torch.cdist(features.flatten(0, 2), merged).argmin(1)  # which merger row each token is
    assert sorted(order.tolist()) == list(range(len(merged)))
    torch.testing.assert_close(similarity.flatten(0, 2), means[order], rtol=1e-5, atol=1e-6)


def test_inspect_counts_tokens_on_the_merged_grid_of_each_slice(checkpoint, tmp_path):
    code, stdout, stderr = run(["inspect", media.CITY_CLIP, "--model", checkpoint, "--frames", FRAMES,
                                "--max-pixels", MAX_PIXELS, "--threshold", "1.5", "0.9", "-1.5", "--out", tmp_path])
    assert code == 0, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    slices, (rows, cols) = FRAMES // 2, CITY_GRID
    assert summary["grid"] == [rows, cols] and summary["marker"] == "none"  # the Qwen hosts' default layout
    kept, middle, merged = (r["tokens_out"] for r in summary["results"])
    assert all(r["tokens_in"] == slices * rows * cols for r in summary["results"])
    assert (kept, merged) == (slices * rows * cols, slices * rows)  # nothing merged; one token per row
    assert merged <= middle <= kept
    assert all(len(v) == slices for v in summary["tokens_per_frame"].values())
    assert f"{slices} slices of 2 frames x {rows}x{cols}" in stdout
    assert (tmp_path / "merge_map.png").stat().st_size > 0


def test_calibrate_over_videos_of_different_grids(square_clip, tmp_path_factory, tmp_path):
    checkpoint = synthetic_qwen.save_random_qwen_checkpoint(tmp_path_factory.mktemp("calibrate"), "qwen2_5_vl")
    code, _, stderr = run(["calibrate", media.CITY_CLIP, square_clip, "--model", checkpoint, "--frames", FRAMES,
                           "--max-pixels", MAX_PIXELS, "--target-ratio", "0.5", "--out", tmp_path])
    assert code == 0, stderr
    record = json.loads((tmp_path / "calibration.json").read_text())
    square = resized_size(270, 270, 8, max_pixels=MAX_PIXELS)
    grids = [CITY_GRID, (square[0] // 8, square[1] // 8)]
    assert grids[0] != grids[1]
    assert record["tokens_in"] == sum(FRAMES // 2 * h * w for h, w in grids)
    assert record["marker"] == "none" and record["ratio"] <= 0.5
    assert record["tokens_out"] == round(record["ratio"] * record["tokens_in"])


def _generate(checkpoint, *extra) -> tuple:
    code, stdout, stderr = run(["generate", "--model", checkpoint, "--video", media.CITY_CLIP, "--prompt", PROMPT,
                                "--frames", FRAMES, "--max-pixels", MAX_PIXELS, "--max-new-tokens", 5, *extra])
    assert code == 0, stderr
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["frames"])
    frames, tokens_in, tokens_out = (int(v) for v in lines[header + 1].split()[:3])
    return "\n".join(lines[: header - 1]).strip(), frames, tokens_in, tokens_out


def _stock_answer(checkpoint) -> str:
    """Greedy answer of the unpatched model on the same hand-built inputs."""
    from transformers import AutoConfig, AutoTokenizer

    from dyntok_plugin.hf.checkpoints import video_model_class
    from dyntok_plugin.hf.qwen_inputs import default_normalisation, video_prompt_inputs
    from dyntok_plugin.video import probe_video, sample_indices

    kind = AutoConfig.from_pretrained(checkpoint).model_type
    model = video_model_class(kind).from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    info = probe_video(media.CITY_CLIP)
    seconds = (sample_indices(info.frames, FRAMES) / info.fps).tolist()
    inputs = video_prompt_inputs(model.config, tokenizer, text, load_video(media.CITY_CLIP, FRAMES), seconds,
                                 *default_normalisation(kind), max_pixels=MAX_PIXELS)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_generate_with_a_qwen_checkpoint(checkpoint):
    slices, (rows, cols) = FRAMES // 2, CITY_GRID
    answer, frames, tokens_in, tokens_out = _generate(checkpoint, "--threshold", "0.9")
    assert answer and tokens_in == slices * rows * cols
    assert slices * rows <= tokens_out <= tokens_in
    same, _, _, kept = _generate(checkpoint, "--threshold", "1.5")
    assert kept == tokens_in  # marker "none", nothing merged: the stock sequence
    assert same == _stock_answer(checkpoint)
