"""Tiny random Hugging Face LLaVA-OneVision models and hand-built inputs for CPU tests.

Nothing here downloads anything. SigLIP at 32 px with 4 px patches gives an 8x8 grid, pooled 2x2 to 4x4, so a
video of F frames takes `F * 16 + 1` placeholder tokens (pooled grid plus the stock trailing `image_newline`).

The model, tokenizer and chat template come from the package (`dyntok_plugin.hf.synthetic`); this module adds
what only tests need:

- `tiny_config` / `build_tiny_llava_onevision`: config and seeded random model (eval mode).
- `video_tokens` / `image_tokens`: placeholder run lengths for this config.
- `sample_ids`: one sample's ids from text pieces, `("video", F)` and `("image", 1)` parts.
- `pad_batch`: left or right padding with an attention mask (and `-100` label padding).
- `random_videos` / `random_images`: seeded pixel tensors shaped as the processor makes them.
- `save_tiny_checkpoint`: a tiny model plus an offline tokenizer with a chat template, in a folder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from dyntok_plugin.hf.parts import vision_owner
from dyntok_plugin.hf.synthetic import (  # noqa: F401  (re-exported for the tests)
    CHAT_TEMPLATE,
    EOS_ID,
    FIRST_TEXT_ID,
    IMAGE_ID,
    PAD_ID,
    TINY_TEXT,
    TINY_VISION,
    VIDEO_ID,
    VOCAB_SIZE,
    build_tokenizer,
    llava_onevision_config,
    pad_rows,
    random_llava_onevision,
)

IMAGE_SIZE = TINY_VISION["image_size"]  # 384 for SigLIP-so400m
PATCH_SIZE = TINY_VISION["patch_size"]  # 14 for SigLIP-so400m
GRID = IMAGE_SIZE // PATCH_SIZE  # 27 for SigLIP-so400m
POOLED = math.ceil(GRID / 2)  # 14 for SigLIP-so400m


def tiny_config(**overrides):
    """A `LlavaOnevisionConfig` with an 8x8 vision grid (4x4 after pooling); keyword overrides win."""
    return llava_onevision_config(overrides.pop("vision_config", None), overrides.pop("text_config", None), **overrides)


def build_tiny_llava_onevision(seed: int = 0, attn_implementation: str = "eager", dtype=torch.float32, **overrides):
    """A seeded random `LlavaOnevisionForConditionalGeneration` in eval mode (~41k parameters)."""
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    return random_llava_onevision(config, seed=seed).to(dtype)


def _owner(model):
    """The module that holds the vision tower: `model.model` on transformers >= 4.52, the model itself before."""
    return vision_owner(model)


def video_tokens(frames: int) -> int:
    """Placeholder tokens the stock processor gives one video of `frames` frames: pooled grid + one newline."""
    return frames * POOLED * POOLED + 1


def image_tokens() -> int:
    """Placeholder tokens of one IMAGE_SIZE x IMAGE_SIZE image: base grid + one anyres tile with a newline per row."""
    return GRID * GRID + GRID * (GRID + 1)


def sample_ids(*parts) -> list:
    """One sample's token ids: each part is a list of text ids, `("video", F)` or `("image", n)` placeholders."""
    ids: list = []
    for part in parts:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            kind, count = part
            if kind == "video":
                ids += [VIDEO_ID] * video_tokens(count)
            elif kind == "image":
                ids += [IMAGE_ID] * (image_tokens() * count)
            else:
                raise ValueError(f"unknown part kind {kind!r}; use 'video' or 'image'")
        else:
            ids += [int(i) for i in part]
    return ids


def text_ids(length: int, seed: int) -> list:
    """`length` random ordinary text ids (never special ids), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TEXT_ID, VOCAB_SIZE, (length,), generator=gen).tolist()


def pad_batch(samples: Iterable[Sequence[int]], side: str = "left", labels: bool = False):
    """Pad samples to one length on `side`; returns `dict(input_ids, attention_mask[, labels])` as tensors.

    With `labels=True` the labels copy the ids, with `-100` on padding and on image/video placeholders.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    ids, mask = pad_rows([list(s) for s in samples], side, PAD_ID)
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels:
        lab = ids.masked_fill(mask == 0, -100)
        batch["labels"] = lab.masked_fill((ids == VIDEO_ID) | (ids == IMAGE_ID), -100)
    return batch


def random_videos(num_videos: int, frames: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """`(num_videos, frames, 3, IMAGE_SIZE, IMAGE_SIZE)` normalised pixels with some spatial smoothness.

    Neighbouring columns are correlated (a blurred noise field) so a middle threshold merges some tokens
    and not others, as real frames do.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_videos * frames, 3, IMAGE_SIZE // 8, IMAGE_SIZE // 8, generator=gen)
    fine = torch.randn(num_videos * frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    pixels = (smooth + 0.3 * fine).clamp(-1, 1)
    return pixels.view(num_videos, frames, 3, IMAGE_SIZE, IMAGE_SIZE).to(dtype)


def random_images(num_images: int, seed: int = 0, dtype=torch.float32):
    """`(pixel_values, image_sizes)` for `num_images` square images: base view plus one anyres tile each."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(num_images, 2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1
    sizes = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE]] * num_images, dtype=torch.long)
    return pixels.to(dtype), sizes


def save_tiny_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny model and its offline tokenizer to `folder`, loadable with `from_pretrained(folder)`."""
    folder = Path(folder)
    model = build_tiny_llava_onevision(seed=seed)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder
