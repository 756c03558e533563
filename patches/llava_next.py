"""DynTok for the LLaVA-NeXT codebase and its forks (`llava` from git, `llavaction` on PyPI).

LLaVA-NeXT already splices visual features of any length into the sequence (labels, mask and padding follow),
and with `config.mm_newline_position == "grid"` it hands each video's pooled, projected features `(F, h*w, D)` to
`add_token_per_grid`, which appends `image_newline` after every row. This module overrides that one method on the
instance to return DynTok's tokens instead (merged groups, then the marker, per row by default) and takes the
`"grid"` route only while its own splice runs: `model.config` keeps the checkpoint's `mm_newline_position`, so a
model saved while patched still loads without the plugin in the layout it had. `forward`, `generate`, training and
`dpo_forward` need no other change.

The similarity features (pooled pre-projector vision features, as in the paper) come without running the vision
tower twice: a forward pre-hook on `mm_projector` captures its input while the instance's
`prepare_inputs_labels_for_multimodal` runs (a pass-through wrapper that only records which items are videos and
checks the call), and the host's own `get_2dPool` pools them to the same grid.

The host is recognised by its methods, never by importing `llava`, so any fork with the same hook point works.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from dyntok_plugin.core import DynTokCompressor, DynTokConfig
from dyntok_plugin.hf.binding import adopt_assigned, clear_stats

logger = logging.getLogger(__name__)

SUPPORTED_CLASSES = (
    "LLaVA-NeXT LlavaQwenForCausalLM (and the other LlavaMetaForCausalLM models of `llava` or forks such as "
    "`llavaction`)",
)
STATE_ATTRIBUTE = "_dyntok_llava_next_state"
_HOOK_METHODS = ("prepare_inputs_labels_for_multimodal", "add_token_per_grid")
_REQUIRED_METHODS = ("get_model", "get_vision_tower", "get_2dPool") + _HOOK_METHODS
_MISSING = object()
# The DynTok marker layout that reproduces each stock LLaVA-NeXT newline layout exactly at threshold >= 1.
STOCK_MARKER = {"grid": "row", "frame": "frame", "one_token": "video", "no_token": "none"}
_HOST_DEFAULT_POSITION = "one_token"  # what LLaVA-NeXT uses when the config has no mm_newline_position


@dataclass
class _Call:
    """What one `prepare_inputs_labels_for_multimodal` call needs: the videos' frame ranges in the batch of
    images, the captured projector inputs and the statistics gathered so far."""

    videos: list  # (first frame, frame count) per video, in the order the host visits them
    total_frames: int
    captured: list = field(default_factory=list)
    stats: list = field(default_factory=list)
    newline_position: Any = None  # the config's own mm_newline_position (or _MISSING) while "grid" is set


@dataclass
class _State:
    """Everything patch() changed, so that unpatch() restores it exactly."""

    compressor: DynTokCompressor
    hook: Any  # RemovableHandle of the projector pre-hook
    instance_methods: dict  # name -> the instance attribute it replaced, or _MISSING
    prepare: Callable  # the prepare_inputs_labels_for_multimodal bound before patching
    prepare_signature: inspect.Signature
    modalities_defaults: tuple  # default `modalities` lists of forward/generate/prepare: "not given" sentinels
    call: Optional[_Call] = None
    warned_layout: bool = False


def is_supported(model: nn.Module) -> bool:
    """Whether `model` has LLaVA-NeXT's multimodal methods (duck typing: any fork qualifies)."""
    return all(callable(getattr(model, name, None)) for name in _REQUIRED_METHODS)


