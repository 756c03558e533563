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


SUPPORTED_VLLM = ((0, 32), (0, 33))  # [lowest, first unsupported): what the `vllm` extra installs


def register() -> None:
    """The `vllm.general_plugins` entry point: put DynTok's model classes in vLLM's registry.

    vLLM calls it in every process wherever dyntok-plugin is installed, and does not catch its errors, so a vLLM
    outside the supported range (whose model classes may differ) gets one warning and vLLM's own models, never a
    failing engine."""
    import importlib
    import logging

    import vllm

    logger = logging.getLogger(__name__)
    version = tuple(int(part) for part in vllm.__version__.split(".")[:2] if part.isdigit())
    low, high = SUPPORTED_VLLM
    if not low <= version < high:
        logger.warning("dyntok_plugin supports vLLM >=%s,<%s (pip install 'dyntok-plugin[vllm]'); found %s: "
                       "DynTok is not registered.", ".".join(map(str, low)), ".".join(map(str, high)),
                       vllm.__version__)
        return
    from vllm import ModelRegistry

    for architecture, target in MODELS.items():
        module, name = target.split(":")
        try:
            model_class = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            logger.warning("dyntok_plugin could not load its vLLM model %s (%s); DynTok is not registered.",
                           target, error)
            return
        ModelRegistry.register_model(architecture, model_class)


__all__ = ["MODELS", "SETTINGS_KEY", "register", "serving_config"]
