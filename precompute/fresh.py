"""The 15-minute fresh lists: trending and popular from the newest events, own pointer.

``refresh_trending(cfg, logical_time=t)`` is what the ``videorec_trending`` DAG runs
every 15 minutes. It writes a generation of the ``trending`` kind
(``RedisKeys.fresh``: global and per-category trending, popular per country and per
language) and publishes it with the same compare-and-swap as the 4-hourly generation,
on a pointer of its own, so neither run waits for or disturbs the other.

**Source: the event log's newest day partitions, read with Arrow, without Spark.**
Trending needs the last 24 hours; the lists need the whole catalogue's counts, not a
per-user state. The partitions covering ``[t - fresh_lookback_h, t)`` are at most
three files a day on the local profile and read in well under a second; a Spark job
would spend longer starting than counting. The events go through the data contract's
validator, so an invalid event counts nowhere; they are not quarantined here (96 runs
a day would copy the same rows 96 times): the daily feature stage quarantines the same
partitions with their reasons. When the stream processor lands (Redis Streams,
``streaming/``), it keeps these counts within seconds and this job becomes its
fallback; reading hours of raw events every 15 minutes stops scaling at around 10^8
events a day, the point to switch.

Events after ``t`` are never read: a run for logical time ``t`` is a function of the
events before it, the data set and the config.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec.config import Config, config_digest, source_digest
from videorec.contract import PLAYBACK_EVENT_TYPES
from videorec.precompute import inputs, lists
from videorec.precompute.publish import (
    GenerationWriter,
    PrecomputeInputError,
    begin,
    pointer_or_skip,
    publish_generation,
    write_meta,
)
from videorec.redis_keys import STATUS_COMPLETE, RedisKeys

FRESH_FIELDS = (
    "trending_half_life_h", "trending_min_viewers", "trending_top_n", "popular_half_life_h",
    "popular_top_n", "fresh_lookback_h",
)  # fmt: skip


def fresh_generation_id(
    cfg: Config, data: str, t: dt.datetime, files: list[dict[str, Any]] | None = None
) -> str:
    """``<yyyymmddThhmm>-<digest>`` of the logical time, the data set, the event files
    read (``fresh_files``: the drain appends events before ``t`` after ``t``, so a re-run
    may read more; it then makes another generation instead of rewriting the live one),
    the list fields of the config, the contract and the code."""
    shaping = cfg.precompute.model_dump(mode="json", include=set(FRESH_FIELDS))
    digest = config_digest({
        "t": t.isoformat(), "data": data, "files": files, "lists": shaping,
        "contract": cfg.contract.model_dump(mode="json"),
        "positive_min_completion": cfg.features.positive_min_completion,
        "code": source_digest("videorec.precompute"),
    })  # fmt: skip
    return f"{t:%Y%m%dT%H%M}-{digest[:10]}"


def fresh_files(cfg: Config, data: str, t: dt.datetime) -> list[dict[str, Any]]:
    """The event files whose partitions cover ``[t - fresh_lookback_h, t]`` (path, size):
    what the lists of ``t`` read, listed once."""
    from videorec.dataset import DatasetError, event_files

    start = t - dt.timedelta(hours=cfg.precompute.fresh_lookback_h)
    try:
        return event_files(data, start.date(), t.date() + dt.timedelta(days=1))
    except DatasetError as err:
        raise PrecomputeInputError(f"fresh lists: {err}") from None


def recent_events(
    cfg: Config, data: str, t: dt.datetime, files: list[dict[str, Any]] | None = None
) -> tuple[pa.Table, pa.Table, pa.Table, dict[str, Any]]:
    """(valid events in [t - lookback, t), users, videos, the validation counts), read
    from ``files`` (``fresh_files``; None: the partitions as they are now)."""
    from videorec.dataset import DatasetError, as_of, load_validated, read_manifest

    start = t - dt.timedelta(hours=cfg.precompute.fresh_lookback_h)
    try:
        # A log the event drain appends to has grown past its manifest's as_of: events
        # before t are not in the future, whatever the manifest says.
        judged_at = max(t, as_of(read_manifest(data)))
        vd = load_validated(
            data, max_invalid_share=1.0, start=start.date(), end=t.date() + dt.timedelta(days=1),
            tables=("watch_events", "users"), check=False, limits=cfg.contract, as_of=judged_at,
            event_files=None if files is None else [f["path"] for f in files],
        )  # fmt: skip
    except DatasetError as err:
        raise PrecomputeInputError(f"fresh lists: {err}") from None
    ev = vd.tables["watch_events"]
    ts = ev["ts"]
    keep = pc.and_(
        pc.greater_equal(ts, pa.scalar(start, ts.type)), pc.less(ts, pa.scalar(t, ts.type))
    )
    counts = {n: r.summary() for n, r in vd.results.items() if n == "watch_events"}
    return ev.filter(keep), vd.tables["users"], vd.tables["videos"], counts


def video_counts(plays: pa.Table, t: dt.datetime) -> pa.Table:
    """video_id, views_1h, views_24h, viewers_24h over the plays of the 24 h before ``t``
    (the feature stage's trending inputs, computed the same way)."""
    ts = plays["ts"]
    day = plays.filter(pc.greater_equal(ts, pa.scalar(t - dt.timedelta(hours=24), ts.type)))
    hour = pc.greater_equal(day["ts"], pa.scalar(t - dt.timedelta(hours=1), ts.type))
    day = day.append_column("in_1h", pc.cast(hour, pa.int64()))
    g = day.group_by("video_id").aggregate(
        [("in_1h", "sum"), ("video_id", "count"), ("user_id", "count_distinct")]
    )
    return pa.table({
        "video_id": g["video_id"], "views_1h": g["in_1h_sum"], "views_24h": g["video_id_count"],
        "viewers_24h": g["user_id_count_distinct"],
    })  # fmt: skip


def positive_plays(events: pa.Table, min_completion: float) -> inputs.Plays:
    """Plays that count for popularity: as the feature stage's positives (completion at
    least ``min_completion``, or a watch without a duration, or a like of the video by
    the same user within the events)."""
    is_play = pc.is_in(events["event_type"], value_set=pa.array(PLAYBACK_EVENT_TYPES))
    plays = events.filter(is_play)
    completion = pc.min_element_wise(
        pc.divide(plays["watch_time_s"], plays["video_duration_s"]), pa.scalar(1.0)
    )
    completion_ok = pc.fill_null(pc.greater_equal(completion, min_completion), False)
    watch_no_duration = pc.and_(pc.is_null(completion), pc.equal(plays["event_type"], "watch"))
    likes = events.filter(pc.equal(events["event_type"], "like"))
    like_keys = _pair_keys(likes)
    liked = np.isin(_pair_keys(plays), like_keys)
    positive = (
        np.asarray(completion_ok) | np.asarray(pc.fill_null(watch_no_duration, False)) | liked
    )
    return inputs.Plays(
        user_id=inputs.ids(plays["user_id"]), video_id=inputs.ids(plays["video_id"]),
        ts_s=inputs.epoch_s(plays["ts"]), positive=positive.astype(bool),
    )  # fmt: skip


def _require_data_set(data: str) -> None:
    """PrecomputeInputError naming ``data`` when it is not a readable data set."""
    from videorec.dataset import DatasetError, read_manifest

    try:
        read_manifest(data)
    except DatasetError as err:
        raise PrecomputeInputError(f"fresh lists: {err}") from None


def _pair_keys(t: pa.Table) -> np.ndarray:
    """(n,) one string per (user, video) row, for set membership."""
    u = inputs.ids(t["user_id"]).astype(str)
    v = inputs.ids(t["video_id"]).astype(str)
    return np.char.add(np.char.add(u, ":"), v)


def refresh_trending(
    cfg: Config,
    *,
    logical_time: dt.datetime,
    data: str | None = None,
    redis: Any = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write and publish the fresh lists for ``logical_time``; returns {generation,
    published, skipped, reason, previous, meta}. Raises PrecomputeInputError on a
    missing data set and PrecomputeError when Redis fails (nothing published)."""
    from videorec.precompute.run import connect, utc

    say = log or (lambda _m: None)
    t = utc(logical_time)
    p = cfg.precompute
    data = data or cfg.resolve_location(cfg.data.dir)
    _require_data_set(data)
    keys = RedisKeys.fresh(p.key_prefix)
    files = fresh_files(cfg, data, t)
    gen = fresh_generation_id(cfg, data, t, files)
    client, how = (redis, "the client given") if redis is not None else connect(cfg)
    current, skipped = pointer_or_skip(client, keys, gen, t, how)
    if skipped is not None:
        return skipped
    result = {"generation": gen, "published": False, "skipped": True, "previous": current}
    t0 = time.perf_counter()
    events, users, videos, checked = recent_events(cfg, data, t, files)
    plays = events.filter(pc.is_in(events["event_type"], value_set=pa.array(PLAYBACK_EVENT_TYPES)))
    trending = lists.trending_from_counts(video_counts(plays, t), videos, p)
    positive = positive_plays(events, cfg.features.positive_min_completion)
    at = t.timestamp()
    by = {c: lists.popular_from_plays(users, c, positive, at, p) for c in ("country", "language")}
    meta: dict[str, Any] = {
        "generation": gen, "kind": "trending", "built_at": t.isoformat(), "data": data,
        "events_read": events.num_rows, "validation": checked, "config_digest": cfg.digest(),
        "lookback_h": p.fresh_lookback_h, "previous_generation": current,
    }  # fmt: skip
    begin(client, keys, gen, meta, p.fresh_ttl_s)
    w = GenerationWriter(client, keys, gen, ttl_s=p.fresh_ttl_s, batch=p.pipeline_commands)
    w.put_ranked(w.family("trending", lambda c: keys.trending(gen, c)), trending)
    w.put_ranked(w.family("popular_country", lambda c: keys.popular_country(gen, c)), by["country"])
    w.put_ranked(
        w.family("popular_language", lambda c: keys.popular_language(gen, c)), by["language"]
    )
    meta["counts"] = w.verify()
    meta["categories"] = sorted(c for c, (ids, _) in trending.items() if c and len(ids))
    for kind, name in (("country", "countries"), ("language", "languages")):
        meta[name] = sorted(c for c, (ids, _) in by[kind].items() if len(ids))
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["status"] = STATUS_COMPLETE
    write_meta(client, keys, gen, meta, p.fresh_ttl_s)
    say(f"fresh lists {gen}: {events.num_rows:,} events, {len(trending[None][0])} trending")
    return {**result, **publish_generation(client, keys, gen, current, t), "meta": meta}
