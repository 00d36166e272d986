"""Spark job: 30 days of watch events into training examples, features and a hold-out.

``build_features(cfg, data, date)`` is a pure function of (input partitions, logical
date, config): it reads ``watch_events`` partitions in [date - window, date) and the
dimension tables, and publishes one version ``features/<date>_<digest>`` in the
artifact store holding::

    examples/        positive plays with the user's history strictly before them,
                     context, importance weight and example age (two-tower training)
    eval/            the temporal hold-out: plays after the split point (never trained on)
    video_features/  per-video aggregates, channel priors, sampling probability (logQ)
    user_features/   recent history, preferred categories, activity, demographics
    trending/        per-video views in the last hour / 24 hours before the date
    watched/         every (user, video) played in the whole window, hold-out included,
                     each user's features.max_watched_per_user most recent (precompute
                     excludes them from base recommendations)
    online_user_features/   user_features over the whole window, plus last_seen and
                            last_played_at: the online feature store's source
    online_video_features/  video_features over the whole window, plus title, duration,
                            language and channel name (what serving shows)
    quality_report.json

The training-span tables stop at the hold-out boundary so evaluation stays clean; the
``online_*`` tables and ``watched`` cover the window up to the logical date because
serving needs the latest state. Both are computed by the same functions
(``_video_aggregates``, ``_user_aggregates``) over different spans.

The digest covers the feature and contract config, the input data set's manifest and
the exact event-log files of the window (paths and sizes, ``dataset.event_files``), so
a re-run for the same date, config and files finds its version and does nothing, a
changed config makes a new version, and so does a file appended to a day partition
inside the window (the event-log drain's): never a stale no-op. Spark reads exactly
the listed files, and the version's metadata lists them (``event_files``). The quarantine of bad rows (events and dimension
tables) is published as its own version (``features-quarantine/...``) *before* any
table's bad-row share is checked, so it survives a refused run.

A window holding a small share of the data set's events (below
``features.min_window_share``) is reported in the result's ``warnings`` (and as a
:class:`WindowShareWarning`), naming the setting that fixes it; a window without a
single positive example is refused (:class:`EmptyTrainingWindow`) rather than
published for a model that could only score zero.

Where Spark shuffles, and why:
- validation: the contract's row rules (``videorec.contract.event_row_checks``) are
  Spark column expressions, so executors run no Python; the catalogue's and users' ids
  are broadcast-joined as flags (no shuffle); duplicate event ids need a window
  partitioned by ``event_id`` (one shuffle).
- per-user split (MovieLens-style data): a window partitioned by ``user_id`` ranks
  each user's plays by time (one shuffle by user).
- examples: each user's watches become one time-ordered array and an example takes
  its slice of the watches strictly before it; the windows and the ``groupBy`` share
  one partitioning by user (one shuffle by user), not a frame per row.
- "liked" flags: a join of plays with like events on (user_id, video_id).
- video, user aggregates and trending: ``groupBy`` aggregations (shuffles by key,
  with map-side partial aggregation); the channels' figures: a window over the
  catalogue's rows; small dimension tables are joined by broadcast. The examples are
  written once and read back for their count and per-video frequency (not cached).
  Nothing event-sized is collected to the driver: only counts and the dimension tables
  (catalogue- and user-sized) pass through it.

Run it with ``videorec features --date D --data DIR`` or ``spark-submit
features/job.py --date D --data DIR`` (ship the package with ``--py-files`` on a
cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionExistsError, VersionNotFoundError, open_store
from videorec.config import Config, ContractConfig, config_digest, load_config
from videorec.contract import (
    EVENT_RULES,
    PLAYBACK_EVENT_TYPES,
    REASON_COLUMN,
    SCHEMAS,
    UNKNOWN_USER,
    ContractViolation,
    Reason,
    ValidationResult,
    event_row_checks,
    validate_dimension,
)
from videorec.dataset import DIMENSION_TABLES, event_files, read_manifest, read_table, table_files
from videorec.examples import example_weight
from videorec.examples import played_enough as positive_play_rule
from videorec.features.session import (
    SparkExampleOps,
    SparkRuleOps,
    partition_start_us,
    spark_schema,
    spark_session,
    spark_uri,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The validation pass's flag for a valid event whose user is not in ``users``.
_UNKNOWN_USER_COL = "_unknown_user"


class WindowShareWarning(UserWarning):
    """The window holds a small share of the data set's events (see features.min_window_share)."""


class EmptyTrainingWindow(ValueError):
    """The window yields no positive training example: the window does not fit the data
    (a ValueError, so the CLI reports it as bad input, exit status 2)."""


@dataclass(frozen=True)
class Window:
    """The logical date's window, split point and as-of time (all UTC)."""

    date: dt.date
    start: dt.datetime
    end: dt.datetime

    @classmethod
    def of(cls, date: dt.date, days: int) -> Window:
        end = dt.datetime.combine(date, dt.time(), dt.UTC)
        return cls(date, end - dt.timedelta(days=days), end)


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t, 1)


def features_version(
    cfg: Config,
    data_manifest: dict[str, Any],
    date: dt.date,
    files: list[dict[str, Any]],
    dimensions: dict[str, list[dict[str, Any]]],
) -> str:
    """``<date>_<digest>``: the digest covers the stage's config and its input data: the
    data set's manifest, the window's event files (``window_files``) and the dimension
    tables' files (``dimension_files``: an upload appends to ``videos``)."""
    dumped = cfg.model_dump(mode="json")
    # The late-event horizon shapes the incremental stage's day versions only.
    shaping = {k: v for k, v in dumped["features"].items() if k != "late_horizon_days"}
    digest = config_digest(
        {
            "features": shaping,
            "contract": dumped["contract"],
            "data": data_manifest,
            "event_files": files,
            "dimension_files": dimensions,
        }
    )
    return f"{date.isoformat()}_{digest}"


def window_files(cfg: Config, data: str, date: dt.date) -> list[dict[str, Any]]:
    """The event-log files the stage reads for ``date``: the day partitions in
    [date - window_days, date), as {"path", "size"} (``dataset.event_files``)."""
    win = Window.of(date, cfg.features.window_days)
    return event_files(data, win.start.date(), date)


def dimension_files(data: str) -> dict[str, list[dict[str, Any]]]:
    """{table: its files as ``{"path", "size"}``} of the dimension tables the stage
    reads (``dataset.table_files``), listed now; the build reads exactly these."""
    return {name: table_files(data, name) for name in DIMENSION_TABLES}


