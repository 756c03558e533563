"""DynTok for Hugging Face `LlavaOnevisionForConditionalGeneration` (transformers 4.45 to 5.x).

The stock processor expands every `<video>` into a fixed run of `F*h*w + 1` placeholder ids before the model
runs, and the model insists that the run matches its features. DynTok's length depends on the frames, so this
module wraps the instance's `forward` and `generate` (`functools.wraps`, so `generate` and `Trainer` still see
the original signature): when `pixel_values_videos` is given, the wrappers compute the video tokens themselves
(vision tower -> feature layer and select strategy -> projector -> the host's video pooling -> DynTok, with the
pooled pre-projector features as similarity features and the host's `image_newline` as marker), splice
them into each sample's placeholder runs and re-pad (`dyntok_plugin.hf.splice`: `input_ids`, `attention_mask`, `labels` with
visual positions -100), rebuild `position_ids`/`cache_position` when given, and call the original with
`inputs_embeds`.
Calls without videos (decode steps included) go to the original untouched.

Host components are found by duck typing (flat layout up to 4.51, `model.model` from 4.52; `video_token_id`
or `video_token_index`); `get_video_features` is never called (its argument name and newline handling changed
in 5.18). `generate` returns the caller's `input_ids` followed by the new tokens, as stock transformers does,
so `output[:, input_ids.shape[1]:]` still selects the answer. The pooling is the host's `apply_pooling`, or the
same bilinear resize computed channels-last where a probe shows identical numbers (much faster on GPU).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dyntok_plugin.core import DynTokCompressor, DynTokConfig
from dyntok_plugin.hf import bilinear_pool, splice, transformers_version, video_token_id, vision_features
from dyntok_plugin.hf.common import per_channel_concurrently, pooled_grid
from dyntok_plugin.hf.generation import padding_of
from dyntok_plugin.hf.parts import VISION_PARTS, vision_owner
from dyntok_plugin.hf.wrapping import (
    Originals,
    call_without_videos,
    check_video_call,
    generate_with_videos,
    install,
    shift_cache_position,
    uninstall,
)

SUPPORTED_CLASSES = ("transformers.LlavaOnevisionForConditionalGeneration",)
STATE_ATTRIBUTE = "_dyntok_hf_state"
_CLASS_NAME = "LlavaOnevisionForConditionalGeneration"
_MIN_MIXED_VERSION = (4, 54)  # first transformers that accepts inputs_embeds together with pixel_values


@dataclass
class _Host:
    """The parts of one LLaVA-OneVision instance that DynTok uses."""

    owner: nn.Module  # holds vision_tower, multi_modal_projector, image_newline, apply_pooling
    video_token_id: int
    pad_token_id: int
    image_size: int
    num_channels: int
    tokens_per_frame: int  # pooled grid h*w
    grid: int  # vision patches per side (27 for SigLIP-so400m at 384 px)
    fast_pooling: dict = field(default_factory=dict)  # (device, dtype, channels) -> `bilinear_pool` is exact


@dataclass
class _State:
    """Everything patch() changed, so that unpatch() restores it exactly."""

    host: _Host
    compressor: DynTokCompressor
    originals: Originals  # the forward/generate bound when patched, and the wrappers installed
    generating: int = 0  # > 0 inside a patched generate: its decode steps keep the prompt's statistics


def is_supported(model: nn.Module) -> bool:
    """Whether `model` is (a subclass of) transformers' `LlavaOnevisionForConditionalGeneration`."""
    return any(cls.__name__ == _CLASS_NAME for cls in type(model).__mro__)


def patch(model: nn.Module, config: DynTokConfig) -> None:
    """Wrap this instance's `forward` and `generate`; validates everything before changing anything."""
    if STATE_ATTRIBUTE in model.__dict__:
        raise RuntimeError("This model is already patched by DynTok; call unpatch_llava(model) first.")
    host = _find_host(model)
    weight = model.get_input_embeddings().weight
    hidden_size = int(getattr(weight, "ds_shape", weight.shape)[-1])  # ZeRO-3 partitions leave weight.shape empty
    marker = functools.partial(getattr, host.owner, "image_newline")
    compressor = DynTokCompressor(hidden_size=hidden_size, config=config, marker=marker)
    state = _State(host=host, compressor=compressor, originals=Originals.of(model))
    install(model, state, STATE_ATTRIBUTE, {"forward": _forward, "generate": _generate})


def unpatch(model: nn.Module) -> None:
    """Put back the forward/generate that were bound at patch time and drop all DynTok state."""
    state = uninstall(model, STATE_ATTRIBUTE)
    if state is None:
        return
    marker = state.host.owner.image_newline
    if id(marker) in getattr(model, "_external_params", {}):  # registered for DeepSpeed ZeRO-3 by a call
        import deepspeed

        deepspeed.zero.unregister_external_parameter(model, marker)


