"""The ``dyntok`` command: inspect DynTok on a video, calibrate a threshold, or run a patched model.

Exit codes: 0 success; 2 bad input (missing or unreadable video, too few frames, bad option values,
unknown ``--model``), reported as one line on stderr; 1 a missing optional dependency, with the
install command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .console import decode, one_line, progress, table
from .generate import run_generate
from ..video import VideoError, VideoInfo, probe_video

DEFAULT_FRAMES = 32
DEFAULT_THRESHOLD = 0.7
SWEEP = np.round(np.linspace(0.0, 1.0, 101), 4)
TABLE_SWEEP = np.round(np.linspace(0.0, 1.0, 21), 4)
MERGE_MAP_FRAMES = 4


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a float such as 0.7") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give a float such as 0.7")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0; give a ratio such as 0.444")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a count such as 32") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dyntok", description="DynTok visual-token compression for LLaVA-OneVision videos.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, model_required: bool = False) -> None:
        sub.add_argument("--frames", type=_positive_int, default=DEFAULT_FRAMES,
                         help=f"frames sampled uniformly from each video (default {DEFAULT_FRAMES}, as LLaVA-OV)")
        sub.add_argument("--model", required=model_required, metavar="ID_OR_PATH",
                         help="LLaVA-OneVision checkpoint (folder or cached hub id) whose vision tower and projector "
                              "give the features; default: the offline DINOv2-S/14 encoder")
        sub.add_argument("--marker", choices=("row", "frame", "video", "none"), default="row",
                         help="grid-marker layout counted in the ratio (default 'row', DynTok's)")

    inspect = commands.add_parser("inspect", help="per-frame token counts, merge map and ratio-vs-threshold plot")
    inspect.add_argument("video", metavar="VIDEO")
    inspect.add_argument("--threshold", type=_finite_float, nargs="+", default=[DEFAULT_THRESHOLD], metavar="TAU",
                         help=f"one or more thresholds (default {DEFAULT_THRESHOLD}); the first one is drawn; "
                              "give VIDEO before this option")
    common(inspect)
    inspect.add_argument("--out", default="out", metavar="DIR", help="folder for the PNGs and summary.json")
    inspect.set_defaults(run=run_inspect)

    calibrate = commands.add_parser("calibrate", help="threshold that reaches a target ratio over some videos")
    calibrate.add_argument("videos", nargs="+", metavar="VIDEO")
    calibrate.add_argument("--target-ratio", type=_positive_float, required=True, metavar="RHO",
                           help="tokens out / pooled tokens in to reach over all videos, e.g. 0.444 (the paper's)")
    common(calibrate)
    calibrate.add_argument("--out", default="out", metavar="DIR", help="folder for calibration.png/json")
    calibrate.set_defaults(run=run_calibrate)

    generate = commands.add_parser("generate", help="answer a prompt about a video with a DynTok-patched model")
    generate.add_argument("--video", required=True, metavar="VIDEO")
    generate.add_argument("--prompt", required=True, metavar="TEXT")
    generate.add_argument("--threshold", type=_finite_float, default=DEFAULT_THRESHOLD, metavar="TAU")
    generate.add_argument("--max-new-tokens", type=_positive_int, default=64, metavar="N")
    common(generate, model_required=True)
    generate.set_defaults(run=run_generate)
    return parser


def _encode(encoder, video: np.ndarray, name: str):
    with progress(len(video), f"encoding {name}") as bar:
        return encoder.encode(video, progress=bar.update)


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {path!r} exists and is not a folder; give a folder path")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _describe(info: VideoInfo) -> str:
    return f"{info.path} ({info.frames} frames, {info.width}x{info.height}, {info.fps:g} fps, {info.codec})"


def run_inspect(args: argparse.Namespace) -> int:
    from .calibrate import compress, ratio_curve, tokens_per_frame
    from .encoders import load_encoder
    from .plots import merge_map, ratio_plot

    probe_video(args.video)
    out = _out_dir(args.out)
    encoder = load_encoder(args.model)
    info, video = decode(args.video, args.frames)
    encoded = _encode(encoder, video, Path(args.video).name)
    features, similarity = encoded.features, encoded.similarity_features
    frames, rows, cols = features.shape[:3]
    outputs = [compress(features, similarity, tau, args.marker) for tau in args.threshold]
    per_frame = np.stack([tokens_per_frame(o).numpy() for o in outputs], axis=1)
    source = np.linspace(0, info.frames - 1, frames, dtype=int)

    print(f"video     {_describe(info)}")
    print(f"encoder   {encoder.name}")
    print(f"grid      {frames} frames x {rows}x{cols} pooled tokens = {frames * rows * cols} tokens in; "
          f"marker {args.marker!r}")
    print()
    print(table(["frame", "source"] + [f"τ={t:g}" for t in args.threshold],
                [[i, int(source[i])] + per_frame[i].tolist() for i in range(frames)]))
    print()
    totals = [[f"{o.stats.threshold:.4f}", o.stats.tokens_in, o.stats.tokens_out, f"{o.stats.ratio:.4f}"]
              for o in outputs]
    print(table(["threshold", "tokens in", "tokens out", "ratio"], totals))

    thresholds = sorted(set(SWEEP.tolist()) | set(args.threshold))
    counts, tokens_in = ratio_curve([(features, similarity)], thresholds, args.marker)
    ratios = (counts[0].double() / float(tokens_in[0])).tolist()
    shown = np.unique(np.linspace(0, frames - 1, min(MERGE_MAP_FRAMES, frames)).round().astype(int))
    first = outputs[0]
    merge_map(
        video[shown],
        first.token_map[shown].numpy(),
        [f"frame {int(source[i])}: {int(per_frame[i, 0])}/{rows * cols} tokens" for i in shown],
        out / "merge_map.png",
        suptitle=f"{Path(args.video).name}, τ={args.threshold[0]:g}: shaded cells merged into their left "
                 f"neighbour (ratio {first.stats.ratio:.3f})",
    )
    ratio_plot(thresholds, {Path(args.video).name: ratios}, out / "tokens_vs_threshold.png",
               title=f"DynTok on {Path(args.video).name} ({frames} frames, {encoder.name})", marks=args.threshold)
    summary = {
        "video": info.path,
        "frames": frames,
        "encoder": encoder.name,
        "grid": [rows, cols],
        "marker": args.marker,
        "results": [o.stats.to_dict() for o in outputs],
        "tokens_per_frame": {f"{t:g}": per_frame[:, k].tolist() for k, t in enumerate(args.threshold)},
        "curve": {"threshold": thresholds, "ratio": ratios},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"wrote {out / 'merge_map.png'}, {out / 'tokens_vs_threshold.png'}, {out / 'summary.json'}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import find_threshold, ratio_curve
    from .encoders import load_encoder
    from .plots import ratio_plot

    for path in args.videos:
        probe_video(path)
    out = _out_dir(args.out)
    encoder = load_encoder(args.model)
    videos = []
    for path in args.videos:
        _, video = decode(path, args.frames)
        encoded = _encode(encoder, video, Path(path).name)
        videos.append((encoded.features, encoded.similarity_features))
    result = find_threshold(videos, args.target_ratio, args.marker)
    names = [Path(p).name for p in args.videos]

    counts, tokens_in = ratio_curve(videos, TABLE_SWEEP.tolist(), args.marker)
    overall = counts.sum(0).double() / float(tokens_in.sum())
    per_video = counts.double() / tokens_in.double().unsqueeze(1)
    rows = [[f"{t:.2f}"] + [f"{r:.4f}" for r in per_video[:, k].tolist()] + [f"{float(overall[k]):.4f}"]
            for k, t in enumerate(TABLE_SWEEP.tolist())]
    print(f"encoder   {encoder.name}; {args.frames} frames per video; marker {args.marker!r}")
    print()
    print(table(["threshold"] + names + ["all"], rows))
    print()
    print(f"target ratio {args.target_ratio:g}: threshold {result.threshold:.4f} gives ratio {result.ratio:.4f} "
          f"({result.tokens_out}/{result.tokens_in} tokens over {len(videos)} video(s))")
    for name, ratio in zip(names, result.per_video_ratio):
        print(f"  {name}: ratio {ratio:.4f}")

    thresholds = sorted(set(SWEEP.tolist()) | {result.threshold})
    counts, tokens_in = ratio_curve(videos, thresholds, args.marker)
    series = {name: (counts[i].double() / float(tokens_in[i])).tolist() for i, name in enumerate(names)}
    if len(videos) > 1:
        series["all"] = (counts.sum(0).double() / float(tokens_in.sum())).tolist()
    ratio_plot(thresholds, series, out / "calibration.png",
               title=f"threshold {result.threshold:.4f} reaches ratio {result.ratio:.4f} ({encoder.name})",
               marks=[round(result.threshold, 4)], target_ratio=args.target_ratio)
    record = {
        "videos": list(args.videos),
        "frames": args.frames,
        "encoder": encoder.name,
        "marker": args.marker,
        "target_ratio": result.target_ratio,
        "threshold": result.threshold,
        "ratio": result.ratio,
        "tokens_in": result.tokens_in,
        "tokens_out": result.tokens_out,
        "per_video_ratio": dict(zip(names, result.per_video_ratio)),
    }
    (out / "calibration.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"wrote {out / 'calibration.png'}, {out / 'calibration.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dyntok``; returns the exit code."""
    from .encoders import EncoderError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    prog = f"dyntok {args.command}"
    try:
        return args.run(args)
    except ImportError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except (FileNotFoundError, VideoError, EncoderError, ValueError) as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