class PlanError(ValueError):
    """A planned features version cannot be built as planned: its plan is missing, is
    for another data set or date, or the config or data set changed since it was made
    (a ValueError: the CLI reports it as bad input, exit status 2)."""


PLAN_FILE = "plan.json"


def _plan_inputs(
    cfg: Config, data: str, date: dt.date, manifest: dict[str, Any]
) -> tuple[str, list[Any] | None, list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """(features version, the day plans (incremental) or None, the window's event files
    (one pass) or [], the dimension tables' files): what the stage reads for (data,
    date, config), listed now."""
    dims = dimension_files(data)
    if _incremental(cfg, manifest):
        from videorec.features.incremental import incremental_version, plan_days

        plans = plan_days(cfg, data, date)
        return incremental_version(cfg, manifest, date, plans, dims), plans, [], dims
    files = window_files(cfg, data, date)
    return features_version(cfg, manifest, date, files, dims), None, files, dims


def plan_features(
    cfg: Config, data: str | None, date: dt.date, *, store: ArtifactStore | None = None
) -> dict[str, str]:
    """{"data", "date", "features_version"}: what the feature stage will write for
    (``data``, default the config's ``data.dir``; logical ``date``; the config). The
    DAG plans first so it can pass the version to training while Spark writes it.

    The plan (the event files each day of the window reads, as listed now) is saved as
    the ``features-plan`` version of the same name, and ``build_features(...,
    planned=version)`` reads exactly those files: a file filed in between (a late
    event, the drain) goes to the next date's plan instead of changing the version
    that training was promised. Twin planners write the same plan: the first wins.
    """
    store = store or open_store(cfg)
    data = data or cfg.resolve_location(cfg.data.dir)
    manifest = read_manifest(data)
    version, plans, files, dims = _plan_inputs(cfg, data, date, manifest)
    plan = {
        "data": data,
        "date": date.isoformat(),
        "days": None if plans is None else [_plan_day(p) for p in plans],
        "event_files": files,
        "dimension_files": dims,
    }
    if not store.exists(names.FEATURES_PLAN, version):
        with (
            contextlib.suppress(VersionExistsError),
            store.write_version(names.FEATURES_PLAN, version) as folder,
        ):
            (folder / PLAN_FILE).write_text(json.dumps(plan))
    return {"data": data, "date": date.isoformat(), "features_version": version}


def features_written(cfg: Config, version: str, *, store: ArtifactStore | None = None) -> bool:
    """Whether ``version`` of the features is committed (a planned run would be a no-op):
    what the retrain DAG checks before it submits the job to Spark."""
    return (store or open_store(cfg)).exists(names.FEATURES, version)


def _plan_day(p: Any) -> dict[str, Any]:
    return {"day": p.day.isoformat(), "files": [list(f) for f in p.files],
            "version": p.version, "history_version": p.history_version,
            "previous_files": [list(f) for f in p.previous_files]}  # fmt: skip


def load_plan(
    cfg: Config,
    store: ArtifactStore,
    planned: str,
    data: str,
    date: dt.date,
    manifest: dict[str, Any],
) -> tuple[list[Any] | None, list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """(day plans or None, event files, dimension files) of the saved plan ``planned``,
    after checking it is this (data, date)'s and that the config and data set still
    give its version. Raises PlanError naming what differs."""  # fmt: skip
    from videorec.features.incremental import DayPlan, incremental_version

    try:
        plan = json.loads(store.read_bytes(names.FEATURES_PLAN, planned, PLAN_FILE))
    except (FileNotFoundError, VersionNotFoundError):
        raise PlanError(
            f"no features plan {planned} in {store.uri(names.FEATURES_PLAN, planned)}: "
            "plan_features writes it (the DAG's plan task); plan again"
        ) from None
    if plan["data"] != data or plan["date"] != date.isoformat():
        raise PlanError(
            f"features plan {planned} is for data {plan['data']} and date {plan['date']}, "
            f"not {data} and {date.isoformat()}"
        )
    dims = plan.get("dimension_files") or {}  # a plan from before they were listed: no match
    if plan["days"] is None:
        plans, files = None, plan["event_files"]
        version = features_version(cfg, manifest, date, files, dims)
    else:
        if any("previous_files" not in d for d in plan["days"]):
            # Its day versions are named by an older code, whose tables this one would
            # write under them.
            raise PlanError(f"features plan {planned} was made by an older version: plan again")
        plans = [
            DayPlan(dt.date.fromisoformat(d["day"]), tuple((p, n) for p, n in d["files"]),
                    d["version"], d["history_version"],
                    tuple((p, n) for p, n in d["previous_files"]))
            for d in plan["days"]
        ]  # fmt: skip
        files = []
        version = incremental_version(cfg, manifest, date, plans, dims)
    if (plans is None) == _incremental(cfg, manifest) or version != planned:
        raise PlanError(
            f"features plan {planned} no longer matches the config and data set "
            f"(they give {version} for its files now): plan again"
        )
    return plans, files, dims


def _incremental(cfg: Config, manifest: dict[str, Any]) -> bool:
    """Whether the stage runs by day (features.incremental, split last_days)."""
    return cfg.features.incremental and _split_mode(cfg, manifest) == "last_days"


def _split_mode(cfg: Config, manifest: dict[str, Any]) -> str:
    if cfg.features.split != "auto":
        return cfg.features.split
    return "per_user" if manifest.get("source") == "movielens" else "last_days"


def _fs_for(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def _write_json(uri: str, name: str, obj: dict[str, Any]) -> None:
    fs, base = _fs_for(uri)
    with fs.open_output_stream(f"{base}/{name}") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def checked_events(
    spark: SparkSession,
    data: str,
    files: list[dict[str, Any]],
    known_videos: np.ndarray,
    known_users: np.ndarray,
    as_of: dt.datetime,
    limits: ContractConfig,
    *,
    keep_partition: bool = False,
) -> DataFrame:
    """Events of ``files`` with ``quarantine_reason`` (null for rows that pass every
    row rule; duplicates are not looked for here), ``_unknown_user`` (the user is not in
    ``users``: kept, counted) and ``_pos`` (read order); with ``keep_partition`` also
    ``_dt``, the day partition each row was filed under."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    # The contract's schema: files written before a column was added read it as null.
    schema = spark_schema(SCHEMAS["watch_events"]).add("dt", T.StringType())
    base = f"{data}/watch_events"
    # Exactly the files the version was digested from, not whatever the folder holds
    # by the time Spark lists it (the drain may append meanwhile).
    paths = [spark_uri(f"{base}/{f['path']}") for f in files]
    loaded = (
        spark.read.schema(schema).option("basePath", spark_uri(base)).parquet(*paths)
        if paths
        else spark.createDataFrame([], schema)
    )
    raw = loaded.withColumn("_pos", F.monotonically_increasing_id())
    return with_reasons(raw, known_videos, known_users, as_of, limits, keep_partition)


def with_reasons(
    raw: DataFrame,
    known_videos: np.ndarray,
    known_users: np.ndarray,
    as_of: dt.datetime,
    limits: ContractConfig,
    keep_partition: bool = False,
) -> DataFrame:
    """``raw`` (the contract's columns and ``dt``, the partition filed under) with
    ``quarantine_reason`` from the contract's row rules, evaluated as Spark expressions
    (no Python worker), and ``_unknown_user``; ``dt`` becomes ``_dt`` with
    ``keep_partition``, else it is dropped."""
    from pyspark.sql import functions as F

    spark = raw.sparkSession
    # The catalogue and the users table as broadcast lookups: a flag column each.
    ids = {"_known_video": ("video_id", known_videos), "_known_user": ("user_id", known_users)}
    flagged = raw
    for flag, (key, known) in ids.items():
        keys = np.asarray(known, dtype=np.int64)
        lookup = spark.createDataFrame(pa.table({key: keys, flag: np.ones(len(keys), bool)}))
        flagged = flagged.join(F.broadcast(lookup), key, "left")
    checks = event_row_checks(
        SparkRuleOps(),
        as_of,
        limits,
        known_video=F.col("_known_video"),
        partition_start_us=partition_start_us(F.col("dt")),
    )
    reason = F.when(checks[0][1], F.lit(checks[0][0].value))
    for r, broken in checks[1:]:
        reason = reason.when(broken, F.lit(r.value))
    unknown_user = F.col("user_id").isNotNull() & F.col("_known_user").isNull()
    return flagged.select(
        *[F.col(c) for c in raw.columns if c != "dt"],
        reason.alias(REASON_COLUMN),
        unknown_user.alias(_UNKNOWN_USER_COL),
        *([F.col("dt").alias("_dt")] if keep_partition else []),
    )


def _validated_events(
    spark: SparkSession,
    data: str,
    files: list[dict[str, Any]],
    known_videos: np.ndarray,
    known_users: np.ndarray,
    as_of: dt.datetime,
    limits: ContractConfig,
) -> DataFrame:
    """Events of the window's ``files`` with ``quarantine_reason`` (null for good rows)
    and ``_unknown_user`` (the user is not in ``users``: kept, counted)."""
    checked = checked_events(spark, data, files, known_videos, known_users, as_of, limits)
    return mark_duplicates(checked, ["event_id"])


def mark_duplicates(checked: DataFrame, keys: list[str]) -> DataFrame:
    """``checked`` with the later copies of an event id marked ``duplicate_id``: among
    rows that passed every other rule and share ``keys``, the earliest (ts, read order)
    copy is kept."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    first = W.partitionBy(*keys, F.col(REASON_COLUMN).isNull()).orderBy("ts", "_pos")
    rn = F.row_number().over(first)
    return checked.withColumn(
        REASON_COLUMN,
        F.when(
            F.col(REASON_COLUMN).isNull() & (rn > 1), F.lit(Reason.DUPLICATE_ID.value)
        ).otherwise(F.col(REASON_COLUMN)),
    )


# The most rows of a small, counted key set (the liked (user, video) pairs, the users
# over the examples' cap) that a join broadcasts (about 60 bytes each in Spark's hash
# relation); more are joined by shuffle. Counted first: Spark's own estimate comes from
# the sizes of the inputs, far above a filtered set's.
BROADCAST_ROWS = 2_000_000


def played_enough(f: Any) -> Any:
    """A play that is a positive example without a like
    (``videorec.examples.played_enough``, the one definition the examples' Arrow
    readers share): a watch without a completion, or any play completed to
    ``f.positive_min_completion``."""
    return positive_play_rule(SparkExampleOps(), f)


def _weight(cfg: Config) -> Any:
    """Each play's training weight (``videorec.examples.example_weight``, the one
    definition the examples' Arrow readers share)."""
    return example_weight(SparkExampleOps(), cfg.features)


def build_features(
    cfg: Config,
    data: str,
    date: dt.date,
    *,
    spark: SparkSession | None = None,
    store: ArtifactStore | None = None,
    planned: str | None = None,
) -> dict[str, Any]:
    """Run the feature stage for logical ``date`` on the data set ``data``.

    ``planned``: a version :func:`plan_features` saved; the stage then reads the event
    files of that plan, not those listed now, and writes that version (PlanError when
    the plan is missing, is another data set's or date's, or the config or data set
    changed since). Without it, the files are listed now.

    Returns {"version", "uri", "skipped", "report", "warnings"}; ``skipped`` is True
    when the version for this (data, date, config) already exists (the run is then a
    no-op). ``warnings`` (also in the report, beside ``window_share``, and raised as
    :class:`WindowShareWarning`) says when the window holds less than
    ``features.min_window_share`` of the data set's events, naming the fix.
    Raises ContractViolation when the window's events or a dimension table have a
    bad-row share above ``contract.max_invalid_share`` (after publishing the
    quarantine), and EmptyTrainingWindow when the window yields no positive example.
    """
    store = store or open_store(cfg)
    manifest = read_manifest(data)
    if planned is None:
        version, plans, files, dim_files = _plan_inputs(cfg, data, date, manifest)
    else:
        plans, files, dim_files = load_plan(cfg, store, planned, data, date, manifest)
        version = planned
    if store.exists(names.FEATURES, version):
        return _reuse(store, version)

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    f = cfg.features
    win = Window.of(date, f.window_days)
    spark = spark or spark_session(cfg, "videorec-features")
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    # Dimension tables are catalogue- and user-sized: validated in the driver with the
    # contract's own code, then handed to Spark (and broadcast in joins). Channels
    # first: a video's channel_id must be a valid channel.
    dims: dict[str, ValidationResult] = {}
    for name in ("channels", "videos", "users"):
        known_channels = dims["channels"].valid["channel_id"] if name == "videos" else None
        dims[name] = validate_dimension(
            read_table(data, name, dim_files[name]), name, known_channel_ids=known_channels
        )
    dims = {name: dims[name] for name in ("videos", "channels", "users")}  # report order
    if plans is not None:
        from videorec.features.incremental import build_features_incremental

        return build_features_incremental(
            cfg,
            data,
            date,
            spark=spark,
            store=store,
            manifest=manifest,
            plans=plans,
            version=version,
            dims=dims,
        )
    known_videos = dims["videos"].valid["video_id"].to_numpy()
    known_users = dims["users"].valid["user_id"].to_numpy()
    videos = spark.createDataFrame(
        dims["videos"].valid.select(["video_id", "category", "channel_id", "published_at"])
    )
    # What serving shows of a video beyond the training features (online table only).
    video_details = _video_details(spark, dims)
    users = spark.createDataFrame(
        dims["users"].valid.select(["user_id", "country", "language", "signup_ts"])
    )

    checked = _validated_events(
        spark, data, files, known_videos, known_users, win.end, cfg.contract
    ).persist()
    bad = checked.where(F.col(REASON_COLUMN).isNotNull()).drop("_pos", _UNKNOWN_USER_COL)
    # Events of users missing from `users` are kept; each such user gets a minimal row
    # (the id alone) so every join on users keeps their events (docs/data-contract.md).
    new_users = (
        checked.where(F.col(REASON_COLUMN).isNull() & F.col(_UNKNOWN_USER_COL))
        .select("user_id")
        .distinct()
    )
    event_cols = SCHEMAS["watch_events"].names
    with _timed(timings, "validate"):
        # The valid rows' nulls per column (the report's null rates) are counted here,
        # in the pass that builds the cache, rather than in another pass over it.
        by_reason = (
            checked.groupBy(REASON_COLUMN)
            .agg(
                F.count(F.lit(1)).alias("n"),
                F.sum(F.col(_UNKNOWN_USER_COL).cast("long")).alias("unknown_user"),
                *[F.count_if(F.col(c).isNull()).alias(f"_null_{c}") for c in event_cols],
            )
            .collect()
        )
        rows_in = sum(r["n"] for r in by_reason)
        counts = {r[REASON_COLUMN]: r["n"] for r in by_reason if r[REASON_COLUMN] is not None}
        valid_row = next((r for r in by_reason if r[REASON_COLUMN] is None), None)
        unknown_user_events = (valid_row["unknown_user"] or 0) if valid_row else 0
        valid_nulls = {c: valid_row[f"_null_{c}"] if valid_row else 0 for c in event_cols}
        dims["users"].rows_added = new_users.count() if unknown_user_events else 0
    if unknown_user_events:
        users = users.unionByName(new_users, allowMissingColumns=True)
    # Before the share checks: bad rows are kept whatever happens next.
    meta = {
        "date": date.isoformat(),
        "data": str(data),
        "config_digest": cfg.digest(),
        "features_version": version,
        "event_files": files,
    }
    # The quarantine is a function of the same inputs as the version: one already
    # published (a re-run of a refused run, or a concurrent attempt that won) holds
    # exactly these rows.
    if not store.exists(names.FEATURES_QUARANTINE, version):
        with (
            contextlib.suppress(VersionExistsError),
            store.write_version_at(names.FEATURES_QUARANTINE, version, meta) as qdir,
        ):
            bad.coalesce(1).write.parquet(spark_uri(f"{qdir}/{names.QUARANTINE_EVENTS}"))
            _write_dimension_quarantine(f"{qdir}/{names.QUARANTINE_DIMENSIONS}", dims)
    quarantine_uri = store.files_uri(names.FEATURES_QUARANTINE, version)
    validation = {
        "watch_events": {
            "rows_in": rows_in,
            "rows_valid": rows_in - sum(counts.values()),
            "rows_quarantined": sum(counts.values()),
            "by_reason": {r.value: counts[r.value] for r in EVENT_RULES if r.value in counts},
            "accepted": {UNKNOWN_USER: unknown_user_events},
            "rows_added": 0,
        },
        **{name: res.summary() for name, res in dims.items()},
    }
    # The dimension tables answer to the same limit as the events: a catalogue that
    # is mostly broken fails the run here, not as a flood of unknown_video events.
    for res in dims.values():
        try:
            res.check(cfg.contract.max_invalid_share)
        except ContractViolation as err:
            checked.unpersist()
            raise ContractViolation(f"{err}; quarantine at {quarantine_uri}") from None
    share = sum(counts.values()) / rows_in if rows_in else 0.0
    if share > cfg.contract.max_invalid_share:
        checked.unpersist()
        raise ContractViolation(
            f"watch_events {win.start.date()}..{date}: {sum(counts.values())} of {rows_in} rows "
            f"({share:.2%}) broke the contract, above {cfg.contract.max_invalid_share:.2%}; "
            f"by reason {counts}; quarantine at {quarantine_uri}"
        )
    total_events = _dataset_event_count(data, manifest)
    window_share = round(rows_in / total_events, 6) if total_events else None
    stage_warnings = window_share_warnings(cfg, manifest, win, date, rows_in, total_events)
    _warn(stage_warnings)  # now, so it is said even if the run is refused below

    # Valid rows only: the contract has quarantined NaN and infinite watch times, NaN,
    # infinite or non-positive durations and uncapped watch times without a duration,
    # so the ratio below is finite or null (least(NaN, 1.0) would be 1.0 in Spark).
    ev = (
        checked.where(F.col(REASON_COLUMN).isNull())
        .drop(REASON_COLUMN, "_pos", _UNKNOWN_USER_COL)
        .withColumn(
            "completion",
            F.least(F.try_divide(F.col("watch_time_s"), F.col("video_duration_s")), F.lit(1.0)),
        )
    )
    # Partitioned by user once: the split's windows, the liked flags, the examples'
    # windows, the user tables and the watched set all group by user, and each would
    # shuffle every play again otherwise (Spark keeps a persisted frame's partitioning).
    plays = ev.where(F.col("event_type").isin(*PLAYBACK_EVENT_TYPES)).repartition("user_id")

    # ---- temporal split
    mode = _split_mode(cfg, manifest)
    if mode == "last_days":
        split_ts = win.end - dt.timedelta(days=f.eval_days)
        plays = plays.withColumn("boundary", F.lit(split_ts)).withColumn(
            "is_eval", F.col("ts") >= F.col("boundary")
        )
    else:
        by_time = W.partitionBy("user_id").orderBy(
            F.col("ts").desc(), F.col("video_id").desc(), F.col("event_id").desc()
        )
        n = F.count(F.lit(1)).over(W.partitionBy("user_id"))
        plays = (
            plays.withColumn("_rank", F.row_number().over(by_time))
            .withColumn("_n_eval", F.greatest(F.lit(1), F.floor(n * f.eval_fraction)))
            .withColumn("is_eval", F.col("_rank") <= F.col("_n_eval"))
        )
        boundary = F.min(F.when(F.col("is_eval"), F.col("ts"))).over(W.partitionBy("user_id"))
        plays = plays.withColumn("boundary", boundary).drop("_rank", "_n_eval")
        like_cutoff = F.col("boundary")
    likes = ev.where(F.col("event_type") == "like").select(
        "user_id", "video_id", F.col("ts").alias("like_ts")
    )
    # "liked" for a play: a like of the same video by the same user, known by the split.
    # With one split time for all, the likes before it say it without the plays (so
    # the plays are not shuffled twice: once here, once for the persist below).
    if mode == "last_days":  # reactions strictly before the split belong to training
        liked = likes.where(F.col("like_ts") < F.lit(split_ts)).select("user_id", "video_id")
    else:
        liked = (
            plays.select("user_id", "video_id", "boundary")
            .distinct()
            .join(likes, ["user_id", "video_id"])
            .where(F.col("like_ts") <= like_cutoff)
            .select("user_id", "video_id")
        )
    liked = liked.distinct().withColumn("liked", F.lit(True)).persist()
    # Likes are rare: their pairs are broadcast while they are few enough, so the plays
    # keep their partitioning by user (counted first: Spark's own estimate, from the
    # events' size, is far above the pairs').
    small = liked.count() <= BROADCAST_ROWS
    plays = plays.join(F.broadcast(liked) if small else liked, ["user_id", "video_id"], "left")
    if not small:
        plays = plays.repartition("user_id")
    plays = plays.withColumn("liked", F.coalesce("liked", F.lit(False)))
    positive = played_enough(f) | F.col("liked")
    # Every later step reads the plays: materialise them once.
    plays = plays.withColumn("weight", _weight(cfg)).withColumn("is_positive", positive).persist()
    with _timed(timings, "split"):
        plays.count()
    liked.unpersist()
    train = plays.where(~F.col("is_eval"))
    evals = plays.where(F.col("is_eval"))

    # ---- training examples (history strictly before each example, per user)
    # Each user's watches become one time-ordered array; an example at position k
    # (k watches strictly before its timestamp: ties share the first index of their
    # timestamp) takes the slice [k - history_len, k). Windows over user_id and the
    # groupBy share one partitioning by user, so this costs one shuffle, and no row
    # materialises more than its own slice.
    by_user = W.partitionBy("user_id")
    watch_plays, history_all = _watch_sequences(train)
    # Kept: the examples, the user features and (with one split time) the online
    # sequences read it, and each would sort every training watch again otherwise.
    history_all = history_all.persist()
    hist_len = f.history_len
    k = F.col("_before")
    is_example = (F.col("event_type") == "watch") & F.col("is_positive")
    examples = (
        watch_plays.where(F.col("is_positive"))
        .withColumn("_before", F.min("_widx").over(W.partitionBy("user_id", "ts")) - 1)
        .withColumn(
            "_recent",
            F.row_number().over(by_user.orderBy(F.col("ts").desc(), F.col("event_id").desc())),
        )
        .where(F.col("_recent") <= f.max_examples_per_user)
        .join(history_all, "user_id")
        .select(
            "user_id",
            "event_id",
            "ts",
            "video_id",
            "device",
            "country",
            "watch_time_s",
            "completion",
            "liked",
            "weight",
            F.slice(
                "_all", F.greatest(F.lit(1), k - hist_len + 1), F.least(k, F.lit(hist_len))
            ).alias("history"),
            F.least(k, F.lit(hist_len)).cast("int").alias("history_len"),
            F.hour("ts").alias("hour"),
            ((F.lit(win.end).cast("double") - F.col("ts").cast("double")) / 86400.0).alias(
                "example_age_days"
            ),
        )
    )
    # Not persisted: written once, then counted and read back from the written files
    # (a cache of the examples with their histories cost more than reading them).
    with _timed(timings, "examples"):
        has_examples = bool(train.where(is_example).limit(1).count())
    if not has_examples:
        for df in (checked, plays, history_all):
            df.unpersist()
        raise EmptyTrainingWindow(
            empty_window_message(cfg, manifest, win, date, rows_in, window_share)
        )

    # ---- video and user features of the training span (the model's inputs)
    if mode == "last_days":
        train_ev = ev.where(F.col("ts") < F.lit(split_ts))
    else:
        # Reactions before the user's own boundary (users without a hold-out keep all).
        bounds = plays.groupBy("user_id").agg(F.min("boundary").alias("boundary"))
        train_ev = ev.join(F.broadcast(bounds), "user_id", "left").where(
            F.col("boundary").isNull() | (F.col("ts") < F.col("boundary"))
        )

    def video_features(written: DataFrame, n_examples: int) -> DataFrame:
        """The training span's video table with each video's share of the examples."""
        freq = written.groupBy("video_id").agg(F.count(F.lit(1)).alias("example_count"))
        return (
            _video_aggregates(train, train_ev, videos, win.end)
            .join(freq, "video_id", "left")
            .fillna(0, ["example_count"])
            .withColumn("sampling_prob", F.col("example_count") / F.lit(n_examples))
        )

    uf = _user_aggregates(train, history_all, users, videos, f, win.end)

    # ---- online features and the watched set: the whole window, hold-out included.
    # Serving needs the latest state up to the date; the model never reads these.
    if mode == "last_days":
        # Every hold-out play is later than every training play: the window's sequence
        # is the training one followed by the hold-out's, and only the hold-out is sorted.
        _, history_eval = _watch_sequences(evals)
        history_online = history_all.join(
            history_eval.withColumnRenamed("_all", "_eval"), "user_id", "full"
        ).select(
            "user_id",
            F.when(F.col("_eval").isNull(), F.col("_all"))
            .when(F.col("_all").isNull(), F.col("_eval"))
            .otherwise(F.concat("_all", "_eval"))
            .alias("_all"),
        )
    else:
        _, history_online = _watch_sequences(plays)
    last_seen = ev.groupBy("user_id").agg(F.max("ts").alias("last_seen"))
    last_played = plays.groupBy("user_id").agg(F.max("ts").alias("last_played_at"))
    online_uf = (
        _user_aggregates(plays, history_online, users, videos, f, win.end)
        .join(last_seen, "user_id", "left")
        .join(last_played, "user_id", "left")
    )
    online_vf = _video_aggregates(plays, ev, videos, win.end).join(
        F.broadcast(video_details), "video_id", "left"
    )
    watched = _watched(plays, f.max_watched_per_user)

    # ---- trending inputs: all valid plays (the hold-out span included) near the date
    last_24h = win.end - dt.timedelta(hours=24)
    last_1h = win.end - dt.timedelta(hours=1)
    trending = (
        plays.where(F.col("ts") >= F.lit(last_24h))
        .groupBy("video_id")
        .agg(
            F.sum((F.col("ts") >= F.lit(last_1h)).cast("long")).alias("views_1h"),
            F.count(F.lit(1)).alias("views_24h"),
            F.countDistinct("user_id").alias("viewers_24h"),
        )
    )
    eval_out = evals.select(
        "user_id",
        "video_id",
        "ts",
        "event_type",
        "watch_time_s",
        "completion",
        "liked",
        "weight",
        "is_positive",
    )

    outputs = {
        names.EVAL: eval_out,
        names.USER_FEATURES: uf,
        names.TRENDING: trending,
        names.WATCHED: watched,
        names.ONLINE_USER_FEATURES: online_uf,
        names.ONLINE_VIDEO_FEATURES: online_vf,
    }
    meta = {
        "date": date.isoformat(),
        "window_start": win.start.isoformat(),
        "window_end": win.end.isoformat(),
        "data": str(data),
        "data_manifest": manifest,
        # Exactly what was read: the version's digest covers this list.
        "event_files": files,
        "config_digest": cfg.digest(),
        "features_config": cfg.features.model_dump(mode="json"),
        "split": mode,
    }
    try:
        with store.write_version_at(names.FEATURES, version, meta) as out:
            o = spark_uri(out)
            with _timed(timings, f"write_{names.EXAMPLES}"):
                examples.write.parquet(f"{o}/{names.EXAMPLES}")
            written = spark.read.parquet(f"{o}/{names.EXAMPLES}")
            n_examples = written.count()
            outputs[names.VIDEO_FEATURES] = video_features(written, n_examples)
            for name, df in outputs.items():
                with _timed(timings, f"write_{name}"):
                    df.write.parquet(f"{o}/{name}")
            with _timed(timings, "report"):
                report = _quality_report(
                    spark, o, validation, valid_nulls, plays, ev, n_examples, dims, mode, win
                )
            report["window_share"] = window_share
            report["warnings"] = stage_warnings
            report["stage_seconds"] = timings
            report["seconds"] = round(time.perf_counter() - t0, 1)
            _write_json(out, names.QUALITY_REPORT, report)
    except VersionExistsError:
        # Another attempt (an Airflow retry beside a zombie) committed this version
        # first; its output is the same function of the same inputs: use it.
        return _reuse(store, version)
    finally:
        for df in (checked, plays, history_all):
            df.unpersist()
    return {
        "version": version,
        "uri": store.files_uri(names.FEATURES, version),
        "skipped": False,
        "report": report,
        "warnings": stage_warnings,
    }


# ---- aggregates shared by the training-span and the whole-window (online) tables


def _watch_sequences(span_plays: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(watch plays with ``_widx``, their per-user sequence): the span's watches numbered
    per user by (ts, event_id), and (user_id, ``_all``: video ids in that order)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    watch_plays = span_plays.where(F.col("event_type") == "watch").withColumn(
        "_widx", F.row_number().over(W.partitionBy("user_id").orderBy("ts", "event_id"))
    )
    history_all = watch_plays.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("_widx", "video_id")))["video_id"].alias("_all")
    )
    return watch_plays, history_all


def _video_aggregates(
    span_plays: DataFrame, span_events: DataFrame, videos: DataFrame, as_of: dt.datetime
) -> DataFrame:
    """Per catalogue video (watched or not), over the span's plays and events: see
    :func:`video_table` (the incremental stage builds the same table from day partials)."""
    from pyspark.sql import functions as F

    is_skip = (F.col("event_type") == "skip").cast("int")
    per_video = span_plays.groupBy("video_id").agg(
        F.count(F.lit(1)).alias("views"),
        F.countDistinct("user_id").alias("unique_viewers"),
        F.avg("completion").alias("avg_completion"),
        F.avg(is_skip).alias("skip_rate"),
    )
    reactions = span_events.groupBy("video_id").agg(
        F.sum((F.col("event_type") == "like").cast("long")).alias("likes"),
        F.sum((F.col("event_type") == "dislike").cast("long")).alias("dislikes"),
        F.sum((F.col("event_type") == "impression").cast("long")).alias("impressions"),
        F.sum((F.col("event_type") == "click").cast("long")).alias("clicks"),
    )
    return video_table(per_video.join(reactions, "video_id", "full"), videos, as_of)


VIDEO_COUNTS = ["views", "unique_viewers", "likes", "dislikes", "impressions", "clicks"]


def video_table(counts: DataFrame, videos: DataFrame, as_of: dt.datetime) -> DataFrame:
    """Per catalogue video (watched or not): views, unique viewers, average completion,
    skip rate, likes and dislikes (counts and ratios per view), impressions and clicks
    the serving tier logged and their ratio (``ctr``, null without impressions), age in
    days at ``as_of``, and the channel's view-weighted completion and like ratio.

    ``counts``: one row per video with events: :data:`VIDEO_COUNTS`, ``avg_completion``
    and ``skip_rate`` (null for a video without plays)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    vf = (
        videos.join(counts, "video_id", "left")
        .fillna(0, VIDEO_COUNTS)
        .withColumn("like_ratio", F.try_divide(F.col("likes"), F.col("views")))
        .withColumn("dislike_ratio", F.try_divide(F.col("dislikes"), F.col("views")))
        .withColumn("ctr", F.try_divide(F.col("clicks"), F.col("impressions")))
        .withColumn(
            "age_days",
            (F.lit(as_of).cast("double") - F.col("published_at").cast("double")) / 86400.0,
        )
    )
    # A window over the channel, not a join with its aggregate: vf is a plan, not a
    # table, and each side of a self-join would compute it (every play and event
    # aggregated twice); the window shuffles the catalogue's rows once instead.
    channel = W.partitionBy("channel_id")
    in_channel = F.col("channel_id").isNotNull()
    # channel_id first, as the join it replaces wrote it.
    vf = vf.select("channel_id", *[c for c in vf.columns if c != "channel_id"])
    return vf.withColumn(
        # View-weighted; null (not an error) for channels nobody watched yet.
        "channel_avg_completion",
        F.when(
            in_channel,
            F.try_divide(
                F.sum(F.col("avg_completion") * F.col("views")).over(channel),
                F.sum(F.when(F.col("avg_completion").isNotNull(), F.col("views"))).over(channel),
            ),
        ),
    ).withColumn(
        "channel_like_ratio",
        F.when(
            in_channel,
            F.try_divide(F.sum("likes").over(channel), F.sum("views").over(channel)),
        ),
    )


def _user_aggregates(
    span_plays: DataFrame,
    history_all: DataFrame,
    users: DataFrame,
    videos: DataFrame,
    f: Any,
    as_of: dt.datetime,
) -> DataFrame:
    """Per user, over the span's plays: see :func:`user_table` (the incremental stage
    builds the same table from day partials)."""
    from pyspark.sql import functions as F

    hist_len = f.history_len
    recent = history_all.select(
        "user_id",
        F.slice("_all", F.greatest(F.lit(1), F.size("_all") - hist_len + 1), F.lit(hist_len)).alias(
            "recent_history"
        ),
    )
    per_cat = (
        span_plays.join(F.broadcast(videos.select("video_id", "category")), "video_id")
        .where(F.col("category").isNotNull())
        .groupBy("user_id", "category")
        .agg(
            F.count(F.lit(1)).alias("plays"),
            F.sum(F.coalesce("watch_time_s", F.lit(1.0))).alias("time"),
        )
    )
    activity = span_plays.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("plays"),
        F.countDistinct(F.to_date("ts")).alias("active_days"),
        F.avg("watch_time_s").alias("avg_watch_time_s"),
    )
    return user_table(recent, per_cat, activity, users, f, as_of)


def user_table(
    recent: DataFrame,
    per_cat: DataFrame,
    activity: DataFrame,
    users: DataFrame,
    f: Any,
    as_of: dt.datetime,
) -> DataFrame:
    """Per user: the last ``f.history_len`` watches (oldest first), preferred categories
    (top ``f.top_categories`` by watch time, weights summing to 1), plays per category,
    activity (plays, active days, mean watch time, level), demographics, signup age.

    ``recent``: (user_id, recent_history); ``per_cat``: (user_id, category, plays,
    time: watch seconds, 1 per play without watch time); ``activity``: (user_id, plays,
    active_days, avg_watch_time_s)."""
    from pyspark.sql import functions as F

    # Ranked by watch time rounded to the millisecond: sums of the same watches in
    # another order (the incremental stage adds them by day) differ in the last bit,
    # and an exact tie must fall to the category's name either way. One aggregation
    # per user sorts its categories as structs (negated rounded time, then name), so
    # no window sorts the rows: per_cat is partitioned by user already, and this moves
    # nothing.
    ranked = F.sort_array(
        F.collect_list(F.struct((-F.round("time", 3)).alias("_k"), "category", "time"))
    )
    prefs = (
        per_cat.groupBy("user_id")
        .agg(
            ranked.alias("_c"),
            F.sum("time").alias("_total"),
            F.map_from_entries(F.collect_list(F.struct("category", "plays"))).alias(
                "category_counts"
            ),
        )
        .select(
            "user_id",
            F.transform(
                F.slice("_c", 1, f.top_categories),
                lambda x: F.struct(
                    x["category"].alias("category"),
                    F.try_divide(x["time"], F.col("_total")).alias("weight"),
                ),
            ).alias("preferred_categories"),
            "category_counts",
        )
    )
    return (
        users.join(activity, "user_id", "full")
        .join(recent, "user_id", "left")
        .join(prefs, "user_id", "left")
        .fillna(0, ["plays", "active_days"])
        .withColumn(
            "activity_level",
            F.when(F.col("plays") == 0, "none")
            .when(F.col("plays") < 10, "light")
            .when(F.col("plays") < 100, "medium")
            .otherwise("heavy"),
        )
        .withColumn(
            "signup_age_days",
            (F.lit(as_of).cast("double") - F.col("signup_ts").cast("double")) / 86400.0,
        )
    )


def _watched(span_plays: DataFrame, cap: int) -> DataFrame:
    """(user_id, video_id, last_played_at, plays, max_completion): every distinct video
    each user played (watches and skips), the ``cap`` most recently played per user."""
    from pyspark.sql import functions as F

    pairs = span_plays.groupBy("user_id", "video_id").agg(
        F.max("ts").alias("last_played_at"),
        F.count(F.lit(1)).alias("plays"),
        F.max("completion").alias("max_completion"),
    )
    return capped_watched(pairs, cap)


def capped_watched(pairs: DataFrame, cap: int) -> DataFrame:
    """The ``cap`` most recently played of each user's (user_id, video_id,
    last_played_at, plays, max_completion) rows."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    recent_first = W.partitionBy("user_id").orderBy(F.col("last_played_at").desc(), "video_id")
    return (
        pairs.withColumn("_r", F.row_number().over(recent_first))
        .where(F.col("_r") <= cap)
        .drop("_r")
    )


