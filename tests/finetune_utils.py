"""Offline tiny LLaVA-OneVision checkpoints with a real processor, and a tiny video-QA set on the bundled clip.

Used by the fine-tuning and convergence tests. The checkpoint is the `hf_tiny` model (8x8 vision grid, 4x4 after
pooling, 16 tokens per frame) saved together with a `LlavaOnevisionProcessor` (image and video processors at
32 px, the `hf_tiny` word-level tokenizer and its chat template), so `AutoProcessor.from_pretrained(folder)` and
`from_pretrained(folder)` work with no hub. The video processor needs torchvision.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Union

import torch

import hf_tiny
from commands import free_port  # noqa: F401  (the tests call fu.free_port)
from dyntok_plugin.hf import synthetic
from dyntok_plugin.train import VideoQACollator
from dyntok_plugin.train.finetune import train

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "city_cc0.mp4"

FRAME_COUNTS = (4, 2, 3, 4)
QA_PAIRS = synthetic.QA_PAIRS


def build_processor(chat_template: str = hf_tiny.CHAT_TEMPLATE):
    """A `LlavaOnevisionProcessor` sized for the tiny model: 32 px frames, 64 patch tokens per image."""
    return synthetic.build_processor(hf_tiny.IMAGE_SIZE, hf_tiny.PATCH_SIZE, chat_template)


def save_checkpoint(folder: Union[str, Path], seed: int = 0) -> Path:
    """Save the tiny model, tokenizer and processor to `folder` (a complete, offline checkpoint)."""
    folder = Path(folder)
    hf_tiny.save_tiny_checkpoint(folder, seed=seed)
    build_processor().save_pretrained(folder)
    return folder


def write_dataset(folder: Union[str, Path], frame_counts=FRAME_COUNTS) -> Path:
    """A JSONL of the synthetic QA pairs on the bundled clip, one frame count per line, with the clip beside it."""
    return synthetic.write_qa_dataset(folder, CLIP, frame_counts)


def offline_env() -> dict:
    """The current environment with hub access off, one thread per process (two processes on two cores) and
    torch.distributed on the loopback interface (commands.loopback_env)."""
    import commands

    env = dict(commands.loopback_env(), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def train_two_processes(workdir: dict, out: Path, extra: list, env: dict) -> None:
    """`train_and_record` under `torchrun --nproc_per_node 2` on the CPU (a fresh port and output folder for every
    attempt); fails with the command's output unless the trained model, its losses and its logits were saved."""
    import shutil

    import commands

    def command(attempt):
        shutil.rmtree(out, ignore_errors=True)
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
            REPO / "tests" / "finetune_utils.py",
            "--model", workdir["checkpoint"], "--data", workdir["data"], "--output-dir", out, "--cpu",
            "--cache-frames", "--train", "projector,marker,llm,vision", "--train-threshold-range", "0.5", "0.9",
            *extra,
        ]

    def saved_the_model(done):
        missing = [name for name in ("train_losses.json", "trained_logits.pt", "config.json") if not (out / name).exists()]
        assert not missing, f"{missing} not written to {out}"

    # A guard against a hang, not a speed limit: with the environments testing at once on a loaded 2-core machine a
    # ZeRO-3 run once took over 600 s.
    commands.run(command, env=env, timeout=1200, check=saved_the_model, attempts=3)


def logits_on(model, batch: dict) -> torch.Tensor:
    """Eval-mode float32 logits of `model` on a collated batch (no gradient)."""
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def eval_batch(dataset) -> dict:
    """Every example of `dataset` in one right-padded batch (mixed frame counts go as a list of videos)."""
    return VideoQACollator(dataset.processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])


def train_and_record(argv) -> None:
    """Run the example's training, then save the trained model's eval logits on the whole training set.

    Run under `torchrun` by the multi-process tests, which reload the checkpoint and compare against these logits.
    Every rank computes them through the wrapped model (DDP or the DeepSpeed engine: ZeRO-3 gathers collectively);
    rank 0 saves them.
    """
    trainer, _, dataset, out = train(argv)
    logits = logits_on(trainer.model_wrapped, eval_batch(dataset))
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(logits, Path(out) / "trained_logits.pt")


if __name__ == "__main__":
    train_and_record(sys.argv[1:])
