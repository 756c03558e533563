"""Offline LLaVA-OneVision checkpoints with random weights: for tests, benchmarks and smoke runs without a hub.

A word-level tokenizer over 128 ids with LLaVA-OneVision's special tokens and a ChatML template, a config at the
tiny test size (32 px frames, 4 px patches: an 8x8 grid pooled to 4x4) or at llava-onevision-qwen2-0.5b-ov's sizes
(`LLAVA_OV_05B`), the matching processor, and a small video-QA set written in the tokenizer's vocabulary.
`save_published_layout` writes a checkpoint the way the published llava-hf checkpoints are laid out (vision weights
under `vision_tower.vision_model.*`), which is what vLLM's loader reads; `VLLM_TEXT` sizes the tiny LLM with a head
size vLLM's CPU attention supports. Nothing here downloads anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

PAD_ID, UNK_ID, IMAGE_ID, VIDEO_ID, EOS_ID = 0, 1, 2, 3, 4
FIRST_TEXT_ID = 5
VOCAB_SIZE = 128

# The tiny test size; real-size values (SigLIP-so400m at 384 px, Qwen2-7B) are noted next to each field.
TINY_VISION = {
    "model_type": "siglip_vision_model",
    "image_size": 32,  # 384
    "patch_size": 4,  # 14
    "hidden_size": 32,  # 1152
    "intermediate_size": 37,  # 4304
    "num_hidden_layers": 2,  # 26
    "num_attention_heads": 4,  # 16
    "vision_use_head": False,
}
TINY_TEXT = {
    "model_type": "qwen2",
    "vocab_size": VOCAB_SIZE,  # 152k
    "hidden_size": 32,  # 3584
    "intermediate_size": 37,  # 18944
    "num_hidden_layers": 2,  # 28
    "num_attention_heads": 4,  # 28
    "num_key_value_heads": 2,  # 4
    "max_position_embeddings": 512,
    "pad_token_id": PAD_ID,
    "eos_token_id": EOS_ID,
}

# The tiny LLM with 32-wide attention heads (vLLM's CPU attention supports 32, 64, ..., not the 8 of TINY_TEXT).
VLLM_TEXT = {"hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1}

# llava-onevision-qwen2-0.5b-ov (HF conversion): SigLIP-so400m/14-384, last layer dropped, "full"; Qwen2-0.5B.
LLAVA_OV_05B = dict(
    vision=dict(model_type="siglip_vision_model", image_size=384, patch_size=14, hidden_size=1152,
                intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, layer_norm_eps=1e-6,
                vision_use_head=False),
    text=dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
              rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6),
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<video>{% elif item['type'] == 'image' %}<image>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Questions and answers in the tokenizer's vocabulary (w<i> are ordinary word ids).
QA_PAIRS = (
    ("what is happening in the video ?", "w40 w41 w42 ."),
    ("what is in the video ?", "w50 w51 ."),
    ("what is happening ?", "w60 w61 w62 w63 ."),
    ("what is the video ?", "w70 ."),
)


def llava_onevision_config(vision: Optional[dict] = None, text: Optional[dict] = None, **overrides: Any):
    """A `LlavaOnevisionConfig` at the tiny size, with `vision`/`text` fields and top-level `overrides` on top."""
    from transformers import LlavaOnevisionConfig

    vision = {**TINY_VISION, **(vision or {})}
    fields = {
        "vision_config": vision,
        "text_config": {**TINY_TEXT, **(text or {})},
        "image_token_index": IMAGE_ID,
        "video_token_index": VIDEO_ID,
        "vision_feature_select_strategy": "full",  # SigLIP has no CLS: keep all g*g tokens
        "vision_feature_layer": -1,  # the OV checkpoints' choice
        "image_grid_pinpoints": [[vision["image_size"]] * 2],
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
    }
    fields.update(overrides)
    return LlavaOnevisionConfig(**fields)


def random_llava_onevision(config: Any, seed: int = 0, device: Union[str, torch.device, None] = None):
    """A seeded random `LlavaOnevisionForConditionalGeneration` in eval mode; `image_newline` is drawn explicitly so
    the marker is a real, non-degenerate vector in every transformers version."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from .parts import find_parts

    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = LlavaOnevisionForConditionalGeneration(config)
    with torch.no_grad():
        marker = find_parts(model).marker
        marker.copy_(torch.randn_like(marker))
    return model.eval()


