"""End-to-end LLaVA-OneVision-7B with and without DynTok: time to first token, decode speed, peak memory.

    python benchmarks/bench_end_to_end.py            # GPU: real 7B sizes, random bf16 weights, F = 32..256
    python benchmarks/bench_end_to_end.py --tiny     # CPU smoke test: tiny random model, F = 2 and 4

The model is `LlavaOnevisionForConditionalGeneration` with llava-onevision-qwen2-7b-ov's configuration
(SigLIP-so400m/14 at 384 px, 26 layers, vision_feature_layer -1, "full"; Qwen2-7B) and random weights built on the
device (nothing is downloaded), SDPA attention, batch 1. `input_ids` are built by hand: text, one video run of
`F*196 + 1` placeholders (what the processor makes), text.

Measured for each frame count F (medians of CUDA-event timings after warm-up; wall clock on the CPU):

- ttft_stock_s / ttft_dyntok_s: `generate(max_new_tokens=1)` with `pixel_values_videos` (vision tower, projector,
  pooling, [DynTok compression and splice], prefill, first token).
- ttft_ideal_s: the stock model prefilling a sequence of DynTok's length with no compressor: the stock
  `get_video_features` on all F frames (tower, projector, pooling), then the first N of its rows spliced between
  the same text embeddings (N = DynTok's video token count) and `generate(inputs_embeds=..., max_new_tokens=1)`.
- fraction_of_ideal = ttft_ideal_s / ttft_dyntok_s; ttft_speedup = ttft_stock_s / ttft_dyntok_s.
- decode_tok_s_*: tokens per second between the first and the last of 64 new tokens (min_new_tokens =
  max_new_tokens, so EOS cannot stop early), timed with an event at every logits-processor call.
- peak_mem_*_gb: `torch.cuda.max_memory_allocated` during the 64-token generate (reset before), 1e9 bytes.
- tokens_*: prompt length the language model prefills.
- breakdown_dyntok_s: the DynTok path's pieces timed in isolation (tower, projector + pooling with the host's
  `apply_pooling` and channels-last, compressor, prefill of the compressed sequence, stock vision).
- `--splits F...`: CUDA events at hooks inside one TTFT (tower, compressor, language-model prefill) for stock,
  DynTok and ideal, with the host's pooling and with channels-last pooling swapped in: where the time goes.

DynTok runs with `threshold=None, target_ratio=0.444` (the paper's 44.4 % of tokens): with random weights
similarities carry no meaning, so a threshold's ratio would be arbitrary; the budget fixes the length.
After the table the largest F that fits is searched for each variant (OOM caught and recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib.util
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from common import (
    GB,
    RESULTS_DIR,
    Timing,
    device_kind,
    device_name,
    is_oom,
    print_table,
    release,
    row_or_oom,
    write_results,
)
from dyntok_plugin import DynTokCompressor, DynTokConfig, patch_llava, unpatch_llava
from dyntok_plugin.hf import bilinear_pool, pooled_side
from dyntok_plugin.hf.parts import vision_owner

RANDOM_WEIGHTS_NOTE = (
    "Random weights: similarities are meaningless, so DynTok runs with a fixed budget (threshold=None, "
    "target_ratio) instead of a threshold; ratios from a threshold on this model would mean nothing."
)

# llava-onevision-qwen2-7b-ov (HF conversion): SigLIP-so400m/14-384 with the last layer dropped, Qwen2-7B.
REAL_VISION = dict(
    model_type="siglip_vision_model", image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304,
    num_hidden_layers=26, num_attention_heads=16, layer_norm_eps=1e-6, vision_use_head=False,
)
REAL_TEXT = dict(
    model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, tie_word_embeddings=False,
)
REAL_IDS = dict(image_token_index=151646, video_token_index=151647, first_text_id=0, last_text_id=151642)
# The tests' tiny setup: an 8x8 grid pooled to 4x4.
TINY_VISION = dict(
    model_type="siglip_vision_model", image_size=32, patch_size=4, hidden_size=32, intermediate_size=37,
    num_hidden_layers=2, num_attention_heads=4, vision_use_head=False,
)
TINY_TEXT = dict(
    model_type="qwen2", vocab_size=128, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=0, eos_token_id=4,
)
TINY_IDS = dict(image_token_index=2, video_token_index=3, first_text_id=5, last_text_id=127)
PREFIX_TOKENS, SUFFIX_TOKENS = 14, 18  # chat template around the video and a one-line question


def build_config(tiny: bool, attn: str):
    """The LLaVA-OneVision config (real 7B or tiny) with `attn` as attention implementation."""
    from transformers import LlavaOnevisionConfig

    ids = TINY_IDS if tiny else REAL_IDS
    text = TINY_TEXT if tiny else REAL_TEXT
    config = LlavaOnevisionConfig(
        vision_config=dict(TINY_VISION if tiny else REAL_VISION),
        text_config=dict(text),
        image_token_index=ids["image_token_index"],
        video_token_index=ids["video_token_index"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
        pad_token_id=text["pad_token_id"],
        eos_token_id=text["eos_token_id"],
    )
    config._attn_implementation = attn
    return config


def build_model(config, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Seeded random weights allocated directly on `device` in `dtype` (no hub, no CPU copy)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=config._attn_implementation
        )
    return model.eval()


@dataclass
class Case:
    """One benchmark input: a prompt with one video of `frames` frames."""

    frames: int
    input_ids: Tensor  # (1, L)
    pixels: Tensor  # (1, F, 3, S, S)
    video_start: int
    video_length: int  # F * tokens_per_frame + 1

    @property
    def attention_mask(self) -> Tensor:
        return torch.ones_like(self.input_ids)


def make_case(config, frames: int, dtype: torch.dtype, device: torch.device, text_ids: tuple) -> Case:
    """Hand-built `input_ids` (text, `F*h*w + 1` video placeholders, text) and random normalised pixels."""
    vision = config.vision_config
    pooled = pooled_side(config) ** 2
    video_length = frames * pooled + 1
    gen = torch.Generator().manual_seed(frames)
    low, high = text_ids
    prefix = torch.randint(low, high + 1, (PREFIX_TOKENS,), generator=gen)
    suffix = torch.randint(low, high + 1, (SUFFIX_TOKENS,), generator=gen)
    video = torch.full((video_length,), config.video_token_index)
    input_ids = torch.cat([prefix, video, suffix])[None].to(device)
    size = vision.image_size
    pixels = (torch.rand(1, frames, 3, size, size, generator=gen) * 2 - 1).to(device=device, dtype=dtype)
    return Case(frames, input_ids, pixels, PREFIX_TOKENS, video_length)


class StepTimer:
    """Logits processor that records when each new token's logits are ready (CUDA events or wall clock)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: list = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        return scores

    def tokens_per_second(self) -> float:
        """Decode rate between the first and the last token (prefill excluded)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            seconds = self.marks[0].elapsed_time(self.marks[-1]) / 1e3
        else:
            seconds = self.marks[-1] - self.marks[0]
        return (len(self.marks) - 1) / seconds


def generation_kwargs(config, new_tokens: int, timer: Optional[StepTimer] = None) -> dict:
    from transformers import LogitsProcessorList

    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=config.text_config.pad_token_id,
        eos_token_id=config.text_config.eos_token_id,
    )
    if timer is not None:
        kwargs["logits_processor"] = LogitsProcessorList([timer])
    return kwargs


def video_generate(model: nn.Module, case: Case, new_tokens: int, timer: Optional[StepTimer] = None) -> Tensor:
    """`generate` on the case's prompt and video (stock or patched, whichever `model` is now)."""
    return model.generate(
        input_ids=case.input_ids,
        attention_mask=case.attention_mask,
        pixel_values_videos=case.pixels,
        **generation_kwargs(model.config, new_tokens, timer),
    )


