"""The picture of `bench_qwen.py`'s results: TTFT against frames, one panel per host (stock, DynTok, ideal, tower).

    python benchmarks/plot_qwen.py                          # results/qwen_nvidia-h200.json -> docs/qwen_ttft.svg
    python benchmarks/plot_qwen.py RESULTS.json --out PATH  # .svg or .png

The shaded band under the tower line is time no compressor after the merger can save: the vision tower runs on every
frame. Needs matplotlib (`pip install 'dyntok-plugin[demo]'`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"  # as common.RESULTS_DIR, without importing torch to draw a plot
HOSTS = {"qwen2_5_vl": "Qwen2.5-VL-7B", "qwen3_vl": "Qwen3-VL-8B"}
SERIES = [  # (row key, label, matplotlib style)
    ("ttft_stock_s", "stock", dict(color="#555555", marker="o")),
    ("ttft_dyntok_s", "DynTok (target_ratio 0.444)", dict(color="#d9480f", marker="s")),
    ("ttft_ideal_s", "ideal (stock at DynTok's length)", dict(color="#1c7ed6", linestyle="--", marker="")),
    ("tower_s", "vision tower alone", dict(color="#2b8a3e", linestyle=":", marker="^")),
]


def plot(results: dict, out: Path) -> Path:
    """One panel per host found in `results` (rows without an error), log-2 frames against seconds."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small, searchable SVG
    matplotlib.rcParams["svg.hashsalt"] = "dyntok"  # the same ids every time: a re-drawn picture diffs clean
    import matplotlib.pyplot as plt

    hosts = [host for host in HOSTS if any("error" not in row for row in results.get(host, []))]
    if not hosts:
        raise ValueError(f"no rows of {sorted(HOSTS)} in the results; run benchmarks/bench_qwen.py first")
    info = results.get("qwen_info", {})
    figure, axes = plt.subplots(1, len(hosts), figsize=(5.2 * len(hosts), 4.0), squeeze=False)
    for axis, host in zip(axes[0], hosts):
        rows = sorted((row for row in results[host] if "error" not in row), key=lambda row: row["frames"])
        frames = [row["frames"] for row in rows]
        for key, label, style in SERIES:
            if all(key in row for row in rows):
                axis.plot(frames, [row[key] for row in rows], label=label, **style)
        if all("tower_s" in row for row in rows):
            axis.fill_between(frames, 0, [row["tower_s"] for row in rows], color="#2b8a3e", alpha=0.12)
        size = info.get("hosts", {}).get(host, {}).get("frame_size")
        axis.set_title(f"{HOSTS[host]}" + (f", {size} px frames" if size else ""))
        axis.set_xscale("log", base=2)
        axis.set_xticks(frames, [str(f) for f in frames])
        axis.set_xlabel("frames")
        axis.set_ylabel("time to first token (s)")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    figure.suptitle(f"{info.get('device', '')}, bf16, SDPA, random weights at published sizes", fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, metadata={"Date": None} if out.suffix == ".svg" else None)
    plt.close(figure)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=str(RESULTS_DIR / "qwen_nvidia-h200.json"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "qwen_ttft.svg"))
    args = parser.parse_args(argv)
    print(f"wrote {plot(json.loads(Path(args.results).read_text()), Path(args.out))}")


if __name__ == "__main__":
    main()
