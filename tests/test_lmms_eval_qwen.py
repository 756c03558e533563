"""lmms-eval integration for Qwen VL: `qwen2_5_vl_dyntok` / `qwen3_vl_dyntok` driven through lmms-eval's registry,
argument parser and `Instance` requests, on tiny random checkpoints with real Qwen processors and a real clip, offline.
Also: the hand-built pixels of the `dyntok` command equal the real video processor's.

Runs when the `eval` extra (lmms-eval 0.7) and torchvision (the Qwen video processors) are installed.
"""

from __future__ import annotations

import math
from importlib import metadata

import pytest

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install 'dyntok-plugin[eval]'")
pytest.importorskip("torchvision", reason="the transformers Qwen VL video processors need torchvision")

import media  # noqa: E402
import torch  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402

from dyntok_plugin import is_patched  # noqa: E402
from dyntok_plugin.eval.lmms import QWEN3_MODEL_ID, QWEN25_MODEL_ID, Qwen3VLDynTok, Qwen25VLDynTok  # noqa: E402
from dyntok_plugin.hf import synthetic_qwen  # noqa: E402
from dyntok_plugin.hf.qwen_inputs import default_normalisation, video_pixels  # noqa: E402
from dyntok_plugin.video import load_video  # noqa: E402

CLIP = media.CITY_CLIP
FRAMES = 4
MODEL_IDS = {"qwen2_5_vl": QWEN25_MODEL_ID, "qwen3_vl": QWEN3_MODEL_ID}
TASK, SPLIT = "clips", "test"
QUESTIONS = ["what is happening in the video ?", "what is in the video ?"]


@pytest.fixture(scope="module", params=list(MODEL_IDS))
def checkpoint(request, tmp_path_factory):
    folder = synthetic_qwen.save_random_qwen_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=4,
                                                        processor=True)
    return request.param, folder


def make_model(checkpoint, args: str = "", batch_size: int = 1):
    kind, folder = checkpoint
    arg_string = ",".join(part for part in (f"pretrained={folder},max_frames_num={FRAMES}", args) if part)
    return get_model(MODEL_IDS[kind]).create_from_arg_string(arg_string, {"batch_size": str(batch_size),
                                                                         "device": "cpu"})


def requests_for(model, kind: str = "generate_until") -> list:
    from lmms_eval.api.instance import Instance

    docs = [{"video": str(CLIP), "question": q} for q in QUESTIONS]
    model.task_dict = {TASK: {SPLIT: docs}}
    gen_kwargs = {"max_new_tokens": 3, "temperature": 0, "until": ["?"]}
    out = []
    for doc_id, doc in enumerate(docs):
        second = gen_kwargs if kind == "generate_until" else " the"
        args = (doc["question"], second, lambda d: [d["video"]], doc_id, TASK, SPLIT)
        out.append(Instance(kind, args, doc_id, {"task": TASK, "doc_id": doc_id, "repeats": 1}))
    return out


def processor_grid(checkpoint) -> tuple:
    """`(t, h', w')` the checkpoint's own video processor gives the clip (Qwen3-VL bounds the whole video's pixels,
    Qwen2.5-VL each frame's)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint[1]).video_processor
    grid = processor(videos=[load_video(CLIP, FRAMES)], do_sample_frames=False)["video_grid_thw"][0].tolist()
    return grid[0], grid[1] // 2, grid[2] // 2


def counts(results: list) -> list:
    return [r.token_counts.to_dict() for r in results]


def test_registered_through_the_entry_point_group():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="lmms_eval.models")}
    assert names.get(QWEN25_MODEL_ID) == "dyntok_plugin.eval.lmms:qwen2_5_vl_manifest"
    assert names.get(QWEN3_MODEL_ID) == "dyntok_plugin.eval.lmms:qwen3_vl_manifest"
    assert get_model(QWEN25_MODEL_ID) is Qwen25VLDynTok and get_model(QWEN3_MODEL_ID) is Qwen3VLDynTok


def test_a_checkpoint_of_the_other_family_is_refused(checkpoint):
    kind, folder = checkpoint
    other = QWEN3_MODEL_ID if kind == "qwen2_5_vl" else QWEN25_MODEL_ID
    with pytest.raises(ValueError, match=f"{other} serves .* checkpoints; .* is a '{kind}' one"):
        get_model(other).create_from_arg_string(f"pretrained={folder}", {"batch_size": "1", "device": "cpu"})


def test_hand_built_pixels_equal_the_video_processor(checkpoint):
    """The command's frames -> patch rows (no torchvision) give the processor's `pixel_values_videos` and grid."""
    kind, _ = checkpoint
    frames = load_video(CLIP, FRAMES)[:, 11:259, 40:440]  # 248x400 crop: a multiple of 8, so no resize either way
    config = synthetic_qwen.qwen_vl_config(kind)
    processor = synthetic_qwen.build_qwen_processor(config).video_processor
    mean, std = default_normalisation(kind)  # what the command uses when a checkpoint saved no preprocessor config
    assert (tuple(processor.image_mean), tuple(processor.image_std)) == (mean, std)
    stock = processor(videos=[frames], do_resize=False, do_sample_frames=False, return_tensors="pt")
    pixels, grid = video_pixels(frames, config.vision_config, mean, std, max_pixels=248 * 400)
    assert grid.tolist() == stock["video_grid_thw"].tolist() == [[FRAMES // 2, 62, 100]]
    torch.testing.assert_close(pixels, stock["pixel_values_videos"], rtol=0, atol=1e-5)


def test_no_op_settings_reproduce_the_baseline_and_merging_shortens_the_prompt(checkpoint):
    base = make_model(checkpoint, "dyntok=false", batch_size=2)
    noop = make_model(checkpoint, "dyntok_threshold=1.5", batch_size=2)  # marker "none": the hosts' default
    merged = make_model(checkpoint, "dyntok_threshold=-1.5")
    assert not is_patched(base.model) and is_patched(noop.model)
    base_out, noop_out = base.generate_until(requests_for(base)), noop.generate_until(requests_for(noop))
    assert [r.text for r in base_out] == [r.text for r in noop_out]
    slices, rows, cols = processor_grid(checkpoint)
    assert slices == FRAMES // 2
    for b, n, m in zip(counts(base_out), counts(noop_out), counts(merged.generate_until(requests_for(merged)))):
        assert "dyntok_tokens_out" not in b and b["input_tokens"] > slices * rows * cols
        assert n["input_tokens"] == b["input_tokens"]
        assert n["dyntok_tokens_in"] == n["dyntok_tokens_out"] == slices * rows * cols
        assert m["dyntok_tokens_out"] == slices * rows  # one token per row of each slice
        assert b["input_tokens"] - m["input_tokens"] == slices * rows * cols - slices * rows
        assert math.isclose(m["dyntok_ratio"], m["dyntok_tokens_out"] / m["dyntok_tokens_in"])
    for (lb, gb), (ln, gn) in zip(base.loglikelihood(requests_for(base, "loglikelihood")),
                                  noop.loglikelihood(requests_for(noop, "loglikelihood"))):
        assert lb < 0 and math.isclose(lb, ln, rel_tol=1e-5, abs_tol=1e-5) and gb == gn
