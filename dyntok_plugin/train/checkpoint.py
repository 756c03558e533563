"""Saving a fine-tuned model for inference and loading it back with DynTok on (full weights or LoRA)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..api import CONFIG_ATTRIBUTE, patch_llava, unwrap_model
from ..hf.checkpoints import dtype_argument, host_model_class
from ..hf.parts import PLUGIN_MARKER, find_parts

DYNTOK_FILE = "dyntok.json"
PLUGIN_MARKER_KEY = PLUGIN_MARKER  # the marker DynTok registers on hosts without one (Qwen VL)


def save_for_inference(trainer: Any, processor: Any, output_dir: str | os.PathLike) -> Path:
    """Save what `load_for_inference` needs: weights, `config.json` (with `dyntok`), processor.

    Full fine-tuning saves the whole model through `trainer.save_model` (gathers FSDP/ZeRO-3 shards). LoRA saves the
    adapter, the projector and the marker, plus `dyntok.json` with the DynTok settings of the base model. A marker
    the plugin owns (Qwen VL with a marker layout) is not part of the host's weights: `dyntok.json` keeps it too.
    """
    output_dir = Path(output_dir)
    trainer.save_model(str(output_dir))
    base = unwrap_model(trainer.model)
    lora = hasattr(trainer.model, "peft_config")
    owned = plugin_owned_marker(base)
    key = PLUGIN_MARKER_KEY if owned else "image_newline"
    marker = find_parts(base).marker if lora or owned else None
    marker = full_tensor(marker) if marker is not None else None  # collective under ZeRO-3: every rank
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(output_dir))
        if lora or owned:
            saved = {"dyntok": getattr(base.config, CONFIG_ATTRIBUTE)}
            if marker is not None:
                saved[key] = marker.tolist()
            (output_dir / DYNTOK_FILE).write_text(json.dumps(saved, indent=1))
    trainer.accelerator.wait_for_everyone()
    return output_dir


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy of a parameter, gathered first if DeepSpeed ZeRO-3 partitioned it (call on every rank)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().float().cpu().clone()
    return param.detach().float().cpu().clone()


def load_for_inference(
    checkpoint: str | os.PathLike, base_model: Optional[str] = None, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Load a `save_for_inference` folder in eval mode with DynTok on, using the settings saved with it.

    A LoRA folder is merged into its base model (`base_model`, else the path recorded in the adapter config).
    """
    checkpoint = Path(checkpoint)
    adapter_config = checkpoint / "adapter_config.json"
    side_file = checkpoint / DYNTOK_FILE
    saved = json.loads(side_file.read_text()) if side_file.is_file() else {}
    if not adapter_config.is_file():
        model = host_model_class(checkpoint).from_pretrained(checkpoint, **dtype_argument(dtype))
        if not isinstance(getattr(model.config, "dyntok", None), dict):
            raise ValueError(f"{str(checkpoint)!r} has no DynTok settings in config.json; was it saved after patch_llava?")
        return _restore_plugin_marker(patch_llava(model), saved).eval()
    from peft import PeftModel

    base_model = base_model or json.loads(adapter_config.read_text())["base_model_name_or_path"]
    model = host_model_class(base_model).from_pretrained(base_model, **dtype_argument(dtype))
    if "image_newline" in saved:
        with torch.no_grad():
            marker = find_parts(model).marker
            marker.copy_(torch.tensor(saved["image_newline"], dtype=marker.dtype))
    model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    return _restore_plugin_marker(patch_llava(model, **saved["dyntok"]), saved).eval()


def plugin_owned_marker(model: torch.nn.Module) -> bool:
    """Whether the patched model's marker is one the plugin registered (not a host weight like `image_newline`)."""
    return PLUGIN_MARKER_KEY in getattr(model, "_parameters", {})


def _restore_plugin_marker(model: torch.nn.Module, saved: dict) -> torch.nn.Module:
    """Copy a saved plugin-owned marker into the freshly patched model."""
    if PLUGIN_MARKER_KEY in saved and plugin_owned_marker(model):
        with torch.no_grad():
            marker = find_parts(model).marker
            marker.copy_(torch.tensor(saved[PLUGIN_MARKER_KEY], dtype=marker.dtype))
    return model
