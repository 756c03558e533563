"""lmms-eval models `llava_onevision_dyntok`, `qwen2_5_vl_dyntok`, `qwen3_vl_dyntok`: the host with DynTok, for the
installed lmms-eval, unchanged.

lmms-eval 0.7 finds plugin models through the Python entry-point group `lmms_eval.models`; this package
registers `llava_onevision_dyntok = dyntok_plugin.eval.lmms:lmms_eval_manifest` there, so

    lmms-eval --model llava_onevision_dyntok \
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,dyntok_threshold=0.7 \
        --tasks videomme,mlvu_dev --batch_size 1 --log_samples --output_path results/

runs the stock task code on a DynTok-patched model. `qwen2_5_vl_dyntok` and `qwen3_vl_dyntok` (same entry-point group)
are the same model for Qwen2.5-VL and Qwen3-VL checkpoints (`pretrained=Qwen/Qwen2.5-VL-7B-Instruct`, ...), through
the Hugging Face backend and the checkpoint's processor (torchvision needed); `llava_onevision_dyntok` also accepts
them (the backend follows the checkpoint's config). Every `DynTokConfig` field is a model argument with a
`dyntok_` prefix (`dyntok_threshold`, `dyntok_marker`, `dyntok_similarity`, `dyntok_max_tokens`,
`dyntok_target_ratio`, `dyntok_train_threshold_range`, `dyntok_seed`); `dyntok=false` evaluates the unpatched
model through the same code for a baseline. Hugging Face checkpoints load through transformers; original
LLaVA-NeXT checkpoints (`lmms-lab/llava-onevision-*`) through `llava.model.builder` when LLaVA-NeXT is installed.

Per-sample token statistics travel the way lmms-eval reports token usage: each answer is a `GenerationResult`
whose `TokenCounts` also carries `dyntok_videos`, `dyntok_frames`, `dyntok_tokens_in`, `dyntok_tokens_out` and
`dyntok_ratio`; with `--log_samples` they land in every sample's `token_counts`, and `input_tokens` (the
language model's real prompt length after compression) feeds the `efficiency` block of the results. Run-level
means reach the results' `throughput` block as `avg_dyntok_ratio` and friends. `dyntok_stats_path=FILE`
also appends one JSON line per sample to FILE.

This module adapts lmms-eval's requests and results; loading and running checkpoints lives in `backends`,
the statistics' arithmetic in `stats`.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

try:
    from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
    from lmms_eval.api.model import lmms
    from lmms_eval.models.model_utils.gen_metrics import log_metrics
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "dyntok_plugin.eval.lmms needs lmms-eval 0.7: pip install 'dyntok-plugin[eval]' "
        "(or: pip install 'lmms-eval>=0.7,<0.8')"
    ) from err

from ..api import find_host, patch_llava, unwrap_model
from ..core.config import DynTokConfig
from .backends import Prompt, load_backend
from .stats import RunTotals, sample_stats
from ..video import load_video, probe_video

MODEL_ID = "llava_onevision_dyntok"
QWEN25_MODEL_ID = "qwen2_5_vl_dyntok"
QWEN3_MODEL_ID = "qwen3_vl_dyntok"
SETTING_PREFIX = "dyntok_"
_NONE_WORDS = ("none", "null", "")


def lmms_eval_manifest():
    """Entry point for lmms-eval's `lmms_eval.models` group: where `--model llava_onevision_dyntok` lives."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaOneVisionDynTok")


def qwen2_5_vl_manifest():
    """Entry point for `--model qwen2_5_vl_dyntok`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=QWEN25_MODEL_ID, simple_class_path=f"{__name__}.Qwen25VLDynTok")


def qwen3_vl_manifest():
    """Entry point for `--model qwen3_vl_dyntok`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=QWEN3_MODEL_ID, simple_class_path=f"{__name__}.Qwen3VLDynTok")