def stock_video_features(model: nn.Module, pixels: Tensor) -> Tensor:
    """The stock `get_video_features` (tower, projector, pooling) as `(rows, D)`; pixels passed positionally."""
    config = model.config
    out = vision_owner(model).get_video_features(
        pixels,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )
    features = getattr(out, "pooler_output", out)
    return features.reshape(-1, features.shape[-1])


def ideal_embeds(model: nn.Module, case: Case, video_tokens: int) -> Tensor:
    """Stock vision on all frames; its first `video_tokens` rows between the prompt's text embeddings."""
    embed = model.get_input_embeddings()
    ids = case.input_ids[0]
    features = stock_video_features(model, case.pixels)[:video_tokens]
    end = case.video_start + case.video_length
    return torch.cat([embed(ids[: case.video_start]), features.to(embed.weight.dtype), embed(ids[end:])])[None]


def prefill_generate(model: nn.Module, embeds: Tensor) -> Tensor:
    """The stock model prefilling `embeds` and producing one token."""
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return model.generate(inputs_embeds=embeds, attention_mask=mask, **generation_kwargs(model.config, 1))


def ideal_generate(model: nn.Module, case: Case, video_tokens: int) -> Tensor:
    """Stock vision on all frames, then the stock model prefilling a sequence of DynTok's length."""
    return prefill_generate(model, ideal_embeds(model, case, video_tokens))


