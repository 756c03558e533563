"""Offline Qwen2.5-VL / Qwen3-VL (and Qwen3-VL-MoE) models with random weights, and their inputs built by hand.

For tests, benchmarks and smoke runs without a hub or torchvision (transformers 5.x's Qwen video processors need
it). The inputs are laid out exactly as the stock processors lay them out:

- pixels: frames padded to a multiple of `temporal_patch_size` (last frame repeated), then patchified into rows
  ordered (slice, merged row, merged col, in-row, in-col), each `C*tps*ps*ps` values (`patchify`);
- Qwen2.5-VL ids: `<|vision_start|>` + `t*h'*w'` `<|video_pad|>` + `<|vision_end|>` per video, with
  `second_per_grid_ts = tps / fps`;
- Qwen3-VL ids: per temporal slice a timestamp (ordinary text ids), `<|vision_start|>`, `h'*w'` pads,
  `<|vision_end|>`;
- `mm_token_type_ids`: 1 on image pads, 2 on video pads, 0 elsewhere; `video_grid_thw` one row per video.

Entry points: `qwen_vl_config(kind, ...)`, `random_qwen_vl(config)`, `random_frames`, `patchify`,
`qwen_vl_inputs(config, samples, side)` (samples of text / video / image parts), `build_qwen_tokenizer`,
`build_qwen_processor` (torchvision), `save_random_qwen_checkpoint`. Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from . import synthetic
from .checkpoints import QWEN_MODEL_TYPES, video_model_class

PAD_ID, EOS_ID, IMAGE_ID, VIDEO_ID, VISION_START_ID, VISION_END_ID = 0, 1, 2, 3, 4, 5
IM_START_ID, SECONDS_ID = 6, 7
DIGIT_IDS = tuple(range(8, 18))  # "0".."9": timestamps are ordinary text tokens
FIRST_TEXT_ID = 18
VOCAB_SIZE = 128
KINDS = QWEN_MODEL_TYPES

_IDS = dict(image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VISION_START_ID,
            vision_end_token_id=VISION_END_ID)
# Tiny sizes (verified on CPU, float32); real Qwen2.5-VL-7B values in comments.
TINY_QWEN_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,  # 32, 1280, 3420, 16
                        patch_size=4, spatial_merge_size=2, temporal_patch_size=2,  # 14, 2, 2
                        out_hidden_size=64,  # 3584
                        initializer_range=0.1)
TINY_QWEN_TEXT = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=PAD_ID, initializer_range=0.15)
# theta 100 (not 1e6): with head_dim 16 the width axis would otherwise barely move the logits.
_ROPE_25 = dict(rope_type="default", rope_theta=100.0, mrope_section=[2, 3, 3])
_ROPE_3 = dict(rope_type="default", rope_theta=100.0, mrope_section=[4, 2, 2], mrope_interleaved=True)
_MOE_TEXT = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, decoder_sparse_step=1)


def qwen_vl_config(kind: str = "qwen2_5_vl", vision: Optional[dict] = None, text: Optional[dict] = None,
                   **overrides: Any):
    """A tiny `Qwen2_5_VLConfig`, `Qwen3VLConfig` or `Qwen3VLMoeConfig` (`kind` in KINDS); `vision`/`text` fields
    and top-level `overrides` on top. Eager attention (exact CPU comparisons)."""
    import transformers

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    vision = {**TINY_QWEN_VISION, **(vision or {})}
    text = {**TINY_QWEN_TEXT, **(text or {})}
    if kind == "qwen2_5_vl":
        vision = {"window_size": 16, "fullatt_block_indexes": [1], "tokens_per_second": 2, **vision}
        text = {"eos_token_id": EOS_ID, "bos_token_id": None, "rope_parameters": _ROPE_25, **text}
        cls = transformers.Qwen2_5_VLConfig
    else:
        vision = {"depth": 3, "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1], **vision}
        text = {"head_dim": 16, "rope_parameters": _ROPE_3, **(_MOE_TEXT if kind == "qwen3_vl_moe" else {}), **text}
        cls = transformers.Qwen3VLMoeConfig if kind == "qwen3_vl_moe" else transformers.Qwen3VLConfig
    config = cls(vision_config=vision, text_config=text, **{**_IDS, **overrides})
    config._attn_implementation = "eager"
    return config


def model_class(config: Any):
    """The `...ForConditionalGeneration` class of a Qwen VL config."""
    return video_model_class(config.model_type)


def random_qwen_vl(config: Any, seed: int = 0, device: Union[str, torch.device, None] = None):
    """A seeded random Qwen VL model for `config` in eval mode, with the generation ids set (Qwen3-VL's text
    config has no `eos_token_id`)."""
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = model_class(config)(config)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    return model.eval()


def random_frames(frames: int, height: int, width: int, seed: int = 0, channels: int = 3) -> Tensor:
    """`(F, C, H, W)` normalised float32 frames with spatial smoothness (a blurred noise field plus fine noise),
    so that a middle threshold merges some tokens and not others."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(frames, channels, max(height // 8, 1), max(width // 8, 1), generator=gen)
    fine = torch.randn(frames, channels, height, width, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return (smooth + 0.3 * fine).clamp(-1, 1)


def patchify(frames: Tensor, patch_size: int, temporal_patch_size: int, merge_size: int) -> tuple[Tensor, list]:
    """`(F, C, H, W)` -> `(t*gh*gw, C*tps*ps*ps)` rows in the processors' order, and the grid `[t, gh, gw]`.

    Frames are padded to a multiple of `temporal_patch_size` by repeating the last one; `H` and `W` must be
    multiples of `patch_size * merge_size`."""
    count, channels, height, width = frames.shape
    unit = patch_size * merge_size
    if height % unit or width % unit:
        raise ValueError(f"frame size {height}x{width} must be a multiple of patch_size*merge_size = {unit}")
    pad = -count % temporal_patch_size
    if pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    t, gh, gw = frames.shape[0] // temporal_patch_size, height // patch_size, width // patch_size
    m, ps, tps = merge_size, patch_size, temporal_patch_size
    x = frames.reshape(t, tps, channels, gh // m, m, ps, gw // m, m, ps)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, channels * tps * ps * ps).contiguous(), [t, gh, gw]


def timestamp_ids(seconds: float) -> list:
    """A Qwen3-VL timestamp (`<1.5 seconds>` in the real tokenizer) as ordinary ids: the digits of round(10 s)."""
    return [DIGIT_IDS[int(d)] for d in str(int(round(seconds * 10)))] + [SECONDS_ID]


def qwen_vl_inputs(config: Any, samples: Sequence[Sequence[Any]], side: str = "left",
                   labels: bool = False) -> dict:
    """The stock processor's output for `samples`, padded on `side`. Each sample is a list of parts: a list of text
    ids, `("video", frames (F, C, H, W)[, fps])` or `("image", image (C, H, W))`. Returns
    `input_ids`, `attention_mask`, `mm_token_type_ids`, `pixel_values_videos`, `video_grid_thw` (and Qwen2.5-VL's
    `second_per_grid_ts`), `pixel_values`/`image_grid_thw` when there are images, `labels` (text ids, -100 on
    visual positions and padding) with `labels=True`."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    vision = config.vision_config
    geometry = (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size)
    qwen3 = config.model_type.startswith("qwen3")
    rows, videos, grids, seconds, images, image_grids = [], [], [], [], [], []
    for sample in samples:
        ids: list = []
        for part in sample:
            if isinstance(part, tuple) and part and part[0] == "video":
                fps = float(part[2]) if len(part) > 2 else 2.0
                pixels, grid = patchify(part[1], *geometry)
                videos.append(pixels)
                grids.append(grid)
                seconds.append(vision.temporal_patch_size / fps)
                ids += _video_ids(grid, vision.spatial_merge_size, vision.temporal_patch_size, fps, qwen3)
            elif isinstance(part, tuple) and part and part[0] == "image":
                pixels, grid = patchify(part[1][None], *geometry)
                images.append(pixels)
                image_grids.append(grid)
                ids += [VISION_START_ID] + [IMAGE_ID] * (grid[1] * grid[2] // geometry[2] ** 2) + [VISION_END_ID]
            else:
                ids += [int(i) for i in part]
        rows.append(ids)
    batch = _pad(rows, side, labels)
    if videos:
        batch["pixel_values_videos"] = torch.cat(videos)
        batch["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        if not qwen3:
            batch["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    if images:
        batch["pixel_values"] = torch.cat(images)
        batch["image_grid_thw"] = torch.tensor(image_grids, dtype=torch.long)
    return batch


def _video_ids(grid: list, merge: int, tps: int, fps: float, qwen3: bool) -> list:
    """One video's ids: Qwen2.5-VL one run framed by vision start/end; Qwen3-VL one timestamped run per slice
    inside the template's own start/end pair."""
    t, gh, gw = grid
    per_slice = gh * gw // (merge * merge)
    if not qwen3:
        return [VISION_START_ID] + [VIDEO_ID] * (t * per_slice) + [VISION_END_ID]
    ids = [VISION_START_ID]
    for s in range(t):
        seconds = (s * tps + (s * tps + tps - 1)) / 2 / fps
        ids += timestamp_ids(seconds) + [VISION_START_ID] + [VIDEO_ID] * per_slice + [VISION_END_ID]
    return ids + [VISION_END_ID]


def _pad(rows: list, side: str, labels: bool) -> dict:
    """Pad id rows on `side` with PAD_ID; mask, `mm_token_type_ids` and (optionally) labels."""
    ids, mask = synthetic.pad_rows(rows, side, PAD_ID)
    types = torch.where(ids == VIDEO_ID, 2, torch.where(ids == IMAGE_ID, 1, 0)) * mask
    batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types.to(torch.int32)}
    if labels:
        batch["labels"] = ids.masked_fill((mask == 0) | (types != 0), -100)
    return batch


def text_ids(length: int, seed: int) -> list:
    """`length` seeded ordinary text ids (never special ids)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TEXT_ID, VOCAB_SIZE, (length,), generator=gen).tolist()


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_tokenizer():
    """An offline word-level `PreTrainedTokenizerFast` over VOCAB_SIZE ids with Qwen VL's special tokens at the
    ids of the tiny configs (timestamps `<1.5 seconds>` are not parsed; `qwen_vl_inputs` builds them as ids)."""
    return synthetic.word_level_tokenizer(
        specials=["<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                  "<|vision_end|>", "<|im_start|>", "seconds"] + [str(d) for d in range(10)],
        words=["user", "assistant", "system", "\n", "what", "is", "happening", "in", "the", "video", "?", ".", "<",
               ">"],
        isolated="\n?.<>", pad="<|endoftext|>", unk="<|endoftext|>", eos="<|im_end|>",
        additional=["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>"],
        chat_template=CHAT_TEMPLATE, vocab_size=VOCAB_SIZE,
    )


def build_qwen_processor(config: Any, max_pixels: int = 48 * 80):
    """The stock Qwen2.5-VL / Qwen3-VL processor for a tiny `config` with `build_qwen_tokenizer()`: frames resized
    to at most `max_pixels` (multiples of patch * merge). Its video processor needs torchvision (transformers 5.x)."""
    import transformers

    vision = config.vision_config
    geometry = dict(patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
                    merge_size=vision.spatial_merge_size)
    unit = (vision.patch_size * vision.spatial_merge_size) ** 2
    size = {"shortest_edge": unit, "longest_edge": max_pixels}
    images = transformers.Qwen2VLImageProcessor(size=size, **geometry)
    if config.model_type == "qwen2_5_vl":
        videos = transformers.Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False, **geometry)
        cls = transformers.Qwen2_5_VLProcessor
    else:
        videos = transformers.Qwen3VLVideoProcessor(size=size, **geometry)
        cls = transformers.Qwen3VLProcessor
    return cls(image_processor=images, video_processor=videos, tokenizer=build_qwen_tokenizer(),
               chat_template=CHAT_TEMPLATE)


def save_random_qwen_checkpoint(folder: Union[str, Path], kind: str = "qwen2_5_vl", config: Any = None,
                                seed: int = 0, processor: bool = False) -> Path:
    """A complete offline checkpoint in `folder`: a random tiny Qwen VL model and its word-level tokenizer, and
    with `processor=True` the stock processor (needs torchvision)."""
    folder = Path(folder)
    config = qwen_vl_config(kind) if config is None else config
    random_qwen_vl(config, seed=seed).save_pretrained(folder)
    build_qwen_tokenizer().save_pretrained(folder)
    if processor:
        build_qwen_processor(config).save_pretrained(folder)
    return folder
