"""End to end: LLaVA-NeXT's own, unedited `train_mem.py` fine-tunes a tiny model on the bundled real clip under
`python -m dyntok_plugin.llava_next_train`, and the checkpoint it writes carries the DynTok settings.

Runs only where LLaVA-NeXT's training stack imports (its `train.py` needs deepspeed, decord, an accelerate
before 1.0 and, upstream, the vendored `trl`; about transformers 4.45); skipped otherwise. Everything is local: a
tiny SigLIP (the width LLaVA-NeXT's tower class assumes, 2 layers) in an offline hub cache, a byte-level tokenizer,
a 2-layer Qwen2 and a two-sample video dataset.
"""

import importlib
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import llava_next_tiny as tiny
from media import CITY_CLIP

SIGLIP_REPO = "local/tiny-siglip"  # not a path: LLaVA-NeXT picks its SigLIP tower by this name, from the hub cache
SNAPSHOT = "0" * 40


def require_training_stack() -> None:
    tiny.require_host()
    pytest.importorskip("decord")
    try:
        importlib.import_module(f"{tiny.PACKAGE}.train.train")
    except ImportError as error:
        pytest.skip(f"LLaVA-NeXT's training script does not import here: {error}")


def build_inputs(root):
    """A tiny SigLIP in an offline hub cache, a tiny Qwen2 with a byte-level tokenizer, and a video dataset."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    siglip = importlib.import_module(f"{tiny.PACKAGE}.model.multimodal_encoder.siglip_encoder")
    torch.manual_seed(0)
    snapshot = root / "hf" / "hub" / f"models--{SIGLIP_REPO.replace('/', '--')}"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text(SNAPSHOT)
    tower = siglip.SigLipVisionModel(siglip.SigLipVisionConfig(
        hidden_size=1152, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16, image_size=384,
        patch_size=14))
    tower.save_pretrained(snapshot / "snapshots" / SNAPSHOT)

    llm = root / "tiny-qwen2"  # LLaVA-NeXT's train.py picks the Qwen branch by this name
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(
        tokenizer_object=byte_level, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=4096,
    ).save_pretrained(llm)
    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
    )).save_pretrained(llm)

    sample = {"video": CITY_CLIP.name, "conversations": [
        {"from": "human", "value": "<image>\nWhat happens in the video?"},
        {"from": "gpt", "value": "Cars drive through a city street."}]}
    data = root / "data.json"
    data.write_text(json.dumps([dict(sample, id=f"v{i}") for i in range(2)]))
    return llm, data


def test_llava_next_training_script_fine_tunes_with_dyntok(tmp_path):
    require_training_stack()
    llm, data = build_inputs(tmp_path)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "dyntok_plugin.llava_next_train", "--dyntok_threshold_range", "0.5", "0.9",
        "--dyntok_seed", "0", "--dyntok_module", f"{tiny.PACKAGE}.train.train_mem",
        "--model_name_or_path", str(llm), "--version", "qwen_1_5", "--data_path", str(data),
        "--video_folder", str(CITY_CLIP.parent), "--frames_upbound", "3", "--vision_tower", SIGLIP_REPO,
        "--mm_projector_type", "mlp2x_gelu", "--mm_patch_merge_type", "spatial_unpad",
        "--mm_newline_position", "one_token", "--mm_spatial_pool_mode", "bilinear",
        "--image_aspect_ratio", "anyres_max_9", "--image_grid_pinpoints", "(1x1),...,(2x2)",
        "--mm_tunable_parts", "mm_mlp_adapter,mm_language_model", "--attn_implementation", "sdpa",
        "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "1", "--learning_rate", "1e-3",
        "--report_to", "none", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
        "--use_cpu", "True", "--bf16", "False", "--gradient_checkpointing", "True", "--model_max_length", "4096",
        "--lazy_preprocess", "True", "--dataloader_num_workers", "0",
    ]
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    # The script's final save calls torch.cuda.synchronize(); on a CPU-only torch that is the one allowed failure.
    assert run.returncode == 0 or "Torch not compiled with CUDA enabled" in log[-2000:], log[-4000:]

    losses = [float(v) for v in re.findall(r"'loss': ([0-9.eE+-]+)", log)]
    assert len(losses) == 1 and math.isfinite(losses[0]), log[-4000:]
    assert log.count("DynTok runs with marker='row'") == 1  # the layout warning, logged once, from inside the hook
    saved = json.loads((out / "checkpoint-1" / "config.json").read_text())
    assert saved["mm_newline_position"] == "one_token"  # the layout it was set up with, not DynTok's route
    assert saved["dyntok"]["train_threshold_range"] == [0.5, 0.9] and saved["dyntok"]["threshold"] == 0.7
