"""The feature stage, incremental by day: cost grows with the new data, not the window.

A training example's history uses only watches strictly before it, so once every event
of its day is known, a day's examples never change. The stage therefore keeps two
versioned artifacts per *event day* D (the UTC day of the event's timestamp), each a
pure function of its inputs, computed once and reused by every window that holds D:

``features-day/<D>_<digest>``  (day-local; digest: contract and feature config, and the
    event-log files D's rows can come from: those of partition ``dt=D`` and those of
    ``dt=D+1 .. dt=D+H`` holding a row timestamped on D, before the logical date; and
    the same for D - 1, whose event ids make a copy on D a duplicate)
    plays/      the day's valid, de-duplicated plays (watch and skip)
    likes/      its like events (user_id, video_id, ts)
    video_day/  per video: plays, skips, completion sum and count, likes, dislikes,
                impressions, clicks, plays in the day's last hour
    pairs/      per (user, video) played: plays, last play, best completion, watch time
    user_day/   per user with a valid event: last event, plays, watch-time sum and count,
                last play
    tail/       per user: the day's last ``history_len`` watches (video, ts, event id)
    ids/        event id, ts and ev_day of every copy that passed the row rules on time
                (D + 1's copies of them are duplicates)
    counts.json rows in, by reason, late rows, unknown users, null counts
``features-quarantine-day/<D>_<digest>``  (the same version as D's ``features-day``;
    never collected)
    quarantine/ rows the contract refused or found duplicated, by the day they were
                filed: stored once, where every features version whose window holds D
                lists it (its ``features-quarantine`` version's ``days.json``) rather
                than copying the window's refused rows again each day
    counts.json as the day version's
``features-history/<D>_<digest>``  (digest: the day versions of D - window_days + 1 .. D)
    examples/   the day's watch plays, each with its last ``history_len`` watches
                strictly before it (the day's own and the tails of the days before),
                with their timestamps, so a window can drop those before its start
``features-recent/<D>_<digest>``  (the same digest as D's history)
    recent/     per user with a watch in D - window_days + 1 .. D: the last
                ``history_len`` of them (ts, video), oldest first

The recent watches are a chain: D's are D - 1's without the day that left the lookback,
followed by D's tail, cut to the last ``history_len``. That is exact, because a list cut
to its most recent items loses only items older than every one it keeps: when D - 1's
list holds an item of the day that leaves, it holds every later watch. A daily run reads
D - 1's list (one row per user) where it would otherwise group ``window_days`` tails by
user, for the new day's histories and for the user tables' recent history; without it
(the first run, a list lost, or late events that change an earlier day) the tails are
grouped as before and the last day's list is published for the next run: a lost list
costs time, never a result.

The ``features-day`` and ``features-recent`` versions are caches of the event log that
no published artifact references: after publishing, a run deletes those that no run of
its date or a later one reads (:func:`collect_day_caches`). The histories stay, as
the features versions' examples are references to them.

The features version of a logical date T (``features/<T>_<digest>``, the same tables as
the full pass in ``features/job.py``) is *assembled* from the day versions of
[T - window_days, T): liked flags, weights, positives and the per-user cap are applied
to the union of the days' examples; video, user, online and watched tables are merged
from the partials with the same table functions the full pass uses (``video_table``,
``user_table``, ``capped_watched``). A daily run computes the new day (and re-computes
each of the ``late_horizon_days`` days before it that a new file holds rows of, and the
day after each, whose duplicates it decides) and merges; a backfill of a missing day
computes that day only.

**Late events.** An event filed ``k`` days after its own day (``dt=D+k``) is read for D
while ``k <= features.late_horizon_days`` (H). D's inputs are final once partition D+H
exists; until then a run re-computes D when a file filed since holds a row timestamped
on D (its digest names the files it read; :func:`day_inputs` reads the files'
timestamps to tell, so a day no late event reaches, nor the day before it, is not
recomputed). Filed
later than that, the event is counted as ``too_late`` in the report (by the day it was
filed under) and not used: it stays in the event log. The contract's
``late_arrival_hours`` quarantines anything later still (``partition_mismatch``).

Where it differs from the full pass, by design: the full pass reads partitions
[T - window_days, T) and keeps every valid row in them, so an event filed inside the
window for a day before it counts there, and a late event filed under the window's
first partitions for an earlier day too; here an event belongs to its own day, within
the horizon. A refused row's reason does not depend on the run's date (the contract
judges a row filed under a day against that day's end), so a day validated by an
earlier run gives the reasons a full pass would. Validation of a day uses the catalogue
as of its computation: a day is not re-validated when the catalogue changes later (nor
are the day before's event ids a day is checked against: those of its stored version
where there is one). And a
copy of an event is a duplicate when an earlier copy is on its own UTC day or the day
before (the full pass: anywhere in its window), so a copy whose nearest earlier copy is
two or more days before it counts here: looking further back would make each day's
version depend on every day before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionExistsError
from videorec.config import Config, config_digest
from videorec.contract import PLAYBACK_EVENT_TYPES, REASON_COLUMN, SCHEMAS, Reason
from videorec.dataset import DatasetError, event_days, event_files
from videorec.examples import CUTOFFS_DIR, LIKED_DIR, REFERENCE_DIR, REFERENCE_FILE, ExampleRule
from videorec.retention import holding, sweep

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Bump when the day artifacts' content changes for the same inputs (HISTORY_CODE also
# names the recent-watch lists, which share the history's version).
DAY_CODE = 5
HISTORY_CODE = 1
DAY_TABLES = ("plays", "likes", "video_day", "pairs", "user_day", "tail")
IDS_TABLE = "ids"  # the day's valid event ids, for the next day's duplicates
QUARANTINE_TABLE = names.QUARANTINE_DAY_TABLE  # the day's refused rows, stored apart
RECENT_TABLE = "recent"
COUNTS_FILE = "counts.json"


@dataclass(frozen=True)
class DayPlan:
    """One event day: the files it reads and the versions it has (None: no events)."""

    day: dt.date
    files: tuple[tuple[str, int], ...]  # (path, size) of partitions day .. day + H
    version: str | None  # features-day
    history_version: str | None = None  # features-history (window days only)
    # The day before's files: its valid event ids make a copy of them on this day a
    # duplicate (a re-send whose timestamp crossed midnight), so they are an input too.
    previous_files: tuple[tuple[str, int], ...] = ()


def _filed(path: str) -> dt.date:
    """The day partition a ``dt=YYYY-MM-DD/<name>`` event file is filed under.

    A value with more after the date (``dt=2026-10-30T00``, a producer's typo) is filed
    under that date: its rows then fail the contract's partition rule in that day's
    pass (``partition_mismatch``, quarantined) as they do in the full pass. A value
    with no date to read is refused naming the file."""
    value = path.split("/")[0][3:]
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        raise DatasetError(
            f"watch_events/{path}: the partition folder is not dt=YYYY-MM-DD"
        ) from None


def _partitions(files: list[dict[str, Any]]) -> dict[dt.date, list[tuple[str, int]]]:
    by_day: dict[dt.date, list[tuple[str, int]]] = {}
    for f in files:
        by_day.setdefault(_filed(f["path"]), []).append((f["path"], f["size"]))
    return by_day


def plan_days(cfg: Config, data: str, date: dt.date) -> list[DayPlan]:
    """Every day the window of ``date`` needs, oldest first: the window's days (with a
    history version) and the ``window_days - 1`` before them (their tails feed the
    first days' histories). Pure function of the config and the event files (their
    paths, sizes and the days their timestamps fall on)."""
    f = cfg.features
    w = f.window_days
    first = date - dt.timedelta(days=2 * w - 1)
    one = dt.timedelta(days=1)
    # From the day before the first: each day's version names its day before's files.
    read = day_inputs(data, first - one, date, f.late_horizon_days)
    contract = cfg.model_dump(mode="json")["contract"]
    days = [first + dt.timedelta(days=i) for i in range(2 * w - 1)]
    versions: dict[dt.date, str | None] = {}
    for d in days:
        versions[d] = (
            f"{d.isoformat()}_"
            + config_digest(
                {
                    "code": DAY_CODE,
                    "contract": contract,
                    "history_len": f.history_len,
                    "late_horizon_days": f.late_horizon_days,
                    # the day pairs count the watches played enough to be examples
                    "positive_min_completion": f.positive_min_completion,
                    "files": read[d],
                    "previous_day_files": read[d - one],
                }
            )
            if read[d]
            else None
        )
    plans = []
    for i, d in enumerate(days):
        hist = None
        if d >= date - dt.timedelta(days=w) and versions[d] is not None:
            lookback = [versions[x] for x in days[max(0, i - w + 1) : i + 1]]
            digest = config_digest(
                {"code": HISTORY_CODE, "history_len": f.history_len, "days": lookback}
            )
            hist = f"{d.isoformat()}_{digest}"
        plans.append(DayPlan(d, tuple(read[d]), versions[d], hist, tuple(read[d - one])))
    return plans


def day_inputs(
    data: str, first: dt.date, date: dt.date, horizon: int
) -> dict[dt.date, list[tuple[str, int]]]:
    """Per event day D in [first, date): the files D's rows can come from, as (path,
    size), oldest partition first: every file filed under D, and each file filed under
    D+1 .. D+horizon (before ``date``) that holds a row timestamped on D.

    A later partition that holds nothing of D (the usual case: late events are few
    and touch few days) leaves D's inputs, hence its version, as they were, so a daily
    run recomputes only the days that new files actually reach (and the day after each,
    whose version names its day before's files). Reading the files'
    timestamps (``dataset.event_days``: the footer statistics, then the ``ts`` column
    where they do not settle it) costs a scan of that one column of the recent days."""
    parts = _partitions(event_files(data, first, date))
    read: dict[dt.date, list[tuple[str, int]]] = {
        first + dt.timedelta(days=i): list(parts.get(first + dt.timedelta(days=i), []))
        for i in range((date - first).days)
    }
    if horizon == 0:
        return read
    for filed in sorted(parts):
        lo = max(first, filed - dt.timedelta(days=horizon))
        if lo >= filed:
            continue
        held = event_days(data, [p for p, _ in parts[filed]], lo, filed)
        for path, size in parts[filed]:
            for d in sorted(held[path]):
                read[d].append((path, size))
    return read


# ---- the day-local job


def _day_frames(
    spark: SparkSession,
    cfg: Config,
    data: str,
    todo: list[DayPlan],
    date: dt.date,
    known_videos: Any,
    known_users: Any,
    earlier: DataFrame | None = None,
) -> tuple[dict[str, DataFrame], DataFrame, DataFrame]:
    """The day tables of every day in ``todo`` (one Spark pass), each with a ``day``
    column, the per-day counts frame, and the persisted validated rows (to unpersist).
    ``earlier``: (day, event_id, ts) of the valid events of the days before ``todo``'s
    days that are not in ``todo`` (:func:`earlier_ids`)."""
    from pyspark.sql import functions as F

    days = sorted(p.day for p in todo)
    files = sorted({p for plan in todo for p in plan.files})
    rows = _rows_by_day(spark, cfg, data, files, date, known_videos, known_users)
    rows = rows.where(F.col("day").isin(*days))
    # Duplicates among each day's valid rows and against the day before's. The
    # too-late rows stay in (counted, never marked), so the counts and the tables read
    # the files once, from the persisted rows.
    too_late = F.col("_too_late")
    marked = mark_duplicates_by_day(rows, earlier).persist()
    ev = (
        marked.where(F.col(REASON_COLUMN).isNull() & ~too_late)
        .drop(REASON_COLUMN, "_pos", "_dt", "_too_late")
        .withColumn(
            "completion",
            F.least(F.try_divide(F.col("watch_time_s"), F.col("video_duration_s")), F.lit(1.0)),
        )
    )
    plays = ev.where(F.col("event_type").isin(*PLAYBACK_EVENT_TYPES))
    frames = _day_tables(ev, plays, cfg, marked)
    frames[IDS_TABLE] = _valid_ids(marked)
    counts = _day_counts(marked)
    return frames, counts, marked


def _rows_by_day(
    spark: SparkSession,
    cfg: Config,
    data: str,
    files: list[tuple[str, int]],
    date: dt.date,
    known_videos: Any,
    known_users: Any,
) -> DataFrame:
    """The rows of ``files`` filed before ``date``, checked by the contract's row rules
    (``job.checked_events``), each with ``day`` (its event day when valid and within the
    late-event horizon, else the day it was filed under) and ``_too_late``."""
    from pyspark.sql import functions as F

    from videorec.features.job import Window, checked_events

    h = cfg.features.late_horizon_days
    # Partitions before the logical date only: the window of `date` knows nothing later.
    files = [p for p in files if _filed(p[0]) < date]
    checked = checked_events(
        spark,
        data,
        [{"path": p, "size": s} for p, s in files],
        known_videos,
        known_users,
        Window.of(date, 1).end,
        cfg.contract,
        keep_partition=True,
    )
    filed = F.to_date(F.col("_dt"))
    ev_day = F.to_date(F.col("ts"))
    good = F.col(REASON_COLUMN).isNull()
    late = good & (ev_day < F.date_sub(filed, h))
    day = F.when(good & ~late, ev_day).otherwise(filed)
    return checked.withColumn("day", day).withColumn("_too_late", late)


def mark_duplicates_by_day(rows: DataFrame, earlier: DataFrame | None) -> DataFrame:
    """``rows`` (with ``day``, ``_too_late`` and ``_pos``) with later copies marked
    ``duplicate_id``: a valid, on-time row is a duplicate when an earlier (ts, read
    order) valid copy of its event id is on its own day or on the day before, among
    ``rows`` or in ``earlier`` ((day, event_id, ts) of valid events of days before).

    The full pass keeps the earliest copy in its whole window (``job.mark_duplicates``);
    looking one day back gives the same for copies on the same or the next UTC day (a
    re-send whose timestamp crossed midnight) while a day's version depends on its own
    and the day before's files only, not on every day before it."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    valid = F.col(REASON_COLUMN).isNull() & ~F.col("_too_late")
    both = rows.withColumn("_ref", F.lit(False))
    if earlier is not None:
        refs = earlier.select(
            "day", "event_id", "ts", F.lit(False).alias("_too_late"), F.lit(True).alias("_ref")
        )
        both = both.unionByName(refs, allowMissingColumns=True)
    # The copy just before in time is the latest earlier one: if any earlier copy is
    # on the day or the day before, that one is.
    before = W.partitionBy("event_id", valid).orderBy("ts", "_pos")
    prev_day = F.lag("day").over(before)
    copy = valid & prev_day.isNotNull() & (prev_day >= F.date_sub(F.col("day"), 1))
    marked = both.withColumn(
        REASON_COLUMN,
        F.when(copy, F.lit(Reason.DUPLICATE_ID.value)).otherwise(F.col(REASON_COLUMN)),
    )
    return marked.where(~F.col("_ref")).drop("_ref")


def _valid_ids(marked: DataFrame) -> DataFrame:
    """(day, event_id, ts) of every copy that passed the row rules on time: what the
    next day's copies are checked against (a kept copy or not, the event was seen)."""
    from pyspark.sql import functions as F

    seen = F.col(REASON_COLUMN).isNull() | (F.col(REASON_COLUMN) == Reason.DUPLICATE_ID.value)
    return marked.where(seen & ~F.col("_too_late")).select("day", "event_id", "ts")


def earlier_ids(
    spark: SparkSession,
    cfg: Config,
    data: str,
    date: dt.date,
    todo: list[DayPlan],
    plans: list[DayPlan],
    store: ArtifactStore,
    known_videos: Any,
    known_users: Any,
) -> DataFrame | None:
    """(day, event_id, ts) of the valid events of each day before a day of ``todo``
    that ``todo`` does not hold: from that day's stored version (its ``ids`` table),
    else from its files (the first planned day's day before, a version collected)."""
    from pyspark.sql import functions as F

    from videorec.features.session import spark_uri

    one = dt.timedelta(days=1)
    computed = {p.day for p in todo}
    version = {p.day: p.version for p in plans}
    stored, scan, files = [], [], set()
    for p in todo:
        prev = p.day - one
        if prev in computed or not p.previous_files:
            continue
        v = version.get(prev)
        if v is not None and store.exists(names.FEATURES_DAY, v):
            stored.append(spark_uri(f"{store.files_uri(names.FEATURES_DAY, v)}/{IDS_TABLE}"))
        else:
            scan.append(prev)
            files.update(p.previous_files)
    parts = []
    if stored:
        read = spark.read.parquet(*stored)
        parts.append(read.select(F.col("ev_day").alias("day"), "event_id", "ts"))
    if scan:
        rows = _rows_by_day(spark, cfg, data, sorted(files), date, known_videos, known_users)
        seen = F.col(REASON_COLUMN).isNull() & ~F.col("_too_late") & F.col("day").isin(*scan)
        parts.append(rows.where(seen).select("day", "event_id", "ts"))
    return functools.reduce(lambda a, b: a.unionByName(b), parts) if parts else None


def _day_tables(
    ev: DataFrame, plays: DataFrame, cfg: Config, marked: DataFrame
) -> dict[str, DataFrame]:
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    from videorec.features.job import played_enough

    hist_len = cfg.features.history_len
    last_hour = F.hour("ts") == 23
    is_type = {
        t: (F.col("event_type") == t).cast("long")
        for t in ("like", "dislike", "impression", "click", "skip")
    }
    is_play = F.col("event_type").isin(*PLAYBACK_EVENT_TYPES)
    video_day = ev.groupBy("day", "video_id").agg(
        F.sum(F.col("event_type").isin(*PLAYBACK_EVENT_TYPES).cast("long")).alias("plays"),
        F.sum(is_type["skip"]).alias("skips"),
        F.sum(F.when(is_play, F.col("completion"))).alias("sum_completion"),
        F.count(F.when(is_play, F.col("completion"))).alias("n_completion"),
        F.sum(is_type["like"]).alias("likes"),
        F.sum(is_type["dislike"]).alias("dislikes"),
        F.sum(is_type["impression"]).alias("impressions"),
        F.sum(is_type["click"]).alias("clicks"),
        F.sum((F.col("event_type").isin(*PLAYBACK_EVENT_TYPES) & last_hour).cast("long")).alias(
            "plays_last_hour"
        ),
    )
    is_watch = F.col("event_type") == "watch"
    # The pair's watches, and those that are examples without a like: the window's
    # example counts come from these, the like flag being the window's (a pair liked
    # before the split makes every one of its watches an example).
    pairs = plays.groupBy("day", "user_id", "video_id").agg(
        F.count(F.lit(1)).alias("plays"),
        F.max("ts").alias("last_played_at"),
        F.max("completion").alias("max_completion"),
        F.sum(F.coalesce("watch_time_s", F.lit(1.0))).alias("time"),
        F.sum(is_watch.cast("long")).alias("watches"),
        F.sum((is_watch & played_enough(cfg.features)).cast("long")).alias("watches_enough"),
    )
    user_day = ev.groupBy("day", "user_id").agg(
        F.max("ts").alias("last_seen"),
        F.sum(is_play.cast("long")).alias("plays"),
        F.sum(F.when(is_play, F.col("watch_time_s"))).alias("sum_watch_time"),
        F.count(F.when(is_play, F.col("watch_time_s"))).alias("n_watch_time"),
        F.max(F.when(is_play, F.col("ts"))).alias("last_played_at"),
    )
    latest = W.partitionBy("day", "user_id").orderBy(F.col("ts").desc(), F.col("event_id").desc())
    tail = (
        plays.where(F.col("event_type") == "watch")
        .withColumn("_r", F.row_number().over(latest))
        .where(F.col("_r") <= hist_len)
        .groupBy("day", "user_id")
        .agg(F.sort_array(F.collect_list(F.struct("ts", "event_id", "video_id"))).alias("items"))
    )
    likes = ev.where(F.col("event_type") == "like").select("day", "user_id", "video_id", "ts")
    # Few rows, kept for ever: one file a day (a shuffle of these rows alone), not one
    # per task of the day's pass, each with its own footer.
    quarantine = (
        marked.where(F.col(REASON_COLUMN).isNotNull())
        .drop("_pos", "_dt", "_too_late", "_unknown_user")
        .repartition("day")
    )
    play_cols = [
        "day",
        "user_id",
        "event_id",
        "ts",
        "video_id",
        "event_type",
        "device",
        "country",
        "watch_time_s",
        "completion",
    ]
    return {
        "plays": plays.select(*play_cols),
        "likes": likes,
        "video_day": video_day,
        "pairs": pairs,
        "user_day": user_day,
        "tail": tail,
        QUARANTINE_TABLE: quarantine,
    }


def _day_counts(marked: DataFrame) -> DataFrame:
    """Per day: rows by reason (null: valid; "_too_late": too late), unknown-user events,
    and null counts of the contract's columns among valid events."""
    from pyspark.sql import functions as F

    cols = SCHEMAS["watch_events"].names
    reason = F.when(F.col("_too_late"), F.lit("_too_late")).otherwise(F.col(REASON_COLUMN))
    valid = reason.isNull()
    return marked.groupBy("day", reason.alias(REASON_COLUMN)).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum((valid & F.col("_unknown_user")).cast("long")).alias("unknown_user"),
        *[F.sum((valid & F.col(c).isNull()).cast("long")).alias(f"null_{c}") for c in cols],
    )


