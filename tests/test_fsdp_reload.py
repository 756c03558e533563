"""The FSDP2 save/reload round trip under a bf16 mixed-precision policy is exact in float32 (issue 17), on the CPU.

One process (gloo, world size 1: the same unsharding, casting and gathering as with more ranks, at half the cost on
a two-core machine) shards the tiny LLaVA-OneVision with DynTok on as accelerate's FSDP2 does for
`examples/accelerate/fsdp.yaml` with `bf16=True`: one unit per SigLIP and Qwen2 layer, the embeddings, final norm and
LM head in a unit left unsharded after forward, the rest (`image_newline`, the DynTok marker, included) in the root
unit, `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16, output_dtype=bf16)` and bf16 autocast. After a few
optimizer steps and an eval forward (which leaves the root unit unsharded in bf16), rank 0 saves the state dict
gathered as accelerate's `get_state_dict` gathers it for `Trainer.save_model`, and the test reloads it with
`load_for_inference`. The comparison is the two-GPU driver's (`benchmarks/multi_gpu_finetune.py`), which once
compared weights after casting its reload to bf16 in place, and so reported bf16 rounding as a reload difference.
"""

import importlib.util
import json
import sys

import pytest
import torch

pytest.importorskip("torch.distributed.fsdp", reason="needs torch.distributed")

import commands  # noqa: E402
import finetune_utils as fu  # noqa: E402

WORKER = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
import hf_tiny as ht
from dyntok_plugin import patch_llava

out = Path(sys.argv[1])
dist.init_process_group("gloo")
model = ht.build_tiny_llava_onevision(seed=0, attn_implementation="sdpa")
patch_llava(model, threshold=0.7, train_threshold_range=(0.6, 0.9), seed=0).train()
policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, output_dtype=torch.bfloat16)
shard = dict(mesh=init_device_mesh("cpu", (dist.get_world_size(),)), mp_policy=policy)
for module in model.modules():
    if type(module).__name__ in ("SiglipEncoderLayer", "Qwen2DecoderLayer"):
        fully_shard(module, **shard)
fully_shard(model.get_input_embeddings(), **shard)
fully_shard([model.model.language_model.norm, model.get_output_embeddings()], **shard, reshard_after_forward=False)
fully_shard(model, **shard)
batch = ht.pad_batch([ht.sample_ids(ht.text_ids(3, 1), ("video", 2), ht.text_ids(5, 2))], labels=True)
batch["pixel_values_videos"] = ht.random_videos(1, 2, seed=3)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
losses = []
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(float(loss))
model.eval()
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    logits = model(**batch).logits.float()
root_dtypes = sorted({str(p.dtype) for p in model.parameters()})
accelerate_like = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
saved = get_model_state_dict(model, options=accelerate_like)
if dist.get_rank() == 0:
    model.save_pretrained(out / "checkpoint", state_dict=saved)
    torch.save({"state": saved, "logits": logits, "batch": batch}, out / "trained.pt")
    (out / "result.json").write_text(json.dumps({"losses": losses, "param_dtypes_after_eval": root_dtypes}))
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def fsdp_bf16_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp-bf16")
    worker = root / "worker.py"
    worker.write_text(WORKER)
    env = fu.offline_env()
    env["PYTHONPATH"] = f"{fu.REPO / 'tests'}:{env['PYTHONPATH']}"

    def command(attempt):
        (root / "result.json").unlink(missing_ok=True)
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                fu.free_port(), worker, root]

    def wrote_its_results(done):
        assert (root / "result.json").exists() and (root / "trained.pt").exists(), "rank 0 wrote no result"

    commands.run(command, env=env, timeout=300, check=wrote_its_results, attempts=3)
    return {"root": root, "result": json.loads((root / "result.json").read_text()),
            "trained": torch.load(root / "trained.pt")}


def _driver():
    """benchmarks/multi_gpu_finetune.py as a module (it imports `common` from its own folder)."""
    folder = fu.REPO / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("multi_gpu_finetune", folder / "multi_gpu_finetune.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def test_fsdp2_bf16_policy_saves_float32_master_weights_and_reloads_them_exactly(fsdp_bf16_run):
    from safetensors.torch import load_file

    result, trained = fsdp_bf16_run["result"], fsdp_bf16_run["trained"]
    assert result["losses"][-1] < result["losses"][0], result["losses"]
    assert "torch.bfloat16" in result["param_dtypes_after_eval"]  # root unit left unsharded in bf16 by the forward
    state = trained["state"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    written = load_file(str(fsdp_bf16_run["root"] / "checkpoint" / "model.safetensors"))
    assert {v.dtype for v in written.values() if v.is_floating_point()} == {torch.float32}

    report = _driver().compare_reload(fsdp_bf16_run["root"] / "checkpoint", state, trained["logits"],
                                      trained["batch"], torch.device("cpu"))
    marker = "model.image_newline"
    assert (state[marker] - state[marker].to(torch.bfloat16).float()).abs().max() > 0  # bf16 would show on it
    assert report["max_bf16_rounding_of_gathered"] > 0
    for tag in ("float32", "bf16"):
        assert report[tag]["weights_compared"] == len(state) and not report[tag]["weights_missing_in_reload"]
        assert report[tag]["max_abs_weight_diff"] == 0.0, (tag, report[tag]["largest_weight_diffs"])
    assert report["float32"]["logits_shape"] == list(trained["logits"].shape)
    # the float32 reload run as the bf16 FSDP2 forward runs (bf16 parameters, float32 buffers, autocast)
    assert report["fsdp_bf16_emulated"]["logits_identical"], report["fsdp_bf16_emulated"]
