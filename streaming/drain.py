"""The event-log drain: the serving tier's Redis Stream into new files of the event log.

The serving shim appends every impression, click and feedback event to
``LiveKeys(root).events_stream`` (``{"event": <JSON>}``, ``redis_keys.encode_stream_event``).
``drain_events`` reads it with the consumer group ``EVENTS_GROUP`` and, batch by batch
(``batch_size`` entries, in stream order):

1. decodes each entry; one that is not JSON, not an object or has no ``event`` field
   (``undecodable_entry``), or has a field of the wrong type or unknown to the contract
   (``malformed_entry``), is quarantined raw with its stream id and the detail;
2. files each event under the UTC day it *arrived* (the stream id's time: the contract
   files events by arrival; the next day when the event's own time is already past
   midnight, within the clock skew) and validates each day's rows with the contract's
   validator:
   ``partition_dt`` that day, ``as_of`` the day's last arrival plus ``max_clock_skew_s``
   (the serving hosts' clocks are not Redis's). The unknown-video rule is left to the
   daily reader, whose catalogue is the day's: a video published after the data set's
   videos table was written is not an error here;
3. quarantines as ``duplicate_id`` the rows whose event_id a drain file of the same
   partition already holds (a feedback retried with its idempotency key, a redelivery);
4. writes the quarantine, then one file per day partition,
   ``watch_events/dt=<day>/drain-<first id>-<last id>.parquet``, each atomically
   (``dataset.append_events``);
5. only then acknowledges the batch's entries (XACK) and deletes them (XDEL), in one
   MULTI.

**Crash semantics.** Nothing is acknowledged before its file is committed, so a crash
loses nothing: the entries stay in the group's pending list. The next run first claims
pending entries of consumers idle for ``claim_min_idle_ms`` (a drain that died under
another consumer name), then re-reads its own pending entries from id 0, in the same
batches, so a batch that was written but not acknowledged is written again under the
*same* file name, replacing the file with the same rows: no duplicate. If the batching
differs on the re-run (another ``batch_size``), step 3 sends the copies to the
quarantine as ``duplicate_id`` instead of the log: still one copy in the log, and
nothing dropped silently. Entries the stream trimmed (serving's ``MAXLEN ~``) before
they were drained are counted as ``lost_trimmed``; the group's ``lag`` in the result
says when the drain falls behind.

**Two writers.** One drain at a time holds the stream: a run takes a lease
(``LiveKeys.drain_lease``, a random token set with NX and an expiry of
``streaming.drain_lease_s``, renewed by a thread while the process lives) before it
reads, checks it is still its own before each batch's files and before their
acknowledgement, and releases it at the end; a run that finds it held
raises :class:`DrainBusy` and touches nothing (an Airflow retry beside a zombie
attempt, a hand run beside the DAG's), and one that finds its lease gone (paused past
it) raises :class:`LeaseLost` before writing or acknowledging more. Without it, two
runs re-read the same pending entries, cut them into different batches, and each
wrote its own file of them. The event ids already in a partition are re-listed before
each batch (the files added since are read), not once a run.

A run stops at the last entry that was in the stream when it started; later entries
are the next run's. The logical time is recorded in the result, never used to compute.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from videorec.config import Config
from videorec.contract import REASON_COLUMN, SCHEMAS, TS, Reason, validate_events
from videorec.dataset import (
    append_events,
    filesystem,
    read_manifest,
    write_parquet_atomic,
)
from videorec.redis_keys import (
    EVENTS_GROUP,
    LiveKeys,
    RedisLease,
    decode_stream_event,
)

DEFAULT_CONSUMER = "drain"
FILE_PREFIX = "drain-"
# Tests only: "after_write" makes the process die after a batch's files are written and
# before its entries are acknowledged (the crash the design must survive).
CRASH_ENV = "VIDEOREC_TEST_DRAIN_CRASH"
# The raw quarantine of entries that are not rows (step 1).
RAW_SCHEMA = pa.schema(
    [
        ("stream_id", pa.string()),
        ("arrived_at", TS),
        ("entry", pa.string()),  # the entry's fields as JSON (bytes decoded with replacement)
        (REASON_COLUMN, pa.string()),
        ("detail", pa.string()),
    ]
)
_FIELDS: dict[str, pa.DataType] = {f.name: f.type for f in SCHEMAS["watch_events"]}


class DrainBusy(RuntimeError):
    """Another drain holds the stream's lease: this run read and wrote nothing."""


