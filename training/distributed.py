"""Training the two-tower on more than one process: DistributedDataParallel under torchrun.

    torchrun --nproc_per_node=2 -m videorec.training.distributed --features VERSION

runs :func:`~videorec.training.train.train_two_tower` on every process: each one
trains a replica of the model with DistributedDataParallel (gloo on the CPU, NCCL on
GPUs, one GPU per process: ``LOCAL_RANK``) on its own shards of the examples
(``training/stream.py``: the shards are dealt out per epoch, each process reads only
its own; with ``training.data: memory`` and the default permutation order, each
process takes its slice of every global batch of one shared permutation).
``training.batch_size`` stays the *global* batch: each process takes
``batch_size / world`` examples a step, and the in-batch softmax gathers every
process's candidate embeddings (with their gradient), so each query is scored against
the whole global batch's candidates, and the processes' losses add up to the one
process loss of the same global batch (``Trainer`` in ``training/task.py``). Rank 0
validates (the result is broadcast, so every process stops at the same epoch), logs to
MLflow, evaluates and writes the model version; the other ranks only train.

Sparse id tables: the hashed id tables have sparse gradients (SparseAdam updates only
the rows in the batch). DDP all-reduces sparse gradients on gloo; NCCL has no sparse
all-reduce, so on NCCL the tables are given dense gradients for the all-reduce, turned
back to sparse rows (those with a non-zero gradient) before SparseAdam.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> Dist:
        """From the initialised default process group, else a single process."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def backend_for(device: torch.device) -> str:
    """The collective backend for a training device: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def sparse_allreduce(backend: str) -> bool:
    """Whether DDP can all-reduce sparse gradients on ``backend`` (gloo yes, NCCL no)."""
    return backend == "gloo"


def gather_with_grad(x: torch.Tensor, world: int) -> torch.Tensor:
    """(world * n, ...) every process's ``x`` (n, ...) in rank order; the backward pass
    sums each slice's gradient from every process back to its owner."""
    if world == 1:
        return x
    from torch.distributed._functional_collectives import all_gather_single_autograd

    return all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD).wait()


def gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """(world * n, ...) every process's ``x`` (n, ...) in rank order, no gradient."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_sum(x: torch.Tensor, world: int) -> torch.Tensor:
    """The sum of ``x`` over the processes (a copy; no gradient)."""
    if world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every process (picklable)."""
    if d.world == 1:
        return obj
    box = [obj if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first(d: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling a cache), the others after it."""
    if d.world > 1 and not d.main:
        dist.barrier()
    yield
    if d.world > 1 and d.main:
        dist.barrier()


def init_from_env(device_preference: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) on the backend for the device
    ``device_preference`` resolves to; (this process, its device)."""
    from videorec.training.task import resolve_device

    local = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_preference, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device), device_id=device if device.type == "cuda" else None
    )
    return Dist.current(), device


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m videorec.training.distributed --features VERSION``: train that
    features version on every process; rank 0 prints the summary as JSON."""
    from videorec.config import load_config
    from videorec.training.train import train_two_tower

    ap = argparse.ArgumentParser(prog="python -m videorec.training.distributed")
    ap.add_argument("--features", required=True, help="features version to train on")
    ap.add_argument("--config", default=None, help="config file (default: the profile)")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--baselines", default="MostPopular")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.profile)
    d, device = init_from_env(cfg.training.device)
    try:
        say = (lambda m: print(f"[rank 0/{d.world}] {m}", file=sys.stderr)) if d.main else None
        res = train_two_tower(
            cfg,
            features_version=args.features,
            baselines=tuple(b for b in args.baselines.split(",") if b),
            progress=False,
            log=say,
        )
        if d.main:
            print(json.dumps({"device": str(device), "world": d.world, **res}, default=str))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
