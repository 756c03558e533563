"""The package's layers point one way: core <- hf <- {patches, vllm} <- api <- {cli, eval, train}.

Read off the source with `ast` (every import of a `dyntok_plugin` module, absolute or relative, at any depth of a
module), plus one real import of `dyntok_plugin.core` in a process where `transformers` cannot be imported, and one of
the package (and its vLLM plugin's entry module) where `vllm` cannot be imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dyntok_plugin"
PATCHES = REPO / "patches"  # installed as dyntok_plugin.patches

# Layer of each module, by the longest matching name prefix. The top level ("dyntok_plugin", its __init__) is the
# public API. Modules of one layer may import each other within their own sub-package only.
LAYERS = {
    "dyntok_plugin.core": 0,
    "dyntok_plugin.hf": 1,
    "dyntok_plugin.video": 1,
    "dyntok_plugin.patches": 2,
    "dyntok_plugin.vllm": 2,  # beside patches/: the vLLM plugin; neither imports the other
    "dyntok_plugin.api": 3,
    "dyntok_plugin": 3,
    "dyntok_plugin.__main__": 4,
    "dyntok_plugin.cli": 4,
    "dyntok_plugin.eval": 4,
    "dyntok_plugin.train": 4,
    "dyntok_plugin.llava_next_train": 4,  # the old name of dyntok_plugin.train.llava_next
}
SAME_GROUP = {"dyntok_plugin.__main__": "dyntok_plugin.cli", "dyntok_plugin.llava_next_train": "dyntok_plugin.train"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for the package and the patches installed inside it."""
    found = {}
    for root, prefix in ((PACKAGE, "dyntok_plugin"), (PATCHES, "dyntok_plugin.patches")):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _layer(module: str) -> tuple[int, str]:
    """(layer, sub-package) of a dotted module name."""
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix], SAME_GROUP.get(prefix, prefix)


def _imports(module: str, path: Path) -> list[str]:
    """Every `dyntok_plugin...` module this file imports (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(anchor + ([node.module] if node.module else []))
            names.append(target)
            names += [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    return [n for n in names if n == "dyntok_plugin" or n.startswith("dyntok_plugin.")]


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_or_beside_its_own(module):
    own_layer, own_group = _layer(module)
    for target in _imports(module, MODULES[module]):
        layer, group = _layer(target)
        assert layer <= own_layer, f"{module} (layer {own_layer}) imports {target} (layer {layer})"
        if layer == own_layer and own_layer in (2, 4):
            assert group == own_group, f"{module} imports {target}: modules beside each other are independent"


def test_the_layer_map_knows_every_module():
    assert "dyntok_plugin.core.compressor" in MODULES and "dyntok_plugin.patches.hf_llava_onevision" in MODULES
    for module in MODULES:
        _layer(module)  # raises on a module outside every layer


def test_core_imports_and_runs_without_transformers():
    script = textwrap.dedent(
        """
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name == "transformers" or name.startswith("transformers."):
                    raise ImportError("transformers is blocked in this test")
                return None

        sys.meta_path.insert(0, Refuse())
        import torch
        from dyntok_plugin.core import DynTokCompressor, DynTokConfig

        out = DynTokCompressor(8, DynTokConfig(threshold=0.5, marker="row")).eval()(torch.randn(2, 3, 4, 8))
        assert out.tokens.shape[1] == 8 and out.token_map.shape == (2, 3, 4)
        assert not any(m == "transformers" or m.startswith("transformers.") for m in sys.modules), "imported"
        print("ok", int(out.tokens.shape[0]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr


def test_the_package_imports_without_vllm():
    """vLLM is optional: the package and the plugin's entry module import where vLLM cannot be imported."""
    script = textwrap.dedent(
        """
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name == "vllm" or name.startswith("vllm."):
                    raise ImportError("vllm is blocked in this test")
                return None

        sys.meta_path.insert(0, Refuse())
        import dyntok_plugin
        import dyntok_plugin.vllm

        assert callable(dyntok_plugin.vllm.register) and "vllm" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_is_small_says_what_it_owns_and_has_short_functions(module):
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{path.name}: the first line should be a docstring saying what it owns"
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has over {MAX_MODULE_LINES} lines"
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}: {node.name} has {length} lines"
