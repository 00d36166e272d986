"""The event data contract: explicit Arrow schemas and the validator every reader uses.

Tables (documented in docs/data-contract.md):

- ``watch_events``: one row per user action, Parquet partitioned by day (``dt=YYYY-MM-DD``).
- ``videos``, ``channels``, ``users``: dimension tables, one row per id.

Entity ids are int64 surrogate keys; ``event_id`` is a string because events are
minted by clients. Timestamps are UTC microseconds.

The validator never drops a row silently: each row that breaks the contract gets
exactly one reason (the first rule it fails, in :data:`EVENT_RULES` order), is
kept in the ``quarantined`` table with that reason, and is counted. Whether too
many bad rows fail the read is the caller's decision (:meth:`ValidationResult.check`).

The configurable limits (watch-time cap, timestamp floor, late-arrival tolerance) live
in :class:`videorec.config.ContractConfig`; every function here takes one (``None``
means the defaults), so the pyarrow readers and the Spark job apply the same rules
with the same numbers.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec.config import ContractConfig

EVENT_TYPES: tuple[str, ...] = (
    "watch", "like", "dislike", "skip", "share", "not_interested", "impression", "click",
)  # fmt: skip
# Event types that carry a watch time; the others (reactions, and the impressions and
# clicks the serving tier logs) have watch_time_s null. Only these become plays.
PLAYBACK_EVENT_TYPES: tuple[str, ...] = ("watch", "skip")
# What the serving tier logs around a recommendation: an item shown (``impression``, at
# ``position`` in the response ``request_id``, produced by ``source``) and an item opened
# (``click``, same request_id). Neither is a play.
SERVED_EVENT_TYPES: tuple[str, ...] = ("impression", "click")
# Watch time may exceed the duration (replays, seeking back) but not by this factor.
MAX_WATCH_TO_DURATION = 3.0

TS = pa.timestamp("us", tz="UTC")

WATCH_EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("video_id", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("watch_time_s", pa.float64()),  # null for reactions and unknown sources
        pa.field("video_duration_s", pa.float64()),  # the duration the client saw
        pa.field("session_id", pa.string()),
        pa.field("device", pa.string()),  # mobile | desktop | tv | tablet
        pa.field("country", pa.string()),  # ISO 3166-1 alpha-2
        # Added with impressions and clicks; null for events not served by videorec and
        # absent from older files (readers fill them with nulls: ADDED_COLUMNS).
        pa.field("request_id", pa.string()),  # the serving request that showed or led to it
        pa.field("position", pa.int32()),  # 0-based rank in that response (impressions)
        pa.field("source", pa.string()),  # the path that produced the item: personal, trending, ...
    ]
)

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.int64(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("category", pa.string()),
        pa.field("channel_id", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("published_at", TS),
        pa.field("language", pa.string()),  # ISO 639-1
    ]
)

CHANNELS = pa.schema(
    [
        pa.field("channel_id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("main_category", pa.string()),
        pa.field("created_at", TS),
        pa.field("language", pa.string()),
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("country", pa.string()),
        pa.field("language", pa.string()),
        pa.field("signup_ts", TS),
        pa.field("age_bucket", pa.string()),  # 13-17 | 18-24 | 25-34 | 35-44 | 45-54 | 55+
        pa.field("declared_interests", pa.list_(pa.string())),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "watch_events": WATCH_EVENTS,
    "videos": VIDEOS,
    "channels": CHANNELS,
    "users": USERS,
}
PRIMARY_KEYS: dict[str, str] = {
    "watch_events": "event_id",
    "videos": "video_id",
    "channels": "channel_id",
    "users": "user_id",
}
# Columns added to a table after its first release: a file or producer without them is
# read as if they were null (``conform``), so data sets written before them still read.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "watch_events": ("request_id", "position", "source"),
}
AGE_BUCKETS: tuple[str, ...] = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")


class Reason(StrEnum):
    """Why a row was quarantined. The value is what the quarantine table stores."""

    NULL_ID = "null_id"
    NULL_TIMESTAMP = "null_timestamp"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    NEGATIVE_POSITION = "negative_position"
    NON_FINITE_WATCH_TIME = "non_finite_watch_time"
    NEGATIVE_WATCH_TIME = "negative_watch_time"
    INVALID_DURATION = "invalid_duration"
    WATCH_TIME_OVER_3X_DURATION = "watch_time_over_3x_duration"
    WATCH_TIME_OVER_CAP = "watch_time_over_cap"
    TIMESTAMP_BEFORE_FLOOR = "timestamp_before_floor"
    FUTURE_TIMESTAMP = "future_timestamp"
    PARTITION_MISMATCH = "partition_mismatch"
    UNKNOWN_VIDEO = "unknown_video"
    UNKNOWN_CHANNEL = "unknown_channel"
    DUPLICATE_ID = "duplicate_id"
    # Stream entries the event-log drain cannot turn into a row (kept raw, with the detail):
    UNDECODABLE_ENTRY = "undecodable_entry"  # no event field, not JSON, not a JSON object
    MALFORMED_ENTRY = "malformed_entry"  # a field of the wrong type, or not in the contract


# The order rules are checked in; a row gets the first reason it fails. Non-finite
# values come before the comparisons that NaN would silently pass (NaN < 0 and
# NaN > limit are both false), and future_timestamp before partition_mismatch: a row
# filed under its arrival day with a ts after that day is future (a clock ahead), so
# partition_mismatch is left with the rows filed too late for their ts.
EVENT_RULES: tuple[Reason, ...] = (
    Reason.NULL_ID,
    Reason.NULL_TIMESTAMP,
    Reason.UNKNOWN_EVENT_TYPE,
    Reason.NEGATIVE_POSITION,
    Reason.NON_FINITE_WATCH_TIME,
    Reason.NEGATIVE_WATCH_TIME,
    Reason.INVALID_DURATION,
    Reason.WATCH_TIME_OVER_3X_DURATION,
    Reason.WATCH_TIME_OVER_CAP,
    Reason.TIMESTAMP_BEFORE_FLOOR,
    Reason.FUTURE_TIMESTAMP,
    Reason.PARTITION_MISMATCH,
    Reason.UNKNOWN_VIDEO,
    Reason.DUPLICATE_ID,
)
REASON_COLUMN = "quarantine_reason"
# Not a quarantine reason: events of users missing from ``users`` are kept (the users
# table lags the event log on a real platform) and counted under this name; each such
# user gets a minimal row (:func:`with_minimal_users`).
UNKNOWN_USER = "unknown_user"


class ContractViolation(RuntimeError):
    """Too large a share of a table broke the contract; the message gives the counts."""


@dataclass
class ValidationResult:
    """The outcome of validating one table.

    ``valid`` holds the good rows in their original order and schema;
    ``quarantined`` holds the bad ones with an extra ``quarantine_reason`` column.
    ``accepted`` counts valid rows that a soft rule flagged but kept (events of
    unknown users); ``rows_added`` counts minimal rows a reader added to the table
    (users seen only in events), which are not in ``valid``.
    """

    table: str
    rows_in: int
    valid: pa.Table
    quarantined: pa.Table
    counts: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    rows_added: int = 0

    @property
    def rows_quarantined(self) -> int:
        return self.quarantined.num_rows

    @property
    def invalid_share(self) -> float:
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def check(self, max_invalid_share: float) -> None:
        """Raise ContractViolation if more than ``max_invalid_share`` of rows are bad."""
        if self.invalid_share > max_invalid_share:
            raise ContractViolation(
                f"{self.table}: {self.rows_quarantined} of {self.rows_in} rows "
                f"({self.invalid_share:.2%}) broke the contract, above the allowed "
                f"{max_invalid_share:.2%}; by reason: {self.counts}"
            )

    def summary(self) -> dict[str, Any]:
        """Counts as plain JSON-able data."""
        return {
            "rows_in": self.rows_in,
            "rows_valid": self.valid.num_rows,
            "rows_quarantined": self.rows_quarantined,
            "by_reason": dict(sorted(self.counts.items())),
            "accepted": dict(sorted(self.accepted.items())),
            "rows_added": self.rows_added,
        }


def conform(table: pa.Table, name: str) -> pa.Table:
    """Select and cast ``table`` to the contract schema of ``name``.

    Raises ValueError naming the missing columns; extra columns are an error too,
    so a producer cannot ship fields the contract does not know. Columns added to the
    contract later (:data:`ADDED_COLUMNS`) may be missing: they are read as nulls.
    """
    schema = SCHEMAS[name]
    for col in ADDED_COLUMNS.get(name, ()):
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(table.num_rows, schema.field(col).type))
    missing = [f.name for f in schema if f.name not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names and c != "dt"]
    if missing or extra:
        raise ValueError(
            f"{name}: columns do not match the contract: missing {missing}, unknown {extra}"
        )
    cols = []
    for f in schema:
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ValueError(
                    f"{name}.{f.name}: cannot cast {col.type} to {f.type}: {err}"
                ) from None
        cols.append(col)
    # Nullability is checked by the validator (null ids are quarantined, not rejected
    # wholesale), so the Arrow fields are made nullable here.
    loose = pa.schema([f.with_nullable(True) for f in schema])
    return pa.Table.from_arrays(cols, schema=loose)


def _split(
    table: pa.Table, name: str, codes: np.ndarray, order: tuple[Reason, ...]
) -> ValidationResult:
    """Build the result from per-row reason codes (0 = valid, i = order[i-1])."""
    good = codes == 0
    valid = table.filter(pa.array(good))
    bad_idx = np.flatnonzero(~good)
    quarantined = table.take(pa.array(bad_idx, type=pa.int64()))
    labels = np.array([""] + [r.value for r in order], dtype=object)[codes[bad_idx]]
    quarantined = quarantined.append_column(REASON_COLUMN, pa.array(labels, type=pa.string()))
    counts = {
        order[c - 1].value: int(n)
        for c, n in zip(*np.unique(codes[bad_idx], return_counts=True), strict=True)
    }
    return ValidationResult(name, table.num_rows, valid, quarantined, counts)


def _mark(codes: np.ndarray, bad: pa.Array | pa.ChunkedArray | np.ndarray, code: int) -> None:
    """Give ``code`` to rows that are bad and not yet marked by an earlier rule."""
    if not isinstance(bad, np.ndarray):
        bad = pc.fill_null(bad, False).to_numpy(zero_copy_only=False)
    codes[(codes == 0) & bad] = code


def _duplicates_after_first(
    keys: pa.ChunkedArray | pa.Array, order_by: np.ndarray | None
) -> np.ndarray:
    """True for every row whose key appeared earlier (earlier = smaller order_by, then position)."""
    import pandas as pd

    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=bool)
    perm = np.argsort(order_by, kind="stable") if order_by is not None else np.arange(n)
    values = keys.to_numpy(zero_copy_only=False) if hasattr(keys, "to_numpy") else np.asarray(keys)
    dup_sorted = pd.Series(values[perm]).duplicated(keep="first").to_numpy()
    dup = np.zeros(n, dtype=bool)
    dup[perm] = dup_sorted
    return dup


_US_PER_DAY = 86_400 * 1_000_000


class RuleOps(Protocol):
    """What an engine gives :func:`event_row_checks` beyond Python's operators.

    The rules combine column expressions with ``|``, ``&``, ``~``, comparisons and
    arithmetic, which pyarrow's ``pc.Expression`` and Spark's ``Column`` both overload
    with SQL's three-valued logic; these are the few operations they spell differently.
    """

    def col(self, name: str) -> Any:
        """The column ``name``."""

    def is_null(self, x: Any) -> Any:
        """True where ``x`` is null, never null."""

    def non_finite(self, x: Any) -> Any:
        """True for NaN and ±infinity, false for finite values, null for null."""

    def isin(self, x: Any, values: tuple[str, ...]) -> Any:
        """True where ``x`` is one of ``values`` (null or false elsewhere)."""

    def or_false(self, x: Any) -> Any:
        """``x`` with null read as false."""

    def micros(self, x: Any) -> Any:
        """A timestamp as int64 microseconds since the Unix epoch."""


def _epoch_us(t: dt.datetime) -> int:
    """An aware datetime as exact int microseconds since the Unix epoch.

    Integer arithmetic on the UTC fields, not datetime subtraction: Airflow passes its
    logical date as a pendulum ``DateTime``, whose difference is a pendulum ``Interval``
    that cannot be floor-divided by a ``timedelta``.
    """
    if t.tzinfo is None:
        raise ValueError(f"{t!r} must be timezone-aware (UTC)")
    return calendar.timegm(t.utctimetuple()) * 1_000_000 + t.microsecond


def event_row_checks(
    ops: RuleOps,
    as_of: dt.datetime,
    limits: ContractConfig,
    *,
    known_video: Any | None,
    partition_start_us: Any | None,
) -> list[tuple[Reason, Any]]:
    """Every row-local rule as ``(reason, broken)``, in :data:`EVENT_RULES` order: the
    contract's row rules, written once for every engine (:class:`RuleOps`).

    ``broken`` is an engine expression, true where the row breaks the rule (null counts
    as not broken); a row's reason is the first rule it breaks. ``known_video``: true
    where the video is in the catalogue (None skips the rule); ``partition_start_us``:
    the start of the day the row was filed under, in µs (null when missing or not a
    date; None skips the rule). ``as_of`` must be timezone-aware.
    """
    c = ops.col
    watch, duration = c("watch_time_s"), c("video_duration_s")
    ts_us = ops.micros(c("ts"))
    checks = [
        (
            Reason.NULL_ID,
            ops.is_null(c("event_id")) | ops.is_null(c("user_id")) | ops.is_null(c("video_id")),
        ),
        (Reason.NULL_TIMESTAMP, ops.is_null(c("ts"))),
        (Reason.UNKNOWN_EVENT_TYPE, ~ops.or_false(ops.isin(c("event_type"), EVENT_TYPES))),
        # A rank is never negative, whatever the event type (null: not a ranked item).
        (Reason.NEGATIVE_POSITION, c("position") < 0),
        # Every comparison below is false for NaN in Arrow but true in Spark (NaN sorts
        # above every number), so non-finite values are caught first; a row only meets
        # the later rules when its values are null or finite.
        (Reason.NON_FINITE_WATCH_TIME, ops.non_finite(watch)),
        (Reason.NEGATIVE_WATCH_TIME, watch < 0.0),
        (
            Reason.INVALID_DURATION,
            ops.non_finite(duration) | (duration <= 0.0) | (duration > limits.max_duration_s),
        ),
        (Reason.WATCH_TIME_OVER_3X_DURATION, watch > duration * MAX_WATCH_TO_DURATION),
        # The 3x rule is null without a duration, and a huge watch time beside a huge
        # duration passes it: an absolute cap bounds every play.
        (Reason.WATCH_TIME_OVER_CAP, watch > limits.max_watch_time_s),
        (Reason.TIMESTAMP_BEFORE_FLOOR, ts_us < _epoch_us(limits.min_timestamp)),
    ]
    future = ts_us >= _epoch_us(as_of)
    if partition_start_us is None:
        checks.append((Reason.FUTURE_TIMESTAMP, future))
    else:
        # A row filed under day D must have happened in [D - late_arrival_hours, D + 1 day).
        # Ingestion files a row by the day it arrived, so a ts after that day came from a
        # clock ahead of it: future as of its arrival, whatever day the data is judged on
        # (a stage's day caches, judged on an earlier date, get the same reason as a run
        # on a later one). Before the window: a late arrival past the tolerance. A
        # missing or malformed partition value is partition_mismatch whatever the ts:
        # judged against the as-of time alone, its reason would depend on the date.
        late_us = round(limits.late_arrival_hours * 3_600_000_000)
        ahead = ~ops.is_null(partition_start_us) & (
            future | (ts_us >= partition_start_us + _US_PER_DAY)
        )
        outside = ops.is_null(partition_start_us) | (ts_us < partition_start_us - late_us)
        checks += [(Reason.FUTURE_TIMESTAMP, ahead), (Reason.PARTITION_MISMATCH, outside)]
    if known_video is not None:
        checks.append((Reason.UNKNOWN_VIDEO, ~ops.or_false(known_video)))
    return checks


class _ArrowOps:
    """:class:`RuleOps` over ``pyarrow.compute`` expressions, evaluated by Acero."""

    col = staticmethod(pc.field)

    @staticmethod
    def is_null(x: pc.Expression) -> pc.Expression:
        return x.is_null()

    @staticmethod
    def non_finite(x: pc.Expression) -> pc.Expression:
        return ~pc.is_finite(x)

    @staticmethod
    def isin(x: pc.Expression, values: tuple[str, ...]) -> pc.Expression:
        return x.isin(pa.array(values))

    @staticmethod
    def or_false(x: pc.Expression) -> pc.Expression:
        return pc.coalesce(x, pa.scalar(False))

    @staticmethod
    def micros(x: pc.Expression) -> pc.Expression:
        return x.cast(pa.int64())


def _partition_start_us(partition_dt: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Each row's ``dt=YYYY-MM-DD`` partition as UTC-midnight microseconds (int64; null
    where the partition is missing or not a date)."""
    day = pc.strptime(pc.cast(partition_dt, pa.string()), "%Y-%m-%d", "us", error_is_null=True)
    return pc.cast(day, pa.int64())