def _find_host(model: nn.Module) -> _Host:
    needed = (*VISION_PARTS, "image_newline", "apply_pooling")
    owner = vision_owner(model, needed)
    if owner is None:
        raise TypeError(
            f"{type(model).__name__} lacks the LLaVA-OneVision parts {list(needed)} (on the model or on model.model); "
            "this transformers version's layout is not supported by dyntok_plugin."
        )
    config = model.config
    text_config = getattr(config, "text_config", config)
    pad = getattr(config, "pad_token_id", None)
    pad = getattr(text_config, "pad_token_id", None) if pad is None else pad
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    pooled = pooled_grid(grid)
    return _Host(
        owner=owner,
        video_token_id=video_token_id(config),
        pad_token_id=int(pad) if pad is not None else 0,
        image_size=int(vision.image_size),
        num_channels=int(getattr(vision, "num_channels", 3)),
        tokens_per_frame=pooled * pooled,
        grid=grid,
    )


def _forward(model: nn.Module, state: _State, call: dict, args: tuple, kwargs: dict):
    if call.get("pixel_values_videos") is None:
        return call_without_videos(state, "forward", args, kwargs)
    side, unpadded = padding_of(call.get("attention_mask"), call.get("labels"))
    # Left padding that DynTok adds to an unpadded batch must not shift the positions: rebuild them from the mask.
    _splice_videos(model, state, call, side, positions_from_mask=unpadded and side == "left")
    call["input_ids"] = None  # the forward takes exactly one of input_ids / inputs_embeds
    mask = call["attention_mask"]
    if call.get("labels") is not None and side == "right" and unpadded:
        # Training on an unpadded batch, which the stock model runs without a mask: the padding DynTok adds at the
        # end of rows (other lengths, `pad_to_multiple_of`) is never attended to by a real position of a causal LM,
        # so it cannot reach the loss; without a mask the attention keeps its causal kernels (a mask costs 5-10 %
        # of a step with random thresholds). A caller's own padding keeps its mask, as on the stock model.
        call["attention_mask"] = None
    output = state.originals.methods["forward"](**call)
    if not isinstance(output, tuple):
        output.attention_mask = mask  # the mask of the sequence that ran (to extend when decoding)
    return output


def _generate(model: nn.Module, state: _State, call: dict, args: tuple, kwargs: dict):
    if call.get("pixel_values_videos") is None:
        return call_without_videos(state, "generate", args, kwargs)
    return generate_with_videos(model, state, call, lambda call: _splice_videos(model, state, call, "left"))


