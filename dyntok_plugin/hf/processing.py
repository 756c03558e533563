"""LLaVA-OneVision's inputs built the way its processor builds them, shared by every place that prompts the model.

Chat messages for `apply_chat_template` and the video placeholder id (the HF patch's `video_token_id`); and,
for checkpoints whose processor is not saved or cannot load (transformers 5.x's video processor needs
torchvision), the placeholder expansion and pixel preprocessing; `video_question_inputs` picks between the two. The stock processor turns each `<video>` of
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


FALLBACK_PROMPT = "<|im_start|>user <video>\n{question}<|im_end|>\n<|im_start|>assistant\n"


def video_question_inputs(model_id: str, config: Any, frames: np.ndarray, question: str) -> dict:
    """`input_ids`, `attention_mask` and `pixel_values_videos` for one video and question, batch of one: from the
    checkpoint's processor when it loads, else rebuilt from its tokenizer and SigLIP-style preprocessing (the
    processor may be unsaved, or need torchvision, as transformers 5.x's video processor does)."""
    import logging

    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_id)
        prompt = processor.apply_chat_template(user_turn(question), add_generation_prompt=True)
        return dict(processor(text=prompt, videos=[frames], return_tensors="pt"))
    except (ImportError, OSError, ValueError) as err:
        logging.getLogger(__name__).warning(
            "processor unavailable (%s: %s); using the tokenizer and SigLIP preprocessing", type(err).__name__, err)
    return _tokenizer_inputs(model_id, config, frames, question)


def _tokenizer_inputs(model_id: str, config: Any, frames: np.ndarray, question: str) -> dict:
    """The processor's inputs rebuilt from the tokenizer: one `<video>` expanded to the stock placeholder run."""
    from transformers import AutoTokenizer

    from .checkpoints import image_normalisation

    tokenizer = AutoTokenizer.from_pretrained(model_id)
    prompt = None
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(user_turn(question), add_generation_prompt=True, tokenize=False)
    if not prompt or "<video>" not in prompt:
        prompt = FALLBACK_PROMPT.format(question=question)
    input_ids = video_prompt_ids(config, tokenizer, prompt, len(frames))[None]
    mean, std = image_normalisation(model_id)
    pixels = frames_to_pixels(frames, config.vision_config.image_size, mean, std)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values_videos": pixels[None]}
