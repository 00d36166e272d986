"""Benchmark: the Spark feature stage at several event counts, local[2].

    .venv/bin/python bench/features_scaling.py --events 1000000 5000000 20000000

For each size it generates a synthetic platform (users scaled to reach the event
count; 50k videos; 30 days), then runs ``build_features`` in a fresh process with
``local[2]`` and records wall time, events/s and the peak resident memory of the
Spark driver JVM (which in local mode also runs the executors) and of the Python
driver. Prints one JSON line per size and a summary with time(max)/time(min).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench_host

EVENTS_PER_USER = 37.9  # measured on the default generator: 3.79M events / 100k users
DATE = dt.date(2026, 11, 1)


def _run_one(data: Path, artifacts: Path, driver_memory: str) -> dict:
    import psutil

    from videorec.config import parse_config
    from videorec.features.job import build_features
    from videorec.features.session import spark_session

    cfg = parse_config(
        {
            "artifacts": {"root": str(artifacts)},
            "spark": {
                "master": "local[2]",
                "driver_memory": driver_memory,
                "shuffle_partitions": 8,
            },
        }
    )
    me = psutil.Process()
    peak = {"jvm": 0, "python": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak["python"] = max(peak["python"], me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    if "java" in child.name():
                        peak["jvm"] = max(peak["jvm"], child.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    t0 = time.perf_counter()
    spark = spark_session(cfg, "bench-features")
    t1 = time.perf_counter()
    res = build_features(cfg, str(data), DATE, spark=spark)
    t2 = time.perf_counter()
    stop.set()
    t.join()
    rep = res["report"]
    return {
        "events": rep["validation"]["watch_events"]["rows_in"],
        "examples": rep["outputs"]["examples"],
        "spark_start_s": round(t1 - t0, 1),
        "job_s": round(t2 - t1, 1),
        "peak_jvm_rss_mb": round(peak["jvm"] / 2**20),
        "peak_python_rss_mb": round(peak["python"] / 2**20),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "videorec-bench-features"))
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--one", nargs=2, metavar=("DATA", "ARTIFACTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # child process: one measured run
        print(json.dumps(_run_one(Path(args.one[0]), Path(args.one[1]), args.driver_memory)))
        return

    from videorec.datagen.synthetic import GeneratorParams, generate

    work = Path(args.work)
    rows = []
    for n in args.events:
        users = round(n / EVENTS_PER_USER)
        data = work / f"platform-{users}u"
        if not (data / "_dataset.json").exists():
            t0 = time.perf_counter()
            generate(
                GeneratorParams(users, 50_000, 30, 42, DATE),
                data,
                config_digest="bench",
                progress=False,
            )
            print(f"generated {data} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        artifacts = Path(tempfile.mkdtemp(prefix="features-bench-", dir=work))
        load = bench_host.load_average()
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(data), str(artifacts), "--driver-memory", args.driver_memory],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(
            target_events=n,
            users=users,
            events_per_s=round(r["events"] / r["job_s"]),
            **bench_host.header(load),
        )
        rows.append(r)
        print(json.dumps(r), flush=True)
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        print(
            json.dumps(
                {
                    "time_ratio": round(hi["job_s"] / lo["job_s"], 2),
                    "events_ratio": round(hi["events"] / lo["events"], 2),
                }
            )
        )


if __name__ == "__main__":
    main()
