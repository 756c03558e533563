"""Training step time of LLaVA-OneVision with DynTok, against the stock model and against an ideal of the same length.

    python benchmarks/bench_train.py                          # GPU: 0.5B sizes, F = 16, 32, 64, batch 1
    python benchmarks/bench_train.py --batch 4 --checkpointing
    python benchmarks/bench_train.py --size 7b --frames 64     # 7B sizes, LoRA on the LLM (bf16 base weights)
    python benchmarks/bench_train.py --profile                 # + where each step's time goes (torch.profiler)
    python benchmarks/bench_train.py --size tiny               # CPU smoke test

Self-contained: random-weight models built from `dyntok_plugin.hf.synthetic` sizes on the device (nothing is
downloaded). A step is forward with labels, backward and an AdamW step on a batch of prompts `[text, one video's
F*h*w + 1 placeholders, text, 32-token answer]` with labels on the answer only. Frames come from the bundled clip
(`assets/city_cc0.mp4`, PyAV) or, with `--pixels random`, smooth random images. With `--batch B > 1` every sample
has its own F frames of the clip (interleaved: frame i of sample b is clip frame i*B + b of F*B sampled), so the
videos and DynTok's lengths differ per sample; the frame count is the same because the stock model only takes a
`(B, F, 3, H, W)` tensor. Batches are right-padded as a collator does.

Variants: `stock`; DynTok `no-op` (`threshold=1.0, marker="video"`: the wrapper alone, same length as stock);
`ratio 0.444` and `ratio 0.25` (fixed budgets: with random weights the similarities mean nothing, so a budget fixes
the length); `train U(0.6, 0.9)` (per-video random thresholds, the paper's training recipe: the length changes
every step).

Each DynTok variant has an **ideal**: the stock model trained on sequences of exactly DynTok's lengths (the same
text, each video's first N pooled projected features in place of its N DynTok tokens, the same labels), step by
step the same lengths as the DynTok run, with the cheapest possible splice (indices computed before timing). It
runs the same vision tower, projector and pooling; what it lacks is the compressor and the splice, so
`fraction_of_ideal = ideal s/step / DynTok s/step` says how much DynTok's own machinery costs. `speedup` is
stock s/step / variant s/step.

`--profile` adds, per row, the split of one step measured with `torch.profiler` over `--profile-steps` steps:
GPU time of the vision tower, projector, language model forward, the rest of the forward (pooling, compressor,
splice: "dyntok"), backward and optimizer; the step's CPU wall time; and the host synchronisations
(`aten::_local_scalar_dense`, `aten::nonzero`, `cudaStreamSynchronize` calls). Results: a table on stdout and
`benchmarks/results/train_<device>.json` (device, versions, settings, every step time). Allocator and
kernel-selection costs of new lengths show as `cuda_malloc_free` calls per step.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from common import RESULTS_DIR, device_kind, device_name, print_table, timed_runs, write_results
from dyntok_plugin import patch_llava
from dyntok_plugin.hf import bilinear_pool, pooled_side, synthetic, vision_features
from dyntok_plugin.hf.parts import find_parts
from dyntok_plugin.train import set_trainable

CLIP = Path(__file__).resolve().parents[1] / "assets" / "city_cc0.mp4"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, as the LLaVA-OV processor uses
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT_TOKENS = 16
ANSWER_TOKENS = 32
TOP_OPS = 20  # kernels listed per profiled variant (GPU ms per step), the largest first
IGNORE = -100

QWEN2_7B_TEXT = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)
SIZES = {
    "tiny": dict(vision=dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128),
                 text=dict(vocab_size=512, hidden_size=64, intermediate_size=128, max_position_embeddings=4096),
                 frames=[2, 4], lora=0),
    "0.5b": dict(**synthetic.LLAVA_OV_05B, frames=[16, 32, 64], lora=0),
    "7b": dict(vision=synthetic.LLAVA_OV_05B["vision"], text=QWEN2_7B_TEXT, frames=[32, 64], lora=16),
}
VARIANTS = {
    "stock": None,
    "no-op": dict(threshold=1.0, marker="video"),
    "ratio 0.444": dict(threshold=None, target_ratio=0.444, marker="row"),
    "ratio 0.25": dict(threshold=None, target_ratio=0.25, marker="row"),
    "train U(0.6, 0.9)": dict(threshold=0.7, train_threshold_range=(0.6, 0.9), marker="row", seed=0),
    # the drawn threshold capped by a per-video budget: bounds the longest sequence a step (or a rank) can draw
    "train U(0.6, 0.9) cap 0.15": dict(threshold=0.7, train_threshold_range=(0.6, 0.9), target_ratio=0.15,
                                      marker="row", seed=0),
}
RANKS = (2, 8)  # data-parallel sizes for the expected slowest rank of a step


# ------------------------------------------------------------------------------------------------ inputs


def build_model(size: str, device: torch.device, seed: int, train_parts: list) -> torch.nn.Module:
    """A random LLaVA-OneVision model of `size` in training mode: full fine-tuning of `train_parts`, or (7b) bf16
    base weights with LoRA on the LLM's linear layers and the projector and marker trained in full."""
    spec = SIZES[size]
    tie = bool(spec["text"].get("tie_word_embeddings", False))
    config = synthetic.llava_onevision_config(spec["vision"], spec["text"], tie_word_embeddings=tie)
    config._attn_implementation = "sdpa"
    model = synthetic.random_llava_onevision(config, seed=seed, device=device).train()
    if not spec["lora"]:
        set_trainable(model, train_parts)
        return model
    from peft import LoraConfig, get_peft_model

    from dyntok_plugin.train import LLM_LINEAR

    model.to(torch.bfloat16)
    lora = LoraConfig(r=spec["lora"], lora_alpha=2 * spec["lora"], target_modules=rf".*language_model.*\.({'|'.join(LLM_LINEAR)})",
                      modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    find_parts(model.get_base_model()).marker.requires_grad_(True)
    return model


def clip_pixels(source: str, frames: int, image_size: int) -> torch.Tensor:
    """`(frames, 3, S, S)` normalised pixels: the bundled clip (resized) or smooth random images."""
    if source == "random":
        gen = torch.Generator().manual_seed(frames)
        coarse = torch.randn(frames, 3, max(1, image_size // 16), max(1, image_size // 16), generator=gen)
        return torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear").clamp(-2, 2)
    from dyntok_plugin.video import load_video

    array = torch.from_numpy(load_video(CLIP, frames)).permute(0, 3, 1, 2).float() / 255.0
    resized = torch.nn.functional.interpolate(array, size=(image_size, image_size), mode="bicubic", antialias=True)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (resized.clamp(0, 1) - mean) / std


def batch_videos(source: str, frames: int, batch: int, image_size: int) -> list:
    """`batch` different videos of `frames` frames each: interleaved frames of the clip, sampled `frames * batch`."""
    pixels = clip_pixels(source, frames * batch, image_size)
    return [pixels[b::batch] for b in range(batch)]


def sample_ids(video_tokens: int, vocab: int, seed: int) -> tuple:
    """`(ids, labels)` of one sample: text, `video_tokens` placeholders, text, answer (labels on the answer)."""
    gen = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(synthetic.FIRST_TEXT_ID, vocab, (n,), generator=gen)  # noqa: E731
    prompt = torch.cat([text(PROMPT_TOKENS // 2), torch.full((video_tokens,), synthetic.VIDEO_ID),
                        text(PROMPT_TOKENS // 2)])
    answer = text(ANSWER_TOKENS)
    return torch.cat([prompt, answer]), torch.cat([torch.full_like(prompt, IGNORE), answer])


def right_pad(rows: list, value: int) -> torch.Tensor:
    width = max(row.shape[0] for row in rows)
    return torch.stack([torch.cat([row, row.new_full((width - row.shape[0],), value)]) for row in rows])


def make_batch(config, videos: list, device: torch.device) -> dict:
    """The stock processor's batch for these videos (one per sample), right-padded."""
    per_frame = pooled_side(config) ** 2
    pairs = [sample_ids(v.shape[0] * per_frame + 1, config.text_config.vocab_size, i) for i, v in enumerate(videos)]
    ids = right_pad([p[0] for p in pairs], synthetic.PAD_ID)
    same = len({v.shape[0] for v in videos}) == 1
    return {
        "input_ids": ids.to(device),
        "attention_mask": right_pad([torch.ones_like(p[0]) for p in pairs], 0).to(device),
        "labels": right_pad([p[1] for p in pairs], IGNORE).to(device),
        "pixel_values_videos": torch.stack(videos).to(device) if same else [v.to(device) for v in videos],
    }


# ------------------------------------------------------------------------------------------------- ideal


@dataclass
class IdealInputs:
    """A batch of DynTok's lengths for the stock model: ids, mask and labels, and where each video's first N pooled
    features go (`rows` into the flattened pooled features, `positions` into the flattened sequence)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor


def ideal_inputs(config, videos: list, lengths: list, device: torch.device) -> IdealInputs:
    """Sequences with `lengths[i]` video tokens for sample i; built once, outside the timed step."""
    per_frame = pooled_side(config) ** 2
    pairs = [sample_ids(n, config.text_config.vocab_size, i) for i, n in enumerate(lengths)]
    ids = right_pad([p[0] for p in pairs], synthetic.PAD_ID)
    rows, positions, offset = [], [], 0
    for sample, (video, n) in enumerate(zip(videos, lengths)):
        rows.append(offset + torch.arange(n).clamp(max=video.shape[0] * per_frame - 1))  # a marker: a repeat
        positions.append(sample * ids.shape[1] + PROMPT_TOKENS // 2 + torch.arange(n))
        offset += video.shape[0] * per_frame
    return IdealInputs(ids.to(device), right_pad([torch.ones_like(p[0]) for p in pairs], 0).to(device),
                       right_pad([p[1] for p in pairs], IGNORE).to(device), torch.cat(rows).to(device),
                       torch.cat(positions).to(device))


def ideal_loss(model, pixels: torch.Tensor, ideal: IdealInputs) -> torch.Tensor:
    """Stock vision tower, projector and pooling; the first N features of each video scattered into the embedded
    text at precomputed positions; the language model on the result."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parts, config = find_parts(base), base.config
    grid = config.vision_config.image_size // config.vision_config.patch_size
    selected = vision_features(parts.vision_tower, pixels, config.vision_feature_layer)
    pooled = bilinear_pool(parts.projector(selected), grid).flatten(0, 2)
    embeds = base.get_input_embeddings()(ideal.input_ids)
    flat = embeds.flatten(0, 1).index_put((ideal.positions,), pooled[ideal.rows].to(embeds.dtype))
    return model(inputs_embeds=flat.view_as(embeds), attention_mask=ideal.attention_mask, labels=ideal.labels).loss


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Run:
    """One variant's model, optimizer and its step function."""

    model: torch.nn.Module
    step: Callable[[], None]
    seen: list  # the language model's tokens (batch x length) at each forward
    lengths: list  # DynTok's tokens per video at each step


def make_run(args, device, videos: list, settings: Optional[dict], ideal_lengths: Optional[list] = None) -> Run:
    """A fresh model (same seed) with the variant's settings, and its training step."""
    model = build_model(args.size, device, args.seed, args.train)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings is not None:
        patch_llava(model, **settings, **({"pad_to_multiple_of": args.pad_to_multiple_of}
                                          if args.pad_to_multiple_of is not None else {}))
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    batch = make_batch(config, videos, device)
    pixels = torch.cat(videos).to(device)
    ideals = [ideal_inputs(config, videos, lengths, device) for lengths in ideal_lengths or []]
    seen, lengths, count = [], [], [0]
    llm = find_parts(model.get_base_model() if hasattr(model, "get_base_model") else model).language_model
    llm.register_forward_pre_hook(lambda _m, a, k: seen.append(_tokens(a, k)), with_kwargs=True)

    def step() -> None:
        with torch.profiler.record_function("forward"), autocast:
            if ideals:
                loss = ideal_loss(model, pixels, ideals[count[0] % len(ideals)])
            else:
                loss = model(**batch).loss
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        count[0] += 1
        stats = getattr(getattr(model, "dyntok", None), "last_stats", None)
        if stats:
            lengths.append([s.tokens_out for s in stats])

    return Run(model, step, seen, lengths)


def _tokens(args: tuple, kwargs: dict) -> int:
    given = kwargs.get("inputs_embeds")
    given = kwargs.get("input_ids") if given is None else given
    given = args[0] if given is None and args else given
    return int(given.shape[0] * given.shape[1])


def profile_split(run: Run, device: torch.device, steps: int) -> dict:
    """Milliseconds per step of GPU time by part, CPU wall time, and host synchronisations per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    hooks = _module_ranges(run.model)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for handle in hooks:
        handle.remove()
    events = {e.key: e for e in prof.key_averages()}
    gpu = lambda key: events[key].device_time_total / 1e3 / steps if key in events else 0.0  # noqa: E731
    kernels = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / steps
    split = {"vision_ms": gpu("vision tower"), "projector_ms": gpu("projector"), "llm_forward_ms": gpu("llm forward")}
    split["dyntok_and_splice_ms"] = gpu("forward") - sum(split.values())
    split["optimizer_ms"] = gpu("optimizer")
    split["backward_ms"] = kernels - gpu("forward") - split["optimizer_ms"]
    split["gpu_total_ms"] = kernels
    count = lambda *keys: sum(events[k].count for k in keys if k in events) / steps  # noqa: E731
    split["host_syncs"] = count("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
                                "cudaDeviceSynchronize")
    split["cuda_malloc_free"] = count("cudaMalloc", "cudaFree")
    ranked = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)
    split["top_ops"] = [(e.key, round(e.self_device_time_total / 1e3 / steps, 2), e.count // steps)
                        for e in ranked[:TOP_OPS] if e.self_device_time_total > 0]
    return split


def _module_ranges(model) -> list:
    """Forward hooks that open and close a profiler range around the vision tower, projector and language model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parts = find_parts(base)
    handles = []
    for name, module in (("vision tower", parts.vision_tower), ("projector", parts.projector),
                         ("llm forward", parts.language_model)):
        opened: list = []

        def enter(_m, _a, name=name, opened=opened):
            opened.append(torch.profiler.record_function(name).__enter__())

        def leave(_m, _a, _o, opened=opened):
            opened.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


# --------------------------------------------------------------------------------------------------- main


def steps_of(args, settings: Optional[dict]) -> int:
    """Timed steps of a variant: `--spread` steps for random thresholds (their spread), else `--steps`."""
    return args.spread if args.spread and settings and settings.get("train_threshold_range") else args.steps


def spread_stats(times: list, lengths: list, warmup: int) -> dict:
    """Percentiles of the step time over the draws, and the expected time of the slowest of k ranks that each draw
    their own thresholds (the step every rank waits for), from the empirical distribution: with the times sorted,
    E[max of k] = sum_i t_(i) ((i/n)^k - ((i-1)/n)^k)."""
    ordered, n = sorted(times), len(times)
    quantile = lambda q: ordered[min(n - 1, int(q * n))]  # noqa: E731
    tokens = sorted(sum(step) for step in lengths[warmup:warmup + n])
    out = {"step_p10": quantile(0.1), "step_p50": quantile(0.5), "step_p90": quantile(0.9), "step_max": ordered[-1],
           "video_tokens_p50": tokens[len(tokens) // 2], "video_tokens_max": tokens[-1]}
    for k in RANKS:
        expected = sum(t * ((i / n) ** k - ((i - 1) / n) ** k) for i, t in enumerate(ordered, start=1))
        out[f"slowest_of_{k}_ranks"] = expected
    return out


def measure(args, device, videos: list, name: str, settings: Optional[dict], ideal_lengths=None,
            steps: Optional[int] = None) -> dict:
    """Median step time (and the profile split with --profile) of one variant or ideal."""
    run = make_run(args, device, videos, settings, ideal_lengths)
    row: dict = {"variant": name}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        times = timed_runs(run.step, device, args.warmup, steps or steps_of(args, settings))
        if args.profile:
            row.update(profile_split(run, device, args.profile_steps))
    except torch.OutOfMemoryError:
        return dict(row, status="oom")
    row.update(status="ok", s_per_step=statistics.median(times), step_times=times,
               tokens_per_step=statistics.median(run.seen), lengths=run.lengths)
    if device.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    del run
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_frames(args, device, frames: int) -> list:
    """Stock, each DynTok variant and its ideal at one frame count."""
    image_size = SIZES[args.size]["vision"].get("image_size", synthetic.TINY_VISION["image_size"])
    videos = batch_videos(args.pixels, frames, args.batch, image_size)
    rows = []
    for name in args.variants:
        row = measure(args, device, videos, name, VARIANTS[name])
        rows.append(row)
        if VARIANTS[name] is None or row["status"] != "ok":
            continue
        steps = steps_of(args, VARIANTS[name])
        if steps != args.steps:
            row.update(spread_stats(row["step_times"], row["lengths"], args.warmup))
        needed = args.warmup + steps + (args.profile_steps if args.profile else 0)
        ideal = measure(args, device, videos, f"ideal of {name}", None, row["lengths"][:needed], steps)
        row["ideal_s_per_step"] = ideal.get("s_per_step")
        row["fraction_of_ideal"] = ideal["s_per_step"] / row["s_per_step"] if ideal["status"] == "ok" else None
        rows.append(ideal)
    stock = next((r for r in rows if r["variant"] == "stock" and r["status"] == "ok"), None)
    for row in rows:
        row.update(frames=frames, batch=args.batch, size=args.size, checkpointing=args.checkpointing)
        if stock and row["status"] == "ok":
            row["speedup"] = stock["s_per_step"] / row["s_per_step"]
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: 0.5b on a GPU, tiny on CPU")
    parser.add_argument("--frames", type=int, nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train", nargs="+", default=["projector", "marker", "llm"],
                        choices=["projector", "marker", "llm", "vision"])
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--pixels", choices=["clip", "random"], default="clip")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None,
                        help="DynTok's pad_to_multiple_of setting (default: the library's default)")
    parser.add_argument("--no-cudnn-attention", action="store_true",
                        help="turn off the cuDNN backend of scaled_dot_product_attention (it plans per new length)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--spread", type=int, default=0, metavar="N",
                        help="time N steps of the random-threshold variants and report the spread of their step "
                        "times over the draws (and the expected slowest of 2 and 8 ranks)")
    parser.add_argument("--profile", action="store_true", help="split each step with torch.profiler")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results/train_<device>.json)")
    parser.add_argument("--section", default=None, help="JSON section (default: size, batch, checkpointing)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.size = args.size or ("0.5b" if device.type == "cuda" else "tiny")
    args.frames = args.frames or SIZES[args.size]["frames"]
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    args.device = device
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    return args


def main() -> None:
    args = parse_args()
    device = args.device
    measure(args, device, [clip_pixels("random", args.frames[0], SIZES[args.size]["vision"].get(
        "image_size", synthetic.TINY_VISION["image_size"]))], "warm-up", None)  # first-run costs hit no variant
    rows = [row for frames in args.frames for row in bench_frames(args, device, frames)]
    columns = ["frames", "variant", "status", "tokens_per_step", "s_per_step", "speedup", "fraction_of_ideal"]
    if args.spread:
        columns += ["step_p10", "step_p50", "step_p90", "step_max", "video_tokens_p50", "video_tokens_max",
                    *(f"slowest_of_{k}_ranks" for k in RANKS)]
    if args.profile:
        columns += ["vision_ms", "llm_forward_ms", "dyntok_and_splice_ms", "backward_ms", "optimizer_ms",
                    "gpu_total_ms", "host_syncs", "cuda_malloc_free"]
    print(f"\n{device_name(device)}; size {args.size}; batch {args.batch}; train {','.join(args.train)}; "
          f"{args.precision}; checkpointing {args.checkpointing}; pixels {args.pixels}")
    print_table([{col: row.get(col, "-") for col in columns} for row in rows], columns)
    for row in rows if args.profile else []:
        print(f"\n{row['frames']} frames, {row['variant']}: GPU ms per step, calls per step")
        for name, ms, calls in row.get("top_ops", []):
            print(f"  {ms:8.2f}  {calls:5d}  {name[:110]}")

    import transformers

    path = args.out or RESULTS_DIR / f"train_{device_kind(device)}.json"
    section = args.section or f"{args.size} batch{args.batch}{' checkpointing' if args.checkpointing else ''}"
    payload = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "settings": {k: str(v) if isinstance(v, (Path, torch.device)) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    print(f"wrote {write_results(path, section, payload)}")


if __name__ == "__main__":
    main()
