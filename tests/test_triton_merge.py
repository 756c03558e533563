"""The fused Triton path of the compressor against the plain reference and against the PyTorch path.

Runs on a CUDA GPU when there is one, else on the CPU through Triton's interpreter (small inputs only):
`TRITON_INTERPRET=1 python -m pytest tests/test_triton_merge.py`. Skipped where Triton is not installed.
Every test run covers the same marker layouts and budget modes on the CPU, through the interpreter and against the
PyTorch path, with smaller inputs: `test_triton_interpreter.py`.
"""

from __future__ import annotations

import math

import pytest
import torch

from dyntok_plugin import DynTokCompressor, DynTokConfig
from dyntok_plugin.core import triton_merge
from reference import budget_tokens, markers_per_video, reference_dyntok

pytest.importorskip("triton")

MARKERS = ["row", "frame", "video", "none"]
MARGIN = 1e-5  # decisions closer than this to a threshold or a budget cut may differ between paths
RELATIVE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(scope="module")
def device():
    """CUDA when present, else the CPU through Triton's interpreter, which must be chosen before dyntok_plugin is
    imported (`triton.jit` reads TRITON_INTERPRET when it builds the kernels)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not triton_merge._interpreting():
        pytest.skip("no CUDA device; run with TRITON_INTERPRET=1 to check the kernels on the CPU")
    return torch.device("cpu")


def smooth_video(seed: int, frames: int, rows: int, cols: int, dim: int, smoothness: float) -> torch.Tensor:
    """float64 features whose left neighbours are similar to a degree set by `smoothness`."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(frames, rows, 1, dim, generator=gen, dtype=torch.float64)
    return base * smoothness + torch.randn(frames, rows, cols, dim, generator=gen, dtype=torch.float64)


def decisions_are_clear(ref, threshold, budget, shape, marker) -> bool:
    """False when float rounding could flip a merge decision (a similarity at the threshold or at the budget cut)."""
    values = sorted(ref.similarities.values())
    if threshold is not None and any(abs(s - threshold) < MARGIN for s in values):
        return False
    frames, rows, cols = shape
    limit = budget_tokens(frames, rows, cols, marker, budget.get("max_tokens"), budget.get("target_ratio"))
    if limit is not None:
        candidates = [s for s in values if s <= (math.inf if threshold is None else threshold)]
        capacity = limit - frames * rows - markers_per_video(marker, frames, rows)
        if 0 < capacity < len(candidates) and candidates[capacity] - candidates[capacity - 1] < MARGIN:
            return False
    return True


def check_against_reference(out, features, similarity, threshold, marker, marker_vector, budget) -> bool:
    """Compare one video's output with the reference; False (nothing asserted) when a decision is too close."""
    ref = reference_dyntok(
        features.double().cpu(), None if similarity is None else similarity.double().cpu(), threshold, marker,
        marker_vector.double().cpu(), **budget,
    )
    if not decisions_are_clear(ref, threshold, budget, tuple(features.shape[:3]), marker):
        return False
    assert torch.equal(out.token_map.cpu(), ref.token_map)
    assert torch.equal(out.is_marker.cpu(), ref.is_marker)
    assert out.tokens.dtype == features.dtype
    rel = RELATIVE[features.dtype]
    torch.testing.assert_close(out.tokens.double().cpu(), ref.tokens, atol=rel * 10, rtol=rel)
    assert out.stats.tokens_out == ref.tokens.shape[0]
    return True