def patch(model: nn.Module, config: DynTokConfig) -> None:
    """Route videos through DynTok on this instance; validates everything before changing anything."""
    if STATE_ATTRIBUTE in model.__dict__:
        raise RuntimeError("This model is already patched by DynTok; call unpatch_llava(model) first.")
    inner = model.get_model()
    _check_static(model, inner)
    compressor = DynTokCompressor(
        hidden_size=_hidden_size(model, inner), config=config, marker=functools.partial(_newline, model)
    )
    state = _State(
        compressor=compressor,
        hook=None,
        instance_methods={name: model.__dict__.get(name, _MISSING) for name in _HOOK_METHODS},
        prepare=model.prepare_inputs_labels_for_multimodal,
        prepare_signature=inspect.signature(model.prepare_inputs_labels_for_multimodal),
        modalities_defaults=_modalities_defaults(model),
    )
    state.hook = inner.mm_projector.register_forward_pre_hook(functools.partial(_capture_projector_input, state))
    model.__dict__[STATE_ATTRIBUTE] = state
    model.prepare_inputs_labels_for_multimodal = types.MethodType(_prepare_inputs_labels_for_multimodal, model)
    model.add_token_per_grid = types.MethodType(_add_token_per_grid, model)


def unpatch(model: nn.Module) -> None:
    """Remove the hook and the instance methods (the config's newline setting was never changed)."""
    state = model.__dict__.pop(STATE_ATTRIBUTE, None)
    if state is None:
        return
    state.hook.remove()
    for name, original in state.instance_methods.items():
        if original is _MISSING:
            model.__dict__.pop(name, None)
        else:
            setattr(model, name, original)


def _hidden_size(model: nn.Module, inner: nn.Module) -> int:
    return int(getattr(model.config, "hidden_size", 0) or inner.embed_tokens.weight.shape[-1])


def _newline(model: nn.Module) -> Tensor:
    """The host's `image_newline`, read at call time (ZeRO-3 gathers it on access)."""
    return model.get_model().image_newline


def _check_static(model: nn.Module, inner: nn.Module) -> None:
    """The preconditions that hold for the model as built (checked before anything is changed)."""
    _check_config(model)
    newline = getattr(inner, "image_newline", None)
    hidden = _hidden_size(model, inner)
    if not isinstance(newline, Tensor):
        raise ValueError(
            "This LLaVA-NeXT model has no image_newline parameter (it is only created when mm_patch_merge_type "
            f"contains 'unpad'; here {getattr(model.config, 'mm_patch_merge_type', None)!r}). DynTok uses it as "
            "its grid marker: use a checkpoint built with mm_patch_merge_type='spatial_unpad' (all LLaVA-OneVision "
            "and LLaVA-Video checkpoints are)."
        )
    if tuple(getattr(newline, "ds_shape", newline.shape)) != (hidden,):
        raise ValueError(
            f"image_newline has shape {tuple(getattr(newline, 'ds_shape', newline.shape))}, expected ({hidden},) "
            "(the LLM hidden size); this checkpoint's newline does not fit DynTok's row marker."
        )
    if not isinstance(getattr(inner, "mm_projector", None), nn.Module):
        raise ValueError(
            "This LLaVA-NeXT model has no mm_projector module; build it (initialize_vision_modules) before "
            "patch_llava."
        )
    tower = model.get_vision_tower()
    side = getattr(tower, "num_patches_per_side", None)
    if tower is None or not isinstance(side, int):
        raise ValueError(
            "The vision tower is missing or does not expose num_patches_per_side; build the vision tower "
            "(initialize_vision_modules, or load the checkpoint) before patch_llava."
        )
    patches = getattr(tower, "num_patches", side * side)
    if patches != side * side:
        raise ValueError(
            f"The vision tower gives {patches} patches, not a square {side}x{side} grid; LLaVA-NeXT's video path "
            "and DynTok's row merging need a square patch grid (use a square-input tower such as SigLIP-384)."
        )


def _check_config(model: nn.Module) -> None:
    """The config preconditions; checked at patch time and on every call (configs can be edited later)."""
    cfg = model.config
    merge = getattr(cfg, "mm_patch_merge_type", "flat")
    if not str(merge).startswith("spatial"):
        raise ValueError(
            f"mm_patch_merge_type={merge!r} sends videos past LLaVA-NeXT's row layout, so DynTok would never run; "
            "it needs a 'spatial...' merge type with a newline (use 'spatial_unpad', as LLaVA-OneVision does)."
        )
    if getattr(cfg, "add_faster_video", False):
        raise ValueError(
            "add_faster_video=True interleaves a second, coarser video stream that DynTok does not compress; "
            "set model.config.add_faster_video = False before patch_llava."
        )


