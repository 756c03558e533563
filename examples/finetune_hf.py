"""Fine-tune a Hugging Face LLaVA-OneVision or Qwen2.5-VL / Qwen3-VL checkpoint with DynTok, on a JSONL file of
video questions and answers.

    python examples/finetune_hf.py --model CHECKPOINT --data train.jsonl --output-dir out

Each JSONL line is one example: `{"video": "clips/a.mp4", "question": "...", "answer": "...", "num_frames": 8}`.
DynTok's second training stage draws the threshold per video from `--train-threshold-range`; inference uses the
fixed `--threshold`; both are saved in `config.json`, so `load_for_inference(output_dir)` restores them. Several
processes or GPUs (DDP, FSDP, DeepSpeed ZeRO-3): see `examples/accelerate/README.md`. `--help` lists the options.

The recipe lives in the package (`dyntok_plugin.train`: `setup_model`, `build_trainer`, `save_for_inference`,
`load_for_inference`, the dataset and collator); this script is its command line.
"""

from dyntok_plugin.train.finetune import main

if __name__ == "__main__":
    main()