def run_case(device, seed, frames_per_video, grid, dim, sim_dim, threshold, marker, budget, dtype):
    """One batched call through the fused path, checked video by video against the reference."""
    rows, cols = grid
    total = sum(frames_per_video)
    features = smooth_video(seed, total, rows, cols, dim, 1.5).to(device=device, dtype=dtype)
    similarity = None if sim_dim is None else smooth_video(seed + 1, total, rows, cols, sim_dim, 1.5)
    similarity = None if similarity is None else similarity.to(device=device, dtype=dtype)
    marker_vector = torch.linspace(-1, 1, dim, dtype=torch.float64).to(device=device, dtype=dtype)
    comp = DynTokCompressor(dim, DynTokConfig(threshold=threshold, marker=marker, **budget), marker=marker_vector)
    with torch.no_grad():
        assert triton_merge.supports(features, features if similarity is None else similarity, marker_vector)
        batch = comp.compress_batch(features, frames_per_video, similarity)
    checked = 0
    start = 0
    for out, frames in zip(batch.split(), frames_per_video):
        part = slice(start, start + frames)
        sim_part = None if similarity is None else similarity[part]
        checked += check_against_reference(out, features[part], sim_part, threshold, marker, marker_vector, budget)
        start += frames
    return batch, checked


@pytest.mark.parametrize("marker", MARKERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "threshold, budget", [(0.3, {}), (1.0, {}), (-1.5, {}), (0.5, {"max_tokens": 40}), (None, {"target_ratio": 0.4})]
)
def test_fused_matches_reference(device, marker, dtype, threshold, budget):
    _, checked = run_case(device, 7, [1, 3, 2], (3, 6), 40, 5, threshold, marker, budget, dtype)
    assert checked >= 2


@pytest.mark.parametrize("grid, dim, sim_dim", [((1, 1), 3, None), ((2, 1), 5, 2), ((3, 17), 1030, 130)])
def test_fused_odd_shapes(device, grid, dim, sim_dim):
    """Single-column rows (no pairs), similarity taken from the features, sizes past one block of each kind."""
    _, checked = run_case(device, 3, [2], grid, dim, sim_dim, 0.2, "row", {}, torch.float32)
    assert checked == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_pytorch_path(device, dtype):
    """Same decisions, same layout; tokens within one rounding of the output dtype (float32: of the sums)."""
    features = smooth_video(11, 5, 4, 7, 24, 1.0).to(device=device, dtype=dtype)
    similarity = smooth_video(12, 5, 4, 7, 6, 1.0).to(device=device, dtype=dtype)
    for settings in ({"threshold": 0.4, "marker": "video"}, {"threshold": None, "max_tokens": 60, "marker": "frame"}):
        comp = DynTokCompressor(24, DynTokConfig(**settings)).to(device=device, dtype=dtype)
        with torch.no_grad():
            fused = comp.compress_batch(features, [2, 3], similarity)
            try:
                triton_merge.ENABLED = False
                plain = comp.compress_batch(features, [2, 3], similarity)
            finally:
                triton_merge.ENABLED = True
        assert fused.lengths == plain.lengths and fused.stats == plain.stats
        assert torch.equal(fused.token_map, plain.token_map) and torch.equal(fused.is_marker, plain.is_marker)
        rel = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
        torch.testing.assert_close(fused.tokens.float(), plain.tokens.float(), atol=rel, rtol=rel)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fused_rejects_non_finite(device, bad):
    features = torch.randn(2, 3, 4, 6, device=device)
    similarity = torch.randn(2, 3, 4, 5, device=device)
    comp = DynTokCompressor(6).to(device)
    poisoned = features.clone()
    poisoned[1, 2, 3, 0] = bad
    with torch.no_grad(), pytest.raises(ValueError, match="^features contain NaN or Inf"):
        comp(poisoned, similarity)
    poisoned = similarity.clone()
    poisoned[0, 0, 0, 4] = bad
    with torch.no_grad(), pytest.raises(ValueError, match="^similarity_features contain NaN or Inf"):
        comp(features, poisoned)


def test_dispatch_needs_no_gradient(device):
    """The kernels have no backward: a call that needs gradients goes through the PyTorch path."""
    features = torch.randn(1, 2, 3, 4, device=device, requires_grad=True)
    marker = torch.randn(4, device=device, requires_grad=True)
    assert not triton_merge.supports(features, features, None)
    assert not triton_merge.supports(features.detach(), features, marker)
    assert triton_merge.supports(features.detach(), features, marker.detach())
    with torch.no_grad():
        assert triton_merge.supports(features, features, marker)
    assert not triton_merge.supports(features.detach().double(), features, None)
