"""Benchmark: two-tower training examples/s on 1 and 2 CPU processes (DDP over gloo).

    .venv/bin/python bench/training_ddp.py --examples 60000 --epochs 2

Writes a synthetic ``examples/`` folder (``bench/training_stream.py``'s generator:
history up to 50, 20k videos, 50k users; 8 files of one row group each), then, for
each process count, runs ``torchrun --nproc_per_node=P`` on this script's worker with
``OMP_NUM_THREADS=1`` per process. The worker trains ``--epochs`` epochs with the
default model sizes (embed 256, hidden 512, id 64, 200k buckets; no text) and the
global batch ``--batch-size`` (each of P processes takes batch_size / P a step), on
``--data`` (memory: the default permutation order; stream: each process its own
shards). Rank 0 prints every epoch's examples/s of all processes together; the table
gives the median over epochs. ``--independent --procs 2``: the same processes without
DDP, each training its own replica on batch_size / P (no communication at all): what
the machine's cores give P processes, the bound for DDP's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_host
from training_stream import synthetic_tables, write_examples

MODEL = {"text_encoder": "none", "device": "cpu"}  # every other size: the config's default


def worker(folder: Path, data: str, epochs: int, batch_size: int, independent: bool) -> None:
    """One torchrun process: join the group, train, rank 0 prints the epochs as JSON.

    ``independent``: no DDP; each process trains a model of its own on batches of
    batch_size / P (no collective at all), and rank 0 reports P x its own examples/s:
    what P processes compute on this machine, the bound DDP's figure is compared with.
    """
    import torch
    import torch.distributed as dist

    from videorec.config import TrainingConfig
    from videorec.training.data import load_examples
    from videorec.training.distributed import Dist
    from videorec.training.model import TwoTowerModel
    from videorec.training.stream import ExampleStream
    from videorec.training.task import Trainer, fit

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    d = Dist.current()
    if independent:
        batch_size //= d.world
    tcfg = TrainingConfig(**MODEL, data=data, batch_size=batch_size)
    mcfg, vt, ut = synthetic_tables(tcfg)
    ex = (
        ExampleStream.open(folder, vt, ut, mcfg)
        if data == "stream"
        else load_examples(folder, vt, ut, mcfg)
    )
    torch.manual_seed(0)
    trainer = Trainer(
        TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"), None if independent else d
    )
    logs, _ = fit(trainer, ex, epochs=epochs, seed=0, progress=False)
    dist.barrier()
    if d.main:
        scale = d.world if independent else 1
        print(json.dumps({
            "processes": d.world, "data": data, "examples": len(ex),
            "batch_size": batch_size * scale, "ddp": not independent,
            "examples_per_s": [round(e.examples_per_s * scale) for e in logs],
            "epoch_s": [round(e.seconds, 1) for e in logs], "loss": [round(e.loss, 4) for e in logs],
        }))  # fmt: skip
    dist.destroy_process_group()


def run(folder: Path, procs: int, args: argparse.Namespace, port: int) -> dict:
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, f"--nproc_per_node={procs}", f"--master_port={port}", __file__,
           "--worker", str(folder), "--data", args.data, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size)] + (["--independent"] if args.independent else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["median_examples_per_s"] = round(statistics.median(out["examples_per_s"]))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=60_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--data", choices=["memory", "stream"], default="memory")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--independent", action="store_true", help="no DDP: the compute bound")
    ap.add_argument("--worker", type=Path)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.epochs, args.batch_size, args.independent)
        return
    from videorec.services import free_port

    print(json.dumps(bench_host.header()), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        per_file = -(-args.examples // 8)
        folder = write_examples(Path(tmp) / "examples", args.examples, row_group=per_file,
                                rows_per_file=per_file)  # fmt: skip
        for p in args.procs:
            r = run(folder, p, args, free_port())
            print(json.dumps(r), flush=True)
            rows.append(r)
    print(
        "\n| processes | DDP | data | global batch | examples/s (median of epochs) | epochs (s) |"
    )
    print("|---:|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['ddp']} | {r['data']} | {r['batch_size']} | "
              f"{r['median_examples_per_s']:,} | {r['epoch_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