def dyntok_config_from_args(args: dict, host_defaults: Optional[dict] = None) -> DynTokConfig:
    """A validated `DynTokConfig` from `dyntok_<field>` model arguments (as lmms-eval parsed them), on top of the
    host's defaults (`marker="none"` for Qwen VL)."""
    settings = {}
    for key, value in args.items():
        name = key[len(SETTING_PREFIX):]
        if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            value = None
        elif name == "train_threshold_range" and isinstance(value, str):
            value = _parse_range(key, value)
        elif name == "max_tokens" and isinstance(value, float) and value.is_integer():
            value = int(value)
        settings[name] = value
    try:
        return DynTokConfig.from_dict({**(host_defaults or {}), **settings})
    except ValueError as err:
        raise ValueError(
            f"Bad DynTok model argument: {err} Write them as --model_args dyntok_<setting>=<value>."
        ) from None


def _parse_range(key: str, value: str) -> list:
    parts = value.replace(":", " ").replace("[", " ").replace("]", " ").replace(";", " ").split()
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a range; write it as lo:hi, e.g. {key}=0.5:0.9") from None


class DynTokTokenCounts(TokenCounts):
    """lmms-eval's per-request `TokenCounts` plus what DynTok did to the request's videos."""

    def __init__(self, input_tokens: Optional[int], output_tokens: Optional[int], dyntok: dict) -> None:
        super().__init__(input_tokens=input_tokens, output_tokens=output_tokens)
        self.dyntok = dyntok

    def to_dict(self) -> dict:
        return {**super().to_dict(), **self.dyntok}


