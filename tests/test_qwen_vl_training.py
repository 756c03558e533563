"""Training through DynTok on tiny Qwen VL hosts: re-spliced labels, gradients to every trainable part, random
thresholds per video, and the fine-tuning helpers (Trainer, save and load for inference) on a Qwen checkpoint."""

import pytest
import qwen_tiny as qt
import torch

from dyntok_plugin import patch_llava
from dyntok_plugin.hf import synthetic_qwen as sq
from dyntok_plugin.hf.parts import find_parts
from dyntok_plugin.patches.hf_qwen_vl import plugin_marker


def _labelled_batch(model, side="right"):
    return qt.inputs(model, qt.samples(), side=side, labels=True)


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_gradients_reach_merger_llm_marker_and_tower(kind):
    model = qt.build(kind).train()
    patch_llava(model, threshold=0.5, marker="row", similarity="vision")
    out = model(**_labelled_batch(model))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    parts = find_parts(model)
    for name, module in (("tower", parts.vision_tower.blocks), ("merger", parts.projector),
                         ("llm", parts.language_model), ("head", parts.lm_head)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads), name
    assert parts.marker is plugin_marker(model) and parts.marker.grad.abs().sum() > 0
    if kind == "qwen3_vl":  # every DeepStack merger is trained through the merged levels
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in model.model.visual.deepstack_merger_list.parameters())


@pytest.mark.parametrize("kind", qt.FAST_KINDS)
def test_labels_are_respliced_and_the_loss_is_the_shortened_sequences(kind):
    model = qt.build(kind)
    patch_llava(model, threshold=0.5)
    batch = _labelled_batch(model)
    seen = {}
    state = model.__dict__["_dyntok_qwen_state"]
    original = state.originals.methods["forward"]
    state.originals.methods["forward"] = lambda **call: seen.update(call) or original(**call)
    out = model(**batch)
    labels, ids = seen["labels"], seen["input_ids"]
    assert bool((labels[ids == sq.VIDEO_ID] == -100).all())
    kept = batch["labels"][batch["labels"] != -100]
    assert torch.equal(labels[labels != -100], kept)  # every text label, in order
    logits = out.logits[:, :-1].flatten(0, 1)
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_random_thresholds_are_drawn_per_video_and_call():
    model = qt.build("qwen3_vl").train()
    patch_llava(model, threshold=0.5, train_threshold_range=(0.2, 0.8), seed=3)
    batch = _labelled_batch(model)
    model(**batch)
    first = [s.threshold for s in model.dyntok.last_stats]
    model(**batch)
    second = [s.threshold for s in model.dyntok.last_stats]
    assert len(set(first)) == 3 and first != second and all(0.2 <= t <= 0.8 for t in first + second)
    model.eval()
    model(**batch)
    assert {s.threshold for s in model.dyntok.last_stats} == {0.5}


def _examples(config, count: int) -> list:
    """Hand-built training examples as `VideoQADataset` yields them for a Qwen checkpoint (no torchvision)."""
    examples = []
    for index in range(count):
        frames = sq.random_frames(2 + 2 * (index % 2), 24, 40, seed=index)
        batch = sq.qwen_vl_inputs(config, [[sq.text_ids(3, index), ("video", frames), sq.text_ids(4, 50 + index)]],
                                  labels=True)
        example = {key: value[0] if key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids") else value
                   for key, value in batch.items()}
        example["labels"][:-4] = -100  # only the answer is learned
        examples.append(example)
    return examples


@pytest.mark.parametrize("kind", ["qwen3_vl"])  # the processor-fed command runs both hosts (torchvision env)
def test_fine_tuning_helpers_train_save_and_reload_a_qwen_checkpoint(kind, tmp_path):
    from types import SimpleNamespace

    from dyntok_plugin import train

    checkpoint = sq.save_random_qwen_checkpoint(tmp_path / "base", kind)
    tokenizer = sq.build_qwen_tokenizer()
    processor = SimpleNamespace(tokenizer=tokenizer, save_pretrained=tokenizer.save_pretrained)
    model = train.setup_model(checkpoint, marker="row", threshold=0.5, train_threshold_range=(0.3, 0.7), seed=1)
    start = train.host_parts(model)["marker"][0].detach().clone()
    trainer = train.build_trainer(model, processor, _examples(model.config, 4), output_dir=str(tmp_path / "run"),
                                  max_steps=2, per_device_train_batch_size=2, learning_rate=5e-2, use_cpu=True)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained = train.host_parts(model)["marker"][0]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(trained, start)  # the plugin's marker trains
    out = train.save_for_inference(trainer, processor, tmp_path / "out")
    reloaded = train.load_for_inference(out)
    assert reloaded.dyntok == model.dyntok and torch.equal(train.host_parts(reloaded)["marker"][0], trained)
    model.eval()
    batch = sq.qwen_vl_inputs(model.config, [[sq.text_ids(3, 9), ("video", sq.random_frames(2, 24, 40, seed=9))]])
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5)