def _counts_by_day(rows: list[Any]) -> dict[dt.date, dict[str, Any]]:
    cols = SCHEMAS["watch_events"].names
    out: dict[dt.date, dict[str, Any]] = {}
    for r in rows:
        c = out.setdefault(
            r["day"],
            {
                "rows_in": 0,
                "valid": 0,
                "by_reason": {},
                "too_late": 0,
                "unknown_user": 0,
                "nulls": dict.fromkeys(cols, 0),
            },
        )
        reason, n = r[REASON_COLUMN], r["n"]
        c["rows_in"] += n
        if reason == "_too_late":
            c["too_late"] += n
        elif reason is not None:
            c["by_reason"][reason] = c["by_reason"].get(reason, 0) + n
        else:
            c["valid"] += n
            c["unknown_user"] += r["unknown_user"] or 0
            for col in cols:
                c["nulls"][col] += r[f"null_{col}"] or 0
    return out


def _batch_dir(store: ArtifactStore, name: str) -> str:
    return f"{store.uri(name)}/.batches/{uuid.uuid4().hex}"


def _fs_for(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def _publish_days(
    store: ArtifactStore,
    name: str,
    batch: str,
    tables: dict[str, Any],
    versions: dict[dt.date, str],
    extra: dict[dt.date, dict[str, Any]],
    meta: dict[str, Any],
    keep_batch: bool = False,
) -> list[str]:
    """Move each day's folders of the batch (Spark's ``day=`` partitions) of ``tables``
    into that day's version, whole or not at all. A table with no rows for a day gets
    an empty Parquet file of its schema, so every version has every table. The batch
    is deleted after, unless ``keep_batch`` (another artifact takes its other tables)."""
    import pyarrow.parquet as pq

    fs, base = _fs_for(batch)
    published = []
    for day, version in sorted(versions.items()):
        if store.exists(name, version):
            continue  # a concurrent attempt published the same function of the same inputs
        with (
            contextlib.suppress(VersionExistsError),
            store.write_version_at(name, version, {**meta, "day": day.isoformat()}) as out,
        ):
            ofs, obase = _fs_for(out)
            for table, schema in tables.items():
                src = f"{base}/{table}/day={day.isoformat()}"
                dst = f"{obase}/{table}"
                ofs.create_dir(dst, recursive=True)
                infos = fs.get_file_info(pafs.FileSelector(src, allow_not_found=True))
                parts = [i for i in infos if i.is_file and i.base_name.endswith(".parquet")]
                for i in parts:
                    pafs.copy_files(
                        i.path,
                        f"{dst}/{i.base_name}",
                        source_filesystem=fs,
                        destination_filesystem=ofs,
                    )
                if not parts:
                    pq.write_table(
                        schema.empty_table(), f"{dst}/part-empty.parquet", filesystem=ofs
                    )
            with ofs.open_output_stream(f"{obase}/{COUNTS_FILE}") as f:
                f.write(json.dumps(extra.get(day, {}), sort_keys=True, default=str).encode())
            published.append(version)
    if not keep_batch:
        fs.delete_dir_contents(base, missing_dir_ok=True)
        with contextlib.suppress(OSError):
            fs.delete_dir(base)
    return published


def _arrow_schema(df: DataFrame) -> Any:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.drop("day").schema, timezone="UTC")