def _modalities_defaults(model: nn.Module) -> tuple:
    """The default `modalities` objects of the host's entry points: receiving one of them means "not given"."""
    defaults = []
    for name in ("forward", "generate", "prepare_inputs_labels_for_multimodal"):
        try:
            parameter = inspect.signature(getattr(model, name)).parameters.get("modalities")
        except (TypeError, ValueError):
            continue
        if parameter is not None and isinstance(parameter.default, list):
            defaults.append(parameter.default)
    return tuple(defaults)


def _capture_projector_input(state: _State, module: nn.Module, args: tuple) -> None:
    """Forward pre-hook on `mm_projector`: keep its input (the vision features) for the current call."""
    if state.call is not None and args and isinstance(args[0], Tensor):
        state.call.captured.append(args[0])


def _prepare_inputs_labels_for_multimodal(self: nn.Module, *args: Any, **kwargs: Any):
    """The host's splice, unchanged, run with a record of which images are videos (for the projector hook)."""
    state: _State = self.__dict__[STATE_ATTRIBUTE]
    bound = state.prepare_signature.bind(*args, **kwargs)
    images = bound.arguments.get("images")
    modalities = bound.arguments.get("modalities", _MISSING)
    if images is None or state.call is not None:
        if images is None and state.call is None and bound.arguments.get("past_key_values") is None:
            clear_stats(state.compressor)  # a new call without video (decode steps carry a cache)
        return state.prepare(*args, **kwargs)
    _check_config(self)
    adopt_assigned(self, state.compressor)
    state.call = _plan(images, modalities, state.modalities_defaults)
    original = state.call.newline_position = self.config.__dict__.get("mm_newline_position", _MISSING)
    self.config.mm_newline_position = "grid"  # the route through add_token_per_grid, for this call only
    try:
        result = state.prepare(*args, **kwargs)
    finally:
        call, state.call = state.call, None
        _restore_newline_position(self.config, original)
    state.compressor.last_stats = list(call.stats)  # all videos of the call ([] for images only)
    state.compressor.config.last_stats = list(call.stats)
    return result


def _restore_newline_position(config: Any, original: Any) -> None:
    """Put back the config's `mm_newline_position` (absent when it was absent)."""
    if original is _MISSING:
        config.__dict__.pop("mm_newline_position", None)
    else:
        config.mm_newline_position = original


def _plan(images: Any, modalities: Any, defaults: tuple) -> _Call:
    """Where each video's frames sit in the batch the host encodes; rejects calls that would skip DynTok."""
    if isinstance(images, Tensor) and images.dim() != 5:
        if isinstance(modalities, (list, tuple)) and "video" in modalities:
            raise ValueError(
                f"images is a single {images.dim()}-D tensor, which LLaVA-NeXT encodes as separate images, not as a "
                "video; pass images=[video] (a list with one (frames, 3, H, W) tensor per video) with "
                "modalities=['video', ...]."
            )
        return _Call(videos=[], total_frames=0)
    items = list(images)
    frames = [int(item.shape[0]) if item.dim() == 4 else 1 for item in items]
    not_given = modalities is _MISSING or modalities is None or any(modalities is d for d in defaults)
    if not_given:
        if any(count > 1 for count in frames):
            raise ValueError(
                "DynTok is on but no modalities were given, so LLaVA-NeXT treats the multi-frame item(s) of `images` "
                "as image crops and no video is compressed. Pass modalities=['video'] (one entry per item of "
                "`images`: 'video' for each video, 'image' for each image) to forward/generate."
            )
        return _Call(videos=[], total_frames=sum(frames))
    if isinstance(modalities, str):
        modalities = [modalities]
    if "video" in modalities and len(modalities) != len(items):
        raise ValueError(
            f"modalities has {len(modalities)} entries but images has {len(items)} items; give exactly one entry "
            "per item of `images` ('video' or 'image'), in the same order."
        )
    starts = [sum(frames[:i]) for i in range(len(frames))]
    videos = [(starts[i], frames[i]) for i in range(len(items)) if i < len(modalities) and modalities[i] == "video"]
    return _Call(videos=videos, total_frames=sum(frames))