def decode_and_peak(model: nn.Module, case: Case, new_tokens: int, timing: Timing) -> tuple:
    """(median decode tokens/s, peak GB) over `timing.repeats` generates of `new_tokens` new tokens."""
    device = timing.device
    rates = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for _ in range(timing.repeats):
            timer = StepTimer(device)
            out = video_generate(model, case, new_tokens, timer)
            if out.shape[1] != case.input_ids.shape[1] + new_tokens:
                raise RuntimeError(f"generate returned {out.shape[1]} ids, expected prompt + {new_tokens}")
            rates.append(timer.tokens_per_second())
    peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
    return sorted(rates)[len(rates) // 2], peak


def dyntok_tokens(model: nn.Module) -> int:
    """Video tokens DynTok produced in the last call (markers included)."""
    return sum(s.tokens_out for s in model.dyntok.last_stats)


def breakdown(model: nn.Module, case: Case, video_tokens: int, ratio: float, timing: Timing) -> dict:
    """The pieces of the DynTok path timed in isolation (the in-situ attribution is `--splits`).

    Pooling is timed both ways (host `apply_pooling`, channels-last: same numbers), projected and similarity
    features together; `prefill` is `generate(inputs_embeds=..., max_new_tokens=1)` on the compressed sequence,
    already embedded; `ideal_sequential` = stock vision + that prefill, timed apart.
    """
    owner = vision_owner(model)
    frames = case.pixels[0]
    layer = model.config.vision_feature_layer
    fast = channels_last_pooling(owner)
    with torch.inference_mode():
        hidden = owner.vision_tower(frames, output_hidden_states=True).hidden_states[layer]
        projected = fast(owner.multi_modal_projector(hidden))
        side = math.isqrt(projected.shape[1])
        grid = projected.reshape(projected.shape[0], side, side, -1)
        similarity = fast(hidden).reshape(hidden.shape[0], side, side, -1)
        embeds = ideal_embeds(model, case, video_tokens)
    compressor = DynTokCompressor(grid.shape[-1], DynTokConfig(threshold=None, target_ratio=ratio),
                                  marker=owner.image_newline)
    pieces = {
        "vision_tower": timing(lambda: owner.vision_tower(frames, output_hidden_states=True)),
        "projector_pooling_host": timing(lambda: (owner.apply_pooling(owner.multi_modal_projector(hidden)),
                                                  owner.apply_pooling(hidden))),
        "projector_pooling_channels_last": timing(lambda: (fast(owner.multi_modal_projector(hidden)), fast(hidden))),
        "compressor": timing(lambda: compressor.compress_batch(grid, [case.frames], similarity)),
        "prefill": timing(lambda: prefill_generate(model, embeds)),
        "stock_vision": timing(lambda: stock_video_features(model, case.pixels)),
    }
    pieces["ideal_sequential"] = pieces["stock_vision"] + pieces["prefill"]
    return pieces


def profile_dyntok(model: nn.Module, case: Case, args) -> dict:
    """torch.profiler over one warm DynTok TTFT (top CUDA ops), and the vision tower's peak memory when it keeps
    every hidden state (what the patch asks for) versus only the selected layer (a forward hook)."""
    from torch.profiler import ProfilerActivity, profile

    patch_llava(model, threshold=None, target_ratio=args.target_ratio)
    try:
        with torch.inference_mode():
            video_generate(model, case, 1)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                video_generate(model, case, 1)
            torch.cuda.synchronize()
    finally:
        unpatch_llava(model)
    events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:15]
    print(f"\nProfile of one DynTok TTFT at F={case.frames}, top CUDA ops:")
    print_table([{"op": e.key[:60], "calls": e.count, "cuda_ms": e.device_time_total / 1e3,
                  "cpu_ms": e.cpu_time_total / 1e3} for e in events], ["op", "calls", "cuda_ms", "cpu_ms"])
    top = [{"op": e.key, "calls": e.count, "cuda_ms": e.device_time_total / 1e3} for e in events]
    return {"frames": case.frames, "top_cuda_ops": top, **vision_memory(model, case)}