def build_days(
    spark: SparkSession,
    cfg: Config,
    data: str,
    date: dt.date,
    todo: list[DayPlan],
    store: ArtifactStore,
    known_videos: Any,
    known_users: Any,
    plans: list[DayPlan],
) -> list[str]:
    """Compute and publish the ``features-day`` versions of ``todo`` in one Spark pass,
    and their ``features-quarantine-day`` versions first (a day version is reused
    without its quarantine being looked at again, so that one must exist before it);
    returns the day versions published (a twin may have published some first).
    ``plans``: the run's plan, which names the versions of the days before
    ``todo``'s."""
    from pyspark.sql import functions as F

    from videorec.features.session import spark_uri

    earlier = earlier_ids(spark, cfg, data, date, todo, plans, store, known_videos, known_users)
    frames, counts, marked = _day_frames(
        spark, cfg, data, todo, date, known_videos, known_users, earlier
    )
    batch = _batch_dir(store, names.FEATURES_DAY)
    try:
        by_day = _counts_by_day(counts.collect())
        extra = {d: {**c, "day": d.isoformat()} for d, c in by_day.items()}
        for table, df in frames.items():
            df.withColumn("ev_day", F.col("day")).write.partitionBy("day").parquet(
                spark_uri(f"{batch}/{table}")
            )
    finally:
        marked.unpersist()
    schemas = {t: _arrow_schema(df.withColumn("ev_day", F.col("day"))) for t, df in frames.items()}
    versions = {p.day: p.version for p in todo if p.version}
    meta = {"stage": "features-day", "late_horizon_days": cfg.features.late_horizon_days}
    for p in todo:
        extra.setdefault(p.day, {"day": p.day.isoformat()})["files"] = list(p.files)
    refused = {QUARANTINE_TABLE: schemas.pop(QUARANTINE_TABLE)}
    qmeta = {**meta, "stage": "features-quarantine-day"}
    _publish_days(store, names.FEATURES_QUARANTINE_DAY, batch, refused, versions, extra, qmeta,
                  keep_batch=True)  # fmt: skip
    return _publish_days(store, names.FEATURES_DAY, batch, schemas, versions, extra, meta)


# ---- the history job


def _day_paths(store: ArtifactStore, plans: list[DayPlan], table: str) -> list[str]:
    from videorec.features.session import spark_uri

    return [
        spark_uri(f"{store.files_uri(names.FEATURES_DAY, p.version)}/{table}")
        for p in plans
        if p.version
    ]


def _read(spark: SparkSession, paths: list[str], schema: Any) -> DataFrame:
    return spark.read.schema(schema).parquet(*paths) if paths else spark.createDataFrame([], schema)


def _day_schema(spark: SparkSession, store: ArtifactStore, plans: list[DayPlan], table: str) -> Any:
    """A day table's Spark schema, from one version's files (all share it)."""
    paths = _day_paths(store, plans, table)
    return spark.read.parquet(paths[0]).schema if paths else None


