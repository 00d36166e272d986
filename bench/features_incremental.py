"""Benchmark: the feature stage's full pass, its daily incremental run, and a DuckDB peer.

    .venv/bin/pip install -r requirements-bench.txt     # DuckDB: the peer, not the product
    .venv/bin/python bench/features_incremental.py --events 5000000 [--threads 2]

On one synthetic platform (50k videos, 30 days, users scaled to the event count; the
same platforms as ``bench/features_scaling.py``), each in a fresh process on
``local[THREADS]``:

1. **full**: ``build_features`` with ``features.incremental: false`` for the logical
   date: one Spark pass over the 30-day window (today's full recompute).
2. **first**: the incremental stage for the day before (it computes every day).
3. **daily**: the incremental stage for the date, after (2): the new day, the days
   before it that its files hold rows of (none: the generator files every event on its
   own day), and the merge of the window (the steady-state daily cost).
4. **daily_late**: (3) again after a file of late events is filed under the last day,
   ``--late-events`` rows timestamped on each of the ``late_horizon_days`` days before
   it (copies of real plays under new ids): every horizon day is recomputed, the cost
   of a day on which late events reach the whole horizon. The file is removed after.
5. **peer**: one DuckDB query doing the core of the same job on the same files with the
   same threads: window, de-duplication, positive plays, the last 50 watches strictly
   before each play, the 300-per-user cap, video and user aggregates, Parquet out.

Prints one JSON object: machine, date, load average before the run, and each step's
seconds and events/s, with daily/full and full events/s over the peer's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_host

EVENTS_PER_USER = 37.9  # measured on the default generator: 3.79M events / 100k users
DATE = dt.date(2026, 11, 1)


def _stage(data: str, artifacts: str, mode: str, threads: int, memory: str) -> dict:
    from videorec.config import parse_config
    from videorec.features.job import build_features
    from videorec.features.session import spark_session

    cfg = parse_config(
        {
            "artifacts": {"root": artifacts},
            "spark": {
                "master": f"local[{threads}]",
                "driver_memory": memory,
                "shuffle_partitions": 2 * threads,
            },
            "features": {"incremental": mode != "full"},
        }
    )
    date = DATE - dt.timedelta(days=1) if mode == "first" else DATE
    t0 = time.perf_counter()
    spark = spark_session(cfg, f"bench-{mode}")
    t1 = time.perf_counter()
    res = build_features(cfg, data, date, spark=spark)
    t2 = time.perf_counter()
    rep = res["report"]
    return {
        "mode": mode,
        "events": rep["validation"]["watch_events"]["rows_in"],
        "examples": rep["outputs"]["examples"],
        "spark_start_s": round(t1 - t0, 1),
        "job_s": round(t2 - t1, 1),
        "days": {k: len(v) if isinstance(v, list) else v for k, v in rep.get("days", {}).items()},
        "stage_seconds": rep.get("stage_seconds"),
    }


PEER_SQL = """
CREATE TEMP TABLE ev AS
  SELECT * EXCLUDE (rn) FROM (
    SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY ts) AS rn
    FROM read_parquet('{files}', hive_partitioning = true)
    WHERE ts >= TIMESTAMPTZ '{start}' AND ts < TIMESTAMPTZ '{end}'
  ) WHERE rn = 1;
CREATE TEMP TABLE plays AS
  SELECT *, least(watch_time_s / video_duration_s, 1.0) AS completion
  FROM ev WHERE event_type IN ('watch', 'skip');
