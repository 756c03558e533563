"""Tiny random Hugging Face LLaVA-OneVision models and hand-built inputs for CPU tests.

Nothing here downloads anything. The configuration follows the notes' tiny setup: SigLIP at 32 px with
4 px patches gives an 8x8 grid, pooled 2x2 to 4x4, so a video of F frames takes ``F * 16 + 1`` placeholder
tokens (pooled grid plus the stock trailing ``image_newline``). Real-size values (SigLIP-so400m at 384 px,
Qwen2-7B) are noted next to each field.

Stable helpers (other engineers' tests use them):

- :func:`tiny_config` / :func:`build_tiny_llava_onevision` -- config and seeded random model (eval mode).
- :func:`video_tokens` / :func:`image_tokens` -- placeholder run lengths for this config.
- :func:`sample_ids` -- one sample's ids from text pieces, ``("video", F)`` and ``("image", 1)`` parts.
- :func:`pad_batch` -- left or right padding with an attention mask (and ``-100`` label padding).
- :func:`random_videos` / :func:`random_images` -- seeded pixel tensors shaped as the processor makes them.
- :func:`save_tiny_checkpoint` -- a tiny model plus an offline tokenizer with a chat template, in a folder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

PAD_ID = 0
IMAGE_ID = 2
VIDEO_ID = 3
EOS_ID = 4
FIRST_TEXT_ID = 5
VOCAB_SIZE = 128
IMAGE_SIZE = 32  # 384 for SigLIP-so400m
PATCH_SIZE = 4  # 14 for SigLIP-so400m
GRID = IMAGE_SIZE // PATCH_SIZE  # 27 for SigLIP-so400m
POOLED = math.ceil(GRID / 2)  # 14 for SigLIP-so400m

def tiny_config(**overrides):
    """A `LlavaOnevisionConfig` with an 8x8 vision grid (4x4 after pooling); keyword overrides win."""
    from transformers import LlavaOnevisionConfig

    vision = {
        "model_type": "siglip_vision_model",
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "hidden_size": 32,  # 1152
        "intermediate_size": 37,  # 4304
        "num_hidden_layers": 2,  # 26
        "num_attention_heads": 4,  # 16
        "vision_use_head": False,
    }
    text = {
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
    vision.update(overrides.pop("vision_config", {}))
    text.update(overrides.pop("text_config", {}))
    fields = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": IMAGE_ID,
        "video_token_index": VIDEO_ID,
        "vision_feature_select_strategy": "full",  # "full" keeps all g*g tokens (SigLIP has no CLS)
        "vision_feature_layer": -1,  # -1 for the OV checkpoints
        "image_grid_pinpoints": [[IMAGE_SIZE, IMAGE_SIZE]],
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
    }
    fields.update(overrides)
    return LlavaOnevisionConfig(**fields)


def build_tiny_llava_onevision(seed: int = 0, attn_implementation: str = "eager", dtype=torch.float32, **overrides):
    """A seeded random `LlavaOnevisionForConditionalGeneration` in eval mode (~41k parameters).

    `image_newline` is drawn explicitly so the marker is a real, non-degenerate vector in every version.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    with torch.no_grad():
        newline = _owner(model).image_newline
        newline.copy_(torch.randn_like(newline))
    return model.to(dtype).eval()


def _owner(model):
    """The module that holds the vision tower: `model.model` on transformers >= 4.52, the model itself before."""
    inner = getattr(model, "model", None)
    return inner if hasattr(inner, "image_newline") else model


def video_tokens(frames: int) -> int:
    """Placeholder tokens the stock processor gives one video of `frames` frames: pooled grid + one newline."""
    return frames * POOLED * POOLED + 1


def image_tokens() -> int:
    """Placeholder tokens of one IMAGE_SIZE x IMAGE_SIZE image: base grid + one anyres tile with a newline per row."""
    return GRID * GRID + GRID * (GRID + 1)


def sample_ids(*parts) -> list:
    """One sample's token ids: each part is a list of text ids, `("video", F)` or `("image", n)` placeholders."""
    ids: list = []
    for part in parts:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            kind, count = part
            if kind == "video":
                ids += [VIDEO_ID] * video_tokens(count)
            elif kind == "image":
                ids += [IMAGE_ID] * (image_tokens() * count)
            else:
                raise ValueError(f"unknown part kind {kind!r}; use 'video' or 'image'")
        else:
            ids += [int(i) for i in part]
    return ids


def text_ids(length: int, seed: int) -> list:
    """`length` random ordinary text ids (never special ids), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TEXT_ID, VOCAB_SIZE, (length,), generator=gen).tolist()


def pad_batch(samples: Iterable[Sequence[int]], side: str = "left", labels: bool = False):
    """Pad samples to one length on `side`; returns `dict(input_ids, attention_mask[, labels])` as tensors.

    With `labels=True` the labels copy the ids, with `-100` on padding and on image/video placeholders.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    samples = [list(s) for s in samples]
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        span = slice(width - len(sample), width) if side == "left" else slice(0, len(sample))
        ids[row, span] = torch.tensor(sample, dtype=torch.long)
        mask[row, span] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels:
        lab = ids.masked_fill(mask == 0, -100)
        batch["labels"] = lab.masked_fill((ids == VIDEO_ID) | (ids == IMAGE_ID), -100)
    return batch


def random_videos(num_videos: int, frames: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """`(num_videos, frames, 3, IMAGE_SIZE, IMAGE_SIZE)` normalised pixels with some spatial smoothness.

    Neighbouring columns are correlated (a blurred noise field) so a middle threshold merges some tokens
    and not others, as real frames do.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_videos * frames, 3, IMAGE_SIZE // 8, IMAGE_SIZE // 8, generator=gen)
    fine = torch.randn(num_videos * frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    pixels = (smooth + 0.3 * fine).clamp(-1, 1)
    return pixels.view(num_videos, frames, 3, IMAGE_SIZE, IMAGE_SIZE).to(dtype)


def random_images(num_images: int, seed: int = 0, dtype=torch.float32):
    """`(pixel_values, image_sizes)` for `num_images` square images: base view plus one anyres tile each."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(num_images, 2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1
    sizes = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE]] * num_images, dtype=torch.long)
    return pixels.to(dtype), sizes


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<video>{% elif item['type'] == 'image' %}<image>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer():
    """An offline word-level `PreTrainedTokenizerFast` over VOCAB_SIZE ids with LLaVA-OV's special tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<image>", "<video>", "<|im_end|>", "<|im_start|>"]
    words = ["user", "assistant", "system", "\n", "what", "is", "happening", "in", "the", "video", "?", "."]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB_SIZE)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[ \t]+"), "removed"), pre_tokenizers.Split(Regex(r"[\n?.]"), "isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<image>", "<video>", "<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny model and its offline tokenizer to `folder`, loadable with `from_pretrained(folder)`."""
    folder = Path(folder)
    model = build_tiny_llava_onevision(seed=seed)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder
