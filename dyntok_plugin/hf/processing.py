"""LLaVA-OneVision's inputs built the way its processor builds them, shared by every place that prompts the model.

Chat messages for `apply_chat_template` and the video placeholder id (the HF patch's `video_token_id`); and,
for checkpoints whose processor is not saved or cannot load (transformers 5.x's video processor needs
torchvision), the placeholder expansion and pixel preprocessing. The stock processor turns each `<video>` of
the rendered chat into a run of `F*h*w + 1` placeholder ids (the pooled grid plus one newline), which DynTok
then re-splices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .common import pooled_side, video_token_id


def user_turn(text: str, videos: int = 1, images: int = 0) -> list[dict]:
    """One user message for `apply_chat_template`: video placeholders, then image ones, then the text."""
    content = [{"type": "video"} for _ in range(videos)] + [{"type": "image"} for _ in range(images)]
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


def video_prompt_ids(config: Any, tokenizer: Any, text: str, frames: int) -> Tensor:
    """Token ids of `text` with its single `<video>` expanded to the stock run of `F*h*w + 1` placeholders."""
    video_id = video_token_id(config)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    found = int((ids == video_id).sum())
    if found != 1:
        raise ValueError(f"the chat template produced {found} video placeholders (id {video_id}), expected 1; "
                         "check the checkpoint's tokenizer and chat template")
    side = pooled_side(config)
    repeats = torch.where(ids == video_id, frames * side * side + 1, 1)
    return torch.repeat_interleave(ids, repeats)


def frames_to_pixels(frames: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 `(F, H, W, 3)` frames to normalised float32 `(F, 3, size, size)` (squash resize, bicubic)."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"frames must be a uint8 array (F, H, W, 3), got {type(frames).__name__} of shape {shape}")
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
