"""`patch_llava` / `unpatch_llava`: find the host of a model instance and switch DynTok on or off."""

from __future__ import annotations

import copy
import importlib
import types
from types import ModuleType
from typing import Any, Optional

from torch import nn

from .core.compressor import DynTokCompressor
from .core.config import DynTokConfig
from .core.errors import UnsupportedModelError
from .hf.binding import CONFIG_ATTRIBUTE, adopt_assigned, claim, release, set_config_attribute

HOST_MODULES = (
    "dyntok_plugin.patches.hf_llava_onevision",
    "dyntok_plugin.patches.hf_qwen_vl",
    "dyntok_plugin.patches.llava_next",
)
_SAVED_SETTING = "_dyntok_saved_setting"  # the host config's DynTok setting before patch_llava, restored on unpatch
_ABSENT = object()


def patch_llava(model: nn.Module, threshold: Any = ..., *, config: Optional[DynTokConfig] = None, **settings: Any):
    """Switch DynTok on for this model instance (never its class) and return the same model.

    Args:
        model: a Hugging Face `LlavaOnevisionForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`,
            `Qwen3VLForConditionalGeneration` or `Qwen3VLMoeForConditionalGeneration`, or a LLaVA-NeXT
            `LlavaQwenForCausalLM`-family model, bare or wrapped by PEFT, DDP, FSDP, DeepSpeed or `torch.compile`.
        threshold: similarity threshold (`DynTokConfig.threshold`); `None` with a budget.
        config: a ready `DynTokConfig` instead of keyword settings (held by reference: edit it live). A config is
            live on one model at a time (its `last_stats` are that model's): give each model its own.
        **settings: any other `DynTokConfig` field (`marker`, `similarity`, `train_threshold_range`, `max_tokens`,
            `target_ratio`, `seed`). Unset fields take the host's defaults: `marker="none"` for Qwen VL (no
            newline embedding), the `DynTokConfig` defaults otherwise.

    With no settings at all, the settings saved in `model.config` by an earlier `patch_llava` (they survive
    `save_pretrained`/`from_pretrained`) are restored, else the defaults are used. Calling it again re-patches with
    the new settings; wrappers never stack. The live settings are `model.dyntok` (assigning another `DynTokConfig`
    takes effect at the next call or `save_pretrained`), the last call's per-video statistics
    `model.dyntok.last_stats` (empty after a call without video). A patched model cannot be pickled: use
    `save_pretrained`.

    Example:
        >>> from dyntok_plugin import patch_llava, unpatch_llava
        >>> patch_llava(model, threshold=0.7)          # doctest: +SKIP
        >>> model.dyntok.threshold = 0.8               # doctest: +SKIP
        >>> unpatch_llava(model)                       # doctest: +SKIP
    """
    target = unwrap_model(model)
    host = find_host(target)
    if is_patched(target) and isinstance(target.__dict__.get(CONFIG_ATTRIBUTE), DynTokConfig):
        adopt_assigned(target, _compressor(target))  # an assigned model.dyntok is what "keep the settings" keeps
    cfg = _resolve_config(target, threshold, config, settings, getattr(host, "DEFAULT_SETTINGS", {}))
    claim(cfg, target)
    if is_patched(target):
        unpatch_llava(model)
    host.patch(target, cfg)
    claim(cfg, target)
    for name, method in _INSTANCE_METHODS.items():
        if name not in target.__dict__ and (name.startswith("__") or callable(getattr(type(target), name, None))):
            target.__dict__[name] = types.MethodType(method, target)
    set_config_attribute({id(o): o for o in (model, target)}.values(), cfg)
    host_config = getattr(target, "config", None)
    if host_config is not None:
        target.__dict__[_SAVED_SETTING] = getattr(host_config, CONFIG_ATTRIBUTE, _ABSENT)
        cfg.mirror_to(host_config, CONFIG_ATTRIBUTE)
    return model


def unpatch_llava(model: nn.Module):
    """Restore this model's exact original behaviour, including the DynTok settings its config held before
    `patch_llava` (e.g. from a checkpoint); returns the model. Works whatever was assigned to `model.dyntok`."""
    target = unwrap_model(model)
    if not is_patched(target):
        return model
    cfg = _compressor(target).config
    find_host(target).unpatch(target)
    release(cfg, target)
    for name, method in _INSTANCE_METHODS.items():
        if getattr(target.__dict__.get(name), "__func__", None) is method:
            del target.__dict__[name]
    for obj in (model, target):
        obj.__dict__.pop(CONFIG_ATTRIBUTE, None)
    host_config = getattr(target, "config", None)
    saved = target.__dict__.pop(_SAVED_SETTING, _ABSENT)
    if host_config is not None:
        cfg.stop_mirroring(host_config)
        if saved is _ABSENT:
            if hasattr(host_config, CONFIG_ATTRIBUTE):
                delattr(host_config, CONFIG_ATTRIBUTE)
        else:
            setattr(host_config, CONFIG_ATTRIBUTE, saved)
    return model