class LlavaOneVisionDynTok(lmms):
    """LLaVA-OneVision (Hugging Face or LLaVA-NeXT checkpoint) with DynTok, as an lmms-eval simple model.

    Args:
        pretrained: checkpoint name or folder (`llava-hf/llava-onevision-qwen2-7b-ov-hf` or
            `lmms-lab/llava-onevision-qwen2-7b-ov`).
        backend: `"auto"` (from the checkpoint's config), `"hf"` or `"llava"` (LLaVA-NeXT).
        device, dtype, device_map, attn_implementation: as in transformers; dtype `"auto"` keeps the checkpoint's.
        batch_size: requests per forward pass (left padded).
        max_frames_num: frames sampled uniformly per video (LLaVA-OneVision's evaluation uses 32).
        dyntok: `False` evaluates the unpatched model (baseline) through the same code.
        dyntok_stats_path: also append one JSON line of statistics per sample to this file.
        conv_template: LLaVA-NeXT conversation template (LLaVA-NeXT backend only).
        **dyntok_settings: `dyntok_<field>` for every `DynTokConfig` field.
    """

    is_simple = True
    model_id = MODEL_ID

    def __init__(
        self,
        pretrained: str = "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        backend: str = "auto",
        device: Optional[str] = None,
        dtype: str = "auto",
        device_map: Optional[str] = None,
        attn_implementation: Optional[str] = None,
        batch_size: Any = 1,
        max_batch_size: Optional[int] = None,
        max_frames_num: int = 32,
        dyntok: bool = True,
        dyntok_stats_path: Optional[str] = None,
        conv_template: str = "qwen_1_5",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith(SETTING_PREFIX)}
        if kwargs:
            raise TypeError(
                f"{self.model_id} got unknown model argument(s) {sorted(kwargs)}. Known: pretrained, backend, device, "
                "dtype, device_map, attn_implementation, batch_size, max_batch_size, max_frames_num, dyntok, "
                "dyntok_stats_path, conv_template and dyntok_<setting> for the settings "
                f"{list(DynTokConfig().to_dict())}."
            )
        if not isinstance(dyntok, bool):
            raise ValueError(f"dyntok must be true or false, got {dyntok!r}.")
        if settings and not dyntok:
            raise ValueError(
                f"dyntok=false evaluates the unpatched model; drop the DynTok settings {sorted(settings)}."
            )
        self.dyntok_config = dyntok_config_from_args(settings) if dyntok else None
        if isinstance(batch_size, str) and batch_size.strip().isdigit():
            batch_size = int(batch_size)
        if max_batch_size is not None or (isinstance(batch_size, str) and batch_size.startswith("auto")):
            raise ValueError(f"{self.model_id} needs a fixed --batch_size N; automatic batch sizes are not supported.")
        self.batch_size_per_gpu = _positive_int("batch_size", batch_size)
        self.max_frames_num = _positive_int("max_frames_num", max_frames_num)
        self.stats_path = Path(dyntok_stats_path) if dyntok_stats_path not in (None, "") else None
        self.pretrained = str(pretrained)
        self._videos: OrderedDict = OrderedDict()
        self._setup_devices(device)
        self.backend = load_backend(
            self.pretrained, backend, conv_template=conv_template, dtype=dtype, device=self._device,
            device_map=device_map, attn_implementation=attn_implementation,
        )
        if self.dyntok_config is not None:  # validated above, before loading; now on the host's defaults
            host = find_host(unwrap_model(self.backend.model))
            self.dyntok_config = dyntok_config_from_args(settings, getattr(host, "DEFAULT_SETTINGS", {}))
            patch_llava(self.backend.model, config=self.dyntok_config)

    def _setup_devices(self, device: Optional[str]) -> None:
        """One replica per process under `accelerate launch` (data parallel), else the given or best device."""
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            self._device = torch.device(f"cuda:{self.accelerator.local_process_index}")
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def model(self) -> torch.nn.Module:
        return self.backend.model

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    def generate_until(self, requests: List[Instance]) -> List[GenerationResult]:
        """Answer each request (context, gen_kwargs, doc_to_visual, doc_id, task, split), batched by settings."""
        results: list = [None] * len(requests)
        totals = RunTotals()
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_id} generating")
        for indices in _batches([req.args[1] for req in requests], self.batch_size):
            batch = [requests[i] for i in indices]
            gen_kwargs = dict(batch[0].args[1] or {})
            until = _stop_strings(gen_kwargs.pop("until", None))
            prompts = [self._prompt(req.args[0], *req.args[2:6]) for req in batch]
            self._reset_stats()
            start = time.perf_counter()
            generations = self.backend.generate(prompts, gen_kwargs)
            elapsed = time.perf_counter() - start
            per_sample = sample_stats(prompts, self._last_stats())
            for i, req, gen, stats in zip(indices, batch, generations, per_sample):
                counts = DynTokTokenCounts(gen.input_tokens, gen.output_tokens, stats)
                results[i] = GenerationResult(text=_cut(gen.text, until), token_counts=counts)
                self._write_side_file(req, counts)
                totals.add_sample(stats, gen.output_tokens)
            totals.seconds += elapsed
            progress.update(len(batch))
        progress.close()
        self._log_totals(totals)
        return results

    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        """Log-probability of each continuation (context, continuation or doc_to_target, doc_to_visual, doc_id,
        task, split) after the visuals, and whether greedy decoding would produce it."""
        results: list = []
        for req in tqdm(requests, disable=self.rank != 0, desc=f"{self.model_id} scoring"):
            context, target, doc_to_visual, doc_id, task, split = req.args[:6]
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            prompt = self._prompt(context, doc_to_visual, doc_id, task, split)
            prompt.continuation = continuation
            results.append(self.backend.loglikelihood(prompt))
        return results

    def generate_until_multi_round(self, requests: List[Instance]) -> List[str]:
        raise NotImplementedError(
            f"{self.model_id} does not implement multi-round generation (output_type generate_until_multi_round); "
            "run single-round tasks such as videomme or mlvu_dev with it."
        )

    def _prompt(self, context: str, doc_to_visual, doc_id, task: str, split: str) -> Prompt:
        """The request's text and decoded visuals: video paths become `max_frames_num` uniformly sampled frames."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        prompt = Prompt(context=context)
        for visual in _flatten(visuals):
            if isinstance(visual, (str, Path)):
                prompt.videos.append(self._frames(str(visual)))
            elif hasattr(visual, "convert") and hasattr(visual, "size"):
                prompt.images.append(visual.convert("RGB"))
            else:
                raise TypeError(
                    f"{task} doc {doc_id}: doc_to_visual gave a {type(visual).__name__}; {self.model_id} takes video "
                    "file paths and PIL images."
                )
        return prompt

    def _frames(self, path: str) -> np.ndarray:
        """`max_frames_num` frames (all of a shorter video), kept for the last few videos: benchmarks such as
        Video-MME ask several questions about each video in a row."""
        if path in self._videos:
            self._videos.move_to_end(path)
            return self._videos[path]
        frames = load_video(path, min(self.max_frames_num, max(1, probe_video(path).frames)))
        self._videos[path] = frames
        while len(self._videos) > self.batch_size + 2:
            self._videos.popitem(last=False)
        return frames

    def _reset_stats(self) -> None:
        if self.dyntok_config is not None:
            self.dyntok_config.last_stats = []

    def _last_stats(self) -> Optional[list]:
        """The per-video statistics of the last batch, or None when DynTok is off (the baseline)."""
        return None if self.dyntok_config is None else list(self.dyntok_config.last_stats)

    def _write_side_file(self, req: Instance, counts: DynTokTokenCounts) -> None:
        if self.stats_path is None:
            return
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        record = {"task": req.task_name, "doc_id": req.doc_id, "rank": self.rank, **counts.to_dict()}
        with self.stats_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _log_totals(self, totals: RunTotals) -> None:
        """Run-level means into lmms-eval's throughput summary (`results["throughput"]["avg_dyntok_*"]`)."""
        seconds = totals.seconds
        log_metrics(seconds, totals.generated, totals.generated / seconds if seconds else 0.0, totals.dyntok_means())