def _video_details(spark: SparkSession, dims: dict[str, ValidationResult]) -> DataFrame:
    """video_id, title, duration_s, language, channel_name: what a served item shows."""
    details = dims["videos"].valid.select(
        ["video_id", "title", "duration_s", "language", "channel_id"]
    )
    names = (
        dims["channels"]
        .valid.select(["channel_id", "name"])
        .rename_columns(["channel_id", "channel_name"])
    )
    return spark.createDataFrame(details.join(names, "channel_id").drop_columns(["channel_id"]))


def window_share_warnings(
    cfg: Config,
    manifest: dict[str, Any],
    win: Window,
    date: dt.date,
    rows_in: int,
    total_events: int | None,
) -> list[str]:
    """The warning for a window holding less than features.min_window_share of the data."""
    f = cfg.features
    share = rows_in / total_events if total_events else None
    if share is None or share >= f.min_window_share:
        return []
    return [
        f"the window {win.start.date()}..{date} (features.window_days={f.window_days}) "
        f"holds {rows_in:,} of the data set's {total_events:,} events "
        f"({share:.2%}, below features.min_window_share={f.min_window_share:.0%}): "
        f"a model trained on it learns from a sliver of the data. "
        f"{_window_advice(cfg, manifest)}"
    ]


def empty_window_message(
    cfg: Config,
    manifest: dict[str, Any],
    win: Window,
    date: dt.date,
    rows_in: int,
    window_share: float | None,
) -> str:
    """Why a window without a positive example is refused, and the fix."""
    share_text = f"{window_share:.2%} of the data set's events, " if window_share else ""
    return (
        f"features {win.start.date()}..{date}: the window holds {rows_in:,} events "
        f"({share_text}features.window_days={cfg.features.window_days}) and not one "
        f"positive training example; a model trained on it would score zero. "
        f"{_window_advice(cfg, manifest)}"
    )


