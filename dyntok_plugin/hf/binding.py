"""Which `DynTokConfig` is live on a patched model, and whose statistics it holds.

`model.dyntok` is the live settings object. It is a plain instance attribute, so an assignment cannot be seen when
it happens; every DynTok entry point (each patched call, `patch_llava`, `unpatch_llava`) calls `adopt_assigned`
first: a newly assigned `DynTokConfig` then takes over the compressor and the mirrored `model.config.dyntok`, and
anything else is refused with the way out. A config is live on one model at a time, so `last_stats` always holds
the statistics of the model that produced them.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from dyntok_plugin.core import DynTokCompressor, DynTokConfig

CONFIG_ATTRIBUTE = "dyntok"
_OWNERS: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()  # id(config) -> its model
_ABSENT = object()


def claim(config: DynTokConfig, model: nn.Module) -> None:
    """Record that `config` is live on `model`; `ValueError` when another live model already uses it."""
    owner = _OWNERS.get(id(config))
    if owner is not None and owner is not model and owner.__dict__.get(CONFIG_ATTRIBUTE) is config:
        raise ValueError(
            "This DynTokConfig is already live on another model; one config object cannot drive two models "
            "(each model's last_stats must be its own). Give this model its own copy: "
            "patch_llava(model, config=dataclasses.replace(config)), or unpatch_llava the other model first."
        )
    _OWNERS[id(config)] = model


def release(config: DynTokConfig, model: nn.Module) -> None:
    """Forget that `config` is live on `model` (after unpatching)."""
    if _OWNERS.get(id(config)) is model:
        del _OWNERS[id(config)]


def adopt_assigned(model: nn.Module, compressor: DynTokCompressor) -> DynTokConfig:
    """The config live on `model` after taking in an assignment to `model.dyntok` made since the last call."""
    assigned = model.__dict__.get(CONFIG_ATTRIBUTE, _ABSENT)
    current = compressor.config
    if assigned is current:
        return current
    if not isinstance(assigned, DynTokConfig):
        shown = "deleted" if assigned is _ABSENT else f"set to {assigned!r}"
        raise TypeError(
            f"model.dyntok was {shown} while DynTok is on; its settings can only be replaced by another "
            "DynTokConfig. Call unpatch_llava(model) to switch DynTok off, or assign model.dyntok = DynTokConfig(...)."
        )
    claim(assigned, model)
    release(current, model)
    host_config = getattr(model, "config", None)
    if host_config is not None:
        current.stop_mirroring(host_config)
        assigned.mirror_to(host_config, CONFIG_ATTRIBUTE)
    compressor.config = assigned
    return assigned


def clear_stats(compressor: DynTokCompressor) -> None:
    """A call without video: no statistics (not the previous call's)."""
    compressor.last_stats = []
    compressor.config.last_stats = []


def set_config_attribute(objects: Any, config: DynTokConfig) -> None:
    """`obj.dyntok = config` on the model and each wrapper around it."""
    for obj in objects:
        setattr(obj, CONFIG_ATTRIBUTE, config)
