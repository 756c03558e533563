"""Training thresholds under torch.distributed: every rank draws its own stream, reproducibly."""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dyntok_plugin import DynTokCompressor, DynTokConfig


def _draw(rank: int, world_size: int, init_file: str, seed, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # trainers seed every rank alike
        comp = DynTokCompressor(4, DynTokConfig(train_threshold_range=(0.0, 1.0), seed=seed)).train()
        features = torch.randn(3, 2, 3, 4)
        out[rank] = [s.threshold for _ in range(2) for s in comp.compress_batch(features, [1, 2]).stats]
    finally:
        dist.destroy_process_group()


def _run(seed) -> dict:
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_draw, args=(2, os.path.join(folder, "init"), seed, out), nprocs=2, join=True)
        return dict(out)


def test_ranks_draw_different_reproducible_thresholds():
    for seed in (None, 7):
        first, again = _run(seed), _run(seed)
        assert first == again
        assert first[0] != first[1]
        assert all(0.0 <= t <= 1.0 for draws in first.values() for t in draws)
