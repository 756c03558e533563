"""Checkpoint backends for the lmms-eval models: load a checkpoint, answer and score prompts with its visuals.

`HFBackend` serves Hugging Face checkpoints (LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL) through transformers and the
checkpoint's processor;
`LlavaNextBackend` serves original LLaVA-NeXT checkpoints (`lmms-lab/llava-onevision-*`) through
`llava.model.builder` (or that of `llavaction`, LLaVA-NeXT's PyPI fork, same layout). Both take `Prompt`s and
return `Generation`s or `(log-probability, is_greedy)` pairs, and count each prompt's real input length from DynTok's
statistics, so `lmms` needs no host-specific code.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..hf.checkpoints import VIDEO_MODEL_CLASSES, dtype_argument, video_model_class
from ..core.config import DynTokConfig
from ..hf.processing import user_turn, video_token_id
from ..core.stats import DynTokStats

LLAVA_PACKAGES = ("llava", "llavaction")
"""LLaVA-NeXT packages tried in order: upstream (from git), then its PyPI fork."""
LLAVA_DTYPES = ("float16", "bfloat16")


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


def load_backend(pretrained: str, backend: str, conv_template: str, dtype: str, device: torch.device,
                 device_map: Optional[str], attn_implementation: Optional[str]) -> Union[HFBackend, LlavaNextBackend]:
    """The backend for `pretrained`: `backend` is `"auto"` (from the checkpoint's config), `"hf"` or `"llava"`."""
    kind = detect_backend(pretrained) if backend == "auto" else backend
    options = dict(dtype=dtype, device=device, device_map=device_map, attn_implementation=attn_implementation)
    if kind == "hf":
        return HFBackend(pretrained, **options)
    if kind == "llava":
        return LlavaNextBackend.load(pretrained, conv_template=conv_template, **options)
    raise ValueError(f"backend must be 'auto', 'hf' or 'llava', got {backend!r}.")


class HFBackend:
    """A Hugging Face LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL model with its processor (chat template included)."""

    def __init__(self, pretrained: str, dtype: str, device: torch.device, device_map: Optional[str],
                 attn_implementation: Optional[str]) -> None:
        from transformers import AutoProcessor, PretrainedConfig

        values, _ = PretrainedConfig.get_config_dict(pretrained)
        model_class = video_model_class(values.get("model_type"))
        load = dtype_argument(_torch_dtype(dtype))
        if device_map:
            load["device_map"] = device_map
        if attn_implementation:
            load["attn_implementation"] = attn_implementation
        self.model = model_class.from_pretrained(pretrained, **load).eval()
        # Qwen VL video processors sample frames themselves unless told not to: the frames given are the samples
        self.video_options = {"do_sample_frames": False} if values.get("model_type", "").startswith("qwen") else {}
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
        self.video_token_id = video_token_id(self.model.config)

    def _encode(self, prompts: Sequence[Prompt], with_continuation: bool = False) -> dict:
        """The processor's left-padded batch for the prompts, on the model's device and dtype."""
        texts = []
        for prompt in prompts:
            messages = user_turn(prompt.context, videos=len(prompt.videos), images=len(prompt.images))
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            texts.append(text + prompt.continuation if with_continuation else text)
        videos = [v for p in prompts for v in p.videos]
        images = [i for p in prompts for i in p.images]
        inputs = self.processor(
            text=texts, videos=videos or None, images=images or None, padding=True, return_tensors="pt",
            **(self.video_options if videos else {}),
        )
        dtype = self.model.dtype
        return {k: v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device) for k, v in inputs.items()}

    def generate(self, prompts: Sequence[Prompt], gen_kwargs: dict) -> List[Generation]:
        """Answer a batch of prompts in one `generate` call."""
        inputs = self._encode(prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, **_generation_options(gen_kwargs), pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id
            )
        new = output[:, inputs["input_ids"].shape[1]:]
        generations = []
        for row, own in enumerate(_stats_per_prompt(self.model, prompts)):
            ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
            length = int(ids.numel())
            if own is not None:
                length += sum(s.tokens_out for s in own) - int((ids == self.video_token_id).sum())
            generations.append(Generation(
                text=self.tokenizer.decode(new[row], skip_special_tokens=True),
                output_tokens=_answer_length(new[row], self.tokenizer.eos_token_id, pad),
                input_tokens=length,
            ))
        return generations

    def loglikelihood(self, prompt: Prompt) -> Tuple[float, bool]:
        """Log-probability of `prompt.continuation` after the prompt, and whether greedy decoding gives it."""
        context_ids = self._encode([prompt])["input_ids"][0]
        inputs = self._encode([prompt], with_continuation=True)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0]
        ids = inputs["input_ids"][0]
        return _continuation_score(logits, ids, int(ids.numel() - context_ids.numel()))


