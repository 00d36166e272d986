"""Benchmark: the contract's row rules in the Spark feature job, two ways, same data.

    .venv/bin/python bench/features_validation.py --events 5000000 [--threads 2]

On the platform ``bench/features_incremental.py`` generates for the same event count
(it generates it here if missing), one Spark session on ``local[THREADS]`` reads the
30-day window's event files and times, each forced with Spark's ``noop`` writer:

- **scan**: the files read with the contract's schema, nothing checked;
- **expressions**: ``features.job.checked_events``, the rules of
  ``videorec.contract.event_row_checks`` as Spark column expressions (the product);
- **arrow_in_python**: the same rules through ``mapInArrow`` in Python workers calling
  ``videorec.contract.event_row_codes`` on each Arrow batch (how the job ran them
  before), with the same outputs (reason and unknown-user flag).

Each is run ``--repeats`` times after one warm-up read; the JSON gives every run and
each check's cost over the scan (median). Both checks must give the same reason counts,
or the benchmark fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import bench_host

if TYPE_CHECKING:
    import numpy as np
    from pyspark.sql import DataFrame

    from videorec.config import ContractConfig

sys.path.insert(0, str(Path(__file__).parent))
from features_incremental import DATE, EVENTS_PER_USER


def _arrow_in_python(
    raw: DataFrame,
    known_videos: np.ndarray,
    known_users: np.ndarray,
    as_of: dt.datetime,
    limits: ContractConfig,
) -> DataFrame:
    """``raw`` checked by the contract's Arrow evaluator in Python workers."""
    import pyarrow as pa
    from pyspark.sql import types as T

    from videorec.contract import REASON_COLUMN, event_row_codes, reason_labels, unknown_user_mask

    out_schema = T.StructType(
        [
            *(f for f in raw.schema.fields if f.name != "dt"),
            T.StructField(REASON_COLUMN, T.StringType()),
            T.StructField("_unknown_user", T.BooleanType()),
        ]
    )

    def check(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            t = pa.Table.from_batches([b])
            codes = event_row_codes(
                t, known_videos, as_of, limits=limits, partition_dt=t.column("dt")
            )
            unknown = pa.array(unknown_user_mask(t, known_users), type=pa.bool_())
            out = t.drop_columns(["dt"]).append_column(REASON_COLUMN, reason_labels(codes))
            yield from out.append_column("_unknown_user", unknown).to_batches()

    return raw.mapInArrow(check, out_schema)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/videorec-bench-features")
    args = ap.parse_args()
    load = bench_host.load_average()  # before this process loads the machine

    from pyspark.sql import functions as F

    from videorec.config import parse_config
    from videorec.contract import REASON_COLUMN, SCHEMAS, validate_dimension
    from videorec.datagen.synthetic import GeneratorParams, generate
    from videorec.dataset import read_table
    from videorec.features import job
    from videorec.features.session import spark_schema, spark_session, spark_uri

    users = round(args.events / EVENTS_PER_USER)
    data = Path(args.work) / f"platform-{users}u"
    if not (data / "_dataset.json").exists():
        generate(GeneratorParams(users, 50_000, 30, 42, DATE), data, config_digest="bench",
                 progress=False)  # fmt: skip
    cfg = parse_config(
        {"spark": {"master": f"local[{args.threads}]", "shuffle_partitions": 2 * args.threads}}
    )
    spark = spark_session(cfg, "bench-validation")
    files = job.window_files(cfg, str(data), DATE)
    channels = validate_dimension(read_table(str(data), "channels"), "channels")
    videos = validate_dimension(
        read_table(str(data), "videos"), "videos", known_channel_ids=channels.valid["channel_id"]
    )
    known_videos = videos.valid["video_id"].to_numpy()
    known_users = validate_dimension(read_table(str(data), "users"), "users").valid["user_id"]
    known_users = known_users.to_numpy()
    as_of = job.Window.of(DATE, cfg.features.window_days).end
    base = f"{data}/watch_events"
    schema = spark_schema(SCHEMAS["watch_events"]).add("dt", "string")
    raw = spark.read.schema(schema).option("basePath", spark_uri(base))
    raw = raw.parquet(*[spark_uri(f"{base}/{f['path']}") for f in files])
    frames = {
        "scan": raw,
        "expressions": job.checked_events(
            spark, str(data), files, known_videos, known_users, as_of, cfg.contract
        ),
        "arrow_in_python": _arrow_in_python(raw, known_videos, known_users, as_of, cfg.contract),
    }
    counts = {
        name: sorted(
            (r[REASON_COLUMN] or "", r["n"])
            for r in df.groupBy(REASON_COLUMN).agg(F.count(F.lit(1)).alias("n")).collect()
        )
        for name, df in frames.items()
        if name != "scan"
    }
    if counts["expressions"] != counts["arrow_in_python"]:
        raise SystemExit(f"the two evaluations disagree: {counts}")
    raw.write.format("noop").mode("overwrite").save()  # warm-up: JIT, page cache
    runs: dict[str, list[float]] = {name: [] for name in frames}
    for _ in range(args.repeats):
        for name, df in frames.items():
            t = time.perf_counter()
            df.write.format("noop").mode("overwrite").save()
            runs[name].append(round(time.perf_counter() - t, 2))
    median = {name: statistics.median(v) for name, v in runs.items()}
    print(
        json.dumps(
            {
                **bench_host.header(load),
                "threads": args.threads,
                "events": sum(n for _, n in counts["expressions"]),
                "files": len(files),
                "reasons": dict(counts["expressions"]),
                "seconds": runs,
                "over_scan_s": {
                    name: round(median[name] - median["scan"], 2)
                    for name in frames
                    if name != "scan"
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
