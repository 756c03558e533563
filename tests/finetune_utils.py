"""Offline tiny LLaVA-OneVision checkpoints with a real processor, and a tiny video-QA set on the bundled clip.

Used by the fine-tuning and convergence tests. The checkpoint is the `hf_tiny` model (8x8 vision grid, 4x4 after
pooling, 16 tokens per frame) saved together with a `LlavaOnevisionProcessor` (image and video processors at
32 px, the `hf_tiny` word-level tokenizer and its chat template), so `AutoProcessor.from_pretrained(folder)` and
`from_pretrained(folder)` work with no hub. The video processor needs torchvision.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
from pathlib import Path
from typing import Union

import torch

import hf_tiny

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "city_cc0.mp4"
FINETUNE_SCRIPT = REPO / "examples" / "finetune_hf.py"

# Questions and answers in the tiny tokenizer's vocabulary (w<i> are ordinary word ids).
QA_PAIRS = (
    ("what is happening in the video ?", "w40 w41 w42 ."),
    ("what is in the video ?", "w50 w51 ."),
    ("what is happening ?", "w60 w61 w62 w63 ."),
    ("what is the video ?", "w70 ."),
)
FRAME_COUNTS = (4, 2, 3, 4)


def build_processor(chat_template: str = hf_tiny.CHAT_TEMPLATE):
    """A `LlavaOnevisionProcessor` sized for the tiny model: 32 px frames, 64 patch tokens per image."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": hf_tiny.IMAGE_SIZE, "width": hf_tiny.IMAGE_SIZE}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[hf_tiny.IMAGE_SIZE] * 2]),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=hf_tiny.build_tokenizer(),
        num_image_tokens=hf_tiny.GRID * hf_tiny.GRID,
        vision_feature_select_strategy="full",
        chat_template=chat_template,
    )


def save_checkpoint(folder: Union[str, Path], seed: int = 0) -> Path:
    """Save the tiny model, tokenizer and processor to `folder` (a complete, offline checkpoint)."""
    folder = Path(folder)
    hf_tiny.save_tiny_checkpoint(folder, seed=seed)
    build_processor().save_pretrained(folder)
    return folder


def write_dataset(folder: Union[str, Path], frame_counts=FRAME_COUNTS) -> Path:
    """A JSONL of QA_PAIRS on the bundled clip, one frame count per line, with the clip copied beside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / CLIP.name
    if not video.exists():
        video.write_bytes(CLIP.read_bytes())
    lines = [
        json.dumps({"video": video.name, "question": q, "answer": a, "num_frames": f})
        for (q, a), f in zip(QA_PAIRS, frame_counts)
    ]
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def finetune_module():
    """`examples/finetune_hf.py` imported as the module `finetune_hf` (examples/ is not a package)."""
    if "finetune_hf" not in sys.modules:
        spec = importlib.util.spec_from_file_location("finetune_hf", FINETUNE_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["finetune_hf"] = module
        spec.loader.exec_module(module)
    return sys.modules["finetune_hf"]


def free_port() -> int:
    """An unused TCP port on localhost for a torch.distributed rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env() -> dict:
    """The current environment with hub access off, one thread per process (two processes on two cores) and
    torch.distributed on the loopback interface (commands.loopback_env)."""
    import commands

    env = dict(commands.loopback_env(), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def logits_on(model, batch: dict) -> torch.Tensor:
    """Eval-mode float32 logits of `model` on a collated batch (no gradient)."""
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def eval_batch(dataset) -> dict:
    """Every example of `dataset` in one right-padded batch (mixed frame counts go as a list of videos)."""
    fh = finetune_module()
    return fh.VideoQACollator(dataset.processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])


def train_and_record(argv) -> None:
    """Run the example's training, then save the trained model's eval logits on the whole training set.

    Run under `torchrun` by the multi-process tests, which reload the checkpoint and compare against these logits.
    Every rank computes them through the wrapped model (DDP or the DeepSpeed engine: ZeRO-3 gathers collectively);
    rank 0 saves them.
    """
    trainer, _, dataset, out = finetune_module().train(argv)
    logits = logits_on(trainer.model_wrapped, eval_batch(dataset))
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(logits, Path(out) / "trained_logits.pt")


if __name__ == "__main__":
    train_and_record(sys.argv[1:])