class LlavaNextBackend:
    """An original LLaVA-NeXT model with its tokenizer and image processor (`load` reads a checkpoint)."""

    def __init__(self, model: torch.nn.Module, tokenizer, image_processor, conv_template: str,
                 package: Optional[str] = None) -> None:
        host = _llava_modules(package or llava_package(), "constants", "conversation", "mm_utils")
        conv_templates = host["conversation"].conv_templates
        if conv_template not in conv_templates:
            raise ValueError(f"conv_template {conv_template!r} is not one of LLaVA-NeXT's {sorted(conv_templates)}.")
        self.image_token = host["constants"].DEFAULT_IMAGE_TOKEN
        self.image_token_index = host["constants"].IMAGE_TOKEN_INDEX
        self.conversation = conv_templates[conv_template]
        self.tokenize, self.process_images = host["mm_utils"].tokenizer_image_token, host["mm_utils"].process_images
        self.tokenizer, self.model, self.image_processor = tokenizer, model.eval(), image_processor
        self.model.config.tokenizer_padding_side = "left"
        self.device = self.model.device
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    @classmethod
    def load(cls, pretrained: str, conv_template: str, dtype: str, device: torch.device, device_map: Optional[str],
             attn_implementation: Optional[str]) -> LlavaNextBackend:
        """Load `pretrained` with `llava.model.builder` (or `llavaction`'s); dtype `"auto"` keeps the checkpoint's."""
        package = llava_package()
        mm_utils, builder = _llava_modules(package, "mm_utils", "model.builder").values()
        tokenizer, model, image_processor, _ = builder.load_pretrained_model(
            pretrained, None, mm_utils.get_model_name_from_path(pretrained), device_map=device_map or str(device),
            torch_dtype=_llava_dtype(pretrained, dtype), attn_implementation=attn_implementation or "sdpa",
            multimodal=True, overwrite_config={"mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2},
        )
        return cls(model, tokenizer, image_processor, conv_template, package)

    def _encode(self, prompt: Prompt, with_continuation: bool = False) -> tuple:
        """`(input_ids, visuals, modalities, image_sizes)` for one prompt, videos first then images; `input_ids` is
        `(1, L)` on the CPU, one `IMAGE_TOKEN_INDEX` per visual."""
        count = len(prompt.videos) + len(prompt.images)
        question = "\n".join([self.image_token] * count + [prompt.context]) if count else prompt.context
        conv = copy.deepcopy(self.conversation)
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], None)
        text = conv.get_prompt() + (prompt.continuation if with_continuation else "")
        ids = self.tokenize(text, self.tokenizer, self.image_token_index, return_tensors="pt").reshape(1, -1)
        dtype = self.model.dtype
        visuals = [self.image_processor.preprocess(v, return_tensors="pt")["pixel_values"].to(self.device, dtype)
                   for v in prompt.videos]
        for image in prompt.images:
            pixels = self.process_images([image], self.image_processor, self.model.config)
            visuals.append(pixels.to(self.device, dtype)[0])
        sizes = [(int(v.shape[2]), int(v.shape[1])) for v in prompt.videos] + [image.size for image in prompt.images]
        return ids, visuals, ["video"] * len(prompt.videos) + ["image"] * len(prompt.images), sizes

    def generate(self, prompts: Sequence[Prompt], gen_kwargs: dict) -> List[Generation]:
        """Answer a batch of prompts in one `generate` call."""
        encoded = [self._encode(p) for p in prompts]
        width = max(e[0].shape[1] for e in encoded)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (row_ids, *_) in enumerate(encoded):
            ids[row, width - row_ids.shape[1]:] = row_ids[0]
            mask[row, width - row_ids.shape[1]:] = 1
        visuals = [v for e in encoded for v in e[1]]
        with torch.inference_mode():
            output = self.model.generate(
                inputs=ids.to(self.device), attention_mask=mask.to(self.device), images=visuals or None,
                modalities=[m for e in encoded for m in e[2]] or None, image_sizes=[s for e in encoded for s in e[3]],
                **_generation_options(gen_kwargs), pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        generations = []
        per_prompt = _stats_per_prompt(self.model, prompts)
        for row, (prompt, (row_ids, *_), own) in enumerate(zip(prompts, encoded, per_prompt)):
            length = None
            if own is not None and not prompt.images:
                length = row_ids.shape[1] - len(prompt.videos) + sum(s.tokens_out for s in own)
            generations.append(Generation(
                text=self.tokenizer.decode(output[row], skip_special_tokens=True),
                output_tokens=_answer_length(output[row], self.tokenizer.eos_token_id, self.pad_id),
                input_tokens=length,
            ))
        return generations

    def loglikelihood(self, prompt: Prompt) -> Tuple[float, bool]:
        """Log-probability of `prompt.continuation` after the prompt, and whether greedy decoding gives it."""
        context_ids = self._encode(prompt)[0]
        ids, visuals, modalities, sizes = self._encode(prompt, with_continuation=True)
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids.to(self.device), images=visuals or None, modalities=modalities or None, image_sizes=sizes
            ).logits[0]
        return _continuation_score(logits, ids[0], int(ids.shape[1] - context_ids.shape[1]))


