"""The write floor: what rewriting a features version's window-wide tables costs alone.

    .venv/bin/python bench/features_write_floor.py VAR/artifacts/features/<version> \
        [--repeat 3] [--driver-memory 12g]

A daily incremental run ends by writing the window's tables (the eval plays, both user
and both video tables, trending, the watched set, the examples' references), whatever
it computes before. This reads each of those tables of an existing features version
and writes it again with Spark on ``local[THREADS]``, nothing computed, ``--repeat``
times in one process (the first with a cold JVM), and prints the seconds per table:
a lower bound for any daily run that rewrites them, to set beside the goal of a daily
run under a tenth of the full pass. The full pass's ``examples`` (written by
reference in a daily run) are left out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import bench_host

from videorec import artifact_names as names
from videorec.examples import CUTOFFS_DIR, LIKED_DIR, REFERENCE_DIR

TABLES = (
    names.EVAL,
    names.VIDEO_FEATURES,
    names.USER_FEATURES,
    names.TRENDING,
    names.WATCHED,
    names.ONLINE_USER_FEATURES,
    names.ONLINE_VIDEO_FEATURES,
    f"{REFERENCE_DIR}/{LIKED_DIR}",
    f"{REFERENCE_DIR}/{CUTOFFS_DIR}",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("version_dir", type=Path, help="a features version's folder")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args()
    tables = [t for t in TABLES if (args.version_dir / t).is_dir()]
    if not tables:
        ap.error(f"no features tables under {args.version_dir}")
    print(json.dumps({**bench_host.header(),
                      "version": args.version_dir.name, "threads": args.threads,
                      "mib": {t: round(bench_host.mib(args.version_dir / t), 1) for t in tables}}))  # fmt: skip

    from videorec.config import parse_config
    from videorec.features.session import spark_session

    cfg = parse_config({"spark": {"master": f"local[{args.threads}]",
                                  "driver_memory": args.driver_memory,
                                  "shuffle_partitions": 2 * args.threads}})  # fmt: skip
    spark = spark_session(cfg, "write-floor")
    for i in range(args.repeat):
        out = Path(tempfile.mkdtemp(prefix="write-floor-"))
        seconds = {}
        try:
            for t in tables:
                t0 = time.perf_counter()
                spark.read.parquet(str(args.version_dir / t)).write.parquet(str(out / t))
                seconds[t] = round(time.perf_counter() - t0, 2)
        finally:
            shutil.rmtree(out)
        print(json.dumps({"round": i + 1, "total_s": round(sum(seconds.values()), 1), **seconds}))


if __name__ == "__main__":
    main()