def build_histories(
    spark: SparkSession,
    cfg: Config,
    plans: list[DayPlan],
    todo: list[DayPlan],
    store: ArtifactStore,
) -> str:
    """Compute and publish the ``features-history`` versions of ``todo``: each day's
    watch plays with the last ``history_len`` watches strictly before them (ties share
    their timestamp's first position, as in the full pass) from the day itself and the
    watches of the ``window_days - 1`` days before it. Those come from the day before's
    recent watches where ``todo`` is one day and that list exists (and the day's own
    list is published for the next run), else from the days' tails. Returns which:
    "recent" or "tails"."""
    from pyspark.sql import functions as F

    from videorec.features import job

    w = cfg.features.window_days
    index = {p.day: i for i, p in enumerate(plans)}
    before = plans[index[todo[0].day] - 1] if len(todo) == 1 and index[todo[0].day] else None
    chained = (
        before is not None
        and before.day == todo[0].day - dt.timedelta(days=1)
        and _has_recent(store, before)
    )
    if chained:
        assert before is not None  # for the type checker: chained implies it
        since = todo[0].day - dt.timedelta(days=w - 1)
        # Read twice (the histories and the day's own list): kept, not re-read.
        state = _read_recent(spark, store, before, since).persist()
        own = _read(spark, _day_paths(store, todo, "tail"), _day_schema(spark, store, todo, "tail"))
        # Only the day's watchers (its tail's users, a fraction of the lists') change:
        # the lists are split by them without moving, where they are few enough to
        # broadcast; a join by user would shuffle every list, twice.
        watchers = own.select("user_id")
        watchers = F.broadcast(watchers) if watchers.count() <= job.BROADCAST_ROWS else watchers
        touched = state.join(watchers, "user_id", "left_semi")
        prev = touched.select(
            F.lit(todo[0].day).alias("target"), "user_id", F.col("items").alias("_prev")
        )
    else:
        prev = _prev_from_tails(spark, store, plans, todo, w)
    _write_histories(spark, cfg, store, todo, prev)
    if chained:
        items = state.schema["items"].dataType
        both = F.concat(F.coalesce("items", F.array().cast(items)), F.col("_own"))
        grown = (
            own.select("user_id", F.col("items").alias("_own"))
            .join(touched, "user_id", "left")
            .select("user_id", _last(both, cfg.features.history_len).alias("items"))
        )
        nxt = state.join(watchers, "user_id", "left_anti").unionByName(grown)
        _publish_recent(store, todo[0], nxt, cfg)
        state.unpersist()
    return "recent" if chained else "tails"


def _prev_from_tails(
    spark: SparkSession, store: ArtifactStore, plans: list[DayPlan], todo: list[DayPlan], w: int
) -> DataFrame:
    """Per target day and user: the watches of the ``w - 1`` days before the target,
    oldest first, from those days' tails (target, user_id, _prev)."""
    from pyspark.sql import functions as F

    index = {p.day: i for i, p in enumerate(plans)}
    lo = min(index[p.day] for p in todo)
    needed = plans[max(0, lo - w + 1) : max(index[p.day] for p in todo) + 1]
    tails = _read(
        spark, _day_paths(store, needed, "tail"), _day_schema(spark, store, needed, "tail")
    )
    targets = spark.createDataFrame([(p.day,) for p in todo], "target date")
    return (
        tails.join(
            F.broadcast(targets),
            (F.col("ev_day") < F.col("target"))
            & (F.col("ev_day") > F.date_sub(F.col("target"), w)),
        )
        .groupBy("target", "user_id")
        .agg(
            F.flatten(F.sort_array(F.collect_list(F.struct("ev_day", "items")))["items"]).alias(
                "_prev"
            )
        )
    )


