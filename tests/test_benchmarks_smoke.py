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


QWEN_KEYS = {"frames", "video_tokens_stock", "tokens_stock", "ttft_stock_s", "ttft_dyntok_s", "ttft_ideal_s",
             "tower_s", "ttft_speedup", "fraction_of_ideal", "video_tokens_dyntok", "tokens_dyntok"}
QWEN_STAGES = {"dyntok: check inputs", "stock positions (get_rope_index)", "vision + DynTok", "dyntok: compress_batch",
               "dyntok: re-splice plan", "stock generate (prefill, first token)"}


@pytest.fixture(scope="module")
def qwen_results(tmp_path_factory) -> dict:
    """bench_qwen.py's smoke mode (both hosts, tiny random models on the CPU)."""
    path = tmp_path_factory.mktemp("bench_qwen") / "qwen.json"
    _run("bench_qwen.py", "--smoke", "--profile", "4", "--out", str(path))
    return json.loads(path.read_text())


def test_qwen_rows_compare_stock_dyntok_and_ideal(qwen_results):
    info = qwen_results["qwen_info"]
    assert "random weights" in info["note"].lower() and qwen_results["device"] == info["device"]
    for host in ("qwen2_5_vl", "qwen3_vl"):
        rows, host_info = qwen_results[host], info["hosts"][host]
        assert [row["frames"] for row in rows] == [4, 8]
        for row in rows:
            # 32 px frames: a 4x4 merged grid per slice of 2 frames
            assert row["video_tokens_stock"] == row["frames"] // 2 * 16 < row["tokens_stock"]
            assert row["ttft_stock_s"] > 0 and row["ttft_ideal_s"] > 0
            assert row["video_tokens_ideal"] == int(info["target_ratio"] * row["video_tokens_stock"])
        assert host_info["check"]["ideal_all_tokens_max_abs_logit_diff"] < 1e-4  # the ideal's inputs are stock ones
        assert host_info["dyntok_unavailable"] is None
        assert host_info["check"]["identity_max_abs_logit_diff"] == 0.0 and host_info["check"]["budget_generate_ok"]
        for row in rows:
            assert QWEN_KEYS <= row.keys()
            assert row["video_tokens_dyntok"] == int(info["target_ratio"] * row["video_tokens_stock"])
            assert row["tokens_dyntok"] == row["tokens_stock"] - row["video_tokens_stock"] + row["video_tokens_dyntok"]
            assert row["ttft_speedup"] == pytest.approx(row["ttft_stock_s"] / row["ttft_dyntok_s"])
            assert row["fraction_of_ideal"] == pytest.approx(row["ttft_ideal_s"] / row["ttft_dyntok_s"])


def test_qwen_profile_splits_dyntok_and_ideal_into_stages(qwen_results):
    for host in ("qwen2_5_vl", "qwen3_vl"):
        profile = qwen_results["qwen_info"]["hosts"][host]["profile"]
        dyntok = {stage["stage"] for stage in profile["dyntok"]["stages"] if stage["calls"]}
        ideal = {stage["stage"] for stage in profile["ideal"]["stages"] if stage["calls"]}
        assert QWEN_STAGES <= dyntok  # every stage of the DynTok path ran inside its range
        assert len(dyntok) == len(profile["dyntok"]["stages"])  # one row per stage
        assert not ideal & (QWEN_STAGES - {"stock generate (prefill, first token)"})  # the ideal runs no DynTok
        assert any(stage.startswith("stock get_video_features") for stage in ideal)


def test_plot_qwen_draws_both_hosts(qwen_results, tmp_path):
    results = tmp_path / "qwen.json"
    results.write_text(json.dumps(qwen_results))
    out = tmp_path / "ttft.svg"
    _run("plot_qwen.py", str(results), "--out", str(out))
    svg = out.read_text()
    for text in ("Qwen2.5-VL-7B", "Qwen3-VL-8B", "DynTok (target_ratio 0.444)", "vision tower alone", "frames"):
        assert text in svg


def test_plot_qwen_refuses_results_without_rows(tmp_path):
    results = tmp_path / "empty.json"
    results.write_text("{}")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "plot_qwen.py"), str(results), "--out",
                           str(tmp_path / "x.svg")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "run benchmarks/bench_qwen.py first" in done.stderr


def test_stage_ranges_put_every_original_back_also_after_an_error(monkeypatch):
    import transformers

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import qwen_profile
    from dyntok_plugin.patches import qwen_vl_positions

    before = (transformers.GenerationMixin.__dict__["generate"], qwen_vl_positions.check_runs)
    with qwen_profile.stage_ranges():
        assert transformers.GenerationMixin.__dict__["generate"] is not before[0]
        assert qwen_vl_positions.check_runs is not before[1]
    assert (transformers.GenerationMixin.__dict__["generate"], qwen_vl_positions.check_runs) == before
    with pytest.raises(RuntimeError, match="inside"):
        with qwen_profile.stage_ranges():
            raise RuntimeError("inside")
    assert (transformers.GenerationMixin.__dict__["generate"], qwen_vl_positions.check_runs) == before
