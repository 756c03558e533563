"""DynTok for Hugging Face Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (`...ForConditionalGeneration`, transformers >= 5.18).

The processor fixes `t*h'*w'` `<|video_pad|>` ids per video (Qwen3-VL: `h'*w'` per temporal slice, between
timestamps), and M-RoPE positions come from `get_rope_index`, which only understands full-length runs. So this
module wraps the instance's `forward` and `generate` (`functools.wraps`: the signatures stay): when
`pixel_values_videos` is given, the wrappers

1. compute the stock 3-D positions of the full sequence (stock `get_rope_index`, or the caller's `position_ids`);
2. run the stock `get_video_features` and DynTok on each video's merged grid (`qwen_vl_video`);
3. shorten the batch by gathering (`dyntok_plugin.hf.resplice`): text positions are kept, a video placeholder is
   kept once per token anchored there (a group's first member; a marker at the last position it closes), so every
   text token keeps exactly its stock position and every video token the stock position of its group's first
   member; ids, labels (-100 on visual positions), `mm_token_type_ids` and the mask follow; rows are re-padded;
4. call the original with the shortened `input_ids`, explicit `position_ids` and
   `mm_encoder_outputs={"video": <DynTok tokens and DeepStack levels>, "image": <stock image features>}`, so the
   host's own placeholder scatter and DeepStack injection run unchanged, and set `model.model.rope_deltas` to
   `max stock position + 1 - shortened length` per sample, so a later forward on a cache without `position_ids`
   continues where the stock model would.

`generate` passes `(4, B, W)` positions (text row + M-RoPE rows, as the stock `_prepare_position_ids_for_generation`
does); the generation loop extends them by one per step from the last prompt token's position, as on the stock
model. Calls without videos go to the original untouched. These hosts have no newline embedding: the default
marker is `"none"`; other layouts use a learnable `(D,)` marker that the plugin owns, registered on the model as
`dyntok_marker` (trainable, kept across re-patching, saved by `dyntok_plugin.train`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from dyntok_plugin.core import DynTokCompressor, DynTokConfig
from dyntok_plugin.hf.common import transformers_version
from dyntok_plugin.hf.generation import padding_of
from dyntok_plugin.hf.parts import PLUGIN_MARKER
from dyntok_plugin.hf.splice import IGNORE_INDEX, check_text_inputs
from dyntok_plugin.hf.wrapping import (
    Originals,
    call_without_videos,
    check_video_call,
    generate_with_videos,
    install,
    shift_cache_position,
    uninstall,
)

from . import qwen_vl_positions as positions
from .qwen_vl_video import check_videos, compress_videos

SUPPORTED_CLASSES = (
    "transformers.Qwen2_5_VLForConditionalGeneration",
    "transformers.Qwen3VLForConditionalGeneration",
    "transformers.Qwen3VLMoeForConditionalGeneration",
)
STATE_ATTRIBUTE = "_dyntok_qwen_state"
MARKER_ATTRIBUTE = PLUGIN_MARKER
DEFAULT_SETTINGS = {"marker": "none"}
MIN_TRANSFORMERS = (5, 18)  # first with `mm_encoder_outputs` on forward and in generate
_CLASS_NAMES = tuple(name.split(".")[-1] for name in SUPPORTED_CLASSES)
_MARKERS: "weakref.WeakKeyDictionary[nn.Module, nn.Parameter]" = weakref.WeakKeyDictionary()  # kept for re-patching


@dataclass
class _Host:
    """The parts of one Qwen VL instance that DynTok uses."""

    owner: nn.Module  # `model.model`: visual, language_model, get_rope_index, get_video_features, rope_deltas
    video_token_id: int
    image_token_id: int
    pad_token_id: int
    merge: int
    hidden_size: int
    slice_runs: bool  # Qwen3-VL: one placeholder run per temporal slice (timestamps between them)


@dataclass
class _State:
    host: _Host
    compressor: DynTokCompressor
    originals: Originals
    generating: int = 0


def is_supported(model: nn.Module) -> bool:
    """Whether `model` is (a subclass of) one of the supported Qwen VL classes."""
    return any(cls.__name__ in _CLASS_NAMES for cls in type(model).__mro__)


def patch(model: nn.Module, config: DynTokConfig) -> None:
    """Wrap this instance's `forward` and `generate`; validates everything before changing anything."""
    if STATE_ATTRIBUTE in model.__dict__:
        raise RuntimeError("This model is already patched by DynTok; call unpatch_llava(model) first.")
    if transformers_version() < MIN_TRANSFORMERS:
        import transformers

        raise RuntimeError(
            f"DynTok for {type(model).__name__} needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} "
            f"(pre-computed video features through mm_encoder_outputs); found {transformers.__version__}. "
            "Upgrade: pip install -U 'transformers>=5.18'."
        )
    host = _find_host(model)
    weight = model.get_input_embeddings().weight
    marker = _MARKERS.get(model)
    if marker is None:  # drawn like the core's own marker; kept for later re-patching of this model
        marker = _MARKERS[model] = nn.Parameter(torch.randn(host.hidden_size) / math.sqrt(host.hidden_size))
    marker.data = marker.data.to(device=weight.device, dtype=weight.dtype)  # the model may have moved since
    compressor = DynTokCompressor(hidden_size=host.hidden_size, config=config, marker=marker)
    if config.marker != "none":
        model.register_parameter(MARKER_ATTRIBUTE, marker)
    state = _State(host=host, compressor=compressor, originals=Originals.of(model))
    install(model, state, STATE_ATTRIBUTE, {"forward": _forward, "generate": _generate})


