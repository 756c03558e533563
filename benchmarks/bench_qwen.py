"""End-to-end Qwen2.5-VL-7B and Qwen3-VL-8B with and without DynTok: time to first token, stock vs DynTok vs ideal.

    python benchmarks/bench_qwen.py                     # GPU: both hosts at real sizes, random bf16 weights, F = 32..256
    python benchmarks/bench_qwen.py --host qwen3_vl     # one host (qwen2_5_vl or qwen3_vl)
    python benchmarks/bench_qwen.py --smoke             # CPU: tiny random models, F = 4 and 8, a few seconds
    python benchmarks/bench_qwen.py --profile 64        # + where one DynTok and one ideal TTFT spend their time

Needs transformers >= 5.18 (`mm_encoder_outputs`, used by the ideal variant and by the DynTok patch). On a machine
without an install, put a copy of `dyntok_plugin/` with `patches/` as `dyntok_plugin/patches/` on `PYTHONPATH`.

The models are `Qwen2_5_VLForConditionalGeneration` / `Qwen3VLForConditionalGeneration` built from the published
configurations of Qwen2.5-VL-7B-Instruct and Qwen3-VL-8B-Instruct (written out below) with seeded random weights made
on the device (nothing is downloaded), SDPA attention, batch 1. Inputs are built by hand the way the processors build
them: square frames of `--size` pixels (default 448 for Qwen2.5-VL's 14 px patches, 512 for Qwen3-VL's 16 px: a 16x16
merged grid, 256 tokens per temporal slice of 2 frames), random normalised pixels cut into patch rows, text around one
video run of `t*h'*w'` `<|video_pad|>` ids (Qwen3-VL: one run per slice, each after a timestamp and inside its own
vision start/end pair), `mm_token_type_ids` and, for Qwen2.5-VL, `second_per_grid_ts`.

For each frame count F (medians of CUDA-event timings after warm-up; wall clock on the CPU):

- ttft_stock_s / ttft_dyntok_s: `generate(max_new_tokens=1)` with `pixel_values_videos` and `video_grid_thw` (vision
  tower and merger, [DynTok compression and splice,] M-RoPE positions, prefill, first token).
- ttft_ideal_s: the stock model on a sequence of DynTok's length with no compressor: the stock `get_video_features`
  on all F frames, its first N merged tokens (and DeepStack rows) kept, the other placeholders dropped from the ids,
  the stock M-RoPE positions of the kept tokens, `generate(mm_encoder_outputs=..., position_ids=..., max_new_tokens=1)`
  (N = DynTok's video tokens).
- The variants take turns within each repeat (stock, DynTok, tower, ideal, then again), medians per variant: these
  pipelines are host-bound (Python loops and read-backs in the stock towers and `get_rope_index`), and their speed
  drifts over seconds.
- ttft_speedup = stock / DynTok; fraction_of_ideal = ideal / DynTok (goal: >= 0.95, and >= 1.8x at F = 64);
  ideal_speedup = stock / ideal (the most a compressor of this length could give).
- check: the ideal's inputs with every video token kept give the stock logits; with the patch, threshold 1.5 and
  marker "none" give the stock logits and the budget gives a one-token generate.
- peak_mem_*_gb: `torch.cuda.max_memory_allocated` during one TTFT call (reset before), 1e9 bytes.
- tower_s: the stock `get_video_features` alone (vision blocks and merger on all F frames), which every variant pays:
  stock / (tower + the rest of the ideal) bounds what any compressor after the merger can give.

`--profile F` adds a `torch.profiler` run (`qwen_profile.py`) over one DynTok and one ideal TTFT at F frames: the
CPU and GPU time of the stages (DynTok's checks, stock positions, vision + compression, re-splice, the host's own
generate), the host read-backs (`aten::_local_scalar_dense`) and the largest ops by CPU time, under `profile` in the
host's info.

DynTok runs with `threshold=None, target_ratio=0.444` and the hosts' default marker ("none"): with random weights the
similarities mean nothing, so the budget fixes the length. Without a DynTok patch for the host (the installed package
refuses the model), the DynTok columns are left out; stock and ideal (at the budget's length) are still measured.
Results go to benchmarks/results/qwen_<device>.json (sections `qwen2_5_vl`, `qwen3_vl`, `qwen_info`; `--tag T` writes
`<host>_T` instead, beside them); each host's info, check and `--profile` under `qwen_info.hosts.<section>`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from common import (
    GB,
    RESULTS_DIR,
    Timing,
    device_kind,
    device_name,
    print_table,
    release,
    row_or_oom,
    timed_runs,
    write_results,
)
from dyntok_plugin import patch_llava, unpatch_llava
from plot_qwen import HOSTS as NAMES
from qwen_profile import profile_calls
from dyntok_plugin.core.errors import UnsupportedModelError
from dyntok_plugin.hf import synthetic_qwen

RANDOM_WEIGHTS_NOTE = (
    "Random weights: similarities are meaningless, so DynTok runs with a fixed budget (threshold=None, "
    "target_ratio) instead of a threshold; ratios from a threshold on these models would mean nothing."
)
REAL_EOS_ID = 151645  # <|im_end|>
QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                vision_end_token_id=151653)
# Qwen2.5-VL-7B-Instruct's config.json.
QWEN25_VL_7B = dict(
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, hidden_act="silu", patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=3584, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
              hidden_act="silu", bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
              rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24])),
)
# Qwen3-VL-8B-Instruct's config.json.
QWEN3_VL_8B = dict(
    vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, hidden_act="gelu_pytorch_tanh",
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096,
                num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
    text=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
              num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
              rms_norm_eps=1e-6, hidden_act="silu", bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
              rope_parameters=dict(rope_type="default", rope_theta=5000000.0, mrope_section=[24, 20, 20],
                                   mrope_interleaved=True)),
)
REAL = {"qwen2_5_vl": QWEN25_VL_7B, "qwen3_vl": QWEN3_VL_8B}
PREFIX_TOKENS, SUFFIX_TOKENS, TIMESTAMP_TOKENS = 14, 18, 4  # chat template and question; "<1.0 seconds>"
FIRST_TEXT_ID = {True: synthetic_qwen.FIRST_TEXT_ID, False: 0}  # random text ids from here (real: to the specials)


def build_config(host: str, tiny: bool):
    """The host's config (real size, or the tests' tiny one from `synthetic_qwen`) with SDPA attention."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    if tiny:
        config = synthetic_qwen.qwen_vl_config(host)
    else:
        cls = Qwen2_5_VLConfig if host == "qwen2_5_vl" else Qwen3VLConfig
        config = cls(vision_config=dict(REAL[host]["vision"]), text_config=dict(REAL[host]["text"]),
                     tie_word_embeddings=False, **QWEN_IDS)
    config._attn_implementation = "sdpa"
    return config