def event_row_codes(
    events: pa.Table,
    known_video_ids: pa.Array | np.ndarray | None,
    as_of: dt.datetime,
    *,
    limits: ContractConfig | None = None,
    partition_dt: pa.Array | pa.ChunkedArray | None = None,
) -> np.ndarray:
    """Per row, the code of the first *row-local* rule broken (0 = none), as int8.

    Code ``i`` means ``EVENT_RULES[i - 1]``. Every rule but ``duplicate_id`` is
    row-local (:func:`event_row_checks`); duplicates need the whole table and are judged
    by the caller (here :func:`validate_events`, in Spark a window over event_id).
    ``events`` must have the contract's columns (others are ignored); ``known_video_ids``
    None skips the unknown-video rule. ``limits`` gives the watch-time cap, the timestamp
    floor and the late-arrival tolerance (None: the defaults). ``partition_dt`` is each
    row's ``dt=`` partition value (the day it was filed under); None skips the partition
    rule, for events that were not read from day partitions.
    """
    import pyarrow.dataset as ds

    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    limits = limits or ContractConfig()
    t = events.select(list(WATCH_EVENTS.names))
    start = None
    if partition_dt is not None:
        t = t.append_column("_partition_start_us", _partition_start_us(partition_dt))
        start = pc.field("_partition_start_us")
    known = (
        None
        if known_video_ids is None
        else pc.field("video_id").isin(pa.array(known_video_ids, type=pa.int64()))
    )
    checks = event_row_checks(
        _ArrowOps(), as_of, limits, known_video=known, partition_start_us=start
    )
    broken = ds.dataset(t).to_table(columns={r.value: e for r, e in checks})
    codes = np.zeros(t.num_rows, dtype=np.int8)
    for reason, _ in checks:
        _mark(codes, broken[reason.value], EVENT_RULES.index(reason) + 1)
    return codes


