"""A Hugging Face `Trainer` set up for video fine-tuning with DynTok (collator, checkpointing, precision)."""

from __future__ import annotations

from typing import Any

import torch

from ..hf.checkpoints import checkpointing_arguments
from .data import VideoQACollator


def build_trainer(
    model: torch.nn.Module,
    processor: Any,
    dataset: torch.utils.data.Dataset,
    checkpointing: bool = False,
    **training_args: Any,
):
    """An HF `Trainer` with the video collator; `training_args` are `TrainingArguments` fields.

    `checkpointing` turns on gradient (activation) checkpointing, non-reentrant so that frozen embeddings and LoRA
    need no input-gradient hooks. `remove_unused_columns` stays on: it keeps only the keys named in the patched
    `forward`'s signature, which `patch_llava` preserves (`functools.wraps`), so `pixel_values_videos` gets through.
    """
    from transformers import Trainer, TrainingArguments

    defaults = dict(report_to=[], save_strategy="no", logging_steps=1, remove_unused_columns=True)
    defaults.update(training_args)
    if checkpointing:
        defaults.update(checkpointing_arguments())
    args = TrainingArguments(**defaults)
    collator = VideoQACollator(processor.tokenizer.pad_token_id, padding_side="right")
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def resolve_precision(choice: str, cpu: bool) -> bool:
    """Whether to train in bf16: `auto` means on a CUDA device that supports it."""
    if choice == "bf16":
        return True
    if choice == "fp32":
        return False
    return not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