def _add_token_per_grid(self: nn.Module, image_feature: Tensor) -> Tensor:
    """DynTok instead of one newline per row: `(F, h*w, D)` pooled features -> `(N, D)` tokens, markers included."""
    state: _State = self.__dict__[STATE_ATTRIBUTE]
    compressor = state.compressor
    compressor.train(self.training)
    frames, count, dim = image_feature.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(
            f"add_token_per_grid got {count} tokens per frame, not a square grid; DynTok (like LLaVA-NeXT's row "
            "layout) needs square frames: use a square-input vision tower and mm_spatial_pool_mode "
            "'bilinear', 'average' or 'max'."
        )
    similarity = None
    if compressor.config.similarity == "vision":
        similarity = _similarity_features(self, state, frames, count).reshape(frames, side, side, -1)
    _warn_layout_once(self, state)
    batch = compressor.compress_batch(image_feature.reshape(frames, side, side, dim), [frames], similarity)
    if state.call is not None:
        state.call.stats.extend(batch.stats)
    return batch.tokens


def _similarity_features(model: nn.Module, state: _State, frames: int, count: int) -> Tensor:
    """The next video's pre-projector features, pooled by the host's `get_2dPool` (no gradient)."""
    call = state.call
    if call is None:
        raise RuntimeError(
            "add_token_per_grid ran outside prepare_inputs_labels_for_multimodal, so the vision features for "
            "DynTok's similarity='vision' were not captured; call the model's forward/generate, or set "
            "model.dyntok.similarity = 'projected'."
        )
    if not call.videos:
        raise RuntimeError(
            "LLaVA-NeXT asked for more video layouts than the call has videos (modalities/images mismatch or a fork "
            "that calls add_token_per_grid elsewhere); set model.dyntok.similarity = 'projected' to compress "
            "without the captured vision features."
        )
    start, expected = call.videos.pop(0)
    captured = torch.cat(call.captured) if len(call.captured) > 1 else (call.captured or [None])[0]
    if captured is None or captured.dim() != 3 or captured.shape[0] != call.total_frames or expected != frames:
        shape = None if captured is None else tuple(captured.shape)
        raise RuntimeError(
            f"The projector inputs captured for DynTok ({shape}) do not line up with the batch ({call.total_frames} "
            f"frames; this video {expected} frames, LLaVA-NeXT pooled {frames}). This LLaVA-NeXT fork encodes "
            "images differently; set model.dyntok.similarity = 'projected'."
        )
    with torch.no_grad():
        pooled = model.get_2dPool(captured[start:start + frames].detach().contiguous())
    if pooled.shape[:2] != (frames, count):
        raise RuntimeError(
            f"Pooling the vision features gave {tuple(pooled.shape[:2])} tokens, but LLaVA-NeXT pooled the projected "
            f"features to {(frames, count)}; set model.dyntok.similarity = 'projected'."
        )
    return pooled


def _warn_layout_once(model: nn.Module, state: _State) -> None:
    """Log once when DynTok's marker layout differs from the layout this checkpoint was trained with."""
    original = state.call.newline_position if state.call is not None else _MISSING
    original = _HOST_DEFAULT_POSITION if original is _MISSING else original
    stock = STOCK_MARKER.get(original)
    marker = state.compressor.config.marker
    if state.warned_layout or stock is None or stock == marker:
        return
    state.warned_layout = True
    logger.warning(
        "This model was set up with mm_newline_position=%r (marker=%r in DynTok terms), but DynTok runs with "
        "marker=%r: the visual-token layout differs from the one the checkpoint was trained with, which shifts its "
        "input distribution (fine-tune with DynTok, or keep the stock layout with patch_llava(model, marker=%r)).",
        original, stock, marker, stock,
    )
