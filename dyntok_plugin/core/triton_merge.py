"""Fused Triton path of `DynTokCompressor`: two passes over the data instead of a dozen.

Pass 1 reads the similarity features once per row: left-neighbour cosine similarities (float32, as
`grouping.left_similarity`), the group starts a threshold gives, the tokens each row emits and a NaN/Inf count.
Pass 2 reads the features once: each group's mean accumulated in float32 and written in the features' dtype, the
grid markers, `token_map` and `is_marker`, and a NaN/Inf count. Groups never cross rows, so each program owns one
row (and one slice of the hidden size) and needs nothing from its neighbours but the row's output offset, an
exclusive prefix sum of the per-row token counts.

Everything is enqueued before the call's single host synchronisation, which reads the per-video lengths, the
thresholds in effect and the NaN/Inf flags; the token buffer is sized for the worst case (no merge) and sliced.

`supports()` decides when this path runs: Triton importable, a CUDA tensor (or a CPU tensor when the kernels
were built by Triton's interpreter: `TRITON_INTERPRET=1` in the environment before this module is imported), a half or
single precision dtype, and no gradient needed through the features or the marker (the kernels have no backward;
the PyTorch path handles training). Set `ENABLED = False` to force the PyTorch path.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from .errors import non_finite_error
from .grouping import group_starts

try:
    import triton
    import triton.language as tl
except ImportError:  # the PyTorch path serves every call
    triton = None
if triton is not None and int(triton.__version__.split(".")[0]) < 3:  # tl.dot's input_precision came in 3.0
    triton = None

ENABLED = True


@contextlib.contextmanager
def disabled():
    """Within the block every call takes the PyTorch path (to compare against the fused kernels, or to rule them out
    when debugging)."""
    global ENABLED
    previous, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = previous
"""Set to False to send every call through the PyTorch path (benchmarks, debugging)."""

MARKER_CODES = {"none": 0, "row": 1, "frame": 2, "video": 3}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Tile sizes, chosen on an H100 (benchmarks/NOTES-compressor.md).
BLOCK_C = 128
"""Similarity-feature channels per step of the similarity kernel."""
SIMILARITY_WARPS = 8
BLOCK_D = 256
"""Hidden-size slice per program of the merge kernel."""
MERGE_WARPS = 2


@dataclass
class FusedResult:
    """What the fused path hands back to the compressor (host values already read)."""

    tokens: Tensor
    token_index: Tensor
    is_marker: Tensor
    lengths: list
    thresholds: list


def _interpreting() -> bool:
    """Whether the kernels were built for Triton's interpreter, the one case where they take CPU tensors.

    `triton.jit` reads `TRITON_INTERPRET` when it builds a kernel, i.e. when this module is imported, so that is the
    moment that counts: setting the variable later leaves compiled kernels, which cannot read CPU memory.
    """
    interpreter = sys.modules.get("triton.runtime.interpreter")  # imported by triton.jit when it interprets
    return interpreter is not None and isinstance(_merge_kernel, interpreter.InterpretedFunction)


def supports(features: Tensor, similarity_features: Tensor, marker: Optional[Tensor]) -> bool:
    """Whether the fused path can serve this call."""
    if not ENABLED or triton is None:
        return False
    if features.is_cuda:
        if torch.cuda.get_device_capability(features.device)[0] < 8:  # tf32 matrix products need Ampere or later
            return False
    elif not _interpreting():
        return False
    if features.dtype not in _DTYPES or similarity_features.dtype not in _DTYPES:
        return False
    if marker is not None and (marker.device != features.device or not marker.is_floating_point()):
        return False
    needs_grad = features.requires_grad or (marker is not None and marker.requires_grad)
    return not (torch.is_grad_enabled() and needs_grad)


def compress(
    features: Tensor,
    similarity_features: Tensor,
    frames_per_video: Sequence[int],
    thresholds: Tensor,
    capacity: Optional[Tensor],
    marker_layout: str,
    marker: Optional[Tensor],
    units_per_video: Sequence[int],
) -> FusedResult:
    """DynTok of several videos; the arguments are those of `DynTokCompressor.compress_batch`, resolved.

    Args:
        features: `(T, h, w, D)` frames of all videos, concatenated.
        similarity_features: `(T, h, w, C)` features compared for grouping (may be `features`).
        frames_per_video: frames of each video.
        thresholds: `(V,)` float64 thresholds on the CPU (`+inf` when a budget alone decides).
        capacity: `(V,)` int64 budget boundaries on the CPU, or None without a budget.
        marker_layout: `"row"`, `"frame"`, `"video"` or `"none"`.
        marker: `(D,)` grid marker (any float dtype, features' device), None for `"none"`.
        units_per_video: markers per video.
    """
    frames, rows, cols, _ = features.shape
    num_videos = len(frames_per_video)
    frame_video, thresholds_device = _upload_layout(frames_per_video, thresholds, features.device)
    # What the host reads back: each video's end offset, NaN/Inf counts of features and similarity features.
    report = torch.zeros(num_videos + 2, dtype=torch.int64, device=features.device)
    launch = _Launch(frames, rows, cols, MARKER_CODES[marker_layout], frame_video)
    starts, row_tokens, similarity = _group(launch, similarity_features.contiguous(), thresholds_device, report)
    effective = None
    if capacity is not None:
        budget = capacity.to(features.device, non_blocking=True)
        budget_starts, effective = group_starts(similarity, frame_video, thresholds_device, budget)
        starts = budget_starts.to(torch.uint8)
        _row_tokens_kernel[(frames * rows,)](starts, row_tokens, frame_video, rows, frames,
                                             W=cols, BLOCK_W=launch.block_w, MARKER=launch.code)
    tokens, is_marker, token_index = _merge(launch, features.contiguous(), starts, row_tokens, marker, report,
                                            frames * rows * cols + sum(units_per_video))
    lengths, effective_host = _read_back(report, effective, thresholds, num_videos)
    total = sum(lengths)
    return FusedResult(
        tokens=tokens[:total],
        token_index=token_index,
        is_marker=is_marker[:total].view(torch.bool),
        lengths=lengths,
        thresholds=effective_host,
    )


@dataclass(frozen=True)
class _Launch:
    """The grid of one call: frames, rows, columns, the marker code and each frame's video (on the device)."""

    frames: int
    rows: int
    cols: int
    code: int
    frame_video: Tensor

    @property
    def block_w(self) -> int:
        return max(16, triton.next_power_of_2(self.cols + 1))  # a row's groups and its marker; tl.dot needs 16


def _upload_layout(frames_per_video: Sequence[int], thresholds: Tensor, device: torch.device) -> tuple:
    """One non-blocking host-to-device copy: the video of each frame, then the thresholds' float64 bits."""
    video_of_frame = torch.repeat_interleave(
        torch.arange(len(frames_per_video), dtype=torch.int64), torch.tensor(frames_per_video, dtype=torch.int64)
    )
    threshold_bits = thresholds.to(torch.float64).contiguous().view(torch.int64)
    packed = torch.cat([video_of_frame, threshold_bits]).to(device, non_blocking=True)
    frames = video_of_frame.shape[0]
    return packed[:frames], packed[frames:].view(torch.float64)


def _group(launch: _Launch, similarity_features: Tensor, thresholds: Tensor, report: Tensor) -> tuple:
    """Similarities, group starts and tokens per row (markers included) under the thresholds."""
    frames, rows, cols = launch.frames, launch.rows, launch.cols
    channels, device = similarity_features.shape[-1], similarity_features.device
    similarity = torch.empty(frames, rows, cols - 1, dtype=torch.float32, device=device)
    starts = torch.empty(frames, rows, cols, dtype=torch.uint8, device=device)
    row_tokens = torch.empty(frames * rows, dtype=torch.int64, device=device)
    _similarity_kernel[(frames * rows,)](
        similarity_features, similarity, starts, row_tokens, report[report.shape[0] - 1 :], thresholds,
        launch.frame_video, rows, frames, channels,
        W=cols, BLOCK_W=launch.block_w, BLOCK_C=min(BLOCK_C, triton.next_power_of_2(channels)), MARKER=launch.code,
        num_warps=SIMILARITY_WARPS,
    )
    return starts, row_tokens, similarity


def _merge(launch: _Launch, features: Tensor, starts: Tensor, row_tokens: Tensor, marker: Optional[Tensor],
           report: Tensor, capacity_tokens: int) -> tuple:
    """Group means and markers in sequence order into a worst-case-sized buffer, with token_map and is_marker."""
    frames, rows, cols = launch.frames, launch.rows, launch.cols
    dim, device = features.shape[-1], features.device
    tokens = torch.empty(capacity_tokens, dim, dtype=features.dtype, device=device)
    is_marker = torch.empty(capacity_tokens, dtype=torch.uint8, device=device)
    token_index = torch.empty(frames, rows, cols, dtype=torch.int64, device=device)
    block_d = min(BLOCK_D, triton.next_power_of_2(dim))
    _merge_kernel[(frames * rows * triton.cdiv(dim, block_d),)](
        features, tokens, is_marker, token_index, starts, torch.cumsum(row_tokens, 0), row_tokens,
        marker if marker is not None else tokens, report, launch.frame_video, rows, frames, dim, report.shape[0] - 2,
        W=cols, BLOCK_W=launch.block_w, BLOCK_D=block_d, MARKER=launch.code,
        PRECISION="ieee" if features.dtype == torch.float32 else "tf32",
        num_warps=MERGE_WARPS,
    )
    return tokens, is_marker, token_index


def _read_back(report: Tensor, effective: Optional[Tensor], thresholds: Tensor, num_videos: int) -> tuple:
    """The call's one host synchronisation: lengths per video and the thresholds in effect; NaN/Inf raise."""
    if effective is not None:
        report = torch.cat([report, effective.view(torch.int64)])
    host_report = report.cpu()
    host = host_report[: num_videos + 2].tolist()
    if host[num_videos] or host[num_videos + 1]:
        raise non_finite_error("features" if host[num_videos] else "similarity_features")
    ends = host[:num_videos]
    lengths = [end - start for start, end in zip([0] + ends[:-1], ends)]
    if effective is None:
        return lengths, thresholds.tolist()
    return lengths, host_report[num_videos + 2 :].view(torch.float64).tolist()


if triton is not None:

    @triton.jit
    def _closes_unit(row, frame_video_ptr, rows, frames, MARKER: tl.constexpr):
        """1 if a grid marker follows this row in the layout `MARKER`, else 0."""
        if MARKER == 1:
            closes = 1
        elif MARKER == 2:
            closes = (row % rows == rows - 1).to(tl.int32)
        elif MARKER == 3:
            frame = row // rows
            video = tl.load(frame_video_ptr + frame)
            next_video = tl.load(frame_video_ptr + frame + 1, mask=frame + 1 < frames, other=-1)
            closes = ((row % rows == rows - 1) & (video != next_video)).to(tl.int32)
        else:
            closes = 0
        return closes

    @triton.jit
    def _load_pair(base, cols, in_row, has_left, start, channels, BLOCK_C: tl.constexpr):
        """One block of channels of every token of a row and of its left neighbour, in float32 (zeros outside)."""
        channel = start + tl.arange(0, BLOCK_C)
        in_channels = channel < channels
        mask = in_row[:, None] & in_channels[None, :]
        here = tl.load(base + cols[:, None] * channels + channel[None, :], mask=mask, other=0.0).to(tl.float32)
        left_mask = has_left[:, None] & in_channels[None, :]
        left = tl.load(base + (cols[:, None] - 1) * channels + channel[None, :], mask=left_mask, other=0.0)
        return here, left.to(tl.float32)

    @triton.jit
    def _similarity_kernel(
        sim_features_ptr, similarity_ptr, starts_ptr, row_tokens_ptr, bad_ptr, thresholds_ptr, frame_video_ptr,
        rows, frames, channels,
        W: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, MARKER: tl.constexpr,
    ):
        """One row: cosine similarity of each token with its left neighbour, group starts, tokens emitted."""
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_W)
        in_row = cols < W
        has_left = in_row & (cols >= 1)
        base = sim_features_ptr + row.to(tl.int64) * W * channels
        # Pass 1: each vector's largest magnitude (cosines are scale-free: dividing by it keeps finite features near
        # the float range's ends from overflowing or underflowing, as the PyTorch path does) and the NaN/Inf count.
        here_max = tl.zeros([BLOCK_W], dtype=tl.float32)
        left_max = tl.zeros([BLOCK_W], dtype=tl.float32)
        bad = tl.zeros([BLOCK_W], dtype=tl.int32)
        for start in range(0, channels, BLOCK_C):
            here, left = _load_pair(base, cols, in_row, has_left, start, channels, BLOCK_C)
            here_max = tl.maximum(here_max, tl.max(tl.abs(here), 1))
            left_max = tl.maximum(left_max, tl.max(tl.abs(left), 1))
            bad += tl.sum((~(tl.abs(here) < float("inf"))).to(tl.int32), 1)
        here_max = tl.maximum(here_max, 1.1754943508222875e-38)
        left_max = tl.maximum(left_max, 1.1754943508222875e-38)
        # Pass 2: norms and dot products of the scaled vectors, float32 accumulation.
        squared = tl.zeros([BLOCK_W], dtype=tl.float32)
        left_squared = tl.zeros([BLOCK_W], dtype=tl.float32)
        dot = tl.zeros([BLOCK_W], dtype=tl.float32)
        for start in range(0, channels, BLOCK_C):
            here, left = _load_pair(base, cols, in_row, has_left, start, channels, BLOCK_C)
            here = here / here_max[:, None]
            left = left / left_max[:, None]
            squared += tl.sum(here * here, 1)
            left_squared += tl.sum(left * left, 1)
            dot += tl.sum(here * left, 1)
        denominator = tl.sqrt(squared.to(tl.float64) * left_squared.to(tl.float64)).to(tl.float32)
        similarity = tl.where(denominator > 0, dot / tl.maximum(denominator, 1.1754943508222875e-38), 0.0)
        similarity = tl.minimum(tl.maximum(similarity, -1.0), 1.0)
        tl.store(similarity_ptr + row.to(tl.int64) * (W - 1) + cols - 1, similarity, mask=has_left)

        threshold = tl.load(thresholds_ptr + tl.load(frame_video_ptr + row // rows))
        starts = (cols == 0) | (similarity.to(tl.float64) <= threshold)
        tl.store(starts_ptr + row.to(tl.int64) * W + cols, starts.to(tl.uint8), mask=in_row)
        groups = tl.sum((starts & in_row).to(tl.int64), 0)
        tl.store(row_tokens_ptr + row, groups + _closes_unit(row, frame_video_ptr, rows, frames, MARKER))
        found = tl.sum(bad, 0).to(tl.int64)
        tl.atomic_add(bad_ptr, found, mask=found > 0)

    @triton.jit
    def _row_tokens_kernel(
        starts_ptr, row_tokens_ptr, frame_video_ptr, rows, frames,
        W: tl.constexpr, BLOCK_W: tl.constexpr, MARKER: tl.constexpr,
    ):
        """One row: tokens emitted under given group starts (budget mode), markers included."""
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_W)
        starts = tl.load(starts_ptr + row.to(tl.int64) * W + cols, mask=cols < W, other=0)
        groups = tl.sum(starts.to(tl.int64), 0)
        tl.store(row_tokens_ptr + row, groups + _closes_unit(row, frame_video_ptr, rows, frames, MARKER))

    @triton.jit
    def _merge_kernel(
        features_ptr, tokens_ptr, is_marker_ptr, token_index_ptr, starts_ptr, row_end_ptr, row_tokens_ptr,
        marker_ptr, report_ptr, frame_video_ptr, rows, frames, dim, num_videos,
        W: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, MARKER: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """One row, one slice of the hidden size: group sums as a (group x column) 0/1 matrix times the row's
        features (float32 accumulate), means, the marker, token_map and is_marker; one load and one store."""
        parts = tl.cdiv(dim, BLOCK_D)  # neighbouring programs read neighbouring slices of one row
        row = tl.program_id(0) // parts
        part = tl.program_id(0) % parts
        row64 = row.to(tl.int64)
        cols = tl.arange(0, BLOCK_W)
        in_row = cols < W
        channel = part * BLOCK_D + tl.arange(0, BLOCK_D)
        in_dim = channel < dim

        starts = tl.load(starts_ptr + row64 * W + cols, mask=in_row, other=0).to(tl.int32)
        starts = tl.where(cols == 0, 1, starts)
        group = tl.cumsum(starts, 0) - 1  # group of each column within the row
        member = (group[None, :] == cols[:, None]) & in_row[None, :]  # (group, column)
        count = tl.sum(member.to(tl.float32), 1)

        values = tl.load(features_ptr + (row64 * W + cols[:, None]) * dim + channel[None, :],
                         mask=in_row[:, None] & in_dim[None, :], other=0.0)
        # tf32 holds half-precision values exactly; float32 inputs need IEEE products (tf32x3 is only about float32,
        # and a group of one token must come out bit-exact: merging off equals the stock model).
        sums = tl.dot(member.to(tl.float32), values.to(tl.float32), input_precision=PRECISION)
        means = sums / tl.maximum(count, 1.0)[:, None]

        closes = _closes_unit(row, frame_video_ptr, rows, frames, MARKER)
        row_tokens = tl.load(row_tokens_ptr + row)
        row_end = tl.load(row_end_ptr + row)
        first = row_end - row_tokens  # this row's first output slot
        groups = row_tokens - closes
        marker = tl.load(marker_ptr + channel, mask=in_dim, other=0.0).to(tl.float32)  # used iff closes
        out = tl.where((cols == groups)[:, None], marker[None, :], means)
        written = (cols < row_tokens)[:, None] & in_dim[None, :]
        tl.store(tokens_ptr + (first + cols[:, None]) * dim + channel[None, :],
                 out.to(tokens_ptr.dtype.element_ty), mask=written)

        found = tl.sum(tl.sum((~(tl.abs(values.to(tl.float32)) < float("inf"))).to(tl.int64), 1), 0)
        tl.atomic_add(report_ptr + num_videos, found, mask=found > 0)
        if part == 0:
            tl.store(token_index_ptr + row64 * W + cols, first + group, mask=in_row)
            tl.store(is_marker_ptr + first + cols, (cols >= groups).to(tl.uint8), mask=cols < row_tokens)
            frame = row // rows
            video = tl.load(frame_video_ptr + frame)
            next_video = tl.load(frame_video_ptr + frame + 1, mask=frame + 1 < frames, other=-1)
            if (row % rows == rows - 1) & (video != next_video):
                tl.store(report_ptr + video, row_end)
