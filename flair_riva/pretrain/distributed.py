"""Scale-out with ``torchrun``: the process group, the device of each rank and a few collectives.

The pretrainer is the same program under ``python -m flair_riva.pretrain`` and under ``torchrun
--nproc_per_node N -m flair_riva.pretrain``: when ``WORLD_SIZE`` > 1 it joins the process group from
torchrun's environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), with NCCL on GPUs and gloo on CPUs. Only rank 0 writes files (nanoGPT's rule).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("flair")

#: How long the other ranks wait at a collective, e.g. while rank 0 trains the teacher (stages 1-2).
DEFAULT_TIMEOUT = datetime.timedelta(hours=12)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


@dataclass
class DistContext:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Device of tensors passed to collectives (NCCL needs CUDA tensors, gloo CPU ones)."""
        if self.distributed and dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    @classmethod
    def from_env(cls, device: str | torch.device | None = None,
                 timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DistContext:
        """Single process unless ``WORLD_SIZE`` > 1; then init the process group from the environment.

        ``device``: ``None`` means ``flair.device`` (single process) or ``cuda:LOCAL_RANK`` / CPU (under
        torchrun, depending on whether CUDA is available)."""
        import flair

        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            dev = torch.device(device) if device is not None else torch.device(flair.device)
            return cls(device=dev)
        local_rank = _env_int("LOCAL_RANK", 0)
        if device is not None:
            dev = torch.device(device)
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device("cuda", local_rank)
        else:
            dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns = False
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, timeout=timeout)
            owns = True
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
                   owns_group=owns)

    def describe(self) -> str:
        if not self.distributed:
            return f"single process on {self.device}"
        return (f"distributed run: {self.world_size} processes, backend {dist.get_backend()}, "
                f"rank 0 on {self.device}")

    # -- collectives (no-ops in a single process) -------------------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over the ranks (float64, so counts stay exact)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
