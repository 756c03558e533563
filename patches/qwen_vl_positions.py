"""M-RoPE positions of a Qwen VL batch shortened by DynTok (the positions half of `hf_qwen_vl`).

The stock `get_rope_index` assumes every video run has its full length, so the positions of the full sequence are
computed first (stock function, or the caller's `position_ids`) and then gathered for the positions that remain:
text keeps exactly its stock position, a video token takes its group's first member's. `rope_deltas` (what a
forward on a cache without `position_ids` adds to `cumsum(mask) - 1`) become `max stock position + 1 - shortened
length`, so such a forward continues at the position the stock model would use. Also the check that the video
placeholder runs match the grids (`check_runs`), vectorised with one host read-back.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor, nn

from dyntok_plugin.hf.resplice import ReSplice, plan

__all__ = ["check_runs", "plan", "rope_deltas", "stock_positions", "take_positions", "with_text_row"]


def stock_positions(owner: nn.Module, call: dict, input_ids: Tensor, types: Tensor, video_grid_thw: Tensor,
                    attention_mask: Tensor | None) -> Tensor:
    """`(3, B, L)` positions of the full sequence: the caller's `position_ids` (their M-RoPE rows), else the stock
    `get_rope_index` (which loops over samples itself, reading each back to the host)."""
    given = call.get("position_ids")
    if given is not None:
        if given.dim() == 2:
            return given[None].expand(3, -1, -1)
        if given.dim() != 3 or given.shape[0] not in (3, 4) or tuple(given.shape[1:]) != tuple(input_ids.shape):
            raise ValueError(f"position_ids must be (3, B, L) or (4, B, L) for input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(given.shape)}.")
        return given[-3:]
    arguments = dict(mm_token_type_ids=types, image_grid_thw=call.get("image_grid_thw"),
                     video_grid_thw=video_grid_thw, attention_mask=attention_mask)
    if _takes_seconds(type(owner)):
        arguments["second_per_grid_ts"] = call.get("second_per_grid_ts")
    return owner.get_rope_index(input_ids, **arguments)[0]


@functools.lru_cache(maxsize=None)
def _takes_seconds(owner_class: type) -> bool:
    """Whether the host's `get_rope_index` takes `second_per_grid_ts` (Qwen2.5-VL), read once per class."""
    return "second_per_grid_ts" in inspect.signature(owner_class.get_rope_index).parameters


def check_runs(placeholder: Tensor, grids: list, slice_runs: bool) -> None:
    """Every video (Qwen3-VL: every temporal slice) must have one contiguous run of exactly its merged grid's
    placeholders, in order; a `ValueError` naming the first run that does not."""
    expected = [h * w for t, h, w in grids for _ in range(t)] if slice_runs else [t * h * w for t, h, w in grids]
    batch, length = placeholder.shape
    flat = placeholder.flatten()
    previous = torch.zeros_like(placeholder)
    previous[:, 1:] = placeholder[:, :-1]
    opens = (placeholder & ~previous).flatten()
    run = torch.cumsum(opens.long(), 0) - 1
    lengths = torch.zeros(batch * length + 1, dtype=torch.long, device=flat.device)
    lengths = lengths.index_add(0, torch.where(flat, run, batch * length), torch.ones_like(run))
    want = torch.tensor(expected, dtype=torch.long).to(flat.device, non_blocking=True)
    runs = len(expected)
    found = opens.sum()
    match = (found == runs) & (lengths[:runs] == want).all() if runs <= batch * length else found < 0
    if bool(match):  # the one host read-back
        return
    found_lengths = lengths[: int(found)].tolist()
    unit = "temporal slice" if slice_runs else "video"
    for index, (have, need) in enumerate(zip(found_lengths, expected)):
        if have != need:
            raise ValueError(
                f"Video placeholder run {index} has {have} <|video_pad|> tokens but video_grid_thw gives its "
                f"{unit} {need} merged tokens (t*h*w / spatial_merge_size^2{' per slice' if slice_runs else ''}); "
                "build input_ids with the model's processor for these very videos, in order."
            )
    raise ValueError(
        f"input_ids hold {len(found_lengths)} video placeholder runs but video_grid_thw describes {runs} "
        f"({unit}s); pass one video per placeholder run, in order (the processor expands each video)."
    )


def take_positions(resplice: ReSplice, positions: Tensor) -> Tensor:
    """`(3, B, L)` -> `(3, B, W)`: each kept position's stock position; padding 0 (as `get_rope_index` gives)."""
    return resplice.take(positions.permute(1, 2, 0), 0).permute(2, 0, 1)


def rope_deltas(positions: Tensor, valid: Tensor, resplice: ReSplice) -> Tensor:
    """`(B, 1)`: largest stock position of each sample + 1 - its shortened length."""
    lowest = torch.iinfo(positions.dtype).min
    largest = positions.masked_fill(~valid[None], lowest).amax(dim=(0, 2))
    return (largest + 1 - resplice.row_lengths.to(largest.dtype)).unsqueeze(1)


def with_text_row(positions: Tensor, attention_mask: Tensor) -> Tensor:
    """`(3, B, W)` -> `(4, B, W)` with the text row `cumsum(mask) - 1` on top, as the stock generate builds."""
    text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    return torch.cat([text[None].to(positions.dtype), positions])
