"""Property (hypothesis): a batch gives each sample what it gets alone, over batch size, padding side, frame counts,
several videos per sample, images, markers and budgets (forward's last real logits, statistics, greedy tokens)."""

import functools

import hf_tiny as tiny
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyntok_plugin import patch_llava

MIXED_OK = tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= (4, 54)
MAX_FRAMES = 3

sample_strategy = st.fixed_dictionaries({
    "prefix": st.integers(0, 3),
    "frames": st.lists(st.integers(1, MAX_FRAMES), min_size=0, max_size=2),
    "image": st.booleans() if MIXED_OK else st.just(False),
    "suffix": st.integers(1, 3),
})
MARKERS = st.sampled_from(["row", "frame", "video", "none"])
settings_strategy = st.one_of(
    st.fixed_dictionaries({"threshold": st.floats(-1.5, 1.2), "marker": MARKERS}),
    st.fixed_dictionaries({"threshold": st.none(), "target_ratio": st.floats(0.3, 1.0), "marker": MARKERS}),
    # max_tokens from 30: above the floor (one token per row plus its marker) of a 3-frame video, 24 tokens
    st.fixed_dictionaries({"threshold": st.just(0.8), "max_tokens": st.integers(30, 60), "marker": st.just("row")}),
)


@functools.lru_cache(maxsize=1)
def _model():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    return model


def _sample(spec, seed):
    parts = [tiny.text_ids(spec["prefix"], seed=seed)]
    if spec["image"]:
        parts += [("image", 1), [tiny.FIRST_TEXT_ID]]
    parts += [("video", f) for f in spec["frames"]]
    parts.append(tiny.text_ids(spec["suffix"], seed=seed + 1))
    return tiny.sample_ids(*parts)


def _pixels(specs, seed):
    """The keyword arguments carrying these samples' videos (a ragged list) and images, in order."""
    videos = [tiny.random_videos(1, f, seed=seed + i)[0] for i, f in enumerate(f for s in specs for f in s["frames"])]
    kwargs = {"pixel_values_videos": videos} if videos else {}
    images = sum(s["image"] for s in specs)
    if images:
        kwargs["pixel_values"], kwargs["image_sizes"] = tiny.random_images(images, seed=seed)
    return kwargs


def _run(model, samples, kwargs, side):
    """Last real logits, statistics and two greedy tokens per sample."""
    batch = tiny.pad_batch(samples, side=side)
    out = model(**batch, **kwargs)
    mask = getattr(out, "attention_mask", batch["attention_mask"])
    last = torch.stack([out.logits[i, int(row.nonzero().max())] for i, row in enumerate(mask)])
    stats = list(model.dyntok.last_stats)
    left = tiny.pad_batch(samples, side="left")
    new = model.generate(**left, **kwargs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    return last, stats, new[:, left["input_ids"].shape[1]:]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sample_strategy, min_size=1, max_size=3), st.sampled_from(["left", "right"]), settings_strategy,
       st.integers(0, 1000))
def test_a_batch_gives_each_sample_what_it_gets_alone(specs, side, dyntok, seed):
    model = _model()
    model.dyntok.update(**{"max_tokens": None, "target_ratio": None, **dyntok})
    samples = [_sample(spec, seed + 10 * i) for i, spec in enumerate(specs)]
    kwargs = _pixels(specs, seed)
    batch_last, batch_stats, batch_new = _run(model, samples, kwargs, side)
    alone_stats = []
    for i, spec in enumerate(specs):
        before = specs[:i]
        own = _pixels(specs, seed)  # the batch's pixels, cut to this sample's videos and images
        first_video = sum(len(s["frames"]) for s in before)
        first_image = sum(s["image"] for s in before)
        single = {}
        if spec["frames"]:
            single["pixel_values_videos"] = own["pixel_values_videos"][first_video:first_video + len(spec["frames"])]
        if spec["image"]:
            single["pixel_values"] = own["pixel_values"][first_image:first_image + 1]
            single["image_sizes"] = own["image_sizes"][first_image:first_image + 1]
        last, stats, new = _run(model, [samples[i]], single, side)
        torch.testing.assert_close(batch_last[i], last[0], rtol=1e-4, atol=1e-4)
        assert batch_new[i].tolist() == new[0].tolist()
        alone_stats += stats if spec["frames"] else []
    if any(spec["frames"] for spec in specs):
        assert batch_stats == alone_stats