def _write_histories(
    spark: SparkSession, cfg: Config, store: ArtifactStore, todo: list[DayPlan], prev: DataFrame
) -> list[str]:
    """Publish the histories of ``todo`` from ``prev`` (target, user_id, _prev: the
    watches before the target day, oldest first; only the last ``history_len`` count)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    from videorec.features.session import spark_uri

    hist_len = cfg.features.history_len
    plays = _read(
        spark,
        _day_paths(store, todo, "plays"),
        _day_schema(spark, store, todo, "plays"),
    )
    watches = plays.where(F.col("event_type") == "watch").withColumnRenamed("ev_day", "target")
    by_user = W.partitionBy("target", "user_id")
    own = watches.groupBy("target", "user_id").agg(
        F.sort_array(F.collect_list(F.struct("ts", "event_id", "video_id"))).alias("_own")
    )
    seq = own.join(prev, ["target", "user_id"], "left").select(
        "target",
        "user_id",
        F.coalesce(F.size("_prev"), F.lit(0)).alias("_n_prev"),
        F.concat(F.coalesce("_prev", F.array().cast(own.schema["_own"].dataType)), "_own").alias(
            "_all"
        ),
    )
    k = F.col("_n_prev") + F.col("_before")
    hist = F.slice("_all", F.greatest(F.lit(1), k - hist_len + 1), F.least(k, F.lit(hist_len)))
    examples = (
        watches.withColumn("_widx", F.row_number().over(by_user.orderBy("ts", "event_id")))
        .withColumn("_before", F.min("_widx").over(W.partitionBy("target", "user_id", "ts")) - 1)
        .join(seq, ["target", "user_id"])
        .withColumn(
            "_h", F.when(k > 0, hist).otherwise(F.array().cast(seq.schema["_all"].dataType))
        )
        .select(
            F.col("target").alias("day"),
            "user_id",
            "event_id",
            "ts",
            "video_id",
            "device",
            "country",
            "watch_time_s",
            "completion",
            F.col("_h")["video_id"].alias("history"),
            F.col("_h")["ts"].alias("history_ts"),
        )
    )
    batch = _batch_dir(store, names.FEATURES_HISTORY)
    examples.withColumn("ev_day", F.col("day")).write.partitionBy("day").parquet(
        spark_uri(f"{batch}/examples")
    )
    schemas = {"examples": _arrow_schema(examples.withColumn("ev_day", F.col("day")))}
    versions = {p.day: p.history_version for p in todo if p.history_version}
    meta = {"stage": "features-history", "history_len": hist_len}
    return _publish_days(store, names.FEATURES_HISTORY, batch, schemas, versions, {}, meta)


# ---- the recent watches: per user, the last history_len as of a day's end


def _last(items: Any, n: int) -> Any:
    """The last ``n`` elements of an array column (all of them when it has fewer)."""
    from pyspark.sql import functions as F

    return F.slice(items, F.greatest(F.lit(1), F.size(items) - n + 1), F.lit(n))


def _has_recent(store: ArtifactStore, plan: DayPlan) -> bool:
    return bool(plan.history_version) and store.exists(names.FEATURES_RECENT, plan.history_version)


def _recent_since(
    spark: SparkSession, store: ArtifactStore, plan: DayPlan, since: dt.date | None, as_: Any
) -> DataFrame:
    """(user_id, items): ``as_`` of the recent watches as of ``plan``'s day that fall on
    ``since`` or later (ts, video_id each), for users left with some. ``since`` None:
    the whole list (each holds only its own lookback's watches, and none is empty), not
    filtered item by item, which Spark does outside generated code."""
    from pyspark.sql import functions as F

    from videorec.features.session import spark_uri

    lists = spark.read.parquet(
        spark_uri(f"{store.files_uri(names.FEATURES_RECENT, plan.history_version)}/{RECENT_TABLE}")
    )
    if since is None:
        return lists.select("user_id", as_(F.col("items")).alias("items"))
    start = F.lit(dt.datetime.combine(since, dt.time(), dt.UTC))
    kept = F.filter("items", lambda x: x["ts"] >= start)
    return lists.select("user_id", as_(kept).alias("items")).where(F.size("items") > 0)


def _read_recent(
    spark: SparkSession, store: ArtifactStore, plan: DayPlan, since: dt.date
) -> DataFrame:
    """(user_id, items): the recent watches as of ``plan``'s day, those of ``since`` on
    only (users left with none are left out), as the tails hold them (ts, event_id,
    video_id; the event id, stored only to order a day's ties, is null)."""
    from pyspark.sql import functions as F

    def as_tail(kept: Any) -> Any:
        return F.transform(
            kept,
            lambda x: F.struct(
                x["ts"].alias("ts"),
                F.lit(None).cast("string").alias("event_id"),
                x["video_id"].alias("video_id"),
            ),
        )

    return _recent_since(spark, store, plan, since, as_tail)


def _recent_ids(
    spark: SparkSession, store: ArtifactStore, plan: DayPlan, since: dt.date | None
) -> DataFrame:
    """(user_id, recent_history): :func:`_read_recent`'s watches as video ids alone."""
    return _recent_since(
        spark, store, plan, since, lambda kept: kept["video_id"]
    ).withColumnRenamed("items", "recent_history")


def _publish_recent(store: ArtifactStore, plan: DayPlan, recent: DataFrame, cfg: Config) -> None:
    """Publish ``recent`` (user_id, items: the tails' structs) as ``plan``'s day's recent
    watches, (ts, video_id) each: the lists are already in order, and the event ids
    would double their size. A twin attempt that published first wins (the same
    function of the same inputs)."""
    from pyspark.sql import functions as F

    from videorec.features.session import spark_uri

    assert plan.history_version, "only a window day with events has recent watches"
    meta = {
        "stage": "features-recent",
        "day": plan.day.isoformat(),
        "history_len": cfg.features.history_len,
        "window_days": cfg.features.window_days,
    }
    with (
        contextlib.suppress(VersionExistsError),
        store.write_version_at(names.FEATURES_RECENT, plan.history_version, meta) as out,
    ):
        items = F.transform(
            "items", lambda x: F.struct(x["ts"].alias("ts"), x["video_id"].alias("video_id"))
        )
        recent.select("user_id", items.alias("items")).write.parquet(
            spark_uri(f"{out}/{RECENT_TABLE}")
        )


# ---- the day caches' garbage collection

# A day cache written less than this long ago is never collected: a backfill of an
# older date may have just written it and be about to read it.
DAY_CACHE_GRACE_S = 6 * 3600.0


def collect_day_caches(
    store: ArtifactStore, cfg: Config, date: dt.date, grace_s: float = DAY_CACHE_GRACE_S
) -> dict[str, list[str]]:
    """Delete the day caches no run of ``date`` or of a later date reads, except those
    committed less than ``grace_s`` seconds ago; returns {artifact name: the versions
    deleted}. A run of T reads the ``features-day`` versions of T - 2 * window_days + 1
    and later, and the ``features-recent`` lists of T - 2 (its new day's chain), T - 1
    and the day before its split; so ``features-day`` versions of days before
    ``date - 2 * window_days + 1`` go, and lists of days before the window's first day
    (or the day before the split, if earlier).

    Both are caches of the event log that no published artifact references: a run
    that needs one again (a backfill of an older date) recomputes it, so a delete costs
    time, never a result, even under a reader. ``features-history`` versions are kept:
    the features versions' examples are references to them. The ``features-plan``
    versions of dates before ``date`` go too: a plan is read by its own date's build
    (within the grace), and a re-run of an older date plans again."""
    f = cfg.features
    first = {
        names.FEATURES_DAY: date - dt.timedelta(days=2 * f.window_days - 1),
        names.FEATURES_RECENT: date - dt.timedelta(days=max(f.window_days, f.eval_days + 1)),
        names.FEATURES_PLAN: date,
    }
    return {
        name: sweep(store, name, before=first_read, roots=(), grace_s=grace_s)
        for name, first_read in first.items()
    }


def _collect_after_publish(store: ArtifactStore, cfg: Config, date: dt.date) -> dict[str, Any]:
    """:func:`collect_day_caches` after a publish, whose failure (a file system's or an
    S3 client's error) is reported, not raised: the features version is out, and the
    next run collects again."""
    try:
        return collect_day_caches(store, cfg, date)
    except Exception as err:  # any store's error: the run has succeeded
        return {"error": f"day caches not collected: {type(err).__name__}: {err}"}


# ---- the window's tables, merged from the day versions


@dataclass
class DayTables:
    """The window's day tables as Spark frames (every row keeps ``ev_day``)."""

    plays: DataFrame
    likes: DataFrame
    video_day: DataFrame
    pairs: DataFrame
    user_day: DataFrame
    tail: DataFrame
    examples: DataFrame


def read_window(spark: SparkSession, store: ArtifactStore, window: list[DayPlan]) -> DayTables:
    """The day tables of the window's days (days without events hold none)."""
    from videorec.features.session import spark_uri

    tables = {}
    for t in DAY_TABLES:
        tables[t] = _read(spark, _day_paths(store, window, t), _day_schema(spark, store, window, t))
    hist = [
        spark_uri(f"{store.files_uri(names.FEATURES_HISTORY, p.history_version)}/examples")
        for p in window
        if p.history_version
    ]
    tables["examples"] = _read(spark, hist, spark.read.parquet(hist[0]).schema) if hist else None
    return DayTables(**tables)


VIDEO_SUMS = ("plays", "skips", "sum_completion", "n_completion", "likes", "dislikes",
              "impressions", "clicks")  # fmt: skip


@dataclass
class WindowMerge:
    """The window's day partials merged once for both of its spans: the training days
    (before the split) and all days (the online tables). Each frame is persisted, as
    the two spans' tables read it; a ``train_*`` column is null where the key has no
    training-day row.

    pairs:     per (user_id, video_id) played: last_played_at, plays, max_completion,
               time (watch seconds, 1 per play without one), train_plays, train_time,
               train_watches, train_watches_enough (watches played enough to be
               examples without a like)
    per_cat:   per (user_id, category): plays, time, train_plays, train_time
    recent:    the users' recent watches over each span (:class:`RecentHistory`)
    activity:  per user with an event: plays, active_days, avg_watch_time_s and their
               train_ twins (null or 0 without plays), last_seen, last_played_at
    video:     per video with events: the sums of VIDEO_SUMS and their train_ twins,
               unique_viewers and train_unique_viewers (users with a play of it)
    """

    pairs: DataFrame
    per_cat: DataFrame
    recent: RecentHistory
    activity: DataFrame
    video: DataFrame


@dataclass
class RecentHistory:
    """Per user, the last ``history_len`` watched video ids, oldest first, over each
    span: ``all`` (user_id, recent_history) for users with a watch in the window,
    ``train`` the same for users with one in the training days. ``items`` (user_id,
    items: the tails' structs) are the window's last day's recent watches for the next
    run's chain, where they were grouped from the tails (None where read from that very
    list); ``cached``: what is persisted for them (to unpersist after the writes)."""

    all: DataFrame
    train: DataFrame
    items: DataFrame | None
    cached: list[DataFrame]


def merge_window(
    tables: DayTables,
    videos: DataFrame,
    split_day: dt.date,
    hist_len: int,
    recent: RecentHistory | None = None,
) -> WindowMerge:
    """One aggregation per partial table for both spans (one shuffle of the day pairs
    and of the day tails, where one per span and per use cost five and two). ``recent``:
    the users' recent watches from the recent-watch lists (:func:`window_recent`);
    None: grouped from the window's tails."""
    from pyspark.sql import functions as F

    train = F.col("ev_day") < F.lit(split_day)
    # Merged by user (the day pairs rarely repeat across days, so the shuffle moves as
    # many rows either way): the per-category sums and the watched set's cap then read
    # the persisted pairs in place, where grouping by (user, video) left them to
    # shuffle again.
    pairs = (
        tables.pairs.repartition("user_id")
        .groupBy("user_id", "video_id")
        .agg(
            F.max("last_played_at").alias("last_played_at"),
            F.sum("plays").alias("plays"),
            F.max("max_completion").alias("max_completion"),
            F.sum("time").alias("time"),
            F.sum(F.when(train, F.col("plays"))).alias("train_plays"),
            F.sum(F.when(train, F.col("time"))).alias("train_time"),
            F.sum(F.when(train, F.col("watches"))).alias("train_watches"),
            F.sum(F.when(train, F.col("watches_enough"))).alias("train_watches_enough"),
        )
    )
    pairs = pairs.persist()
    per_cat = (
        pairs.join(F.broadcast(videos.select("video_id", "category")), "video_id")
        .where(F.col("category").isNotNull())
        .groupBy("user_id", "category")
        .agg(*[F.sum(c).alias(c) for c in ("plays", "time", "train_plays", "train_time")])
    )
    if recent is None:
        recent = recent_from_tails(tables.tail, split_day, hist_len)
    played = F.col("plays") > 0

    def activity(when: Any, prefix: str) -> list[Any]:
        return [
            F.sum(F.when(when, F.col("plays"))).alias(f"{prefix}plays"),
            F.count(F.when(when, F.lit(1))).alias(f"{prefix}active_days"),
            F.try_divide(
                F.sum(F.when(when, F.col("sum_watch_time"))),
                F.sum(F.when(when, F.col("n_watch_time"))),
            ).alias(f"{prefix}avg_watch_time_s"),
        ]

    act = tables.user_day.groupBy("user_id").agg(
        *activity(played, ""),
        *activity(played & train, "train_"),
        F.max("last_seen").alias("last_seen"),
        F.max("last_played_at").alias("last_played_at"),
    )
    # Both spans' viewers in one aggregation of the merged pairs (one shuffle of them).
    viewers = pairs.groupBy("video_id").agg(
        F.count(F.lit(1)).alias("unique_viewers"),
        F.count("train_plays").alias("train_unique_viewers"),
    )
    video = (
        tables.video_day.groupBy("video_id")
        .agg(
            *[F.sum(c).alias(c) for c in VIDEO_SUMS],
            *[F.sum(F.when(train, F.col(c))).alias(f"train_{c}") for c in VIDEO_SUMS],
            F.count(F.when(train, F.lit(1))).alias("train_days"),
        )
        .join(viewers, "video_id", "left")
        .fillna(0, ["unique_viewers", "train_unique_viewers"])
    )
    return WindowMerge(pairs, per_cat.persist(), recent, act.persist(), video.persist())


def recent_from_tails(tail: DataFrame, split_day: dt.date, hist_len: int) -> RecentHistory:
    """The users' recent watches over both spans, and the last day's list (ts,
    event_id, video_id each), from the window's day tails grouped by user once."""
    from pyspark.sql import functions as F

    days = tail.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("ev_day", "items"))).alias("_d")
    )
    all_items = _last(F.flatten(F.col("_d")["items"]), hist_len)
    train_items = F.flatten(F.filter("_d", lambda d: d["ev_day"] < F.lit(split_day))["items"])
    grouped = days.select(
        "user_id",
        all_items["video_id"].alias("recent_all"),
        F.when(F.size(train_items) > 0, _last(train_items, hist_len)["video_id"]).alias(
            "recent_train"
        ),
        all_items.alias("items"),
    ).persist()  # both spans' tables and the published list read it
    return RecentHistory(
        all=grouped.select("user_id", F.col("recent_all").alias("recent_history")),
        train=grouped.where(F.col("recent_train").isNotNull()).select(
            "user_id", F.col("recent_train").alias("recent_history")
        ),
        items=grouped.select("user_id", "items"),
        cached=[grouped],
    )


