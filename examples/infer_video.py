"""Ask a Hugging Face LLaVA-OneVision checkpoint about a video with DynTok on; print the answer and token counts.

    python examples/infer_video.py --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf \\
        --video clip.mp4 --question "What is happening in the video?" --threshold 0.7

`--model` is a hub id or a local folder. Frames are decoded with PyAV and sampled uniformly over the whole video,
as LLaVA-OneVision does (`dyntok_plugin.video.load_video`). The prompt and pixels come from the checkpoint's
processor when it loads (transformers 5.x needs torchvision for the video processor); otherwise from its
tokenizer and the processor's preprocessing (`dyntok_plugin.hf.processing.video_question_inputs`). `--no-dyntok`
runs the stock model for comparison; `--json` prints one JSON object instead of text.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import torch

from dyntok_plugin import patch_llava
from dyntok_plugin.core.config import MARKERS
from dyntok_plugin.hf.checkpoints import dtype_argument
from dyntok_plugin.hf.processing import video_question_inputs, video_token_id
from dyntok_plugin.core.stats import summarize
from dyntok_plugin.video import load_video

logger = logging.getLogger("infer_video")

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LLaVA-OneVision checkpoint: hub id or local folder")
    parser.add_argument("--video", required=True, help="video file (anything PyAV decodes)")
    parser.add_argument("--question", default="What is happening in the video?")
    parser.add_argument("--num-frames", type=int, default=32, help="frames sampled uniformly (LLaVA-OV: 32)")
    parser.add_argument("--threshold", type=float, default=0.7, help="DynTok similarity threshold")
    parser.add_argument("--marker", default="row", choices=MARKERS)
    parser.add_argument("--no-dyntok", action="store_true", help="run the stock model (no compression)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser.parse_args(argv)


def load_model(name: str, dtype: torch.dtype, device: str):
    """The checkpoint in `dtype` on `device`, in eval mode."""
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(name, **dtype_argument(dtype))
    return model.to(device).eval()


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
    inputs = video_question_inputs(args.model, model.config, frames, args.question)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(dtype)
    text = answer(model, args.model, inputs, args.max_new_tokens)
    placeholders = int((inputs["input_ids"] == video_token_id(model.config)).sum())
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


if __name__ == "__main__":
    main(sys.argv[1:])
