"""Shortening a padded batch by gathering: every output position is a copy of one input position.

For hosts whose per-position inputs (ids, labels, token types, 3-D positions) must follow the video tokens that
DynTok keeps: each valid input position is emitted `repeats` times (text once, a video placeholder once per token
that takes its place: 0 when merged into its left neighbour's group, 1 for a group's first member, 2 when a grid
marker is anchored there too), rows are re-padded on one side, and any `(B, L, ...)` tensor is carried over with
`ReSplice.take`. Vectorised over the whole batch with one host synchronisation (the new row lengths).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ReSplice:
    """Where each output position comes from (`source`, flat `b*L + l`) and goes (`target`, flat `b*W + col`)."""

    source: Tensor  # (N,)
    target: Tensor  # (N,)
    batch: int
    length: int  # L, the input width
    width: int  # W, the output width
    row_lengths: Tensor  # (B,) valid output positions per row, on the batch's device

    def take(self, values: Tensor, fill: float | int) -> Tensor:
        """`(B, L, ...)` -> `(B, W, ...)`: each output position gets its source's value, padding gets `fill`."""
        rest = values.shape[2:]
        out = values.new_full((self.batch * self.width, *rest), fill)
        out[self.target] = values.reshape(self.batch * self.length, *rest)[self.source]
        return out.view(self.batch, self.width, *rest)

    def mask(self, dtype: torch.dtype = torch.long) -> Tensor:
        """The `(B, W)` attention mask of the output rows."""
        out = torch.zeros(self.batch * self.width, dtype=dtype, device=self.target.device)
        return out.index_fill_(0, self.target, 1).view(self.batch, self.width)


def plan(valid: Tensor, placeholder: Tensor, repeats: Tensor, padding_side: str,
         pad_to_multiple_of: int | None = None) -> ReSplice:
    """The gather plan for a `(B, L)` batch.

    Args:
        valid: `(B, L)` bool, the real (non-padding) positions.
        placeholder: `(B, L)` bool, the positions whose count comes from `repeats` (a subset of `valid`).
        repeats: `(P,)` int64, how often each placeholder is emitted, placeholders in batch-row-major order; the
            caller has checked that `P == placeholder.sum()`.
        padding_side: `"left"` or `"right"`.
        pad_to_multiple_of: round the output width up to a multiple of this.
    """
    batch, length = valid.shape
    device = valid.device
    counts = valid.flatten().long().masked_scatter(placeholder.flatten(), repeats.to(device))
    row_lengths_device = counts.view(batch, length).sum(1)
    row_lengths = row_lengths_device.tolist()  # the one host synchronisation
    width = max(max(row_lengths), 1)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    total = sum(row_lengths)
    source = torch.repeat_interleave(torch.arange(batch * length, device=device), counts, output_size=total)
    row = source // length
    row_start = torch.cumsum(row_lengths_device, 0) - row_lengths_device
    rank = torch.arange(total, device=device) - row_start[row]
    shift = (width - row_lengths_device) if padding_side == "left" else torch.zeros_like(row_lengths_device)
    target = row * width + shift[row] + rank
    return ReSplice(source, target, batch, length, width, row_lengths_device)
