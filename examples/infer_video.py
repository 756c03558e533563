"""Ask a Hugging Face LLaVA-OneVision checkpoint about a video with DynTok on; print the answer and token counts.

    python examples/infer_video.py --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf \\
        --video clip.mp4 --question "What is happening in the video?" --threshold 0.7

`--model` is a hub id or a local folder. Frames are decoded with PyAV and sampled uniformly over the whole video,
as LLaVA-OneVision does (`dyntok_plugin.video.load_video`). The prompt and pixels come from the checkpoint's
processor when it loads (transformers 5.x needs torchvision for the video processor); otherwise from its
tokenizer, a LLaVA-OneVision chat prompt and the processor's preprocessing done here (antialiased bicubic
resize to the tower's size, `image_mean`/`image_std` from the checkpoint's preprocessor config, else SigLIP's
0.5/0.5). `--no-dyntok` runs the stock model for comparison; `--json` prints one JSON object instead of text.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dyntok_plugin import patch_llava
from dyntok_plugin.stats import summarize
from dyntok_plugin.video import load_video

logger = logging.getLogger("infer_video")

SIGLIP_MEAN_STD = ([0.5] * 3, [0.5] * 3)  # LLaVA-OneVision's SigLIP normalisation, when no config says otherwise
PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
FALLBACK_PROMPT = "<|im_start|>user <video>\n{question}<|im_end|>\n<|im_start|>assistant\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LLaVA-OneVision checkpoint: hub id or local folder")
    parser.add_argument("--video", required=True, help="video file (anything PyAV decodes)")
    parser.add_argument("--question", default="What is happening in the video?")
    parser.add_argument("--num-frames", type=int, default=32, help="frames sampled uniformly (LLaVA-OV: 32)")
    parser.add_argument("--threshold", type=float, default=0.7, help="DynTok similarity threshold")
    parser.add_argument("--marker", default="row", choices=["row", "frame", "video", "none"])
    parser.add_argument("--no-dyntok", action="store_true", help="run the stock model (no compression)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser.parse_args(argv)


def load_model(name: str, dtype: torch.dtype, device: str):
    """The checkpoint in `dtype` on `device`, in eval mode."""
    import transformers
    from transformers import LlavaOnevisionForConditionalGeneration

    major_minor = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if major_minor >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(name, **{dtype_key: dtype})
    return model.to(device).eval()


def build_inputs(name: str, model, frames: np.ndarray, question: str) -> dict:
    """Prompt ids, mask and `pixel_values_videos` for one video and question, as the processor would make them."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(name)
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        return dict(processor(text=prompt, videos=[frames], return_tensors="pt"))
    except (ImportError, OSError, ValueError) as err:  # no processor files, or no torchvision (5.x video processor)
        logger.warning("processor unavailable (%s: %s); using the tokenizer and SigLIP preprocessing",
                       type(err).__name__, err)
    return _tokenizer_inputs(name, model, frames, conversation)


def _tokenizer_inputs(name: str, model, frames: np.ndarray, conversation: list) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    config = model.config
    video_id = _video_id(model)
    prompt = None
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    if not prompt or "<video>" not in prompt:
        prompt = FALLBACK_PROMPT.format(question=conversation[0]["content"][1]["text"])
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if ids.count(video_id) != 1:
        raise ValueError(f"The prompt must hold one <video> token (id {video_id}); {tokenizer.__class__.__name__} "
                         f"gave {ids.count(video_id)}. Use the checkpoint's processor or tokenizer.")
    vision = config.vision_config
    pooled = math.ceil(vision.image_size // vision.patch_size / 2)
    run = [video_id] * (len(frames) * pooled * pooled + 1)  # the processor's count; DynTok re-splices it
    at = ids.index(video_id)
    input_ids = torch.tensor([ids[:at] + run + ids[at + 1:]])
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    size = (vision.image_size, vision.image_size)
    pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bicubic", antialias=True).clamp(0, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _mean_std(name))
    pixels = (pixels - mean) / std
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values_videos": pixels[None]}


def _mean_std(name: str) -> tuple:
    """`image_mean`/`image_std` from the checkpoint's (video) preprocessor config, else SigLIP's 0.5/0.5."""
    from transformers.utils import cached_file

    for filename in PREPROCESSOR_FILES:
        path = cached_file(name, filename, _raise_exceptions_for_missing_entries=False)
        if path:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
            if "image_mean" in values and "image_std" in values:
                return values["image_mean"], values["image_std"]
    return SIGLIP_MEAN_STD


def answer(model, tokenizer_source: str, inputs: dict, max_new_tokens: int) -> str:
    """Greedy answer text (new tokens only)."""
    from transformers import AutoTokenizer

    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return AutoTokenizer.from_pretrained(tokenizer_source).decode(new_tokens, skip_special_tokens=True).strip()


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        args.dtype, torch.bfloat16 if device.startswith("cuda") else torch.float32
    )
    frames = load_video(args.video, args.num_frames)  # fail fast on a bad file, before loading the model
    model = load_model(args.model, dtype, device)
    if not args.no_dyntok:
        patch_llava(model, threshold=args.threshold, marker=args.marker)
    inputs = build_inputs(args.model, model, frames, args.question)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(dtype)
    text = answer(model, args.model, inputs, args.max_new_tokens)
    placeholders = int((inputs["input_ids"] == _video_id(model)).sum())
    result = {"answer": text, "frames": len(frames), "video_placeholders": placeholders}
    if not args.no_dyntok:
        result["dyntok"] = {"threshold": args.threshold, "marker": args.marker, **summarize(model.dyntok.last_stats)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"answer: {text}")
        print(f"frames: {result['frames']}, stock video tokens: {placeholders}")
        if "dyntok" in result:
            stats = result["dyntok"]
            print(f"DynTok (threshold {args.threshold}, marker {args.marker}): {stats['tokens_out']} tokens "
                  f"for {stats['tokens_in']} pooled positions, ratio {stats['ratio']:.3f}")
    return result


def _video_id(model) -> int:
    config = model.config
    value = getattr(config, "video_token_id", None)
    return config.video_token_index if value is None else value


if __name__ == "__main__":
    main(sys.argv[1:])
