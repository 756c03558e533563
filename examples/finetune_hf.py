"""Fine-tune a Hugging Face LLaVA-OneVision checkpoint with DynTok, on a JSONL file of video questions and answers.

Each JSONL line is one example::

    {"video": "clips/a.mp4", "question": "What happens?", "answer": "A car turns left.", "num_frames": 8}

`video` is absolute or relative to the JSONL file; `num_frames` is optional (default `--num-frames`). Only the
answer (and the chat template's end-of-turn) is trained on: every other label is -100, and the DynTok patch sets
the visual positions to -100 itself when it re-splices the compressed video tokens.

DynTok's second training stage draws the threshold per video from `--train-threshold-range`; inference uses the
fixed `--threshold`. Both are saved in `config.json` (`dyntok`), so `load_for_inference(output_dir)` restores them.

One process::

    python examples/finetune_hf.py --model CHECKPOINT --data train.jsonl --output-dir out

Several processes or GPUs (DDP, FSDP, DeepSpeed ZeRO-3): see `examples/accelerate/README.md`.

The reusable parts (`load_records`, `encode_example`, `VideoQADataset`, `VideoQACollator`, `setup_model`,
`build_trainer`, `save_for_inference`, `load_for_inference`) import without side effects.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from dyntok_plugin import patch_llava
from dyntok_plugin.api import unwrap_model
from dyntok_plugin.video import load_video

logger = logging.getLogger("finetune_hf")

IGNORE_INDEX = -100
TRAINABLE_PARTS = ("projector", "marker", "llm", "vision")
LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LINEAR = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
DYNTOK_FILE = "dyntok.json"


# --------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VideoQARecord:
    """One training example: a video file, a question about it and the answer to learn."""

    video: str
    question: str
    answer: str
    num_frames: int


def load_records(path: str | os.PathLike, num_frames: int = 8) -> list[VideoQARecord]:
    """Read and validate a JSONL file of `{"video", "question", "answer"[, "num_frames"]}` lines.

    Relative video paths are resolved against the JSONL file's folder, so a dataset folder can be moved as a whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {str(path)!r}; pass --data PATH_TO.jsonl")
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}, line {line_no}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg}); write one JSON object per line") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where} is a {type(item).__name__}, not an object; write one JSON object per line")
        missing = [key for key in ("video", "question", "answer") if not isinstance(item.get(key), str)]
        if missing:
            raise ValueError(f"{where} lacks the string field(s) {missing}; each line needs video, question, answer")
        if not item["answer"].strip():
            raise ValueError(f"{where} has an empty answer; nothing would be trained on, give a non-empty answer")
        frames = item.get("num_frames", num_frames)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"{where}: num_frames must be a positive integer, got {frames!r}")
        video = Path(item["video"])
        video = video if video.is_absolute() else path.parent / video
        if not video.is_file():
            raise FileNotFoundError(f"{where}: video {str(video)!r} not found; paths are relative to the JSONL file")
        records.append(VideoQARecord(str(video), item["question"], item["answer"], frames))
    if not records:
        raise ValueError(f"{str(path)!r} holds no examples; write one JSON object per line")
    return records


def split_conversation(processor: Any, question: str, answer: str) -> tuple[str, str]:
    """The generation prompt (with the `<video>` slot) and the text to learn: the answer plus the end of turn.

    The prompt is what inference sends (`add_generation_prompt=True`); the end-of-turn string (e.g. `<|im_end|>`)
    is read off the checkpoint's own template rendering the answer, so the model learns to stop. Templates may
    render the assistant header differently in the two cases (LLaVA-OneVision's does), hence this split.
    """
    user = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
    assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template([user, assistant], tokenize=False)
    at = full.rfind(answer)
    if at < 0:
        raise ValueError(
            "the chat template does not render the answer verbatim, so its end of turn cannot be found; "
            "use a template that writes the assistant's text as given"
        )
    return prompt, answer + full[at + len(answer) :]


def encode_example(processor: Any, frames: np.ndarray, question: str, answer: str) -> dict[str, torch.Tensor]:
    """One example as model inputs: `input_ids`, `attention_mask`, `labels` (answer only), `pixel_values_videos`.

    The prompt goes through the processor (which expands `<video>` into its placeholder run); the answer is
    tokenized on its own and appended, so the label span is exact whatever the tokenizer does at the boundary.
    """
    prompt, target = split_conversation(processor, question, answer)
    encoded = processor(text=[prompt], videos=[frames], return_tensors="pt")
    prompt_ids = encoded["input_ids"][0]
    target_ids = torch.tensor(processor.tokenizer(target, add_special_tokens=False)["input_ids"], dtype=torch.long)
    input_ids = torch.cat([prompt_ids, target_ids])
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "pixel_values_videos": encoded["pixel_values_videos"][0],
    }


