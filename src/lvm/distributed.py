"""Data-parallel training (DistributedDataParallel) under torchrun: the rank, joining the process
group, and sums over the ranks."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lvm import LvmError


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the environment torchrun sets; (0, 0, 1) otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])


def all_sum(device, *values) -> list:
    """Sum plain numbers over all ranks (float64); every rank gets rank 0's copy of the result."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    dist.broadcast(t, 0)
    return t.tolist()


def init_distributed(device: torch.device, local_rank: int) -> torch.device:
    """Join torchrun's process group: nccl on CUDA (one GPU per local rank), gloo on CPU."""
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise LvmError(f"params: train.device: {device.type} does not support multi-process training; "
                       "use cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device
