"""Multi-GPU fine-tuning of a 0.5B-sized LLaVA-OneVision with DynTok on, through `examples/finetune_hf.py` (issue 9).

    # GPUs: FSDP2 through accelerate (examples/accelerate/fsdp.yaml), one process per GPU
    python benchmarks/multi_gpu_finetune.py run --nproc 2 --out-dir OUT
    # one GPU: FSDP2 in one process, the reload check at bf16 and float32 training precision (issue 17)
    python benchmarks/multi_gpu_finetune.py run --nproc 1 --variants dyntok --precision auto fp32 --out-dir OUT
    # CPU check of the same driver: two gloo processes (torchrun, `--cpu`), tiny model
    python benchmarks/multi_gpu_finetune.py run --nproc 2 --cpu --size tiny --out-dir OUT

`run` does everything offline:

1. `prepare`: builds a checkpoint with random weights from a configuration in this file (`0.5b`: Qwen2-0.5B text
   model, hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151936 with tied embeddings;
   SigLIP-so400m/14 at 384 px, 26 layers, "full" features, as in llava-onevision-qwen2-0.5b-ov; `--vision-layers`
   shortens the tower), saves it with a `LlavaOnevisionProcessor` at the tower's resolution and the offline
   word-level tokenizer and chat template of `dyntok_plugin.hf.synthetic`, and writes a JSONL of its questions
   and answers on the bundled clip, every record with `--frames` frames.
2. One launch per variant of `dyntok_plugin.train.finetune.train()` (what `examples/finetune_hf.py` runs; the
   `worker` sub-command only adds measurement hooks through its `prepare_model` and `callbacks` arguments):
   `dyntok` (threshold 0.7 at inference, τ ~ U(0.6, 0.9) per video in training) and `stock` (the same recipe,
   with `unpatch_llava` before training, so the stock LLaVA-OV layout: all F·14·14 + 1 video tokens). GPUs: `accelerate launch --config_file examples/accelerate/fsdp.yaml
   --num_processes N`; CPU: `torchrun --nproc_per_node N ... --cpu` (accelerate ignores FSDP on a CPU, so the CPU
   check runs the script's DDP/gloo path).
3. For `dyntok`, after training and `save_for_inference`: the trained (sharded) model's eval logits on the whole
   set, its full state dict gathered from the shards, and on rank 0 `load_for_inference(output_dir)` in float32 and
   in bf16 — each reload's weights (before any forward or cast) against the gathered state in its dtype, its
   logits against the trained model's; the float32 reload is also run as accelerate's bf16 FSDP2 runs the trained
   model (bf16 parameters, float32 buffers, bf16 autocast, bf16 logits). `--precision auto fp32` trains the dyntok
   variant once per precision.

Measured per rank: each optimizer step's wall time between Trainer's `on_step_begin` and `on_step_end` (CUDA
synchronised), the language model's input length per step (a forward pre-hook), DynTok's per-video token counts,
and the peak allocated/reserved CUDA memory. Reported: the median over the steps after `--skip-steps`, tokens/s per
GPU (LLM tokens of that rank / step time) and summed over the GPUs, peak memory per GPU, the loss curve (rank 0's
Trainer log). Results: a JSON file (`--json`, default `benchmarks/results/multi_gpu_finetune_<device>.json`) and a
table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import LLAVA_OV_05B

REPO = Path(__file__).resolve().parents[1]
FSDP_YAML = REPO / "examples" / "accelerate" / "fsdp.yaml"
CLIP = REPO / "assets" / "city_cc0.mp4"

# llava-onevision-qwen2-0.5b-ov sizes (HF conversion), random weights. The tokenizer is the synthetic
# word-level one (128 ids); the embedding keeps Qwen2's 151936 rows so the LM head costs what it costs.
SIZES = {
    "0.5b": dict(**LLAVA_OV_05B, tie_word_embeddings=True),
    "tiny": dict(vision={}, text={}, tie_word_embeddings=False),  # the synthetic tiny size (32 px, 8x8 grid)
}
NCCL_SAFETY = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


# ------------------------------------------------------------------------------------------------ prepare


def prepare(work: Path, size: str, frames: int, vision_layers: Optional[int], device: str) -> dict:
    """Write `work/checkpoint` (random model + processor + tokenizer) and `work/data/train.jsonl`."""
    from dyntok_plugin.hf import synthetic

    spec = SIZES[size]
    vision = dict(spec["vision"])
    if vision_layers:
        vision["num_hidden_layers"] = vision_layers
    overrides: dict[str, Any] = {"tie_word_embeddings": True} if spec["tie_word_embeddings"] else {}
    config = synthetic.llava_onevision_config(vision, dict(spec["text"]), **overrides)
    config._attn_implementation = "sdpa"
    begin = time.perf_counter()
    model = synthetic.random_llava_onevision(config, seed=0, device=device)
    params = sum(p.numel() for p in model.parameters())
    checkpoint = work / "checkpoint"
    model.save_pretrained(checkpoint)
    del model
    synthetic.build_tokenizer().save_pretrained(checkpoint)
    vcfg = config.vision_config
    synthetic.build_processor(vcfg.image_size, vcfg.patch_size).save_pretrained(checkpoint)
    data = synthetic.write_qa_dataset(work / "data", CLIP, (frames,) * len(synthetic.QA_PAIRS))
    return {"checkpoint": str(checkpoint), "data": str(data), "parameters": params,
            "vision": vcfg.to_dict() if hasattr(vcfg, "to_dict") else str(vcfg),
            "text_layers": config.text_config.num_hidden_layers, "vocab_size": config.text_config.vocab_size,
            "prepare_s": time.perf_counter() - begin}


# ------------------------------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace, finetune_argv: list) -> None:
    """Run `dyntok_plugin.train.finetune.train(finetune_argv)` with measurement hooks; write this rank's metrics to
    args.metrics."""
    import torch
    from transformers import TrainerCallback

    from dyntok_plugin import unpatch_llava
    from dyntok_plugin.train import host_parts
    from dyntok_plugin.train.finetune import train
    rank = int(os.environ.get("RANK", "0"))
    metrics: dict[str, Any] = {"rank": rank, "variant": args.variant, "steps": []}
    seen: list = []
    holder: dict[str, Any] = {}
    cuda = torch.cuda.is_available() and "--cpu" not in finetune_argv

    def prepare_model(model):
        if args.variant == "stock":
            unpatch_llava(model)  # stock LLaVA-OV forward; requires_grad choices stay
        llm = host_parts(model)["llm"][0]

        def hook(_module, hook_args, kwargs):
            given = kwargs.get("inputs_embeds")
            given = kwargs.get("input_ids") if given is None else given
            if given is None and hook_args:
                given = hook_args[0]
            seen.append(int(given.shape[0] * given.shape[1]))

        llm.register_forward_pre_hook(hook, with_kwargs=True)
        holder["model"] = model
        return model

    class Meter(TrainerCallback):
        def on_train_begin(self, *_a, **_k):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                metrics["memory_at_train_begin_gb"] = torch.cuda.memory_allocated() / 1e9

        def on_step_begin(self, *_a, **_k):
            if cuda:
                torch.cuda.synchronize()
            seen.clear()
            holder["t0"] = time.perf_counter()

        def on_step_end(self, *_a, **_k):
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - holder["t0"]
            cfg = getattr(holder["model"], "dyntok", None)
            stats = list(getattr(cfg, "last_stats", None) or []) if args.variant == "dyntok" else []
            metrics["steps"].append({
                "s": seconds, "llm_tokens": sum(seen),
                "video_tokens_in": [int(s.tokens_in) for s in stats],
                "video_tokens_out": [int(s.tokens_out) for s in stats],
                "thresholds": [float(s.threshold) for s in stats if s.threshold is not None],
            })

        def on_train_end(self, *_a, **_k):
            if cuda:
                torch.cuda.synchronize()
                metrics["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
                metrics["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9

    begin = time.perf_counter()
    trainer, _processor, dataset, out = train(finetune_argv, prepare_model=prepare_model, callbacks=[Meter()])
    metrics["train_and_save_s"] = time.perf_counter() - begin
    metrics["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    metrics["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    metrics["wrapped_as"] = type(trainer.model_wrapped).__name__
    metrics["fsdp"] = bool(getattr(trainer, "is_fsdp_enabled", False))
    metrics["mixed_precision"] = str(getattr(trainer.accelerator, "mixed_precision", None))
    if trainer.is_world_process_zero():
        metrics["log_history"] = trainer.state.log_history
    if args.variant == "dyntok":
        metrics["reload"] = check_reload(trainer, dataset, Path(out), cuda)
    Path(args.metrics).write_text(json.dumps(metrics, indent=1, default=str))
    trainer.accelerator.wait_for_everyone()


def _param_dtype_note(model) -> str:
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    return ",".join(dtypes)


def check_reload(trainer, dataset, out: Path, cuda: bool) -> dict:
    """Trained model's eval logits and full weights (all ranks, collective) vs `load_for_inference(out)` (rank 0),
    reloaded in float32 and in bf16."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from dyntok_plugin.train import VideoQACollator, host_parts

    result: dict[str, Any] = {}
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    examples = [dataset[i] for i in range(len(dataset))]
    batch = VideoQACollator(dataset.processor.tokenizer.pad_token_id)(examples)
    batch = {k: v.to(device) if torch.is_tensor(v) else [t.to(device) for t in v] for k, v in batch.items()}
    model = trainer.model_wrapped
    base = host_parts(trainer.model)
    embed = base["llm"][0].get_input_embeddings().weight
    head = base["llm"][1].weight if len(base["llm"]) > 1 else None
    result["lm_head_tied_to_embeddings_after_training"] = head is not None and head is embed
    result["param_dtypes_before_eval"] = _param_dtype_note(trainer.model)
    try:  # gathered before any eval forward (FSDP2 leaves the root unit unsharded, in bf16, after a forward)
        state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        state, result["gather_error"] = None, f"{type(err).__name__}: {err}"[:400]
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits.float().cpu()
    result["param_dtypes_after_eval"] = _param_dtype_note(trainer.model)
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return result
    policy = getattr(getattr(trainer.accelerator.state, "fsdp_plugin", None), "mixed_precision_policy", None)
    result["fsdp_mixed_precision_policy"] = str(policy) if policy is not None else None
    result["saved_tensor_dtypes"] = _saved_dtypes(out)
    if state is not None:
        result["gathered_state_dtypes"] = sorted({str(v.dtype) for v in state.values()})
    result.update(compare_reload(out, state, trained, batch, device))
    return result


