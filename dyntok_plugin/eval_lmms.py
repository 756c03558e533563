"""lmms-eval model `llava_onevision_dyntok`: LLaVA-OneVision with DynTok, for the installed lmms-eval, unchanged.

lmms-eval 0.7 finds plugin models through the Python entry-point group `lmms_eval.models`; this package
registers `llava_onevision_dyntok = dyntok_plugin.eval_lmms:lmms_eval_manifest` there, so

    lmms-eval --model llava_onevision_dyntok \
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,dyntok_threshold=0.7 \
        --tasks videomme,mlvu_dev --batch_size 1 --log_samples --output_path results/

runs the stock task code on a DynTok-patched model. Every `DynTokConfig` field is a model argument with a
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
"""

from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
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
        "dyntok_plugin.eval_lmms needs lmms-eval 0.7: pip install 'dyntok-plugin[eval]' "
        "(or: pip install 'lmms-eval>=0.7,<0.8')"
    ) from err

from .api import patch_llava
from .config import DynTokConfig
from .video import load_video, probe_video

MODEL_ID = "llava_onevision_dyntok"
SETTING_PREFIX = "dyntok_"
_NONE_WORDS = ("none", "null", "")


def lmms_eval_manifest():
    """Entry point for lmms-eval's `lmms_eval.models` group: where `--model llava_onevision_dyntok` lives."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaOneVisionDynTok")


def dyntok_config_from_args(args: dict) -> DynTokConfig:
    """A validated `DynTokConfig` from `dyntok_<field>` model arguments (as lmms-eval parsed them)."""
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
        return DynTokConfig.from_dict(settings)
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


@dataclass
class Prompt:
    """One request, ready for a backend: the task's text and its decoded visuals."""

    context: str
    videos: List[np.ndarray] = field(default_factory=list)  # uint8 (F, H, W, 3) each
    images: list = field(default_factory=list)  # PIL images
    continuation: Optional[str] = None  # loglikelihood only


