"""What the HF host patches and the tools above them read from a Hugging Face model, computed one way.

The video placeholder id, the installed transformers version, the vision tower's selected layer and
LLaVA-OneVision's 2x2 video pooling (its grid side and a fast exact version of it). The patches build DynTok's
inputs with them; the command's `--model` encoder and the checkpoint helpers use the same functions, so both see
the numbers the model sees.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def video_token_id(config: Any) -> int:
    """The video placeholder id: `video_token_id` in newer transformers configs, `video_token_index` before."""
    value = getattr(config, "video_token_id", None)
    if value is None:
        value = getattr(config, "video_token_index", None)
    if value is None:
        raise TypeError("The model config has neither video_token_id nor video_token_index; cannot find video tokens.")
    return int(value)


@functools.lru_cache(maxsize=1)
def transformers_version() -> tuple[int, ...]:
    """The installed transformers' `(major, minor)`."""
    import transformers

    return tuple(int(part) for part in transformers.__version__.split(".")[:2] if part.isdigit())


def vision_features(tower: nn.Module, frames: Tensor, layer: int | Sequence[int]) -> Tensor:
    """The tower's hidden states at `vision_feature_layer` (an int, or a list concatenated along channels).

    Forward hooks on the chosen encoder layers keep only those outputs; `output_hidden_states=True` would hold every
    layer's output for all frames at once (several GB at 64 frames of SigLIP-so400m). Towers without the usual
    `embeddings` + `encoder.layers` layout fall back to `output_hidden_states=True`. The tower casts the pixels
    itself and accelerate hooks move them.
    """
    indices = [layer] if isinstance(layer, int) else list(layer)
    body = getattr(tower, "vision_model", tower)
    blocks = getattr(getattr(body, "encoder", None), "layers", None)
    embeddings = getattr(body, "embeddings", None)
    if not isinstance(blocks, nn.ModuleList) or not isinstance(embeddings, nn.Module):
        hidden = tower(frames, output_hidden_states=True).hidden_states
        return torch.cat([hidden[i] for i in indices], dim=-1)
    # hidden_states[0] is the embeddings' output, hidden_states[j] the output of encoder layer j - 1.
    sources = [embeddings] + list(blocks)
    captured: dict = {}

    def keep(position: int):
        def hook(module, args, output):
            captured[position] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [sources[i].register_forward_hook(keep(i % len(sources))) for i in indices]
    try:
        tower(frames)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([captured[i % len(sources)] for i in indices], dim=-1)


def per_channel_concurrently(fn: Callable[[Tensor], Tensor], features: Tensor, parts: int = 32) -> Tensor:
    """`fn(features)` for an `fn` that treats each channel (last axis) on its own, run on channel slices on side
    CUDA streams at once and concatenated: the same kernel on the same numbers, so bit-identical to one call.

    For the host's channels-first bilinear pooling, whose CUDA kernel runs one thread per output position and loops
    over every frame and channel: one call keeps one multiprocessor busy (23 ms for 64 frames of 729 x 896 float32
    features on an H200). Autograd follows the streams. On other devices, with few channels, or while
    `torch.compile` traces the caller (the compiler schedules its own kernel; no side streams in its graph), one
    plain call.
    Memory: the slices' copies and outputs come from the side streams' own allocator pools, so the reserved (not
    the allocated) memory grows by about one copy of the features.
    """
    if features.device.type != "cuda" or features.shape[-1] < 2 * parts or _compiling():
        return fn(features)
    main = torch.cuda.current_stream(features.device)
    streams = _side_streams(features.device, parts)
    outputs = []
    for stream, part in zip(streams, features.tensor_split(parts, dim=-1)):
        stream.wait_stream(main)
        features.record_stream(stream)  # read on the side stream: not to be reused before it is done
        with torch.cuda.stream(stream):
            outputs.append(fn(part.contiguous()))
    for stream, output in zip(streams, outputs):
        main.wait_stream(stream)
        output.record_stream(main)
    return torch.cat(outputs, dim=-1)


def _compiling() -> bool:
    """Whether `torch.compile` is tracing this call (`torch.compiler.is_compiling`, torch >= 2.3)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


@functools.lru_cache(maxsize=None)
def _side_streams(device: torch.device, count: int) -> tuple:
    return tuple(torch.cuda.Stream(device=device) for _ in range(count))


def pooled_grid(grid: int) -> int:
    """Tokens along each side of a frame after LLaVA-OneVision's 2x2 video pooling: half the grid, rounded up."""
    return math.ceil(grid / 2)


def pooled_side(config: Any) -> int:
    """`pooled_grid` of a LLaVA config's vision tower (14 for SigLIP-so400m at 384 px: a 27x27 patch grid)."""
    vision = config.vision_config
    return pooled_grid(vision.image_size // vision.patch_size)


def bilinear_pool(features: Tensor, grid: int) -> Tensor:
    """LLaVA-OneVision's video pooling: `(N, g*g, C)` or `(N, g, g, C)` -> `(N, ceil(g/2), ceil(g/2), C)`.

    A bilinear resize of the g x g grid, computed channels-last in chunks of 512 channels: the same numbers as the
    host's channels-first `apply_pooling` (checked per device and dtype by the patch), which is about 100x slower
    on GPU in bfloat16 (11.6 ms vs 0.07 ms for 32 frames of 729 x 896 features on an H100).
    """
    side = pooled_grid(grid)
    frames = features.reshape(features.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
    parts = [
        nn.functional.interpolate(
            part.contiguous(memory_format=torch.channels_last), size=(side, side), mode="bilinear"
        )
        for part in frames.split(512, dim=1)
    ]
    return torch.cat(parts, dim=1).permute(0, 2, 3, 1).contiguous()