def compare_reload(out: Path, state: Optional[dict], trained, batch: dict, device) -> dict:
    """Reload `out` in float32 and in bf16 (`load_for_inference(dtype=...)`): the weights against the gathered float32
    state (cast to the reload dtype; compared before any forward or cast, so the comparison sees what was loaded),
    and the logits against the trained model's. In float32 the trained model's forward is emulated as accelerate's
    bf16 FSDP2 runs it as well: parameters in bf16, buffers in float32, bf16 autocast, logits rounded to bf16."""
    import torch

    from dyntok_plugin.train import load_for_inference

    result: dict[str, Any] = {}
    if state is not None:  # what the first two-GPU run reported as its weight difference (its reload was cast
        # to bf16 in place for the bf16 logits, then back to float32, before its weights were compared)
        floats = [v for v in state.values() if v.is_floating_point()]
        rounding = [float((v - v.to(torch.bfloat16).float()).abs().max()) for v in floats]
        result["max_bf16_rounding_of_gathered"] = max(rounding, default=None)
    for dtype, tag in ((torch.float32, "float32"), (torch.bfloat16, "bf16")):
        begin = time.perf_counter()
        reloaded = load_for_inference(out, dtype=dtype).to(device)
        entry: dict[str, Any] = {"reload_s": time.perf_counter() - begin}
        if tag == "float32":
            result["reloaded_dyntok"] = dict(reloaded.config.dyntok)
        if state is not None:
            entry.update(compare_weights(reloaded, state, dtype))
        with torch.no_grad():
            again = reloaded(**batch).logits.float().cpu()
        entry.update(_logit_diff(again, trained))
        if tag == "float32":
            with torch.no_grad():
                for param in reloaded.parameters():
                    param.data = param.data.to(torch.bfloat16)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    emulated = reloaded(**batch).logits.to(torch.bfloat16).float().cpu()
            result["fsdp_bf16_emulated"] = _logit_diff(emulated, trained)
        result[tag] = entry
        del reloaded
    return result


