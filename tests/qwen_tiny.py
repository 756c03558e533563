"""Tiny random Qwen2.5-VL / Qwen3-VL models, sample batches and a plain-loop reference of DynTok on them.

The models and inputs come from the package (`dyntok_plugin.hf.synthetic_qwen`). The reference follows the method
as issue 15 states it, with loops: the stock video features of each video, `reference.reference_dyntok` on its
merged grid (similarity: the tower's pre-merger states averaged over each merge window, put in raster order with
the stock window index), DeepStack levels averaged over the same groups, and the shortened sequence walked token
by token, positions taken from the stock `get_rope_index` of the full sequence. It then runs the unpatched model on
those inputs (`mm_encoder_outputs`, explicit `position_ids`).
"""

from __future__ import annotations

import torch

from dyntok_plugin.hf import synthetic_qwen as sq
from reference import reference_dyntok

KINDS = sq.KINDS
FAST_KINDS = ("qwen2_5_vl", "qwen3_vl")  # the MoE variant is ~5x slower on CPU: fewer tests use it


def build(kind: str, seed: int = 0):
    return sq.random_qwen_vl(sq.qwen_vl_config(kind), seed=seed)


def samples(seed: int = 0, image: bool = True) -> list:
    """Two samples: different text lengths, frame counts and (non-square) resolutions; the second with an image
    and a second video."""
    frames = lambda n, h, w, s: sq.random_frames(n, h, w, seed=seed + s)  # noqa: E731
    second = [sq.text_ids(2, seed + 3), ("video", frames(2, 32, 24, 2), 1.0)]
    if image:
        second.append(("image", frames(1, 16, 16, 5)[0]))
    second += [sq.text_ids(3, seed + 6), ("video", frames(4, 24, 40, 7), 4.0), sq.text_ids(4, seed + 4)]
    return [[sq.text_ids(3, seed + 1), ("video", frames(4, 24, 40, 1)), sq.text_ids(5, seed + 2)], second]


def inputs(model, sample_list, side="left", labels=False) -> dict:
    return sq.qwen_vl_inputs(model.config, sample_list, side=side, labels=labels)


def window_means(model, batch) -> torch.Tensor:
    """`(sum t*h'*w', C)`: the tower's pre-merger states averaged over each merge window, in raster order."""
    from transformers.vision_utils import get_vision_window_index

    owner = model.model
    visual = owner.visual
    captured = {}

    def keep_input(module, args, output):
        captured["x"] = args[0]

    handle = visual.merger.register_forward_hook(keep_input)
    try:
        owner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"], return_dict=True)
    finally:
        handle.remove()
    unit = visual.spatial_merge_size**2
    means = captured["x"].reshape(-1, unit, captured["x"].shape[-1]).double().mean(1)
    if model.config.model_type != "qwen2_5_vl":
        return means
    vision = model.config.vision_config
    index, _ = get_vision_window_index(batch["video_grid_thw"], vision.spatial_merge_size, vision.window_size,
                                       vision.patch_size)
    return means[torch.argsort(index)]


def reference_logits(model, batch, threshold, marker="none", marker_vector=None, similarity="vision"):
    """Logits of the unpatched `model` on the reference's shortened inputs, left-padded, with their mask."""
    owner = model.model
    merge = model.config.vision_config.spatial_merge_size
    grids = [(t, h // merge, w // merge) for t, h, w in batch["video_grid_thw"].tolist()]
    with torch.no_grad():
        video = owner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"], return_dict=True)
        sims = window_means(model, batch).split([t * h * w for t, h, w in grids]) if similarity == "vision" else None
        positions = owner.get_rope_index(
            batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            video_grid_thw=batch["video_grid_thw"], attention_mask=batch["attention_mask"],
            **({"second_per_grid_ts": batch["second_per_grid_ts"]} if "second_per_grid_ts" in batch else {}),
        )[0]
    levels = list(getattr(video, "deepstack_features", None) or [])
    per_video = []
    for v, (t, h, w) in enumerate(grids):
        feats = video.pooler_output[v].reshape(t, h, w, -1)
        sim = None if sims is None else sims[v].reshape(t, h, w, -1)
        ref = reference_dyntok(feats, sim if sim is not None else feats, threshold, marker, marker_vector)
        level_tokens = [_group_means(level[v], ref.token_map.flatten(), ref.is_marker) for level in levels]
        per_video.append((ref, level_tokens))
    return _run_reference(model, batch, positions, grids, per_video, marker)


def _group_means(level: torch.Tensor, token_map: torch.Tensor, is_marker: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(is_marker), level.shape[-1], dtype=torch.float64)
    for k in range(len(is_marker)):
        if not is_marker[k]:
            out[k] = level[token_map == k].double().mean(0)
    return out


def _anchored(ref, flat_index: int, marker: str, frames: int, cols: int, rows: int) -> tuple[bool, bool]:
    """(opens a group, a marker is anchored here) for one merged-grid position of a video."""
    token_map = ref.token_map.flatten()
    col = flat_index % cols
    opens = col == 0 or token_map[flat_index] != token_map[flat_index - 1]
    row_end = col == cols - 1
    frame_end = row_end and (flat_index // cols) % rows == rows - 1
    video_end = flat_index == frames * rows * cols - 1
    return opens, {"row": row_end, "frame": frame_end, "video": video_end, "none": False}[marker]


def _run_reference(model, batch, positions, grids, per_video, marker):
    video_id = model.config.video_token_id
    ids_rows, pos_rows, video_tokens, level_rows = [], [], [], [[] for _ in per_video[0][1]]
    video, index = 0, 0
    for b in range(batch["input_ids"].shape[0]):
        ids, pos = [], []
        for l in range(batch["input_ids"].shape[1]):
            if not batch["attention_mask"][b, l]:
                continue
            token = int(batch["input_ids"][b, l])
            if token != video_id:
                ids.append(token)
                pos.append(positions[:, b, l])
                continue
            t, h, w = grids[video]
            ref, levels = per_video[video]
            opens, anchored = _anchored(ref, index, marker, t, w, h)
            for _ in range(int(opens) + int(anchored)):
                ids.append(video_id)
                pos.append(positions[:, b, l])
            index += 1
            if index == t * h * w:
                video_tokens.append(ref.tokens.float())
                for rows, level in zip(level_rows, levels):
                    rows.append(level.float())
                video, index = video + 1, 0
        ids_rows.append(ids)
        pos_rows.append(torch.stack(pos, 1))
    return _call_unpatched(model, batch, ids_rows, pos_rows, video_tokens, level_rows)


def _call_unpatched(model, batch, ids_rows, pos_rows, video_tokens, level_rows):
    width = max(len(r) for r in ids_rows)
    ids = torch.full((len(ids_rows), width), sq.PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    position_ids = torch.zeros(3, len(ids_rows), width, dtype=torch.long)
    for b, (row, pos) in enumerate(zip(ids_rows, pos_rows)):
        ids[b, width - len(row):] = torch.tensor(row)
        mask[b, width - len(row):] = 1
        position_ids[:, b, width - len(row):] = pos
    owner = model.model
    with torch.no_grad():
        encoded = {"video": owner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"],
                                                     return_dict=True)}
        encoded["video"].pooler_output = tuple(video_tokens)
        if level_rows:
            encoded["video"].deepstack_features = [tuple(rows) for rows in level_rows]
        if "pixel_values" in batch:
            encoded["image"] = owner.get_image_features(batch["pixel_values"], batch["image_grid_thw"],
                                                        return_dict=True)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                       mm_encoder_outputs=encoded).logits
    return logits, mask
