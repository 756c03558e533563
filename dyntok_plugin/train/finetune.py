"""The fine-tuning command (`python -m dyntok_plugin.train.finetune`, `examples/finetune_hf.py`): parse the
arguments, load the data and the model, train with Hugging Face `Trainer` and save for inference.

One process:

    python -m dyntok_plugin.train.finetune --model CHECKPOINT --data train.jsonl --output-dir out

Several processes or GPUs (DDP, FSDP, DeepSpeed ZeRO-3): see `examples/accelerate/README.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..core.config import MARKERS, SIMILARITIES
from .checkpoint import save_for_inference
from .data import VideoQADataset, load_records
from .model import TRAINABLE_PARTS, count_parameters, setup_model
from .trainer import build_trainer, resolve_precision

logger = logging.getLogger(__name__)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fine-tune a Hugging Face LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL checkpoint with DynTok.")
    parser.add_argument("--model", required=True, help="LLaVA-OneVision or Qwen VL checkpoint (folder or hub id)")
    parser.add_argument("--data", required=True, help="JSONL of {video, question, answer[, num_frames]}")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-frames", type=int, default=8, help="frames per video when a record gives none")
    parser.add_argument("--threshold", type=float, default=0.7, help="DynTok threshold at inference (eval mode)")
    parser.add_argument("--train-threshold-range", type=float, nargs=2, default=(0.6, 0.9), metavar=("LO", "HI"))
    parser.add_argument("--fixed-threshold", action="store_true", help="train with --threshold, no random draws")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N",
                        help="pad spliced training sequences to a multiple of N (default: 64 with random thresholds)")
    parser.add_argument("--marker", default=None, choices=MARKERS,
                        help="grid marker layout (default: the host's: row for LLaVA-OneVision, none for Qwen VL)")
    parser.add_argument("--similarity", default="vision", choices=SIMILARITIES)
    parser.add_argument("--train", default="projector,marker,llm", help=f"comma list from {TRAINABLE_PARTS}")
    parser.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning of --train parts")
    parser.add_argument("--lora-alpha", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=1, help="per device")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on GPU")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cache-frames", action="store_true", help="keep decoded frames in memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config (when not given via accelerate)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    return parser.parse_args(argv)


def train(
    argv: Optional[Sequence[str]] = None,
    *,
    prepare_model: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None,
    callbacks: Sequence[Any] = (),
) -> tuple:
    """Parse `argv`, train and save; returns `(trainer, processor, dataset, output_dir)`.

    `prepare_model` sees the patched model before the trainer is built (e.g. to add measurement hooks) and returns
    the model to train; `callbacks` are extra `TrainerCallback`s.
    """
    from transformers import AutoProcessor, set_seed

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    set_seed(args.seed)
    bf16 = resolve_precision(args.precision, args.cpu)
    processor = AutoProcessor.from_pretrained(args.model)
    dataset = VideoQADataset(load_records(args.data, args.num_frames), processor, cache=args.cache_frames)
    model = _model(args)
    if prepare_model is not None:
        model = prepare_model(model)
    trainable, total = count_parameters(model)
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100.0 * trainable / total)
    trainer = build_trainer(
        model,
        processor,
        dataset,
        checkpointing=args.gradient_checkpointing,
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        bf16=bf16,
        seed=args.seed,
        deepspeed=args.deepspeed,
        use_cpu=args.cpu,
    )
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.train()
    out = save_for_inference(trainer, processor, args.output_dir)
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (out / "train_losses.json").write_text(json.dumps(losses))
        logger.info("saved %s (first loss %.4f, last loss %.4f)", out, losses[0], losses[-1])
    return trainer, processor, dataset, out


def _model(args: argparse.Namespace) -> torch.nn.Module:
    """The checkpoint with DynTok on and the chosen parts trainable, in float32 master weights (bf16 runs as
    autocast in Trainer or as DeepSpeed's bf16 mode)."""
    return setup_model(
        args.model,
        train_parts=args.train,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        threshold=args.threshold,
        train_threshold_range=None if args.fixed_threshold else tuple(args.train_threshold_range),
        marker=args.marker,
        similarity=args.similarity,
        dtype=torch.float32,
        **({} if args.pad_to_multiple_of is None else {"pad_to_multiple_of": args.pad_to_multiple_of}),
    )


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Train and save; returns the checkpoint folder."""
    return train(argv)[-1]


if __name__ == "__main__":
    main()