def unpatch(model: nn.Module) -> None:
    """Put back the forward/generate bound at patch time and drop all DynTok state (the marker parameter too)."""
    state = uninstall(model, STATE_ATTRIBUTE)
    if state is None:
        return
    model._parameters.pop(MARKER_ATTRIBUTE, None)
    state.host.owner.rope_deltas = None  # DynTok's deltas belong to a shortened sequence the stock model never saw


def plugin_marker(model: nn.Module) -> nn.Parameter | None:
    """The learnable marker DynTok registered on a patched model (layouts other than `"none"`), else None."""
    return model._parameters.get(MARKER_ATTRIBUTE)


def _find_host(model: nn.Module) -> _Host:
    owner = getattr(model, "model", None)
    needed = ("visual", "language_model", "get_rope_index", "get_video_features")
    if owner is None or not all(hasattr(owner, name) for name in needed):
        raise TypeError(f"{type(model).__name__} lacks model.model with {list(needed)}; this transformers "
                        "version's Qwen VL layout is not supported by dyntok_plugin.")
    config = model.config
    text = config.text_config
    pad = getattr(text, "pad_token_id", None)
    return _Host(
        owner=owner,
        video_token_id=int(config.video_token_id),
        image_token_id=int(config.image_token_id),
        pad_token_id=int(pad) if pad is not None else 0,
        merge=int(config.vision_config.spatial_merge_size),
        hidden_size=int(text.hidden_size),
        slice_runs=config.model_type.startswith("qwen3"),
    )


def _forward(model: nn.Module, state: _State, call: dict, args: tuple, kwargs: dict):
    if call.get("pixel_values_videos") is None:
        return call_without_videos(state, "forward", args, kwargs)
    side, _ = padding_of(call.get("attention_mask"), call.get("labels"))
    given = call.get("position_ids")
    _shorten(model, state, call, side, text_row=given is not None and given.dim() == 3 and given.shape[0] == 4)
    output = state.originals.methods["forward"](**call)
    if not isinstance(output, tuple):
        output.attention_mask = call["attention_mask"]  # the mask of the sequence that ran (to extend when decoding)
    return output


def _generate(model: nn.Module, state: _State, call: dict, args: tuple, kwargs: dict):
    if call.get("pixel_values_videos") is None:
        return call_without_videos(state, "generate", args, kwargs)
    return generate_with_videos(model, state, call, lambda call: _shorten(model, state, call, "left", text_row=True))


def _shorten(model: nn.Module, state: _State, call: dict, side: str, text_row: bool) -> None:
    """DynTok's video tokens, and `call` rewritten in place for the shortened sequence."""
    host, compressor = state.host, state.compressor
    if compressor.config.marker != "none" and plugin_marker(model) is None:
        raise ValueError(
            f"model.dyntok.marker was set to {compressor.config.marker!r} after patching with marker='none'; the "
            "learnable marker of the other layouts is registered (to train and be saved) at patch time: call "
            f"unpatch_llava(model), then patch_llava(model, marker={compressor.config.marker!r}, ...)."
        )
    check_video_call(call)
    input_ids = call["input_ids"]
    attention_mask, labels = call.get("attention_mask"), call.get("labels")
    check_text_inputs(input_ids, attention_mask, labels)
    types = call.get("mm_token_type_ids")
    if types is None:  # as the processor makes them: 1 on image pads, 2 on video pads
        types = (input_ids == host.video_token_id).int() * 2 + (input_ids == host.image_token_id).int()
    pixels = call.pop("pixel_values_videos")
    grid_thw = call.pop("video_grid_thw", None)
    grids = check_videos(pixels, grid_thw, host.merge)
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    placeholder = (input_ids == host.video_token_id) & valid
    positions.check_runs(placeholder, grids, host.slice_runs)
    source_positions = positions.stock_positions(host.owner, call, input_ids, types, grid_thw, attention_mask)
    compressor.train(model.training)
    videos = compress_videos(host.owner, compressor, pixels, grid_thw, grids)
    multiple = compressor.config.pad_to_multiple_of if labels is not None else None
    plan = positions.plan(valid, placeholder, videos.repeats, side, multiple)
    ids = plan.take(input_ids, host.pad_token_id)
    call["input_ids"] = ids
    call["attention_mask"] = plan.mask(attention_mask.dtype if attention_mask is not None else torch.long)
    call["mm_token_type_ids"] = plan.take(types, 0)
    if labels is not None:
        call["labels"] = plan.take(labels, IGNORE_INDEX).masked_fill(ids == host.video_token_id, IGNORE_INDEX)
    shortened = positions.take_positions(plan, source_positions)
    host.owner.rope_deltas = positions.rope_deltas(source_positions, valid, plan)
    call["position_ids"] = positions.with_text_row(shortened, call["attention_mask"]) if text_row else shortened
    shift_cache_position(call, plan.width)
    encoded = dict(call.get("mm_encoder_outputs") or {})
    encoded["video"] = videos.encoder_output
    if call.get("pixel_values") is not None:
        encoded["image"] = host.owner.get_image_features(
            call.pop("pixel_values"), call.get("image_grid_thw"), return_dict=True
        )
    call["mm_encoder_outputs"] = encoded
    call.pop("second_per_grid_ts", None)
