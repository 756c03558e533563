"""Fine-tuning with DynTok on a tiny offline LLaVA-OneVision checkpoint and the bundled real clip.

Two processes (gloo, through torchrun and HF Trainer) overfit a tiny video-QA set with random training thresholds;
the saved checkpoint reloads with its DynTok settings and gives the trained model's logits. LoRA goes through PEFT
in one process. Needs the HF video processor, hence torchvision (`.venv-tv`); skipped elsewhere.
"""

import json

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("av")

import finetune_utils as fu  # noqa: E402
from dyntok_plugin import train as fine_tuning  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def fh():
    return fine_tuning


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return {"checkpoint": fu.save_checkpoint(root / "checkpoint"), "data": fu.write_dataset(root / "data"), "root": root}


@pytest.fixture(scope="module")
def processor(workdir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(workdir["checkpoint"])


@pytest.fixture(scope="module")
def dataset(fh, workdir, processor):
    return fh.VideoQADataset(fh.load_records(workdir["data"]), processor, cache=True)


def single_thread_logits(model, batch):
    """Logits computed with one thread, as the training processes do, so the comparison is bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fu.logits_on(model, batch)
    finally:
        torch.set_num_threads(threads)


def test_labels_cover_exactly_the_answer_and_end_of_turn(fh, dataset, processor):
    for index, (question, answer) in enumerate(fu.QA_PAIRS):
        example = dataset[index]
        learned = example["labels"][example["labels"] != fh.IGNORE_INDEX]
        text = processor.tokenizer.decode(learned)
        assert text.split() == answer.split() + ["<|im_end|>"], text
        video_runs = int((example["input_ids"] == processor.video_token_id).sum())
        assert video_runs == fu.FRAME_COUNTS[index] * 16 + 1
        assert example["pixel_values_videos"].shape == (fu.FRAME_COUNTS[index], 3, 32, 32)


# A template in LLaVA-OneVision's style: the assistant header of a rendered answer ("assistant \n") differs from
# the generation prompt ("assistant\n"), and no newline follows the end of turn.
SPACED_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}<video>"
    "{% else %}\n{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_labels_follow_the_generation_prompt_when_the_template_renders_answers_differently(fh, dataset):
    processor = fu.build_processor(chat_template=SPACED_TEMPLATE)
    question, answer = fu.QA_PAIRS[0]
    example = fh.encode_example(processor, dataset.frames(0), question, answer)
    learned = example["labels"][example["labels"] != fh.IGNORE_INDEX]
    assert processor.tokenizer.decode(learned).split() == answer.split() + ["<|im_end|>"]
    prompt_ids = example["input_ids"][example["labels"] == fh.IGNORE_INDEX]
    tail = processor.tokenizer.convert_ids_to_tokens(prompt_ids[-3:].tolist())
    assert tail == ["<|im_start|>", "assistant", "\n"]


def test_collator_pads_right_and_keeps_mixed_frame_counts_as_a_list(fh, dataset):
    batch = fu.eval_batch(dataset)
    lengths = [int(dataset[i]["input_ids"].shape[0]) for i in range(len(dataset))]
    assert batch["input_ids"].shape == (len(dataset), max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert bool((batch["labels"][batch["attention_mask"] == 0] == fh.IGNORE_INDEX).all())
    assert isinstance(batch["pixel_values_videos"], list)
    same = fh.VideoQACollator(0)([dataset[0], dataset[3]])
    assert same["pixel_values_videos"].shape == (2, 4, 3, 32, 32)


def test_bad_records_name_the_line_and_the_fix(fh, tmp_path):
    cases = {
        '{"video": "x.mp4", "question": "q"}': "lacks the string field(s) ['answer']",
        '{"video": "missing.mp4", "question": "q", "answer": "a"}': "not found",
        '{"video": "x.mp4", "question": "q", "answer": "a", "num_frames": 0}': "num_frames must be a positive",
        '{"video": "x.mp4", "question": "q", "answer": " "}': "empty answer",
        "[1, 2]": "not an object",
        "{oops": "not valid JSON",
    }
    (tmp_path / "x.mp4").write_bytes(fu.CLIP.read_bytes())
    for line, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(line + "\n")
        with pytest.raises((ValueError, FileNotFoundError), match="line 1") as info:
            fh.load_records(path)
        assert message in str(info.value)
    with pytest.raises(ValueError, match="trainable parts"):
        fh.parse_parts("projector,decoder")


def test_trainer_keeps_video_inputs_through_the_patched_signature(fh, workdir, processor, dataset, tmp_path):
    model = fh.setup_model(workdir["checkpoint"], train_parts="projector")
    trainer = fh.build_trainer(model, processor, dataset, output_dir=str(tmp_path), use_cpu=True,
                               per_device_train_batch_size=2, max_steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"input_ids", "attention_mask", "labels", "pixel_values_videos"} <= set(batch)
    trainable = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"multi_modal_projector"}


def test_two_processes_overfit_then_reload_with_identical_logits(fh, workdir, dataset):
    out = workdir["root"] / "ddp"

    extra = ["--max-steps", "40", "--lr", "5e-3", "--batch-size", "1", "--threshold", "0.7"]
    fu.train_two_processes(workdir, out, extra, fu.offline_env())

    losses = json.loads((out / "train_losses.json").read_text())
    assert len(losses) == 40 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses

    model = fh.load_for_inference(out)
    assert not model.training
    assert model.dyntok.threshold == 0.7 and model.dyntok.train_threshold_range == (0.5, 0.9)
    batch = fu.eval_batch(dataset)
    trained = torch.load(out / "trained_logits.pt")
    reloaded = single_thread_logits(model, batch)
    assert torch.equal(reloaded, trained)
    assert all(stats.tokens_out < stats.tokens_in for stats in model.dyntok.last_stats)

    from transformers import LlavaOnevisionForConditionalGeneration

    from dyntok_plugin import patch_llava

    untrained = patch_llava(LlavaOnevisionForConditionalGeneration.from_pretrained(workdir["checkpoint"]), threshold=0.7)
    before = single_thread_logits(untrained, batch)
    assert before.shape != trained.shape or not torch.allclose(before, trained, atol=1e-3)


def test_lora_trains_adapters_projector_and_marker_and_reloads_merged(fh, workdir, processor, dataset, tmp_path):
    model = fh.setup_model(workdir["checkpoint"], train_parts="projector,marker,llm", lora_rank=4,
                           train_threshold_range=(0.5, 0.9), threshold=0.7)
    marker_before = fh.host_parts(model)["marker"][0].detach().clone()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("multi_modal_projector" in n for n in trainable)
    assert any(n.endswith("image_newline") for n in trainable)
    assert not any("vision_tower" in n for n in trainable)
    trainer = fh.build_trainer(model, processor, dataset, output_dir=str(tmp_path), use_cpu=True, max_steps=12,
                               learning_rate=1e-2, per_device_train_batch_size=2, checkpointing=True)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert not torch.equal(fh.host_parts(model)["marker"][0], marker_before)

    out = fh.save_for_inference(trainer, processor, tmp_path / "lora")
    batch = fu.eval_batch(dataset)
    trained = fu.logits_on(model, batch)
    reloaded = fh.load_for_inference(out, base_model=str(workdir["checkpoint"]))
    assert reloaded.dyntok.threshold == 0.7
    torch.testing.assert_close(fu.logits_on(reloaded, batch), trained, rtol=1e-5, atol=1e-5)


def test_bundled_example_data_resolves_its_videos_relative_to_the_file(fh):
    records = fh.load_records(fu.REPO / "examples" / "data" / "city_qa.jsonl")
    assert len(records) == 4 and {r.num_frames for r in records} == {8, 16}
    assert all(fu.Path(r.video).resolve() == fu.CLIP for r in records)
