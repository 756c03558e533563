"""Fine-tuning with DynTok under FSDP2 (`fully_shard`), on the CPU: two processes, gloo.

Accelerate and Trainer fall back to plain single-process training when FSDP is asked for on a CPU, so the worker
shards the model itself, as the GPU config `examples/accelerate/fsdp.yaml` does (one unit per SigLIP and Qwen2
layer, the rest, the projector and `image_newline` included, in the root unit). DynTok's `generate` runs the vision
tower before the model's first forward, so under FSDP2 `generate` must be registered as a forward method
(`register_fsdp_forward_method(model, "generate")`, after `patch_llava`) for the root unit to be gathered. Needs
torchvision (the HF video processor); skipped elsewhere.
"""

import json
import sys

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("av")
pytest.importorskip("torch.distributed.fsdp", reason="needs torch.distributed")

import commands  # noqa: E402
import finetune_utils as fu  # noqa: E402
from dyntok_plugin import train as fine_tuning  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

STEPS = 10

WORKER = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
import finetune_utils as fu
from dyntok_plugin import train as fine_tuning
from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration
from dyntok_plugin import patch_llava

checkpoint, data, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
dist.init_process_group("gloo")
rank = dist.get_rank()
fh = fine_tuning
dataset = fh.VideoQADataset(fh.load_records(data), AutoProcessor.from_pretrained(checkpoint), cache=True)
batch = fu.eval_batch(dataset)
torch.manual_seed(0)
model = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint)
patch_llava(model, threshold=0.7, train_threshold_range=(0.5, 0.9), seed=0)
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for module in model.modules():
    if type(module).__name__ in ("SiglipEncoderLayer", "Qwen2DecoderLayer"):
        fully_shard(module, mesh=mesh)
fully_shard(model, mesh=mesh)
register_fsdp_forward_method(model, "generate")  # DynTok's generate runs the tower before the first forward
result = {}
model.eval()
prompt = {key: batch[key][:1, :-4] for key in ("input_ids", "attention_mask")}
try:  # before any forward: the root unit is still sharded
    with torch.no_grad():
        model.generate(**prompt, pixel_values_videos=batch["pixel_values_videos"][:1], max_new_tokens=2)
    result["generate_first"] = "ok"
except Exception as err:
    result["generate_first"] = f"{type(err).__name__}: {err}"[:500]
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
losses = []
for _ in range(steps):
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(float(loss))
logits = fu.logits_on(model, batch)
state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:
    result["losses"] = losses
    (out / "result.json").write_text(json.dumps(result))
    torch.save({"logits": logits, "state": state}, out / "trained.pt")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    checkpoint = fu.save_checkpoint(root / "checkpoint")
    data = fu.write_dataset(root / "data")
    worker = root / "worker.py"
    worker.write_text(WORKER)
    env = fu.offline_env()
    env["PYTHONPATH"] = f"{fu.REPO / 'tests'}:{env['PYTHONPATH']}"

    def command(attempt):  # a fresh rendezvous port for every attempt
        (root / "result.json").unlink(missing_ok=True)
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", fu.free_port(),
            worker, checkpoint, data, root, STEPS,
        ]

    def wrote_its_results(done):
        assert (root / "result.json").exists() and (root / "trained.pt").exists(), "rank 0 wrote no result"

    commands.run(command, env=env, timeout=600, check=wrote_its_results, attempts=3)
    return {"checkpoint": checkpoint, "data": data, "result": json.loads((root / "result.json").read_text()),
            "trained": torch.load(root / "trained.pt")}


def test_fsdp2_trains_and_its_full_state_dict_gives_the_same_logits(fsdp_run):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from dyntok_plugin import patch_llava

    losses = fsdp_run["result"]["losses"]
    assert len(losses) == STEPS and losses[-1] < 0.9 * losses[0], losses

    fh = fine_tuning
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(fsdp_run["checkpoint"])
    model.load_state_dict(fsdp_run["trained"]["state"])
    patch_llava(model, threshold=0.7)
    dataset = fh.VideoQADataset(fh.load_records(fsdp_run["data"]),
                                AutoProcessor.from_pretrained(fsdp_run["checkpoint"]), cache=True)
    torch.testing.assert_close(fu.logits_on(model, fu.eval_batch(dataset)), fsdp_run["trained"]["logits"],
                               rtol=1e-5, atol=1e-5)


def test_fsdp2_generate_before_any_forward_once_generate_is_an_fsdp_forward_method(fsdp_run):
    assert fsdp_run["result"]["generate_first"] == "ok"
