"""Fine-tuning with DynTok on: data, model set-up, the Trainer, saving and loading for inference, launchers.

    from dyntok_plugin.train import setup_model, build_trainer, save_for_inference, load_for_inference

`python -m dyntok_plugin.train.finetune` (and `examples/finetune_hf.py`) is the whole Hugging Face recipe as a
command; `python -m dyntok_plugin.train.llava_next` runs LLaVA-NeXT's own training script with DynTok on.
Requires `pip install "dyntok-plugin[train]"` (accelerate, peft); PyAV for the dataset.
"""

from ..hf.splice import IGNORE_INDEX
from .checkpoint import DYNTOK_FILE, full_tensor, load_for_inference, save_for_inference
from .data import VideoQACollator, VideoQADataset, VideoQARecord, encode_example, load_records, split_conversation
from .model import (
    LLM_LINEAR,
    TRAINABLE_PARTS,
    VISION_LINEAR,
    count_parameters,
    host_parts,
    parse_parts,
    set_trainable,
    setup_model,
)
from .trainer import build_trainer, resolve_precision

__all__ = [
    "DYNTOK_FILE",
    "IGNORE_INDEX",
    "LLM_LINEAR",
    "TRAINABLE_PARTS",
    "VISION_LINEAR",
    "VideoQACollator",
    "VideoQADataset",
    "VideoQARecord",
    "build_trainer",
    "count_parameters",
    "encode_example",
    "full_tensor",
    "host_parts",
    "load_for_inference",
    "load_records",
    "parse_parts",
    "resolve_precision",
    "save_for_inference",
    "set_trainable",
    "setup_model",
    "split_conversation",
]