class VideoQADataset(torch.utils.data.Dataset):
    """Decodes each record's video with PyAV and encodes it with the checkpoint's processor.

    `cache=True` keeps the decoded frames in memory (small datasets, many epochs).
    """

    def __init__(self, records: Sequence[VideoQARecord], processor: Any, cache: bool = False):
        self.records = list(records)
        self.processor = processor
        self._frames: Optional[dict[int, np.ndarray]] = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def frames(self, index: int) -> np.ndarray:
        if self._frames is not None and index in self._frames:
            return self._frames[index]
        record = self.records[index]
        frames = load_video(record.video, record.num_frames)
        if self._frames is not None:
            self._frames[index] = frames
        return frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        return encode_example(self.processor, self.frames(index), record.question, record.answer)


class VideoQACollator:
    """Pads encoded examples into a batch (labels padded with -100) and batches their videos.

    Videos with one frame count are stacked into the stock `(B, F, 3, H, W)` tensor; a batch that mixes frame counts
    gets a list of `(F_i, 3, H, W)` tensors, which the DynTok patch accepts (the unpatched model does not).
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        needed = ("input_ids", "labels", "pixel_values_videos")
        for example in examples:
            absent = [key for key in needed if key not in example]
            if absent:
                raise KeyError(
                    f"an example lacks {absent}; with Trainer keep them by leaving the patched forward's signature "
                    "intact (patch_llava does) or set remove_unused_columns=False"
                )
        width = max(int(example["input_ids"].shape[0]) for example in examples)
        batch = {
            "input_ids": torch.full((len(examples), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
            "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long),
        }
        for row, example in enumerate(examples):
            length = int(example["input_ids"].shape[0])
            span = slice(0, length) if self.padding_side == "right" else slice(width - length, width)
            batch["input_ids"][row, span] = example["input_ids"]
            batch["attention_mask"][row, span] = 1
            batch["labels"][row, span] = example["labels"]
        videos = [example["pixel_values_videos"] for example in examples]
        same_frames = len({int(video.shape[0]) for video in videos}) == 1
        batch["pixel_values_videos"] = torch.stack(videos) if same_frames else videos
        return batch


# -------------------------------------------------------------------------------------------------- model


def parse_parts(parts: str | Sequence[str]) -> tuple[str, ...]:
    """`"projector,marker"` → `("projector", "marker")`, validated against TRAINABLE_PARTS."""
    names = tuple(p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts) if p.strip())
    unknown = sorted(set(names) - set(TRAINABLE_PARTS))
    if unknown or not names:
        raise ValueError(f"trainable parts must be a non-empty subset of {TRAINABLE_PARTS}, got {names!r}")
    return names


def host_parts(model: torch.nn.Module) -> dict[str, Any]:
    """The vision tower, projector, marker (`image_newline`) and language model of a LLaVA-OneVision model."""
    base = unwrap_model(model)
    owner = base.model if hasattr(getattr(base, "model", None), "vision_tower") else base
    llm = [owner.language_model] + ([base.lm_head] if getattr(base, "lm_head", None) is not None else [])
    return {
        "vision": [owner.vision_tower],
        "projector": [owner.multi_modal_projector],
        "marker": [owner.image_newline],
        "llm": llm,
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
    marker: str = "row",
    similarity: str = "vision",
    dtype: torch.dtype = torch.float32,
    attn_implementation: Optional[str] = None,
    **dyntok_settings: Any,
) -> torch.nn.Module:
    """Load a checkpoint, switch DynTok on, and choose what trains.

    Full fine-tuning (`lora_rank=0`) trains the chosen `train_parts`. With LoRA (`lora_rank>0`), the LLM and vision
    tower, when chosen, get LoRA adapters on their linear layers, while the projector and the marker are trained
    in full (PEFT `modules_to_save` for the projector; the marker is a bare parameter, so it stays trainable on the
    base model and is kept by `save_for_inference`).
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    parts = parse_parts(train_parts)
    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {lora_rank}")
    if lora_rank > 0 and not {"llm", "vision"} & set(parts):
        raise ValueError(f"LoRA needs 'llm' or 'vision' among the trainable parts, got {parts}; or use rank 0")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(model_path, **kwargs)
    patch_llava(
        model,
        threshold=threshold,
        train_threshold_range=train_threshold_range,
        marker=marker,
        similarity=similarity,
        **dyntok_settings,
    )
    if lora_rank == 0:
        set_trainable(model, parts)
        return model
    return _add_lora(model, parts, lora_rank, lora_alpha or 2 * lora_rank)


