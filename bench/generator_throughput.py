"""Benchmark: synthetic platform generation throughput (events/s) at a given size.

    .venv/bin/python bench/generator_throughput.py --users 100000 --videos 50000 --days 30

Prints one JSON line with the machine, the date, the size, the wall time and events/s.
The output folder is deleted afterwards unless --keep is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import bench_host

from videorec.datagen.synthetic import GeneratorParams, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--videos", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", help="output folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    load_before = bench_host.load_average()
    out = Path(args.out or tempfile.mkdtemp(prefix="videorec-bench-")) / "platform"
    params = GeneratorParams(args.users, args.videos, args.days, args.seed, dt.date(2026, 11, 1))
    t0 = time.perf_counter()
    summary = generate(params, out, config_digest="bench", overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    events = summary["counts"]["watch_events"]
    print(
        json.dumps(
            {
                "bench": "generator_throughput",
                **bench_host.header(load_before),
                "users": args.users,
                "videos": args.videos,
                "days": args.days,
                "events": events,
                "wall_s": round(wall, 1),
                "events_per_s": round(events / wall),
                "bytes_on_disk": size,
            }
        )
    )
    if not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
