"""The vectorised compressor against the plain reference of the method as README.md ("How DynTok works") states it, on many random inputs."""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dyntok_plugin import DynTokCompressor, DynTokConfig
from reference import budget_tokens, markers_per_video, reference_dyntok

MARKERS = ["row", "frame", "video", "none"]
# Decisions closer than this to a threshold or a budget cut may differ between float32 and float64 arithmetic.
MARGIN = 1e-5
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def correlated_features(seed: int, frames: int, rows: int, cols: int, dim: int, smoothness: float) -> torch.Tensor:
    """Random features whose left neighbours are similar to a degree set by `smoothness`."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(frames, rows, cols, dim, generator=gen, dtype=torch.float64)
    base = torch.randn(frames, rows, 1, dim, generator=gen, dtype=torch.float64)
    return base * smoothness + noise


@st.composite
def video_cases(draw):
    frames, rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    dim, sim_dim = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    smoothness = draw(st.sampled_from([0.0, 1.0, 3.0, 10.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    features = correlated_features(seed, frames, rows, cols, dim, smoothness)
    similarity = None
    if draw(st.booleans()):
        similarity = correlated_features(seed + 1, frames, rows, cols, sim_dim, smoothness)
    threshold = draw(st.one_of(st.sampled_from([-1.5, -0.5, 0.0, 0.5, 0.7, 0.9, 0.99, 1.0, 1.5]), st.floats(-1.1, 1.1)))
    budget_kind = draw(st.sampled_from(["none", "max_tokens", "target_ratio"]))
    marker = draw(st.sampled_from(MARKERS))
    floor = frames * rows + markers_per_video(marker, frames, rows)
    budget = {}
    if budget_kind == "max_tokens":
        budget["max_tokens"] = draw(st.integers(floor, frames * rows * cols + floor))
    elif budget_kind == "target_ratio":
        budget["target_ratio"] = draw(st.floats(0.01, 1.0))
    if budget and draw(st.booleans()):
        threshold = None
    return features, similarity, threshold, marker, budget


def decisions_are_clear(reference, threshold, budget, features, marker) -> bool:
    """False when float rounding could flip a merge decision (a similarity at the threshold or the budget cut)."""
    values = sorted(reference.similarities.values())
    if threshold is not None and any(abs(s - threshold) < MARGIN for s in values):
        return False
    frames, rows, cols, _ = features.shape
    limit = budget_tokens(frames, rows, cols, marker, budget.get("max_tokens"), budget.get("target_ratio"))
    if limit is not None:
        tau = math.inf if threshold is None else threshold
        candidates = [s for s in values if s <= tau]
        capacity = limit - frames * rows - markers_per_video(marker, frames, rows)
        if 0 < capacity < len(candidates) and candidates[capacity] - candidates[capacity - 1] < MARGIN:
            return False
    return True


def run_both(features, similarity, threshold, marker, budget, dtype=torch.float64):
    dim = features.shape[-1]
    marker_vector = torch.linspace(-1, 1, dim, dtype=torch.float64).to(dtype)
    config = DynTokConfig(threshold=threshold, marker=marker, **budget)
    comp = DynTokCompressor(dim, config, marker=marker_vector)
    features_in = features.to(dtype)
    similarity_in = None if similarity is None else similarity.to(dtype)
    out = comp(features_in, similarity_in)
    ref = reference_dyntok(
        features_in.double(), None if similarity_in is None else similarity_in.double(), threshold, marker,
        marker_vector.double(), **budget,
    )
    return out, ref


@settings(max_examples=300, deadline=None)
@given(video_cases(), st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]))
def test_matches_reference(case, dtype):
    features, similarity, threshold, marker, budget = case
    out, ref = run_both(features, similarity, threshold, marker, budget, dtype)
    assume(decisions_are_clear(ref, threshold, budget, features, marker))
    # Similarities of half-precision inputs are computed from the half values by both sides, so decisions agree.
    assert torch.equal(out.token_map, ref.token_map)
    assert torch.equal(out.is_marker, ref.is_marker)
    assert out.tokens.dtype == dtype
    torch.testing.assert_close(out.tokens.double(), ref.tokens, atol=TOLERANCE[dtype] * 10, rtol=TOLERANCE[dtype])
    assert out.stats.tokens_out == ref.tokens.shape[0]


@settings(max_examples=150, deadline=None)
@given(video_cases())
def test_budget_is_met_exactly(case):
    features, similarity, _, marker, _ = case
    frames, rows, cols, _ = features.shape
    floor = frames * rows + markers_per_video(marker, frames, rows)
    most = frames * rows * cols + markers_per_video(marker, frames, rows)
    for max_tokens in sorted({floor, (floor + most) // 2, most, most + 3}):
        out, _ = run_both(features, similarity, None, marker, {"max_tokens": max_tokens})
        assert out.tokens.shape[0] == min(max_tokens, most)
        out, ref = run_both(features, similarity, 0.5, marker, {"max_tokens": max_tokens})
        assert out.tokens.shape[0] == min(max_tokens, ref.tokens.shape[0])


@settings(max_examples=100, deadline=None)
@given(video_cases())
def test_length_is_monotone_in_threshold(case):
    features, similarity, _, marker, budget = case
    lengths = [
        run_both(features, similarity, tau, marker, budget)[0].tokens.shape[0]
        for tau in torch.linspace(-1.2, 1.2, 13).tolist()
    ]
    assert lengths == sorted(lengths)


def test_batch_equals_single_calls():
    gen = torch.Generator().manual_seed(0)
    videos = [torch.randn(f, 3, 5, 6, generator=gen) for f in (1, 4, 2)]
    sims = [torch.randn(f, 3, 5, 4, generator=gen) for f in (1, 4, 2)]
    for budget in ({}, {"max_tokens": 30}, {"target_ratio": 0.5}):
        comp = DynTokCompressor(6, DynTokConfig(threshold=0.1, **budget))
        batch = comp.compress_batch(torch.cat(videos), [1, 4, 2], torch.cat(sims))
        singles = [comp(v, s) for v, s in zip(videos, sims)]
        for got, want in zip(batch.split(), singles):
            assert torch.equal(got.tokens, want.tokens)
            assert torch.equal(got.token_map, want.token_map)
            assert torch.equal(got.is_marker, want.is_marker)
            assert got.stats == want.stats
        assert batch.lengths == [s.tokens.shape[0] for s in singles]
