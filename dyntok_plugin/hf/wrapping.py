"""Wrapping one model instance's `forward` and `generate` (never the class), and undoing it exactly.

Shared by the Hugging Face host patches: each binds its own bodies with `install` (through `bind`, which keeps the
original's name, doc and signature: `generate` and `Trainer` inspect them) and undoes it with `uninstall`. Also the
pieces of a patched `generate` that are the same for every host: the call as one keyword dict, the marking of its
decode steps, and the caller's prompt put back at the head of the generated sequences.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .binding import adopt_assigned, clear_stats
from .generation import PromptStreamer, shift_lengths

WRAPPED_METHODS = ("forward", "generate")


@dataclass
class Originals:
    """The methods bound before patching, whether they were instance attributes, and the wrappers installed."""

    methods: dict  # name -> the bound method at patch time (class method or an accelerate hook)
    owned: dict  # name -> whether it was an instance attribute
    installed: dict = field(default_factory=dict)  # name -> wrapper

    @classmethod
    def of(cls, model: nn.Module) -> "Originals":
        return cls({n: getattr(model, n) for n in WRAPPED_METHODS}, {n: n in model.__dict__ for n in WRAPPED_METHODS})


def install(model: nn.Module, state: Any, state_attribute: str, bodies: dict) -> None:
    """Store `state` (with an `originals: Originals` field and a `compressor`) on the instance and bind each
    `bodies[name](model, state, call, args, kwargs)` in place of `model.<name>`."""
    model.__dict__[state_attribute] = state
    originals = state.originals
    originals.installed = {
        name: bind(model, originals.methods[name], body, state_attribute) for name, body in bodies.items()
    }
    for name, wrapper in originals.installed.items():
        setattr(model, name, wrapper)


def uninstall(model: nn.Module, state_attribute: str) -> Any:
    """Undo `install`: the methods bound at patch time put back and the state removed from the instance; returns
    that state (None when the model is not patched), for the host's own clean-up."""
    state = model.__dict__.get(state_attribute)
    if state is None:
        return None
    restore_methods(model, state.originals)
    del model.__dict__[state_attribute]
    return state


def restore_methods(model: nn.Module, originals: Originals) -> None:
    """Put back the methods bound at patch time; a `RuntimeError` (changing nothing) when something wrapped them
    again after patching, since removing DynTok would remove that wrapper too."""
    rewrapped = [name for name, wrapper in originals.installed.items() if model.__dict__.get(name) is not wrapper]
    if rewrapped:
        raise RuntimeError(
            f"model.{rewrapped[0]} was wrapped again after patch_llava (accelerate's prepare_model and Trainer add "
            "mixed-precision wrappers, for example); removing DynTok now would remove that wrapper too. Change the "
            "settings live through model.dyntok instead, or call unpatch_llava before the model is wrapped."
        )
    for name in originals.installed:
        if originals.owned[name]:
            setattr(model, name, originals.methods[name])
        else:
            model.__dict__.pop(name, None)


def bind(model: nn.Module, original: Callable, body: Callable, state_attribute: str) -> types.MethodType:
    """`body` bound to `model` as a method with the original's name, doc and signature. Bound, not a closure, so
    `copy.deepcopy(model)` gets a copy that runs on its own weights."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        state = self.__dict__[state_attribute]
        adopt_assigned(self, state.compressor)
        return body(self, state, named_arguments(signature, args, kwargs), args, kwargs)

    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(parameters=[self_parameter, *signature.parameters.values()])
    return types.MethodType(method, model)


def named_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """The call as one keyword dict (positional arguments named, `**kwargs` flattened)."""
    bound = signature.bind_partial(*args, **kwargs)
    call = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        else:
            call[name] = value
    return call


@contextlib.contextmanager
def generating(state: Any):
    """Marks the decode steps of a generate call (they run the patched forward without videos)."""
    state.generating += 1
    try:
        yield
    finally:
        state.generating -= 1


def call_without_videos(state: Any, name: str, args: tuple, kwargs: dict) -> Any:
    """A call with no videos goes to the original untouched; it clears `last_stats`, except a forward that is a
    decode step of a patched generate."""
    if name == "generate" or not state.generating:
        clear_stats(state.compressor)
    original = state.originals.methods[name]
    if name != "generate":
        return original(*args, **kwargs)
    with generating(state):
        return original(*args, **kwargs)


def generate_with_videos(model: nn.Module, state: Any, call: dict, prepare: Callable[[dict], None]) -> Any:
    """The patched generate of a call with videos: `prepare(call)` (no gradients) rewrites the prompt for DynTok;
    `max_length`/`min_length` and a streamer keep counting the caller's prompt, which heads the returned
    sequences in place of the rewritten one."""
    take_inputs_argument(call)
    user_ids = call.get("input_ids")
    with torch.no_grad():
        prepare(call)
    width = call["input_ids"].shape[1]
    shift_lengths(call, model.generation_config, width - user_ids.shape[1])
    if call.get("streamer") is not None:
        call["streamer"] = PromptStreamer(call["streamer"], user_ids.cpu())
    with generating(state):
        output = state.originals.methods["generate"](**call)
    return restore_prompt(output, user_ids, width)


def check_video_call(call: dict) -> None:
    """`ValueError`/`TypeError` for argument combinations a DynTok call with videos cannot serve."""
    input_ids = call.get("input_ids")
    if input_ids is None:
        raise ValueError("DynTok needs input_ids to find the video placeholders; pass input_ids (not only "
                         "inputs_embeds) together with pixel_values_videos.")
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a tensor, got {type(input_ids).__name__}.")
    if call.get("inputs_embeds") is not None:
        raise ValueError("Pass either input_ids or inputs_embeds together with pixel_values_videos, not both.")
    if (call.get("mm_encoder_outputs") or {}).get("video") is not None:
        raise ValueError("Pass either pixel_values_videos or mm_encoder_outputs['video'], not both.")


def shift_cache_position(call: dict, width: int) -> None:
    """A given `cache_position` re-made for a prompt of `width` tokens, from the same start."""
    if call.get("cache_position") is not None:
        start = call["cache_position"].reshape(-1)[0]
        call["cache_position"] = torch.arange(width, device=call["cache_position"].device) + start


def take_inputs_argument(call: dict) -> None:
    """`generate(inputs=...)` named as `input_ids` (a `ValueError` when both are given)."""
    if call.get("inputs") is not None:
        if call.get("input_ids") is not None:
            raise ValueError("generate() got input ids both as `inputs` and as `input_ids`; pass one of them.")
        call["input_ids"] = call.pop("inputs")
    call.pop("inputs", None)


def restore_prompt(output: Any, user_ids: Tensor, spliced_length: int) -> Any:
    """Replace the spliced prompt at the head of the generated sequences by the caller's `input_ids`."""
    sequences = output if isinstance(output, Tensor) else output.sequences
    copies = sequences.shape[0] // user_ids.shape[0]  # num_return_sequences / beams expand each prompt in place
    prompts = user_ids.to(sequences.device).repeat_interleave(copies, dim=0)
    restored = torch.cat([prompts, sequences[:, spliced_length:]], dim=1)
    if isinstance(output, Tensor):
        return restored
    output.sequences = restored
    return output