def llava_package() -> str:
    """The installed LLaVA-NeXT package: upstream `llava`, else the PyPI fork `llavaction` (same module layout)."""
    for name in LLAVA_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            return name
    raise ImportError(
        "LLaVA-NeXT checkpoints need the LLaVA-NeXT package `llava` or its PyPI fork `llavaction`; neither is "
        "installed. Install LLaVA-NeXT from its git repository (see the README, 'Supported hosts') or "
        "`pip install llavaction`, or evaluate the Hugging Face conversion instead, e.g. "
        "pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf."
    )


def _llava_modules(package: str, *names: str) -> dict:
    """`{name: module}` for `package.name`, with an error naming the package when one fails to import."""
    try:
        return {name: importlib.import_module(f"{package}.{name}") for name in names}
    except ImportError as err:
        raise ImportError(
            f"The LLaVA-NeXT package {package!r} is installed but does not import ({err}); reinstall it or install "
            "a transformers version it supports."
        ) from err


def _llava_dtype(pretrained: str, dtype: str) -> str:
    """The `torch_dtype` for LLaVA-NeXT's builder, which loads only float16 or bfloat16: `"auto"` takes the
    checkpoint's (its config's `torch_dtype`) where it is one of those, else the builder's default, float16."""
    if dtype in LLAVA_DTYPES:
        return dtype
    if dtype in (None, "auto"):
        from transformers import PretrainedConfig

        values, _ = PretrainedConfig.get_config_dict(pretrained)
        saved = str(values.get("torch_dtype") or values.get("dtype") or "").replace("torch.", "")
        return saved if saved in LLAVA_DTYPES else "float16"
    raise ValueError(
        f"LLaVA-NeXT's model builder loads float16 or bfloat16 weights only, got dtype={dtype!r}; pass "
        "dtype=bfloat16, dtype=float16 or dtype=auto (the checkpoint's), or evaluate the Hugging Face conversion "
        "for other dtypes."
    )


def detect_backend(pretrained: str) -> str:
    """`"hf"` for transformers LLaVA-OneVision / Qwen VL checkpoints, `"llava"` for original LLaVA-NeXT ones."""
    from transformers import PretrainedConfig

    values, _ = PretrainedConfig.get_config_dict(pretrained)
    architectures = values.get("architectures") or []
    if values.get("model_type") in VIDEO_MODEL_CLASSES or set(VIDEO_MODEL_CLASSES.values()) & set(architectures):
        return "hf"
    if any(name.startswith("Llava") and name.endswith("ForCausalLM") for name in architectures):
        return "llava"
    raise ValueError(
        f"{pretrained!r} is neither a Hugging Face LLaVA-OneVision checkpoint (model_type llava_onevision), a "
        f"Qwen2.5-VL / Qwen3-VL one (model_type qwen2_5_vl, qwen3_vl, qwen3_vl_moe) nor a LLaVA-NeXT one (architectures Llava*ForCausalLM); its config says model_type="
        f"{values.get('model_type')!r}, architectures={architectures}. Pass backend=hf or backend=llava to force one."
    )


def split_by_prompt(stats: Sequence[DynTokStats], prompts: Sequence[Prompt]) -> List[List[DynTokStats]]:
    """One batch's per-video statistics grouped by prompt (the model sees the prompts' videos in order)."""
    groups, start = [], 0
    for prompt in prompts:
        groups.append(list(stats[start:start + len(prompt.videos)]))
        start += len(prompt.videos)
    return groups


def _stats_per_prompt(model: torch.nn.Module, prompts: Sequence[Prompt]) -> List[Optional[List[DynTokStats]]]:
    """Each prompt's share of the model's last DynTok statistics; None for every prompt when DynTok is off."""
    config = getattr(model, "dyntok", None)
    if not isinstance(config, DynTokConfig):
        return [None] * len(prompts)
    return split_by_prompt(list(config.last_stats), prompts)


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


def _torch_dtype(name: str):
    if name in (None, "auto"):
        return "auto"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be 'auto' or a torch dtype name such as bfloat16 or float16, got {name!r}.")
    return dtype
