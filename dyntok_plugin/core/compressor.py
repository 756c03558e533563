"""`DynTokCompressor`: merge similar left-neighbour tokens of each row and insert grid markers."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import triton_merge
from .budget import budget_tokens, requested_budget
from .config import DynTokConfig
from .errors import non_finite_error
from .grouping import group_starts, left_similarity
from .markers import marker_units, markers_per_video, token_floor
from .stats import DynTokStats

logger = logging.getLogger(__name__)

MarkerSource = Union[Tensor, Callable[[], Tensor], None]
_RANK_SEED_STRIDE = 1_000_003  # separates the per-rank streams of training-threshold draws


@dataclass
class DynTokOutput:
    """One video after DynTok.

    Attributes:
        tokens: `(N, D)` in sequence order (frame-major, row-major, left to right), markers included.
        token_map: `(F, h, w)` index into `tokens` of the token each pooled position became.
        is_marker: `(N,)` True where `tokens` holds a grid marker.
        stats: what the call did (frames, tokens in/out, ratio, threshold in effect).
    """

    tokens: Tensor
    token_map: Tensor
    is_marker: Tensor
    stats: DynTokStats


@dataclass
class DynTokBatchOutput:
    """Several videos after DynTok, concatenated in order; `chunks()`/`split()` separate them."""

    tokens: Tensor
    token_map: Tensor
    is_marker: Tensor
    lengths: list
    frames_per_video: list
    stats: list

    def chunks(self) -> tuple:
        """`(N_i, D)` token views, one per video."""
        return torch.split(self.tokens, self.lengths)

    def split(self) -> list:
        """One `DynTokOutput` per video, with `token_map` indexing that video's own tokens."""
        offsets = [0]
        for length in self.lengths[:-1]:
            offsets.append(offsets[-1] + length)
        return [
            DynTokOutput(tokens, token_map - offset, is_marker, stats)
            for tokens, token_map, is_marker, offset, stats in zip(
                self.chunks(),
                torch.split(self.token_map, self.frames_per_video),
                torch.split(self.is_marker, self.lengths),
                offsets,
                self.stats,
            )
        ]