def unknown_user_mask(events: pa.Table, known_user_ids: pa.Array | np.ndarray) -> np.ndarray:
    """True for each event whose (non-null) user_id is not in ``known_user_ids``.

    Not a quarantine rule: such events are kept and counted as ``unknown_user``
    (docs/data-contract.md says why); readers add a minimal user row for each.
    """
    known = pc.is_in(events["user_id"], value_set=pa.array(known_user_ids, type=pa.int64()))
    unknown = pc.and_(pc.invert(known), pc.is_valid(events["user_id"]))
    return pc.fill_null(unknown, False).to_numpy(zero_copy_only=False)


def with_minimal_users(users: pa.Table, event_user_ids: pa.Array | np.ndarray) -> pa.Table:
    """``users`` plus one row per event user missing from it: the user_id, every other
    column null (nothing is invented: the signup time and demographics are unknown).

    ``users`` must be valid (unique, non-null ids); the added rows follow it, by id.
    """
    ids = np.unique(np.asarray(event_user_ids, dtype=np.int64))
    known = users["user_id"].to_numpy() if users.num_rows else np.zeros(0, np.int64)
    missing = ids[~np.isin(ids, known)]
    if len(missing) == 0:
        return users
    cols = [
        pa.array(missing, type=f.type) if f.name == "user_id" else pa.nulls(len(missing), f.type)
        for f in users.schema
    ]
    return pa.concat_tables([users, pa.Table.from_arrays(cols, schema=users.schema)])


