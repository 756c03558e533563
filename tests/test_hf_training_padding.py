"""`pad_to_multiple_of`: in training the spliced length is rounded up to a multiple (few distinct lengths with random
thresholds), with the extra positions as padding that changes neither the loss nor the gradients."""

import hf_tiny as tiny
import pytest
import torch

from dyntok_plugin import DynTokConfig, patch_llava


def _batch():
    samples = [tiny.sample_ids(tiny.text_ids(3, 1), ("video", 2), tiny.text_ids(4, 2)),
               tiny.sample_ids(tiny.text_ids(2, 3), ("video", 3), tiny.text_ids(5, 4))]
    batch = tiny.pad_batch(samples, side="right", labels=True)
    batch["pixel_values_videos"] = [tiny.random_videos(1, 2, seed=5)[0], tiny.random_videos(1, 3, seed=6)[0]]
    return batch


def _loss_and_grads(multiple):
    model = tiny.build_tiny_llava_onevision(seed=0).train()
    patch_llava(model, threshold=0.6, pad_to_multiple_of=multiple)
    widths = []
    model.model.language_model.register_forward_pre_hook(
        lambda _m, a, k: widths.append(k["inputs_embeds"].shape[1]), with_kwargs=True)
    loss = model(**_batch()).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, widths[0], model.dyntok.last_stats


@pytest.mark.parametrize("multiple", [16, 64])
def test_padding_to_a_multiple_changes_neither_loss_nor_gradients(multiple):
    loss, grads, width, stats = _loss_and_grads(None)
    padded_loss, padded_grads, padded_width, padded_stats = _loss_and_grads(multiple)
    assert padded_width % multiple == 0 and padded_width >= width and padded_width != width
    assert [s.tokens_out for s in stats] == [s.tokens_out for s in padded_stats]
    torch.testing.assert_close(padded_loss, loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == padded_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_generate_and_calls_without_labels_are_not_padded():
    model = tiny.build_tiny_llava_onevision(seed=0)
    patch_llava(model, threshold=0.6, pad_to_multiple_of=64)
    batch = _batch()
    batch.pop("labels")
    out = model(**batch)
    assert out.logits.shape[1] < 64


@pytest.mark.parametrize("bad", [0, -8, 2.5, True])
def test_pad_to_multiple_of_is_validated(bad):
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive int or None"):
        DynTokConfig(pad_to_multiple_of=bad)


@pytest.mark.parametrize("side, labels, masked", [(None, True, False), ("right", True, True), ("left", True, True),
                                                   (None, False, True)])
def test_unpadded_training_batches_run_without_a_mask_and_lose_nothing(side, labels, masked):
    samples = [tiny.sample_ids(tiny.text_ids(3, 1), ("video", 2), tiny.text_ids(4, 2)),
               tiny.sample_ids(tiny.text_ids(2, 3), ("video", 3), tiny.text_ids(5, 4))]
    videos = [tiny.random_videos(1, 2, seed=5)[0], tiny.random_videos(1, 3, seed=6)[0]]
    model = tiny.build_tiny_llava_onevision(seed=0).train()
    patch_llava(model, threshold=0.6, seed=1, pad_to_multiple_of=16)
    seen = []
    model.model.language_model.register_forward_pre_hook(
        lambda _m, a, k: seen.append(k.get("attention_mask")), with_kwargs=True)
    if side is None:  # an unpadded batch: two samples of one length, so DynTok's lengths are its own padding
        samples = [samples[0], tiny.sample_ids(tiny.text_ids(3, 5), ("video", 2), tiny.text_ids(4, 6))]
        videos[1] = tiny.random_videos(1, 2, seed=7)[0]
    batch = dict(tiny.pad_batch(samples, side=side or "right", labels=labels), pixel_values_videos=videos)
    assert (side is None) == bool(batch["attention_mask"].all())
    out = model(**batch)
    assert (seen[-1] is not None) == masked
    assert out.attention_mask is not None and out.attention_mask.shape[1] == out.logits.shape[1]
    if not masked:  # the loss of the samples one by one (each unpadded, so no mask either way)
        single = [model(**dict(tiny.pad_batch([s], side="right", labels=True), pixel_values_videos=[v]))
                  for s, v in zip(samples, videos)]
        counts = [int((tiny.pad_batch([s], side="right", labels=True)["labels"] != -100).sum()) - 1 for s in samples]
        expected = sum(o.loss * n for o, n in zip(single, counts)) / sum(counts)
        torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
