"""lmms-eval integration: the `llava_onevision_dyntok` model driven through lmms-eval's own registry, argument
parser, `Instance` requests, metrics and command line, on a tiny random checkpoint and real clips, offline.

Runs when the `eval` extra (lmms-eval 0.7) is installed; skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install 'dyntok-plugin[eval]'")
pytest.importorskip("torchvision", reason="the transformers LLaVA-OneVision video processor needs torchvision")

import commands  # noqa: E402
import hf_tiny  # noqa: E402
from lmms_eval.api.instance import GenerationResult, Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.models.model_utils.gen_metrics import reset_logged_metrics, summarize_logged_metrics  # noqa: E402

from dyntok_plugin import DynTokConfig, is_patched  # noqa: E402
from dyntok_plugin.eval.backends import LLAVA_PACKAGES  # noqa: E402
from dyntok_plugin.eval.lmms import MODEL_ID, LlavaOneVisionDynTok  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "city_cc0.mp4"
TASKS = Path(__file__).resolve().parent / "lmms_eval_tasks"
FRAMES = 4
GRID = hf_tiny.POOLED * hf_tiny.POOLED  # pooled tokens per frame
TASK, SPLIT = "clips", "test"
QUESTIONS = ["what is happening in the video ?", "what is in the video ?", "is the video happening ?"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random LLaVA-OneVision with tokenizer, chat template and a processor sized for it."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    folder = hf_tiny.save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ov"))
    size = {"height": hf_tiny.IMAGE_SIZE, "width": hf_tiny.IMAGE_SIZE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=size, crop_size=size, image_grid_pinpoints=[[hf_tiny.IMAGE_SIZE, hf_tiny.IMAGE_SIZE]]
        ),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=hf_tiny.build_tokenizer(),
        num_image_tokens=hf_tiny.GRID * hf_tiny.GRID,
        vision_feature_select_strategy="full",
        chat_template=hf_tiny.CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def second_clip(tmp_path_factory) -> Path:
    """A second real clip: the bundled one's second half, mirrored and played backwards, re-encoded with PyAV."""
    import av
    import numpy as np

    from dyntok_plugin.video import load_video

    frames = load_video(CLIP, 60)[30:][::-1, :, ::-1]
    path = tmp_path_factory.mktemp("clips") / "city_mirrored.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def make_model(checkpoint: Path, args: str = "", batch_size: int = 1, frames: int = FRAMES) -> LlavaOneVisionDynTok:
    """The registered class, built the way lmms-eval builds it from `--model_args` and `--batch_size`."""
    arg_string = ",".join(part for part in (f"pretrained={checkpoint},max_frames_num={frames}", args) if part)
    return get_model(MODEL_ID).create_from_arg_string(arg_string, {"batch_size": str(batch_size), "device": "cpu"})


def requests_for(model, clips, kind: str = "generate_until", continuation: str = " the") -> list:
    """lmms-eval `Instance`s over one document per (clip, question), registered in the model's task_dict."""
    docs = [{"video": str(clip), "question": q} for clip, q in zip(clips, QUESTIONS)]
    model.task_dict = {TASK: {SPLIT: docs}}
    gen_kwargs = {"max_new_tokens": 3, "temperature": 0, "until": ["?"]}
    out = []
    for doc_id, doc in enumerate(docs):
        second = gen_kwargs if kind == "generate_until" else continuation
        args = (doc["question"], second, lambda d: [d["video"]], doc_id, TASK, SPLIT)
        out.append(Instance(kind, args, doc_id, {"task": TASK, "doc_id": doc_id, "repeats": 1}))
    return out


def counts(results: list) -> list:
    assert all(isinstance(r, GenerationResult) for r in results)
    return [r.token_counts.to_dict() for r in results]


def test_registered_through_the_entry_point_group():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="lmms_eval.models")}
    assert names.get(MODEL_ID) == "dyntok_plugin.eval.lmms:lmms_eval_manifest", (
        "the lmms_eval.models entry point is not installed: add it to setup.py and reinstall the package"
    )
    assert get_model(MODEL_ID) is LlavaOneVisionDynTok