class DynTokCompressor(nn.Module):
    """DynTok for pooled video features: per row, a token whose similarity to its left neighbour exceeds the
    threshold joins that neighbour's group; each group becomes the mean of its members; a grid marker closes each
    row (or frame, or video).

    Args:
        hidden_size: `D`, the size of the features (LLM embedding space).
        config: the settings, held by reference so that changes apply to the next call.
        marker: the grid marker. `None` creates a learnable `(D,)` parameter owned by this module; a tensor or
            parameter (e.g. a host's `image_newline`) is borrowed without copying and without registering it;
            a zero-argument callable is read at each call (for hosts whose parameters are gathered lazily).

    Example:
        >>> comp = DynTokCompressor(hidden_size=8, config=DynTokConfig(threshold=0.7))
        >>> out = comp(torch.randn(2, 4, 4, 8))
        >>> out.tokens.shape[0] == out.stats.tokens_out, int(out.is_marker.sum())  # one marker per row
        (True, 8)
    """

    def __init__(self, hidden_size: int, config: Optional[DynTokConfig] = None, marker: MarkerSource = None):
        super().__init__()
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}.")
        self.hidden_size = hidden_size
        self.config = config if config is not None else DynTokConfig()
        if not isinstance(self.config, DynTokConfig):
            raise TypeError(f"config must be a DynTokConfig, got {type(self.config).__name__}.")
        # Plain attribute (not nn.Module registration): a borrowed parameter stays the host's alone.
        object.__setattr__(self, "_borrowed_marker", None)
        if marker is None:
            self.marker = nn.Parameter(torch.randn(hidden_size) / math.sqrt(hidden_size))
        elif isinstance(marker, Tensor) or callable(marker):
            self.marker = None
            object.__setattr__(self, "_borrowed_marker", marker)
            if isinstance(marker, Tensor):
                self._check_marker(marker)
        else:
            raise TypeError(f"marker must be None, a tensor or a callable returning one, got {type(marker).__name__}.")
        self._generator: Optional[torch.Generator] = None
        self._generator_key: Optional[tuple] = None
        self._warned_floor = False
        self.last_stats: list = []

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"hidden_size={self.hidden_size}, threshold={cfg.threshold}, marker={cfg.marker!r}, "
            f"similarity={cfg.similarity!r}, train_threshold_range={cfg.train_threshold_range}, "
            f"max_tokens={cfg.max_tokens}, target_ratio={cfg.target_ratio}"
        )

    def forward(self, features: Tensor, similarity_features: Optional[Tensor] = None) -> DynTokOutput:
        """Compress one video: `features (F, h, w, D)`, optional `similarity_features (F, h, w, C)`."""
        _check_rank(features, "features")
        return self.compress_batch(features, [features.shape[0]], similarity_features).split()[0]

    def compress_batch(
        self,
        features: Tensor,
        frames_per_video: Sequence[int],
        similarity_features: Optional[Tensor] = None,
    ) -> DynTokBatchOutput:
        """Compress several videos in one call.

        Args:
            features: `(sum F_i, h, w, D)`, the frames of all videos concatenated in order.
            frames_per_video: `F_i` for each video.
            similarity_features: `(sum F_i, h, w, C)` features to compare (ignored with `similarity="projected"`).
        """
        cfg = self.config
        frames_per_video = self._check_inputs(features, frames_per_video, similarity_features)
        if cfg.similarity == "projected" or similarity_features is None:
            similarity_features = features
        total_frames, rows, cols, _ = features.shape
        num_videos = len(frames_per_video)
        thresholds = self._thresholds(num_videos)
        capacity = self._capacity(frames_per_video, rows, cols)
        marker = None if cfg.marker == "none" else self._marker_tensor()
        if triton_merge.supports(features, similarity_features, marker):
            units_per_video = [markers_per_video(cfg.marker, f, rows) for f in frames_per_video]
            fused = triton_merge.compress(
                features, similarity_features, frames_per_video, thresholds, capacity, cfg.marker, marker,
                units_per_video,
            )
            tokens, token_index, is_marker = fused.tokens, fused.token_index, fused.is_marker
            lengths, effective_host = fused.lengths, fused.thresholds
        else:
            tokens, token_index, is_marker, lengths, effective_host = self._compress_torch(
                features, similarity_features, frames_per_video, thresholds, capacity, marker
            )

        stats = [
            DynTokStats(frames=f, tokens_in=f * rows * cols, tokens_out=n, ratio=n / (f * rows * cols), threshold=t)
            for f, n, t in zip(frames_per_video, lengths, effective_host)
        ]
        self.last_stats = stats
        cfg.last_stats = stats
        return DynTokBatchOutput(
            tokens=tokens,
            token_map=token_index,
            is_marker=is_marker,
            lengths=lengths,
            frames_per_video=list(frames_per_video),
            stats=stats,
        )

    def _compress_torch(
        self,
        features: Tensor,
        similarity_features: Tensor,
        frames_per_video: list,
        thresholds: Tensor,
        capacity: Optional[Tensor],
        marker: Optional[Tensor],
    ) -> tuple:
        """The PyTorch path (any device and dtype, autograd): tokens, token index, is_marker, lengths, thresholds."""
        cfg = self.config
        total_frames, rows, cols, _ = features.shape
        device = features.device
        num_videos = len(frames_per_video)
        # Host-to-device copies are non-blocking: a blocking one waits for the device (a host synchronisation).
        frame_counts = torch.tensor(frames_per_video)
        frame_video = torch.repeat_interleave(torch.arange(num_videos), frame_counts).to(device, non_blocking=True)
        thresholds = thresholds.to(device, non_blocking=True)
        if self.similarity_needed():
            similarity = left_similarity(similarity_features)
        else:  # nothing merges: every pair is a boundary whatever its similarity
            similarity = features.new_zeros(total_frames, rows, cols - 1, dtype=torch.float32)
        starts, effective = group_starts(
            similarity, frame_video, thresholds, None if capacity is None else capacity.to(device, non_blocking=True)
        )

        video_last_row = (torch.cumsum(frame_counts, 0) * rows - 1).to(device, non_blocking=True)
        unit_of_position, units_per_video, unit_end_rows = marker_units(
            cfg.marker, frames_per_video, rows, cols, frame_video, video_last_row
        )
        groups_per_row = starts.sum(-1).flatten()
        groups_through_row = torch.cumsum(groups_per_row, 0)
        groups_through_video = groups_through_row[video_last_row]
        groups_per_video = torch.diff(groups_through_video, prepend=groups_through_video.new_zeros(1))
        lengths_device = groups_per_video + torch.tensor(units_per_video).to(device, non_blocking=True)

        finite = _all_finite(features)
        if similarity_features is not features:
            finite &= _all_finite(similarity_features)
        host = torch.cat([lengths_device.double(), effective.double(), finite.double().view(1)]).tolist()
        if host[-1] != 1.0:
            name = "similarity_features" if bool(_all_finite(features)) else "features"
            raise non_finite_error(name)
        lengths = [int(v) for v in host[:num_videos]]
        effective_host = host[num_videos : 2 * num_videos]

        group_of_position = torch.cumsum(starts.flatten(), 0) - 1
        token_index = group_of_position + unit_of_position
        total = sum(lengths)
        tokens = group_means(features, token_index, total)
        is_marker = torch.zeros(total, dtype=torch.bool, device=device)
        if unit_end_rows is not None:
            num_units = unit_end_rows.numel()
            marker_index = groups_through_row[unit_end_rows] + torch.arange(num_units, device=device)
            marker = marker.to(device=device, dtype=features.dtype)
            tokens = tokens.index_copy(0, marker_index, marker.expand(num_units, -1))
            is_marker.index_fill_(0, marker_index, True)  # a Python scalar assigned by index is a blocking copy
        return tokens, token_index.view(total_frames, rows, cols), is_marker, lengths, effective_host

    def similarity_needed(self) -> bool:
        """Whether the next call reads the similarities. It does not when nothing can merge: a threshold >= 1 (a
        cosine is never above 1), no budget and no training draws; callers may then skip computing them."""
        cfg = self.config
        drawing = self.training and cfg.train_threshold_range is not None
        return drawing or cfg.has_budget or cfg.threshold is None or cfg.threshold < 1.0

    def floor(self, frames: int, rows: int) -> int:
        """The fewest tokens a video can have: one per row plus its markers."""
        return token_floor(self.config.marker, frames, rows)

    def _thresholds(self, num_videos: int) -> Tensor:
        cfg = self.config
        if self.training and cfg.train_threshold_range is not None:
            lo, hi = cfg.train_threshold_range
            return torch.empty(num_videos, dtype=torch.float64).uniform_(lo, hi, generator=self._rng())
        value = math.inf if cfg.threshold is None else cfg.threshold
        return torch.full((num_videos,), value, dtype=torch.float64)

    def _rng(self) -> Optional[torch.Generator]:
        """The generator of the training-threshold draws: `seed` if set, else torch's global RNG. Under
        torch.distributed each rank gets its own stream (the seed, or torch's initial seed, offset by the rank), since
        trainers seed every rank alike and would otherwise draw the same thresholds on every GPU."""
        seed, rank = self.config.seed, _distributed_rank()
        if seed is None and rank is None:
            return None
        base = torch.initial_seed() if seed is None else seed
        key = (base, rank)
        if self._generator is None or self._generator_key != key:
            self._generator = torch.Generator().manual_seed((base + _RANK_SEED_STRIDE * (rank or 0)) % 2**63)
            self._generator_key = key
        return self._generator

    def _capacity(self, frames_per_video: Sequence[int], rows: int, cols: int) -> Optional[Tensor]:
        """Boundaries (beyond column 0) each video may keep under the budget, or None without a budget."""
        cfg = self.config
        if not cfg.has_budget:
            return None
        capacities = []
        for frames in frames_per_video:
            floor = self.floor(frames, rows)
            if cfg.max_tokens is None and not self._warned_floor:
                asked = requested_budget(cfg, frames, rows, cols)
                if asked < floor:
                    logger.warning(
                        "target_ratio=%s asks for %d tokens, below the floor of %d (one token per row plus "
                        "markers); using the floor.", cfg.target_ratio, asked, floor,
                    )
                    self._warned_floor = True
            capacities.append(budget_tokens(cfg, frames, rows, cols) - floor)
        return torch.tensor(capacities, dtype=torch.int64)

    def _marker_tensor(self) -> Tensor:
        if self.marker is not None:
            return self.marker
        marker = self._borrowed_marker() if callable(self._borrowed_marker) else self._borrowed_marker
        self._check_marker(marker)
        return marker

    def _check_marker(self, marker: Tensor) -> None:
        if not isinstance(marker, Tensor) or marker.shape != (self.hidden_size,):
            shape = tuple(marker.shape) if isinstance(marker, Tensor) else type(marker).__name__
            raise ValueError(
                f"The grid marker must have shape ({self.hidden_size},) to match hidden_size={self.hidden_size}, "
                f"got {shape}."
            )

    def _check_inputs(
        self, features: Tensor, frames_per_video: Sequence[int], similarity_features: Optional[Tensor]
    ) -> list:
        _check_rank(features, "features")
        if features.shape[-1] != self.hidden_size:
            raise ValueError(
                f"features have hidden size {features.shape[-1]} but the compressor was built for "
                f"hidden_size={self.hidden_size}."
            )
        if features.shape[0] == 0:
            raise ValueError("features have zero frames; pass at least one frame per video.")
        if features.shape[1] == 0 or features.shape[2] == 0:
            raise ValueError(f"features have an empty grid {tuple(features.shape[1:3])}; h and w must be >= 1.")
        frames_per_video = [int(f) for f in frames_per_video]
        if not frames_per_video or min(frames_per_video) < 1:
            raise ValueError(f"Every video needs at least one frame, got frames_per_video={frames_per_video}.")
        if sum(frames_per_video) != features.shape[0]:
            raise ValueError(
                f"frames_per_video sums to {sum(frames_per_video)} but features have {features.shape[0]} frames."
            )
        if similarity_features is not None:
            _check_rank(similarity_features, "similarity_features")
            if similarity_features.shape[:3] != features.shape[:3]:
                raise ValueError(
                    f"similarity_features must share (F, h, w) with features: got "
                    f"{tuple(similarity_features.shape[:3])} vs {tuple(features.shape[:3])}."
                )
            if similarity_features.device != features.device:
                raise ValueError(
                    f"similarity_features are on {similarity_features.device} but features on {features.device}."
                )
        return frames_per_video