def _add_lora(model: torch.nn.Module, parts: Sequence[str], rank: int, alpha: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    patterns = []
    if "llm" in parts:
        patterns.append(rf".*language_model.*\.({'|'.join(LLM_LINEAR)})")
    if "vision" in parts:
        patterns.append(rf".*vision_tower.*\.({'|'.join(VISION_LINEAR)})")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules="|".join(f"({p})" for p in patterns),
        modules_to_save=["multi_modal_projector"] if "projector" in parts else None,
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


# ------------------------------------------------------------------------------------------------ training


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
    import dataclasses

    from transformers import Trainer, TrainingArguments

    defaults = dict(report_to=[], save_strategy="no", logging_steps=1, remove_unused_columns=True)
    defaults.update(training_args)
    if checkpointing:
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        prefix = "activation" if "activation_checkpointing" in names else "gradient"  # renamed in transformers 5.x
        defaults[f"{prefix}_checkpointing"] = True
        defaults[f"{prefix}_checkpointing_kwargs"] = {"use_reentrant": False}
    args = TrainingArguments(**defaults)
    collator = VideoQACollator(processor.tokenizer.pad_token_id, padding_side="right")
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def save_for_inference(trainer: Any, processor: Any, output_dir: str | os.PathLike) -> Path:
    """Save what `load_for_inference` needs: weights, `config.json` (with `dyntok`), processor.

    Full fine-tuning saves the whole model through `trainer.save_model` (gathers FSDP/ZeRO-3 shards). LoRA saves the
    adapter, the projector and the marker, plus `dyntok.json` with the DynTok settings of the base model.
    """
    from dyntok_plugin.api import CONFIG_ATTRIBUTE

    output_dir = Path(output_dir)
    trainer.save_model(str(output_dir))
    base = unwrap_model(trainer.model)
    lora = hasattr(trainer.model, "peft_config")
    marker = full_tensor(host_parts(base)["marker"][0]) if lora else None  # collective under ZeRO-3: every rank
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(output_dir))
        if lora:
            settings = getattr(base.config, CONFIG_ATTRIBUTE)
            saved = {"dyntok": settings, "image_newline": marker.tolist()}
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
    from transformers import LlavaOnevisionForConditionalGeneration

    checkpoint = Path(checkpoint)
    adapter_config = checkpoint / "adapter_config.json"
    if not adapter_config.is_file():
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype)
        if not isinstance(getattr(model.config, "dyntok", None), dict):
            raise ValueError(f"{str(checkpoint)!r} has no DynTok settings in config.json; was it saved after patch_llava?")
        return patch_llava(model).eval()
    from peft import PeftModel

    base_model = base_model or json.loads(adapter_config.read_text())["base_model_name_or_path"]
    saved = json.loads((checkpoint / DYNTOK_FILE).read_text())
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(base_model, dtype=dtype)
    with torch.no_grad():
        marker = host_parts(model)["marker"][0]
        marker.copy_(torch.tensor(saved["image_newline"], dtype=marker.dtype))
    model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    return patch_llava(model, **saved["dyntok"]).eval()


# ------------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LLaVA-OneVision checkpoint (folder or hub id)")
    parser.add_argument("--data", required=True, help="JSONL of {video, question, answer[, num_frames]}")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-frames", type=int, default=8, help="frames per video when a record gives none")
    parser.add_argument("--threshold", type=float, default=0.7, help="DynTok threshold at inference (eval mode)")
    parser.add_argument("--train-threshold-range", type=float, nargs=2, default=(0.6, 0.9), metavar=("LO", "HI"))
    parser.add_argument("--fixed-threshold", action="store_true", help="train with --threshold, no random draws")
    parser.add_argument("--marker", default="row", choices=("row", "frame", "video", "none"))
    parser.add_argument("--similarity", default="vision", choices=("vision", "projected"))
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


def resolve_precision(choice: str, cpu: bool) -> bool:
    """Whether to train in bf16: `auto` means on a CUDA device that supports it."""
    if choice == "bf16":
        return True
    if choice == "fp32":
        return False
    return not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def train(argv: Optional[Sequence[str]] = None) -> tuple:
    """Parse `argv`, train and save; returns `(trainer, processor, dataset, output_dir)`."""
    from transformers import AutoProcessor, set_seed

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    set_seed(args.seed)
    bf16 = resolve_precision(args.precision, args.cpu)
    processor = AutoProcessor.from_pretrained(args.model)
    dataset = VideoQADataset(load_records(args.data, args.num_frames), processor, cache=args.cache_frames)
    train_range = None if args.fixed_threshold else tuple(args.train_threshold_range)
    model = setup_model(
        args.model,
        train_parts=args.train,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        threshold=args.threshold,
        train_threshold_range=train_range,
        marker=args.marker,
        similarity=args.similarity,
        dtype=torch.float32,  # float32 master weights; bf16 runs as autocast (Trainer) or DeepSpeed's bf16 mode
    )
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
    trainer.train()
    out = save_for_inference(trainer, processor, args.output_dir)
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (out / "train_losses.json").write_text(json.dumps(losses))
        logger.info("saved %s (first loss %.4f, last loss %.4f)", out, losses[0], losses[-1])
    return trainer, processor, dataset, out


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Train and save; returns the checkpoint folder."""
    return train(argv)[-1]


if __name__ == "__main__":
    main()
