"""Where one call of a patched (or stock) Qwen VL model spends its time: `torch.profiler` with a named range around
each stage of the DynTok path and of the stock pipeline (`bench_qwen.py --profile F`).

The stages are module functions and methods wrapped for the duration (`stage_ranges`), so the package itself carries
no profiling code; the wrappers go on before a variant's context (e.g. the patch, which binds `generate`) is entered.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time

import torch
from torch.autograd import DeviceType

from common import print_table

STAGES = {  # profiler range name: (module, class or None, function) wrapped while profiling
    "dyntok: check inputs": ("dyntok_plugin.patches.qwen_vl_positions", None, "check_runs"),
    "stock positions (get_rope_index)": ("dyntok_plugin.patches.qwen_vl_positions", None, "stock_positions"),
    "vision + DynTok": ("dyntok_plugin.patches.hf_qwen_vl", None, "compress_videos"),
    "dyntok: compress_batch": ("dyntok_plugin.core.compressor", "DynTokCompressor", "compress_batch"),
    "dyntok: re-splice plan": ("dyntok_plugin.patches.qwen_vl_positions", None, "plan"),
    "stock generate (prefill, first token)": ("transformers", "GenerationMixin", "generate"),
    "stock get_video_features": ("transformers", "Qwen3VLModel", "get_video_features"),
    "stock get_video_features (2.5)": ("transformers", "Qwen2_5_VLModel", "get_video_features"),
}


@contextlib.contextmanager
def stage_ranges():
    """Each STAGES function wrapped in a `torch.profiler.record_function` range; the originals are put back after,
    also when installing a later wrapper or the body fails."""
    saved = []
    try:
        for name, target in STAGES.items():
            found = _find(*target)
            if found is None:
                continue
            owner, function, original = found

            def ranged(*args, _original=original, _name=name, **kwargs):
                with torch.profiler.record_function(_name):
                    return _original(*args, **kwargs)

            saved.append(found)
            setattr(owner, function, functools.wraps(original)(ranged))
        yield
    finally:
        for owner, function, original in reversed(saved):
            setattr(owner, function, original)


def _find(module: str, cls: str | None, function: str):
    """(owner, function name, original) of one stage, or None where this install lacks it (no Qwen patch, or a
    host class this transformers does not have)."""
    try:
        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
    except (ImportError, AttributeError):
        return None
    original = vars(owner).get(function)
    return None if original is None else (owner, function, original)


def profile_calls(variants: dict, around: dict, device: torch.device, title: str) -> dict:
    """Per variant (name -> a call), one warm call profiled: wall ms, CPU / GPU ms of each stage, host read-backs
    (`aten::_local_scalar_dense`) and the 12 largest ops by CPU time. `around[name]`: a context entered inside the
    stage wrappers and outside the calls (the patch)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    result = {}
    for variant, call in variants.items():
        with stage_ranges(), around.get(variant, contextlib.nullcontext)(), torch.inference_mode():
            call()  # warm
            _synchronize(device)
            begin = time.perf_counter()
            with profile(activities=activities) as prof:
                call()
                _synchronize(device)
            wall = time.perf_counter() - begin
        result[variant] = _summary(prof.key_averages(), wall)
        print(f"\nProfile of one {variant} {title}: {wall * 1e3:.1f} ms wall (profiled), "
              f"{result[variant]['host_read_backs']} host read-backs")
        stages = sorted(result[variant]["stages"], key=lambda r: -r["cpu_ms"])
        print_table(stages, ["stage", "calls", "cpu_ms", "gpu_kernels_ms", "gpu_span_ms"])
        print_table(result[variant]["top_cpu_ops"], ["op", "calls", "self_cpu_ms", "gpu_ms"])
    return result


def _summary(events, wall: float) -> dict:
    """The profile of one call: per stage its CPU range (`cpu_ms`), the GPU kernels launched inside it
    (`gpu_kernels_ms`) and its span on the GPU (`gpu_span_ms`, the range's GPU annotation; CUDA only)."""
    stages = {}
    for e in events:
        if e.key not in STAGES:
            continue
        row = stages.setdefault(e.key, {"stage": e.key, "calls": 0, "cpu_ms": 0.0, "gpu_kernels_ms": 0.0,
                                        "gpu_span_ms": 0.0})
        if e.device_type == DeviceType.CPU:
            row.update(calls=e.count, cpu_ms=e.cpu_time_total / 1e3, gpu_kernels_ms=e.device_time_total / 1e3)
        else:  # the range's user annotation on the GPU timeline
            row["gpu_span_ms"] = e.device_time_total / 1e3
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    top_ops = [{"op": e.key[:60], "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "gpu_ms": e.device_time_total / 1e3} for e in top]
    reads = sum(e.count for e in events if e.key == "aten::_local_scalar_dense")
    return {"wall_ms": wall * 1e3, "host_read_backs": reads, "stages": list(stages.values()), "top_cpu_ops": top_ops}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
