"""Splicing variable-length video tokens into a Hugging Face batch in place of the processor's placeholder runs.

Each sample's runs of video placeholder ids are replaced by the tokens of the video(s) they stand for (in batch
order; one run may hold several consecutive videos), labels of visual positions become -100, and the rows are
re-padded on the caller's side with a fresh attention mask. Host-generic: `host` is any object with a
`video_token_id`, `tokens_per_frame` (for error messages) and `pad_token_id` (used when the batch has no padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100


def splice(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    chunks: Sequence[Tensor],
    expected: list[int],
    frames_per_video: list[int],
    host: Any,
    embed: nn.Module,
    padding_side: str,
) -> dict:
    """Replace each video's placeholder run by its tokens, per sample in batch order, and re-pad the batch."""
    check_text_inputs(input_ids, attention_mask, labels)
    embeds = embed(input_ids)
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    videos = _VideoCursor(chunks, expected, frames_per_video, host.tokens_per_frame)
    rows = [_splice_row(b, input_ids, valid, labels, embeds, videos, host.video_token_id) for b in range(len(input_ids))]
    if videos.next != len(chunks):
        raise ValueError(
            f"pixel_values_videos holds {len(chunks)} videos but input_ids have video placeholder runs for only "
            f"{videos.next}; add one <video> per video to the prompts (the processor expands each into its run)."
        )
    return _pad_rows(rows, input_ids, attention_mask, labels, host, embed, padding_side)


def check_text_inputs(input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor | None) -> None:
    """`input_ids` is `(batch, sequence)` and `attention_mask`/`labels` have exactly its shape (`ValueError` else)."""
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be (batch, sequence), got shape {tuple(input_ids.shape)}; for one sample add the batch "
            "axis: input_ids.unsqueeze(0) (the processor's output already has it)."
        )
    for name, tensor in (("attention_mask", attention_mask), ("labels", labels)):
        if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but input_ids {tuple(input_ids.shape)}; they must match "
                f"position for position. Build {name} from the same padded batch as input_ids (e.g. the "
                "processor's or collator's output)."
            )


class _VideoCursor:
    """The batch's videos in order: hands each placeholder run the videos it stands for, checking the counts."""

    def __init__(self, chunks: Sequence[Tensor], expected: list[int], frames: list[int], tokens_per_frame: int):
        self.chunks, self.expected, self.frames, self.tokens_per_frame = chunks, expected, frames, tokens_per_frame
        self.next = 0

    def take(self, sample: int, run_length: int) -> Sequence[Tensor]:
        """The chunks of the videos whose placeholder runs make up one run of `run_length` ids in `sample`."""
        first, need = self.next, 0
        if first == len(self.chunks):
            raise ValueError(
                f"Sample {sample} has a run of {run_length} video placeholder tokens but pixel_values_videos holds "
                f"only {len(self.chunks)} video(s) for the whole batch; pass one video per <video>, in order."
            )
        while need < run_length and self.next < len(self.chunks):
            need += self.expected[self.next]
            self.next += 1
        if need != run_length:
            raise ValueError(
                f"Sample {sample} has a run of {run_length} video placeholder tokens, but pixel_values_videos' "
                f"video(s) {list(range(first, self.next))} with {self.frames[first:self.next]} frames expect "
                f"{self.expected[first:self.next]} tokens (frames x {self.tokens_per_frame} + 1 each); "
                f"{len(self.chunks)} videos for the whole batch. Build input_ids with the model's processor for "
                "these very videos (same frame count and resolution)."
            )
        return self.chunks[first:self.next]


def _splice_row(
    b: int, input_ids: Tensor, valid: Tensor, labels: Tensor | None, embeds: Tensor, videos: _VideoCursor, video_id: int
) -> tuple:
    """One sample's (embeddings, ids, labels) with its placeholder runs replaced by video tokens, padding dropped."""
    device = input_ids.device
    keep = valid[b].nonzero().squeeze(1)
    ids = input_ids[b, keep]
    lab = labels[b, keep] if labels is not None else None
    pieces_e, pieces_id, pieces_lab = [], [], []
    cursor = 0
    for start, end in _runs(ids == video_id):
        pieces_e.append(embeds[b, keep[cursor:start]])
        pieces_id.append(ids[cursor:start])
        if lab is not None:
            pieces_lab.append(lab[cursor:start])
        for chunk in videos.take(b, end - start):
            pieces_e.append(chunk.to(device=embeds.device, dtype=embeds.dtype))
            pieces_id.append(torch.full((chunk.shape[0],), video_id, dtype=ids.dtype, device=device))
            if lab is not None:
                pieces_lab.append(torch.full((chunk.shape[0],), IGNORE_INDEX, dtype=lab.dtype, device=device))
        cursor = end
    pieces_e.append(embeds[b, keep[cursor:]])
    pieces_id.append(ids[cursor:])
    if lab is not None:
        pieces_lab.append(lab[cursor:])
    return torch.cat(pieces_e), torch.cat(pieces_id), torch.cat(pieces_lab) if lab is not None else None


def _runs(flags: Tensor) -> list[tuple[int, int]]:
    """`(start, end)` of each maximal run of True in a 1-D bool tensor."""
    padded = torch.cat([flags.new_zeros(1), flags, flags.new_zeros(1)]).to(torch.int8)
    edges = torch.diff(padded).nonzero().squeeze(1).tolist()
    return list(zip(edges[0::2], edges[1::2]))


def _pad_rows(
    rows: list[tuple],
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    host: Any,
    embed: nn.Module,
    padding_side: str,
) -> dict:
    """Stack per-sample rows into a batch padded on `padding_side`, with a fresh attention mask."""
    width = max(row[0].shape[0] for row in rows)
    device = input_ids.device
    pad_value = _pad_id(input_ids, attention_mask, host)
    pad_embed = embed(torch.tensor([pad_value], device=device))[0]
    mask_dtype = attention_mask.dtype if attention_mask is not None else torch.long
    out_e, out_id, out_mask, out_lab = [], [], [], []
    for emb, ids, lab in rows:
        missing = width - ids.shape[0]
        pad_e = pad_embed.to(emb.dtype).expand(missing, -1)
        pad_i = torch.full((missing,), pad_value, dtype=ids.dtype, device=device)
        ones = torch.ones(ids.shape[0], dtype=mask_dtype, device=device)
        zeros = torch.zeros(missing, dtype=mask_dtype, device=device)
        pad_l = torch.full((missing,), IGNORE_INDEX, dtype=ids.dtype, device=device)
        order = (lambda real, pad: (pad, real)) if padding_side == "left" else (lambda real, pad: (real, pad))
        out_e.append(torch.cat(order(emb, pad_e)))
        out_id.append(torch.cat(order(ids, pad_i)))
        out_mask.append(torch.cat(order(ones, zeros)))
        if lab is not None:
            out_lab.append(torch.cat(order(lab, pad_l.to(lab.dtype))))
    result = {
        "inputs_embeds": torch.stack(out_e),
        "input_ids": torch.stack(out_id),
        "attention_mask": torch.stack(out_mask),
    }
    if labels is not None:
        result["labels"] = torch.stack(out_lab)
    return result


def _pad_id(input_ids: Tensor, attention_mask: Tensor | None, host: Any) -> int:
    """The caller's padding id when the batch has padding, else the config's."""
    if attention_mask is not None:
        padded = attention_mask == 0
        if bool(padded.any()):
            return int(input_ids[padded][0])
    return host.pad_token_id
