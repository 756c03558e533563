"""Cases of the fused Triton kernels on the CPU through Triton's interpreter, against the PyTorch path.

Not collected by a plain `pytest tests` (the name does not start with `test_`): `test_triton_interpreter.py` runs this
file in a child pytest with `TRITON_INTERPRET=1` (its docstring says why a child process). To run it directly:
`TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= python -m pytest tests/triton_interpreter_cases.py`.

Coverage mirrors the GPU tests (`test_triton_merge.py`, `test_compressor_cuda.py`): every marker layout with every
threshold and budget mode (threshold alone, merging off, merging all, `max_tokens`, `target_ratio`, either budget with
`threshold=None`), float32/float16/bfloat16, several videos of different frame counts per call, training-threshold
draws, shapes past one block of each kernel, and the error paths (NaN/Inf in either input, gradients needed). Each
case runs one call through the fused path (checked to be taken) and the same call through the PyTorch path
(`ENABLED = False`): the decisions (token map, markers, lengths) must be identical, markers and groups of one token
bit-exact (so merging off is bit-exact in every dtype), merged tokens within one rounding of the dtype (float32: of
the sums). The interpreter executes each kernel program in Python, tens of milliseconds per row, so shapes are small.
Where the interpreter differs from a GPU, the GPU tests are the check: it multiplies in float32 with numpy whatever
`input_precision` says (the IEEE products that keep float32 bit-exact, where tf32 would not, are not exercised here),
and it truncates float32 -> bfloat16 conversions where the GPU rounds to nearest (merged bfloat16 tokens may be one
unit in the last place from the PyTorch path; values exact in bfloat16, such as groups of one token, are unaffected).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from dyntok_plugin import DynTokCompressor, DynTokConfig
from dyntok_plugin.core import triton_merge

pytest.importorskip("triton", reason="Triton is not installed (pip install triton); the fused path is not available")

pytestmark = pytest.mark.skipif(
    not triton_merge._interpreting(),
    reason="needs kernels built by Triton's interpreter: TRITON_INTERPRET=1 before dyntok_plugin is imported",
)

MARKERS = ["row", "frame", "video", "none"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FRAMES = [1, 2, 1]  # three videos, of different lengths, in one call
ROWS, COLS, DIM, SIM_DIM = 2, 5, 12, 6
MAX_TOKENS = 10  # at or above every video's floor (2 frames, 2 rows, a marker per row: 8)
MODES = {
    "threshold": {"threshold": 0.3},
    "merging-off": {"threshold": 1.0},
    "merge-all": {"threshold": -1.5},
    "threshold+max_tokens": {"threshold": 0.8, "max_tokens": MAX_TOKENS},
    "max_tokens-only": {"threshold": None, "max_tokens": MAX_TOKENS},
    "target_ratio-only": {"threshold": None, "target_ratio": 0.6},
    "threshold+target_ratio": {"threshold": 0.0, "target_ratio": 0.5},
}
# Every marker with every mode; the dtype cycles so that each marker and each mode meets all three dtypes.
MATRIX = [
    pytest.param(marker, mode, DTYPES[(i + j) % len(DTYPES)], id=f"{marker}-{mode}-{str(DTYPES[(i + j) % 3])[6:]}")
    for i, marker in enumerate(MARKERS)
    for j, mode in enumerate(MODES)
]

CASES = len(MATRIX) + 17  # every test here, parametrised: the child run must pass exactly these


pytorch_path = triton_merge.disabled  # force the PyTorch path for the duration


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls that reach the fused path (the real one runs)."""
    calls = []
    real = triton_merge.compress

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_merge, "compress", counting)
    return calls


