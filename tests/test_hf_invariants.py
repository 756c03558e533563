"""DESIGN section 4 invariants on a tiny random HF LLaVA-OneVision: identity, batch = single, cache = recompute,
training."""

import hf_tiny as tiny
import pytest
import torch
import torch.nn.functional as F

from dyntok_plugin import patch_llava

FRAMES = 3


def _samples():
    """Two prompts of different lengths, one video each, placed differently."""
    return [
        tiny.sample_ids(tiny.text_ids(3, seed=1), ("video", FRAMES), tiny.text_ids(4, seed=2)),
        tiny.sample_ids(tiny.text_ids(7, seed=3), ("video", FRAMES), tiny.text_ids(2, seed=4)),
    ]


@pytest.mark.parametrize("side", ["left", "right"])
def test_identity_forward_is_bit_exact(side):
    model = tiny.build_tiny_llava_onevision()
    batch = tiny.pad_batch(_samples(), side=side, labels=True)
    videos = tiny.random_videos(2, FRAMES, seed=5)
    stock = model(**batch, pixel_values_videos=videos)
    patch_llava(model, threshold=1.0, marker="video")
    ours = model(**batch, pixel_values_videos=videos)
    assert torch.equal(ours.logits, stock.logits)
    assert torch.equal(ours.loss, stock.loss)
    assert [s.tokens_out for s in model.dyntok.last_stats] == [FRAMES * tiny.POOLED**2 + 1] * 2


def test_identity_generate_greedy_and_sampled():
    model = tiny.build_tiny_llava_onevision()
    batch = tiny.pad_batch(_samples(), side="left")
    videos = tiny.random_videos(2, FRAMES, seed=6)
    greedy = {"max_new_tokens": 6, "do_sample": False}
    sampled = {"max_new_tokens": 6, "do_sample": True, "top_k": 0, "temperature": 1.5}
    stock_greedy = model.generate(**batch, pixel_values_videos=videos, **greedy)
    torch.manual_seed(7)
    stock_sampled = model.generate(**batch, pixel_values_videos=videos, **sampled)
    patch_llava(model, threshold=1.5, marker="video")
    assert torch.equal(model.generate(**batch, pixel_values_videos=videos, **greedy), stock_greedy)
    torch.manual_seed(7)
    assert torch.equal(model.generate(**batch, pixel_values_videos=videos, **sampled), stock_sampled)


def test_merging_changes_the_sequence_within_bounds():
    model = tiny.build_tiny_llava_onevision()
    batch = tiny.pad_batch(_samples()[:1])
    videos = tiny.random_videos(1, FRAMES, seed=8)
    stock_len = model(**batch, pixel_values_videos=videos).logits.shape[1]
    rows = FRAMES * tiny.POOLED
    patch_llava(model, threshold=0.7)
    out = model(**batch, pixel_values_videos=videos)
    (stats,) = model.dyntok.last_stats
    assert 2 * rows <= stats.tokens_out <= rows * (tiny.POOLED + 1)
    assert out.logits.shape[1] == stock_len - tiny.video_tokens(FRAMES) + stats.tokens_out
    model.dyntok.threshold = -1.5  # live setting: every row collapses to one token plus its marker
    model(**batch, pixel_values_videos=videos)
    assert model.dyntok.last_stats[0].tokens_out == 2 * rows


def _generate_new_tokens(model, samples, videos, side="left", **kwargs):
    batch = tiny.pad_batch(samples, side=side)
    out = model.generate(**batch, pixel_values_videos=videos, max_new_tokens=8, do_sample=False, **kwargs)
    return [row.tolist() for row in out[:, batch["input_ids"].shape[1]:]]