def compare_weights(model, state: dict, dtype) -> dict:
    """Max |reloaded - gathered.to(dtype)| per tensor, over the gathered state's names."""
    mine = model.state_dict()
    diffs = {name: float((mine[name].detach().cpu().float() - value.to(dtype).float()).abs().max())
             for name, value in state.items() if name in mine}
    missing = [name for name in state if name not in mine]
    return {"weights_compared": len(diffs), "weights_missing_in_reload": missing[:10],
            "max_abs_weight_diff": max(diffs.values()) if diffs else None,
            "weights_differing": sum(1 for v in diffs.values() if v > 0),
            "largest_weight_diffs": dict(sorted(diffs.items(), key=lambda kv: -kv[1])[:5])}


def _logit_diff(again, trained) -> dict:
    same_shape = again.shape == trained.shape
    return {"logits_shape": list(again.shape), "logits_identical": bool(same_shape and (again == trained).all()),
            "max_abs_logit_diff": float((again - trained).abs().max()) if same_shape else None}


def _saved_dtypes(out: Path):
    """Tensor count per dtype in the saved safetensors files."""
    try:
        from safetensors import safe_open

        saved: dict = {}
        for shard in sorted(out.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as handle:
                for key in handle.keys():
                    dtype = handle.get_slice(key).get_dtype()
                    saved[dtype] = saved.get(dtype, 0) + 1
        return saved
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        return f"{type(err).__name__}: {err}"[:200]


# --------------------------------------------------------------------------------------------------- run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args, variant: str, prep: dict, work: Path, timeout: float, config: Optional[Path] = None,
           tag: str = "", precision: Optional[str] = None) -> dict:
    """One launch of the worker for `variant` (at `precision`, default the first of --precision); returns rank
    metrics (or the failure)."""
    metrics_dir = work / f"metrics-{variant}{tag}"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    finetune = [
        "--model", prep["checkpoint"], "--data", prep["data"], "--output-dir", str(work / f"run-{variant}{tag}"),
        "--train", args.train, "--threshold", "0.7", "--train-threshold-range", "0.6", "0.9",
        "--lr", str(args.lr), "--max-steps", str(args.steps), "--batch-size", "1", "--cache-frames",
        "--seed", "0", "--precision", precision or args.precision[0],
    ]
    if args.cpu:
        finetune.append("--cpu")
    worker_args = [str(Path(__file__).resolve()), "worker", "--variant", variant,
                   "--metrics", str(metrics_dir / "rank{rank}.json"), "--"] + finetune
    port = str(free_port())
    if args.launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config or
                   args.accelerate_config), "--num_processes", str(args.nproc), "--main_process_port", port] + worker_args
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                   "--master_port", port] + worker_args
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", **NCCL_SAFETY)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [env.get("PYTHONPATH", ""), str(REPO)] if p)
    if args.cpu:
        env["OMP_NUM_THREADS"] = "1"
    log_path = Path(args.out_dir) / f"{variant}{tag}.log"
    print(f"== {variant}: {' '.join(command[:8])} ... (log {log_path.name}, timeout {timeout:.0f} s)", flush=True)
    begin = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - begin
    tail = log_path.read_text(errors="replace")[-2500:]
    if rc != 0:
        print(f"-- {variant} failed (rc {rc}) after {wall:.0f} s; log tail:\n{tail}", flush=True)
    ranks = []
    for rank in range(args.nproc):
        path = metrics_dir / f"rank{rank}.json"
        if path.exists():
            ranks.append(json.loads(path.read_text()))
    return {"variant": variant + tag, "rc": rc, "config": Path(config or args.accelerate_config).name if args.launcher == "accelerate" else "torchrun",
             "launch_wall_s": wall, "ranks": ranks,
            "log_tail": tail if rc != 0 else None}