def window_recent(
    spark: SparkSession,
    store: ArtifactStore,
    window: list[DayPlan],
    split_day: dt.date,
    start: dt.date,
    window_days: int,
) -> RecentHistory | None:
    """The users' recent watches over the window ``[start, ...]`` from the lists of its
    last day (all days) and of the day before ``split_day`` (the training days), cut to
    the window, where both lists exist; else None. Each span's table reads its own list:
    no join of the two, nothing persisted. A list as of day X holds the watches of
    X - window_days + 1 .. X: the last day's is the window's whole when that is ``start``."""
    last = window[-1]
    before = next((p for p in window if p.day == split_day - dt.timedelta(days=1)), None)
    if not (before and _has_recent(store, last) and _has_recent(store, before)):
        return None
    return RecentHistory(
        all=_recent_ids(
            spark,
            store,
            last,
            None if last.day - dt.timedelta(days=window_days - 1) >= start else start,
        ),
        train=_recent_ids(spark, store, before, start),
        items=None,
        cached=[],
    )


def merged_video_counts(m: WindowMerge, train: bool) -> DataFrame:
    """:func:`features.job.video_table`'s ``counts`` over the span (training days or
    all days) from the merged partials."""
    from pyspark.sql import functions as F

    p = "train_" if train else ""
    sums = m.video.where(F.col("train_days") > 0) if train else m.video
    return sums.select(
        "video_id",
        F.col(f"{p}plays").alias("views"),
        F.col(f"{p}unique_viewers").alias("unique_viewers"),
        F.try_divide(F.col(f"{p}sum_completion"), F.col(f"{p}n_completion")).alias(
            "avg_completion"
        ),
        F.try_divide(F.col(f"{p}skips").cast("double"), F.col(f"{p}plays")).alias("skip_rate"),
        *[F.col(f"{p}{c}").alias(c) for c in ("likes", "dislikes", "impressions", "clicks")],
    )


def merged_user_inputs(m: WindowMerge, train: bool) -> tuple[DataFrame, DataFrame, DataFrame]:
    """:func:`features.job.user_table`'s (recent, per_cat, activity) over the span."""
    from pyspark.sql import functions as F

    p = "train_" if train else ""
    recent = m.recent.train if train else m.recent.all
    per_cat = m.per_cat.where(F.col(f"{p}plays").isNotNull()).select(
        "user_id",
        "category",
        F.col(f"{p}plays").alias("plays"),
        F.col(f"{p}time").alias("time"),
    )
    activity = m.activity.where(F.col(f"{p}active_days") > 0).select(
        "user_id",
        F.col(f"{p}plays").alias("plays"),
        F.col(f"{p}active_days").alias("active_days"),
        F.col(f"{p}avg_watch_time_s").alias("avg_watch_time_s"),
    )
    return recent, per_cat, activity


def merged_split_counts(m: WindowMerge) -> dict[str, dict[str, int]]:
    """:func:`features.job.split_counts` from the merged activity: plays and users on
    each side of the split (a side without plays is left out, as there)."""
    from pyspark.sql import functions as F

    train = F.coalesce("train_plays", F.lit(0))
    held = F.coalesce("plays", F.lit(0)) - train
    r = m.activity.agg(
        F.sum(train), F.count(F.when(train > 0, 1)), F.sum(held), F.count(F.when(held > 0, 1))
    ).first()
    sides = {"train": (r[0], r[1]), "eval": (r[2], r[3])}
    return {k: {"plays": int(n), "users": int(u)} for k, (n, u) in sides.items() if u}


def incremental_version(
    cfg: Config,
    manifest: dict[str, Any],
    date: dt.date,
    plans: list[DayPlan],
    dimensions: dict[str, list[dict[str, Any]]],
) -> str:
    """``<date>_<digest>``: the stage's config, the data set's manifest, the window's
    day and history versions (which name every event file they read) and the dimension
    tables' files (``job.dimension_files``). A day version is validated against the
    catalogue of the run that computed it and is not recomputed when videos are added
    later (docs/data-contract.md); the merge's tables read the catalogue listed here."""
    dumped = cfg.model_dump(mode="json")
    window = [p for p in plans if p.day >= date - dt.timedelta(days=cfg.features.window_days)]
    digest = config_digest(
        {
            "features": dumped["features"],
            "contract": dumped["contract"],
            "data": manifest,
            "days": [[p.day.isoformat(), p.version, p.history_version] for p in window],
            "dimension_files": dimensions,
        }
    )
    return f"{date.isoformat()}_{digest}"


def window_of(cfg: Config, plans: list[DayPlan], date: dt.date) -> list[DayPlan]:
    start = date - dt.timedelta(days=cfg.features.window_days)
    return [p for p in plans if p.day >= start]