def test_batch_equals_single_for_generate_and_forward():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    samples = _samples()
    videos = tiny.random_videos(2, FRAMES, seed=9)

    alone_tokens, alone_stats, alone_last = [], [], []
    for i, sample in enumerate(samples):
        alone_tokens += _generate_new_tokens(model, [sample], videos[i : i + 1])
        alone_stats += model.dyntok.last_stats
        logits = model(**tiny.pad_batch([sample]), pixel_values_videos=videos[i : i + 1]).logits
        alone_last.append(logits[0, -1])
    assert all(s.tokens_out < FRAMES * tiny.POOLED * (tiny.POOLED + 1) for s in alone_stats)  # merging happened

    assert _generate_new_tokens(model, samples, videos) == alone_tokens
    assert model.dyntok.last_stats == alone_stats

    batch = tiny.pad_batch(samples, side="right")
    logits = model(**batch, pixel_values_videos=videos).logits
    lengths = [len(s) - tiny.video_tokens(FRAMES) + st.tokens_out for s, st in zip(samples, alone_stats)]
    for row, (length, last) in enumerate(zip(lengths, alone_last)):
        torch.testing.assert_close(logits[row, length - 1], last, rtol=1e-5, atol=1e-5)


def test_greedy_cache_equals_recomputation():
    model = tiny.build_tiny_llava_onevision()
    patch_llava(model, threshold=0.7)
    sample = _samples()[1]
    videos = tiny.random_videos(1, FRAMES, seed=10)
    batch = tiny.pad_batch([sample])
    special = [tiny.IMAGE_ID, tiny.VIDEO_ID]  # a random model may emit placeholder ids; keep them out of the text
    cached = model.generate(
        **batch, pixel_values_videos=videos, max_new_tokens=8, do_sample=False, use_cache=True, suppress_tokens=special
    )
    sequence = batch["input_ids"]
    with torch.no_grad():
        for _ in range(cached.shape[1] - sequence.shape[1]):
            logits = model(input_ids=sequence, pixel_values_videos=videos, use_cache=False).logits[:, -1]
            logits[:, special] = -float("inf")
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, sequence)


def test_training_loss_gradients_and_label_alignment():
    model = tiny.build_tiny_llava_onevision().train()
    patch_llava(model, threshold=0.7, train_threshold_range=(0.3, 0.9), seed=0)
    samples = _samples() + [tiny.text_ids(9, seed=11)]  # a text-only sample rides along
    batch = tiny.pad_batch(samples, side="right", labels=True)
    videos = tiny.random_videos(2, FRAMES, seed=12)
    out = model(**batch, pixel_values_videos=videos)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    owner = tiny._owner(model)
    for name, module in (("projector", owner.multi_modal_projector), ("vision tower", owner.vision_tower)):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reached the {name}"
    assert owner.image_newline.grad is not None and owner.image_newline.grad.abs().sum() > 0

    # Labels: rebuild the spliced sequence from the reported token counts and recompute the loss by hand.
    counts = [s.tokens_out for s in model.dyntok.last_stats] + [0]
    rows = []
    for sample, count in zip(samples, counts):
        ids = torch.tensor(sample)
        is_video = ids == tiny.VIDEO_ID
        if count:
            first = int(is_video.nonzero()[0])
            labels = torch.cat([ids[:first], torch.full((count,), -100), ids[first + tiny.video_tokens(FRAMES):]])
        else:
            labels = ids
        rows.append(labels)
    width = out.logits.shape[1]
    expected = torch.stack([F.pad(r, (0, width - len(r)), value=-100) for r in rows])
    manual = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), expected[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)


def test_frozen_vision_tower_gets_no_gradient_but_projector_does():
    model = tiny.build_tiny_llava_onevision().train()
    owner = tiny._owner(model)
    owner.vision_tower.requires_grad_(False)
    patch_llava(model, threshold=0.7)
    batch = tiny.pad_batch(_samples()[:1], side="right", labels=True)
    model(**batch, pixel_values_videos=tiny.random_videos(1, FRAMES, seed=13)).loss.backward()
    assert all(p.grad is None for p in owner.vision_tower.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in owner.multi_modal_projector.parameters())
