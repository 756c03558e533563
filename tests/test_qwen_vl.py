"""DynTok on tiny random Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE (CPU, float32): identity, batch = single,
cache = recompute, the loop reference on random and real video, M-RoPE positions and rope deltas."""

import pytest
import qwen_tiny as qt
import torch

from dyntok_plugin import patch_llava
from dyntok_plugin.hf import synthetic_qwen as sq
from dyntok_plugin.patches.hf_qwen_vl import plugin_marker

THRESHOLD = 0.5  # tiny random towers: left-neighbour cosines spread around 0.4 (median) on smooth frames


@pytest.mark.parametrize("kind, side", [("qwen2_5_vl", "left"), ("qwen3_vl", "right"), ("qwen3_vl_moe", "left")])
def test_identity_with_marker_none_is_bit_exact(kind, side):
    model = qt.build(kind)
    batch = qt.inputs(model, qt.samples(), side=side, labels=True)
    stock = model(**batch)
    patch_llava(model, threshold=1.0)
    assert model.dyntok.marker == "none"  # the default for hosts without a newline embedding
    ours = model(**batch)
    assert torch.equal(ours.logits, stock.logits) and torch.equal(ours.loss, stock.loss)
    assert [s.tokens_out for s in model.dyntok.last_stats] == [30, 12, 30]


@pytest.mark.parametrize("kind", ["qwen3_vl"])
def test_identity_generate_equals_stock(kind):
    model = qt.build(kind)
    batch = qt.inputs(model, qt.samples())
    stock = model.generate(**batch, max_new_tokens=5, do_sample=False)
    patch_llava(model, threshold=1.5, similarity="projected")
    assert torch.equal(model.generate(**batch, max_new_tokens=5, do_sample=False), stock)


@pytest.mark.parametrize("kind, side", [("qwen2_5_vl", "right"), ("qwen3_vl", "left"), ("qwen3_vl_moe", "right")])
def test_batch_equals_each_sample_alone(kind, side):
    model = qt.build(kind)
    samples = qt.samples()
    patch_llava(model, threshold=THRESHOLD)
    batched = model(**qt.inputs(model, samples, side=side))
    batch_stats = model.dyntok.last_stats
    assert sum(s.tokens_out for s in batch_stats) < sum(s.tokens_in for s in batch_stats)  # it merges
    alone_stats = []
    for row, sample in enumerate(samples):
        alone = model(**qt.inputs(model, [sample]))
        alone_stats += model.dyntok.last_stats
        valid = batched.attention_mask[row].bool()
        torch.testing.assert_close(batched.logits[row][valid], alone.logits[0], rtol=1e-5, atol=2e-5)
    assert batch_stats == alone_stats


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_generate_with_cache_equals_recompute_and_batch_equals_single(kind):
    model = qt.build(kind)
    patch_llava(model, threshold=THRESHOLD, marker="row")
    samples = qt.samples(image=False)
    # Without a cache every step re-sends the placeholders: a generated <|video_pad|> id fails there (stock too).
    greedy = dict(max_new_tokens=5, do_sample=False, suppress_tokens=[sq.VIDEO_ID, sq.IMAGE_ID])
    batch = qt.inputs(model, samples, side="right")
    cached = model.generate(**batch, **greedy)
    assert torch.equal(cached[:, : batch["input_ids"].shape[1]], batch["input_ids"])  # the caller's prompt
    assert torch.equal(model.generate(**batch, use_cache=False, **greedy), cached)
    for row, sample in enumerate(samples):
        alone = qt.inputs(model, [sample])
        new = model.generate(**alone, **greedy)[0, alone["input_ids"].shape[1]:]
        assert torch.equal(cached[row, batch["input_ids"].shape[1]:][: len(new)], new)


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_forward_on_the_cache_continues_from_the_rope_deltas(kind):
    """A decode step without position_ids (stock `rope_deltas` path) equals recomputing the whole sequence."""
    model = qt.build(kind)
    patch_llava(model, threshold=THRESHOLD)
    batch = qt.inputs(model, qt.samples(image=False)[:1])
    prefill = model(**batch, use_cache=True)
    step = prefill.logits[:, -1].argmax(-1, keepdim=True)
    cache = getattr(prefill, "cache", None) or prefill.past_key_values
    # No attention_mask: the stock rope-delta path then uses arange(past, past + 1) (with a mask it would take
    # positions for the whole mask, in stock transformers 5.24 too).
    decoded = model(input_ids=step, past_key_values=cache).logits[:, -1]
    longer = dict(batch, input_ids=torch.cat([batch["input_ids"], step], 1),
                  attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(step)], 1),
                  mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(step).int()], 1))
    torch.testing.assert_close(decoded, model(**longer).logits[:, -1], rtol=1e-5, atol=2e-5)