class LeaseLost(RuntimeError):
    """This run's lease lapsed (it was paused past ``drain_lease_s``) or was taken: it
    stops before writing or acknowledging more; its unacknowledged entries stay pending."""


_INT_RANGE = {pa.int32(): 2**31, pa.int64(): 2**63}


@dataclass
class DrainCounts:
    """What a run did, summed over its batches."""

    read: int = 0
    reclaimed: int = 0
    redelivered: int = 0
    written: dict[str, int] = field(default_factory=dict)  # day partition -> rows
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> rows or entries
    acked: int = 0
    deleted: int = 0
    lost_trimmed: int = 0
    batches: int = 0
    files: list[str] = field(default_factory=list)  # watch_events/dt=.../drain-....parquet


def drain_events(
    cfg: Config,
    data_dir: str,
    logical_time: dt.datetime,
    *,
    client: Any = None,
    root: str | None = None,
    consumer: str = DEFAULT_CONSUMER,
    batch_size: int | None = None,
    claim_min_idle_ms: int | None = None,
    max_clock_skew_s: float | None = None,
    delete_acked: bool | None = None,
    quarantine_dir: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Drain the event stream into the event log of the data set ``data_dir``.

    ``client``: a redis-py client (default: the config's server, ``resolve_redis``);
    ``root``: the key root (default ``precompute.key_prefix``); ``quarantine_dir``:
    default ``<data_dir>/_quarantine/drain``. The knobs default to the config's
    ``streaming`` section (``drain_batch_size``, ``drain_claim_min_idle_ms``,
    ``drain_max_clock_skew_s``, ``drain_delete_acked``). Returns the
    counts (``DrainCounts`` fields) with the stream, group, consumer, logical time, and
    the group's ``pending`` and ``lag`` after the run.
    """
    if not isinstance(logical_time, dt.datetime):  # before anything is read or acknowledged
        raise ValueError(f"logical_time must be a datetime, got {logical_time!r}")
    read_manifest(data_dir)  # DatasetError (bad input) before anything is read
    batch_size = int(_setting(cfg, "drain_batch_size", batch_size))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    idle = int(_setting(cfg, "drain_claim_min_idle_ms", claim_min_idle_ms))
    skew = float(_setting(cfg, "drain_max_clock_skew_s", max_clock_skew_s))
    delete_acked = bool(_setting(cfg, "drain_delete_acked", delete_acked))
    r = client if client is not None else _connect(cfg)
    keys = LiveKeys(root or cfg.precompute.key_prefix)
    stream = keys.events_stream
    lease = _Lease(r, keys.drain_lease, int(cfg.streaming.drain_lease_s * 1000))
    qdir = quarantine_dir or f"{data_dir}/_quarantine/drain"
    batch = _Batcher(cfg, data_dir, qdir, skew, log or (lambda _: None))
    counts = DrainCounts()
    with lease:
        _ensure_group(r, stream)
        stop_at = _last_id(r, stream)
        counts.reclaimed = _claim_idle(r, stream, consumer, idle, batch_size, counts)
        # Our own pending entries first (a batch a crash left unacknowledged), then new.
        for start in ("0", ">"):
            while entries := _read(r, stream, consumer, start, batch_size):
                if start == "0":
                    counts.redelivered += len(entries)
                lease.check()
                batch.process(entries, counts)
                lease.check()
                _ack(r, stream, [sid for sid, _ in entries], delete_acked, counts)
                if start == ">" and _id_key(entries[-1][0]) >= _id_key(stop_at):
                    break
    group = _group_info(r, stream)
    return {
        "stream": stream,
        "group": EVENTS_GROUP,
        "consumer": consumer,
        "logical_time": logical_time.isoformat(),
        **asdict(counts),
        "written": dict(sorted(counts.written.items())),
        "quarantined": dict(sorted(counts.quarantined.items())),
        "pending": group.get("pending", 0),
        "lag": group.get("lag"),
    }


def _setting(cfg: Config, name: str, given: Any) -> Any:
    """``given`` if set, else the config's ``streaming.<name>``."""
    return given if given is not None else getattr(cfg.streaming, name)


def _connect(cfg: Config) -> Any:
    import redis

    from videorec.services import resolve_redis

    return redis.Redis.from_url(resolve_redis(cfg).url)


# ---- the stream


class _Lease(RedisLease):
    """The stream's drain lease (module doc, "Two writers"); a context manager.
    :meth:`check` before the caller writes or acknowledges: still this run's."""

    def __enter__(self) -> _Lease:
        if not self.acquire():
            raise DrainBusy(
                f"another drain holds the event stream ({self.key}, {self.left_s():.0f} s "
                "left unless it renews): nothing read; the next run drains what is pending"
            )
        return self

    def check(self) -> None:
        if not self.renew():
            raise LeaseLost(
                f"this drain's lease {self.key} lapsed or was taken (paused past "
                f"{self.ttl_ms / 1000:g} s?): stopped; its unacknowledged entries stay pending"
            )

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _id_key(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _ensure_group(r: Any, stream: str) -> None:
    """The consumer group, created at id 0 (the whole stream) if missing."""
    import redis

    try:
        r.xgroup_create(stream, EVENTS_GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def _last_id(r: Any, stream: str) -> str:
    """The newest entry's id now ("0-0" when the stream is empty): where this run stops."""
    newest = r.xrevrange(stream, count=1)
    return _s(newest[0][0]) if newest else "0-0"


def _claim_idle(
    r: Any, stream: str, consumer: str, idle_ms: int, count: int, counts: DrainCounts
) -> int:
    """Move entries pending for ``idle_ms`` or longer (any consumer's) to ``consumer``;
    entries the stream no longer holds leave the pending list and are counted lost."""
    claimed, cursor = 0, "0-0"
    while True:
        # [next cursor, claimed entries, ids the stream no longer holds] (Redis 7)
        resp = r.xautoclaim(stream, EVENTS_GROUP, consumer, idle_ms, cursor, count=count)
        cursor, entries = _s(resp[0]), resp[1]
        claimed += len(entries)
        counts.lost_trimmed += len(resp[2]) if len(resp) > 2 else 0
        if cursor == "0-0":
            return claimed


def _read(r: Any, stream: str, consumer: str, start: str, count: int) -> list[tuple[str, dict]]:
    """Up to ``count`` entries: this consumer's pending ones after ``start`` "0", or new
    ones (">"). A pending entry the stream trimmed comes back with no fields."""
    resp = r.xreadgroup(EVENTS_GROUP, consumer, {stream: start}, count=count)
    if not resp:
        return []
    entries = resp[0][1] if isinstance(resp, list) else next(iter(resp.values()))[0]
    return [(_s(sid), fields or {}) for sid, fields in entries if sid is not None]


def _ack(r: Any, stream: str, ids: list[str], delete: bool, counts: DrainCounts) -> None:
    """Acknowledge (and delete) ``ids`` in one transaction: after their files exist."""
    pipe = r.pipeline(transaction=True)
    pipe.xack(stream, EVENTS_GROUP, *ids)
    if delete:
        pipe.xdel(stream, *ids)
    done = pipe.execute()
    counts.acked += int(done[0])
    counts.deleted += int(done[1]) if delete else 0


def _group_info(r: Any, stream: str) -> dict[str, Any]:
    for g in r.xinfo_groups(stream):
        if _s(g["name"]) == EVENTS_GROUP:
            return {k: v for k, v in g.items() if k in ("pending", "lag")}
    return {}


# ---- one batch


class _Batcher:
    """Turns batches of entries into committed files (steps 1-4 of the module doc)."""

    def __init__(
        self, cfg: Config, data: str, qdir: str, skew_s: float, log: Callable[[str], None]
    ) -> None:
        self.cfg, self.data, self.skew_s, self.log = cfg, data, skew_s, log
        self.fs, self.base = filesystem(data)
        self.qfs, self.qbase = filesystem(qdir)
        self.seen: dict[str, dict[str, pa.Array]] = {}  # day -> drain file -> its event ids

    def process(self, entries: list[tuple[str, dict]], counts: DrainCounts) -> None:
        """Write ``entries`` (decoded, validated, deduplicated) and their quarantine."""
        name = f"{FILE_PREFIX}{entries[0][0]}-{entries[-1][0]}.parquet"
        live = [(sid, f) for sid, f in entries if f]
        counts.lost_trimmed += len(entries) - len(live)
        counts.read += len(live)
        counts.batches += 1
        ids, events, raw = _decode(live)
        ids, table = _rows(ids, events, raw, dict(live))
        days = [
            _partition_day(_arrival(sid), ts, self.skew_s).isoformat()
            for sid, ts in zip(ids, table["ts"].to_pylist(), strict=True)
        ]
        outputs: dict[str, tuple[pa.Table, pa.Table]] = {}
        for day in sorted(set(days)):
            idx = [i for i, d in enumerate(days) if d == day]
            last = max(_arrival(ids[i]) for i in idx)
            outputs[day] = self._validate(day, table.take(pa.array(idx, pa.int64())), last, name)
        # The quarantine first: a crash after it re-writes it with the same content.
        if raw:
            rows = pa.Table.from_pylist(raw, schema=RAW_SCHEMA)
            write_parquet_atomic(self.qfs, f"{self.qbase}/stream_entries/{name}", rows)
            _add(counts.quarantined, rows[REASON_COLUMN].to_pylist())
        for day, (_, bad) in outputs.items():
            if bad.num_rows:
                path = f"{self.qbase}/watch_events/dt={day}/{name}"
                write_parquet_atomic(self.qfs, path, bad)
                _add(counts.quarantined, bad[REASON_COLUMN].to_pylist())
        for day, (good, _) in outputs.items():
            if good.num_rows:
                out = append_events(self.data, dt.date.fromisoformat(day), good, name)
                counts.files.append(f"watch_events/{out['path']}")
                counts.written[day] = counts.written.get(day, 0) + good.num_rows
        self.log(
            f"drain {name}: {len(entries)} entries, {sum(counts.written.values())} rows so far"
        )
        if os.environ.get(CRASH_ENV) == "after_write":
            os._exit(75)  # tests: die like a killed worker, with the batch unacknowledged

    def _validate(
        self, day: str, t: pa.Table, last_arrival: dt.datetime, name: str
    ) -> tuple[pa.Table, pa.Table]:
        """(rows to write, rows to quarantine with their reason) of one day partition."""
        as_of = last_arrival + dt.timedelta(seconds=self.skew_s)
        res = validate_events(
            t, None, as_of, limits=self.cfg.contract, partition_dt=pa.array([day] * t.num_rows)
        )
        held = self._held(day, name)
        dup = pc.is_in(res.valid["event_id"], value_set=held)
        dups = res.valid.filter(dup)
        dups = dups.append_column(
            REASON_COLUMN, pa.array([Reason.DUPLICATE_ID.value] * dups.num_rows, pa.string())
        )
        return res.valid.filter(pc.invert(dup)), pa.concat_tables([res.quarantined, dups])

    def _held(self, day: str, name: str) -> pa.Array:
        """Event ids the partition's drain files hold, but the file ``name`` (which this
        batch replaces when it is a re-run): the folder is listed for every batch, and
        the files not read before (this run's, or any other writer's) are read."""
        folder = f"{self.base}/watch_events/dt={day}"
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        files = self.seen.setdefault(day, {})
        for info in infos:
            if info.base_name.startswith(FILE_PREFIX) and info.base_name not in files:
                col = pq.read_table(info.path, columns=["event_id"], filesystem=self.fs)
                files[info.base_name] = col["event_id"].combine_chunks().cast(pa.string())
        held = [ids for f, ids in files.items() if f != name]
        return pa.concat_arrays([pa.array([], pa.string()), *held])


def _add(into: dict[str, int], labels: list[str]) -> None:
    for label in labels:
        into[label] = into.get(label, 0) + 1


def _partition_day(arrival: dt.datetime, ts: dt.datetime | None, skew_s: float) -> dt.date:
    """The day partition an event is filed under: the day it arrived (Redis's clock),
    or the next one when its own ``ts`` is already there and within ``skew_s`` of the
    arrival: a serving host's clock a little ahead, seconds before midnight. Filed by
    arrival alone, its ``ts`` would be after its partition's day and the row
    quarantined as ``future_timestamp``."""
    day = arrival.date()
    if ts is not None and ts.date() > day and ts <= arrival + dt.timedelta(seconds=skew_s):
        return ts.date()
    return day


def _arrival(sid: str) -> dt.datetime:
    """When the entry reached Redis: the stream id's milliseconds."""
    return dt.datetime.fromtimestamp(_id_key(sid)[0] / 1000, dt.UTC)


# ---- decoding


def _decode(entries: list[tuple[str, dict]]) -> tuple[list[str], list[dict], list[dict]]:
    """(stream ids, events, raw quarantine rows): each entry is an event or a raw row.
    No entry may stop the batch (every later run would fail on it, and the entries
    behind it would wait until the stream trims them): see also :func:`_rows`."""
    ids, events, raw = [], [], []
    for sid, fields in entries:
        try:
            event = decode_stream_event(fields)
            problem = _field_problem(event)
            reason = Reason.MALFORMED_ENTRY
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; nesting too deep for
        # the parser is a RecursionError.
        except (ValueError, RecursionError) as err:
            problem, reason = f"{type(err).__name__}: {err}"[:500], Reason.UNDECODABLE_ENTRY
        if problem is None:
            ids.append(sid)
            events.append(event)
        else:
            raw.append(_raw_row(sid, fields, reason, problem))
    return ids, events, raw


def _field_problem(event: dict[str, Any]) -> str | None:
    """What is wrong with the event's fields (None: nothing). Parses ``ts`` in place."""
    unknown = sorted(set(event) - set(_FIELDS))
    if unknown:
        return f"fields not in the contract: {unknown}"
    for name, typ in _FIELDS.items():
        v = event.get(name)
        if v is None:
            continue
        if typ == TS:
            if not isinstance(v, str):
                return f"{name}: expected an ISO 8601 string, got {v!r}"
            try:
                t = dt.datetime.fromisoformat(v)
            except ValueError:
                return f"{name}: not an ISO 8601 time: {v!r}"
            if t.tzinfo is None:
                return f"{name}: {v!r} has no time zone"
            try:  # year 1 at +05:00 is before any UTC time
                event[name] = t.astimezone(dt.UTC)
            except OverflowError:
                return f"{name}: {v!r} is outside the representable UTC range"
            continue
        elif pa.types.is_integer(typ):
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) >= _INT_RANGE[typ]:
                return f"{name}: expected an integer ({typ}), got {v!r}"
        elif pa.types.is_floating(typ):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return f"{name}: expected a number, got {v!r}"
            try:  # JSON integers past 2**53 are exact in Python, not in a double
                event[name] = float(v)
            except OverflowError:
                return f"{name}: {str(v)[:40]}... is out of a double's range"
        elif not isinstance(v, str):
            return f"{name}: expected a string, got {v!r}"
        elif not _utf8(v):
            return f"{name}: not valid Unicode text (a lone surrogate): {v!r}"
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _rows(
    ids: list[str], events: list[dict], raw: list[dict], fields: dict[str, dict]
) -> tuple[list[str], pa.Table]:
    """(ids, contract table) of the decoded ``events``; if Arrow refuses the batch (an
    entry the field checks let through), each event is tried alone and those it refuses
    join ``raw`` as ``malformed_entry``."""
    try:
        return ids, _to_table(events)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    kept: list[tuple[str, dict]] = []
    for sid, event in zip(ids, events, strict=True):
        try:
            _to_table([event])
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
            detail = f"not a contract row: {err}"[:500]
            raw.append(_raw_row(sid, fields[sid], Reason.MALFORMED_ENTRY, detail))
        else:
            kept.append((sid, event))
    return [sid for sid, _ in kept], _to_table([e for _, e in kept])


def _to_table(events: list[dict[str, Any]]) -> pa.Table:
    """The events as a contract table (absent keys are nulls)."""
    return pa.table(
        {name: pa.array([e.get(name) for e in events], type=typ) for name, typ in _FIELDS.items()}
    )


def _raw_row(sid: str, fields: dict, reason: Reason, detail: str) -> dict[str, Any]:
    """The quarantine row of an entry: its bytes kept as text, whatever they hold."""

    def text(x: Any) -> str:
        s = x.decode(errors="replace") if isinstance(x, bytes) else str(x)
        return s.encode(errors="replace").decode()  # lone surrogates become "?"

    entry = {text(k): text(v) for k, v in fields.items()}
    return {
        "stream_id": sid,
        "arrived_at": _arrival(sid),
        "entry": json.dumps(entry, sort_keys=True),
        REASON_COLUMN: reason.value,
        "detail": detail.encode(errors="replace").decode(),
    }
