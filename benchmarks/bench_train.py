"""Training throughput of LLaVA-OneVision with and without DynTok: steps per second and tokens per step.

    python benchmarks/bench_train.py                  # GPU: llava-onevision-qwen2-0.5b-ov sizes, F = 16, 32, 64
    python benchmarks/bench_train.py --size tiny      # CPU smoke test: tiny random model, F = 2 and 4

Self-contained: `LlavaOnevisionForConditionalGeneration` built from a configuration in this file with random
weights on the device (nothing is downloaded). Each step is one full training step of batch `--batch` (forward with
labels, backward, AdamW step) on a prompt of text, one video run of `F*h*w + 1` placeholders (what the processor
makes), text, and a 32-token answer that carries the labels. Frames are the bundled real clip
(`assets/city_cc0.mp4`, decoded with PyAV, resized to the tower's input and normalised) or, with
`--pixels random`, smooth random images.

Variants: the stock model; DynTok as a no-op (`threshold=1.0, marker="video"`: the wrapper's overhead alone);
DynTok with fixed budgets (`target_ratio` 0.444, the paper's 44.4 %, and 0.25; row markers). With random weights
the similarities mean nothing, so a budget fixes the length instead of a threshold; `--train-range LO HI` adds a
variant with per-video threshold draws, whose ratio on random weights is arbitrary (reported as measured).

Measured per variant and frame count: `tokens_per_step` (the language model's sequence length times the batch,
read from the language model's input), `video_tokens` (per video, markers included), median `s_per_step` over
`--steps` timed steps after `--warmup` steps, after one untimed warm-up run of the stock model (CUDA events on a GPU, wall clock on the CPU), `steps_per_s`,
`speedup` against the stock model, and on a GPU the peak allocated memory. Precision: float32 weights with bf16
autocast on a GPU (`--precision fp32` to turn it off), float32 on the CPU. Results go to
`benchmarks/results/train_<device>.json` under the size's name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import statistics
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from common import (
    LLAVA_OV_05B, RESULTS_DIR, device_kind, device_name, print_table, timed_runs, write_results,
)
from dyntok_plugin import patch_llava
from dyntok_plugin.hf.common import pooled_grid
from dyntok_plugin.train import set_trainable

CLIP = Path(__file__).resolve().parents[1] / "assets" / "city_cc0.mp4"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, as the LLaVA-OV processor uses
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT_TOKENS = 16
ANSWER_TOKENS = 32

SIZES = {
    "0.5b": dict(**LLAVA_OV_05B, frames=[16, 32, 64]),
    "tiny": dict(
        vision=dict(model_type="siglip_vision_model", image_size=64, patch_size=8, hidden_size=64,
                    intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vision_use_head=False),
        text=dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096),
        frames=[2, 4],
    ),
}
IMAGE_ID, VIDEO_ID, PAD_ID, FIRST_TEXT_ID = 1, 2, 0, 10


def build_model(size: str, device: torch.device, seed: int = 0):
    """A random LLaVA-OneVision model of `size` on `device` (float32 weights, SDPA attention), in training mode."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    spec = SIZES[size]
    config = LlavaOnevisionConfig(
        vision_config=spec["vision"], text_config=spec["text"], image_token_index=IMAGE_ID,
        video_token_index=VIDEO_ID, vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[spec["vision"]["image_size"]] * 2], pad_token_id=PAD_ID,
        tie_word_embeddings=spec["text"].get("tie_word_embeddings", False),
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration(config)
    return model.train()


