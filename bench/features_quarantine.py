"""What the refused rows cost in storage: daily incremental runs over dirty events.

    .venv/bin/python bench/features_quarantine.py [--users 3000] [--videos 4000] \
        [--days 40] [--runs 5] [--corrupt 0.02] [--work DIR]

Generates a synthetic platform with ``--corrupt`` of its events deliberately malformed,
then runs the incremental feature stage for ``--runs`` consecutive logical dates ending
on the platform's last day (each reusing the day versions before it, as the retrain
DAG does). After each run it measures the bytes the run added to the quarantine
artifacts (``features-quarantine`` and ``features-quarantine-day``), the bytes of the
day quarantines its window lists, and those of the window's refused rows written as
one Parquet file: what a features version's quarantine copied when it held the
window's rows itself (one coalesced file). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import bench_host
import pyarrow.parquet as pq

from videorec import artifact_names as names
from videorec.artifacts import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--videos", type=int, default=4000)
    ap.add_argument("--days", type=int, default=40)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--corrupt", type=float, default=0.02)
    ap.add_argument("--work", type=Path, help="folder for the platform and the store")
    args = ap.parse_args()
    from videorec.features.job import build_features, quarantined_events
    from videorec.features.session import spark_session

    load_before = bench_host.load_average()
    work = args.work or Path(tempfile.mkdtemp(prefix="vr-quarantine-"))
    end = bench_host.BENCH_END
    data, cfg = bench_host.daily_platform(
        work, users=args.users, videos=args.videos, days=args.days, corrupt=args.corrupt
    )
    store = open_store(cfg)
    root = Path(store.uri(names.FEATURES)).parent
    kinds = (names.FEATURES_QUARANTINE, names.FEATURES_QUARANTINE_DAY)
    spark = spark_session(cfg, "videorec-quarantine-bench")
    runs = []
    for n in range(args.runs - 1, -1, -1):
        before = sum(bench_host.mib(root / k) for k in kinds)
        t = time.perf_counter()
        res = build_features(cfg, str(data), end - dt.timedelta(days=n), spark=spark)
        seconds = time.perf_counter() - t
        added = sum(bench_host.mib(root / k) for k in kinds) - before
        days = json.loads(store.read_bytes(names.FEATURES_QUARANTINE, res["version"],
                                           names.QUARANTINE_DAYS_FILE))["days"]  # fmt: skip
        window = sum(
            bench_host.mib(root / names.FEATURES_QUARANTINE_DAY / d["version"]
                           / names.QUARANTINE_DAY_TABLE) for d in days
        )  # fmt: skip
        # What the version's quarantine held before: the window's rows in one file.
        one_file = work / "window-refused.parquet"
        pq.write_table(quarantined_events(store, res["version"]), one_file)
        copied = one_file.stat().st_size / 2**20
        v = res["report"]["validation"]["watch_events"]
        runs.append({
            "date": res["report"]["window"]["end"][:10], "seconds": round(seconds, 1),
            "days_computed": len(res["report"]["days"]["days_computed"]),
            "rows_quarantined": v["rows_quarantined"], "rows_in": v["rows_in"],
            "mib_added": round(added, 3), "mib_window_day_files": round(window, 3),
            "mib_window_as_one_file": round(copied, 3),
        })  # fmt: skip
    spark.stop()
    print(json.dumps({
        **bench_host.header(load_before), "users": args.users, "days": args.days,
        "corrupt": args.corrupt, "window_days": cfg.features.window_days, "runs": runs,
        "mib_quarantine_total": {k: round(bench_host.mib(root / k), 3) for k in kinds},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
