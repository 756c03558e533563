"""Timing, out-of-memory rows, device description, result files and model sizes shared by the benchmark scripts."""

from __future__ import annotations

import gc
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dyntok_plugin.hf import synthetic

GB = 1e9  # memory figures in 1e9 bytes
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# llava-onevision-qwen2-0.5b-ov sizes (HF conversion), random weights: defined once, in the package.
LLAVA_OV_05B = synthetic.LLAVA_OV_05B


def timed_runs(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> list:
    """Seconds of each of `repeats` calls of `fn` after `warmup` calls: CUDA events on a GPU, perf_counter on the
    CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return times


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median of `timed_runs`."""
    return statistics.median(timed_runs(fn, device, warmup, repeats))


@dataclass
class Timing:
    """Repeat counts for median timings."""

    warmup: int
    repeats: int
    device: torch.device

    def __call__(self, fn: Callable[[], object]) -> float:
        with torch.inference_mode():
            return median_seconds(fn, self.device, warmup=self.warmup, repeats=self.repeats)


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def row_or_oom(frames: int, measure: Callable[[], dict], device: torch.device) -> dict:
    """`measure()`'s table row for one frame count, or a row recording the out-of-memory error; memory released."""
    try:
        row = measure()
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_oom(error):
            raise
        row = {"frames": frames, "error": f"OOM: {str(error).splitlines()[0][:160]}"}
    release(device)
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_kind(device: torch.device) -> str:
    """A file-name-safe name of the device, e.g. `nvidia-h100-80gb-hbm3` or `cpu`."""
    if device.type != "cuda":
        return "cpu"
    return "-".join(device_name(device).lower().replace("nvidia", "nvidia ").split())


def print_table(rows: list, columns: list) -> None:
    widths = [max(len(col), *(len(_fmt(row[col])) for row in rows)) for col in columns]
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(_fmt(row[col]).rjust(w) for col, w in zip(columns, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_results(path: Path, section: str, payload) -> Path:
    """Merge `payload` under `section` into the JSON file at `path` (other sections are kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[section] = payload
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