def _reuse(store: ArtifactStore, version: str) -> dict[str, Any]:
    """The result for a version that is already published (by this run's twin or earlier)."""
    report = json.loads(store.read_bytes(names.FEATURES, version, names.QUALITY_REPORT))
    # A reused version still comes from the same window: say so again.
    _warn(report.get("warnings", []))
    return {
        "version": version,
        "uri": store.files_uri(names.FEATURES, version),
        "skipped": True,
        "report": report,
        "warnings": report.get("warnings", []),
    }


def _warn(messages: list[str]) -> None:
    for m in messages:
        warnings.warn(m, WindowShareWarning, stacklevel=3)


def _window_advice(cfg: Config, manifest: dict[str, Any]) -> str:
    """What fixes a window that misses the data: the profile made for it, or the key."""
    fixes = []
    if manifest.get("source") == "movielens" and cfg.profile != "movielens":
        fixes.append("`--profile movielens` (a window over the whole rating history)")
    fixes.append(f"a `features.window_days` that covers the data (now {cfg.features.window_days})")
    return f"The data set's events end at {manifest.get('as_of')}; use " + " or ".join(fixes) + "."


def _dataset_event_count(data: str, manifest: dict[str, Any]) -> int | None:
    """Events in the whole data set: the manifest's count, else the Parquet footers'."""
    n = (manifest.get("counts") or {}).get("watch_events")
    if isinstance(n, int):
        return n
    fs, base = _fs_for(data if "://" in data else str(Path(data).resolve()))
    try:
        return pads.dataset(f"{base}/watch_events", filesystem=fs, format="parquet").count_rows()
    except (FileNotFoundError, pa.ArrowInvalid):
        return None


