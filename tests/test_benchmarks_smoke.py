"""The benchmark scripts' CPU smoke modes run and write the JSON the result tables rely on (no timing checks)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
END_TO_END_KEYS = {
    "frames", "ttft_stock_s", "ttft_dyntok_s", "ttft_ideal_s", "ttft_speedup", "fraction_of_ideal",
    "decode_tok_s_stock", "decode_tok_s_dyntok", "peak_mem_stock_gb", "peak_mem_dyntok_gb", "tokens_stock",
    "tokens_dyntok",
}
COMPRESSOR_KEYS = {"frames", "marker", "tokens_in", "tokens_out", "seconds", "bandwidth_fraction"}


def _run(script: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Both benchmarks' smoke modes written into one results file (the second merges into the first's)."""
    path = tmp_path_factory.mktemp("bench") / "results.json"
    compressor_smoke = ["--frames", "2", "--dim", "64", "--sim-dim", "32", "--device", "cpu"]
    _run("bench_compressor.py", *compressor_smoke, "--out", str(path))
    _run("bench_end_to_end.py", "--tiny", "--out", str(path))
    return json.loads(path.read_text())


def test_end_to_end_rows_have_the_required_keys(results):
    rows = results["end_to_end"]
    assert [row["frames"] for row in rows] == [2, 4]
    for row in rows:
        assert END_TO_END_KEYS <= row.keys()
        assert 0 < row["tokens_dyntok"] < row["tokens_stock"]
        assert row["ttft_speedup"] == pytest.approx(row["ttft_stock_s"] / row["ttft_dyntok_s"])
        assert row["fraction_of_ideal"] == pytest.approx(row["ttft_ideal_s"] / row["ttft_dyntok_s"])
        assert row["peak_mem_stock_gb"] is None and row["peak_mem_dyntok_gb"] is None  # CPU: no CUDA allocator
        assert all(row[key] > 0 for key in END_TO_END_KEYS if key.startswith(("ttft", "decode")))


def test_end_to_end_info_says_weights_are_random_and_the_patch_is_exact(results):
    info = results["end_to_end_info"]
    assert "random weights" in info["note"].lower()
    assert results["device"] == info["device"]
    sdpa = next(check for check in info["checks"] if check["attn_implementation"] == "sdpa")
    assert sdpa["identity_max_abs_logit_diff"] == 0.0 and sdpa["identity_tokens_equal"]
    assert sdpa["budget_generate_ok"]


def test_compressor_section_survives_the_end_to_end_write(results):
    section = results["compressor"]
    assert section["runs"]
    for run in section["runs"]:
        assert COMPRESSOR_KEYS <= run.keys()
