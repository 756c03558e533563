"""Training thresholds under torch.distributed: every rank draws its own stream, reproducibly.

Two gloo processes on the loopback interface. On a loaded machine a gloo rendezvous can lose a connection
(`Gloo connectFullMesh failed ... Connection closed by peer`): that failure, and only that kind (commands.TRANSIENT),
starts the pair again, at most three times in all; any other error fails the test at once.
"""

import datetime
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import commands
from dyntok_plugin import DynTokCompressor, DynTokConfig

ATTEMPTS = 3
SEEDS = (None, 7)  # torch's initial seed, and a configured one


def _draw(rank: int, world_size: int, init_file: str, out: dict) -> None:
    """Rank `rank`'s thresholds for each of SEEDS, each from a new compressor after torch.manual_seed(0) (the state
    a fresh process would have: a compressor's draws come from its own generator, seeded from the seed or torch's
    initial seed and the rank)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=300))
    try:
        draws = {}
        for seed in SEEDS:
            torch.manual_seed(0)  # trainers seed every rank alike
            comp = DynTokCompressor(4, DynTokConfig(train_threshold_range=(0.0, 1.0), seed=seed)).train()
            features = torch.randn(3, 2, 3, 4)
            draws[seed] = [s.threshold for _ in range(2) for s in comp.compress_batch(features, [1, 2]).stats]
        out[rank] = draws
    finally:
        dist.destroy_process_group()


def _run() -> dict:
    for attempt in range(ATTEMPTS):
        # a fresh rendezvous file each attempt: a file left by a failed group would be joined by the next one
        with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
            out = manager.dict()
            try:
                mp.spawn(_draw, args=(2, os.path.join(folder, "init"), out), nprocs=2, join=True)
            except mp.ProcessRaisedException as err:
                if attempt + 1 < ATTEMPTS and commands.is_transient(str(err)):
                    continue
                raise
            return dict(out)
    raise AssertionError("unreachable")


@pytest.fixture(autouse=True)
def loopback(monkeypatch):
    """Gloo on the loopback interface in the spawned ranks (they inherit this process's environment)."""
    for key, value in commands.loopback_env({}).items():
        monkeypatch.setenv(key, os.environ.get(key, value))


def test_ranks_draw_different_reproducible_thresholds():
    first, again = _run(), _run()  # two process groups, each drawing for every seed
    assert first == again
    for seed in SEEDS:
        assert first[0][seed] != first[1][seed], seed
        assert all(0.0 <= t <= 1.0 for draws in first.values() for t in draws[seed])