def quarantined_events(store: ArtifactStore, version: str) -> pa.Table:
    """The refused event rows of features ``version``'s window with their
    ``quarantine_reason``, as one table: its quarantine's ``watch_events/`` (the one-pass
    stage), or the ``features-quarantine-day`` versions its ``days.json`` lists (the
    incremental stage stores each day's rows once, not again in every version)."""
    qdir = store.local_path(names.FEATURES_QUARANTINE, version)
    if (qdir / names.QUARANTINE_EVENTS).exists():
        return pq.read_table(qdir / names.QUARANTINE_EVENTS)
    days = json.loads((qdir / names.QUARANTINE_DAYS_FILE).read_text())["days"]
    parts = [
        pq.read_table(
            store.local_path(names.FEATURES_QUARANTINE_DAY, d["version"])
            / names.QUARANTINE_DAY_TABLE
        )
        for d in days
    ]
    if not parts:
        return pa.table({REASON_COLUMN: pa.array([], pa.string())})
    both = pa.concat_tables(parts, promote_options="permissive")
    return both.drop_columns([c for c in ("ev_day",) if c in both.column_names])


def _write_dimension_quarantine(uri: str, dims: dict[str, ValidationResult]) -> None:
    """Each dimension table's quarantined rows as ``<uri>/<table>.parquet`` with their
    reason, through the URI's pyarrow filesystem: the same code for a local folder and
    an ``s3://`` prefix (it runs inside the quarantine version, which publishes it)."""
    fs, base = _fs_for(uri)
    fs.create_dir(base, recursive=True)
    for name, res in dims.items():
        pq.write_table(res.quarantined, f"{base}/{name}.parquet", filesystem=fs)


