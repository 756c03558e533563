"""Fine-tuning with DynTok under DeepSpeed ZeRO-3, on the CPU (DeepSpeed's CPU accelerator, gloo, two processes).

The shipped `examples/accelerate/zero3.json` is used with `stage3_param_persistence_threshold: 0`, so every
parameter, the tiny `image_newline` marker included, is partitioned: the patch must never read a partitioned
weight outside a gathered forward. Needs torchvision (the HF video processor) and deepspeed; skipped elsewhere.
"""

import json
import sys

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("av")
pytest.importorskip("deepspeed")

import commands  # noqa: E402
import finetune_utils as fu  # noqa: E402
from dyntok_plugin import train as fine_tuning  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    config = json.loads((fu.REPO / "examples" / "accelerate" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (root / "zero3.json").write_text(json.dumps(config))
    return {
        "checkpoint": fu.save_checkpoint(root / "checkpoint"),
        "data": fu.write_dataset(root / "data"),
        "zero3": root / "zero3.json",
        "root": root,
    }


def zero3_env() -> dict:
    return dict(fu.offline_env(), DS_ACCELERATOR="cpu")


def test_zero3_trains_the_partitioned_marker_and_reloads_with_identical_logits(workdir):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    fh = fine_tuning
    out = workdir["root"] / "trained"

    extra = ["--deepspeed", workdir["zero3"], "--max-steps", "24", "--lr", "5e-3"]
    fu.train_two_processes(workdir, out, extra, zero3_env())

    losses = json.loads((out / "train_losses.json").read_text())
    assert sum(losses[-4:]) / 4 < 0.75 * sum(losses[:4]) / 4, losses

    initial = LlavaOnevisionForConditionalGeneration.from_pretrained(workdir["checkpoint"])
    model = fh.load_for_inference(out)
    marker = fh.host_parts(model)["marker"][0]
    assert marker.shape == fh.host_parts(initial)["marker"][0].shape
    assert not torch.equal(marker, fh.host_parts(initial)["marker"][0])

    processor = AutoProcessor.from_pretrained(out)
    dataset = fh.VideoQADataset(fh.load_records(workdir["data"]), processor, cache=True)
    trained = torch.load(out / "trained_logits.pt")
    torch.testing.assert_close(fu.logits_on(model, fu.eval_batch(dataset)), trained, rtol=1e-5, atol=1e-5)


INFERENCE_SCRIPT = """
import json, sys
import torch, deepspeed
import finetune_utils as fu
from dyntok_plugin import train as fine_tuning
from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration
from dyntok_plugin import patch_llava

checkpoint, data, zero3, when = sys.argv[1:5]
fh = fine_tuning
dataset = fh.VideoQADataset(fh.load_records(data), AutoProcessor.from_pretrained(checkpoint))
batch = fh.VideoQACollator(0)([dataset[0]])
model = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint)
if when == "before":
    patch_llava(model, threshold=0.7)
config = dict(json.loads(open(zero3).read()), train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
config.pop("gradient_clipping")
config["bf16"] = {"enabled": False}
engine = deepspeed.initialize(model=model, config=config)[0]
if when == "after":
    patch_llava(engine, threshold=0.7)
engine.module.eval()
prompt = {key: batch[key][:, :-4] for key in ("input_ids", "attention_mask")}
with torch.no_grad():
    engine.module.generate(**prompt, pixel_values_videos=batch["pixel_values_videos"], max_new_tokens=2)
print("OK")
"""


@pytest.mark.parametrize(
    "when",
    [
        "before",
        "after",
    ],
    ids=["patch-then-initialize", "initialize-then-patch"],
)
def test_zero3_generate_outside_the_engine_forward(workdir, when):
    env = dict(zero3_env(), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    env["PYTHONPATH"] = f"{fu.REPO / 'tests'}:{env['PYTHONPATH']}"

    def command(attempt):  # a fresh rendezvous port for every attempt
        env["MASTER_PORT"] = str(fu.free_port())
        return [sys.executable, "-c", INFERENCE_SCRIPT, workdir["checkpoint"], workdir["data"], workdir["zero3"], when]

    def generated(done):
        assert "OK" in done.stdout, "the script did not reach its end (no OK printed)"

    commands.run(command, env=env, timeout=600, check=generated, attempts=3)
