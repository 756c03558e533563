"""What callers of a patched `forward`/`generate` see although DynTok changed the prompt's length.

`generate`'s `max_length`/`min_length` count the caller's prompt (as on the stock model), a streamer's first
`put()` gets the caller's prompt, and the side a batch is re-padded on is read from its attention mask, never
guessed: an unpadded batch is re-padded on the left, so that `logits[:, -1]` is each sample's last real position,
except when it carries labels (training collators pad on the right; the loss is the same either way).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_LENGTHS = (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens"))


def padding_of(attention_mask: Tensor | None, labels: Tensor | None) -> tuple[str, bool]:
    """`("left" | "right", unpadded)`: the caller's padding side when the mask shows padding, else as the module
    says, and whether the batch has no padding at all; one host read-back."""
    default = "right" if labels is not None else "left"
    if attention_mask is None:
        return default, True
    if attention_mask.dim() != 2:
        return default, bool(attention_mask.all())
    left, right, full = torch.stack(
        [(attention_mask[:, 0] == 0).any(), (attention_mask[:, -1] == 0).any(), attention_mask.bool().all()]
    ).tolist()
    return ("left" if left else "right" if right else default), bool(full)


def shift_lengths(call: dict, default_config: Any, delta: int) -> None:
    """Move `max_length`/`min_length` (from the call, its `generation_config` or the model's) by `delta`, the
    spliced prompt's width minus the caller's, unless the matching `*_new_tokens` setting governs instead."""
    config = call.get("generation_config") or default_config
    for total, new in _LENGTHS:
        if call.get(new) is not None or (new not in call and getattr(config, new, None) is not None):
            continue
        value = call[total] if call.get(total) is not None else getattr(config, total, None)
        if value is None or (total == "min_length" and value <= 0):
            continue
        call[total] = max(int(value) + delta, 0)


class PromptStreamer:
    """A streamer proxy whose first `put()` (the prompt) gets the caller's `input_ids`, not the spliced ones."""

    def __init__(self, streamer: Any, prompt: Tensor):
        self.streamer, self.prompt, self.started = streamer, prompt, False

    def put(self, value: Tensor) -> None:
        if not self.started:
            self.started = True
            value = self.prompt.to(value.device)
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streamer, name)