@dataclass
class Generation:
    """What a backend returns for one prompt: the answer, its token count and the prompt's length."""

    text: str
    output_tokens: int
    input_tokens: Optional[int]


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
                f"{MODEL_ID} got unknown model argument(s) {sorted(kwargs)}. Known: pretrained, backend, device, "
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
            raise ValueError(f"{MODEL_ID} needs a fixed --batch_size N; automatic batch sizes are not supported.")
        self.batch_size_per_gpu = _positive_int("batch_size", batch_size)
        self.max_frames_num = _positive_int("max_frames_num", max_frames_num)
        self.stats_path = Path(dyntok_stats_path) if dyntok_stats_path not in (None, "") else None
        self.pretrained = str(pretrained)
        self._videos: OrderedDict = OrderedDict()
        self._setup_devices(device)
        kind = _detect_backend(self.pretrained) if backend == "auto" else backend
        options = dict(dtype=dtype, device=self._device, device_map=device_map, attn_implementation=attn_implementation)
        if kind == "hf":
            self.backend = HFBackend(self.pretrained, **options)
        elif kind == "llava":
            self.backend = LlavaNextBackend(self.pretrained, conv_template=conv_template, **options)
        else:
            raise ValueError(f"backend must be 'auto', 'hf' or 'llava', got {backend!r}.")
        if self.dyntok_config is not None:
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
        totals = {"videos": 0, "tokens_in": 0, "tokens_out": 0, "seconds": 0.0, "generated": 0}
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{MODEL_ID} generating")
        for indices in _batches([req.args[1] for req in requests], self.batch_size):
            batch = [requests[i] for i in indices]
            gen_kwargs = dict(batch[0].args[1] or {})
            until = _stop_strings(gen_kwargs.pop("until", None))
            prompts = [self._prompt(req.args[0], *req.args[2:6]) for req in batch]
            self._reset_stats()
            start = time.perf_counter()
            generations = self.backend.generate(prompts, gen_kwargs)
            elapsed = time.perf_counter() - start
            per_sample = self._sample_stats(prompts)
            for i, req, gen, stats in zip(indices, batch, generations, per_sample):
                counts = DynTokTokenCounts(gen.input_tokens, gen.output_tokens, stats)
                results[i] = GenerationResult(text=_cut(gen.text, until), token_counts=counts)
                self._write_side_file(req, counts)
                if "dyntok_tokens_in" in stats:
                    totals["videos"] += stats["dyntok_videos"]
                    totals["tokens_in"] += stats["dyntok_tokens_in"]
                    totals["tokens_out"] += stats["dyntok_tokens_out"]
                totals["generated"] += gen.output_tokens
            totals["seconds"] += elapsed
            progress.update(len(batch))
        progress.close()
        self._log_totals(totals)
        return results

    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        """Log-probability of each continuation (context, continuation or doc_to_target, doc_to_visual, doc_id,
        task, split) after the visuals, and whether greedy decoding would produce it."""
        results: list = []
        for req in tqdm(requests, disable=self.rank != 0, desc=f"{MODEL_ID} scoring"):
            context, target, doc_to_visual, doc_id, task, split = req.args[:6]
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            prompt = self._prompt(context, doc_to_visual, doc_id, task, split)
            prompt.continuation = continuation
            results.append(self.backend.loglikelihood(prompt))
        return results

    def generate_until_multi_round(self, requests: List[Instance]) -> List[str]:
        raise NotImplementedError(
            f"{MODEL_ID} does not implement multi-round generation (output_type generate_until_multi_round); "
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
                    f"{task} doc {doc_id}: doc_to_visual gave a {type(visual).__name__}; {MODEL_ID} takes video "
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

    def _sample_stats(self, prompts: Sequence[Prompt]) -> List[dict]:
        """The last call's per-video DynTok statistics, summed per sample (in batch order)."""
        base = [
            {"dyntok_videos": len(p.videos), "dyntok_frames": sum(int(v.shape[0]) for v in p.videos)} for p in prompts
        ]
        if self.dyntok_config is None:
            return base
        stats = list(self.dyntok_config.last_stats)
        expected = sum(len(p.videos) for p in prompts)
        if len(stats) != expected:
            raise RuntimeError(
                f"DynTok reported {len(stats)} video statistics for a batch of {expected} videos; the model did "
                "not run its videos through DynTok. Check that the checkpoint is a LLaVA-OneVision video model."
            )
        start = 0
        for prompt, entry in zip(prompts, base):
            own = stats[start:start + len(prompt.videos)]
            start += len(prompt.videos)
            tokens_in = sum(s.tokens_in for s in own)
            tokens_out = sum(s.tokens_out for s in own)
            entry.update(
                dyntok_tokens_in=tokens_in,
                dyntok_tokens_out=tokens_out,
                dyntok_ratio=tokens_out / tokens_in if tokens_in else None,
                dyntok_threshold=[s.threshold if np.isfinite(s.threshold) else None for s in own],
            )
        return base

    def _write_side_file(self, req: Instance, counts: DynTokTokenCounts) -> None:
        if self.stats_path is None:
            return
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        record = {"task": req.task_name, "doc_id": req.doc_id, "rank": self.rank, **counts.to_dict()}
        with self.stats_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _log_totals(self, totals: dict) -> None:
        """Run-level means into lmms-eval's throughput summary (`results["throughput"]["avg_dyntok_*"]`)."""
        videos = totals["videos"]
        extra = {}
        if videos:
            extra.update(
                dyntok_ratio=totals["tokens_out"] / totals["tokens_in"],
                dyntok_tokens_in_per_video=totals["tokens_in"] / videos,
                dyntok_tokens_out_per_video=totals["tokens_out"] / videos,
            )
        seconds = totals["seconds"]
        log_metrics(seconds, totals["generated"], totals["generated"] / seconds if seconds else 0.0, extra or None)


class HFBackend:
    """A Hugging Face `LlavaOnevisionForConditionalGeneration` with its processor (chat template included)."""

    def __init__(self, pretrained: str, dtype: str, device: torch.device, device_map: Optional[str],
                 attn_implementation: Optional[str]) -> None:
        import transformers
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

        dtype_key = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
        load = {dtype_key: _torch_dtype(dtype)}
        if device_map:
            load["device_map"] = device_map
        if attn_implementation:
            load["attn_implementation"] = attn_implementation
        self.model = LlavaOnevisionForConditionalGeneration.from_pretrained(pretrained, **load).eval()
        if not device_map:
            self.model.to(device)
        self.device = device if not device_map else self.model.device
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(
                f"The processor of {pretrained!r} has no chat template; save one with the checkpoint "
                "(processor.chat_template = ...; processor.save_pretrained(folder))."
            )
        config = self.model.config
        self.video_token_id = getattr(config, "video_token_id", None)
        if self.video_token_id is None:
            self.video_token_id = config.video_token_index

    def _encode(self, prompts: Sequence[Prompt], with_continuation: bool = False) -> dict:
        texts = []
        for prompt in prompts:
            content = [{"type": "video"} for _ in prompt.videos] + [{"type": "image"} for _ in prompt.images]
            messages = [{"role": "user", "content": content + [{"type": "text", "text": prompt.context}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            texts.append(text + prompt.continuation if with_continuation else text)
        videos = [v for p in prompts for v in p.videos]
        images = [i for p in prompts for i in p.images]
        inputs = self.processor(
            text=texts, videos=videos or None, images=images or None, padding=True, return_tensors="pt"
        )
        dtype = self.model.dtype
        return {k: v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}

    def generate(self, prompts: Sequence[Prompt], gen_kwargs: dict) -> List[Generation]:
        inputs = self._encode(prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, **_generation_options(gen_kwargs), pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id
            )
        new = output[:, inputs["input_ids"].shape[1]:]
        stats = _last_stats(self.model)
        generations, start = [], 0
        for row, prompt in enumerate(prompts):
            ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
            length = int(ids.numel())
            if stats is not None:
                own = stats[start:start + len(prompt.videos)]
                start += len(prompt.videos)
                length += sum(s.tokens_out for s in own) - int((ids == self.video_token_id).sum())
            generations.append(Generation(
                text=self.tokenizer.decode(new[row], skip_special_tokens=True),
                output_tokens=_answer_length(new[row], self.tokenizer.eos_token_id, pad),
                input_tokens=length,
            ))
        return generations

    def loglikelihood(self, prompt: Prompt) -> Tuple[float, bool]:
        context_ids = self._encode([prompt])["input_ids"][0]
        inputs = self._encode([prompt], with_continuation=True)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0]
        ids = inputs["input_ids"][0]
        return _continuation_score(logits, ids, int(ids.numel() - context_ids.numel()))


class LlavaNextBackend:
    """An original LLaVA-NeXT checkpoint loaded with `llava.model.builder` (LLaVA-NeXT installed from git)."""

    def __init__(self, pretrained: str, conv_template: str, dtype: str, device: torch.device,
                 device_map: Optional[str], attn_implementation: Optional[str]) -> None:
        try:
            from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
            from llava.conversation import conv_templates
            from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
            from llava.model.builder import load_pretrained_model
        except ImportError as err:
            raise ImportError(
                f"{pretrained!r} is a LLaVA-NeXT checkpoint and loading it needs the LLaVA-NeXT package `llava` "
                f"({err}). Install it from its git repository (see the README, 'Supported hosts'), or evaluate the "
                "Hugging Face conversion instead, e.g. pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf."
            ) from err
        if conv_template not in conv_templates:
            raise ValueError(f"conv_template {conv_template!r} is not one of LLaVA-NeXT's {sorted(conv_templates)}.")
        self.image_token, self.image_token_index = DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
        self.conversation = conv_templates[conv_template]
        self.tokenize, self.process_images = tokenizer_image_token, process_images
        torch_dtype = "bfloat16" if dtype == "bfloat16" else "float16"
        self.tokenizer, self.model, self.image_processor, _ = load_pretrained_model(
            pretrained, None, get_model_name_from_path(pretrained), device_map=device_map or str(device),
            torch_dtype=torch_dtype, attn_implementation=attn_implementation or "sdpa", multimodal=True,
            overwrite_config={"mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2},
        )
        self.model.eval()
        self.model.config.tokenizer_padding_side = "left"
        self.device = self.model.device
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    def _encode(self, prompt: Prompt, with_continuation: bool = False) -> tuple:
        """`(input_ids, visuals, modalities, image_sizes)` for one prompt, videos first then images."""
        count = len(prompt.videos) + len(prompt.images)
        question = "\n".join([self.image_token] * count + [prompt.context]) if count else prompt.context
        conv = copy.deepcopy(self.conversation)
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], None)
        text = conv.get_prompt() + (prompt.continuation if with_continuation else "")
        ids = self.tokenize(text, self.tokenizer, self.image_token_index, return_tensors="pt")
        dtype = self.model.dtype
        visuals = [self.image_processor.preprocess(v, return_tensors="pt")["pixel_values"].to(self.device, dtype)
                   for v in prompt.videos]
        for image in prompt.images:
            pixels = self.process_images([image], self.image_processor, self.model.config)
            visuals.append(pixels.to(self.device, dtype)[0])
        sizes = [(int(v.shape[2]), int(v.shape[1])) for v in prompt.videos] + [image.size for image in prompt.images]
        return ids, visuals, ["video"] * len(prompt.videos) + ["image"] * len(prompt.images), sizes

    def generate(self, prompts: Sequence[Prompt], gen_kwargs: dict) -> List[Generation]:
        encoded = [self._encode(p) for p in prompts]
        width = max(int(e[0].numel()) for e in encoded)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (row_ids, *_) in enumerate(encoded):
            ids[row, width - row_ids.numel():] = row_ids
            mask[row, width - row_ids.numel():] = 1
        visuals = [v for e in encoded for v in e[1]]
        with torch.inference_mode():
            output = self.model.generate(
                inputs=ids.to(self.device), attention_mask=mask.to(self.device), images=visuals or None,
                modalities=[m for e in encoded for m in e[2]] or None, image_sizes=[s for e in encoded for s in e[3]],
                **_generation_options(gen_kwargs), pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        stats = _last_stats(self.model)
        generations, start = [], 0
        for row, (prompt, (row_ids, *_)) in enumerate(zip(prompts, encoded)):
            length = None
            if stats is not None and not prompt.images:
                own = stats[start:start + len(prompt.videos)]
                length = int(row_ids.numel()) - len(prompt.videos) + sum(s.tokens_out for s in own)
            start += len(prompt.videos)
            generations.append(Generation(
                text=self.tokenizer.decode(output[row], skip_special_tokens=True),
                output_tokens=_answer_length(output[row], self.tokenizer.eos_token_id, self.pad_id),
                input_tokens=length,
            ))
        return generations

    def loglikelihood(self, prompt: Prompt) -> Tuple[float, bool]:
        context_ids = self._encode(prompt)[0]
        ids, visuals, modalities, sizes = self._encode(prompt, with_continuation=True)
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids.to(self.device), images=visuals or None, modalities=modalities or None, image_sizes=sizes
            ).logits[0]
        return _continuation_score(logits, ids[0], int(ids.shape[1] - context_ids.shape[1]))


def _detect_backend(pretrained: str) -> str:
    """`"hf"` for transformers LLaVA-OneVision checkpoints, `"llava"` for original LLaVA-NeXT ones."""
    from transformers import PretrainedConfig

    values, _ = PretrainedConfig.get_config_dict(pretrained)
    architectures = values.get("architectures") or []
    if values.get("model_type") == "llava_onevision" or "LlavaOnevisionForConditionalGeneration" in architectures:
        return "hf"
    if any(name.startswith("Llava") and name.endswith("ForCausalLM") for name in architectures):
        return "llava"
    raise ValueError(
        f"{pretrained!r} is neither a Hugging Face LLaVA-OneVision checkpoint (model_type llava_onevision) nor a "
        f"LLaVA-NeXT one (architectures Llava*ForCausalLM); its config says model_type="
        f"{values.get('model_type')!r}, architectures={architectures}. Pass backend=hf or backend=llava to force one."
    )


def _last_stats(model: torch.nn.Module) -> Optional[list]:
    """The per-video statistics of the model's last DynTok call, or None when DynTok is off."""
    config = getattr(model, "dyntok", None)
    return list(config.last_stats) if isinstance(config, DynTokConfig) else None


def _continuation_score(logits: torch.Tensor, ids: torch.Tensor, length: int) -> Tuple[float, bool]:
    """Sum of log-probabilities of the last `length` ids, and whether each is the greedy choice.

    The continuation ends the sequence, so it sits at the tail of the logits whatever DynTok did to the video.
    """
    if length < 1:
        raise ValueError("The continuation added no tokens to the context; lmms-eval gave an empty continuation.")
    target = ids[-length:].to(logits.device)
    logprobs = torch.log_softmax(logits[-length - 1:-1].float(), dim=-1)
    chosen = logprobs.gather(-1, target[:, None]).sum()
    return float(chosen), bool((logprobs.argmax(-1) == target).all())


def _generation_options(gen_kwargs: dict) -> dict:
    """lmms-eval generation kwargs as `generate` arguments: greedy at temperature 0, sampling above."""
    temperature = float(gen_kwargs.get("temperature", 0) or 0)
    options = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens", 1024)),
        "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
        "do_sample": temperature > 0,
        "use_cache": True,
    }
    if temperature > 0:
        options["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            options["top_p"] = float(gen_kwargs["top_p"])
    return options


def _answer_length(ids: torch.Tensor, eos_id: Optional[int], pad_id: Optional[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence token (padding after it excluded)."""
    ids = ids.tolist()
    if eos_id is not None and eos_id in ids:
        return ids.index(eos_id) + 1
    while ids and pad_id is not None and ids[-1] == pad_id:
        ids.pop()
    return len(ids)


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


def _torch_dtype(name: str):
    if name in (None, "auto"):
        return "auto"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be 'auto' or a torch dtype name such as bfloat16 or float16, got {name!r}.")
    return dtype


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())
