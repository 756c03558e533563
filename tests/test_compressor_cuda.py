"""The compressor on a CUDA device: same results as on the CPU, gradients, and one host synchronisation per call.

Skipped without CUDA. Covers whichever path the compressor dispatches to (the fused Triton path for inference
where Triton is installed, the PyTorch path for training) and the PyTorch path forced with `ENABLED = False`.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from dyntok_plugin import DynTokCompressor, DynTokConfig
from dyntok_plugin.core import triton_merge
from reference import reference_dyntok

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
RELATIVE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
SETTINGS = [
    {"threshold": 0.3, "marker": "row"},
    {"threshold": 0.6, "marker": "frame"},
    {"threshold": 0.0, "marker": "video"},
    {"threshold": 0.3, "marker": "none", "max_tokens": 30},
    {"threshold": None, "marker": "row", "target_ratio": 0.5},
]


pytorch_path = triton_merge.disabled  # force the PyTorch path for the duration


SYNCHRONISING_CALLS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"}


def _profiled_syncs(fn) -> int:
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key in SYNCHRONISING_CALLS)


def count_syncs(fn) -> int:
    """How many times `fn` makes the host wait for the device: CUDA runtime synchronisations the profiler records
    (a blocking copy is a copy plus a stream synchronisation), less those of profiling an empty function."""
    torch.cuda.synchronize()
    return _profiled_syncs(fn) - _profiled_syncs(lambda: None)


def videos(seed: int, frames=(2, 3), rows=4, cols=7, dim=48, sim_dim=12):
    gen = torch.Generator().manual_seed(seed)
    total = sum(frames)
    base = torch.randn(total, rows, 1, dim, generator=gen, dtype=torch.float64)
    features = 1.5 * base + torch.randn(total, rows, cols, dim, generator=gen, dtype=torch.float64)
    similarity = 1.5 * base[..., :sim_dim] + torch.randn(total, rows, cols, sim_dim, generator=gen, dtype=torch.float64)
    return features, similarity, list(frames)


def poison_allocator(numel: int = 1 << 22) -> None:
    """Leave NaN in the caching allocator's free blocks, so an output slot nobody writes shows up as NaN."""
    torch.full((numel,), float("nan"), device=CUDA)
    torch.cuda.synchronize()


def test_sync_counter_sees_syncs():
    x = torch.ones(4, device=CUDA)
    assert count_syncs(lambda: x + 1) == 0
    assert count_syncs(x.tolist) == 1
    assert count_syncs(lambda: (x.tolist(), torch.tensor([1.0], device=CUDA))) == 2  # a blocking copy to the device


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("force_pytorch", [False, True], ids=["dispatch", "pytorch"])
def test_cuda_matches_reference(dtype, settings, force_pytorch):
    features, similarity, frames = videos(1)
    marker = torch.linspace(-1, 1, features.shape[-1], dtype=torch.float64)
    comp = DynTokCompressor(features.shape[-1], DynTokConfig(**settings), marker=marker.to(CUDA, dtype))
    poison_allocator()
    with torch.no_grad(), (pytorch_path() if force_pytorch else contextlib.nullcontext()):
        batch = comp.compress_batch(features.to(CUDA, dtype), frames, similarity.to(CUDA, dtype))
    start = 0
    for out, count in zip(batch.split(), frames):
        part = slice(start, start + count)
        start += count
        ref = reference_dyntok(
            features[part].to(dtype).double(), similarity[part].to(dtype).double(), settings["threshold"],
            settings["marker"], marker.to(dtype).double(),
            max_tokens=settings.get("max_tokens"), target_ratio=settings.get("target_ratio"),
        )
        assert torch.equal(out.token_map.cpu(), ref.token_map)
        assert torch.equal(out.is_marker.cpu(), ref.is_marker)
        assert out.tokens.dtype == dtype and out.tokens.device.type == "cuda"
        rel = RELATIVE[dtype]
        torch.testing.assert_close(out.tokens.cpu().double(), ref.tokens, atol=10 * rel, rtol=rel)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_equals_cpu(dtype):
    """The same call on the CPU and on the GPU: same decisions, tokens within one rounding of the dtype."""
    features, similarity, frames = videos(2, frames=(3, 1, 2))
    for settings in SETTINGS:
        comp = DynTokCompressor(features.shape[-1], DynTokConfig(**settings)).to(dtype)
        with torch.no_grad():
            cpu = comp.compress_batch(features.to(dtype), frames, similarity.to(dtype))
            comp.to(CUDA)
            gpu = comp.compress_batch(features.to(CUDA, dtype), frames, similarity.to(CUDA, dtype))
        assert gpu.lengths == cpu.lengths
        for got, want in zip(gpu.stats, cpu.stats):  # a budget's threshold is a float32 similarity, rounded apart
            assert got.tokens_out == want.tokens_out and got.threshold == pytest.approx(want.threshold, abs=1e-6)
        assert torch.equal(gpu.token_map.cpu(), cpu.token_map) and torch.equal(gpu.is_marker.cpu(), cpu.is_marker)
        ulp = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-6
        torch.testing.assert_close(gpu.tokens.cpu().float(), cpu.tokens.float(), atol=1e-6, rtol=ulp)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_gradients_match_cpu(dtype):
    """Training on the GPU (the PyTorch path): gradients reach the features and the marker, as on the CPU."""
    features, similarity, frames = videos(3)
    grads = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        comp = DynTokCompressor(features.shape[-1], DynTokConfig(threshold=0.3)).to(device, dtype)
        x = features.to(device, dtype).requires_grad_()
        out = comp.compress_batch(x, frames, similarity.to(device, dtype))
        weights = torch.linspace(-1, 1, out.tokens.numel(), dtype=torch.float64).view_as(out.tokens)
        (out.tokens.double() * weights.to(device)).sum().backward()
        grads[device] = (x.grad.cpu().double(), comp.marker.grad.cpu().double())
    for got, want in zip(grads["cuda"], grads["cpu"]):
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=1e-6, rtol=RELATIVE[dtype])


