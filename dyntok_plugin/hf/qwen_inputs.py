"""Qwen2.5-VL / Qwen3-VL video inputs built by hand, and the tower's features per merged cell, for the tools.

transformers 5.x's Qwen video processors need torchvision; the `dyntok` command, the benchmarks and the tests build
the same inputs without it: frames resized to a multiple of `patch * merge` (the processor's pixel bounds), normalised
and cut into the processor's patch rows by `synthetic_qwen.patchify`; `video_grid_thw = (t, gh, gw)`; and the prompt ids with the
video placeholder expanded as the processors expand it (`video_prompt_inputs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoints import QWEN_MODEL_TYPES
from .synthetic_qwen import patchify

# Qwen2.5-VL's processors normalise with OpenAI CLIP's mean and std; Qwen3-VL's with 0.5 / 0.5.
QWEN_MEAN = (0.48145466, 0.4578275, 0.40821073)
QWEN_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
MIN_PIXELS = 56 * 56  # the Qwen2-VL image processor's min_pixels: smaller frames are scaled up
MAX_PIXELS = 448 * 448  # per frame; the processors' video bounds are larger, this keeps the command fast


def is_qwen_vl(config: Any) -> bool:
    """Whether a transformers config is one of the Qwen VL families the tools know."""
    return getattr(config, "model_type", None) in QWEN_MODEL_TYPES


def default_normalisation(model_type: str) -> tuple[tuple, tuple]:
    """`(mean, std)` of the host's processors, for checkpoints saved without a preprocessor config."""
    return (QWEN_MEAN, QWEN_STD) if model_type == "qwen2_5_vl" else (HALF, HALF)


def resized_size(height: int, width: int, factor: int, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """`(H, W)` as Qwen2-VL's `smart_resize` picks it: each side rounded to a multiple of `factor` (patch * merge),
    scaled down (sides floored) when above `max_pixels` or up (sides ceiled) when below `min_pixels`, aspect kept."""
    if height < 1 or width < 1:
        raise ValueError(f"frames must be at least 1x1 pixels, got {height}x{width}")
    rows, cols = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if rows * cols > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        rows = max(factor, math.floor(height / scale / factor) * factor)
        cols = max(factor, math.floor(width / scale / factor) * factor)
    elif rows * cols < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        rows, cols = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return rows, cols


def video_pixels(frames: np.ndarray, vision: Any, mean: Sequence[float] = QWEN_MEAN, std: Sequence[float] = QWEN_STD,
                 max_pixels: int = MAX_PIXELS) -> tuple[Tensor, Tensor]:
    """uint8 `(F, H, W, 3)` frames to `(pixel_values_videos, video_grid_thw)` of one video, as the processor cuts
    them (float32; `F` padded to a multiple of the temporal patch by repeating the last frame: `patchify`)."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a uint8 array (F, H, W, 3), got {type(frames).__name__} of shape "
                         f"{getattr(frames, 'shape', None)}")
    patch, merge, tps = int(vision.patch_size), int(vision.spatial_merge_size), int(vision.temporal_patch_size)
    rows, cols = resized_size(frames.shape[1], frames.shape[2], patch * merge, max_pixels=max_pixels)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    x = F.interpolate(x, size=(rows, cols), mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    rows, grid = patchify(x, patch, tps, merge)
    return rows, torch.tensor([grid])


def merged_grid(grid_thw: Tensor, merge: int) -> list:
    """`[(t, h', w')]` per video of a `video_grid_thw`."""
    return [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grid_thw.tolist()]


def video_prompt_inputs(config: Any, tokenizer: Any, text: str, frames: np.ndarray, seconds: Sequence[float],
                        mean: Sequence[float] = QWEN_MEAN, std: Sequence[float] = QWEN_STD,
                        max_pixels: int = MAX_PIXELS) -> dict:
    """The processor's inputs for one rendered chat `text` holding one `<|video_pad|>` and its `frames` (uint8
    `(F, H, W, 3)`, sampled at the times `seconds`), batch of one.

    The pad becomes `t*h'*w'` pads (Qwen2.5-VL, plus `second_per_grid_ts`), or for Qwen3-VL one run per temporal
    slice, each after its timestamp `<{s:.1f} seconds>` (mean time of the slice's first and last frame) and inside
    its own vision start/end pair, as the stock processors expand it.
    """
    vision = config.vision_config
    merge, tps = int(vision.spatial_merge_size), int(vision.temporal_patch_size)
    pixels, grid = video_pixels(frames, vision, mean, std, max_pixels)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    pad = int(config.video_token_id)
    if ids.count(pad) != 1:
        raise ValueError(f"the chat template produced {ids.count(pad)} video placeholders (id {pad}), expected 1; "
                         "check the checkpoint's tokenizer and chat template")
    (t, h, w), = merged_grid(grid, merge)
    if config.model_type == "qwen2_5_vl":
        run = [pad] * (t * h * w)
    else:
        times = list(seconds) + [seconds[-1]] * (t * tps - len(seconds))
        run = []
        for s in range(t):
            stamp = (times[s * tps] + times[s * tps + tps - 1]) / 2
            run += list(tokenizer(f"<{stamp:.1f} seconds>", add_special_tokens=False)["input_ids"])
            run += [int(config.vision_start_token_id)] + [pad] * (h * w) + [int(config.vision_end_token_id)]
    at = ids.index(pad)
    input_ids = torch.tensor([ids[:at] + run + ids[at + 1:]])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "mm_token_type_ids": (input_ids == pad).to(torch.int32) * 2,
              "pixel_values_videos": pixels, "video_grid_thw": grid}
    if config.model_type == "qwen2_5_vl":
        span = (seconds[-1] - seconds[0]) / max(len(seconds) - 1, 1) if len(seconds) > 1 else 1.0
        inputs["second_per_grid_ts"] = torch.tensor([tps * span])
    return inputs
