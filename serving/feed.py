"""The recommendation responses: home feed, up-next, similar, and what they log.

Each request reads what it needs from Redis in one pipelined round trip (the pointer
and the video catalogue are in memory, :mod:`videorec.serving.live`), computes its page
with :mod:`videorec.serving.rank`, then writes its impressions to the event stream (and
a home feed's pools, for its next pages) in a second pipeline before answering.

Failure paths (each counted in ``videorec_fallbacks_total``): Redis failing or slower
than ``serving.redis_timeout_ms`` → the in-process lists snapshot (``source``
``fallback_snapshot``); re-ranking raising or overrunning → counted by the circuit
breaker, which after ``breaker_failures`` in a row serves retrieval order for
``breaker_cooldown_s``; the ranker (:mod:`videorec.serving.ranker`) raising or
overrunning ``rerank_timeout_ms`` → the documented rule ranks the pool (``ranker_error``,
``ranker_slow``), counted by the ranker's own breaker, which after ``breaker_failures``
in a row leaves the ranker uncalled for ``breaker_cooldown_s`` (``ranker_breaker_open``);
a video without a precomputed similar list (the index missed it or failed) → the
catalogue's embeddings, else trending in its category.

New videos (the hourly new-videos generation, in the catalogue as ``is_new`` rows) are
reached without the index: a home request scores them, with the videos younger than
``serving.fresh_age_h``, by inner product with the user's query embedding (the
``embedding`` of the user's feature hash) and merges the best ``serving.fresh_candidates``
into the personal pool and the Thompson-sampling slots; a new video's similar list is
read from its own generation, and a main video's precomputed list is merged with the
new videos' inner products with it.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videorec.config import Config
from videorec.redis_keys import (
    STATE_BLOCKED_CHANNEL,
    STATE_CHANNEL_STRIKES,
    STATE_DISLIKED,
    STATE_NOT_INTERESTED,
    STATE_WATCHED,
    STATS_IMPRESSIONS,
    USER_FEATURES,
    LiveKeys,
    RedisKeys,
    decode_features,
    decode_scored,
    encode_scored,
)
from videorec.serving import metrics
from videorec.serving.live import Catalogue, ExploreStats, LiveState
from videorec.serving.rank import (
    SOURCES,
    SRC,
    Page,
    Pool,
    UserView,
    banned_rows,
    build_page,
    explain,
    explore_keep,
    fresh_candidates,
    freshness,
    low_quality,
    popular_share,
    ranker_relevance,
    relevance,
)
from videorec.serving.ranker import ranker_scores, retrieval_rank

log = logging.getLogger("videorec.serving")
# List pools (popular, trending, explore) hold thousands of videos at 50k; a page
# chooses from the best POOL_MAX that pass the user's filters (of the best POOL_KEEP).
POOL_MAX, POOL_KEEP = 300, 1500
SPOOL_MAX = 200_000  # impressions a worker keeps while Redis is down (~60 MB)
MAX_ID = 2**63 - 1  # ids are int64 throughout (the contract); larger is a 422
CURSOR = re.compile(r"([0-9a-f]{32})\.([0-9]{1,4})")


class ApiError(Exception):
    """An error answered as JSON ``{"error", "message", "field"?}`` with its status."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field
        self.headers = headers

    def response(self) -> Any:
        from fastapi.responses import JSONResponse

        body = {"error": self.error, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Breaker:
    """A circuit breaker (re-ranking's, the ranker's): opens after ``failures``
    consecutive failures and stays open ``cooldown_s``; the first request after that
    tries again (half open). ``gauge`` shows whether it is open (default: re-ranking's)."""

    def __init__(self, failures: int, cooldown_s: float, gauge: Any = None) -> None:
        self.limit, self.cooldown_s = failures, cooldown_s
        self.failures, self.opened_at = 0, None
        self.gauge = gauge if gauge is not None else metrics.BREAKER_OPEN

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if now - self.opened_at >= self.cooldown_s:
            self.opened_at = None  # half open: one more failure re-opens it
            self.failures = self.limit - 1
            self.gauge.set(0)
            return True
        return False

    def record(self, ok: bool, now: float) -> None:
        self.failures = 0 if ok else self.failures + 1
        if self.failures >= self.limit and self.opened_at is None:
            self.opened_at = now
            self.gauge.set(1)


@dataclass
class Ctx:
    """What every request shares within one worker."""

    cfg: Config
    client: Any  # redis.asyncio.Redis
    state: LiveState
    breaker: Breaker
    ranker_breaker: Breaker = field(default=None)  # type: ignore[assignment]  # default: the config's
    keys: RedisKeys = field(init=False)
    live: LiveKeys = field(init=False)

    def __post_init__(self) -> None:
        if self.ranker_breaker is None:
            s = self.cfg.serving
            self.ranker_breaker = Breaker(
                s.breaker_failures, s.breaker_cooldown_s, metrics.RANKER_BREAKER_OPEN
            )
        self.keys = RedisKeys(self.cfg.precompute.key_prefix)
        self.live = LiveKeys(self.cfg.precompute.key_prefix)
        self._cache: dict[Any, Any] = {}
        self._cache_of: tuple[Any, Any] = (None, None)  # the catalogue and lists it is of
        # Impressions that could not be appended (Redis down), oldest first; the
        # refresher appends them once Redis answers again (event ids make a replay
        # idempotent in the event log).
        self.spool: collections.deque[str] = collections.deque()

    def keep_for_later(self, events: list[str]) -> None:
        """Spool ``events`` (encoded) up to ``SPOOL_MAX``; past it the oldest are dropped."""
        overflow = len(self.spool) + len(events) - SPOOL_MAX
        if overflow > 0:
            metrics.IMPRESSIONS_DROPPED.inc(overflow)
        self.spool.extend(events)
        while len(self.spool) > SPOOL_MAX:
            self.spool.popleft()

    async def replay_spool(self, chunk: int = 1000) -> int:
        """Append the spooled events; stops at the first failure. Returns how many went."""
        sent = 0
        while self.spool:
            batch = [self.spool.popleft() for _ in range(min(chunk, len(self.spool)))]
            try:
                await self.client.eval(LOG_EVENTS_LUA, 1, self.live.events_stream,
                                       self.cfg.serving.stream_maxlen, *batch)  # fmt: skip
            except Exception:  # still down: back to the front, in order
                self.spool.extendleft(reversed(batch))
                break
            sent += len(batch)
        return sent

    def cached(self, name: Any, compute: Any) -> Any:
        """``compute()``, kept under ``name`` until the catalogue or the lists are replaced
        (what a worker derives from them once instead of per request). Compared by
        identity, not ``id()``: a new catalogue may reuse a freed one's address."""
        cat, lists = self.state.catalogue, self.state.lists
        if self._cache_of[0] is not cat or self._cache_of[1] is not lists:
            self._cache.clear()  # a new catalogue or lists: drop what was derived
            self._cache_of = (cat, lists)
        if name not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[name] = compute()
        return self._cache[name]


# Rate limits: one round trip for both fixed-window counters (KEYS: the key's and, if
# given, the user's counter; ARGV[1]: the window's TTL). Returns the counts.
RATE_LIMIT_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCR', key)
  if out[i] == 1 then redis.call('EXPIRE', key, ARGV[1]) end
end
return out
"""
# Events onto the stream in one command (KEYS[1]: the stream; ARGV[1]: MAXLEN ~;
# ARGV[2..]: encoded events). Returns how many were appended.
LOG_EVENTS_LUA = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
end
return #ARGV - 1
"""


@dataclass
class Context:
    """The request's optional context (query parameters)."""

    device: str | None = None
    tz: str | None = None
    country: str | None = None
    language: str | None = None
    interests: list[str] = field(default_factory=list)


def now_s() -> float:
    """Wall-clock seconds: serving answers now (freshness, ages, event timestamps)."""
    return time.time()


def iso_now(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")


# ---- reading the user


def rate_limit_cmds(pipe: Any, ctx: Ctx, caller: str, user_id: int | None, t: float) -> int:
    """Queue the rate-limit counters (one script call); returns how many replies it adds."""
    s = ctx.cfg.serving
    window = int(t // s.rate_limit_window_s)
    keys = [ctx.live.rate_limit("key", caller, window)]
    if user_id is not None:
        keys.append(ctx.live.rate_limit("user", str(user_id), window))
    # EVAL, not EVALSHA: a pipeline with a registered script checks SCRIPT EXISTS first
    # (one more round trip), and Redis caches the compiled script by its digest anyway.
    pipe.eval(RATE_LIMIT_LUA, len(keys), *keys, s.rate_limit_window_s + 1)
    return 1


def check_rate(replies: list[Any], ctx: Ctx, has_user: bool, t: float) -> None:
    """429 with Retry-After when a counter read back is over its limit."""
    s = ctx.cfg.serving
    limits = [("key", s.rate_limit_per_key)] + (
        [("user", s.rate_limit_per_user)] if has_user else []
    )
    for (kind, limit), count in zip(limits, replies[0], strict=True):
        if int(count) > limit:
            metrics.RATE_LIMITED.labels(kind).inc()
            retry = int(s.rate_limit_window_s - t % s.rate_limit_window_s) + 1
            raise ApiError(429, "rate_limited", f"too many requests for this {kind}; retry later",
                           headers={"Retry-After": str(retry)})  # fmt: skip


def user_view(features: dict[Any, bytes], live_state: dict[Any, bytes], context: Context,
              strike_limit: int) -> UserView:  # fmt: skip
    """The filters' and re-rank's view of a user: precomputed features, live state
    (feedback since), request context (which fills what the features lack)."""
    f = decode_features(features, USER_FEATURES) if features else {}
    watched, hidden, blocked = [], [], []
    for name, value in live_state.items():
        key = name.decode() if isinstance(name, bytes) else name
        kind, _, ident = key.partition(":")
        kind += ":"
        if kind == STATE_WATCHED:
            watched.append(int(ident))
        elif kind in (STATE_NOT_INTERESTED, STATE_DISLIKED):
            hidden.append(int(ident))
        elif kind == STATE_BLOCKED_CHANNEL or (
            kind == STATE_CHANNEL_STRIKES and int(value) >= strike_limit
        ):
            blocked.append(int(ident))
    history = f.get("history", np.zeros(0, np.int64))
    return UserView(
        history=np.concatenate([history, np.asarray(watched, np.int64)]),
        hidden=np.asarray(hidden, np.int64), blocked_channels=np.asarray(blocked, np.int64),
        preferred={c: float(w) for c, w in f.get("preferred_categories", [])},
        plays=int(f.get("plays", 0)) + len(watched),
        country=context.country or f.get("country"), language=context.language or f.get("language"),
        interests=context.interests, embedding=f.get("embedding"),
    )  # fmt: skip


# ---- pools


def low_quality_of(ctx: Ctx, cat: Catalogue) -> np.ndarray:
    """:func:`low_quality` of ``cat``, kept per worker while it is the live catalogue."""
    if cat is not ctx.state.catalogue:  # replaced since the request began
        return low_quality(cat, ctx.cfg.serving)
    return ctx.cached("low_quality", lambda: low_quality(cat, ctx.cfg.serving))


def list_pool_of(ctx: Ctx, names: tuple[tuple[str, str, float], ...]) -> Pool:
    """:func:`list_pool` for a user-independent tuple of names (cacheable), best first,
    cut to ``POOL_KEEP`` (enough for the filters to leave ``POOL_MAX``)."""
    pool = list_pool(ctx, UserView(), list(names))
    order = np.argsort(-pool.score, kind="stable")[:POOL_KEEP]
    return Pool(pool.rows[order], pool.score[order], pool.source[order])


def best(pool: Pool, keep: np.ndarray, n: int = 0) -> Pool:
    """The first ``n`` (default ``POOL_MAX``) rows of a best-first ``pool`` that ``keep``
    allows: MMR's cost grows with the pool, and a page needs a few dozen candidates."""
    idx = np.flatnonzero(keep)[: n or POOL_MAX]
    return Pool(pool.rows[idx], pool.score[idx], pool.source[idx])


def list_pool(ctx: Ctx, user: UserView, names: list[tuple[str, str, float]]) -> Pool:
    """The named snapshot lists as one pool: each list's scores / its max × its weight; a
    video in several keeps its best. ``names``: (list, source, weight), e.g.
    [("country:US", "popular", 1.0), ("trending", "trending", 1.0)]."""
    cat, lists = ctx.state.catalogue, ctx.state.lists
    parts = [(lists.get(n), SRC[src], w) for n, src, w in names]
    parts = [(ids, sc, code, w) for (ids, sc), code, w in parts if len(ids)]
    if not parts:
        return Pool.empty()
    ids = np.concatenate([p[0] for p in parts])
    score = np.concatenate([p[3] * p[1] / max(float(p[1].max()), 1e-12) for p in parts])
    source = np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in parts])
    rows, found = cat.rows(ids)
    order = np.lexsort((-score, rows))  # per row: best score first
    first = np.ones(len(order), bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    keep = order[first & found[order]]
    return Pool(rows[keep], np.maximum(score[keep], 1e-6), source[keep])


def popular_names(ctx: Ctx, user: UserView) -> list[tuple[str, str, float]]:
    """The lists a user's popular pool draws on: popular in their country and language,
    trending in their declared interests and overall, then (half weight, the long tail
    that keeps later pages full) trending in every category."""
    names = []
    if user.country:
        names.append((f"country:{user.country}", "popular", 1.0))
    if user.language:
        names.append((f"lang:{user.language}", "popular", 1.0))
    names += [(f"trending:{c}", "trending", 1.0) for c in user.interests]
    tail = [(n, "trending", 0.5) for n in ctx.state.lists.lists if n.startswith("trending:")]
    return [*names, ("trending", "trending", 1.0), *tail]


def explore_pool(ctx: Ctx, user: UserView, keep: Any) -> Pool:
    """Well-rated trending videos outside the user's usual categories: of the trending
    lists' videos, the upper half by completion (kept per worker), less the user's
    categories and filters."""
    cat = ctx.state.catalogue
    names = tuple((n, "trending", 1.0) for n in ctx.state.lists.lists if n.startswith("trending"))
    pool = ctx.cached(("explore", names), lambda: well_rated(ctx, names))
    if not len(pool):
        return pool
    usual = [cat.cat_code[c] for c in user.preferred if c in cat.cat_code]
    ok = keep(pool.rows)
    if usual:
        ok &= ~np.isin(cat.category[pool.rows], usual)
    return best(pool, ok)


def well_rated(ctx: Ctx, names: tuple[tuple[str, str, float], ...]) -> Pool:
    """The named lists' pool, only videos at or above its median known completion."""
    pool = list_pool_of(ctx, names)
    completion = ctx.state.catalogue.completion[pool.rows]
    known = ~np.isnan(completion)
    if not known.any():
        return pool
    return pool.where(known & (completion >= np.median(completion[known])))


def personal_pool(ctx: Ctx, cat: Catalogue, user: UserView, ids: np.ndarray,
                  retrieval: np.ndarray, t: float, keep: Any,
                  fresh: tuple[np.ndarray, np.ndarray] | None = None,
                  ) -> tuple[Pool, str | None]:  # fmt: skip
    """The base recommendations plus the user's ``fresh`` candidates (rows and inner
    products, already filtered; their inner product is their retrieval score) re-ranked:
    by the ranker when one is loaded (:func:`ranked`), else by the rule; in retrieval
    order while re-ranking's breaker is open or re-ranking fails. Returns the pool (its
    ``ranker`` the version that scored it) and the fallback reason, if any."""
    s = ctx.cfg.serving
    rows, found = cat.rows(ids)
    rows, retrieval = rows[found], retrieval[found]
    ok = keep(rows)
    rows, retrieval = rows[ok], np.asarray(retrieval[ok], np.float64)
    if fresh is not None and len(fresh[0]):
        new = ~np.isin(fresh[0], rows)  # a young video in the base recommendations: once
        rows = np.concatenate([rows, fresh[0][new]])
        retrieval = np.concatenate([retrieval, fresh[1][new]])
    source = np.full(len(rows), SRC["personal"], np.int8)
    if not ctx.breaker.allow(t):
        return Pool(rows, by_retrieval(retrieval), source), "breaker_open"
    try:
        if "rerank_error" in s.fault_injection:
            raise RuntimeError("fault injection: rerank_error")
        score, version, why = ranked(ctx, cat, rows, retrieval, user, t)
        t0 = time.perf_counter()  # the rule's time (the ranker has its own budget)
        if score is None:
            score = relevance(cat, rows, retrieval, user, t, s)
    except Exception:  # any re-ranking failure: retrieval order, counted by the breaker
        ctx.breaker.record(False, t)
        return Pool(rows, by_retrieval(retrieval), source), "rerank_error"
    slow = (time.perf_counter() - t0) * 1000.0 > s.rerank_timeout_ms
    ctx.breaker.record(not slow, t)
    return Pool(rows, score, source, version), ("rerank_slow" if slow else why)


def ranked(ctx: Ctx, cat: Catalogue, rows: np.ndarray, retrieval: np.ndarray, user: UserView,
           t: float) -> tuple[np.ndarray | None, str | None, str | None]:  # fmt: skip
    """(relevance, ranker version, fallback reason) of the candidates by the loaded
    ranker: one batched forward pass for all of them, timed (``videorec_ranker_seconds``)
    and wrapped in the ranker's circuit breaker. (None, None, reason) when the rule must
    rank them instead: no ranker (reason None), its breaker open, or the ranker raising
    (counted by the breaker). A ranker over ``rerank_timeout_ms`` still ranks this
    request, counted as a failure (``ranker_slow``)."""
    ranker = ctx.state.ranker  # one read: a swap during the request changes nothing here
    if ranker is None or not len(rows):
        return None, None, None
    if not ctx.ranker_breaker.allow(t):
        return None, None, "ranker_breaker_open"
    t0 = time.perf_counter()
    try:
        score = ranker_scores(ranker, cat, rows, retrieval, retrieval_rank(retrieval), user, t)
    except Exception:
        log.warning("ranker %s failed; the rule ranks this request", ranker.version,
                    exc_info=True)  # fmt: skip
        ctx.ranker_breaker.record(False, t)
        return None, None, "ranker_error"
    elapsed = time.perf_counter() - t0
    metrics.RANKER_SECONDS.observe(elapsed)
    slow = elapsed * 1000.0 > ctx.cfg.serving.rerank_timeout_ms
    ctx.ranker_breaker.record(not slow, t)
    rel = ranker_relevance(cat, rows, score, t, ctx.cfg.serving)
    return rel, ranker.version, ("ranker_slow" if slow else None)


def by_retrieval(retrieval: np.ndarray) -> np.ndarray:
    """Positive scores in retrieval order (the breaker's answer)."""
    r = np.asarray(retrieval, np.float64)
    return np.exp(np.minimum(r - (r.max() if len(r) else 0.0), 0.0)) + 1e-9


# ---- the home feed


async def home(ctx: Ctx, caller: str, user_id: int, limit: int, cursor: str | None,
               context: Context) -> dict[str, Any]:  # fmt: skip
    """The home feed page for ``user_id`` (first page, or the one ``cursor`` names).

    ``ranker`` in the answer: the ranker version that ordered the page's personal items
    (a first page's; later pages keep the first page's order and say null, as does a
    page the rule or retrieval order ranked)."""
    t = now_s()
    feed_id, page_no = parse_cursor(cursor) if cursor else (uuid.uuid4().hex, 0)
    gen = ctx.state.generation
    pipe = ctx.client.pipeline(transaction=False)
    n_rl = rate_limit_cmds(pipe, ctx, caller, user_id, t)
    if cursor:
        pipe.get(ctx.live.feed(user_id, feed_id))
        pipe.get(ctx.live.feed_served(user_id, feed_id))
    elif gen is not None:
        pipe.get(ctx.keys.user_recs(gen, user_id))
    else:
        pipe.echo(b"")
    pipe.hgetall(ctx.keys.user_features(gen, user_id)) if gen else pipe.echo(b"")
    pipe.hgetall(ctx.live.user_state(user_id))
    try:
        replies = await pipe.execute()
    except Exception as err:
        if cursor:
            raise ApiError(
                503, "unavailable", f"cannot read the feed now: {type(err).__name__}"
            ) from err
        return await snapshot_page(ctx, user_id, limit, context, t, "redis_unavailable")
    check_rate(replies[:n_rl], ctx, True, t)
    stored, *rest = replies[n_rl:]
    served = rest.pop(0) if cursor else b""
    features, live_state = rest
    user = user_view(
        features or {}, live_state or {}, context, ctx.cfg.serving.channel_strike_limit
    )
    if cursor and not stored:
        raise ApiError(
            410,
            "cursor_expired",
            "this feed's cursor has expired; load the first page again",
            "cursor",
        )
    try:
        return await compute_home(
            ctx, user_id, user, limit, feed_id, page_no, stored, served or b"", t, context
        )
    except Exception:  # a bug or bad data must not blank the homepage: the snapshot answers
        log.exception("home feed for user %s failed; answering from the snapshot", user_id)
        return await snapshot_page(ctx, user_id, limit, context, t, "internal_error")


def parse_cursor(cursor: str) -> tuple[str, int]:
    m = CURSOR.fullmatch(cursor)
    if not m:
        raise ApiError(422, "invalid_value", "cursor: not a cursor this service issued", "cursor")
    return m.group(1), int(m.group(2))


async def compute_home(ctx: Ctx, user_id: int, user: UserView, limit: int, feed_id: str,
                       page_no: int, stored: bytes | None, served_ids: bytes, t: float,
                       context: Context) -> dict[str, Any]:  # fmt: skip
    """Page ``page_no`` of feed ``feed_id``: ``stored`` is the user's packed base
    recommendations (first page) or the feed's stored pool (later pages)."""
    cat, s = ctx.state.catalogue, ctx.cfg.serving
    fallback = None
    ids, retrieval = decode_scored(stored) if stored else (np.zeros(0, np.int64), np.zeros(0))
    served = np.frombuffer(served_ids, dtype="<i8").astype(np.int64)
    user.hidden = np.concatenate([user.hidden, served])

    banned = banned_rows(cat, user, low_quality_of(ctx, cat))

    def keep(rows: np.ndarray) -> np.ndarray:
        return ~banned[rows]

    # The user's fresh candidates: new and young videos by inner product with the query
    # embedding (an exact search of the delta); none without an embedding.
    pool, mine = ctx.state.fresh, (np.zeros(0, np.int64), np.zeros(0))
    if user.embedding is not None and pool.catalogue is cat and len(pool.rows):
        mine = fresh_candidates(pool, user.embedding, keep(pool.rows), s.fresh_candidates)
    if page_no == 0:
        personal, fallback = personal_pool(ctx, cat, user, ids, retrieval, t, keep, mine)
    else:  # later pages: the stored (already re-ranked) scores
        rows, found = cat.rows(ids)
        rows, sc = rows[found], retrieval[found].astype(np.float64)
        ok = keep(rows)
        personal = Pool(
            rows[ok], np.maximum(sc[ok], 1e-6), np.full(int(ok.sum()), SRC["personal"], np.int8)
        )
    popular = ctx.cached(names := tuple(popular_names(ctx, user)), lambda: list_pool_of(ctx, names))
    popular = best(popular, keep(popular.rows))
    popular.score = popular.score * freshness(cat, popular.rows, t, s)
    stats = ctx.state.stats
    if stats.catalogue is not cat:  # the catalogue was replaced, the counts not yet
        stats = ExploreStats()
    stats_keep = keep(stats.rows) if len(stats.rows) else np.zeros(0, bool)
    rng = np.random.default_rng(int(feed_id[:16], 16) + page_no)
    page = build_page(cat, personal, popular, explore_pool(ctx, user, keep), stats,
                      explore_keep(stats, stats_keep, mine[0]), limit,
                      popular_share(user.plays, s) if len(personal) else 1.0, s, rng)  # fmt: skip
    if fallback:
        metrics.FALLBACKS.labels(fallback).inc()
    history_rows, found = cat.rows(user.history[-50:])
    reasons = explain(cat, page, history_rows[found], [])
    request_id = uuid.uuid4().hex
    items = render(cat, page, reasons)
    more = page_no < 99 and len(page.rows) == limit
    writes = ctx.client.pipeline(transaction=False)
    events = log_impressions(writes, ctx, user_id, request_id, items, t, context)
    if page_no == 0:
        pool = encode_scored(cat.ids[personal.rows], np.minimum(personal.score, 6e4))
        writes.set(ctx.live.feed(user_id, feed_id), pool, ex=s.feed_ttl_s)
    served_key = ctx.live.feed_served(user_id, feed_id)
    writes.append(served_key, cat.ids[page.rows].astype("<i8").tobytes())
    writes.expire(served_key, s.feed_ttl_s)
    await flush(ctx, writes, events)
    return {
        "request_id": request_id, "user_id": user_id, "generation": cat.generation or None,
        "page": page_no, "items": items,
        "next_cursor": f"{feed_id}.{page_no + 1}" if more else None,
        "fallback": fallback, "ranker": personal.ranker,
    }  # fmt: skip


def render(cat: Catalogue, page: Page, reasons: list[str]) -> list[dict[str, Any]]:
    """The response items of ``page``."""
    return [
        {**cat.item(row), "score": round(float(score), 4), "reason": reason, "source": SOURCES[src]}
        for row, score, src, reason in zip(
            page.rows.tolist(), page.score.tolist(), page.source.tolist(), reasons, strict=True
        )
    ]


async def snapshot_page(ctx: Ctx, user_id: int, limit: int, context: Context, t: float,
                        reason: str) -> dict[str, Any]:  # fmt: skip
    """A page from the in-process snapshot alone (Redis down): popular in the context's
    country and language, trending; diversity caps still hold; its impressions are
    spooled in the worker until Redis answers again."""
    metrics.FALLBACKS.labels(reason).inc()
    cat, s = ctx.state.catalogue, ctx.cfg.serving
    user = UserView(country=context.country, language=context.language, interests=context.interests)
    names = tuple(popular_names(ctx, user))
    popular = ctx.cached(names, lambda: list_pool_of(ctx, names))
    popular = best(popular, np.ones(len(popular), bool))
    rng = np.random.default_rng(user_id)
    page = build_page(cat, Pool.empty(), popular, Pool.empty(), ctx.state.stats,
                      np.zeros(len(ctx.state.stats.rows), bool), limit, 1.0, s, rng)  # fmt: skip
    page.source = np.full(len(page.rows), SRC["fallback_snapshot"], np.int8)
    reasons = [
        f"Trending in {cat.text[r].get('category') or 'your area'}" for r in page.rows.tolist()
    ]
    request_id, items = uuid.uuid4().hex, render(cat, page, reasons)
    ctx.keep_for_later(log_impressions(None, ctx, user_id, request_id, items, t, context))
    return {
        "request_id": request_id, "user_id": user_id, "generation": cat.generation or None,
        "page": 0, "items": items, "next_cursor": None, "fallback": reason, "ranker": None,
    }  # fmt: skip


def log_impressions(pipe: Any | None, ctx: Ctx, user_id: int, request_id: str,
                    items: list[dict[str, Any]], t: float, context: Context) -> list[str]:  # fmt: skip
    """Queue one ``impression`` event per item on the stream (one script call) and count
    impressions of fresh videos for Thompson sampling; returns the encoded events (with
    ``pipe`` None only that: a caller that cannot reach Redis spools them)."""
    # The events as JSON text from a template: every value is a number, a hex id, an
    # ISO timestamp or a name from a closed set (sources, devices), so nothing needs
    # escaping, and json.dumps per item was a tenth of a home request's CPU.
    head = (f'{{"device":{json.dumps(context.device)},"event_type":"impression",'
            f'"request_id":"{request_id}","ts":"{iso_now(t)}","user_id":{int(user_id)},')  # fmt: skip
    events = []
    by_source: collections.Counter[str] = collections.Counter()
    for pos, item in enumerate(items):
        events.append(f'{head}"event_id":"{request_id}-{pos}","position":{pos},'
                      f'"source":"{item["source"]}","video_id":{int(item["video_id"])}}}')  # fmt: skip
        by_source[item["source"]] += 1
        if item["source"] == "fresh" and pipe is not None:
            pipe.hincrby(ctx.live.explore_stats, f"{STATS_IMPRESSIONS}{item['video_id']}", 1)
    for source, n in by_source.items():
        metrics.IMPRESSIONS.labels(source).inc(n)
    if events and pipe is not None:
        pipe.eval(LOG_EVENTS_LUA, 1, ctx.live.events_stream, ctx.cfg.serving.stream_maxlen, *events)
    return events


async def flush(ctx: Ctx, pipe: Any, events: list[str]) -> None:
    """Send the writes; on a failure the impressions are spooled, the answer still goes."""
    try:
        await pipe.execute()
    except Exception:  # Redis failed between the read and the write
        ctx.keep_for_later(events)


# ---- similar videos and up-next


def similar_key(ctx: Ctx, cat: Catalogue, gen: str, row: int) -> str:
    """The precomputed similar list of catalogue ``row``: a new video's is in the
    new-videos generation, every other one's in the main generation ``gen``."""
    video_id = int(cat.ids[row])
    if cat.is_new[row] and cat.new_generation:
        return RedisKeys.new_videos(ctx.keys.root).similar(cat.new_generation, video_id)
    return ctx.keys.similar(gen, video_id)


def similar_rows(
    ctx: Ctx, cat: Catalogue, row: int, blob: bytes | None, k: int
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(rows, scores, fallback reason) of the videos similar to catalogue ``row``: the
    precomputed list (a main video's merged with the new videos by inner product); else
    exact search over the catalogue's embeddings; else trending in its category (then
    with the reason ``similar_missing``)."""
    if blob:
        ids, scores = decode_scored(blob)
        rows, found = cat.rows(ids)
        rows, scores = rows[found], scores[found].astype(np.float64)
        if len(cat.new_rows) and not cat.is_new[row] and cat.has_emb[row]:
            rows, scores = with_new_similar(cat, row, rows, scores, k)
        return rows, scores, None
    if cat.has_emb[row]:
        sims = cat.emb @ cat.emb[row]
        sims[row] = -np.inf
        sims[~cat.has_emb] = -np.inf
        top = np.argpartition(-sims, min(k, len(sims) - 1))[:k]
        top = top[np.argsort(-sims[top])]
        top = top[sims[top] > -np.inf]
        return top, sims[top].astype(np.float64), "similar_missing"
    category = cat.text[row].get("category")
    ids, scores = ctx.state.lists.get(f"trending:{category}")
    rows, found = cat.rows(ids)
    return rows[found], scores[found], "similar_missing"


def with_new_similar(
    cat: Catalogue, row: int, rows: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """A main video's precomputed similar ``rows`` and ``scores`` merged with the new
    videos' inner products with it (the best ``k`` of them), best first, each row once."""
    sims = cat.new_emb @ cat.emb[row]
    top = (
        np.argpartition(-sims, min(k, len(sims)) - 1)[:k] if len(sims) > k else np.arange(len(sims))
    )
    new_rows, new_sc = cat.new_rows[top], sims[top].astype(np.float64)
    keep = (new_rows != row) & ~np.isin(new_rows, rows)
    rows = np.concatenate([rows, new_rows[keep]])
    scores = np.concatenate([scores, new_sc[keep]])
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


async def similar(ctx: Ctx, caller: str, video_id: int, limit: int) -> dict[str, Any]:
    """The videos similar to ``video_id``, best first; 404 for an unknown video."""
    t = now_s()
    cat, gen = ctx.state.catalogue, ctx.state.generation
    if gen is None or not len(cat):
        raise ApiError(503, "not_ready", "no generation is published (or loaded) yet")
    row = cat.row(video_id)
    if row is None:
        raise ApiError(
            404, "unknown_video", f"video {video_id} is not in the catalogue", "video_id"
        )
    pipe = ctx.client.pipeline(transaction=False)
    n_rl = rate_limit_cmds(pipe, ctx, caller, None, t)
    pipe.get(similar_key(ctx, cat, gen, row))
    try:
        replies = await pipe.execute()
        check_rate(replies[:n_rl], ctx, False, t)
        blob = replies[n_rl]
    except ApiError:
        raise
    except Exception:  # Redis down: the catalogue's embeddings answer
        metrics.FALLBACKS.labels("redis_unavailable").inc()
        blob, down = None, True
    else:
        down = False
    rows, scores, fallback = similar_rows(ctx, cat, row, blob, limit)
    rows, scores = rows[:limit], scores[:limit]
    if fallback and not down:
        metrics.FALLBACKS.labels(fallback).inc()
    fallback = "redis_unavailable" if down else fallback
    if ctx.state.index_ok is False:
        metrics.FALLBACKS.labels("index_unavailable").inc()
        fallback = fallback or "index_unavailable"
    title = cat.text[row].get("title") or f"video {video_id}"
    items = [{**cat.item(r), "similarity_score": round(float(sc), 4), "reason": f"Similar to “{title}”",
              "source": "similar"} for r, sc in zip(rows.tolist(), scores.tolist(), strict=True)]  # fmt: skip
    return {"video_id": video_id, "generation": gen, "items": items, "fallback": fallback}


async def up_next(ctx: Ctx, caller: str, user_id: int, current_video: int, watch_time: float,
                  total_duration: float | None, limit: int, context: Context) -> dict[str, Any]:  # fmt: skip
    """What plays after ``current_video``: the channel's next upload when the user may
    see it, else the best similar video for this user; plus ``related``.
    ``total_duration`` (s): the player's; None takes the catalogue's duration (the
    autoplay countdown then starts from what is left of it, nothing when unknown)."""
    t = now_s()
    cat, gen, s = ctx.state.catalogue, ctx.state.generation, ctx.cfg.serving
    if total_duration is not None and watch_time > total_duration:
        raise ApiError(422, "invalid_value", "watch_time: exceeds total_duration", "watch_time")
    if gen is None or not len(cat):
        raise ApiError(503, "not_ready", "no generation is published (or loaded) yet")
    row = cat.row(current_video)
    if row is None:
        raise ApiError(404, "unknown_video", f"video {current_video} is not in the catalogue",
                       "current_video")  # fmt: skip
    if total_duration is None:  # NaN (unknown) leaves no time to count down
        known = float(cat.duration_s[row])
        total_duration = known if known == known else watch_time
    pipe = ctx.client.pipeline(transaction=False)
    n_rl = rate_limit_cmds(pipe, ctx, caller, user_id, t)
    pipe.get(similar_key(ctx, cat, gen, row))
    pipe.hgetall(ctx.keys.user_features(gen, user_id))
    pipe.hgetall(ctx.live.user_state(user_id))
    fallback = None
    try:
        replies = await pipe.execute()
        check_rate(replies[:n_rl], ctx, True, t)
        blob, features, live_state = replies[n_rl:]
    except ApiError:
        raise
    except Exception:
        blob, features, live_state, fallback = None, {}, {}, "redis_unavailable"
        metrics.FALLBACKS.labels(fallback).inc()
    user = user_view(features or {}, live_state or {}, context, s.channel_strike_limit)
    user.history = np.concatenate([user.history, [current_video]])
    rows, scores, missing = similar_rows(ctx, cat, row, blob, 100)
    if missing:
        metrics.FALLBACKS.labels(missing).inc()
    if ctx.state.index_ok is False:
        metrics.FALLBACKS.labels("index_unavailable").inc()
    fallback = fallback or missing or ("index_unavailable" if ctx.state.index_ok is False else None)
    page = up_next_page(ctx, cat, user, row, rows, scores, limit + 1)
    items = render(cat, page, up_next_reasons(cat, page, row))
    writes = ctx.client.pipeline(transaction=False)
    request_id = uuid.uuid4().hex
    if fallback != "redis_unavailable":
        await flush(
            ctx, writes, log_impressions(writes, ctx, user_id, request_id, items, t, context)
        )
    else:
        ctx.keep_for_later(log_impressions(None, ctx, user_id, request_id, items, t, context))
    return {
        "request_id": request_id, "current_video": current_video,
        "up_next": items[0] if items else None,
        "autoplay_in_seconds": round(max(total_duration - watch_time, 0.0) + s.autoplay_countdown_s, 1),
        "related": items[1:], "fallback": fallback,
    }  # fmt: skip


def up_next_page(ctx: Ctx, cat: Catalogue, user: UserView, row: int, rows: np.ndarray,
                 scores: np.ndarray, size: int) -> Page:  # fmt: skip
    """The up-next item first, then related: similar videos re-scored for the user
    (similarity z-score + category preference), filled with trending in the category."""
    from videorec.serving.rank import W_CATEGORY, PageCaps, mmr_picks, preference

    s = ctx.cfg.serving
    banned = banned_rows(cat, user, low_quality_of(ctx, cat))
    keep = ~banned[rows]
    rows, scores = rows[keep], scores[keep]
    z = (
        (scores - scores.mean()) / (scores.std() + 1e-6)
        if len(scores) > 1
        else np.zeros(len(scores))
    )
    personal = np.exp(np.minimum(z + W_CATEGORY * preference(cat, user)[cat.category[rows]], 8.0))
    pool = Pool(rows, personal, np.full(len(rows), SRC["similar"], np.int8))
    trend_ids, _trend_sc = ctx.state.lists.get(f"trending:{cat.text[row].get('category')}")
    t_rows, found = cat.rows(trend_ids)
    t_rows = t_rows[found]
    t_keep = ~banned[t_rows] & ~np.isin(t_rows, rows)
    trend = Pool(
        t_rows[t_keep],
        np.full(int(t_keep.sum()), 1e-3),
        np.full(int(t_keep.sum()), SRC["trending"], np.int8),
    )
    caps = PageCaps(cat, size, s)
    caps.max_category = size  # up-next stays on topic: only the channel cap applies
    first: list[tuple[int, float, int]] = []
    nxt = int(cat.next_upload[row])
    if nxt >= 0 and not banned[nxt]:
        caps.add(nxt)
        first.append((nxt, 1.0, int(SRC["next_upload"])))
    picks = mmr_picks(cat, pool, size - len(first), caps, s.mmr_lambda)
    fill = mmr_picks(cat, trend, size - len(first) - len(picks), caps, s.mmr_lambda)
    return Page(
        np.concatenate([np.array([f[0] for f in first], np.int64), pool.rows[picks], trend.rows[fill]]),
        np.concatenate([np.array([f[1] for f in first]), pool.score[picks], trend.score[fill]]),
        np.concatenate([np.array([f[2] for f in first], np.int8), pool.source[picks], trend.source[fill]]),
    )  # fmt: skip


def up_next_reasons(cat: Catalogue, page: Page, row: int) -> list[str]:
    title = cat.text[row].get("title") or "this video"
    out = []
    for r, src in zip(page.rows.tolist(), page.source.tolist(), strict=True):
        if SOURCES[src] == "next_upload":
            out.append(f"New from {cat.text[r].get('channel_name') or 'this channel'}")
        elif SOURCES[src] == "similar":
            out.append(f"Because you watched “{title}”")
        else:
            out.append(f"Trending in {cat.text[r].get('category') or 'this category'}")
    return out
