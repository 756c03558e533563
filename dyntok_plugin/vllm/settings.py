"""The DynTok settings a served model carries in its config, checked for serving: budget mode only.

An engine that sizes each video's placeholder run before the vision encoder runs (vLLM) needs a token count that
follows from the frame count alone. DynTok's budget mode gives one (`max_tokens` or `target_ratio`, met exactly
when the budget alone decides); a threshold makes the count depend on the pixels and cannot be served. The
settings live under `dyntok` in the model's config: what a patched model saves with `save_pretrained`, or what
`hf_overrides={"dyntok": {...}}` (`--hf-overrides` of `vllm serve`) puts there. Host-neutral: any host reads them
here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from dyntok_plugin.core import DynTokConfig

SETTINGS_KEY = "dyntok"
_EXAMPLE = '--hf-overrides \'{"dyntok": {"target_ratio": 0.25}}\' (or hf_overrides={"dyntok": {"target_ratio": 0.25}})'


def serving_config(hf_config: Any) -> Optional[DynTokConfig]:
    """The budget-mode `DynTokConfig` in `hf_config.dyntok`, or None when the config has no DynTok settings.

    An omitted `threshold` means None (the budget alone decides). Raises `ValueError` naming the fix for settings
    that cannot give a count in advance (a threshold, or no budget) and for invalid ones.
    """
    settings = getattr(hf_config, SETTINGS_KEY, None)
    if settings is None or settings is False:
        return None
    if isinstance(settings, DynTokConfig):
        settings = settings.to_dict()
    if isinstance(settings, str):
        settings = _parse_json(settings)
    if not isinstance(settings, Mapping):
        raise ValueError(
            f"The model config's `{SETTINGS_KEY}` must be a dict of DynTok settings, got {settings!r}; e.g. "
            f"{_EXAMPLE}."
        )
    values = dict(settings)
    threshold = values.setdefault("threshold", None)
    if values.get("max_tokens") is None and values.get("target_ratio") is None:
        raise ValueError(
            f"DynTok settings {dict(settings)!r} have no budget. vLLM sizes each video's placeholders before the "
            "vision encoder runs, so DynTok is served in budget mode only: set target_ratio (a fraction of the "
            f"pooled grid) or max_tokens (per video, markers included) and no threshold, e.g. {_EXAMPLE}."
        )
    if threshold is not None:
        raise ValueError(
            f"DynTok settings {dict(settings)!r} set threshold={threshold!r}: with a threshold a video's token count "
            "depends on its pixels, but vLLM sizes each video's placeholders before the vision encoder runs. Serve "
            'in budget mode: set "threshold": null (or leave it out) and keep the budget.'
        )
    try:
        return DynTokConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The DynTok settings in the model config (`{SETTINGS_KEY}` = {dict(settings)!r}) are not valid: "
            f"{error} Fix them in --hf-overrides / hf_overrides, or in the checkpoint's config.json."
        ) from error


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"The model config's `{SETTINGS_KEY}` is the string {text!r}, which is not JSON: {error}. Give a dict, "
            f"e.g. {_EXAMPLE}."
        ) from error
