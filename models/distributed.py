"""Data-parallel training across processes (torchrun / torch.distributed.run) and devices.

``torchrun --nproc_per_node=N -m plumelink.app.cli train ...`` starts N processes with the
environment variables WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`init_from_env` joins them into one process group (gloo on CPU, nccl on GPUs) and every
network is wrapped in DistributedDataParallel. Each rank reads its own shard of the training
blocks; validation is computed identically on every rank (the parameters are identical), so
early stopping decides the same everywhere; rank 0 writes checkpoints and the package.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current() -> DistInfo:
    """The process group this process belongs to (SINGLE when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def resolve_device(device: str, info: DistInfo = SINGLE) -> torch.device:
    """'auto' -> the rank's GPU when CUDA is available, else the CPU; 'cpu'; 'cuda[:i]'."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for but CUDA is not available")
        return torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    if device.startswith("cuda") or device == "cpu":
        return torch.device(device)
    raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")


def init_from_env(device: torch.device) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent); SINGLE otherwise."""
    if env_world_size() <= 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(),
                 dist.get_world_size(), backend)
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum of each value over the ranks (the values themselves without a group)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


__all__ = ["SINGLE", "DistInfo", "current", "init_from_env", "resolve_device", "shutdown"]