def videos(seed: int, frames=FRAMES, rows=ROWS, cols=COLS, dim=DIM, sim_dim=SIM_DIM):
    """float64 features whose left neighbours are similar to varying degrees, and similarity features."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(frames)
    base = torch.randn(total, rows, 1, max(dim, sim_dim), generator=gen, dtype=torch.float64)
    features = 1.5 * base[..., :dim] + torch.randn(total, rows, cols, dim, generator=gen, dtype=torch.float64)
    similarity = 1.5 * base[..., :sim_dim] + torch.randn(total, rows, cols, sim_dim, generator=gen, dtype=torch.float64)
    return features, similarity, list(frames)


def make_compressor(dim: int, dtype: torch.dtype, **settings) -> DynTokCompressor:
    """A compressor borrowing a `dtype` grid marker (it may differ from the features' dtype)."""
    marker = torch.linspace(-1, 1, dim, dtype=torch.float64).to(dtype)
    return DynTokCompressor(dim, DynTokConfig(**settings), marker=marker)


def both_paths(make, features, frames, similarity, fused_calls):
    """The same call through the fused path (checked to be taken) and through the PyTorch path, each on a fresh
    compressor from `make()` so that training draws start from the same seed."""
    with torch.no_grad():
        before = len(fused_calls)
        fused = make().compress_batch(features, frames, similarity)
        assert len(fused_calls) == before + 1, "the call did not take the fused path"
        with pytorch_path():
            plain = make().compress_batch(features, frames, similarity)
        assert len(fused_calls) == before + 1
    return fused, plain


def assert_same(fused, plain, features, exact_thresholds: bool, exact_markers: bool = True):
    """Same decisions and layout; markers (if `exact_markers`) and groups of one token bit-exact; merged tokens within
    one rounding."""
    assert fused.lengths == plain.lengths
    assert torch.equal(fused.token_map, plain.token_map)
    assert torch.equal(fused.is_marker, plain.is_marker)
    assert fused.tokens.dtype == plain.tokens.dtype == features.dtype
    assert fused.tokens.shape == plain.tokens.shape
    for got, want in zip(fused.stats, plain.stats):
        assert (got.frames, got.tokens_in, got.tokens_out, got.ratio) == (
            want.frames, want.tokens_in, want.tokens_out, want.ratio
        )
        if exact_thresholds:
            assert got.threshold == want.threshold
        else:  # a binding budget's threshold is a float32 similarity, summed in another order
            assert got.threshold == pytest.approx(want.threshold, abs=1e-6)
    if exact_markers:
        assert torch.equal(fused.tokens[fused.is_marker], plain.tokens[plain.is_marker])
    flat_map = fused.token_map.flatten()
    members = torch.bincount(flat_map, minlength=fused.tokens.shape[0])
    single = members[flat_map] == 1
    flat_features = features.reshape(-1, features.shape[-1])
    assert torch.equal(fused.tokens[flat_map[single]], flat_features[single])
    eps = 1e-6 if features.dtype == torch.float32 else torch.finfo(features.dtype).eps
    torch.testing.assert_close(fused.tokens, plain.tokens, atol=1e-6, rtol=eps)


def thresholds_exact(settings: dict) -> bool:
    return "max_tokens" not in settings and "target_ratio" not in settings


@pytest.mark.parametrize("marker, mode, dtype", MATRIX)
def test_fused_equals_pytorch_path(marker, mode, dtype, fused_calls):
    settings = {**MODES[mode], "marker": marker}
    features, similarity, frames = videos(1)
    features, similarity = features.to(dtype), similarity.to(dtype)
    # A float32 marker with half-precision features (a host's parameter kept in float32), cast in the kernel. Triton's
    # interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest (as torch does), so a bfloat16 marker
    # cast from float32 may be one unit in the last place off here; the tolerance on all tokens covers it.
    fused, plain = both_paths(
        lambda: make_compressor(DIM, torch.float32, **settings), features, frames, similarity, fused_calls
    )
    assert_same(fused, plain, features, thresholds_exact(settings), exact_markers=dtype != torch.bfloat16)
    merged = fused.tokens.shape[0] - int(fused.is_marker.sum())
    if mode == "merging-off":
        assert merged == features.shape[:3].numel()
    elif mode == "merge-all":
        assert merged == features.shape[0] * ROWS
    else:  # the case merges some tokens and keeps some boundaries
        assert features.shape[0] * ROWS < merged < features.shape[:3].numel()
    if mode == "threshold+max_tokens":  # the budget binds for some videos (a lower threshold), not for others
        assert all(n <= MAX_TOKENS for n in fused.lengths) and MAX_TOKENS in fused.lengths
        in_effect = [s.threshold for s in fused.stats]
        assert min(in_effect) < settings["threshold"] == max(in_effect)
    if mode == "max_tokens-only":
        assert all(n <= MAX_TOKENS for n in fused.lengths) and MAX_TOKENS in fused.lengths


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_merging_off_is_bit_exact(dtype, fused_calls):
    """threshold >= 1 merges nothing: every non-marker token is the input feature itself, in every dtype."""
    features, _, frames = videos(2)
    features = features.to(dtype)
    fused, plain = both_paths(
        lambda: make_compressor(DIM, dtype, threshold=1.0, marker="frame"), features, frames, None, fused_calls
    )
    assert torch.equal(fused.tokens, plain.tokens)
    assert torch.equal(fused.tokens[~fused.is_marker], features.reshape(-1, DIM))


@pytest.mark.parametrize(
    "budget, dtype", [({}, torch.float32), ({"max_tokens": MAX_TOKENS}, torch.bfloat16)], ids=["threshold", "budget"]
)
def test_training_threshold_draws(budget, dtype, fused_calls):
    """In training mode without gradients (e.g. evaluation inside a training loop) the fused path uses the drawn
    per-video thresholds: the same draws, hence the same output, as the PyTorch path."""
    features, similarity, frames = videos(3)
    features, similarity = features.to(dtype), similarity.to(dtype)
    settings = {"threshold": 0.9, "train_threshold_range": (-0.3, 0.6), "seed": 5, "marker": "video", **budget}
    fused_comp = make_compressor(DIM, dtype, **settings).train()
    plain_comp = make_compressor(DIM, dtype, **settings).train()
    drawn = []
    with torch.no_grad():
        for _ in range(2):  # a second call draws afresh
            before = len(fused_calls)
            fused = fused_comp.compress_batch(features, frames, similarity)
            assert len(fused_calls) == before + 1
            with pytorch_path():
                plain = plain_comp.compress_batch(features, frames, similarity)
            assert_same(fused, plain, features, thresholds_exact(budget))
            drawn.append([s.threshold for s in fused.stats])
    if not budget:
        assert all(-0.3 <= t <= 0.6 for t in drawn[0] + drawn[1])
    assert len(set(drawn[0])) == len(frames) and drawn[0] != drawn[1]


@pytest.mark.parametrize(
    "grid, dim, sim_dim, settings",
    [
        ((1, 1), 3, None, {"threshold": 0.2, "marker": "row"}),  # single-column rows: no pairs at all
        ((1, 1), 3, 2, {"threshold": None, "target_ratio": 0.5, "marker": "frame"}),  # budget below the floor
        ((2, 1), 5, 2, {"threshold": None, "max_tokens": 6, "marker": "video"}),
        ((3, 17), 1030, 130, {"threshold": 0.2, "marker": "row"}),  # past one block of W, D and C
    ],
    ids=["1x1", "1x1-target_ratio", "2x1-max_tokens", "3x17-wide"],
)
def test_fused_odd_shapes(grid, dim, sim_dim, settings, fused_calls):
    rows, cols = grid
    features, similarity, frames = videos(4, frames=[2, 1], rows=rows, cols=cols, dim=dim, sim_dim=sim_dim or 1)
    features = features.float()
    similarity = None if sim_dim is None else similarity.float()
    fused, plain = both_paths(lambda: make_compressor(dim, torch.float32, **settings), features, frames, similarity,
                              fused_calls)
    assert_same(fused, plain, features, thresholds_exact(settings))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, inside the interpreter
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fused_rejects_non_finite(bad, fused_calls):
    """A NaN or Inf in either input (here in the last video) is reported, naming the input, as by the PyTorch path."""
    features, similarity, frames = videos(5, frames=[1, 2], cols=3)
    features, similarity = features.float(), similarity.float()
    poisoned_features = features.clone()
    poisoned_features[2, 1, 2, 0] = bad
    poisoned_similarity = similarity.clone()
    poisoned_similarity[1, 0, 0, SIM_DIM - 1] = bad
    cases = [
        (poisoned_features, similarity, "features"),
        (features, poisoned_similarity, "similarity_features"),
        (poisoned_features, poisoned_similarity, "features"),
    ]
    comp = make_compressor(DIM, torch.float32, threshold=0.5, marker="row")
    for x, s, name in cases:
        messages = []
        for force_pytorch in (False, True):
            path = pytorch_path() if force_pytorch else contextlib.nullcontext()
            with torch.no_grad(), path, pytest.raises(ValueError, match=f"^{name} contain NaN or Inf") as raised:
                comp.compress_batch(x, frames, s)
            messages.append(str(raised.value))
        assert messages[0] == messages[1]
    assert len(fused_calls) == len(cases)


def test_float16_large_but_finite(fused_calls):
    """float16 values whose squares overflow float16 are finite inputs: the similarities are computed in float32."""
    features, _, frames = videos(6, frames=[1, 1])
    features = (features * 2e4).clamp(-6e4, 6e4).half()
    fused, plain = both_paths(lambda: make_compressor(DIM, torch.float16, threshold=0.3), features, frames, None,
                              fused_calls)
    assert torch.isfinite(fused.tokens).all()
    assert_same(fused, plain, features, True)


def test_dispatch_needs_no_gradient(fused_calls):
    """The kernels have no backward: a call that needs gradients, or a float64 call, takes the PyTorch path."""
    features, similarity, frames = videos(7, frames=[1, 2])
    x = features.float().requires_grad_()
    marker = torch.randn(DIM, requires_grad=True)
    assert not triton_merge.supports(x, x, None)
    assert not triton_merge.supports(x.detach(), x.detach(), marker)
    assert triton_merge.supports(x.detach(), x.detach(), marker.detach())
    with torch.no_grad():
        assert triton_merge.supports(x, x, marker)
    assert not triton_merge.supports(x.detach().double(), x.detach(), None)

    comp = DynTokCompressor(DIM, DynTokConfig(threshold=0.3, marker="row"), marker=marker)
    out = comp.compress_batch(x, frames, similarity.float())
    assert fused_calls == []
    (out.tokens * torch.linspace(-1, 1, out.tokens.numel()).view_as(out.tokens)).sum().backward()
    assert x.grad.abs().sum() > 0 and marker.grad.abs().sum() > 0
    with torch.no_grad():
        comp.compress_batch(features.double(), frames, similarity.double())
    assert fused_calls == []


@pytest.mark.parametrize("scale", [1e-20, 1e20, 1e30])
def test_fused_similarity_is_scale_free_at_the_ends_of_float32(scale, fused_calls):
    """Both paths divide each vector by its largest magnitude before the cosine: features near 1e20 do not overflow
    (every pair merging on NaN) and near 1e-20 do not underflow (identical vectors never merging)."""
    features, _, frames = videos(6, frames=[1, 2])
    features = features.float()
    features[:, :, 2] = features[:, :, 1]  # identical neighbours must merge
    make = lambda: make_compressor(DIM, torch.float32, threshold=0.9, marker="row")  # noqa: E731
    reference, _ = both_paths(make, features, frames, None, fused_calls)
    fused, plain = both_paths(make, features * scale, frames, None, fused_calls)
    assert fused.lengths == reference.lengths and torch.equal(fused.token_map, reference.token_map)
    assert torch.equal(fused.token_map, plain.token_map)
