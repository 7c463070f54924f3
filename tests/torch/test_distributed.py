"""DistributedDataParallel and FSDP2 (``fully_shard``): 2 processes, gloo, 127.0.0.1 only, each
run bounded in time (the processes are killed and the test fails when it runs over)."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import constrain, node_norms

WORLD_SIZE = 2
TIME_LIMIT_S = 180


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(worker, *args) -> None:
    """Start ``worker(rank, port, *args)`` in WORLD_SIZE processes; kill them after the limit."""
    port = free_port()
    context = mp.start_processes(
        worker, args=(port, *args), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers ran over {TIME_LIMIT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def finish() -> None:
    """Leave the process group and exit at once: gloo's threads can abort a normal interpreter
    shutdown ("terminate called without an active exception") after the checks have passed.
    Only reached on success; an exception propagates and is reported by the parent."""
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def init(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))


def model_for(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2)
    )


def ddp_worker(rank: int, port: int) -> None:
    init(rank, port)
    try:
        model = model_for(0)
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=0.5)
        registry = constrain(ddp, optimizer, kernel=wc.MaxNorm(0.4), bias=wc.MaxNorm(0.2))
        assert len(registry) == 6
        torch.manual_seed(100 + rank)  # each replica sees different data
        for _ in range(5):
            optimizer.zero_grad()
            ddp(torch.randn(16, 8)).pow(2).sum().backward()
            optimizer.step()
        for entry in registry:
            assert float(node_norms(entry.parameter, entry.dims).max()) <= (
                entry.constraint.max_value * (1 + 1e-6)
            ), entry.name
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), "replicas differ"
        assert not torch.equal(flat, torch.cat([p.reshape(-1) for p in model_for(0).parameters()]))
    except BaseException:
        dist.destroy_process_group()
        raise
    finish()


def fsdp_worker(rank: int, port: int) -> None:
    init(rank, port)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor, Shard

        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(8, 12),
            nn.ReLU(),
            nn.Unflatten(1, (12, 1)),
            nn.ConvTranspose1d(12, 6, 3),  # weight (in, out, k): nodes span the sharded dim 0
            nn.Flatten(),
            nn.Linear(18, 2),
        )
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
        registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.4), bias=wc.MaxNorm(0.2))
        assert len(registry) == 6
        torch.manual_seed(100 + rank)
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.randn(16, 8)).pow(2).sum().backward()
            optimizer.step()
        for entry in registry:
            parameter = entry.parameter
            assert isinstance(parameter, DTensor), entry.name
            assert parameter.placements == (Shard(0),), entry.name  # still sharded
            assert parameter.to_local().shape[0] < parameter.shape[0], entry.name
            full = parameter.detach().full_tensor()
            norms = wc.node_norms(full, entry.dims)
            assert float(norms.max()) <= entry.constraint.max_value * (1 + 1e-6), entry.name
            assert float(norms.max()) >= entry.constraint.max_value * 0.99, entry.name
            gathered = [torch.empty_like(full) for _ in range(WORLD_SIZE)]
            dist.all_gather(gathered, full)
            assert torch.equal(gathered[0], gathered[1]), entry.name
    except BaseException:
        dist.destroy_process_group()
        raise
    finish()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_distributed_data_parallel():
    run_workers(ddp_worker)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_fsdp2_fully_shard():
    run_workers(fsdp_worker)
