"""Tiny random LLaVA-NeXT (`llavaction` fork) models and inputs for CPU tests.

The real `LlavaQwenForCausalLM` from the PyPI fork `llavaction` (or, with `DYNTOK_TEST_LLAVA_PACKAGE=llava`,
from upstream LLaVA-NeXT installed from git) with a 2-layer Qwen2 of width 32. Only the vision tower is replaced
(the real SigLIP tower hard-codes 384 px and calls `from_pretrained`): `TinyTower` is a real module with the
attributes LLaVA-NeXT reads, an 8x8 patch grid of width 24, so videos pool to 4x4 per frame.
Test modules call `require_host()` first: it skips them where the package is absent. Two test-only shims let the
host import and run on transformers 4.56+ and 5.x (never shipped in the plugin).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from typing import Optional, Sequence

import torch
from torch import nn

from dyntok_plugin.hf.synthetic import pad_rows

PACKAGE = os.environ.get("DYNTOK_TEST_LLAVA_PACKAGE", "llavaction")
IMAGE_TOKEN = -200  # LLaVA-NeXT's IMAGE_TOKEN_INDEX: one per image or video in input_ids
IGNORE = -100
PATCHES_PER_SIDE = 8
POOLED_SIDE = 4
VISION_WIDTH = 24
HIDDEN = 32
PIXELS = 32


class TinyTower(nn.Module):
    """A stand-in SigLIP tower: `(N, 3, 32, 32)` -> `(N, 64, 24)` patch features."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, VISION_WIDTH, kernel_size=PIXELS // PATCHES_PER_SIDE, stride=PIXELS // PATCHES_PER_SIDE)
        self.is_loaded = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch(images.to(self.dtype)).flatten(2).transpose(1, 2)

    @property
    def num_patches_per_side(self) -> int:
        return PATCHES_PER_SIDE

    @property
    def num_patches(self) -> int:
        return PATCHES_PER_SIDE**2

    @property
    def hidden_size(self) -> int:
        return VISION_WIDTH

    @property
    def image_size(self) -> int:
        return PIXELS

    @property
    def dtype(self) -> torch.dtype:
        return self.patch.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch.weight.device


def require_host() -> None:
    """Skip the calling test module unless the LLaVA-NeXT package is installed; import it through shim 1."""
    import pytest

    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(f"{PACKAGE} (LLaVA-NeXT) is not installed", allow_module_level=True)
    _shim_removed_transformers_names()
    pytest.importorskip(PACKAGE)


def _llava_qwen():
    """The host's `llava_qwen` module, with shim 2 applied to its config class."""
    module = importlib.import_module(f"{PACKAGE}.model.language_model.llava_qwen")
    _shim_rope_scaling_reset(module.LlavaQwenConfig)
    return module


_QFORMER_NAMES = ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer")


def _shim_removed_transformers_names() -> None:
    """Test-only shim 1: LLaVA-NeXT's unused Q-Former imports helpers that transformers 4.56+ no longer re-exports
    from `modeling_utils` (and 5.x dropped one); put them back, or a stub that raises if ever called."""
    from transformers import modeling_utils, pytorch_utils

    for name in _QFORMER_NAMES:
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name, None) or _unavailable(name))


def _unavailable(name: str):
    def stub(*args, **kwargs):
        raise NotImplementedError(f"transformers {name} is gone; the tests never use LLaVA-NeXT's Q-Former.")

    return stub


def _shim_rope_scaling_reset(config_class) -> None:
    """Test-only shim 2 (transformers 5.x): `LlavaQwenForCausalLM.__init__` sets `config.rope_scaling = None`, which
    5.x turns into `rope_parameters = None` and breaks Qwen2's rotary embedding; ignore that reset."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5 or "rope_scaling" in config_class.__dict__:
        return

    def get(self):
        return getattr(self, "rope_parameters", None)

    def set_(self, value):
        if value is not None:
            self.rope_parameters = value

    config_class.rope_scaling = property(get, set_)


def tiny_config(**overrides):
    """A `LlavaQwenConfig` for the tiny model; `overrides` change any field (e.g. `mm_newline_position`)."""
    LlavaQwenConfig = _llava_qwen().LlavaQwenConfig
    fields = dict(
        vocab_size=128,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        mm_vision_tower="google/siglip-so400m-patch14-384",  # a name only: delay_load keeps it unloaded
        delay_load=True,
        mm_hidden_size=VISION_WIDTH,
        mm_projector_type="mlp2x_gelu",
        mm_patch_merge_type="spatial_unpad",
        mm_newline_position="grid",
        mm_spatial_pool_mode="bilinear",
        image_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[PIXELS, PIXELS]],
        add_faster_video=False,
        tokenizer_padding_side="left",
        tokenizer_model_max_length=4096,
    )
    fields.update(overrides)
    return LlavaQwenConfig(**fields)


def tiny_model(seed: int = 0, **overrides):
    """A tiny random `LlavaQwenForCausalLM` in eval mode with `TinyTower` and an initialised `image_newline`."""
    torch.manual_seed(seed)
    model = _llava_qwen().LlavaQwenForCausalLM(tiny_config(**overrides))
    inner = model.get_model()
    inner.vision_tower = TinyTower()
    if hasattr(inner, "image_newline"):
        nn.init.normal_(inner.image_newline, std=1 / math.sqrt(HIDDEN))
    return model.eval()


def video(frames: int, seed: int = 0, smooth: bool = True) -> torch.Tensor:
    """`(frames, 3, 32, 32)` pixels. `smooth` makes horizontally neighbouring patches alike, so rows merge at
    moderate thresholds; otherwise plain noise."""
    gen = torch.Generator().manual_seed(seed)
    if not smooth:
        return torch.randn(frames, 3, PIXELS, PIXELS, generator=gen)
    coarse = torch.randn(frames, 3, PIXELS, 3, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(PIXELS, PIXELS), mode="bilinear", align_corners=True)


def prompt(before: Sequence[int] = (5, 6), after: Sequence[int] = (7, 8)) -> list:
    """Token ids with one image/video placeholder."""
    return [*before, IMAGE_TOKEN, *after]


def left_pad(rows: Sequence[Sequence[int]], pad: int = 0):
    """Left-padded `input_ids` and `attention_mask` for prompts of different lengths."""
    return pad_rows(rows, "left", pad)


def labels_for(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Labels that train on every text token after the placeholder and ignore the rest."""
    labels = torch.full_like(input_ids, IGNORE)
    for i, row in enumerate(input_ids):
        hits = (row == IMAGE_TOKEN).nonzero()
        start = int(hits[-1]) + 1 if len(hits) else 0
        labels[i, start:] = row[start:]
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE
    return labels


def embeds(model, input_ids, images, modalities, attention_mask=None, labels=None):
    """`(inputs_embeds, attention_mask, labels)` as the host splices them (works for the 6- and 7-tuple forks)."""
    out = model.prepare_inputs_labels_for_multimodal(
        input_ids, None, attention_mask, None, labels, images, modalities, image_sizes=[(PIXELS, PIXELS)] * len(images)
    )
    return out[4], out[2], out[5]