def vision_memory(model: nn.Module, case: Case) -> dict:
    """Peak GB of the tower with `output_hidden_states=True` versus a hook keeping only the last layer's output."""
    owner, device = vision_owner(model), case.pixels.device
    frames = case.pixels[0]
    layers = next(module for name, module in owner.vision_tower.named_modules() if name.endswith("encoder.layers"))
    peaks = {}
    with torch.inference_mode():
        release(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        full = owner.vision_tower(frames, output_hidden_states=True).hidden_states[-1]
        peaks["vision_peak_all_hidden_gb"] = (torch.cuda.max_memory_allocated(device) - base) / GB
        kept = []
        handle = layers[-1].register_forward_hook(lambda m, i, o: kept.append(o[0] if isinstance(o, tuple) else o))
        try:
            release(device)
            torch.cuda.reset_peak_memory_stats(device)
            owner.vision_tower(frames)
            peaks["vision_peak_one_layer_gb"] = (torch.cuda.max_memory_allocated(device) - base) / GB
        finally:
            handle.remove()
        peaks["one_layer_equals_hidden_states_minus_1"] = bool(torch.equal(kept[0], full))
    return peaks


def channels_last_pooling(owner: nn.Module) -> Callable[[Tensor], Tensor]:
    """The host's `apply_pooling` interface (`(frames, g*g, C)` -> `(frames, h*w, C)`) on the patch's
    channels-last bilinear pooling (`dyntok_plugin.hf.bilinear_pool`).

    The host makes the `(frames, C, g, g)` tensor contiguous first, which sends `interpolate` to the NCHW CUDA
    kernel; that kernel parallelises over the 14x14 output positions only and loops over frames and channels.
    Made channels-last contiguous instead (a no-op for projector outputs; a copy for SigLIP hidden states, which
    keep the patch embedding's channel-major strides), PyTorch runs its NHWC kernel: the same numbers.
    """
    vision = owner.config.vision_config
    grid = vision.image_size // vision.patch_size

    def apply_pooling(features: Tensor) -> Tensor:
        return bilinear_pool(features, grid).reshape(features.shape[0], -1, features.shape[-1])

    return apply_pooling


@contextlib.contextmanager
def host_pooling_replaced(model: nn.Module):
    """Within the block, this instance's `apply_pooling` is `channels_last_pooling` (stock and patched alike)."""
    owner = vision_owner(model)
    owner.apply_pooling = channels_last_pooling(owner)
    try:
        yield
    finally:
        del owner.apply_pooling


def pooling_experiment(model: nn.Module, config, args, dtype, device, timing: Timing) -> dict:
    """Is channels-last pooling bit-identical to the host's, how much faster, and what it does to TTFT."""
    owner = vision_owner(model)
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2
    frames = args.profile or max(args.frames)
    kernels = []
    for dim in (config.text_config.hidden_size, vision.hidden_size):
        features = torch.randn(frames, tokens, dim, device=device).to(dtype)
        host, fast = owner.apply_pooling, channels_last_pooling(owner)
        with torch.inference_mode():
            reference, candidate = host(features), fast(features)
        kernels.append({
            "frames": frames, "channels": dim, "bit_identical": bool(torch.equal(reference, candidate)),
            "max_abs_diff": float((reference.float() - candidate.float()).abs().max()),
            "host_s": timing(lambda: host(features)), "channels_last_s": timing(lambda: fast(features)),
        })
        print("pooling kernel:", kernels[-1], flush=True)
    rows = []
    with host_pooling_replaced(model):
        for count in args.frames:
            case = make_case(config, count, dtype, device, text_range(args))
            stock = timing(lambda: video_generate(model, case, 1))
            patch_llava(model, threshold=None, target_ratio=args.target_ratio)
            try:
                dyntok = timing(lambda: video_generate(model, case, 1))
                video_tokens = dyntok_tokens(model)
            finally:
                unpatch_llava(model)
            ideal = timing(lambda: ideal_generate(model, case, video_tokens))
            rows.append({"frames": count, "ttft_stock_s": stock, "ttft_dyntok_s": dyntok, "ttft_ideal_s": ideal,
                         "ttft_speedup": stock / dyntok, "fraction_of_ideal": ideal / dyntok})
            del case
            release(device)
    print("\nWhat-if: host apply_pooling replaced by channels-last pooling (stock, DynTok and ideal alike):")
    print_table(rows, ["frames", "ttft_stock_s", "ttft_dyntok_s", "ttft_ideal_s", "ttft_speedup",
                       "fraction_of_ideal"])
    return {"kernels": kernels, "ttft_with_channels_last_pooling": rows}


class Marks:
    """First-occurrence CUDA events and host clock readings at named points of one call."""

    def __init__(self):
        self.gpu: dict = {}
        self.cpu: dict = {}

    def __call__(self, name: str) -> None:
        if name not in self.gpu:
            self.gpu[name] = torch.cuda.Event(enable_timing=True)
            self.gpu[name].record()
            self.cpu[name] = time.perf_counter()

    def segments(self) -> dict:
        """Milliseconds between consecutive marks, on the GPU timeline and on the host clock."""
        torch.cuda.synchronize()
        names = sorted(self.gpu, key=self.cpu.get)
        return {f"{a}->{b}": (self.gpu[a].elapsed_time(self.gpu[b]), (self.cpu[b] - self.cpu[a]) * 1e3)
                for a, b in zip(names, names[1:])}


@contextlib.contextmanager
def marked(model: nn.Module, marks: Marks):
    """Hooks marking the vision tower and the language model's prefill; `DynTokCompressor.compress_batch` is
    wrapped for the block (benchmark instrumentation only; restored on exit)."""
    owner = vision_owner(model)
    handles = []
    for name, module in (("tower", owner.vision_tower), ("prefill", owner.language_model)):
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: marks(f"{name}_start")))
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: marks(f"{name}_end")))
    original = DynTokCompressor.compress_batch

    @functools.wraps(original)
    def compress_batch(*args, **kwargs):
        marks("compressor_start")
        out = original(*args, **kwargs)
        marks("compressor_end")
        return out

    DynTokCompressor.compress_batch = compress_batch
    try:
        yield
    finally:
        DynTokCompressor.compress_batch = original
        for handle in handles:
            handle.remove()


def insitu_splits(model: nn.Module, case: Case, args, repeats: int) -> dict:
    """Median GPU-timeline and host-clock milliseconds between marks inside one TTFT, per variant."""
    result = {}
    video_tokens = None
    for variant in ("dyntok", "stock", "ideal"):
        if variant == "dyntok":
            patch_llava(model, threshold=None, target_ratio=args.target_ratio)
        if variant == "ideal":
            call = lambda: ideal_generate(model, case, video_tokens)  # noqa: E731
        else:
            call = lambda: video_generate(model, case, 1)  # noqa: E731
        runs = []
        try:
            with torch.inference_mode():
                call()
                for _ in range(repeats):
                    marks = Marks()
                    with marked(model, marks):
                        marks("call_start")
                        call()
                        marks("call_end")
                    runs.append(marks.segments())
            if variant == "dyntok":
                video_tokens = dyntok_tokens(model)
        finally:
            unpatch_llava(model)
        result[variant] = {key: {"gpu_ms": statistics.median(r[key][0] for r in runs),
                                 "cpu_ms": statistics.median(r[key][1] for r in runs)} for key in runs[0]}
    return result


def print_splits(frames: int, pooling: str, splits: dict) -> None:
    print(f"\nIn-situ splits at F={frames}, {pooling} pooling (ms; GPU timeline / host clock between marks):")
    for variant, segments in splits.items():
        parts = "  ".join(f"{key} {v['gpu_ms']:.1f}/{v['cpu_ms']:.1f}" for key, v in segments.items())
        print(f"  {variant:6s} {parts}")


