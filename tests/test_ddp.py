"""DistributedDataParallel: a small G-CNN trained for a few SGD steps on 2 CPU processes (gloo) ends
with the same parameters as one process on the same global batch (float64, tight tolerance).

Each rank sees half of the batch; DDP averages the gradients of the per-rank mean losses, which is the gradient
of the global mean loss, so the runs agree up to the reduction order (float64 round-off).  No batch norm here:
per-rank batch statistics differ from global ones by design (``nn.SyncBatchNorm.convert_sync_batchnorm``
converts the ``nn.BatchNorm3d`` inside :class:`~gconv_triton.nn.GroupBatchNorm` for that).
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from gconv_triton import GroupConv2d, GroupPool

WORLD = 2
STEPS = 3


class _Net(nn.Module):
    def __init__(self, group: str):
        super().__init__()
        self.features = nn.Sequential(
            GroupConv2d(1, 3, 3, group=group, in_group="z2", padding=1, activation="relu"),
            GroupConv2d(3, 3, 3, group=group, in_group=group, stride=2, padding=1, activation="silu"),
            GroupPool("max", group=group))
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(-2, -1)))


def _setup(group: str):
    torch.manual_seed(0)
    model = _Net(group).double()
    x = torch.randn(4 * WORLD, 1, 7, 7, dtype=torch.float64)
    target = torch.randint(0, 4, (4 * WORLD,))
    return model, x, target


def _train(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()


def _worker(rank: int, port: int, path: str, group: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        model, x, target = _setup(group)
        ddp = nn.parallel.DistributedDataParallel(model)
        _train(ddp, x.chunk(WORLD)[rank], target.chunk(WORLD)[rank])
        if rank == 0:
            torch.save(model.state_dict(), path)
        del ddp  # the reducer before the process group
        dist.barrier()  # no rank tears down (rank 0 holds the store) while another is still using the group
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(path: str, group: str, deadline_s: float = 180.0) -> None:
    """``mp.spawn`` with a deadline: a hung rendezvous fails this test instead of stalling the whole suite."""
    context = mp.start_processes(_worker, args=(_free_port(), path, group), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"DDP workers did not finish within {deadline_s:.0f} s")


@pytest.mark.parametrize("group", ["p4", "c8"])   # c8: steerable coefficients, an extra basis buffer
def test_ddp_matches_single_process(tmp_path, group):
    path = str(tmp_path / "ddp.pt")
    _run_workers(path, group)
    ddp_state = torch.load(path)

    model, x, target = _setup(group)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, x, target)
    for name, value in model.state_dict().items():
        assert not torch.equal(value, before[name]), f"{name} did not train"
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")