def build_tokenizer():
    """An offline word-level `PreTrainedTokenizerFast` over VOCAB_SIZE ids with LLaVA-OV's special tokens."""
    return word_level_tokenizer(
        specials=["<pad>", "<unk>", "<image>", "<video>", "<|im_end|>", "<|im_start|>"],
        words=["user", "assistant", "system", "\n", "what", "is", "happening", "in", "the", "video", "?", "."],
        isolated="\n?.", pad="<pad>", unk="<unk>", eos="<|im_end|>",
        additional=["<image>", "<video>", "<|im_start|>"], chat_template=CHAT_TEMPLATE,
    )


def word_level_tokenizer(specials: Sequence[str], words: Sequence[str], isolated: str, pad: str, unk: str, eos: str,
                         additional: Sequence[str], chat_template: str, vocab_size: int = VOCAB_SIZE):
    """An offline word-level `PreTrainedTokenizerFast`: `specials` then `words` at ids 0, 1, ..., filler words `w<i>`
    up to `vocab_size`; split on spaces and tabs, each character of `isolated` a token of its own."""
    import re

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*specials, *words])}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[ \t]+"), "removed"),
        pre_tokenizers.Split(Regex(f"[{re.escape(isolated)}]"), "isolated"),
    ])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad, unk_token=unk, eos_token=eos,
                                        additional_special_tokens=list(additional))
    tokenizer.chat_template = chat_template
    return tokenizer


def pad_rows(rows: Sequence[Sequence[int]], side: str, pad_id: int) -> tuple:
    """`(input_ids, attention_mask)` of id rows padded with `pad_id` to the longest, on `side` ("left"/"right")."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):  # test inputs built once, not a model's hot path
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[b, span] = torch.tensor(list(row), dtype=torch.long)
        mask[b, span] = 1
    return ids, mask


def build_processor(image_size: int, patch_size: int, chat_template: str = CHAT_TEMPLATE):
    """A `LlavaOnevisionProcessor` at the tower's resolution with `build_tokenizer()` (the video processor of
    transformers 5.x needs torchvision)."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": image_size, "width": image_size}
    grid = image_size // patch_size
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[image_size] * 2]),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=build_tokenizer(),
        num_image_tokens=grid * grid,
        vision_feature_select_strategy="full",
        chat_template=chat_template,
    )


def save_random_checkpoint(
    folder: Union[str, Path], config: Any = None, seed: int = 0, processor: bool = False
) -> Path:
    """A complete offline checkpoint in `folder`: random model, tokenizer and, with `processor=True`, processor."""
    folder = Path(folder)
    config = llava_onevision_config() if config is None else config
    random_llava_onevision(config, seed=seed).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    if processor:
        vision = config.vision_config
        build_processor(vision.image_size, vision.patch_size).save_pretrained(folder)
    return folder


def write_qa_dataset(
    folder: Union[str, Path], video: Union[str, Path], frame_counts: Sequence[int], pairs: Sequence = QA_PAIRS
) -> Path:
    """`folder/train.jsonl`: one `pairs` question and answer per frame count, on `video` (copied beside it)."""
    folder, video = Path(folder), Path(video)
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / video.name
    if not copy.exists():
        copy.write_bytes(video.read_bytes())
    lines = [
        json.dumps({"video": copy.name, "question": q, "answer": a, "num_frames": int(f)})
        for (q, a), f in zip(pairs, frame_counts)
    ]
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def save_published_layout(folder: Union[str, Path], model: Any, processor: bool = True) -> Path:
    """`model` (a `LlavaOnevisionForConditionalGeneration`) saved with its vision weights under
    `vision_tower.vision_model.*`, as in the published llava-hf checkpoints (transformers 5.x saves
    `vision_tower.embeddings.*`, which vLLM's loader rejects), with the tokenizer and, with `processor=True`, the
    processor. Settings in `model.config.dyntok` are saved with the config."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tower, published = "model.vision_tower.", "model.vision_tower.vision_model."
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(tower) and not name.startswith(published):
            name = published + name[len(tower):]
        tensors[name] = tensor.detach().contiguous().clone()  # tied weights share storage; safetensors refuses that
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    if processor:
        vision = config.vision_config
        build_processor(vision.image_size, vision.patch_size).save_pretrained(folder)
    return folder