def _positions_seen(model, batch):
    """The `position_ids` and `input_ids` the original forward receives from the patched one."""
    state = model.__dict__["_dyntok_qwen_state"]
    seen = {}
    original = state.originals.methods["forward"]

    def spy(**call):
        seen.update(call)
        return original(**call)

    state.originals.methods["forward"] = spy
    try:
        model(**batch)
    finally:
        state.originals.methods["forward"] = original
    return seen


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_text_keeps_its_stock_positions_and_video_tokens_their_first_members(kind):
    model = qt.build(kind)
    batch = qt.inputs(model, qt.samples(), side="left")
    stock = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                       batch["video_grid_thw"], attention_mask=batch["attention_mask"],
                                       **({"second_per_grid_ts": batch["second_per_grid_ts"]}
                                          if "second_per_grid_ts" in batch else {}))[0]
    patch_llava(model, threshold=THRESHOLD)
    seen = _positions_seen(model, batch)
    for row in range(2):
        valid, kept = batch["attention_mask"][row].bool(), seen["attention_mask"][row].bool()
        full_ids, ids = batch["input_ids"][row][valid], seen["input_ids"][row][kept]
        full_pos, pos = stock[:, row][:, valid], seen["position_ids"][:, row][:, kept]
        text, full_text = ids != sq.VIDEO_ID, full_ids != sq.VIDEO_ID
        assert torch.equal(ids[text], full_ids[full_text])
        assert torch.equal(pos[:, text], full_pos[:, full_text])
        video_positions = {tuple(p) for p in full_pos[:, ~full_text].T.tolist()}
        assert {tuple(p) for p in pos[:, ~text].T.tolist()} <= video_positions
        assert (torch.diff(pos[0][~text]) >= 0).all()  # in the stock temporal order
    deltas = model.model.rope_deltas.flatten()
    largest = stock.masked_fill(~batch["attention_mask"].bool()[None], -1).amax((0, 2))
    assert torch.equal(deltas, largest + 1 - seen["attention_mask"].sum(1))


@pytest.mark.parametrize("kind, marker, similarity", [
    ("qwen2_5_vl", "none", "vision"), ("qwen2_5_vl", "frame", "projected"),
    ("qwen3_vl", "row", "vision"), ("qwen3_vl", "video", "projected"),
])
def test_patched_model_equals_the_loop_reference(kind, marker, similarity):
    model = qt.build(kind)
    batch = qt.inputs(model, qt.samples(), side="right")
    patch_llava(model, threshold=THRESHOLD, marker=marker, similarity=similarity)
    ours = model(**batch)
    stats = model.dyntok.last_stats
    reference, mask = qt.reference_logits(model, batch, THRESHOLD, marker, plugin_marker(model), similarity)
    assert sum(s.tokens_out for s in stats) == int(mask.sum()) - int((batch["input_ids"] != sq.VIDEO_ID).logical_and(
        batch["attention_mask"].bool()).sum())
    left = torch.zeros_like(ours.logits)  # the patched batch is right-padded here, the reference's left-padded
    for row in range(mask.shape[0]):
        n = int(mask[row].sum())
        left[row, -n:] = ours.logits[row, ours.attention_mask[row].bool()]
    torch.testing.assert_close(left[mask.bool()], reference[mask.bool()], rtol=1e-5, atol=2e-5)


@pytest.fixture(scope="module")
def city_frames():
    """4 frames of the bundled real clip, resized to 48x80 and normalised as the Qwen processors do."""
    pytest.importorskip("av", reason="decoding the clip needs PyAV")
    from media import CITY_CLIP

    from dyntok_plugin.video import load_video

    frames = torch.from_numpy(load_video(CITY_CLIP, 4)).permute(0, 3, 1, 2).float() / 255
    frames = torch.nn.functional.interpolate(frames, size=(48, 80), mode="bicubic", antialias=True).clamp(0, 1)
    return (frames - 0.5) / 0.5


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_real_video_equals_the_loop_reference(kind, city_frames):
    model = qt.build(kind)
    batch = qt.inputs(model, [[sq.text_ids(3, 1), ("video", city_frames), sq.text_ids(4, 2)]])
    patch_llava(model, threshold=THRESHOLD, marker="row")
    ours = model(**batch)
    (stats,) = model.dyntok.last_stats
    assert stats.tokens_in == 2 * 6 * 10 and stats.tokens_out < stats.tokens_in + 12
    reference, mask = qt.reference_logits(model, batch, THRESHOLD, "row", plugin_marker(model))
    torch.testing.assert_close(ours.logits, reference, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_budget_is_met_exactly_per_video(kind):
    model = qt.build(kind)
    patch_llava(model, threshold=None, max_tokens=18)
    batch = qt.inputs(model, qt.samples())
    out = model(**batch)
    stats = model.dyntok.last_stats
    assert [s.tokens_out for s in stats] == [18, 12, 18]  # a 12-token video is within the budget already
    assert int(out.attention_mask.sum()) == int(batch["attention_mask"].sum()) - sum(
        s.tokens_in - s.tokens_out for s in stats)