def reason_labels(codes: np.ndarray) -> pa.Array:
    """The reason strings for event rule codes (null where the code is 0)."""
    labels = np.array([None] + [r.value for r in EVENT_RULES], dtype=object)[codes]
    return pa.array(labels, type=pa.string())


def validate_events(
    events: pa.Table,
    known_video_ids: pa.Array | np.ndarray | None,
    as_of: dt.datetime,
    *,
    limits: ContractConfig | None = None,
    partition_dt: pa.Array | pa.ChunkedArray | None = None,
    known_user_ids: pa.Array | np.ndarray | None = None,
) -> ValidationResult:
    """Validate ``watch_events`` rows against the contract.

    ``known_video_ids``: ids in the videos table (None skips the unknown-video rule,
    for readers that have no catalogue). ``as_of``: the exclusive end of the data
    window; events at or after it are in the future. ``limits`` and ``partition_dt``:
    see :func:`event_row_codes`. ``known_user_ids``: ids in the users table; valid
    events of other users are kept and counted in ``accepted["unknown_user"]`` (None
    skips the count). Duplicate event ids keep the earliest row (by ts, then position)
    and quarantine the rest.
    """
    t = conform(events, "watch_events")
    codes = event_row_codes(t, known_video_ids, as_of, limits=limits, partition_dt=partition_dt)
    # Duplicates are judged among rows that passed every other rule, so a copy of a
    # bad row does not push its good twin into quarantine.
    ok = np.flatnonzero(codes == 0)
    ts = t["ts"].take(pa.array(ok)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    dup = _duplicates_after_first(t["event_id"].take(pa.array(ok)), ts)
    codes[ok[dup]] = EVENT_RULES.index(Reason.DUPLICATE_ID) + 1
    res = _split(t, "watch_events", codes, EVENT_RULES)
    if known_user_ids is not None:
        res.accepted[UNKNOWN_USER] = int(unknown_user_mask(res.valid, known_user_ids).sum())
    return res


# Per dimension table, its rules in order. A video may have no channel (sources
# without channels), but a channel_id it does have must be in ``channels``.
DIMENSION_RULES: dict[str, tuple[Reason, ...]] = {
    "videos": (Reason.NULL_ID, Reason.UNKNOWN_CHANNEL, Reason.DUPLICATE_ID),
    "channels": (Reason.NULL_ID, Reason.DUPLICATE_ID),
    "users": (Reason.NULL_ID, Reason.DUPLICATE_ID),
}


def validate_dimension(
    table: pa.Table, name: str, *, known_channel_ids: pa.Array | np.ndarray | None = None
) -> ValidationResult:
    """Validate a dimension table (videos, channels, users): ids present and unique;
    for videos, a non-null channel_id present in ``known_channel_ids`` (the valid
    channels; None skips that rule).

    Duplicates are judged among rows that passed the other rules: the first such row
    of a repeated id is kept, later ones are quarantined.
    """
    if name not in DIMENSION_RULES:
        raise ValueError(f"{name!r} is not a dimension table; known: videos, channels, users")
    rules = DIMENSION_RULES[name]
    code = {r: i + 1 for i, r in enumerate(rules)}
    t = conform(table, name)
    key = PRIMARY_KEYS[name]
    codes = np.zeros(t.num_rows, dtype=np.int8)
    _mark(codes, pc.is_null(t[key]), code[Reason.NULL_ID])
    if name == "videos" and known_channel_ids is not None:
        known = pc.is_in(t["channel_id"], value_set=pa.array(known_channel_ids, type=pa.int64()))
        # is_in says false (not null) for a null channel_id; "no channel" is allowed.
        unknown = pc.and_(pc.is_valid(t["channel_id"]), pc.invert(known))
        _mark(codes, unknown, code[Reason.UNKNOWN_CHANNEL])
    ok = np.flatnonzero(codes == 0)
    dup = _duplicates_after_first(t[key].take(pa.array(ok)), None)
    codes[ok[dup]] = code[Reason.DUPLICATE_ID]
    return _split(t, name, codes, rules)


def empty_table(name: str) -> pa.Table:
    """A zero-row table with the contract schema of ``name``."""
    return SCHEMAS[name].empty_table()