class _QwenDynTok(LlavaOneVisionDynTok):
    """The model for one Qwen VL family: its default checkpoint, and a clear error for a checkpoint of another."""

    model_types: Tuple[str, ...] = ()
    default_pretrained = ""

    def __init__(self, pretrained: Optional[str] = None, **kwargs: Any) -> None:
        from transformers import PretrainedConfig

        pretrained = str(pretrained or self.default_pretrained)
        model_type = PretrainedConfig.get_config_dict(pretrained)[0].get("model_type")
        if model_type not in self.model_types:
            raise ValueError(
                f"{self.model_id} serves {' / '.join(self.model_types)} checkpoints; {pretrained!r} is a "
                f"{model_type!r} one. Use --model {QWEN25_MODEL_ID}, {QWEN3_MODEL_ID} or {MODEL_ID} to match it."
            )
        kwargs.setdefault("backend", "hf")
        super().__init__(pretrained=pretrained, **kwargs)


class Qwen25VLDynTok(_QwenDynTok):
    """Qwen2.5-VL with DynTok (`--model qwen2_5_vl_dyntok`); model arguments as `llava_onevision_dyntok`'s."""

    model_id = QWEN25_MODEL_ID
    model_types = ("qwen2_5_vl",)
    default_pretrained = "Qwen/Qwen2.5-VL-7B-Instruct"


class Qwen3VLDynTok(_QwenDynTok):
    """Qwen3-VL (dense or MoE) with DynTok (`--model qwen3_vl_dyntok`); model arguments as
    `llava_onevision_dyntok`'s."""

    model_id = QWEN3_MODEL_ID
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    default_pretrained = "Qwen/Qwen3-VL-8B-Instruct"


def _batches(gen_kwargs: Sequence[Any], size: int) -> List[List[int]]:
    """Request indices in batches of at most `size`, never mixing different generation settings."""
    groups: dict = {}
    for index, kwargs in enumerate(gen_kwargs):
        groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(index)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def _stop_strings(until: Any) -> List[str]:
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until):
        return list(until)
    raise ValueError(f"gen_kwargs['until'] must be a string or a list of strings, got {until!r}.")


def _cut(text: str, until: Sequence[str]) -> str:
    """The answer up to the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _flatten(visuals: Any) -> list:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    return [visuals]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value