def test_model_args_reach_the_patched_model(checkpoint):
    model = make_model(
        checkpoint,
        "dyntok_threshold=0.8,dyntok_marker=frame,dyntok_similarity=projected,dyntok_seed=3,"
        "dyntok_train_threshold_range=0.5:0.9,dyntok_target_ratio=0.5",
        batch_size=2,
    )
    assert is_patched(model.model) and model.batch_size == 2
    expected = DynTokConfig(threshold=0.8, marker="frame", similarity="projected", seed=3,
                            train_threshold_range=(0.5, 0.9), target_ratio=0.5)
    assert model.model.dyntok.to_dict() == expected.to_dict()
    budget_only = make_model(checkpoint, "dyntok_threshold=none,dyntok_max_tokens=40")
    assert budget_only.model.dyntok.threshold is None and budget_only.model.dyntok.max_tokens == 40
    assert not is_patched(make_model(checkpoint, "dyntok=false").model)


@pytest.mark.parametrize(
    "args, error, words",
    [
        ("dyntok_marker=diagonal", ValueError, ["marker", "diagonal"]),
        ("dyntok_bogus=1", ValueError, ["bogus", "dyntok_<setting>"]),
        ("dyntok_threshold=none", ValueError, ["max_tokens"]),
        ("dyntok_train_threshold_range=low", ValueError, ["lo:hi"]),
        ("frames=8", TypeError, ["frames", "max_frames_num"]),
        ("dyntok=false,dyntok_threshold=0.5", ValueError, ["unpatched", "dyntok_threshold"]),
        ("backend=vllm", ValueError, ["backend", "vllm"]),
        ("max_frames_num=0", ValueError, ["max_frames_num"]),
    ],
)
def test_bad_model_args_name_the_problem(checkpoint, args, error, words):
    with pytest.raises(error) as info:
        make_model(checkpoint, args)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_automatic_batch_size_is_refused(checkpoint):
    with pytest.raises(ValueError, match="--batch_size N"):
        get_model(MODEL_ID).create_from_arg_string(f"pretrained={checkpoint}", {"batch_size": "auto"})


def test_unknown_checkpoint_kind_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="neither a Hugging Face LLaVA-OneVision checkpoint"):
        make_model(tmp_path)


def test_llava_next_backend_needs_llava(checkpoint):
    if any(importlib.util.find_spec(name) for name in LLAVA_PACKAGES):
        pytest.skip("LLaVA-NeXT (or llavaction) is installed here; this checks the message given without it")
    with pytest.raises(ImportError, match="LLaVA-NeXT"):
        make_model(checkpoint, "backend=llava")


def test_batches_answer_as_single_requests(checkpoint, second_clip):
    clips = [CLIP, second_clip, CLIP]
    single = make_model(checkpoint, "dyntok_threshold=0.95")
    batched = make_model(checkpoint, "dyntok_threshold=0.95", batch_size=2)
    one = single.generate_until(requests_for(single, clips))
    two = batched.generate_until(requests_for(batched, clips))
    assert [r.text for r in one] == [r.text for r in two]
    assert counts(one) == counts(two)
    stats = counts(one)
    assert stats[0]["dyntok_tokens_out"] != stats[1]["dyntok_tokens_out"], "different clips should compress differently"
    assert stats[0]["dyntok_tokens_out"] == stats[2]["dyntok_tokens_out"]


def test_per_sample_statistics_follow_the_threshold(checkpoint, second_clip):
    clips = [CLIP, second_clip]
    by_threshold = {}
    for threshold in (1.1, 0.9, -1.1):
        model = make_model(checkpoint, f"dyntok_threshold={threshold}", batch_size=2)
        by_threshold[threshold] = counts(model.generate_until(requests_for(model, clips)))
    rows = FRAMES * hf_tiny.POOLED
    for sample in range(len(clips)):
        kept, mid, merged = (by_threshold[t][sample] for t in (1.1, 0.9, -1.1))
        for entry in (kept, mid, merged):
            assert entry["dyntok_videos"] == 1 and entry["dyntok_frames"] == FRAMES
            assert entry["dyntok_tokens_in"] == FRAMES * GRID
            assert math.isclose(entry["dyntok_ratio"], entry["dyntok_tokens_out"] / entry["dyntok_tokens_in"])
            # the language model's prompt shrinks by exactly what DynTok removed
            shrink = entry["dyntok_tokens_out"] - kept["dyntok_tokens_out"]
            assert entry["input_tokens"] - kept["input_tokens"] == shrink
        assert kept["dyntok_tokens_out"] == rows * (hf_tiny.POOLED + 1)  # every token plus one marker per row
        assert merged["dyntok_tokens_out"] == rows * 2  # one token plus one marker per row
        assert merged["dyntok_tokens_out"] <= mid["dyntok_tokens_out"] <= kept["dyntok_tokens_out"]


