"""Grid-marker layouts (`row`, `frame`, `video`, `none`): how many markers a video gets, where they go, and the
fewest tokens a video can be compressed to (one per row plus its markers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def token_floor(marker: str, frames: int, rows: int) -> int:
    """The fewest tokens a video can have: one per row plus its markers (the lowest budget that can be met)."""
    return frames * rows + markers_per_video(marker, frames, rows)


def markers_per_video(marker: str, frames: int, rows: int) -> int:
    """How many markers a video of `frames` frames of `rows` rows gets in a layout."""
    return {"row": frames * rows, "frame": frames, "video": 1, "none": 0}[marker]


def marker_units(
    marker: str, frames_per_video: Sequence[int], rows: int, cols: int, frame_video: Tensor, video_last_row: Tensor
):
    """For the marker layout: the number of markers before each position, the markers per video, and the global
    row index that each marker closes (None when there are no markers)."""
    device = frame_video.device
    total_frames = sum(frames_per_video)
    positions = torch.arange(total_frames * rows * cols, device=device)
    units_per_video = [markers_per_video(marker, f, rows) for f in frames_per_video]
    if marker == "none":
        return torch.zeros_like(positions), units_per_video, None
    if marker == "row":
        return positions // cols, units_per_video, torch.arange(total_frames * rows, device=device)
    if marker == "frame":
        return positions // (rows * cols), units_per_video, (torch.arange(total_frames, device=device) + 1) * rows - 1
    return frame_video[positions // (rows * cols)], units_per_video, video_last_row