def splits_experiment(model: nn.Module, config, args, dtype, device) -> list:
    """In-situ splits at each `--splits` frame count, with the host's pooling and with channels-last pooling."""
    out = []
    for frames in args.splits:
        case = make_case(config, frames, dtype, device, text_range(args))
        for pooling in ("host", "channels-last"):
            scope = host_pooling_replaced(model) if pooling == "channels-last" else contextlib.nullcontext()
            with scope:
                splits = insitu_splits(model, case, args, args.repeats)
            print_splits(frames, pooling, splits)
            out.append({"frames": frames, "pooling": pooling, "splits": splits})
        del case
        release(device)
    return out


def bench_frames(model: nn.Module, case: Case, args, timing: Timing) -> dict:
    """One table row: stock, DynTok and ideal for one frame count."""
    new = args.decode_tokens
    stock_len = case.input_ids.shape[1]
    ttft_stock = timing(lambda: video_generate(model, case, 1))
    decode_stock, peak_stock = decode_and_peak(model, case, new, timing)
    release(timing.device)

    patch_llava(model, threshold=None, target_ratio=args.target_ratio)
    try:
        ttft_dyntok = timing(lambda: video_generate(model, case, 1))
        video_tokens = dyntok_tokens(model)
        decode_dyntok, peak_dyntok = decode_and_peak(model, case, new, timing)
    finally:
        unpatch_llava(model)
    release(timing.device)

    ttft_ideal = timing(lambda: ideal_generate(model, case, video_tokens))
    pieces = breakdown(model, case, video_tokens, args.target_ratio, timing)
    release(timing.device)
    return {
        "frames": case.frames,
        "ttft_stock_s": ttft_stock,
        "ttft_dyntok_s": ttft_dyntok,
        "ttft_ideal_s": ttft_ideal,
        "ttft_speedup": ttft_stock / ttft_dyntok,
        "fraction_of_ideal": ttft_ideal / ttft_dyntok,
        "decode_tok_s_stock": decode_stock,
        "decode_tok_s_dyntok": decode_dyntok,
        "peak_mem_stock_gb": peak_stock,
        "peak_mem_dyntok_gb": peak_dyntok,
        "tokens_stock": stock_len,
        "tokens_dyntok": stock_len - case.video_length + video_tokens,
        "video_tokens_dyntok": video_tokens,
        "breakdown_dyntok_s": pieces,
    }


@dataclass
class Probe:
    """Largest frame count that fits, per variant."""

    largest_ok: Optional[int] = None
    first_failed: Optional[int] = None
    stopped: str = ""
    tries: list = field(default_factory=list)


def probe_max_frames(model: nn.Module, config, variant: str, known_ok: Optional[int], args, dtype,
                     device) -> Probe:
    """Try one `generate(max_new_tokens=1)` per F above `known_ok` in increasing order until OOM or the time cap."""
    probe = Probe(largest_ok=known_ok)
    frames_list = [f for f in args.probe_frames if known_ok is None or f > known_ok]
    for frames in frames_list:
        case = make_case(config, frames, dtype, device, text_range(args))
        if variant == "dyntok":
            patch_llava(model, threshold=None, target_ratio=args.target_ratio)
        torch.cuda.reset_peak_memory_stats(device)
        begin = time.perf_counter()
        failure = None
        try:
            with torch.inference_mode():
                video_generate(model, case, 1)
            torch.cuda.synchronize()
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_oom(error):
                raise
            failure = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        finally:
            unpatch_llava(model)
        seconds = time.perf_counter() - begin
        peak = torch.cuda.max_memory_allocated(device) / GB
        del case
        release(device)
        probe.tries.append({"frames": frames, "ok": failure is None, "seconds": seconds, "peak_mem_gb": peak,
                            "error": failure})
        print(f"  probe {variant:6s} F={frames:5d}: {'ok' if failure is None else 'OOM'}  {seconds:.1f} s  "
              f"peak {peak:.1f} GB", flush=True)
        if failure is not None:
            probe.first_failed = frames
            return probe
        probe.largest_ok = frames
        if seconds > args.probe_time_cap:
            probe.stopped = f"stopped after F={frames}: one try took {seconds:.0f} s > {args.probe_time_cap} s"
            return probe
    probe.stopped = "probe list exhausted without OOM"
    return probe


