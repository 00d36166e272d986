"""Benchmark: two-tower training examples/s on a GPU (bf16 autocast, fp32) and the CPU.

    .venv/bin/python bench/training_gpu.py --examples 200000 --epochs 3

Writes ``bench/training_stream.py``'s synthetic examples (history up to 50, 20k videos,
50k users), then, in this process, trains ``--epochs`` epochs in each mode with the
default model sizes (embed 256, hidden 512, id 64, 200k hashed buckets; no text) and
each ``--batch-size``, in memory, through the product's ``Trainer`` and ``fit``:

- ``cuda-bf16``: ``training.device: cuda`` with ``amp`` (bf16 autocast, the default);
- ``cuda-fp32``: the same without autocast;
- ``cpu``: ``training.device: cpu`` on every core (fp32; ``--cpu-threads``).

The first epoch pays the CUDA kernels' first launches and the allocator's growth, so
the table gives the median of the epochs after the first (all epochs are in the JSON).
Prints a header (date, machine, cores, torch, GPU), one JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_host
from training_stream import synthetic_tables, write_examples

MODES = ("cuda-bf16", "cuda-fp32", "cpu")


def header() -> dict[str, Any]:
    """Where and when the figures were measured."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**bench_host.header(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": gpu}  # fmt: skip


def train_mode(folder: Path, mode: str, batch_size: int, epochs: int) -> dict[str, Any]:
    """Train ``epochs`` epochs of the default model on ``folder`` in ``mode``; the epochs'
    examples/s (every example of the epoch over its wall seconds), seconds and loss."""
    import torch

    from videorec.config import TrainingConfig
    from videorec.training.data import load_examples
    from videorec.training.model import TwoTowerModel
    from videorec.training.task import Trainer, fit, resolve_device

    tcfg = TrainingConfig(
        text_encoder="none", device="cpu" if mode == "cpu" else "cuda",
        amp=mode == "cuda-bf16", batch_size=batch_size,
    )  # fmt: skip
    mcfg, vt, ut = synthetic_tables(tcfg)
    ex = load_examples(folder, vt, ut, mcfg)
    torch.manual_seed(0)
    trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, resolve_device(tcfg.device))
    logs, _ = fit(trainer, ex, epochs=epochs, seed=0, progress=False)
    rates = [e.examples_per_s for e in logs]
    return {
        "mode": mode, "batch_size": batch_size, "examples": len(ex),
        "autocast": str(trainer.amp_dtype), "threads": torch.get_num_threads(),
        "examples_per_s": [round(r) for r in rates],
        "median_after_first": round(statistics.median(rates[1:] or rates)),
        "epoch_s": [round(e.seconds, 2) for e in logs], "loss": [round(e.loss, 4) for e in logs],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--cpu-batch-size", type=int, nargs="+", default=[1024])
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.cpu_threads)
    print(json.dumps(header()), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        t0 = time.perf_counter()
        per_file = -(-args.examples // 8)
        folder = write_examples(Path(tmp) / "examples", args.examples, row_group=per_file,
                                rows_per_file=per_file)  # fmt: skip
        print(json.dumps({"examples_written_s": round(time.perf_counter() - t0, 1)}), flush=True)
        for mode in args.modes:
            for bs in args.cpu_batch_size if mode == "cpu" else args.batch_size:
                r = train_mode(folder, mode, bs, args.epochs)
                print(json.dumps(r), flush=True)
                rows.append(r)
    print("\n| mode | batch | examples/s (median of epochs 2+) | epochs (s) | loss by epoch |")
    print("|---|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch_size']} | {r['median_after_first']:,} | "
              f"{r['epoch_s']} | {r['loss']} |")  # fmt: skip


if __name__ == "__main__":
    main()
