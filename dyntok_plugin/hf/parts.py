"""Where a Hugging Face LLaVA-style model keeps its vision tower, projector, marker and language model.

transformers moved these parts from the top-level model onto `model.model` in 4.52; every place that needs them
(the host patch, training's trainable parts, the command's encoder, the benchmarks) asks here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn

VISION_PARTS = ("vision_tower", "multi_modal_projector")
PLUGIN_MARKER = "dyntok_marker"  # the marker DynTok registers on hosts without one (Qwen VL), a model parameter


def vision_owner(model: nn.Module, needed: Sequence[str] = VISION_PARTS) -> Optional[nn.Module]:
    """The module that holds every attribute in `needed`: `model.model` (transformers >= 4.52), else the model
    itself (earlier layout); None when neither does."""
    for candidate in (getattr(model, "model", None), model):
        if candidate is not None and all(hasattr(candidate, name) for name in needed):
            return candidate
    return None


@dataclass(frozen=True)
class ModelParts:
    """The parts of a LLaVA-style model that DynTok and fine-tuning address by role."""

    owner: nn.Module  # the module holding the vision tower and projector
    vision_tower: nn.Module
    projector: nn.Module
    marker: Optional[nn.Parameter]  # `image_newline`; None for hosts without one
    language_model: nn.Module
    lm_head: Optional[nn.Module]


def find_parts(model: nn.Module) -> ModelParts:
    """The `ModelParts` of a bare (unwrapped) HF LLaVA-style or Qwen VL model; `TypeError` naming what is missing
    otherwise. Qwen VL: the tower is `visual`, the projector its patch merger (with Qwen3-VL's DeepStack mergers),
    the marker the one DynTok registers as `dyntok_marker` (None before patching or with `marker="none"`)."""
    qwen = getattr(model, "model", None)
    if qwen is not None and hasattr(qwen, "visual") and hasattr(qwen, "language_model"):
        visual = qwen.visual
        return ModelParts(
            owner=qwen,
            vision_tower=visual,
            projector=nn.ModuleList([visual.merger, *getattr(visual, "deepstack_merger_list", [])]),
            marker=model._parameters.get(PLUGIN_MARKER),
            language_model=qwen.language_model,
            lm_head=getattr(model, "lm_head", None),
        )
    owner = vision_owner(model)
    if owner is None:
        raise TypeError(
            f"{type(model).__name__} has no {' / '.join(VISION_PARTS)} (on the model or on model.model); give a "
            "LLaVA-OneVision model (unwrap PEFT/DDP wrappers first with dyntok_plugin.api.unwrap_model)."
        )
    return ModelParts(
        owner=owner,
        vision_tower=owner.vision_tower,
        projector=owner.multi_modal_projector,
        marker=getattr(owner, "image_newline", None),
        language_model=owner.language_model,
        lm_head=getattr(model, "lm_head", None),
    )