COPY (
  SELECT * FROM (
    SELECT user_id, event_id, ts, video_id, device, country, watch_time_s, completion,
           list(video_id) OVER (PARTITION BY user_id ORDER BY ts, event_id
                                ROWS BETWEEN 50 PRECEDING AND 1 PRECEDING) AS history,
           event_type
    FROM plays WHERE event_type = 'watch'
  ) w
  WHERE completion >= 0.5 AND ts < TIMESTAMPTZ '{split}'
  QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, event_id DESC) <= 300
) TO '{out}/examples.parquet' (FORMAT parquet);
COPY (
  SELECT video_id, count(*) AS views, count(DISTINCT user_id) AS unique_viewers,
         avg(completion) AS avg_completion, avg((event_type = 'skip')::INT) AS skip_rate
  FROM plays WHERE ts < TIMESTAMPTZ '{split}' GROUP BY video_id
) TO '{out}/video_features.parquet' (FORMAT parquet);
COPY (
  SELECT user_id, count(*) AS plays, count(DISTINCT ts::DATE) AS active_days,
         avg(watch_time_s) AS avg_watch_time_s,
         list(video_id ORDER BY ts)[-50:] AS recent_history
  FROM plays WHERE ts < TIMESTAMPTZ '{split}' GROUP BY user_id
) TO '{out}/user_features.parquet' (FORMAT parquet);
"""


def _peer(data: str, out: str, threads: int) -> dict:
    import duckdb

    start = dt.datetime.combine(DATE - dt.timedelta(days=30), dt.time(), dt.UTC)
    end = dt.datetime.combine(DATE, dt.time(), dt.UTC)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}; SET TimeZone = 'UTC'")
    sql = PEER_SQL.format(
        files=f"{data}/watch_events/*/*.parquet",
        start=start.isoformat(),
        end=end.isoformat(),
        split=(end - dt.timedelta(days=1)).isoformat(),
        out=out,
    )
    t0 = time.perf_counter()
    con.execute(sql)
    seconds = time.perf_counter() - t0
    n = con.execute("SELECT count(*) FROM ev").fetchone()[0]
    ex = con.execute(f"SELECT count(*) FROM '{out}/examples.parquet'").fetchone()[0]
    return {"mode": "peer", "events": n, "examples": ex, "job_s": round(seconds, 1),
            "duckdb": duckdb.__version__}  # fmt: skip


def _late_file(data: Path, per_day: int, horizon: int) -> Path:
    """File ``per_day`` late plays for each of the ``horizon`` days before the last day
    under the last day's partition; returns the file (the caller removes it)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from videorec.dataset import append_events

    last = DATE - dt.timedelta(days=1)
    pieces = []
    for k in range(1, horizon + 1):
        day = last - dt.timedelta(days=k)
        t = pq.read_table(sorted((data / "watch_events" / f"dt={day}").glob("*.parquet"))[0])
        t = t.filter(pc.equal(t["event_type"], "watch")).slice(0, per_day)
        ids = pa.array([f"late-{day}-{i}" for i in range(t.num_rows)])
        pieces.append(t.set_column(t.schema.get_field_index("event_id"), "event_id", ids))
    append_events(data, last, pa.concat_tables(pieces), "bench-late.parquet")
    return data / "watch_events" / f"dt={last}" / "bench-late.parquet"


def bench_platform(work: Path, events: int) -> Path:
    """The synthetic platform of about ``events`` events under ``work`` (50k videos, 30
    days, users scaled to the events), generated on first use and reused after."""
    from videorec.datagen.synthetic import GeneratorParams, generate

    users = round(events / EVENTS_PER_USER)
    data = work / f"platform-{users}u"
    if not (data / "_dataset.json").exists():
        generate(GeneratorParams(users, 50_000, 30, 42, DATE), data, config_digest="bench",
                 progress=False)  # fmt: skip
    return data


def _child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--late-events", type=int, default=1000, help="per horizon day")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "videorec-bench-features"))
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # child: one measured step
        data, artifacts, mode, threads, memory = args.one
        if mode == "peer":
            print(json.dumps(_peer(data, artifacts, int(threads))))
        else:
            print(json.dumps(_stage(data, artifacts, mode, int(threads), memory)))
        return

    work = Path(args.work)
    data = bench_platform(work, args.events)
    users = round(args.events / EVENTS_PER_USER)
    load = bench_host.load_average()
    full_root = tempfile.mkdtemp(prefix="full-", dir=work)
    inc_root = tempfile.mkdtemp(prefix="inc-", dir=work)
    peer_root = tempfile.mkdtemp(prefix="peer-", dir=work)
    t = str(args.threads)
    rows = {
        "full": _child(str(data), full_root, "full", t, args.driver_memory),
        "first": _child(str(data), inc_root, "first", t, args.driver_memory),
        "daily": _child(str(data), inc_root, "daily", t, args.driver_memory),
    }
    from videorec.config import parse_config

    horizon = parse_config({}).features.late_horizon_days
    late = _late_file(data, args.late_events, horizon)
    try:
        rows["daily_late"] = _child(str(data), inc_root, "daily", t, args.driver_memory)
        rows["daily_late"]["mode"] = "daily_late"
    finally:
        late.unlink()
    rows["peer"] = _child(str(data), peer_root, "peer", t, args.driver_memory)
    for r in rows.values():
        r["events_per_s"] = round(r["events"] / r["job_s"]) if r["job_s"] else None
    print(
        json.dumps(
            {
                **bench_host.header(load),
                "threads": args.threads,
                "platform_users": users,
                **rows,
                "daily_over_full": round(rows["daily"]["job_s"] / rows["full"]["job_s"], 3),
                "daily_late_over_full": round(
                    rows["daily_late"]["job_s"] / rows["full"]["job_s"], 3
                ),
                "full_over_peer_events_per_s": round(
                    rows["full"]["events_per_s"] / rows["peer"]["events_per_s"], 3
                ),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
