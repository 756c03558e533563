"""Timing, device description, result files and model sizes shared by the benchmark scripts."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"

# llava-onevision-qwen2-0.5b-ov (HF conversion): SigLIP-so400m/14-384, last layer dropped, "full"; Qwen2-0.5B.
LLAVA_OV_05B = dict(
    vision=dict(model_type="siglip_vision_model", image_size=384, patch_size=14, hidden_size=1152,
                intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, layer_norm_eps=1e-6,
                vision_use_head=False),
    text=dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
              rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6),
)


def tests_on_path() -> None:
    """Make tests/ importable: its offline tiny checkpoints and `finetune_utils.finetune_module()` (the loader of
    examples/finetune_hf.py) serve the training benchmarks too."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


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
