"""Reading Hugging Face checkpoints: side files saved next to the weights, and the version-dependent options of
loading (`dtype`/`torch_dtype`) and training (activation/gradient checkpointing): every transformers-version
difference of the tools goes through here or `common.transformers_version`.

Shared by the `dyntok` command, the frame encoders, the lmms-eval backends and the examples, so that each
reads a checkpoint's chat template and image normalisation the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import transformers_version

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# The transformers class of each host's checkpoints, by `model_type`.
VIDEO_MODEL_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}
QWEN_MODEL_TYPES = tuple(t for t in VIDEO_MODEL_CLASSES if t.startswith("qwen"))


def video_model_class(model_type: str):
    """The `...ForConditionalGeneration` class for a host's `model_type`; `ValueError` naming the known types or
    the transformers upgrade needed."""
    import transformers

    if model_type not in VIDEO_MODEL_CLASSES:
        raise ValueError(f"model_type {model_type!r} is not a host DynTok knows; known: {sorted(VIDEO_MODEL_CLASSES)}")
    found = getattr(transformers, VIDEO_MODEL_CLASSES[model_type], None)
    if found is None:
        raise ValueError(f"transformers {transformers.__version__} has no {VIDEO_MODEL_CLASSES[model_type]} "
                         f"(model_type {model_type!r}); upgrade transformers")
    return found


def dtype_argument(dtype: Any) -> dict:
    """The `from_pretrained` keyword for the weights' dtype (`torch_dtype` before transformers 4.56)."""
    return {"dtype" if transformers_version() >= (4, 56) else "torch_dtype": dtype}


def host_model_class(id_or_path: Any) -> Any:
    """The transformers class DynTok patches for a checkpoint (folder or hub id), by its `model_type`
    (`video_model_class`): any other model type is an error, since it would load with freshly initialised weights."""
    import transformers

    return video_model_class(getattr(transformers.AutoConfig.from_pretrained(str(id_or_path)), "model_type", None))


def checkpointing_arguments() -> dict:
    """The `TrainingArguments` fields that turn on non-reentrant activation checkpointing (`activation_*` since
    transformers 5.x renamed them, `gradient_*` before)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {f"{prefix}_checkpointing": True, f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}


def checkpoint_file(id_or_path: str, names: Sequence[str]) -> Path | None:
    """The first of `names` saved with the checkpoint (folder or cached hub id), or None when none is."""
    from transformers.utils import cached_file

    for name in names:
        try:
            path = cached_file(id_or_path, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            return Path(path)
    return None


def image_normalisation(id_or_path: str, default: tuple = (SIGLIP_MEAN, SIGLIP_STD)) -> tuple[tuple, tuple]:
    """Mean/std from the checkpoint's (video) preprocessor config when it has them, else `default` (SigLIP's
    0.5/0.5; the host's own processor defaults for other hosts)."""
    for name in PREPROCESSOR_FILES:
        path = checkpoint_file(id_or_path, [name])
        if path is not None:
            values = json.loads(path.read_text(encoding="utf-8"))
            if "image_mean" in values and "image_std" in values:
                return tuple(values["image_mean"]), tuple(values["image_std"])
    return default


def saved_chat_template(id_or_path: str) -> str | None:
    """The processor's chat template saved with the checkpoint (`.jinja` or `.json`), or None."""
    path = checkpoint_file(id_or_path, CHAT_TEMPLATE_FILES)
    if path is None:
        return None
    text = path.read_text(encoding="utf-8")
    return json.loads(text)["chat_template"] if path.suffix == ".json" else text
