"""Fine-tune with DynTok through LLaVA-NeXT's own training script, without editing it.

    python -m dyntok_plugin.train.llava_next --dyntok_threshold_range 0.5 0.9 <train_mem.py arguments>
    torchrun --nproc_per_node 8 -m dyntok_plugin.train.llava_next --dyntok_threshold_range 0.5 0.9 <arguments>

The `--dyntok_*` options are taken off the command line; the rest goes to the training script, which runs as
`__main__` (by default the module `llava.train.train_mem`, else `llavaction.train.train_mem`; choose another
with `--dyntok_module NAME` or `--dyntok_script PATH`). While it runs, `DynTokTrainerCallback` is one of
transformers' default Trainer callbacks in this process, so the model the script hands to its Trainer is patched
with `patch_llava` when the Trainer is built: after the script has set the model's config (newline layout,
padding side) and wrapped it (PEFT), before the first step. Nothing else about the script or the model changes;
the checkpoint's `config.json` carries the DynTok settings (`"dyntok"`) and `mm_newline_position="grid"`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import runpy
import sys
from typing import Iterator, List, Optional, Sequence

from transformers import TrainerCallback

from ..api import patch_llava
from ..core.config import DynTokConfig

logger = logging.getLogger(__name__)

DEFAULT_MODULES = ("llava.train.train_mem", "llavaction.train.train_mem")


class DynTokTrainerCallback(TrainerCallback):
    """Patches the Trainer's model with DynTok when the Trainer is built (also usable as `callbacks=[...]`)."""

    def __init__(self, config: DynTokConfig):
        self.config = config

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise RuntimeError("The Trainer was built without a model; DynTok has nothing to patch.")
        patch_llava(model, config=self.config)
        logger.info("DynTok on for %s: %s", type(model).__name__, self.config)
        return control


@contextlib.contextmanager
def default_trainer_callback(callback: TrainerCallback) -> Iterator[None]:
    """Add `callback` to every Trainer built inside the block (transformers' default callbacks), then remove it."""
    from transformers import trainer

    trainer.DEFAULT_CALLBACKS.append(callback)
    try:
        yield
    finally:
        trainer.DEFAULT_CALLBACKS.remove(callback)


def parse_args(argv: Sequence[str]) -> tuple:
    """Split the command line into DynTok options and the training script's own arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m dyntok_plugin.train.llava_next",
        description="Run LLaVA-NeXT's training script with DynTok on the model it trains. Options other than "
        "--dyntok_* (--help included) are passed to the script unchanged.",
        allow_abbrev=False,
        add_help=False,
    )
    parser.add_argument("--dyntok_help", action="help", help="show this message and exit")
    defaults = DynTokConfig()
    parser.add_argument("--dyntok_threshold", type=float, default=defaults.threshold,
                        help="threshold in eval mode (default %(default)s)")
    parser.add_argument("--dyntok_threshold_range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="draw the threshold from U(LO, HI) per video and step while training")
    parser.add_argument("--dyntok_marker", choices=("row", "frame", "video", "none"), default=defaults.marker)
    parser.add_argument("--dyntok_similarity", choices=("vision", "projected"), default=defaults.similarity)
    parser.add_argument("--dyntok_max_tokens", type=int, help="per-video token budget, markers included")
    parser.add_argument("--dyntok_target_ratio", type=float, help="per-video budget as a fraction of the grid")
    parser.add_argument("--dyntok_seed", type=int, help="seed of the training-threshold draws")
    script = parser.add_mutually_exclusive_group()
    script.add_argument("--dyntok_module", help=f"training module to run (default: first of {DEFAULT_MODULES})")
    script.add_argument("--dyntok_script", help="path of a training script to run instead of a module")
    options, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if arg.startswith("--dyntok")]
    if unknown:
        parser.error(f"unknown DynTok option(s) {unknown}")
    config = DynTokConfig(
        threshold=options.dyntok_threshold,
        train_threshold_range=options.dyntok_threshold_range,
        marker=options.dyntok_marker,
        similarity=options.dyntok_similarity,
        max_tokens=options.dyntok_max_tokens,
        target_ratio=options.dyntok_target_ratio,
        seed=options.dyntok_seed,
    )
    return config, options.dyntok_module, options.dyntok_script, rest


def default_module() -> str:
    """The first LLaVA-NeXT training module that is installed, or an ImportError saying how to choose one."""
    for name in DEFAULT_MODULES:
        with contextlib.suppress(ImportError):
            if importlib.util.find_spec(name) is not None:
                return name
    raise ImportError(
        f"None of {DEFAULT_MODULES} is installed. Install LLaVA-NeXT from git (pip install -e <LLaVA-NeXT clone>) "
        "or name the training code with --dyntok_module NAME or --dyntok_script PATH."
    )


def main(argv: Optional[List[str]] = None) -> None:
    """Run the training script as `__main__` with DynTok patched into the model of every Trainer it builds."""
    config, module, script, rest = parse_args(sys.argv[1:] if argv is None else argv)
    target = script or module or default_module()
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [target, *rest]
    if script:
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script.py` would
    try:
        with default_trainer_callback(DynTokTrainerCallback(config)):
            if script:
                runpy.run_path(script, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


if __name__ == "__main__":
    main()