def ensure_days(
    spark: SparkSession,
    cfg: Config,
    data: str,
    date: dt.date,
    plans: list[DayPlan],
    store: ArtifactStore,
    known_videos: Any,
    known_users: Any,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Compute the day and history versions the window lacks (the others are reused):
    {"histories_from" (where the new histories' earlier watches came from: "recent",
    "tails" or None), "days_computed", "histories_computed", "days_reused",
    "histories_reused"}."""
    window = window_of(cfg, plans, date)
    # A window day's history reads the tails of the window_days - 1 days before it:
    # ``plans`` holds exactly those days and the window's.
    tails_needed = [p for p in plans if p.version]
    day_todo = [p for p in tails_needed if not store.exists(names.FEATURES_DAY, p.version)]
    t = time.perf_counter()
    if day_todo:
        build_days(spark, cfg, data, date, day_todo, store, known_videos, known_users, plans)
    timings["days"] = round(time.perf_counter() - t, 1)
    hist_todo = [
        p
        for p in window
        if p.history_version and not store.exists(names.FEATURES_HISTORY, p.history_version)
    ]
    t = time.perf_counter()
    prev_from = build_histories(spark, cfg, plans, hist_todo, store) if hist_todo else None
    timings["histories"] = round(time.perf_counter() - t, 1)
    return {
        "histories_from": prev_from,
        "days_computed": [p.day.isoformat() for p in day_todo],
        "days_reused": [p.day.isoformat() for p in tails_needed if p not in day_todo],
        "histories_computed": [p.day.isoformat() for p in hist_todo],
        "histories_reused": [
            p.day.isoformat() for p in window if p.history_version and p not in hist_todo
        ],
    }


def window_counts(store: ArtifactStore, window: list[DayPlan]) -> dict[str, Any]:
    """The window's validation counts, summed over its days' ``counts.json``."""
    cols = SCHEMAS["watch_events"].names
    total: dict[str, Any] = {
        "rows_in": 0,
        "valid": 0,
        "by_reason": {},
        "too_late": 0,
        "unknown_user": 0,
        "nulls": dict.fromkeys(cols, 0),
        "too_late_by_day": {},
    }
    for p in window:
        if not p.version:
            continue
        c = json.loads(store.read_bytes(names.FEATURES_DAY, p.version, COUNTS_FILE))
        for k in ("rows_in", "valid", "too_late", "unknown_user"):
            total[k] += c.get(k, 0)
        for k, n in c.get("by_reason", {}).items():
            total["by_reason"][k] = total["by_reason"].get(k, 0) + n
        for k, n in c.get("nulls", {}).items():
            total["nulls"][k] += n
        if c.get("too_late"):
            total["too_late_by_day"][p.day.isoformat()] = c["too_late"]
    return total


def _holding_its_days(build: Any) -> Any:
    """Run ``build`` (keyword arguments ``store``, ``plans``, ``version``) with the day
    caches, histories and recent lists its window may reuse held."""

    @functools.wraps(build)
    def held(*args: Any, **kwargs: Any) -> dict[str, Any]:
        plans, histories = kwargs["plans"], [p.history_version for p in kwargs["plans"]]
        wanted = {
            names.FEATURES_DAY: [p.version for p in plans],
            names.FEATURES_HISTORY: histories,
            names.FEATURES_RECENT: histories,
        }
        with holding(kwargs["store"], wanted, why=f"features {kwargs['version']}"):
            return build(*args, **kwargs)

    return held


@_holding_its_days
def build_features_incremental(
    cfg: Config,
    data: str,
    date: dt.date,
    *,
    spark: SparkSession,
    store: ArtifactStore,
    manifest: dict[str, Any],
    plans: list[DayPlan],
    version: str,
    dims: dict[str, Any],
) -> dict[str, Any]:
    """The features version of ``date`` assembled from its days (computing those that
    are missing): the same tables and report as the full pass, plus ``days`` (what was
    computed and reused) and ``too_late`` counts. Called by ``features.job.build_features``,
    which validates the dimension tables (``dims``) and checks for an existing version.

    The day caches and histories it may reuse are held (``videorec.retention.holding``)
    from before it checks them until the version is committed, so a collection beside
    a backfill of an old date cannot delete them between the check and the read; one
    deleted just before is computed again."""
    from videorec.contract import ContractViolation
    from videorec.features import job

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    f = cfg.features
    win = job.Window.of(date, f.window_days)
    split_ts = win.end - dt.timedelta(days=f.eval_days)
    known_videos = dims["videos"].valid["video_id"].to_numpy()
    known_users = dims["users"].valid["user_id"].to_numpy()
    if not any(p.version for p in window_of(cfg, plans, date)):  # no day has events: say so
        raise job.EmptyTrainingWindow(job.empty_window_message(cfg, manifest, win, date, 0, 0.0))
    days = ensure_days(spark, cfg, data, date, plans, store, known_videos, known_users, timings)
    window = window_of(cfg, plans, date)
    with job._timed(timings, "window_counts"):
        counts = window_counts(store, window)
    videos = spark.createDataFrame(
        dims["videos"].valid.select(["video_id", "category", "channel_id", "published_at"])
    )
    users = spark.createDataFrame(
        dims["users"].valid.select(["user_id", "country", "language", "signup_ts"])
    )
    with job._timed(timings, "read_window"):
        tables = read_window(spark, store, window)
    new_users = (
        tables.user_day.select("user_id")
        .distinct()
        .join(users.select("user_id"), "user_id", "left_anti")
    )
    with job._timed(timings, "new_users"):
        n_new_users = new_users.count() if counts["unknown_user"] else 0
    if n_new_users:
        users = users.unionByName(new_users, allowMissingColumns=True)
    dims["users"].rows_added = n_new_users
    rows_in, bad = counts["rows_in"], sum(counts["by_reason"].values())
    validation = {
        "watch_events": {
            "rows_in": rows_in,
            "rows_valid": rows_in - bad - counts["too_late"],
            "rows_quarantined": bad,
            "by_reason": counts["by_reason"],
            "accepted": {"unknown_user": counts["unknown_user"]},
            "rows_added": 0,
            "too_late": counts["too_late"],
            "too_late_by_day": counts["too_late_by_day"],
        },
        **{name: res.summary() for name, res in dims.items()},
    }
    with job._timed(timings, "quarantine"):
        quarantine_uri = _publish_quarantine(store, version, window, dims, date, data, cfg)
    for res in dims.values():
        try:
            res.check(cfg.contract.max_invalid_share)
        except ContractViolation as err:
            raise ContractViolation(f"{err}; quarantine at {quarantine_uri}") from None
    share = bad / rows_in if rows_in else 0.0
    if share > cfg.contract.max_invalid_share:
        raise ContractViolation(
            f"watch_events {win.start.date()}..{date}: {bad} of {rows_in} rows "
            f"({share:.2%}) broke the contract, above {cfg.contract.max_invalid_share:.2%}; "
            f"by reason {counts['by_reason']}; quarantine at {quarantine_uri}"
        )
    total_events = job._dataset_event_count(data, manifest)
    window_share = round(rows_in / total_events, 6) if total_events else None
    stage_warnings = job.window_share_warnings(cfg, manifest, win, date, rows_in, total_events)
    job._warn(stage_warnings)

    recent = window_recent(spark, store, window, split_ts.date(), win.start.date(), f.window_days)
    days["recent"] = "tails" if recent is None else "recent"
    with job._timed(timings, "examples"):  # the window's examples, capped and counted
        outputs, (n_examples, n_example_users), merged, cached = _window_outputs(
            cfg, tables, videos, users, dims, win, split_ts, spark, recent
        )
    if n_examples == 0:
        _unpersist(cached)
        raise job.EmptyTrainingWindow(
            job.empty_window_message(cfg, manifest, win, date, rows_in, window_share)
        )
    meta = {
        "date": date.isoformat(),
        "window_start": win.start.isoformat(),
        "window_end": win.end.isoformat(),
        "data": str(data),
        "data_manifest": manifest,
        # The files the window's days read (partitions [start, date)), as the full pass.
        "event_files": [
            {"path": path, "size": size}
            for path, size in sorted({f for p in window for f in p.files if _filed(f[0]) < date})
        ],
        "days": [[p.day.isoformat(), p.version, p.history_version] for p in window],
        "config_digest": cfg.digest(),
        "features_config": cfg.features.model_dump(mode="json"),
        "split": "last_days",
        "incremental": True,
    }
    try:
        with store.write_version_at(names.FEATURES, version, meta) as out:
            from videorec.features.session import spark_uri

            o = spark_uri(out)
            for name, df in outputs.items():
                with job._timed(timings, f"write_{name}"):
                    df.write.parquet(f"{o}/{name}")
            job._write_json(
                out,
                f"{REFERENCE_DIR}/{REFERENCE_FILE}",
                _reference(store, cfg, window, win, split_ts),
            )
            if merged.recent.items is not None and window[-1].history_version:
                with job._timed(timings, "recent_list"):  # for the next run's chain
                    _publish_recent(store, window[-1], merged.recent.items, cfg)
            with job._timed(timings, "report"):
                report = _report(spark, o, validation, counts, merged,
                                 (n_examples, n_example_users), dims, win)  # fmt: skip
            report["window_share"] = window_share
            report["warnings"] = stage_warnings
            report["days"] = days
            report["stage_seconds"] = timings
            report["seconds"] = round(time.perf_counter() - t0, 1)
            job._write_json(out, names.QUALITY_REPORT, report)
    except VersionExistsError:
        return job._reuse(store, version)
    finally:
        _unpersist(cached)
    return {
        "version": version,
        "uri": store.files_uri(names.FEATURES, version),
        "skipped": False,
        "report": report,
        "collected": _collect_after_publish(store, cfg, date),
        "warnings": stage_warnings,
    }


def _publish_quarantine(
    store: ArtifactStore,
    version: str,
    window: list[DayPlan],
    dims: dict[str, Any],
    date: dt.date,
    data: str,
    cfg: Config,
) -> str:
    """The window's quarantine as the ``features-quarantine`` version of ``version``,
    published before any share check: the dimension tables' refused rows, and the
    list of the window's ``features-quarantine-day`` versions (``days.json``), which
    hold its days' refused event rows once each (``features.job.quarantined_events``
    reads them back as one table)."""
    from videorec.features import job

    if not store.exists(names.FEATURES_QUARANTINE, version):
        meta = {
            "date": date.isoformat(),
            "data": str(data),
            "config_digest": cfg.digest(),
            "features_version": version,
        }
        days = [
            {"day": p.day.isoformat(), "version": p.version,
             "uri": store.files_uri(names.FEATURES_QUARANTINE_DAY, p.version)}
            for p in window if p.version
        ]  # fmt: skip
        with (
            contextlib.suppress(VersionExistsError),
            store.write_version_at(names.FEATURES_QUARANTINE, version, meta) as qdir,
        ):
            job._write_json(qdir, names.QUARANTINE_DAYS_FILE, {"days": days})
            job._write_dimension_quarantine(f"{qdir}/{names.QUARANTINE_DIMENSIONS}", dims)
    return store.files_uri(names.FEATURES_QUARANTINE, version)


def _window_outputs(
    cfg: Config,
    tables: DayTables,
    videos: DataFrame,
    users: DataFrame,
    dims: dict[str, Any],
    win: Any,
    split_ts: dt.datetime,
    spark: SparkSession,
    recent: RecentHistory | None = None,
) -> tuple[dict[str, DataFrame], tuple[int, int], WindowMerge, list[DataFrame]]:
    """The features version's tables from the window's day tables (as the full pass
    defines them; the examples by reference: their cut-offs and liked pairs), the number
    of training examples and of their users, the merged partials, and the frames
    persisted for the tables' writes (to unpersist after them)."""
    from pyspark.sql import functions as F

    from videorec.features import job

    f = cfg.features
    split_day = split_ts.date()
    train_days = F.col("ev_day") < F.lit(split_day)
    # "liked": a like of the same video by the same user before the split.
    liked = (
        tables.likes.where(F.col("ts") < F.lit(split_ts))
        .select("user_id", "video_id")
        .distinct()
        .withColumn("liked", F.lit(True))
    ).persist()
    # A join by shuffle would move the plays and the merged pairs once more; likes
    # are rare, so their pairs are broadcast while they are few enough (counted first:
    # Spark's own estimate, from the likes files, is far above the pairs' size).
    liked_side = F.broadcast(liked) if liked.count() <= job.BROADCAST_ROWS else liked

    def with_labels(df: DataFrame) -> DataFrame:
        return (
            df.join(liked_side, ["user_id", "video_id"], "left")
            .withColumn("liked", F.coalesce("liked", F.lit(False)))
            .withColumn("weight", job._weight(cfg))
            .withColumn("is_positive", job.played_enough(f) | F.col("liked"))
        )

    plays = with_labels(tables.plays)
    m = merge_window(tables, videos, split_day, f.history_len, recent)
    ex = window_examples(m, tables.examples.where(train_days), liked_side, with_labels, f)
    n_examples = ex.n_examples
    vf = (
        job.video_table(merged_video_counts(m, train=True), videos, win.end)
        .join(ex.per_video, "video_id", "left")
        .fillna(0, ["example_count"])
        .withColumn("sampling_prob", F.col("example_count") / F.lit(max(n_examples, 1)))
    )
    uf = job.user_table(*merged_user_inputs(m, train=True), users, f, win.end)
    online_uf = job.user_table(*merged_user_inputs(m, train=False), users, f, win.end).join(
        m.activity.select("user_id", "last_seen", "last_played_at"), "user_id", "left"
    )
    online_vf = job.video_table(merged_video_counts(m, train=False), videos, win.end).join(
        F.broadcast(job._video_details(spark, dims)), "video_id", "left"
    )
    watched = job.capped_watched(
        m.pairs.select("user_id", "video_id", "last_played_at", "plays", "max_completion"),
        f.max_watched_per_user,
    )
    last_day = (win.end - dt.timedelta(days=1)).date()
    trending = (
        tables.video_day.where((F.col("ev_day") == F.lit(last_day)) & (F.col("plays") > 0))
        .select(
            "video_id",
            F.col("plays_last_hour").alias("views_1h"),
            F.col("plays").alias("views_24h"),
        )
        .join(
            tables.pairs.where(F.col("ev_day") == F.lit(last_day))
            .groupBy("video_id")
            .agg(F.count(F.lit(1)).alias("viewers_24h")),
            "video_id",
        )
    )
    eval_out = plays.where(F.col("ts") >= F.lit(split_ts)).select(
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
        f"{REFERENCE_DIR}/{LIKED_DIR}": liked.select("user_id", "video_id"),
        f"{REFERENCE_DIR}/{CUTOFFS_DIR}": ex.cutoffs,
        names.EVAL: eval_out,
        names.VIDEO_FEATURES: vf,
        names.USER_FEATURES: uf,
        names.TRENDING: trending,
        names.WATCHED: watched,
        names.ONLINE_USER_FEATURES: online_uf,
        names.ONLINE_VIDEO_FEATURES: online_vf,
    }
    cached = [liked, *ex.cached, m.pairs, m.per_cat, *m.recent.cached, m.activity, m.video]
    return outputs, (n_examples, ex.n_users), m, cached