def build_model(config, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Seeded random weights allocated directly on `device` in `dtype` (no hub, no CPU copy)."""
    cls = synthetic_qwen.model_class(config)
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    tiny = config.text_config.vocab_size == synthetic_qwen.VOCAB_SIZE
    model.generation_config.eos_token_id = synthetic_qwen.EOS_ID if tiny else REAL_EOS_ID
    model.generation_config.pad_token_id = synthetic_qwen.PAD_ID if tiny else REAL_EOS_ID
    return model.eval()


@dataclass
class Case:
    """One benchmark input: a prompt with one video of `frames` frames, as the processor would give it."""

    frames: int
    inputs: dict  # input_ids, attention_mask, mm_token_type_ids, pixel_values_videos, video_grid_thw[, ...]
    video_tokens: int  # t * h' * w'

    @property
    def length(self) -> int:
        return self.inputs["input_ids"].shape[1]


def make_case(host: str, config, frames: int, size: int, dtype: torch.dtype, device: torch.device,
              tiny: bool) -> Case:
    """Hand-built ids (text, the video's placeholder runs, text) and random normalised patch rows."""
    vision = config.vision_config
    patch, merge, tps = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
    if size % (patch * merge) or frames % tps:
        raise ValueError(f"--size must be a multiple of {patch * merge} and frames of {tps} for {host}")
    t, grid = frames // tps, size // patch
    per_slice = (grid // merge) ** 2
    gen = torch.Generator().manual_seed(frames)
    low = FIRST_TEXT_ID[tiny]
    high = config.text_config.vocab_size if tiny else QWEN_IDS["vision_start_token_id"] - 10

    def text(count: int) -> list:
        return torch.randint(low, high, (count,), generator=gen).tolist()

    start, end, pad = config.vision_start_token_id, config.vision_end_token_id, config.video_token_id
    if host == "qwen2_5_vl":
        video = [start] + [pad] * (t * per_slice) + [end]
    else:  # one run per slice after its timestamp, inside the template's own start/end pair
        slices = [text(TIMESTAMP_TOKENS) + [start] + [pad] * per_slice + [end] for _ in range(t)]
        video = [start] + [i for part in slices for i in part] + [end]
    ids = torch.tensor([text(PREFIX_TOKENS) + video + text(SUFFIX_TOKENS)], device=device)
    rows = torch.rand(t * grid * grid, 3 * tps * patch * patch, generator=gen) * 2 - 1
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  mm_token_type_ids=(ids == pad).to(torch.int32) * 2,
                  pixel_values_videos=rows.to(device=device, dtype=dtype),
                  video_grid_thw=torch.tensor([[t, grid, grid]], device=device))
    if host == "qwen2_5_vl":
        inputs["second_per_grid_ts"] = torch.tensor([1.0], device=device)  # 2 frames at 2 fps per slice
    return Case(frames, inputs, t * per_slice)


def first_token(model: nn.Module, inputs: dict) -> Tensor:
    """`generate(max_new_tokens=1)`: time to first token (ids from the model's generation config)."""
    return model.generate(**inputs, max_new_tokens=1, do_sample=False)


def ideal_inputs(model: nn.Module, case: Case, kept: int) -> dict:
    """The stock model's inputs for a sequence of DynTok's length: stock vision on all frames, its first `kept`
    merged tokens (DeepStack rows too) in place of the video's placeholders, the stock positions of what is kept."""
    inner = model.model
    inputs = case.inputs
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    video = inner.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    fields = {key: video[key] for key in video.keys()}
    fields["pooler_output"] = (torch.cat(video.pooler_output)[:kept],)
    if getattr(video, "deepstack_features", None) is not None:
        fields["deepstack_features"] = [(torch.cat(level)[:kept],) for level in video.deepstack_features]
    ids, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    positions, _ = inner.get_rope_index(ids, types, video_grid_thw=inputs["video_grid_thw"],
                                        attention_mask=inputs["attention_mask"], **extra)
    is_video = types[0] == 2
    keep = ~is_video | (torch.cumsum(is_video.long(), 0) <= kept)
    short = ids[:, keep]
    return dict(input_ids=short, attention_mask=torch.ones_like(short), mm_token_type_ids=types[:, keep],
                position_ids=positions[:, :, keep], mm_encoder_outputs={"video": type(video)(**fields)})


def ideal_first_token(model: nn.Module, case: Case, kept: int) -> Tensor:
    return first_token(model, ideal_inputs(model, case, kept))


def tower(model: nn.Module, case: Case):
    """The stock vision tower and merger on all frames (what every variant runs first)."""
    return model.model.get_video_features(case.inputs["pixel_values_videos"], case.inputs["video_grid_thw"])


def peak_gb(fn, device: torch.device) -> Optional[float]:
    """`torch.cuda.max_memory_allocated` during one call of `fn` (None on the CPU)."""
    if device.type != "cuda":
        return None
    release(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / GB


def dyntok_available(model: nn.Module) -> Optional[str]:
    """None when the installed package patches this model, else why not."""
    try:
        patch_llava(model, threshold=None, target_ratio=0.5)
    except (UnsupportedModelError, TypeError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    unpatch_llava(model)
    return None


@contextlib.contextmanager
def dyntok_on(model: nn.Module, args):
    """The model patched with the benchmark's budget for the duration."""
    patch_llava(model, threshold=None, target_ratio=args.target_ratio)
    try:
        yield
    finally:
        unpatch_llava(model)


def interleaved_medians(variants: dict, timing: Timing, around: dict) -> dict:
    """Median seconds per variant, the variants taking turns within each repeat (these pipelines are host-bound:
    their speed drifts over seconds, and timing one variant's repeats back to back would charge it the drift).
    `around[name]`: a context (e.g. the patch) entered outside that variant's timed call."""
    times = {name: [] for name in variants}
    with torch.inference_mode():
        for repeat in range(timing.warmup + timing.repeats):
            for name, run in variants.items():
                with around.get(name, contextlib.nullcontext)():
                    seconds = timed_runs(run, timing.device, warmup=0, repeats=1)[0]
                if repeat >= timing.warmup:
                    times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_frames(model: nn.Module, case: Case, args, timing: Timing, with_dyntok: bool) -> dict:
    """One table row: stock, DynTok, the tower alone and ideal for one frame count, timed in turns."""
    device = timing.device
    kept = int(args.target_ratio * case.video_tokens)  # the budget's length (markers "none")
    patched = functools.partial(dyntok_on, model, args)
    if with_dyntok:
        with patched(), torch.inference_mode():
            first_token(model, case.inputs)
            kept = sum(s.tokens_out for s in model.dyntok.last_stats)
    variants = {"stock": lambda: first_token(model, case.inputs)}
    if with_dyntok:
        variants["dyntok"] = lambda: first_token(model, case.inputs)
    variants.update(tower=lambda: tower(model, case), ideal=lambda: ideal_first_token(model, case, kept))
    medians = interleaved_medians(variants, timing, around={"dyntok": patched})
    row = {"frames": case.frames, "video_tokens_stock": case.video_tokens, "tokens_stock": case.length,
           "ttft_stock_s": medians["stock"], "tower_s": medians["tower"], "ttft_ideal_s": medians["ideal"],
           "video_tokens_ideal": kept, "tokens_ideal": case.length - case.video_tokens + kept,
           "ideal_speedup": medians["stock"] / medians["ideal"],
           "peak_mem_stock_gb": peak_gb(variants["stock"], device),
           "peak_mem_ideal_gb": peak_gb(variants["ideal"], device)}
    if with_dyntok:
        with patched():
            row["peak_mem_dyntok_gb"] = peak_gb(variants["dyntok"], device)
        row.update(ttft_dyntok_s=medians["dyntok"], video_tokens_dyntok=kept, tokens_dyntok=row["tokens_ideal"],
                   ttft_speedup=medians["stock"] / medians["dyntok"],
                   fraction_of_ideal=medians["ideal"] / medians["dyntok"])
    return row


def stock_logits(model: nn.Module, case: Case) -> Tensor:
    """The unpatched model's last-position logits (float32), what both checks compare against."""
    with torch.inference_mode():
        return model(**case.inputs, logits_to_keep=1).logits.float()


def check_ideal(model: nn.Module, case: Case, stock: Tensor) -> dict:
    """The ideal's inputs keeping every video token give the stock logits (its positions and features are the
    stock ones)."""
    with torch.inference_mode():
        full = model(**ideal_inputs(model, case, case.video_tokens), logits_to_keep=1).logits.float()
    return {"frames": case.frames, "ideal_all_tokens_max_abs_logit_diff": float((full - stock).abs().max()),
            "logits_finite": bool(torch.isfinite(stock).all())}


def check_patch(model: nn.Module, case: Case, stock: Tensor, args) -> dict:
    """Identity (threshold above 1, marker "none": the stock logits) and the budget's length, at the check size."""
    with torch.inference_mode():
        patch_llava(model, threshold=1.5, marker="none")
        try:
            same = model(**case.inputs, logits_to_keep=1).logits.float()
            patch_llava(model, threshold=None, target_ratio=args.target_ratio)
            budget_ids = first_token(model, case.inputs)
            kept = sum(s.tokens_out for s in model.dyntok.last_stats)
        finally:
            unpatch_llava(model)
    return {"frames": case.frames, "identity_max_abs_logit_diff": float((same - stock).abs().max()),
            "budget_video_tokens": kept, "budget_generate_ok": bool(budget_ids.shape[1] == case.length + 1),
            "stock_video_tokens": case.video_tokens}


def run_host(host: str, args, device: torch.device, dtype: torch.dtype, path: Path) -> dict:
    """Build one host, check the patch, time every frame count; rows and info written to `path` as they come."""
    config = build_config(host, args.smoke)
    begin = time.perf_counter()
    model = build_model(config, dtype, device)
    info = {"model": f"{NAMES[host]} sizes, random weights" if not args.smoke else f"tiny random {host}",
            "build_seconds": time.perf_counter() - begin, "frame_size": args.size or default_size(config, args),
            "weights_gb": torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else None}
    size = info["frame_size"]
    info["dyntok_unavailable"] = dyntok_available(model)
    with_dyntok = info["dyntok_unavailable"] is None
    print(f"{info['model']}: built in {info['build_seconds']:.1f} s; frames {size}x{size}; DynTok "
          f"{'patched' if with_dyntok else 'unavailable (' + info['dyntok_unavailable'] + ')'}", flush=True)
    if not args.no_checks:
        case = make_case(host, config, args.check_frames, size, dtype, device, args.smoke)
        stock = stock_logits(model, case)
        info["check"] = check_ideal(model, case, stock)
        if with_dyntok:
            info["check"].update(check_patch(model, case, stock, args))
        print("check:", info["check"], flush=True)
        del case
    if args.profile:
        case = make_case(host, config, args.profile, size, dtype, device, args.smoke)
        info["profile"] = profile_stages(model, case, args, with_dyntok)
        del case
    timing = Timing(args.warmup, args.repeats, device)
    rows = []
    for frames in args.frames:
        case = make_case(host, config, frames, size, dtype, device, args.smoke)
        row = row_or_oom(frames, lambda: bench_frames(model, case, args, timing, with_dyntok), device)
        del case
        rows.append(row)
        print(f"{host} F={frames}: {row}", flush=True)
        write_results(path, section_name(host, args), rows)
    del model
    release(device)
    return {"info": info, "rows": rows}


def profile_stages(model: nn.Module, case: Case, args, with_dyntok: bool) -> dict:
    """`qwen_profile.profile_calls` over one warm DynTok TTFT and one warm ideal TTFT at `case.frames`."""
    kept = int(args.target_ratio * case.video_tokens)
    variants = {"ideal": lambda: ideal_first_token(model, case, kept)}
    if with_dyntok:
        variants = {"dyntok": lambda: first_token(model, case.inputs), **variants}
    title = f"TTFT at F={case.frames}"
    profiled = profile_calls(variants, {"dyntok": functools.partial(dyntok_on, model, args)},
                             case.inputs["input_ids"].device, title)
    return {"frames": case.frames, **profiled}


def default_size(config, args) -> int:
    """Frame side giving a 16x16 merged grid (smoke: 4x4)."""
    vision = config.vision_config
    return vision.patch_size * vision.spatial_merge_size * (4 if args.smoke else 16)


def section_name(host: str, args) -> str:
    """The results file's section of one host's rows (and its key under `qwen_info.hosts`): the host, or
    `<host>_<tag>` with `--tag`, so runs at other settings go beside the default ones."""
    return f"{host}_{args.tag}" if args.tag else host


def print_summary(host: str, result: dict, args) -> None:
    done = [row for row in result["rows"] if "error" not in row]
    print(f"\n{result['info']['model']}, SDPA, DynTok target_ratio {args.target_ratio}, frames "
          f"{result['info']['frame_size']} px")
    columns = ["frames", "tokens_stock", "tokens_dyntok", "ttft_stock_s", "ttft_dyntok_s", "ttft_ideal_s", "tower_s",
               "ttft_speedup", "fraction_of_ideal", "ideal_speedup", "peak_mem_stock_gb", "peak_mem_dyntok_gb"]
    if done:
        print_table([{c: row.get(c) for c in columns} for row in done], columns)
    for row in result["rows"]:
        if "error" in row:
            print(f"F={row['frames']}: {row['error']}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random models on the CPU, F = 4 8 by default")
    parser.add_argument("--host", nargs="+", choices=sorted(REAL), default=sorted(REAL), help="default: both")
    parser.add_argument("--frames", type=int, nargs="+", default=None, help="default 32 64 128 256 (smoke: 4 8)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default: a 16x16 merged grid)")
    parser.add_argument("--target-ratio", type=float, default=0.444)
    parser.add_argument("--warmup", type=int, default=None, help="default 1 (smoke: 0)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (smoke: 1)")
    parser.add_argument("--check-frames", type=int, default=None, help="frames of the patch check (default 8)")
    parser.add_argument("--profile", type=int, default=None, help="profile one DynTok and one ideal TTFT at this F")
    parser.add_argument("--no-checks", action="store_true", help="skip the identity / budget check")
    parser.add_argument("--device", default=None, help="cuda if available, else cpu (smoke: cpu)")
    parser.add_argument("--tag", default=None, help="write rows to section <host>_<tag> (e.g. 640px) of the file")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/qwen_<device>.json)")
    args = parser.parse_args(argv)
    args.frames = args.frames or ([4, 8] if args.smoke else [32, 64, 128, 256])
    args.warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 1)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 5)
    args.check_frames = args.check_frames or (4 if args.smoke else 8)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    return args


def previous_hosts(path: Path) -> dict:
    """The per-host info already in the results file (one run per host may write into the same file)."""
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text()).get("qwen_info", {}).get("hosts", {}))


def main(argv=None) -> None:
    import transformers

    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = Path(args.out) if args.out else RESULTS_DIR / f"qwen_{device_kind(device)}.json"
    info = {"device": device_name(device), "date": dt.date.today().isoformat(), "torch": torch.__version__,
            "transformers": transformers.__version__, "dtype": str(dtype), "attn_implementation": "sdpa",
            "target_ratio": args.target_ratio, "warmup": args.warmup, "repeats": args.repeats,
            "note": RANDOM_WEIGHTS_NOTE, "hosts": previous_hosts(path)}
    print(f"{info['device']}, {dtype}, transformers {info['transformers']}, torch {info['torch']}")
    print(RANDOM_WEIGHTS_NOTE, flush=True)
    write_results(path, "device", info["device"])
    results = {}
    for host in args.host:
        results[host] = run_host(host, args, device, dtype, path)
        info["hosts"][section_name(host, args)] = results[host]["info"]
        write_results(path, "qwen_info", info)
    for host, result in results.items():
        print_summary(host, result, args)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