def _quality_report(
    spark: SparkSession,
    out: str,
    validation: dict[str, Any],
    nulls: dict[str, int],
    plays: DataFrame,
    ev: DataFrame,
    n_examples: int,
    dims: dict[str, Any],
    mode: str,
    win: Window,
) -> dict[str, Any]:
    """Row counts in and out, quarantine by reason, null rates, coverage (small aggregates
    only). ``nulls``: the valid events' null count per column, from validation."""
    from pyspark.sql import functions as F

    n = validation["watch_events"]["rows_valid"]
    # Every valid event's user has a row in the online user features (the users table
    # and the users added from the log), with last_seen set from those events alone.
    online_users = spark.read.parquet(f"{out}/{names.ONLINE_USER_FEATURES}")
    return {
        "window": {"start": win.start.isoformat(), "end": win.end.isoformat()},
        "validation": validation,
        "valid_events": n,
        "null_rate": {c: round(k / n, 6) if n else None for c, k in nulls.items()},
        "coverage": {
            "users_with_events": online_users.where(F.col("last_seen").isNotNull()).count(),
            "users_in_table": dims["users"].valid.num_rows,
            # Users seen only in events, given a minimal row (the users table lags the log).
            "users_added": dims["users"].rows_added,
            # One column, reduced per partition before its shuffle (at most a row per
            # video): share and not_interested count here but in no video table.
            "videos_with_events": ev.select("video_id").distinct().count(),
            "videos_in_catalogue": dims["videos"].valid.num_rows,
        },
        "split": {"mode": mode, **split_counts(plays)},
        "outputs": output_counts(spark, out, n_examples),
    }