def _distributed_rank() -> Optional[int]:
    """This process's rank in a torch.distributed group of several processes, else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank()
    return None


def _check_rank(tensor: Tensor, name: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.dim() != 4:
        raise ValueError(f"{name} must have shape (frames, h, w, dim), got a {tensor.dim()}-D tensor "
                         f"of shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}.")


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types and float32 itself; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _all_finite(tensor: Tensor) -> Tensor:
    """A device-side flag: one reduction, no host synchronisation (never a sum, which overflows near the range's
    ends)."""
    with torch.no_grad():
        return torch.isfinite(tensor.detach()).all()


def group_means(features: Tensor, token_index: Tensor, total: int) -> Tensor:
    """Mean of the features mapped to each output slot, accumulated in float32, in the features' dtype; slots
    with no features (markers) are zero."""
    flat = features.reshape(-1, features.shape[-1])
    accumulate = _accumulation_dtype(features.dtype)
    sums = torch.zeros(total, flat.shape[-1], dtype=accumulate, device=flat.device)
    sums = sums.index_add(0, token_index, flat.to(accumulate))
    counts = torch.zeros(total, dtype=accumulate, device=flat.device).index_add_(
        0, token_index, torch.ones_like(token_index, dtype=accumulate)
    )
    return (sums / counts.clamp_min(1.0).unsqueeze(-1)).to(features.dtype)
