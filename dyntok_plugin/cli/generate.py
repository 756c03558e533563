"""`dyntok generate`: answer a prompt about a video with a DynTok-patched Hugging Face LLaVA-OneVision, Qwen2.5-VL
or Qwen3-VL.

The prompt is built from the checkpoint's tokenizer and chat template, with the video placeholder expanded the
way the stock processor does (`hf.processing` for LLaVA-OneVision, `hf.qwen_inputs` for Qwen VL), so no processor
(and no torchvision) is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..api import patch_llava
from ..hf.checkpoints import saved_chat_template
from ..hf.processing import frames_to_pixels, user_turn, video_prompt_ids
from ..hf.qwen_inputs import is_qwen_vl, video_prompt_inputs
from ..video import VideoInfo, probe_video, sample_indices
from .console import Need, Stages, decode, one_line, require, table
from .encoders import EncoderError, load_video_model

GENERATE_NEEDS = (Need("av", "av (PyAV)", "decodes the video", extra="video"),)


def run_generate(args: argparse.Namespace) -> int:
    """Print the greedy answer to `args.prompt` about `args.video`, then DynTok's per-video token counts."""
    require(GENERATE_NEEDS)
    info = probe_video(args.video)
    sample_indices(info.frames, args.frames)
    stages = Stages(3)
    stages.start("load model", args.model)
    model, mean, std = load_video_model(args.model)
    tokenizer = load_tokenizer(args.model)
    text = chat_prompt(args.model, tokenizer, args.prompt)
    stages.start("decode", f"{args.frames} frames of {Path(args.video).name}")
    _, video = decode(args.video, args.frames)
    inputs = prompt_inputs(model.config, tokenizer, text, video, info, (mean, std), args.max_pixels)
    inputs = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    patch_llava(model, threshold=args.threshold, **({"marker": args.marker} if args.marker else {}))
    stages.start("generate", f"up to {args.max_new_tokens} new tokens, DynTok threshold {args.threshold:g}")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    print(tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip())
    print()
    print(table(["frames", "tokens in", "tokens out", "ratio", "threshold"],
                [[s.frames, s.tokens_in, s.tokens_out, f"{s.ratio:.4f}", f"{s.threshold:.4f}"]
                 for s in model.dyntok.last_stats],
                legend="frames: frames of the video; tokens in: its pooled visual tokens; tokens out: what the "
                       "model saw after DynTok, markers included; ratio: out / in; threshold: τ used"))
    return 0


def prompt_inputs(config, tokenizer, text: str, video, info: VideoInfo, normalisation: tuple,
                  max_pixels: int) -> dict:
    """The model's inputs for one video and rendered chat `text`, batch of one, built the way the host's processor
    builds them (Qwen VL frames resized to at most `max_pixels`)."""
    if is_qwen_vl(config):
        seconds = sample_indices(info.frames, len(video)) / (info.fps or 1.0)
        return video_prompt_inputs(config, tokenizer, text, video, seconds.tolist(), *normalisation, max_pixels)
    input_ids = video_prompt_ids(config, tokenizer, text, len(video))[None]
    pixels = frames_to_pixels(video, int(config.vision_config.image_size), *normalisation)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values_videos": pixels[None]}


def load_tokenizer(model_id: str):
    """The checkpoint's tokenizer; a one-line `EncoderError` when it has none that loads."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_id)
    except (OSError, ValueError) as err:
        raise EncoderError(f"--model {model_id!r}: cannot load its tokenizer ({one_line(err)})") from None


def chat_prompt(model_id: str, tokenizer, prompt: str) -> str:
    """The prompt about one video in the checkpoint's chat format (the processor's template if saved, else the
    tokenizer's)."""
    template = saved_chat_template(model_id) or tokenizer.chat_template
    if not template:
        raise EncoderError(f"--model {model_id!r} has no chat template (processor or tokenizer); "
                           "save one with the checkpoint")
    return tokenizer.apply_chat_template(user_turn(prompt), chat_template=template, tokenize=False,
                                         add_generation_prompt=True)