def split_counts(plays: DataFrame) -> dict[str, dict[str, int]]:
    """Plays and distinct users on each side of the split: {"train": {...}, "eval": {...}}."""
    from pyspark.sql import functions as F

    split = (
        plays.groupBy("is_eval")
        .agg(F.count(F.lit(1)).alias("n"), F.countDistinct("user_id").alias("u"))
        .collect()
    )
    return {
        ("eval" if r["is_eval"] else "train"): {"plays": r["n"], "users": r["u"]} for r in split
    }


def output_counts(
    spark: SparkSession, out: str, n_examples: int, examples_users: int | None = None
) -> dict[str, int]:
    """The quality report's "outputs": rows of the written tables in ``out``
    (``examples_users`` counted from ``examples/`` unless given)."""
    if examples_users is None:  # counted from the written files, not recomputed
        examples = spark.read.parquet(f"{out}/{names.EXAMPLES}")
        examples_users = examples.select("user_id").distinct().count()
    return {
        "examples": n_examples,
        "examples_users": examples_users,
        "video_features": spark.read.parquet(f"{out}/{names.VIDEO_FEATURES}").count(),
        "user_features": spark.read.parquet(f"{out}/{names.USER_FEATURES}").count(),
    }


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: ``features/job.py --date D --data DIR [--config F]
    [--plan VERSION]``."""
    ap = argparse.ArgumentParser(description="videorec feature stage (Spark)")
    ap.add_argument("--date", required=True, type=dt.date.fromisoformat)
    ap.add_argument("--data", required=True)
    ap.add_argument("--config")
    ap.add_argument("--profile")
    ap.add_argument("--plan", help="build this planned version (plan_features) exactly")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.profile)
    try:
        result = build_features(cfg, args.data, args.date, planned=args.plan)
    except PlanError as err:  # the orchestrator's input, not a failure of the work: named
        print(f"features/job.py: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