def _refuse_pickling(model: nn.Module, protocol: int = 2):
    """`pickle`/`torch.save` of a patched model: refused, since the loaded copy would run without DynTok."""
    raise TypeError(
        "A model patched by DynTok cannot be pickled (torch.save(model), pickle.dumps): the loaded copy would run "
        "the stock forward/generate. Save it with model.save_pretrained(folder) (the DynTok settings are saved in its "
        "config) and load it with from_pretrained followed by patch_llava(model); or torch.save(model.state_dict()); "
        "or call unpatch_llava(model) before pickling."
    )


def _deepcopy(model: nn.Module, memo: dict) -> nn.Module:
    """`copy.deepcopy` of a patched model: as for any module (a patched copy on its own weights and settings)."""
    return copy._reconstruct(model, memo, *object.__reduce_ex__(model, 4))


def _save_pretrained(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`save_pretrained` that first takes in a `model.dyntok` assigned since the last call, so the saved config
    holds the settings the model now runs with."""
    if isinstance(model.__dict__.get(CONFIG_ATTRIBUTE), DynTokConfig):
        adopt_assigned(model, _compressor(model))
    return type(model).save_pretrained(model, *args, **kwargs)


# Instance methods patch_llava adds (class methods of the same name stay untouched) and unpatch_llava removes.
_INSTANCE_METHODS = {"__reduce_ex__": _refuse_pickling, "__deepcopy__": _deepcopy, "save_pretrained": _save_pretrained}


def is_patched(model: nn.Module) -> bool:
    """Whether DynTok is on for this model instance."""
    target = unwrap_model(model)
    return any(host.STATE_ATTRIBUTE in target.__dict__ for host in host_modules())


def _compressor(target: nn.Module) -> DynTokCompressor:
    """The compressor of a patched (unwrapped) model."""
    states = (target.__dict__[h.STATE_ATTRIBUTE] for h in host_modules() if h.STATE_ATTRIBUTE in target.__dict__)
    return next(states).compressor


def unwrap_model(model: nn.Module) -> nn.Module:
    """The host model inside PEFT (`get_base_model`), DDP/FSDP/DeepSpeed (`.module`) and `torch.compile`
    (`._orig_mod`) wrappers."""
    for _ in range(8):
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(model.__dict__.get("_modules", {}).get("_orig_mod"), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model
    return model


def host_modules() -> list:
    """The host patch modules, imported on first use (a host's libraries load only when needed)."""
    return [importlib.import_module(name) for name in HOST_MODULES]


def find_host(model: nn.Module) -> ModuleType:
    """The patch module that recognises this model, or an `UnsupportedModelError` naming the supported classes."""
    hosts = host_modules()
    for host in hosts:
        if host.is_supported(model):
            return host
    supported = ", ".join(name for host in hosts for name in host.SUPPORTED_CLASSES)
    raise UnsupportedModelError(
        f"patch_llava does not support {type(model).__name__}. Supported: {supported}. Pass the model itself "
        "(PEFT, DDP, FSDP and DeepSpeed wrappers are unwrapped automatically)."
    )


def _resolve_config(
    model: nn.Module, threshold: Any, config: Optional[DynTokConfig], settings: dict, host_defaults: dict
) -> DynTokConfig:
    """Keyword settings on top of the host's defaults (`marker="none"` for hosts without a newline embedding);
    else `config` (as given); else the live settings of an already patched model; else those saved in the
    model's config; else the host's defaults."""
    explicit = threshold is not ... or bool(settings)
    if config is not None:
        if explicit:
            raise ValueError("Pass either config=DynTokConfig(...) or keyword settings to patch_llava, not both.")
        if not isinstance(config, DynTokConfig):
            raise TypeError(f"config must be a DynTokConfig, got {type(config).__name__}.")
        return config
    if explicit:
        if threshold is not ...:
            settings["threshold"] = threshold
        return DynTokConfig.from_dict({**host_defaults, **settings})
    if is_patched(model):
        return _compressor(model).config
    saved = getattr(getattr(model, "config", None), CONFIG_ATTRIBUTE, None)
    return _saved_config(saved) if isinstance(saved, dict) else DynTokConfig(**host_defaults)


def _saved_config(saved: dict) -> DynTokConfig:
    """The settings a checkpoint saved in `config.dyntok`; a `ValueError` that says where they came from."""
    try:
        return DynTokConfig.from_dict(dict(saved))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The DynTok settings saved in this model's config (`config.dyntok` = {dict(saved)!r}, read from the "
            f"checkpoint) are not valid for this dyntok_plugin version: {error} Pass the settings explicitly "
            "(patch_llava(model, threshold=...) or config=DynTokConfig(...)), or fix or delete `dyntok` in the "
            "checkpoint's config.json."
        ) from error


patch_model = patch_llava  # a neutral name for hosts that are not LLaVA (same function)
unpatch_model = unpatch_llava