def test_budget_settings_are_met(checkpoint, second_clip):
    """A budget alone gives exactly that many tokens per video; with a threshold it is a cap."""
    exact = {
        "dyntok_threshold=none,dyntok_max_tokens=40": 40,
        "dyntok_threshold=none,dyntok_target_ratio=0.5": FRAMES * GRID // 2,
    }
    for args, expected in exact.items():
        model = make_model(checkpoint, args, batch_size=2)
        out = counts(model.generate_until(requests_for(model, [CLIP, second_clip])))
        assert [c["dyntok_tokens_out"] for c in out] == [expected] * 2
    free = make_model(checkpoint, "dyntok_threshold=0.99", batch_size=2)
    capped = make_model(checkpoint, "dyntok_threshold=0.99,dyntok_max_tokens=40", batch_size=2)
    above = [c["dyntok_tokens_out"] > 40 for c in counts(free.generate_until(requests_for(free, [CLIP, second_clip])))]
    assert above == [True, True], "the threshold alone should leave more than the budget here"
    out = counts(capped.generate_until(requests_for(capped, [CLIP, second_clip])))
    assert [c["dyntok_tokens_out"] for c in out] == [40, 40]


def test_no_op_settings_reproduce_the_baseline(checkpoint, second_clip):
    """Threshold >= 1 with the stock single marker equals the unpatched model, answers and log-likelihoods."""
    clips = [CLIP, second_clip]
    base = make_model(checkpoint, "dyntok=false", batch_size=2)
    noop = make_model(checkpoint, "dyntok_threshold=1.1,dyntok_marker=video", batch_size=2)
    base_out, noop_out = base.generate_until(requests_for(base, clips)), noop.generate_until(requests_for(noop, clips))
    assert [r.text for r in base_out] == [r.text for r in noop_out]
    for b, n in zip(counts(base_out), counts(noop_out)):
        assert b["input_tokens"] == n["input_tokens"]
        assert "dyntok_tokens_out" not in b and n["dyntok_tokens_out"] == n["dyntok_tokens_in"] + 1
    base_ll = base.loglikelihood(requests_for(base, clips, "loglikelihood"))
    noop_ll = noop.loglikelihood(requests_for(noop, clips, "loglikelihood"))
    for (lb, gb), (ln, gn) in zip(base_ll, noop_ll):
        assert lb < 0 and math.isclose(lb, ln, rel_tol=1e-5, abs_tol=1e-5) and gb == gn


def test_loglikelihood_scores_the_continuation(checkpoint):
    model = make_model(checkpoint, "dyntok_threshold=0.9")
    short, = model.loglikelihood(requests_for(model, [CLIP], "loglikelihood", " the"))
    longer, = model.loglikelihood(requests_for(model, [CLIP], "loglikelihood", " the video"))
    assert longer[0] < short[0] < 0  # one more token can only lower the total log-probability


def test_run_level_means_reach_the_throughput_summary(checkpoint, second_clip, tmp_path):
    side_file = tmp_path / "stats" / "dyntok.jsonl"
    model = make_model(checkpoint, f"dyntok_threshold=0.9,dyntok_stats_path={side_file}", batch_size=2)
    reset_logged_metrics()
    stats = counts(model.generate_until(requests_for(model, [CLIP, second_clip, CLIP])))
    summary = summarize_logged_metrics()
    ratio = sum(s["dyntok_tokens_out"] for s in stats) / sum(s["dyntok_tokens_in"] for s in stats)
    assert math.isclose(summary["avg_dyntok_ratio"], ratio)
    lines = [json.loads(line) for line in side_file.read_text().splitlines()]
    assert [(line["task"], line["doc_id"]) for line in lines] == [(TASK, 0), (TASK, 1), (TASK, 2)]
    assert [line["dyntok_tokens_out"] for line in lines] == [s["dyntok_tokens_out"] for s in stats]


