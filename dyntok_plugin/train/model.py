"""Loading a checkpoint for fine-tuning with DynTok on, and choosing what trains (full or LoRA)."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch

from ..api import patch_llava, unwrap_model
from ..hf.checkpoints import dtype_argument, host_model_class
from ..hf.parts import find_parts

TRAINABLE_PARTS = ("projector", "marker", "llm", "vision")
LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LINEAR = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
QWEN_VISION_LINEAR = ("qkv", "proj", "gate_proj", "up_proj", "down_proj", "linear_fc1", "linear_fc2")
RANDOM_THRESHOLD_PADDING = 64  # measured: benchmarks/NOTES-train.md


def parse_parts(parts: str | Sequence[str]) -> tuple[str, ...]:
    """`"projector,marker"` → `("projector", "marker")`, validated against TRAINABLE_PARTS."""
    names = tuple(p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts) if p.strip())
    unknown = sorted(set(names) - set(TRAINABLE_PARTS))
    if unknown or not names:
        raise ValueError(f"trainable parts must be a non-empty subset of {TRAINABLE_PARTS}, got {names!r}")
    return names


def host_parts(model: torch.nn.Module) -> dict[str, list]:
    """The modules (or parameters) of each trainable part: `vision`, `projector`, `marker`, `llm` (with the head)."""
    parts = find_parts(unwrap_model(model))
    return {
        "vision": [parts.vision_tower],
        "projector": [parts.projector],
        "marker": [parts.marker] if parts.marker is not None else [],
        "llm": [parts.language_model] + ([parts.lm_head] if parts.lm_head is not None else []),
    }


def set_trainable(model: torch.nn.Module, parts: Sequence[str]) -> None:
    """Freeze the model except the chosen `host_parts` (`vision`, `projector`, `marker`, `llm`)."""
    model.requires_grad_(False)
    for name, items in host_parts(model).items():
        if name in parts:
            for item in items:
                item.requires_grad_(True)


def setup_model(
    model_path: str | os.PathLike,
    *,
    train_parts: str | Sequence[str] = ("projector", "marker", "llm"),
    lora_rank: int = 0,
    lora_alpha: Optional[int] = None,
    threshold: float = 0.7,
    train_threshold_range: Optional[tuple[float, float]] = (0.6, 0.9),
    marker: Optional[str] = None,
    similarity: str = "vision",
    dtype: torch.dtype = torch.float32,
    attn_implementation: Optional[str] = None,
    pad_to_multiple_of: Optional[int] = ...,
    **dyntok_settings: Any,
) -> torch.nn.Module:
    """Load a checkpoint, switch DynTok on, and choose what trains.

    The checkpoint may be LLaVA-OneVision or Qwen2.5-VL / Qwen3-VL (`host_model_class`); `marker=None` keeps the
    host's default layout (`"row"` with LLaVA-OneVision's `image_newline`, `"none"` for Qwen VL, whose other
    layouts train a marker the plugin owns). Full fine-tuning (`lora_rank=0`) trains the chosen `train_parts`.
    With LoRA (`lora_rank>0`), the LLM and vision tower, when chosen, get LoRA adapters on their linear layers,
    while the projector and the marker are trained in full (PEFT `modules_to_save` for the projector; the marker
    is a bare parameter, so it stays trainable on the base model and is kept by `save_for_inference`).

    `pad_to_multiple_of` defaults to `RANDOM_THRESHOLD_PADDING` (64) when thresholds are drawn at random, else
    None: random thresholds give a new sequence length every step, and each new length costs attention-kernel
    planning and allocator work that padding to a multiple avoids (`benchmarks/NOTES-train.md`); fixed lengths
    need no padding, which would only add a mask.
    """
    parts = parse_parts(train_parts)
    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {lora_rank}")
    if lora_rank > 0 and not {"llm", "vision"} & set(parts):
        raise ValueError(f"LoRA needs 'llm' or 'vision' among the trainable parts, got {parts}; or use rank 0")
    kwargs: dict[str, Any] = dtype_argument(dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = host_model_class(model_path).from_pretrained(model_path, **kwargs)
    if pad_to_multiple_of is ...:
        pad_to_multiple_of = RANDOM_THRESHOLD_PADDING if train_threshold_range is not None else None
    patch_llava(
        model,
        pad_to_multiple_of=pad_to_multiple_of,
        threshold=threshold,
        train_threshold_range=train_threshold_range,
        similarity=similarity,
        **({} if marker is None else {"marker": marker}),
        **dyntok_settings,
    )
    if lora_rank == 0:
        set_trainable(model, parts)
        return model
    return _add_lora(model, parts, lora_rank, lora_alpha or 2 * lora_rank)


def _add_lora(model: torch.nn.Module, parts: Sequence[str], rank: int, alpha: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    qwen = hasattr(getattr(model, "model", None), "visual")
    patterns = []
    if "llm" in parts:
        patterns.append(rf".*language_model.*\.({'|'.join(LLM_LINEAR)})")
    if "vision" in parts and qwen:
        patterns.append(rf".*visual\.blocks.*\.({'|'.join(QWEN_VISION_LINEAR)})")
    elif "vision" in parts:
        patterns.append(rf".*vision_tower.*\.({'|'.join(VISION_LINEAR)})")
    projectors = ["merger", "deepstack_merger_list"] if qwen else ["multi_modal_projector"]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules="|".join(f"({p})" for p in patterns),
        modules_to_save=projectors if "projector" in parts else None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if "marker" in parts:
        for marker in host_parts(peft_model)["marker"]:
            marker.requires_grad_(True)
    return peft_model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