def video_pixels(source: str, frames: int, image_size: int) -> torch.Tensor:
    """`(frames, 3, S, S)` normalised pixels: the bundled clip (resized) or smooth random images."""
    if source == "random":
        gen = torch.Generator().manual_seed(frames)
        coarse = torch.randn(frames, 3, max(1, image_size // 16), max(1, image_size // 16), generator=gen)
        return torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear").clamp(-2, 2)
    try:
        from dyntok_plugin.video import load_video
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("--pixels clip needs PyAV (pip install av); or pass --pixels random") from err
    array = torch.from_numpy(load_video(CLIP, frames)).permute(0, 3, 1, 2).float() / 255.0
    resized = torch.nn.functional.interpolate(array, size=(image_size, image_size), mode="bicubic", antialias=True)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (resized.clamp(0, 1) - mean) / std


def make_batch(model, pixels: torch.Tensor, batch: int, device: torch.device) -> dict:
    """Ids `[text, video placeholders, text, answer]` with labels on the answer only, for `batch` copies."""
    config = model.config
    grid = config.vision_config.image_size // config.vision_config.patch_size
    placeholders = pixels.shape[0] * pooled_grid(grid) ** 2 + 1
    gen = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size

    def text(n: int) -> torch.Tensor:
        return torch.randint(FIRST_TEXT_ID, vocab, (n,), generator=gen)

    prompt = torch.cat([text(PROMPT_TOKENS // 2), torch.full((placeholders,), VIDEO_ID), text(PROMPT_TOKENS // 2)])
    answer = text(ANSWER_TOKENS)
    ids = torch.cat([prompt, answer]).repeat(batch, 1)
    labels = torch.cat([torch.full_like(prompt, -100), answer]).repeat(batch, 1)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
        "pixel_values_videos": pixels.unsqueeze(0).repeat(batch, 1, 1, 1, 1).to(device),
    }


def count_llm_tokens(model) -> tuple:
    """A forward pre-hook on the language model recording the sequence length it receives; returns (seen, handle)."""
    seen: list = []

    def hook(_module, args, kwargs):
        given = kwargs.get("inputs_embeds")
        given = kwargs.get("input_ids") if given is None else given
        seen.append(int(given.shape[0] * given.shape[1]))

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def variants(train_range: Optional[list]) -> list:
    """(name, patch_llava settings or None for the stock model)."""
    rows = [
        ("stock", None),
        ("dyntok no-op", dict(threshold=1.0, marker="video")),
        ("dyntok ratio 0.444", dict(threshold=None, target_ratio=0.444, marker="row")),
        ("dyntok ratio 0.25", dict(threshold=None, target_ratio=0.25, marker="row")),
    ]
    if train_range:
        rows.append((f"dyntok train U({train_range[0]}, {train_range[1]})",
                     dict(threshold=0.7, train_threshold_range=tuple(train_range), marker="row", seed=0)))
    return rows


def bench_one(args, device: torch.device, frames: int, name: str, settings: Optional[dict]) -> dict:
    model = build_model(args.size, device, seed=args.seed)
    set_trainable(model, args.train)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings is not None:
        patch_llava(model, **settings)
    pixels = video_pixels(args.pixels, frames, model.config.vision_config.image_size)
    batch = make_batch(model, pixels, args.batch, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    seen, handle = count_llm_tokens(model)

    def step() -> None:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    row = {"size": args.size, "frames": frames, "variant": name, "batch": args.batch}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        times = timed_runs(step, device, args.warmup, args.steps)
    except torch.OutOfMemoryError:
        row.update(status="oom")
        return row
    finally:
        handle.remove()
    seconds = statistics.median(times)
    stats = getattr(getattr(model, "dyntok", None), "last_stats", None) or []
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    row.update(
        status="ok",
        tokens_per_step=seen[-1],
        video_tokens=stats[0].tokens_out if stats else frames * pooled_grid(grid) ** 2 + 1,
        s_per_step=seconds,
        steps_per_s=1.0 / seconds,
        step_times=times,
    )
    if device.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return row


def release(device: torch.device) -> None:
    """Free the last run's model and optimizer before the next one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: 0.5b on a GPU, tiny on CPU")
    parser.add_argument("--frames", type=int, nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--train", nargs="+", default=["projector", "marker", "llm"],
                        choices=["projector", "marker", "llm", "vision"])
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--pixels", choices=["clip", "random"], default="clip")
    parser.add_argument("--train-range", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results/train_<device>.json)")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.size = args.size or ("0.5b" if device.type == "cuda" else "tiny")
    args.frames = args.frames or SIZES[args.size]["frames"]
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"

    bench_one(args, device, args.frames[0], "warm-up", None)  # first-run costs (allocator, kernels) hit no variant
    release(device)
    rows = []
    todo = [(frames, name, settings) for frames in args.frames for name, settings in variants(args.train_range)]
    for frames, name, settings in tqdm(todo, desc="train steps", unit="run"):
        rows.append(bench_one(args, device, frames, name, settings))
        release(device)
    for row in rows:
        stock = next(r for r in rows if r["frames"] == row["frames"] and r["variant"] == "stock")
        if row["status"] == "ok" and stock["status"] == "ok":
            row["speedup"] = row["steps_per_s"] / stock["steps_per_s"]
            row["token_fraction"] = row["tokens_per_step"] / stock["tokens_per_step"]

    columns = ["frames", "variant", "status", "tokens_per_step", "video_tokens", "s_per_step", "steps_per_s",
               "speedup"]
    if device.type == "cuda":
        columns.append("peak_mem_gb")
    print(f"\n{device_name(device)}; size {args.size}; batch {args.batch}; train {','.join(args.train)}; "
          f"{args.precision}; checkpointing {args.checkpointing}; pixels {args.pixels}")
    print_table([{col: row.get(col, "-") for col in columns} for row in rows], columns)

    import transformers

    path = args.out or RESULTS_DIR / f"train_{device_kind(device)}.json"
    payload = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "note": "Random weights: DynTok runs with fixed budgets (target_ratio) so token counts are meaningful.",
        "rows": rows,
    }
    print(f"wrote {write_results(path, args.size, payload)}")


if __name__ == "__main__":
    main()