def _splice_videos(model: nn.Module, state: _State, call: dict, padding_side: str,
                   positions_from_mask: bool = False) -> None:
    """Compute the DynTok video tokens and rewrite `call` in place to carry them as `inputs_embeds`."""
    host = state.host
    check_video_call(call)
    input_ids = call["input_ids"]
    if call.get("pixel_values") is not None and transformers_version() < _MIN_MIXED_VERSION:
        raise ValueError(
            "Images and videos in one call need transformers >= 4.54 with DynTok (older versions reject "
            "inputs_embeds together with pixel_values); upgrade transformers or pass images and videos in "
            "separate calls."
        )
    frames, frames_per_video = _flatten_videos(call.pop("pixel_values_videos"), host)
    layer = call.get("vision_feature_layer")
    strategy = call.get("vision_feature_select_strategy")
    chunks = _video_tokens(model, state, frames, frames_per_video, layer, strategy)
    expected = [f * host.tokens_per_frame + 1 for f in frames_per_video]
    multiple = state.compressor.config.pad_to_multiple_of if call.get("labels") is not None else None
    spliced = splice(
        input_ids, call.get("attention_mask"), call.get("labels"), chunks, expected, frames_per_video, host,
        model.get_input_embeddings(), padding_side, multiple,
    )
    call.update(spliced)
    if call.get("position_ids") is not None or positions_from_mask:
        mask = spliced["attention_mask"]
        call["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    shift_cache_position(call, spliced["input_ids"].shape[1])
    call.pop("image_sizes_videos", None)


def _flatten_videos(videos: Any, host: _Host) -> tuple:
    """`(V, F, C, H, W)` tensor or list of `(F_i, C, H, W)` tensors -> `(sum F_i, C, H, W)`, `[F_i]`."""
    if isinstance(videos, Tensor):
        if videos.dim() != 5:
            raise ValueError(
                f"pixel_values_videos must be (num_videos, frames, channels, height, width), got shape "
                f"{tuple(videos.shape)}; use the LLaVA-OneVision processor's output or add the missing axis."
            )
        parts = list(videos)
    elif isinstance(videos, (list, tuple)) and videos and all(isinstance(v, Tensor) for v in videos):
        parts = list(videos)
    else:
        raise TypeError(
            f"pixel_values_videos must be a tensor (V, F, C, H, W) or a list of (F, C, H, W) tensors, got "
            f"{type(videos).__name__}."
        )
    want = (host.num_channels, host.image_size, host.image_size)
    for index, part in enumerate(parts):
        if part.dim() != 4 or tuple(part.shape[1:]) != want or part.shape[0] < 1:
            raise ValueError(
                f"video {index} has frames of shape {tuple(part.shape)}; expected (frames >= 1, {want[0]}, "
                f"{want[1]}, {want[2]}) for this model's vision tower. Resize the frames to {want[1]}x{want[2]} "
                "(the model's processor does this)."
            )
    flat = videos.flatten(0, 1) if isinstance(videos, Tensor) else torch.cat(parts)
    return flat, [int(p.shape[0]) for p in parts]


def _video_tokens(model, state: _State, frames: Tensor, frames_per_video: list, layer, strategy) -> tuple:
    """Tower -> feature layer/strategy -> projector -> host pooling -> DynTok; one `(N_i, D)` chunk per video."""
    host, config = state.host, model.config
    owner = host.owner
    layer = config.vision_feature_layer if layer is None else layer
    strategy = config.vision_feature_select_strategy if strategy is None else strategy
    selected = vision_features(owner.vision_tower, frames, layer)
    if strategy == "default":
        selected = selected[:, 1:]
    projected = _pool(host, owner.multi_modal_projector(selected))
    compressor = state.compressor
    compressor.train(model.training)
    wanted = compressor.config.similarity == "vision" and compressor.similarity_needed()
    similarity = _pool(host, selected) if wanted else None
    with _onloaded(owner), _zero3_gathered(model, owner.image_newline):
        batch = compressor.compress_batch(projected, frames_per_video, similarity)
    return batch.chunks()


def _pool(host: _Host, features: Tensor) -> Tensor:
    """`(N, g*g, C)` -> `(N, h, w, C)` with the host's video pooling.

    The fast version is used where it gives exactly the host's numbers, checked once per device, dtype and width
    on the first frame (it does in half precision on GPU and on CPU; float32 on GPU, which autocast gives the
    pooling, differs in the last bit). Elsewhere the host's own pooling runs on channel slices at once
    (`per_channel_concurrently`: the same numbers, 20x faster on GPU than one call).
    """
    key = (str(features.device), features.dtype, features.shape[-1])
    if key not in host.fast_pooling:
        probe = features[:1].detach()
        reference = host.owner.apply_pooling(probe)
        host.fast_pooling[key] = torch.equal(bilinear_pool(probe, host.grid).reshape(reference.shape), reference)
    if host.fast_pooling[key]:
        return bilinear_pool(features, host.grid)
    pooled = per_channel_concurrently(host.owner.apply_pooling, features)
    side = math.isqrt(pooled.shape[1])
    return pooled.reshape(pooled.shape[0], side, side, -1)


@contextlib.contextmanager
def _zero3_gathered(model: nn.Module, marker: Tensor):
    """DeepSpeed ZeRO-3: the marker is read outside its owner's forward, so register it as an external parameter
    of the patched model (DeepSpeed then gathers it with the model's forward) and gather it for this call if it
    was partitioned before the registration took effect. A no-op for parameters DeepSpeed does not manage."""
    if not hasattr(marker, "ds_id"):
        yield
        return
    import deepspeed

    deepspeed.zero.register_external_parameter(model, marker)
    partitioned = getattr(getattr(marker, "ds_status", None), "name", "") == "NOT_AVAILABLE"
    with deepspeed.zero.GatheredParameters([marker], enabled=partitioned):
        yield


@contextlib.contextmanager
def _onloaded(owner: nn.Module):
    """Context in which an accelerate-offloaded `image_newline` (the marker) holds real values.

    Runs the pre/post-forward of the owner's offloading hooks (a single hook or a `SequentialHook`), as
    accelerate's `align_module_device` does for a single one; a no-op without hooks.
    """
    hook = getattr(owner, "_hf_hook", None)
    hooks = [h for h in getattr(hook, "hooks", (hook,)) if getattr(h, "offload", False)]
    for h in hooks:
        h.pre_forward(owner)
    try:
        yield
    finally:
        for h in reversed(hooks):
            h.post_forward(owner, None)
