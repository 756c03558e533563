"""Time DynTokCompressor per video and compare the bytes it must move with the device's copy bandwidth.

    python benchmarks/bench_compressor.py                       # GPU if present: F = 32..256, D = 3584, bf16
    python benchmarks/bench_compressor.py --frames 2 4 --dim 64 # CPU smoke test
    python benchmarks/bench_compressor.py --paths triton pytorch --kernel-time   # both paths, GPU kernel time too

Bytes that must move: the features and the similarity features read once, the output written once. The
bandwidth fraction divides that by the time and by the device-to-device copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import torch

from common import RESULTS_DIR, device_kind, device_name, median_seconds, print_table, write_results
from dyntok_plugin import DynTokCompressor, DynTokConfig
from dyntok_plugin.core import triton_merge


def copy_bandwidth(numel: int, dtype: torch.dtype, device: torch.device) -> float:
    """Bytes per second of a plain tensor copy (read + write) of `numel` elements."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, warmup=10, repeats=50)
    return 2 * src.numel() * src.element_size() / seconds


def kernel_seconds(fn, repeats: int = 5) -> float:
    """Median over calls of the summed GPU time of the kernels one call launches (no launch gaps, no host work)."""
    from torch.profiler import ProfilerActivity, profile

    totals = []
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        totals.append(sum(e.device_time_total for e in prof.key_averages()) / 1e6)
    return sorted(totals)[len(totals) // 2]


def bench(frames: int, grid: int, dim: int, sim_dim: int, marker: str, threshold: float, dtype, device,
          path: str = "triton", with_kernel_time: bool = False) -> dict:
    gen = torch.Generator(device=device).manual_seed(frames)
    # Smooth rows (a shared row vector plus noise) so that the threshold actually merges.
    base = torch.randn(frames, grid, 1, dim, device=device, generator=gen)
    features = (base + 0.6 * torch.randn(frames, grid, grid, dim, device=device, generator=gen)).to(dtype)
    similarity = (base[..., :sim_dim] + 0.6 * torch.randn(frames, grid, grid, sim_dim, device=device, generator=gen))
    similarity = similarity.to(dtype)
    comp = DynTokCompressor(dim, DynTokConfig(threshold=threshold, marker=marker)).to(device=device, dtype=dtype)
    triton_merge.ENABLED = path == "triton"
    with torch.no_grad():
        used = "triton" if triton_merge.supports(features, similarity, comp.marker) else "pytorch"
        out = comp(features, similarity)
        seconds = median_seconds(lambda: comp(features, similarity), device, warmup=10, repeats=50)
        kernels = kernel_seconds(lambda: comp(features, similarity)) if with_kernel_time else None
    triton_merge.ENABLED = True
    element = features.element_size()
    moved = (features.numel() + similarity.numel() + out.tokens.numel()) * element
    return {
        "frames": frames,
        "marker": marker,
        "path": used,
        "tokens_in": out.stats.tokens_in,
        "tokens_out": out.stats.tokens_out,
        "seconds": seconds,
        "bytes_moved": moved,
        "achieved_gb_s": moved / seconds / 1e9,
        "_moved": moved,
        **({} if kernels is None else {"kernel_seconds": kernels}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--grid", type=int, default=14, help="pooled tokens per side (14 for LLaVA-OV)")
    parser.add_argument("--dim", type=int, default=3584, help="LLM hidden size (3584 for Qwen2-7B)")
    parser.add_argument("--sim-dim", type=int, default=1152, help="vision feature size (1152 for SigLIP-so400m)")
    parser.add_argument("--markers", nargs="+", default=["row", "frame", "video", "none"])
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--paths", nargs="+", choices=["triton", "pytorch"], default=["triton"],
                        help="triton: the dispatch default (fused path where it can run); pytorch: forced fallback")
    parser.add_argument("--kernel-time", action="store_true",
                        help="also the summed GPU kernel time of one call (profiler) and its bandwidth fraction")
    parser.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on the CPU by default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<device>.json)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    rows = []
    for frames in args.frames:
        bandwidth = None
        for path in args.paths:
            for marker in args.markers:
                row = bench(frames, args.grid, args.dim, args.sim_dim, marker, args.threshold, dtype, device, path,
                            args.kernel_time and device.type == "cuda")
                if bandwidth is None:
                    numel = row["_moved"] // torch.tensor([], dtype=dtype).element_size()
                    bandwidth = copy_bandwidth(numel, dtype, device)
                row["copy_gb_s"] = bandwidth / 1e9
                moved = row.pop("_moved")
                row["bandwidth_fraction"] = moved / row["seconds"] / bandwidth
                if "kernel_seconds" in row:
                    row["kernel_bandwidth_fraction"] = moved / row["kernel_seconds"] / bandwidth
                rows.append(row)
    print(f"DynTokCompressor on {device_name(device)}, {dtype}, {args.grid}x{args.grid} tokens/frame, "
          f"D={args.dim}, similarity dim {args.sim_dim}, threshold {args.threshold}")
    columns = ["frames", "marker", "path", "tokens_in", "tokens_out", "seconds", "achieved_gb_s", "copy_gb_s",
               "bandwidth_fraction"]
    print_table(rows, columns + (["kernel_seconds", "kernel_bandwidth_fraction"] if "kernel_seconds" in rows[0] else []))
    path = Path(args.out) if args.out else RESULTS_DIR / f"{device_kind(device)}.json"
    payload = {
        "device": device_name(device),
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "dtype": str(dtype),
        "grid": args.grid,
        "dim": args.dim,
        "sim_dim": args.sim_dim,
        "runs": rows,
    }
    write_results(path, "compressor", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
