"""Splicing variable-length video tokens into a Hugging Face batch in place of the processor's placeholder runs.

Each sample's runs of video placeholder ids are replaced by the tokens of the video(s) they stand for (in batch
order; one run may hold several consecutive videos), labels of visual positions become -100, and the rows are
re-padded on the caller's side with a fresh attention mask. Host-generic: `host` is any object with a
`video_token_id`, `tokens_per_frame` (for error messages) and `pad_token_id` (used when the batch has no padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    pad_to_multiple_of: int | None = None,
) -> dict:
    """Replace each video's placeholder run by its tokens, in batch order, and re-pad the batch.

    Vectorised over the whole batch with one host synchronisation (the new row lengths, the pad id and whether the
    placeholder runs match the videos, read back together). A batch whose runs do not match takes the per-sample
    path, whose error names the sample and the run. `pad_to_multiple_of` rounds the padded width up (fewer distinct
    sequence lengths when training with random thresholds; the extra positions are padding).
    """
    check_text_inputs(input_ids, attention_mask, labels)
    plan = _Plan.build(input_ids, attention_mask, chunks, expected, host)
    if not plan.ok:
        _diagnose(input_ids, attention_mask, labels, chunks, expected, frames_per_video, host, embed)
        raise ValueError("the video placeholder runs of input_ids do not match pixel_values_videos; build input_ids "
                         "with the model's processor for these very videos.")
    width = max(plan.row_lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    return plan.assemble(input_ids, attention_mask, labels, chunks, host, embed, width, padding_side)


@dataclass
class _Plan:
    """Where each text position and each video token of the batch goes in the spliced rows (before padding)."""

    text: Tensor  # (B*L,) bool: a real, non-placeholder position
    new_position: Tensor  # (B*L,) its position in the spliced row (text positions only)
    video_row: Tensor  # (V,) the batch row of each video
    video_start: Tensor  # (V,) the position of each video's first token in its spliced row
    tokens_per_video: list[int]
    row_lengths: list[int]
    pad_id: int
    ok: bool

    @staticmethod
    def build(input_ids: Tensor, attention_mask: Tensor | None, chunks: Sequence[Tensor], expected: list[int],
              host: Any) -> "_Plan":
        """Locate every video's placeholder run (each must be contiguous, in one row, in batch order) on the device."""
        batch, length = input_ids.shape
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        placeholder = ((input_ids == host.video_token_id) & valid).flatten()
        text = (valid & (input_ids != host.video_token_id)).flatten()
        counts = [int(chunk.shape[0]) for chunk in chunks]
        runs, tokens = (torch.tensor(v, dtype=torch.long).to(input_ids.device, non_blocking=True)
                        for v in (expected, counts))
        first, last = _run_ends(placeholder, runs)
        weight = text.long().index_add(0, first.clamp_min(0), tokens)
        rows = weight.view(batch, length)
        new_position = (torch.cumsum(rows, 1) - rows).flatten()
        ok = ((first >= 0).all() & (last - first == runs - 1).all() & (first // length == last // length).all()
              & (placeholder.sum() == runs.sum()))
        padded = ~valid.flatten()
        caller_pad = torch.where(padded.any(), input_ids.flatten()[padded.int().argmax()], host.pad_token_id)
        summary = torch.cat([ok.view(1).long(), caller_pad.view(1).long(), rows.sum(1)]).tolist()  # the one sync
        start = first.clamp_min(0)
        return _Plan(text, new_position, start // length, new_position[start], counts, summary[2:], int(summary[1]),
                     bool(summary[0]))

    def assemble(self, input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor | None,
                 chunks: Sequence[Tensor], host: Any, embed: nn.Module, width: int, padding_side: str) -> dict:
        """Scatter text embeddings and video tokens into rows of `width`, padded on `padding_side`."""
        batch, length = input_ids.shape
        device = input_ids.device
        lengths = torch.tensor(self.row_lengths, dtype=torch.long)
        shift = (width - lengths if padding_side == "left" else torch.zeros_like(lengths)).to(device, non_blocking=True)
        row_of = torch.arange(batch * length, device=device) // length
        dump = batch * width  # one extra slot takes every position that is not copied
        text_to = torch.where(self.text, row_of * width + shift[row_of] + self.new_position, dump)
        video_to = self._video_targets(width, shift)
        embeds = embed(input_ids)
        pad_embed = embed(torch.tensor([self.pad_id], device=device))[0].to(embeds.dtype)
        tokens = torch.cat([chunk.to(device=embeds.device, dtype=embeds.dtype) for chunk in chunks])
        out = pad_embed.expand(dump + 1, -1).contiguous()
        out = out.index_put((text_to,), embeds.flatten(0, 1)).index_put((video_to,), tokens)

        def place(fill: int, dtype: torch.dtype, text_values: Tensor | int, video_value: int) -> Tensor:
            target = torch.full((dump + 1,), fill, dtype=dtype, device=device)
            values = text_values if isinstance(text_values, Tensor) else torch.full_like(text_to, text_values)
            target.index_put_((text_to,), values.to(dtype)).index_fill_(0, video_to, video_value)
            return target[:dump].view(batch, width)

        mask_dtype = attention_mask.dtype if attention_mask is not None else torch.long
        result = {
            "inputs_embeds": out[:dump].view(batch, width, -1),
            "input_ids": place(self.pad_id, input_ids.dtype, input_ids.flatten(), host.video_token_id),
            "attention_mask": place(0, mask_dtype, 1, 1),
        }
        if labels is not None:
            result["labels"] = place(IGNORE_INDEX, labels.dtype, labels.flatten(), IGNORE_INDEX)
        return result

    def _video_targets(self, width: int, shift: Tensor) -> Tensor:
        """Flat target index of every video token, videos in order."""
        counts = torch.tensor(self.tokens_per_video, dtype=torch.long)
        video = torch.repeat_interleave(torch.arange(len(counts)), counts)
        offset = torch.arange(int(counts.sum())) - (torch.cumsum(counts, 0) - counts)[video]
        video, offset = (t.to(shift.device, non_blocking=True) for t in (video, offset))
        return (self.video_row * width + shift[self.video_row] + self.video_start)[video] + offset


def _run_ends(placeholder: Tensor, runs: Tensor) -> tuple[Tensor, Tensor]:
    """Flat positions of the first and last placeholder of each video (`-1` where a video has none), taking the
    placeholders in batch order and `runs[v]` of them for video v."""
    videos = runs.shape[0]
    ordinal = torch.cumsum(placeholder, 0) - 1
    starts = torch.cumsum(runs, 0) - runs
    video = torch.searchsorted(starts + runs, ordinal.clamp_min(0), right=True).clamp_max(videos - 1)
    positions = torch.arange(placeholder.shape[0], device=placeholder.device)
    ends = []
    for at in (starts[video], starts[video] + runs[video] - 1):
        hit = placeholder & (ordinal == at)
        found = torch.full((videos + 1,), -1, dtype=torch.long, device=placeholder.device)
        ends.append(found.index_put_((torch.where(hit, video, videos),), positions)[:videos])
    return ends[0], ends[1]


def _diagnose(input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor | None, chunks: Sequence[Tensor],
              expected: list[int], frames_per_video: list[int], host: Any, embed: nn.Module) -> None:
    """The per-sample walk over the placeholder runs, for its error message (it raises on the first mismatch)."""
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    embeds = embed(input_ids)
    videos = _VideoCursor(chunks, expected, frames_per_video, host.tokens_per_frame)
    for b in range(len(input_ids)):
        _splice_row(b, input_ids, valid, labels, embeds, videos, host.video_token_id)
    if videos.next != len(chunks):
        raise ValueError(
            f"pixel_values_videos holds {len(chunks)} videos but input_ids have video placeholder runs for only "
            f"{videos.next}; add one <video> per video to the prompts (the processor expands each into its run)."
        )


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
