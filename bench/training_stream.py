"""Benchmark: peak memory of two-tower training on streamed vs in-memory examples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/training_stream.py --examples 200000 --scale 4

Writes a synthetic ``examples/`` folder in the feature stage's schema (history up to
50 videos, 20k videos, 50k users; files of row groups of ``--row-group`` rows) with N
and ``scale`` x N examples, then trains one epoch on each with ``training.data:
memory`` and ``stream`` (default order of each: a permutation in memory, the
shard-and-buffer order streamed, a 65,536-example buffer), every run in a fresh
process under ``/usr/bin/time -v``. Prints one JSON line per run (peak RSS from
time's "Maximum resident set size", wall seconds, the epoch's examples/s) and a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_host
import numpy as np

HISTORY = 50
N_USERS, N_VIDEOS = 50_000, 20_000
MODEL = {
    "embed_dim": 64, "id_dim": 32, "hidden_dim": 128, "user_buckets": 50_021,
    "video_buckets": 40_009, "channel_buckets": 2_003, "text_encoder": "none",
    "device": "cpu", "batch_size": 1024,
}  # fmt: skip


def write_examples(
    folder: Path, n: int, *, row_group: int, rows_per_file: int, seed: int = 0
) -> Path:
    """``n`` synthetic examples in the feature stage's ``examples/`` schema, written a
    file at a time (``rows_per_file`` rows, row groups of ``row_group``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, n, rows_per_file)):
        m = min(rows_per_file, n - start)
        lengths = rng.integers(0, HISTORY + 1, m)
        history = pa.ListArray.from_arrays(
            np.r_[0, np.cumsum(lengths)].astype(np.int32),
            pa.array(rng.integers(1, N_VIDEOS + 1, int(lengths.sum())), pa.int64()),
        )
        t = pa.table({
            "user_id": rng.integers(1, N_USERS + 1, m).astype(np.int64),
            "ts": pa.array(1_790_000_000_000_000 + rng.integers(0, 30 * 86_400_000_000, m),
                           pa.timestamp("us", tz="UTC")),
            "video_id": (rng.zipf(1.2, m) % N_VIDEOS + 1).astype(np.int64),
            "device": rng.choice(["tv", "phone", "web"], m),
            "country": rng.choice(["FR", "US", "DE", "BR"], m),
            "weight": rng.uniform(0.5, 2.0, m),
            "history": history,
            "hour": rng.integers(0, 24, m).astype(np.int32),
            "example_age_days": rng.uniform(0, 30, m),
        })  # fmt: skip
        pq.write_table(t, folder / f"part-{i:05d}.parquet", row_group_size=row_group)
    return folder


def synthetic_tables(tcfg: Any) -> tuple[Any, Any, Any]:
    """(model config, video table, user table) of the synthetic catalogue."""
    import pyarrow as pa

    from videorec.training.data import user_table, video_table
    from videorec.training.task import model_config

    ids = np.arange(1, N_VIDEOS + 1, dtype=np.int64)
    cats = [f"c{i}" for i in range(20)]
    videos = pa.table({
        "video_id": ids, "category": np.array(cats)[ids % 20], "channel_id": ids % 997,
        "duration_s": (ids * 7.0) % 3000,
        "published_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * len(ids)),
    })  # fmt: skip
    uids = np.arange(1, N_USERS + 1, dtype=np.int64)
    users = pa.table({
        "user_id": uids, "country": np.array(["FR", "US", "DE", "BR"])[uids % 4],
        "language": ["en"] * len(uids), "age_bucket": ["25-34"] * len(uids),
        "declared_interests": [[cats[0]]] * len(uids),
    })  # fmt: skip
    vocab = {"categories": cats, "countries": ["BR", "DE", "FR", "US"], "languages": ["en"],
             "devices": ["phone", "tv", "web"], "age_buckets": ["25-34"]}  # fmt: skip
    mcfg = model_config(tcfg, HISTORY, vocab, text=False)
    prob = 1.0 / (ids % 100 + 1)
    vf = pa.table({"video_id": ids, "sampling_prob": prob / prob.sum()})
    vt = video_table(videos, vf, mcfg, None, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    return mcfg, vt, user_table(users, mcfg)


def worker(folder: Path, mode: str, epochs: int) -> dict[str, Any]:
    """Load (memory) or open (stream) the examples and train ``epochs`` epochs."""
    import torch

    from videorec.config import TrainingConfig
    from videorec.training.data import load_examples
    from videorec.training.model import TwoTowerModel
    from videorec.training.stream import ExampleStream
    from videorec.training.task import Trainer, fit

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tcfg = TrainingConfig(**MODEL, data=mode)
    mcfg, vt, ut = synthetic_tables(tcfg)
    t0 = time.perf_counter()
    if mode == "stream":
        ex = ExampleStream.open(folder, vt, ut, mcfg)
    else:
        ex = load_examples(folder, vt, ut, mcfg)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    trainer = Trainer(TwoTowerModel(mcfg), vt, ut, tcfg, torch.device("cpu"))
    logs, _ = fit(trainer, ex, epochs=epochs, seed=0, progress=False)
    return {
        "examples": len(ex),
        "load_s": round(load_s, 2),
        "epoch_s": [round(e.seconds, 2) for e in logs],
        "examples_per_s": [round(e.examples_per_s) for e in logs],
        "loss": [round(e.loss, 4) for e in logs],
    }


def measure(folder: Path, mode: str, epochs: int) -> dict[str, Any]:
    """One run in a fresh process under /usr/bin/time -v."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--worker", str(folder),
           "--mode", mode, "--epochs", str(epochs)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"mode": mode, **out, "peak_rss_mib": round(rss_kb / 1024), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--row-group", type=int, default=50_000)
    ap.add_argument("--rows-per-file", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--worker", type=Path)
    ap.add_argument("--mode", choices=["memory", "stream"])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.mode, args.epochs)))
        return
    print(json.dumps(bench_host.header()), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        for n in (args.examples, args.examples * args.scale):
            t0 = time.perf_counter()
            folder = write_examples(Path(tmp) / f"n{n}", n, row_group=args.row_group,
                                    rows_per_file=args.rows_per_file)  # fmt: skip
            print(f"# wrote {n:,} examples in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for mode in ("memory", "stream"):
                r = measure(folder, mode, args.epochs)
                print(json.dumps(r), flush=True)
                rows.append(r)
    print("\n| data | examples | peak RSS (MiB) | load s | epoch s | examples/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['examples']:,} | {r['peak_rss_mib']:,} | {r['load_s']} | "
              f"{r['epoch_s'][0]} | {r['examples_per_s'][0]:,} |")  # fmt: skip


if __name__ == "__main__":
    main()
