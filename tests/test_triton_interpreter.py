"""The fused Triton kernels on the CPU, through Triton's interpreter, in every test run (CI has no GPU).

How the interpreter is switched on: `triton.jit` reads `TRITON_INTERPRET` when it builds a kernel, that is when
`dyntok_plugin.core.triton_merge` is first imported, and kernels built for the GPU cannot read CPU tensors. In a
whole-suite run other test modules import `dyntok_plugin` long before this one is collected, so setting the variable
from a test (or from `conftest.py`, which any plugin importing torch's Triton integration could precede) is fragile;
and a session-wide `TRITON_INTERPRET=1` would send every CPU compressor call of every other test through the slow
interpreter and change what those tests check. So `test_kernels_under_interpreter` runs the cases,
`triton_interpreter_cases.py`, in a fresh Python: a child pytest with `TRITON_INTERPRET=1` and no CUDA device visible
(every tensor is a CPU tensor, on any machine). It fails with the child's own output unless every case ran and passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

from dyntok_plugin.core import triton_merge
from triton_interpreter_cases import CASES, DIM, fused_calls, make_compressor, videos  # noqa: F401 (a fixture)

CASES_FILE = Path(__file__).resolve().with_name("triton_interpreter_cases.py")


def test_kernels_under_interpreter(tmp_path):
    report = tmp_path / "report.xml"
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "pytest", str(CASES_FILE), "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={report}"]
    result = subprocess.run(command, cwd=CASES_FILE.parent.parent, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    output = (result.stdout + result.stderr)[-12000:]
    if result.returncode != 0 or not report.exists():
        pytest.fail(f"the interpreter run failed (exit {result.returncode}):\n{output}", pytrace=False)
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    if counts != {"tests": CASES, "failures": 0, "errors": 0, "skipped": 0}:
        pytest.fail(f"expected {CASES} cases, all passed; got {counts}:\n{output}", pytrace=False)


@pytest.mark.skipif(triton_merge._interpreting(), reason="this session's kernels were built by the interpreter")
def test_cpu_takes_pytorch_path_without_interpreter(monkeypatch, fused_calls):  # noqa: F811
    """Compiled kernels cannot read CPU memory: CPU calls take the PyTorch path, even if TRITON_INTERPRET is set
    after the kernels were built (it is read when they are built, not when they run)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    features, similarity, frames = videos(8, frames=[1, 2])
    x = features.float()
    assert not triton_merge.supports(x, x, None)
    with torch.no_grad():
        out = make_compressor(DIM, torch.float32, threshold=0.3).compress_batch(x, frames, similarity.float())
    assert fused_calls == [] and out.tokens.shape[0] == sum(out.lengths)
