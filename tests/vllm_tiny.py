"""Shared parts of the vLLM tests: a tiny LLaVA-OneVision checkpoint vLLM's CPU backend loads, an in-process engine,
real video frames, and the patched Hugging Face model's side of each comparison.

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) in float32 with a 1 GB KV cache, so that the
tests can read the video embeddings vLLM hands the language model (`record_video_embeddings`).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from media import CITY_CLIP  # noqa: E402

from dyntok_plugin.hf.synthetic import (  # noqa: E402
    VIDEO_ID,
    VLLM_TEXT,
    build_tokenizer,
    llava_onevision_config,
    random_llava_onevision,
    save_published_layout,  # noqa: F401  (the tests save their checkpoints with it)
)
from dyntok_plugin.video import load_video  # noqa: E402

VISION = {"hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 2}
POOLED = 4  # 32 px frames, 4 px patches: an 8x8 grid pooled to 4x4
NEW_TOKENS = 6
MAX_MODEL_LEN = 512  # the tiny LLM's max_position_embeddings


def tiny_model(seed: int = 0):
    """The Hugging Face model the checkpoint is saved from (float32, eager attention)."""
    config = llava_onevision_config(vision=VISION, text=VLLM_TEXT)
    config._attn_implementation = "eager"
    return random_llava_onevision(config, seed=seed)


def start_engine(checkpoint: Path, **kwargs):
    """An in-process `vllm.LLM` on the CPU in float32."""
    from vllm import LLM

    return LLM(model=str(checkpoint), dtype="float32", max_model_len=MAX_MODEL_LEN, enforce_eager=True, seed=0,
               limit_mm_per_prompt={"video": 2, "image": 1}, **kwargs)


def stop_engine(llm) -> None:
    from vllm.distributed import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def frames(count: int, start: int = 0) -> np.ndarray:
    """`count` real frames of the bundled clip, uint8 `(F, H, W, 3)`; `start` picks a different stretch."""
    clip = load_video(CITY_CLIP, count + start)
    return clip[start:]


def prompt(*media: str) -> str:
    """The chat prompt with one placeholder per medium ("video" or "image") and a question."""
    content = [{"type": kind} for kind in media] + [{"type": "text", "text": "what is happening in the video ?"}]
    tokenizer = build_tokenizer()
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def greedy():
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)


def record_video_embeddings(llm) -> None:
    """From now on the engine's model keeps every `_process_video_pixels` result (per video, float32 on the CPU)."""

    def install(model):
        model.recorded_videos = []
        original = model._process_video_pixels

        def recording(inputs):
            out = original(inputs)
            model.recorded_videos += [chunk.reshape(-1, chunk.shape[-1]).float().cpu() for chunk in out]
            return out

        model._process_video_pixels = recording

    llm.apply_model(install)


def take_video_embeddings(llm) -> list:
    """The video embeddings recorded since the last call, in the order the engine made them."""

    def take(model):
        out, model.recorded_videos = model.recorded_videos, []
        return out

    return llm.apply_model(take)[0]


def hf_inputs(processor, text: str, videos: list, images: list | None = None) -> dict:
    """The patched HF model's inputs for `text` with `videos` of any frame counts: the stock placeholder runs
    (F*h*w + 1 per video) and one `(F_i, 3, H, W)` pixel tensor per video, from the checkpoint's processor (which
    stacks only videos of one length, so each is processed alone)."""
    call = processor(text=text, images=images, return_tensors="pt") if images else processor.tokenizer(text)
    ids = list(call["input_ids"][0].tolist() if images else call["input_ids"])
    pixels = [processor.video_processor(videos=[video], return_tensors="pt")["pixel_values_videos"][0]
              for video in videos]
    expanded, runs = [], iter(len(p) * POOLED * POOLED + 1 for p in pixels)
    for token in ids:
        expanded += [VIDEO_ID] * next(runs) if token == VIDEO_ID else [token]
    out = {"input_ids": torch.tensor([expanded]), "attention_mask": torch.ones(1, len(expanded), dtype=torch.long),
           "pixel_values_videos": pixels}
    if images:
        out.update({key: call[key] for key in ("pixel_values", "image_sizes")})
    return out


def video_rows(inputs: dict, lengths: list) -> list:
    """The rows each video's tokens take in the sequence the patched model ran, given its stock inputs and the
    DynTok length of each video (runs of adjacent videos touch, so each run's stock length is taken off)."""
    ids = inputs["input_ids"][0].tolist()
    stock = [len(pixels) * POOLED * POOLED + 1 for pixels in inputs["pixel_values_videos"]]
    rows, shift, index = [], 0, 0
    for length, run in zip(lengths, stock):
        start = ids.index(VIDEO_ID, index)
        rows.append(list(range(start + shift, start + shift + length)))
        shift += length - run
        index = start + run
    return rows


def hf_generate(model, inputs: dict) -> tuple[list, list, int]:
    """Greedy new tokens of the (patched) HF model, the embeddings it gave the LLM, and the prompt length it ran."""
    seen = {}

    def keep(module, args, kwargs):
        if "inputs_embeds" not in seen and kwargs.get("inputs_embeds") is not None:
            seen["inputs_embeds"] = kwargs["inputs_embeds"].detach().float()

    language_model = model.get_decoder() if hasattr(model, "get_decoder") else model.model.language_model
    handle = language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    finally:
        handle.remove()
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    embeds = seen["inputs_embeds"][0]
    return new, embeds, embeds.shape[0]
