"""End to end: `examples/infer_video.py` on a tiny random checkpoint saved to a folder and a real video clip."""

import importlib.util
import json
from pathlib import Path

import hf_tiny as tiny
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "assets" / "city_cc0.mp4"
FRAMES = 4


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("infer_video", ROOT / "examples" / "infer_video.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny.save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ov"))


def _run(example, checkpoint, capsys, *extra):
    argv = ["--model", str(checkpoint), "--video", str(CLIP), "--num-frames", str(FRAMES),
            "--max-new-tokens", "6", "--json", *extra]
    result = example.main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result  # --json prints the result
    return result


def test_example_answers_and_reports_token_statistics(example, checkpoint, capsys):
    result = _run(example, checkpoint, capsys, "--threshold", "0.7")
    stats = result["dyntok"]
    rows = FRAMES * tiny.POOLED
    assert result["frames"] == FRAMES and result["video_placeholders"] == tiny.video_tokens(FRAMES)
    assert stats["tokens_in"] == FRAMES * tiny.POOLED**2
    assert 2 * rows <= stats["tokens_out"] <= rows * (tiny.POOLED + 1)
    assert isinstance(result["answer"], str) and result["answer"]


def test_example_without_merging_answers_like_the_stock_model(example, checkpoint, capsys):
    stock = _run(example, checkpoint, capsys, "--no-dyntok")
    identity = _run(example, checkpoint, capsys, "--threshold", "1.0", "--marker", "video")
    assert "dyntok" not in stock
    assert identity["dyntok"]["tokens_out"] == identity["video_placeholders"]
    assert identity["answer"] == stock["answer"]


def test_example_rejects_a_missing_video(example, checkpoint, tmp_path):
    with pytest.raises(Exception, match="missing.mp4"):
        example.main(["--model", str(checkpoint), "--video", str(tmp_path / "missing.mp4"), "--num-frames", "2"])