def test_short_videos_give_all_their_frames(checkpoint, second_clip):
    from dyntok_plugin.video import probe_video

    total = probe_video(second_clip).frames
    model = make_model(checkpoint, "dyntok_threshold=0.5", frames=total + 10)
    entry, = counts(model.generate_until(requests_for(model, [second_clip])))
    assert entry["dyntok_frames"] == total and entry["dyntok_tokens_in"] == total * GRID


def test_images_pass_through_and_mix_with_videos(checkpoint):
    from PIL import Image

    from dyntok_plugin.video import load_video

    image = Image.fromarray(load_video(CLIP, 1)[0])
    model = make_model(checkpoint, "dyntok_threshold=0.9", batch_size=3)
    requests = requests_for(model, [CLIP, CLIP, CLIP])
    visuals = {0: [image], 1: [str(CLIP)], 2: [str(CLIP), image]}
    for req in requests:
        req.arguments = req.arguments[:2] + (lambda d, i=req.doc_id: visuals[i],) + req.arguments[3:]
    image_only, video_only, both = counts(model.generate_until(requests))
    assert image_only["dyntok_videos"] == 0 and image_only["dyntok_tokens_out"] == 0
    assert both["dyntok_tokens_out"] == video_only["dyntok_tokens_out"] > 0
    assert both["input_tokens"] > video_only["input_tokens"]


def test_visuals_of_unknown_type_are_refused(checkpoint):
    model = make_model(checkpoint)
    requests = requests_for(model, [CLIP])
    requests[0].arguments = requests[0].arguments[:2] + (lambda d: [42],) + requests[0].arguments[3:]
    with pytest.raises(TypeError, match="video file paths and PIL images"):
        model.generate_until(requests)


def test_multi_round_generation_is_refused_clearly(checkpoint):
    with pytest.raises(NotImplementedError, match="multi-round"):
        make_model(checkpoint).generate_until_multi_round([])


def test_command_line_on_a_local_task(checkpoint, tmp_path):
    """`lmms-eval --model llava_onevision_dyntok ...` on an offline task YAML; per-sample stats in the samples log."""
    executable = Path(sys.executable).with_name("lmms-eval")
    assert executable.exists(), f"lmms-eval's command line is not installed next to {sys.executable}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "out"
    command = [
        str(executable), "--model", MODEL_ID,
        "--model_args", f"pretrained={checkpoint},dyntok_threshold=0.9,max_frames_num={FRAMES},device=cpu",
        "--tasks", "dyntok_clip_qa", "--include_path", str(TASKS),
        "--batch_size", "2", "--log_samples", "--output_path", str(out),
    ]

    def wrote_its_results(done) -> None:
        # lmms-eval logs some failures (an import error, a task it could not build) and still exits 0
        assert list(out.rglob("*_results.json")), f"no *_results.json under {out}"
        assert list(out.rglob("*_samples_dyntok_clip_qa.jsonl")), f"no *_samples_dyntok_clip_qa.jsonl under {out}"

    commands.run(command, env=env, timeout=600, check=wrote_its_results)
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("*_samples_dyntok_clip_qa.jsonl")).read_text().splitlines()]
    assert "exact_match,none" in results["results"]["dyntok_clip_qa"]
    assert len(samples) == 3
    entries = [s["token_counts"][0] for s in samples]
    assert all(e["dyntok_tokens_in"] == FRAMES * GRID and e["input_tokens"] > e["dyntok_tokens_out"] for e in entries)
    ratio = sum(e["dyntok_tokens_out"] for e in entries) / sum(e["dyntok_tokens_in"] for e in entries)
    assert math.isclose(results["throughput"]["avg_dyntok_ratio"], ratio)
    assert results["efficiency"]["overall"]["total_input_tokens"] == sum(e["input_tokens"] for e in entries)