def summarise(result: dict, skip: int) -> dict:
    """Median step time, tokens/s per GPU and in all, peak memory per GPU, losses, DynTok ratios."""
    row: dict[str, Any] = {"variant": result["variant"], "config": result.get("config"), "status": "ok" if result["rc"] == 0 else f"failed ({result['rc']})"}
    ranks = sorted(result["ranks"], key=lambda r: r["rank"])
    if not ranks:
        return row
    per_gpu = []
    for r in ranks:
        steps = r["steps"][skip:] or r["steps"]
        if not steps:
            continue
        seconds = statistics.median(s["s"] for s in steps)
        tokens = statistics.median(s["llm_tokens"] for s in steps)
        rates = [s["llm_tokens"] / s["s"] for s in steps]
        per_gpu.append({"rank": r["rank"], "device": r.get("device"), "median_step_s": seconds,
                        "median_llm_tokens_per_step": tokens, "tokens_per_s": statistics.median(rates),
                        "peak_allocated_gb": r.get("peak_allocated_gb"), "peak_reserved_gb": r.get("peak_reserved_gb"),
                        "steps_timed": len(steps), "step_s_all": [round(x["s"], 5) for x in r["steps"]],
                        "llm_tokens_all": [x["llm_tokens"] for x in r["steps"]]})
        vin = [v for s in steps for v in s["video_tokens_in"]]
        vout = [v for s in steps for v in s["video_tokens_out"]]
        if vin:
            row.setdefault("video_tokens_in", vin[0])
            row.setdefault("video_tokens_out_all", []).extend(vout)
            row.setdefault("thresholds_drawn", []).extend(t for s in steps for t in s["thresholds"])
    row["per_gpu"] = per_gpu
    if per_gpu:
        row["tokens_per_s_per_gpu"] = statistics.mean(g["tokens_per_s"] for g in per_gpu)
        row["tokens_per_s_total"] = sum(g["tokens_per_s"] for g in per_gpu)
        row["median_step_s"] = max(g["median_step_s"] for g in per_gpu)
        row["llm_tokens_per_step_per_gpu"] = statistics.mean(g["median_llm_tokens_per_step"] for g in per_gpu)
        mem = [g["peak_allocated_gb"] for g in per_gpu if g["peak_allocated_gb"] is not None]
        row["peak_allocated_gb_per_gpu"] = [round(m, 3) for m in mem] or None
        res = [g["peak_reserved_gb"] for g in per_gpu if g["peak_reserved_gb"] is not None]
        row["peak_reserved_gb_per_gpu"] = [round(m, 3) for m in res] or None
    if row.get("video_tokens_out_all"):
        outs = row["video_tokens_out_all"]
        row["video_tokens_out_median"] = statistics.median(outs)
        row["video_ratio_median"] = statistics.median(outs) / row["video_tokens_in"]
    history = next((r.get("log_history") for r in ranks if r.get("log_history")), None) or []
    losses = [h["loss"] for h in history if "loss" in h]
    row["losses"] = losses
    if losses:
        row["first_loss"], row["last_loss"] = losses[0], losses[-1]
        k = max(1, min(4, len(losses) // 4))
        row["loss_falls"] = statistics.mean(losses[-k:]) < statistics.mean(losses[:k])
    for key in ("fsdp", "wrapped_as", "mixed_precision", "world_size", "train_and_save_s"):
        row[key] = ranks[0].get(key)
    reload = next((r.get("reload") for r in ranks if r.get("reload") and "float32" in r["reload"]), None)
    if reload is not None:
        row["reload"] = reload
    return row


def print_summary(rows: list) -> None:
    columns = ["variant", "status", "fsdp", "llm_tok/step/gpu", "video_tok", "step_s", "tok/s/gpu", "tok/s_total",
               "peak_alloc_GB/gpu", "loss first→last"]
    table = []
    for row in rows:
        vt = row.get("video_tokens_in")
        vt = f"{row.get('video_tokens_out_median', vt)}/{vt}" if vt else "-"
        losses = f"{row['first_loss']:.3f}→{row['last_loss']:.3f}" if row.get("losses") else "-"
        table.append([row["variant"], row["status"], str(row.get("fsdp", "-")),
                      _fmt(row.get("llm_tokens_per_step_per_gpu")), vt, _fmt(row.get("median_step_s")),
                      _fmt(row.get("tokens_per_s_per_gpu")), _fmt(row.get("tokens_per_s_total")),
                      ",".join(_fmt(m) for m in row.get("peak_allocated_gb_per_gpu") or []) or "-", losses])
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for t in table:
        print("  ".join(v.rjust(w) for v, w in zip(t, widths)))


def print_reload(variant: str, reload: dict) -> None:
    """One line per reload dtype: weights against the gathered state, logits against the trained model's."""
    print(f"{variant}: saved {reload.get('saved_tensor_dtypes')}, gathered {reload.get('gathered_state_dtypes')}, "
          f"FSDP policy {reload.get('fsdp_mixed_precision_policy')}")
    for tag in ("float32", "bf16"):
        rl = reload.get(tag) or {}
        print(f"  reload {tag}: max |Δweight| {rl.get('max_abs_weight_diff')} over {rl.get('weights_compared')} "
              f"tensors ({rl.get('weights_differing')} differ); max |Δlogit| {rl.get('max_abs_logit_diff')}, "
              f"identical {rl.get('logits_identical')}")
    print(f"  max |w - bf16(w)| over the gathered weights: {reload.get('max_bf16_rounding_of_gathered')}")
    emulated = reload.get("fsdp_bf16_emulated") or {}
    print(f"  float32 reload run as bf16 FSDP2 runs it: max |Δlogit| {emulated.get('max_abs_logit_diff')}, "
          f"identical {emulated.get('logits_identical')}")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def launches(variants: list, precisions: list) -> list:
    """(variant, precision) pairs: every variant at the first precision, then dyntok at the others."""
    pairs = [(variant, precisions[0]) for variant in variants]
    return pairs + [("dyntok", p) for p in precisions[1:] if "dyntok" in variants]


def _shown(path: Path) -> str:
    """A path as the results file records it: relative to the repository when inside it (no machine's folders)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def run(args: argparse.Namespace) -> None:
    import torch

    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cuda = torch.cuda.is_available() and not args.cpu
    device_names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"]
    print(f"devices: {device_names}; torch {torch.__version__}", flush=True)
    prep = prepare(work, args.size, args.frames, args.vision_layers, "cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.empty_cache()
    print(f"prepared: {prep['parameters'] / 1e6:.1f}M parameters in {prep['prepare_s']:.1f} s", flush=True)
    results = []
    for variant, precision in launches(args.variants, args.precision):
        left = args.deadline - (time.perf_counter() - start)
        tag = "" if precision == args.precision[0] else f"-{precision}"
        if left < 30:
            results.append({"variant": variant + tag, "rc": "skipped (deadline)", "ranks": [], "launch_wall_s": 0})
            continue
        results.append(launch(args, variant, prep, work, timeout=left - 10, tag=tag, precision=precision))
        left = args.deadline - (time.perf_counter() - start)
        if (results[-1]["rc"] != 0 and args.fallback_config and args.launcher == "accelerate" and variant == "dyntok"
                and left > 90):
            print(f"-- retrying {variant} with {args.fallback_config.name}", flush=True)
            results.append(launch(args, variant, prep, work, timeout=left - 10, config=args.fallback_config,
                                  tag="-" + args.fallback_config.stem))
    rows = [summarise(r, args.skip_steps) for r in results]
    stock = next((r for r in rows if r["variant"].startswith("stock") and r.get("tokens_per_s_total")), None)
    for row in rows:
        if stock and row is not stock and row.get("tokens_per_s_total"):
            row["llm_tokens_vs_stock"] = row["llm_tokens_per_step_per_gpu"] / stock["llm_tokens_per_step_per_gpu"]
            row["step_speedup_vs_stock"] = stock["median_step_s"] / row["median_step_s"]
    print()
    print_summary(rows)
    for row in rows:
        if "reload" in row:
            print_reload(row["variant"], row["reload"])
    import transformers

    payload = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "devices": device_names,
        "launcher": args.launcher,
        "accelerate_config": Path(args.accelerate_config).name if args.launcher == "accelerate" else None,
        "nproc": args.nproc,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": {k: v for k, v in prep.items() if k not in ("checkpoint", "data")},
        "settings": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("out_dir", "work", "json", "func")},
        "note": ("Random weights: the DynTok compression ratio under tau ~ U(0.6, 0.9) reflects random SigLIP "
                 "features, not real ones. Tokens = the language model's input length (text + video) per rank; "
                 "step time = Trainer's on_step_begin..on_step_end, CUDA synchronised; medians after skip_steps."),
        "rows": rows,
        "launch_log_tails": {r["variant"]: r["log_tail"] for r in results if r.get("log_tail")},
        "total_wall_s": time.perf_counter() - start,
    }
    path = Path(args.json) if args.json else out_dir / "multi_gpu_finetune.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {path.name} ({payload['total_wall_s']:.0f} s in all)")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[list] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    finetune_argv: list = []
    if "--" in argv:
        at = argv.index("--")
        argv, finetune_argv = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="prepare, launch each variant, summarise")
    r.add_argument("--nproc", type=int, default=2)
    r.add_argument("--cpu", action="store_true", help="CPU: torchrun + gloo, the script's --cpu")
    r.add_argument("--launcher", choices=("accelerate", "torchrun"), default=None,
                   help="default: accelerate on GPUs, torchrun with --cpu")
    r.add_argument("--accelerate-config", type=Path, default=FSDP_YAML)
    r.add_argument("--fallback-config", type=Path, default=REPO / "examples" / "accelerate" / "ddp.yaml",
                   help="accelerate config to retry the dyntok variant with if the first launch fails")
    r.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    r.add_argument("--vision-layers", type=int, default=None, help="shorten the SigLIP tower (default: all 26)")
    r.add_argument("--frames", type=int, default=16)
    r.add_argument("--steps", type=int, default=16)
    r.add_argument("--skip-steps", type=int, default=4, help="steps left out of the medians")
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--train", default="projector,marker,llm")
    r.add_argument("--precision", nargs="+", choices=("auto", "bf16", "fp32"), default=["auto"],
                   help="the script's --precision; several: the dyntok variant runs once per precision")
    r.add_argument("--variants", nargs="+", default=["dyntok", "stock"], choices=("dyntok", "stock"))
    r.add_argument("--deadline", type=float, default=290.0, help="seconds for the whole run; later launches skip")
    r.add_argument("--out-dir", required=True, help="logs and the JSON")
    r.add_argument("--json", default=None, help="JSON path (default OUT_DIR/multi_gpu_finetune.json)")
    r.add_argument("--work", default=None, help="checkpoints and runs (default: folder 'work' in OUT_DIR, removed at the end)")
    r.add_argument("--keep-work", action="store_true")
    w = sub.add_parser("worker", help="one rank: finetune_hf.train with measurement hooks (args after --)")
    w.add_argument("--variant", choices=("dyntok", "stock"), required=True)
    w.add_argument("--metrics", required=True, help="JSON path; {rank} is replaced")
    args = parser.parse_args(argv)
    if args.command == "worker":
        args.metrics = args.metrics.replace("{rank}", os.environ.get("RANK", "0"))
        worker(args, finetune_argv)
    else:
        args.launcher = args.launcher or ("torchrun" if args.cpu else "accelerate")
        run(args)


if __name__ == "__main__":
    main()
