"""A plain, loop-based implementation of the method as README.md ("How DynTok works") states it, to check the vectorised compressor against.

Deliberately naive: Python loops over frames, rows and columns, float64 arithmetic, a sorted list for budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class ReferenceResult:
    tokens: torch.Tensor  # (N, D) float64
    token_map: torch.Tensor  # (F, h, w) int64
    is_marker: torch.Tensor  # (N,) bool
    similarities: dict  # (f, r, c) -> float, for c >= 1


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    norms = float(a.norm()) * float(b.norm())
    if norms == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float(a @ b) / norms))


def markers_per_video(marker: str, frames: int, rows: int) -> int:
    return {"row": frames * rows, "frame": frames, "video": 1, "none": 0}[marker]


def budget_tokens(frames: int, rows: int, cols: int, marker: str, max_tokens, target_ratio) -> Optional[int]:
    floor = frames * rows + markers_per_video(marker, frames, rows)
    if max_tokens is not None:
        return max_tokens
    if target_ratio is not None:
        return max(floor, math.floor(target_ratio * frames * rows * cols))
    return None


def reference_dyntok(
    features: torch.Tensor,
    similarity_features: Optional[torch.Tensor],
    threshold: Optional[float],
    marker: str,
    marker_vector: Optional[torch.Tensor] = None,
    max_tokens: Optional[int] = None,
    target_ratio: Optional[float] = None,
) -> ReferenceResult:
    frames, rows, cols, dim = features.shape
    sim = features if similarity_features is None else similarity_features
    similarities = {}
    for f in range(frames):
        for r in range(rows):
            for c in range(1, cols):
                similarities[(f, r, c)] = cosine(sim[f, r, c - 1], sim[f, r, c])

    tau = math.inf if threshold is None else threshold
    boundaries = [(s, pos) for pos, s in sorted(similarities.items()) if s <= tau]
    budget = budget_tokens(frames, rows, cols, marker, max_tokens, target_ratio)
    if budget is not None:
        capacity = budget - frames * rows - markers_per_video(marker, frames, rows)
        boundaries = sorted(boundaries)[: max(capacity, 0)]  # lowest similarity first, then earlier position
    boundary_positions = {pos for _, pos in boundaries}

    tokens, is_marker = [], []
    token_map = torch.empty(frames, rows, cols, dtype=torch.long)
    marker_row = None if marker_vector is None else marker_vector.double()

    def close(kind: str) -> None:
        if marker == kind:
            tokens.append(marker_row)
            is_marker.append(True)

    for f in range(frames):
        for r in range(rows):
            group = []
            for c in range(cols):
                if c > 0 and (f, r, c) in boundary_positions:
                    tokens.append(torch.stack(group).mean(0))
                    is_marker.append(False)
                    group = []
                group.append(features[f, r, c].double())
                token_map[f, r, c] = len(tokens)
            tokens.append(torch.stack(group).mean(0))
            is_marker.append(False)
            close("row")
        close("frame")
    close("video")
    return ReferenceResult(torch.stack(tokens), token_map, torch.tensor(is_marker), similarities)
