"""DynTok inside vLLM: a general plugin that serves LLaVA-OneVision with budget-mode DynTok.

vLLM loads `register` in every process through the `vllm.general_plugins` entry point `dyntok` (installed with
the package; the `vllm` extra brings vLLM itself). It registers DynTok's subclass of vLLM's own model class under
the existing architecture name. The subclass is imported there, inside vLLM (importing `dyntok_plugin` never
imports vLLM), and registered as a class: a class given by import path would be inspected in a fresh subprocess at
every engine start (an extra import of vLLM).
The subclass reads the settings from the model's config (`dyntok`, saved by a patched model or given with
`hf_overrides` / `--hf-overrides`); without them it is vLLM's model, unchanged.

Host-neutral parts (`settings`, `budget`) read and check the settings and count and compress a video; one module
per host (`llava_onevision`) plugs them into that host's vLLM class. Another host (Qwen2.5-VL, Qwen3-VL) adds a
module and an entry in `MODELS`.
"""

from __future__ import annotations

from .settings import SETTINGS_KEY, serving_config

# vLLM architecture name -> "module:class" of DynTok's subclass.
MODELS = {
    "LlavaOnevisionForConditionalGeneration":
        "dyntok_plugin.vllm.llava_onevision:DynTokLlavaOnevisionForConditionalGeneration",
}


def register() -> None:
    """The `vllm.general_plugins` entry point: put DynTok's model classes in vLLM's registry."""
    import importlib

    from vllm import ModelRegistry

    for architecture, target in MODELS.items():
        module, name = target.split(":")
        ModelRegistry.register_model(architecture, getattr(importlib.import_module(module), name))


__all__ = ["MODELS", "SETTINGS_KEY", "register", "serving_config"]