@dataclass
class WindowExamples:
    """The window's training examples as the features version references them.

    cutoffs:    (user_id, cut_ts, cut_id) of each user over the cap (see
                :func:`recent_cutoffs`)
    per_video:  (video_id, example_count) over the capped examples
    n_examples, n_users: the capped examples and the users they are of
    cached:     the frames persisted for the outputs' writes (to unpersist after)
    """

    cutoffs: DataFrame
    per_video: DataFrame
    n_examples: int
    n_users: int
    cached: list[DataFrame]


def window_examples(
    m: WindowMerge, train_keys: DataFrame, liked: DataFrame, with_labels: Any, f: Any
) -> WindowExamples:
    """The window's examples counted from the merged pairs: a pair's examples are its
    training-day watches played enough, or all of them where the user liked it before
    the split (``liked``: user_id, video_id, liked). Only the users over the cap need
    their examples one by one (their ``train_keys``, the history files' rows of the
    training days, labelled by ``with_labels``), to find the cut and what it keeps; the
    pairs, merged for the tables anyway, settle every other user, so the history
    files' rows of the window (millions) are read only for those few users."""
    from pyspark.sql import functions as F

    from videorec.features import job

    cap = f.max_examples_per_user
    # m.pairs is partitioned by user: with the likes broadcast, no shuffle to the sums.
    pair_n = (
        m.pairs.where(F.col("train_watches") > 0)
        .join(liked, ["user_id", "video_id"], "left")
        .select(
            "user_id",
            "video_id",
            F.when(F.col("liked").isNotNull(), F.col("train_watches"))
            .otherwise(F.col("train_watches_enough"))
            .alias("n"),
        )
        .where(F.col("n") > 0)
    )
    per_user = pair_n.groupBy("user_id").agg(F.sum("n").alias("n")).persist()
    totals = per_user.agg(
        F.sum(F.least("n", F.lit(cap))).alias("examples"),
        F.count(F.lit(1)).alias("users"),
        F.count(F.when(F.col("n") > cap, 1)).alias("over"),
    ).first()
    counted, keys = pair_n, None  # (video_id, n) of the capped examples; the cut's rows
    n_over = int(totals["over"] or 0)
    if n_over:
        # At most examples/cap users: a few thousand here, millions on a cluster's window
        # with a small cap, which a broadcast would not hold.
        small = n_over <= job.BROADCAST_ROWS
        over = per_user.where(F.col("n") > cap).select("user_id")
        over = F.broadcast(over) if small else over
        keys = (
            with_labels(
                train_keys.join(over, "user_id")
                .select("user_id", "event_id", "ts", "video_id", "completion", "watch_time_s")
                .withColumn("event_type", F.lit("watch"))
            )
            .where(F.col("is_positive"))
            .select("user_id", "event_id", "ts", "video_id")
        ).persist()  # the cut's count, its ranking and the kept rows read it
        cutoffs = recent_cutoffs(keys, cap).persist()
        kept_over = (
            keys.join(F.broadcast(cutoffs) if small else cutoffs, "user_id")
            .where(_after_cut())
            .groupBy("video_id")
            .agg(F.count(F.lit(1)).alias("n"))
        )
        counted = (
            pair_n.join(over, "user_id", "left_anti").select("video_id", "n").unionByName(kept_over)
        )
    else:  # nobody over the cap: the history files are not read at all
        cut = train_keys.select(
            "user_id", F.col("ts").alias("cut_ts"), F.col("event_id").alias("cut_id")
        )
        cutoffs = m.pairs.sparkSession.createDataFrame([], cut.schema)
    per_video = counted.groupBy("video_id").agg(F.sum("n").alias("example_count")).persist()
    return WindowExamples(
        cutoffs=cutoffs,
        per_video=per_video,
        n_examples=int(totals["examples"] or 0),
        n_users=int(totals["users"]),
        cached=[x for x in (per_user, keys, cutoffs, per_video) if x is not None],
    )


def _reference(
    store: ArtifactStore, cfg: Config, window: list[DayPlan], win: Any, split_ts: dt.datetime
) -> dict[str, Any]:
    """``examples-ref/reference.json``: the training days' example files and the rule
    that makes them the window's examples (``videorec.examples``)."""
    f = cfg.features
    us = lambda t: int(t.timestamp()) * 1_000_000 + t.microsecond  # noqa: E731
    days = []
    for p in window:
        if p.history_version and p.day < split_ts.date():
            man = store.read_manifest(names.FEATURES_HISTORY, p.history_version)
            days.append({
                "day": p.day.isoformat(), "name": names.FEATURES_HISTORY,
                "version": p.history_version,
                "uri": store.files_uri(names.FEATURES_HISTORY, p.history_version),
                "files": [x["path"] for x in man["files"]
                          if x["path"].startswith(f"{names.EXAMPLES}/")
                          and x["path"].endswith(".parquet")],
            })  # fmt: skip
    rule = ExampleRule(
        window_start_us=us(win.start), window_end_us=us(win.end),
        cap=f.max_examples_per_user, positive_min_completion=f.positive_min_completion,
        weight_watch_time_cap_s=f.weight_watch_time_cap_s,
        weight_watch_time_exp=f.weight_watch_time_exp,
        weight_completion_exp=f.weight_completion_exp, like_bonus=f.like_bonus,
    )  # fmt: skip
    return {"rule": dataclasses.asdict(rule), "days": days}


def recent_cutoffs(rows: DataFrame, cap: int) -> DataFrame:
    """(user_id, cut_ts, cut_id) of each user with more than ``cap`` rows: the key
    (ts, event_id) of the ``cap``-th most recent, found without moving the rows: a count
    finds the users over the cap, and a window ranks those users' keys alone."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window as W

    over = (
        rows.groupBy("user_id")
        .agg(F.count(F.lit(1)).alias("_n"))
        .where(F.col("_n") > cap)
        .select("user_id")
    )
    newest_first = W.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("event_id").desc())
    return (
        rows.select("user_id", "ts", "event_id")
        .join(over, "user_id")
        .withColumn("_r", F.row_number().over(newest_first))
        .where(F.col("_r") == cap)
        .select("user_id", F.col("ts").alias("cut_ts"), F.col("event_id").alias("cut_id"))
    )


def _after_cut() -> Any:
    """A row at or after its user's cut-off key (``cut_ts``, ``cut_id``)."""
    from pyspark.sql import functions as F

    return (F.col("ts") > F.col("cut_ts")) | (
        (F.col("ts") == F.col("cut_ts")) & (F.col("event_id") >= F.col("cut_id"))
    )


def _unpersist(frames: list[DataFrame]) -> None:
    for df in frames:
        df.unpersist()


def _report(
    spark: SparkSession,
    out: str,
    validation: dict[str, Any],
    counts: dict[str, Any],
    m: WindowMerge,
    n_examples: tuple[int, int],
    dims: dict[str, Any],
    win: Any,
) -> dict[str, Any]:
    """The full pass's quality report, from the day counts and the merged partials
    (persisted already: no pass over the window's plays)."""
    from videorec.features.job import output_counts

    cols = SCHEMAS["watch_events"].names
    n = counts["valid"]
    return {
        "window": {"start": win.start.isoformat(), "end": win.end.isoformat()},
        "validation": validation,
        "valid_events": n,
        "null_rate": {c: round(counts["nulls"][c] / n, 6) if n else None for c in cols},
        "coverage": {
            "users_with_events": m.activity.count(),
            "users_in_table": dims["users"].valid.num_rows,
            "users_added": dims["users"].rows_added,
            "videos_with_events": m.video.count(),
            "videos_in_catalogue": dims["videos"].valid.num_rows,
        },
        "split": {"mode": "last_days", **merged_split_counts(m)},
        "outputs": output_counts(spark, out, *n_examples),
    }