@pytest.mark.parametrize(
    "settings, mode",
    [
        (SETTINGS[0], "inference"),
        (SETTINGS[3], "inference"),
        (SETTINGS[4], "inference"),
        (SETTINGS[0], "training"),
        (SETTINGS[3], "training"),
        (SETTINGS[0], "pytorch"),
    ],
)
def test_one_host_synchronisation_per_call(settings, mode):
    features, similarity, frames = videos(4)
    cfg = DynTokConfig(**settings, train_threshold_range=(0.2, 0.8) if mode == "training" else None)
    comp = DynTokCompressor(features.shape[-1], cfg).to(CUDA)
    comp.train(mode == "training")
    x, s = features.to(CUDA, torch.bfloat16), similarity.to(CUDA, torch.bfloat16)
    comp.to(torch.bfloat16)
    if mode == "training":
        x.requires_grad_()
    grad = torch.enable_grad() if mode == "training" else torch.no_grad()
    with grad, (pytorch_path() if mode == "pytorch" else contextlib.nullcontext()):
        comp.compress_batch(x, frames, s)  # warm-up: kernel compilation, allocator growth
        assert count_syncs(lambda: comp.compress_batch(x, frames, s)) == 1


def _host_pooling():
    """LLaVA-OneVision's own channels-first video pooling of a 27x27 SigLIP grid (no model needed)."""
    from types import SimpleNamespace

    from transformers.models.llava_onevision import modeling_llava_onevision as host_module

    host_class = getattr(host_module, "LlavaOnevisionModel", host_module.LlavaOnevisionForConditionalGeneration)
    owner = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=384, patch_size=14)))
    return lambda x: host_class.apply_pooling(owner, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_pooling_on_channel_slices_gives_the_same_numbers(dtype):
    from dyntok_plugin.hf.common import per_channel_concurrently

    pool = _host_pooling()
    for channels in (896, 1152, 100):
        features = torch.randn(8, 27 * 27, channels, device=CUDA, dtype=dtype, requires_grad=True)
        weight = torch.randn(8, 14 * 14, channels, device=CUDA, dtype=dtype)
        once = pool(features)
        (grad_once,) = torch.autograd.grad((once * weight).sum(), features)
        sliced = per_channel_concurrently(pool, features)
        (grad_sliced,) = torch.autograd.grad((sliced * weight).sum(), features)
        assert torch.equal(sliced, once)
        # the backward kernel accumulates with atomics: equal up to the order of the additions, as run to run
        # (in bfloat16 that order moves the last bit of values near zero)
        tolerance = dict(rtol=1e-2, atol=1e-4) if dtype == torch.bfloat16 else {}
        torch.testing.assert_close(grad_sliced, grad_once, **tolerance)


def test_host_pooling_under_torch_compile_is_one_traced_call():
    """A compiled caller traces the host's plain call (no side streams, no graph break) and gets its numbers."""
    from dyntok_plugin.hf.common import per_channel_concurrently

    pool = _host_pooling()
    features = torch.randn(4, 27 * 27, 256, device=CUDA, requires_grad=True)
    weight = torch.randn(4, 14 * 14, 256, device=CUDA)

    def scaled_pool(x):
        return per_channel_concurrently(pool, x * 2.0) + 1.0

    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(scaled_pool)(features.detach())
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        out = torch.compile(scaled_pool)(features)
        (grad,) = torch.autograd.grad((out * weight).sum(), features)
    finally:
        torch._dynamo.reset()
    eager = pool(features * 2.0) + 1.0
    (grad_eager,) = torch.autograd.grad((eager * weight).sum(), features)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, grad_eager)