def check_patch(model: nn.Module, config, attn: str, args, dtype, device) -> dict:
    """Identity check (threshold 1.0, one trailing marker == stock) and a budgeted generate, on `attn`."""
    case = make_case(config, args.check_frames, dtype, device, text_range(args))
    result = {"attn_implementation": attn, "dtype": str(dtype), "frames": args.check_frames}
    with torch.inference_mode():
        stock_logits = model(input_ids=case.input_ids, attention_mask=case.attention_mask,
                             pixel_values_videos=case.pixels, logits_to_keep=1).logits
        stock_ids = video_generate(model, case, 8)
        patch_llava(model, threshold=1.0, marker="video")
        try:
            ours_logits = model(input_ids=case.input_ids, attention_mask=case.attention_mask,
                                pixel_values_videos=case.pixels, logits_to_keep=1).logits
            ours_ids = video_generate(model, case, 8)
            patch_llava(model, threshold=None, target_ratio=args.target_ratio)
            budget_ids = video_generate(model, case, 8)
            budget_tokens = dyntok_tokens(model)
        finally:
            unpatch_llava(model)
    result.update(
        identity_max_abs_logit_diff=float((ours_logits.float() - stock_logits.float()).abs().max()),
        identity_tokens_equal=bool(torch.equal(ours_ids, stock_ids)),
        budget_generate_ok=bool(budget_ids.shape[1] == case.input_ids.shape[1] + 8),
        budget_video_tokens=budget_tokens,
        logits_finite=bool(torch.isfinite(stock_logits).all()),
    )
    return result


def attention_checks(model: nn.Module, config, args, dtype, device) -> list:
    """bf16 + SDPA always; flash_attention_2 when `flash_attn` is importable (else recorded as skipped)."""
    checks = [check_patch(model, config, "sdpa", args, dtype, device)]
    if importlib.util.find_spec("flash_attn") is None:
        checks.append({"attn_implementation": "flash_attention_2", "skipped": "flash_attn is not importable"})
        return checks
    try:
        model.set_attn_implementation("flash_attention_2")
        checks.append(check_patch(model, config, "flash_attention_2", args, dtype, device))
    except Exception as error:  # report whatever flash-attn setup raises; the benchmark goes on with SDPA
        checks.append({"attn_implementation": "flash_attention_2", "error": f"{type(error).__name__}: {error}"})
    finally:
        model.set_attn_implementation("sdpa")
    return checks


def text_range(args) -> tuple:
    ids = TINY_IDS if args.tiny else REAL_IDS
    return ids["first_text_id"], ids["last_text_id"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model (CPU smoke test), F = 2 4 by default")
    parser.add_argument("--frames", type=int, nargs="+", default=None, help="default 32 64 128 256 (tiny: 2 4)")
    parser.add_argument("--target-ratio", type=float, default=0.444)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=None, help="default 1 (tiny: 0)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (tiny: 1)")
    parser.add_argument("--probe-frames", type=int, nargs="*", default=None,
                        help="frame counts tried for the largest F that fits (GPU only; default 384..2048)")
    parser.add_argument("--probe-time-cap", type=float, default=25.0, help="stop probing after a try this long (s)")
    parser.add_argument("--check-frames", type=int, default=None, help="frames for the patch checks (default 8)")
    parser.add_argument("--profile", type=int, default=None, help="GPU: profile one DynTok TTFT at this F")
    parser.add_argument("--pooling-experiment", action="store_true",
                        help="GPU: time the host's pooling against channels-last pooling, and TTFT with it")
    parser.add_argument("--splits", type=int, nargs="*", default=[],
                        help="GPU: CUDA-event splits inside one TTFT (stock, DynTok, ideal) at these F")
    parser.add_argument("--no-checks", action="store_true", help="skip the identity / attention checks")
    parser.add_argument("--device", default=None, help="cuda if available, else cpu (tiny: cpu)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<device>.json)")
    args = parser.parse_args()
    args.frames = args.frames or ([2, 4] if args.tiny else [32, 64, 128, 256])
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 1)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 3)
    args.check_frames = args.check_frames or (2 if args.tiny else 8)
    if args.probe_frames is None:
        args.probe_frames = [] if args.tiny else [384, 512, 768, 896, 1024, 1536, 2048]
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    return args


