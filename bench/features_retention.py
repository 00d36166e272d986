"""What the features GC reclaims: daily incremental runs, then one collection.

    .venv/bin/python bench/features_retention.py [--users 3000] [--videos 4000] \
        [--days 40] [--runs 10] [--keep-days 3] [--work DIR]

Generates a synthetic platform, runs the incremental feature stage for ``--runs``
consecutive logical dates ending on the platform's last day (each reusing the day
versions before it, as the retrain DAG does), then calls
``features.retention.collect_features`` for the last date with ``--keep-days`` and no
grace (the versions were all written minutes ago). No index exists, so only the dates
kept are roots. Prints one JSON line: the bytes of ``features`` and
``features-history`` before and after, the versions deleted, and the collection's
seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import bench_host

from videorec import artifact_names as names
from videorec.artifacts import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--videos", type=int, default=4000)
    ap.add_argument("--days", type=int, default=40)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--keep-days", type=int, default=3)
    ap.add_argument("--work", type=Path, help="folder for the platform and the store")
    args = ap.parse_args()
    from videorec.features.job import build_features
    from videorec.features.retention import collect_features
    from videorec.features.session import spark_session

    load_before = bench_host.load_average()
    work = args.work or Path(tempfile.mkdtemp(prefix="vr-retention-"))
    end = bench_host.BENCH_END
    data, cfg = bench_host.daily_platform(
        work, users=args.users, videos=args.videos, days=args.days
    )
    store = open_store(cfg)
    spark = spark_session(cfg, "videorec-retention-bench")
    t = time.perf_counter()
    for n in range(args.runs - 1, -1, -1):
        build_features(cfg, str(data), end - dt.timedelta(days=n), spark=spark)
    runs_s = round(time.perf_counter() - t, 1)
    spark.stop()
    root = Path(store.uri(names.FEATURES)).parent
    kinds = (names.FEATURES, names.FEATURES_HISTORY)
    before = {k: (round(bench_host.mib(root / k), 1), len(store.list_versions(k))) for k in kinds}
    t = time.perf_counter()
    res = collect_features(store, cfg, end, keep_days=args.keep_days, grace_s=0)
    gc_s = round(time.perf_counter() - t, 2)
    after = {k: (round(bench_host.mib(root / k), 1), len(store.list_versions(k))) for k in kinds}
    print(json.dumps({
        **bench_host.header(load_before), "users": args.users, "days": args.days,
        "runs": args.runs, "runs_s": runs_s, "keep_days": args.keep_days,
        "window_days": cfg.features.window_days,
        "mib_versions_before": before, "mib_versions_after": after,
        "deleted": {k: len(v) for k, v in res["deleted"].items()}, "collect_s": gc_s,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
