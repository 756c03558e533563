"""Training LLaVA-NeXT (`llavaction`) with DynTok: loss, gradients, label alignment, drawn thresholds, gradient
checkpointing, and the launcher that patches the model a training script builds."""

import importlib
import json
import math
import sys
import textwrap

import pytest
import torch

import llava_next_tiny as tiny  # noqa: E402

tiny.require_host()
from dyntok_plugin import is_patched, patch_llava  # noqa: E402
from dyntok_plugin.train import llava_next as llava_next_train  # noqa: E402

SIZES = [(tiny.PIXELS, tiny.PIXELS)]


def video_batch():
    prompts = [tiny.prompt((5,), (7, 8, 9, 10)), tiny.prompt((5, 6, 11), (7, 12))]
    ids, mask = tiny.left_pad(prompts)
    return ids, mask, tiny.labels_for(ids, mask), [tiny.video(2, seed=1), tiny.video(3, seed=2)]


def loss_of(model, ids, mask, labels, videos):
    out = model(input_ids=ids, attention_mask=mask, labels=labels, images=videos, modalities=["video"] * len(videos),
                image_sizes=SIZES * len(videos), output_hidden_states=False)
    return out.loss


def test_training_draws_thresholds_and_trains_projector_tower_and_marker():
    model = tiny.tiny_model().train()
    patch_llava(model, threshold=0.7, train_threshold_range=(0.3, 0.95), seed=0)
    ids, mask, labels, videos = video_batch()
    loss = loss_of(model, ids, mask, labels, videos)
    assert torch.isfinite(loss)
    drawn = [s.threshold for s in model.dyntok.last_stats]
    assert len(drawn) == 2 and drawn[0] != drawn[1] and all(0.3 <= t <= 0.95 for t in drawn)
    loss.backward()
    inner = model.get_model()
    for name, module in (("mm_projector", inner.mm_projector), ("vision_tower", inner.vision_tower)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    assert inner.image_newline.grad is not None and inner.image_newline.grad.abs().sum() > 0
    model.eval()
    tiny.embeds(model, ids, videos, ["video", "video"], attention_mask=mask)
    assert [s.threshold for s in model.dyntok.last_stats] == [0.7, 0.7]


def test_labels_stay_aligned_with_compressed_videos():
    model = tiny.tiny_model().train()
    patch_llava(model, threshold=0.7, train_threshold_range=(0.4, 0.9), seed=3)
    ids, mask, labels, videos = video_batch()
    _, new_mask, new_labels = tiny.embeds(model, ids, videos, ["video", "video"], attention_mask=mask, labels=labels)
    for i, stats in enumerate(model.dyntok.last_stats):
        row = ids[i][mask[i].bool()]
        before = int((row == tiny.IMAGE_TOKEN).nonzero()[0])
        spliced = new_labels[i][new_mask[i].bool()]
        assert spliced.shape[0] == row.shape[0] - 1 + stats.tokens_out
        assert torch.all(spliced[before:before + stats.tokens_out] == tiny.IGNORE)
        assert torch.equal(spliced[before + stats.tokens_out:], labels[i][mask[i].bool()][before + 1:])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        model = tiny.tiny_model(seed=5).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        patch_llava(model, threshold=0.7)
        loss = loss_of(model, *video_batch())
        loss.backward()
        results.append((loss.detach(), model.get_model().mm_projector[0].weight.grad.clone()))
    (plain_loss, plain_grad), (ckpt_loss, ckpt_grad) = results
    assert torch.isfinite(ckpt_loss)
    torch.testing.assert_close(ckpt_loss, plain_loss)
    torch.testing.assert_close(ckpt_grad, plain_grad)


TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, math, os
    from dataclasses import dataclass

    import torch
    import transformers

    import llava_next_tiny as tiny


    @dataclass
    class ModelArguments:
        mm_newline_position: str = "grid"


    def collate(samples):
        ids, mask = tiny.left_pad([s["ids"] for s in samples])
        return dict(input_ids=ids, attention_mask=mask, labels=tiny.labels_for(ids, mask),
                    images=[s["video"] for s in samples], modalities=["video"] * len(samples),
                    image_sizes=[(tiny.PIXELS, tiny.PIXELS)] * len(samples))


    def train():
        parser = transformers.HfArgumentParser((ModelArguments, transformers.TrainingArguments))
        model_args, training_args = parser.parse_args_into_dataclasses()
        model = tiny.tiny_model(mm_newline_position="one_token")
        model.config.mm_newline_position = model_args.mm_newline_position  # as LLaVA-NeXT's train.py does
        before = model.get_model().mm_projector[0].weight.detach().clone()
        data = [dict(ids=tiny.prompt((5,) * (1 + i % 3), (7, 8, 9)), video=tiny.video(2 + i % 2, seed=i))
                for i in range(4)]
        trainer = transformers.Trainer(model=model, args=training_args, train_dataset=data, data_collator=collate)
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        result = dict(
            patched="dyntok" in model.__dict__,
            settings=model.config.dyntok,
            newline=model.config.mm_newline_position,
            thresholds=[s.threshold for s in model.dyntok.last_stats],
            losses=losses,
            projector_moved=not torch.equal(before, model.get_model().mm_projector[0].weight.detach()),
        )
        with open(os.path.join(training_args.output_dir, "result.json"), "w") as f:
            json.dump(result, f)


    if __name__ == "__main__":
        train()
    """
)


def test_launcher_patches_the_model_of_an_unedited_training_script(tmp_path, monkeypatch):
    script = tmp_path / "train_tiny.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / "out"
    argv_before, callbacks_before = list(sys.argv), list(llava_next_train_callbacks())
    llava_next_train.main([
        "--dyntok_threshold_range", "0.5", "0.9", "--dyntok_seed", "1", "--dyntok_script", str(script),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--use_cpu",
        "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--learning_rate", "0.01",
        "--remove_unused_columns", "False", "--disable_tqdm", "True", "--mm_newline_position", "grid",
    ])
    result = json.loads((out / "result.json").read_text())
    assert result["patched"] and result["newline"] == "grid"
    assert result["settings"]["train_threshold_range"] == [0.5, 0.9]
    assert len(result["thresholds"]) == 2 and all(0.5 <= t <= 0.9 for t in result["thresholds"])
    assert len(result["losses"]) == 2 and all(math.isfinite(v) for v in result["losses"])
    assert result["projector_moved"]
    assert sys.argv == argv_before and list(llava_next_train_callbacks()) == callbacks_before


def llava_next_train_callbacks():
    from transformers import trainer

    return trainer.DEFAULT_CALLBACKS


def test_launcher_splits_its_options_from_the_script_arguments():
    config, module, script, rest = llava_next_train.parse_args(
        ["--dyntok_threshold", "0.6", "--dyntok_marker", "video", "--model_name_or_path", "x", "--bf16", "True"]
    )
    assert (config.threshold, config.marker, config.train_threshold_range) == (0.6, "video", None)
    assert module is None and script is None and rest == ["--model_name_or_path", "x", "--bf16", "True"]
    with pytest.raises(SystemExit):
        llava_next_train.parse_args(["--dyntok_treshold", "0.6"])
    with pytest.raises(ValueError, match="train_threshold_range"):
        llava_next_train.parse_args(["--dyntok_threshold_range", "0.9", "0.5"])


def test_launcher_callback_refuses_models_it_cannot_patch():
    callback = llava_next_train.DynTokTrainerCallback(llava_next_train.DynTokConfig())
    with pytest.raises(TypeError, match="LlavaQwenForCausalLM"):
        callback.on_init_end(None, None, None, model=torch.nn.Linear(2, 2))
    model = tiny.tiny_model()
    callback.on_init_end(None, None, None, model=model)
    assert is_patched(model)


def test_launcher_runs_the_real_llava_next_training_module(capsys):
    """Argument pass-through into LLaVA-NeXT's own `train_mem.py` (needs its training dependencies: deepspeed,
    and for upstream the vendored `trl`; skipped where they do not import)."""
    module = f"{tiny.PACKAGE}.train.train_mem"
    try:
        importlib.import_module(f"{tiny.PACKAGE}.train.train")
    except ImportError as error:
        pytest.skip(f"{module} does not import here: {error}")
    with pytest.raises(SystemExit) as exit_info:
        llava_next_train.main(["--dyntok_threshold_range", "0.5", "0.9", "--dyntok_module", module, "--help"])
    assert exit_info.value.code == 0
    assert "--mm_newline_position" in capsys.readouterr().out