def main() -> None:
    import transformers

    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = build_config(args.tiny, "sdpa")
    begin = time.perf_counter()
    model = build_model(config, dtype, device)
    build_s = time.perf_counter() - begin
    weights_gb = torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else None
    path = Path(args.out) if args.out else RESULTS_DIR / f"{device_kind(device)}.json"
    info = {
        "device": device_name(device),
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "tiny random LLaVA-OneVision" if args.tiny else "llava-onevision-qwen2-7b-ov sizes, random weights",
        "dtype": str(dtype),
        "attn_implementation": "sdpa",
        "target_ratio": args.target_ratio,
        "decode_tokens": args.decode_tokens,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "weights_gb": weights_gb,
        "build_seconds": build_s,
        "note": RANDOM_WEIGHTS_NOTE,
    }
    print(f"{info['model']} on {info['device']}, {dtype}, transformers {transformers.__version__}, "
          f"torch {torch.__version__}; built in {build_s:.1f} s" + (f", weights {weights_gb:.1f} GB" if weights_gb
                                                                     else ""))
    print(RANDOM_WEIGHTS_NOTE, flush=True)
    write_results(path, "device", info["device"])

    if not args.no_checks:
        info["checks"] = attention_checks(model, config, args, dtype, device)
        for check in info["checks"]:
            print("check:", check, flush=True)
        write_results(path, "end_to_end_info", info)

    timing = Timing(args.warmup, args.repeats, device)
    rows = []
    for frames in args.frames:
        case = make_case(config, frames, dtype, device, text_range(args))
        row = row_or_oom(frames, lambda: bench_frames(model, case, args, timing), device)
        del case
        rows.append(row)
        print(f"F={frames}: {row}", flush=True)
        write_results(path, "end_to_end", rows)

    if device.type == "cuda" and args.profile:
        info["profile"] = profile_dyntok(model, make_case(config, args.profile, dtype, device, text_range(args)), args)
        print("vision memory:", {k: v for k, v in info["profile"].items() if k.startswith(("vision", "one"))})
        release(device)
        write_results(path, "end_to_end_info", info)

    if device.type == "cuda" and args.splits:
        info["splits"] = splits_experiment(model, config, args, dtype, device)
        write_results(path, "end_to_end_info", info)

    if args.pooling_experiment:
        info["pooling_experiment"] = pooling_experiment(model, config, args, dtype, device, timing)
        write_results(path, "end_to_end_info", info)

    if device.type == "cuda" and args.probe_frames:
        known_ok = max((row["frames"] for row in rows if "error" not in row), default=None)
        probes = {variant: probe_max_frames(model, config, variant, known_ok, args, dtype, device)
                  for variant in ("stock", "dyntok")}
        info["max_frames"] = {variant: vars(probe) for variant, probe in probes.items()}
    else:
        info["max_frames"] = "not probed (CPU or no --probe-frames)"
    write_results(path, "end_to_end_info", info)

    done = [row for row in rows if "error" not in row]
    print()
    print(f"End to end, {info['model']}, {info['device']}, {dtype}, SDPA, DynTok target_ratio {args.target_ratio}")
    if done:
        print_table(done, ["frames", "tokens_stock", "tokens_dyntok", "ttft_stock_s", "ttft_dyntok_s", "ttft_ideal_s",
                           "ttft_speedup", "fraction_of_ideal", "decode_tok_s_stock", "decode_tok_s_dyntok",
                           "peak_mem_stock_gb", "peak_mem_dyntok_gb"])
        print("\nDynTok TTFT pieces (s, each timed alone; projector + pooling of projected and similarity features):")
        print_table([{"frames": row["frames"], **row["breakdown_dyntok_s"]} for row in done],
                    ["frames", "vision_tower", "projector_pooling_host", "projector_pooling_channels_last",
                     "compressor", "prefill", "stock_vision", "ideal_sequential"])
    for row in rows:
        if "error" in row:
            print(f"F={row['frames']}: {row['error']}")
    if isinstance(info["max_frames"], dict):
        for variant, probe in info["max_frames"].items():
            print(f"largest F that fits, {variant}: {probe['largest_ok']} (first failure: {probe['first_failed']}) "
                  f"{probe['stopped']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
