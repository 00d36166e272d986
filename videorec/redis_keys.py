"""Every Redis key videorec writes, its encoding, and how a reader finds the live generation.

The one place key names are spelled (docs/redis-keys.md documents each key). Writers
(``videorec.precompute``) and readers (the serving shim) both build keys here, so
they cannot drift apart. This module is part of the core: it imports no stage.

Layout, with ``<root>`` the config's ``precompute.key_prefix``::

    <root>:{precompute}:active                 generation id readers serve (the pointer)
    <root>:{precompute}:previous               generation the last publish replaced
    <root>:{precompute}:gen:<gen>:meta         hash: status, built_at, json (the metadata)
    <root>:{precompute}:gen:<gen>:lease        the token of the run writing <gen> (expires
                                               unless renewed: one writer per generation)
    <root>:g:<gen>:u:{<user_id>}:recs          base recommendations (packed, see below)
    <root>:g:<gen>:v:{<video_id>}:similar      similar videos (packed)
    <root>:g:<gen>:trending:global             sorted set: video id -> trending score
    <root>:g:<gen>:trending:cat:<category>     sorted set, per category
    <root>:g:<gen>:popular:country:<CC>        sorted set: video id -> decayed popularity
    <root>:g:<gen>:popular:lang:<ll>           sorted set, per user language
    <root>:g:<gen>:u:{<user_id>}:features      hash: the user's online features
    <root>:g:<gen>:v:{<video_id>}:features     hash: the video's online features

The 15-minute fresh lists (``RedisKeys.fresh``) are generations of their own, with
their own pointer, so a 15-minute refresh never waits for or disturbs the 4-hourly
generation::

    <root>:{trending}:active                   fresh-lists generation readers serve
    <root>:{trending}:previous, :gen:<gen>:meta  as above
    <root>:t:<gen>:trending:global|cat:<c>     sorted sets, as in a generation
    <root>:t:<gen>:popular:country:<CC>|lang:<ll>

The control keys share the hash tag ``{precompute}``, so on Redis Cluster they live in
one slot and the publish script (a compare-and-swap of the pointer that also checks the
new generation's metadata) runs atomically there. A user's keys carry the user id as
their hash tag, so everything about one user (in every generation) shares a slot. The
pointer is not named ``generation``, so it cannot be confused with the index pointer's
``generation`` field (a counter of index publishes).

Readers resolve the pointer once, then read inside that generation: generation keys
are never changed after publish, only expired, so a reader that resolved an older
generation keeps reading a consistent one for as long as its TTL lasts.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np

# Packed scored lists (base recommendations, similar videos): one version byte, then n
# little-endian int64 ids, then n little-endian float16 scores: 1 + 10·n bytes.
PACKED_VERSION = 1
_HEADER = bytes([PACKED_VERSION])
ID_DTYPE = np.dtype("<i8")
SCORE_DTYPE = np.dtype("<f2")
BYTES_PER_ITEM = ID_DTYPE.itemsize + SCORE_DTYPE.itemsize
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: scores beyond it are refused

_ROOT = re.compile(r"[A-Za-z0-9_.:-]+")
_GENERATION = re.compile(r"[A-Za-z0-9_.-]+")

# Metadata hash fields (the publish script reads STATUS_FIELD).
STATUS_FIELD = "status"
BUILT_AT_FIELD = "built_at"
JSON_FIELD = "json"
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"


class EncodingError(ValueError):
    """A packed value is malformed, or scores cannot be represented."""


def label(name: str) -> str:
    """A category, country or language as a key segment: percent-encoded, so a colon,
    a space or a brace (a Cluster hash tag) in a name cannot change the key's shape."""
    return quote(str(name), safe="-_.~")


# (control hash tag, data namespace) of each kind of generation.
FAMILIES = {
    "precompute": ("precompute", "g"),
    "trending": ("trending", "t"),
    "newvideos": ("newvideos", "n"),
}


@dataclass(frozen=True)
class RedisKeys:
    """Key names under one root prefix, for one kind of generation (``kind``):
    ``precompute`` (the 4-hourly one), ``trending`` (the 15-minute fresh lists) or
    ``newvideos`` (the hourly videos published since the main index was built: their
    feature hashes with the content-path embedding and their similar lists)."""

    root: str
    kind: str = "precompute"

    def __post_init__(self) -> None:
        if not _ROOT.fullmatch(self.root):
            raise ValueError(f"key prefix {self.root!r}: letters, digits and _ . : - only")
        if self.kind not in FAMILIES:
            raise ValueError(f"generation kind {self.kind!r}: one of {sorted(FAMILIES)}")

    @classmethod
    def fresh(cls, root: str) -> RedisKeys:
        """The keys of the 15-minute trending and popular lists."""
        return cls(root, "trending")

    @classmethod
    def new_videos(cls, root: str) -> RedisKeys:
        """The keys of the hourly new-videos generation (the delta index's videos)."""
        return cls(root, "newvideos")

    # ---- control keys: one slot on Cluster (hash tag {precompute} or {trending})
    @property
    def pointer(self) -> str:
        """The active generation id (a string; absent before the first publish)."""
        return f"{self.root}:{{{FAMILIES[self.kind][0]}}}:active"

    @property
    def previous(self) -> str:
        """The generation the last publish replaced (for on-call and rollback)."""
        return f"{self.root}:{{{FAMILIES[self.kind][0]}}}:previous"

    def meta(self, gen: str) -> str:
        """Hash of one generation's metadata: status, built_at, json."""
        return f"{self.root}:{{{FAMILIES[self.kind][0]}}}:gen:{check_generation(gen)}:meta"

    def lease(self, gen: str) -> str:
        """The token of the run writing ``gen`` (:class:`RedisLease`): a twin run for the
        same generation (the retrain's and the asset-triggered one) waits for it."""
        return f"{self.root}:{{{FAMILIES[self.kind][0]}}}:gen:{check_generation(gen)}:lease"

    # ---- generation data
    def namespace(self, gen: str) -> str:
        """The prefix every data key of ``gen`` starts with (for SCAN MATCH ``ns:*``)."""
        return f"{self.root}:{FAMILIES[self.kind][1]}:{check_generation(gen)}"

    def user_recs(self, gen: str, user_id: int) -> str:
        return f"{self.namespace(gen)}:u:{{{int(user_id)}}}:recs"

    def similar(self, gen: str, video_id: int) -> str:
        return f"{self.namespace(gen)}:v:{{{int(video_id)}}}:similar"

    def user_features(self, gen: str, user_id: int) -> str:
        """Hash of the user's online features (``USER_FEATURES`` names its fields)."""
        return f"{self.namespace(gen)}:u:{{{int(user_id)}}}:features"

    def video_features(self, gen: str, video_id: int) -> str:
        """Hash of the video's online features (``VIDEO_FEATURES`` names its fields)."""
        return f"{self.namespace(gen)}:v:{{{int(video_id)}}}:features"

    def trending(self, gen: str, category: str | None = None) -> str:
        """The global list (``category`` None) or one category's."""
        tail = "global" if category is None else f"cat:{label(category)}"
        return f"{self.namespace(gen)}:trending:{tail}"

    def popular_country(self, gen: str, country: str) -> str:
        return f"{self.namespace(gen)}:popular:country:{label(country)}"

    def popular_language(self, gen: str, language: str) -> str:
        return f"{self.namespace(gen)}:popular:lang:{label(language)}"


@dataclass(frozen=True)
class LiveKeys:
    """Keys of the live (not generation-bound) state under one root prefix: the event
    stream the serving shim appends to, and the per-user and per-video state that
    feedback and impressions change between precompute runs.

    ::

        <root>:{events}:stream                 Redis Stream of contract events (below)
        <root>:{events}:drain-lease            string: the token of the drain holding the stream
        <root>:rt:u:{<user_id>}:state          hash: what feedback changed (see fields)
        <root>:rt:u:{<user_id>}:feed:<feed_id> packed list: a home feed's pool, for its next pages
        <root>:rt:u:{<user_id>}:feed:<feed_id>:served   int64 ids its pages have shown
        <root>:rt:{explore}:stats              hash: i:<video_id> impressions, c:<video_id> clicks
        <root>:rt:idem:<caller>:<key>          string: a feedback's stored answer (idempotency)
        <root>:rt:rl:<kind>:<id>:<window>      counter: requests in one rate-limit window
    """

    root: str

    def __post_init__(self) -> None:
        if not _ROOT.fullmatch(self.root):
            raise ValueError(f"key prefix {self.root!r}: letters, digits and _ . : - only")

    @property
    def events_stream(self) -> str:
        """The Redis Stream of served impressions and feedback events (drained hourly)."""
        return f"{self.root}:{{events}}:stream"

    @property
    def drain_lease(self) -> str:
        """The running drain's token (expires unless renewed): one drain at a time."""
        return f"{self.root}:{{events}}:drain-lease"

    def user_state(self, user_id: int) -> str:
        """Hash of one user's live state: ``USER_STATE_FIELDS`` prefixes + id."""
        return f"{self.root}:rt:u:{{{int(user_id)}}}:state"

    def feed(self, user_id: int, feed_id: str) -> str:
        """One home feed's candidate pool (packed scored list), for its later pages."""
        return f"{self.root}:rt:u:{{{int(user_id)}}}:feed:{label(feed_id)}"

    def feed_served(self, user_id: int, feed_id: str) -> str:
        """The video ids a feed's pages have shown (int64 bytes, appended per page)."""
        return f"{self.feed(user_id, feed_id)}:served"

    @property
    def explore_stats(self) -> str:
        """Hash of impression and click counts of recently published videos."""
        return f"{self.root}:rt:{{explore}}:stats"

    def idempotency(self, caller: str, key: str) -> str:
        return f"{self.root}:rt:idem:{label(caller)}:{label(key)}"

    def rate_limit(self, kind: str, ident: str, window: int) -> str:
        return f"{self.root}:rt:rl:{label(kind)}:{label(ident)}:{int(window)}"


# The consumer group the event-log drain reads the stream with.
EVENTS_GROUP = "eventlog-drain"
# Compare-and-delete of a string key (KEYS[1]) that still holds ARGV[1]: a claim or a
# lease is released only by its holder (the feedback's idempotency claim, the drain's
# lease), never once another holds it or the answer replaced it. Returns 1 or 0.
DELETE_IF_EQUAL_LUA = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# Extend (PEXPIRE ARGV[2] ms) a lease only while it holds this run's token ARGV[1], so a
# run never extends another's. Returns 1 or 0.
RENEW_IF_EQUAL_LUA = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


class RedisLease:
    """One holder at a time for ``key``: a random token set with NX and an expiry of
    ``ttl_ms``, renewed by a daemon thread every third of it while the process lives,
    so a killed holder's lease lapses within ``ttl_ms``. Released (compare-and-delete)
    only by its holder. The event-log drain's and each precompute generation's."""

    def __init__(self, r: Any, key: str, ttl_ms: int) -> None:
        self.r, self.key, self.ttl_ms, self.token = r, key, int(ttl_ms), uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="redis-lease")

    def acquire(self) -> bool:
        """Take the lease if no one holds it (and start renewing it); False if held."""
        if not self.r.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._beat.start()
        return True

    def left_s(self) -> float:
        """Seconds until the current holder's lease lapses unless renewed (0: none)."""
        return max(int(self.r.pttl(self.key)), 0) / 1000

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer this run's (lapsed or taken)."""
        return bool(self.r.eval(RENEW_IF_EQUAL_LUA, 1, self.key, self.token, self.ttl_ms))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            with contextlib.suppress(Exception):  # a failed beat: renew() will tell
                if not self.renew():
                    return

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's. A failed
        delete is let go (the lease lapses within ``ttl_ms``), so the error that ended
        the holder's work is the one raised, not Redis's during the clean-up."""
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join()
        with contextlib.suppress(Exception):
            self.r.eval(DELETE_IF_EQUAL_LUA, 1, self.key, self.token)


# Field prefixes of a user's live state hash (value: epoch seconds, or a count for
# channel strikes): a not-interested video, a watched video, a disliked video, strikes
# against a channel (not_interested or dislike), a channel the user blocked.
STATE_NOT_INTERESTED, STATE_WATCHED, STATE_DISLIKED = "ni:", "w:", "d:"
STATE_CHANNEL_STRIKES, STATE_BLOCKED_CHANNEL = "cs:", "bc:"
STATS_IMPRESSIONS, STATS_CLICKS = "i:", "c:"


def encode_stream_event(event: dict[str, Any]) -> dict[str, str]:
    """One contract event as a stream entry: ``{"event": <JSON>}``. The JSON's keys are
    the event log's column names (``videorec.contract.WATCH_EVENTS``), ``ts`` an ISO 8601
    UTC timestamp with microseconds; absent keys are nulls."""
    return {"event": json.dumps(event, separators=(",", ":"), sort_keys=True)}


def decode_stream_event(fields: dict[Any, Any]) -> dict[str, Any]:
    """The event of a stream entry (``XREAD`` fields); ValueError if it has none or the
    JSON is not an object."""
    raw = fields.get(b"event", fields.get("event"))
    if raw is None:
        raise ValueError("stream entry has no 'event' field")
    event = json.loads(raw)
    if not isinstance(event, dict):
        raise ValueError("stream entry's event is not a JSON object")
    return event


def check_generation(gen: str) -> str:
    """``gen`` if it is a valid generation id (no braces, colons or spaces)."""
    if not isinstance(gen, str) or not _GENERATION.fullmatch(gen):
        raise ValueError(f"generation id {gen!r}: letters, digits and _ . - only")
    return gen


# ---- packed scored lists


def _scores16(scores: np.ndarray) -> np.ndarray:
    """``scores`` as little-endian float16; EncodingError if any is not finite there."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size and not (np.isfinite(s).all() and np.abs(s).max() <= FLOAT16_MAX):
        raise EncodingError(f"scores must be finite and within ±{FLOAT16_MAX:g} for float16")
    return s.astype(SCORE_DTYPE)


def encode_scored(ids: np.ndarray, scores: np.ndarray) -> bytes:
    """Pack (n,) int64 ids and (n,) scores, best first, into 1 + 10·n bytes."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or np.shape(scores) != ids.shape:
        raise EncodingError(f"ids {ids.shape} and scores {np.shape(scores)} must be equal (n,)")
    return _HEADER + ids.astype(ID_DTYPE).tobytes() + _scores16(scores).tobytes()


def encode_rows(ids: np.ndarray, scores: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """Pack each row of (n, k) ids and scores, its first ``lengths[i]`` items.

    The dtype conversion and the range check are done once for the whole matrix;
    only the per-row byte slicing is a Python loop (one per key written anyway).
    """
    ids = np.ascontiguousarray(ids, dtype=ID_DTYPE)
    if ids.ndim != 2 or np.shape(scores) != ids.shape or len(lengths) != len(ids):
        raise EncodingError(f"ids {ids.shape}, scores {np.shape(scores)}, lengths {len(lengths)}")
    k = ids.shape[1]
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > k):
        raise EncodingError(f"lengths must lie in [0, {k}]")
    valid = np.arange(k)[None, :] < lengths[:, None]
    s16 = np.ascontiguousarray(_scores16(np.where(valid, scores, 0.0)))
    id_bytes, s_bytes = memoryview(ids).cast("B"), memoryview(s16).cast("B")
    row_i, row_s = k * ID_DTYPE.itemsize, k * SCORE_DTYPE.itemsize
    out = []
    for r, n in enumerate(lengths.tolist()):
        i0, s0 = r * row_i, r * row_s
        out.append(b"".join((_HEADER, id_bytes[i0 : i0 + n * 8], s_bytes[s0 : s0 + n * 2])))
    return out


def decode_scored(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,) int64, scores (n,) float32) of a packed list; EncodingError if malformed."""
    if not blob or blob[0] != PACKED_VERSION:
        head = blob[:1].hex() if blob else "empty"
        raise EncodingError(f"packed list: version byte {head}, expected {PACKED_VERSION:02x}")
    body = memoryview(blob)[1:]
    if len(body) % BYTES_PER_ITEM:
        raise EncodingError(f"packed list: {len(body)} bytes is not a multiple of 10")
    n = len(body) // BYTES_PER_ITEM
    ids = np.frombuffer(body, dtype=ID_DTYPE, count=n).astype(np.int64)
    scores = np.frombuffer(body, dtype=SCORE_DTYPE, count=n, offset=n * 8).astype(np.float32)
    return ids, scores


# ---- online feature hashes
#
# Each field is stored as text (str, int, float: Python's repr, so it round-trips
# exactly), JSON, little-endian int64 ids or little-endian float32 vectors. A null
# value is not stored: the field is absent. Timestamps are seconds since the epoch.

TEXT, INT, FLOAT, JSON_LIST, IDS, VECTOR = "text", "int", "float", "json", "ids", "vector"

USER_FEATURES: dict[str, str] = {
    "country": TEXT, "language": TEXT, "activity_level": TEXT, "plays": INT,
    "active_days": INT, "avg_watch_time_s": FLOAT, "last_seen": FLOAT, "last_played_at": FLOAT,
    # [[category, weight], ...], heaviest first, weights summing to 1 (watch time share)
    "preferred_categories": JSON_LIST,
    "history": IDS,  # the last 50 watched video ids, oldest first
    "embedding": VECTOR,  # float32, the model's query tower output (the fresh-video search)
}  # fmt: skip

VIDEO_FEATURES: dict[str, str] = {
    "title": TEXT, "category": TEXT, "channel_id": INT, "channel_name": TEXT,
    "language": TEXT, "duration_s": FLOAT, "published_at": FLOAT, "views": INT,
    "unique_viewers": INT, "avg_completion": FLOAT, "skip_rate": FLOAT, "like_ratio": FLOAT,
    "dislike_ratio": FLOAT, "channel_avg_completion": FLOAT, "channel_like_ratio": FLOAT,
    "embedding": VECTOR,  # float32, the model's video tower output (the index's vectors)
}  # fmt: skip


def encode_field(kind: str, value: Any) -> bytes | str | None:
    """One feature value as stored; None for a null (the field is then not written)."""
    if value is None or (isinstance(value, float) and value != value):  # null or NaN
        return None
    if kind == TEXT:
        return str(value)
    if kind == INT:
        return str(int(value))
    if kind == FLOAT:
        return repr(float(value))
    if kind == JSON_LIST:
        return json.dumps(value, separators=(",", ":"))
    if kind == IDS:
        return np.asarray(value, dtype=ID_DTYPE).tobytes()
    if kind == VECTOR:
        return np.asarray(value, dtype="<f4").tobytes()
    raise ValueError(f"unknown feature kind {kind!r}")


def decode_features(raw: dict[Any, bytes], schema: dict[str, str]) -> dict[str, Any]:
    """A feature hash as read (``HGETALL``) into Python values; unknown fields are kept
    as bytes (a newer writer), absent ones are absent."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = name.decode() if isinstance(name, bytes) else name
        kind = schema.get(key)
        if kind in (TEXT,):
            out[key] = value.decode()
        elif kind == INT:
            out[key] = int(value)
        elif kind == FLOAT:
            out[key] = float(value)
        elif kind == JSON_LIST:
            out[key] = json.loads(value)
        elif kind == IDS:
            out[key] = np.frombuffer(value, dtype=ID_DTYPE).astype(np.int64)
        elif kind == VECTOR:
            out[key] = np.frombuffer(value, dtype="<f4").astype(np.float32)
        else:
            out[key] = value
    return out


# ---- readers


def active_generation(client: Any, keys: RedisKeys) -> str | None:
    """The generation readers should serve now, or None before the first publish."""
    raw = client.get(keys.pointer)
    return raw.decode() if isinstance(raw, bytes) else raw


def read_scored(client: Any, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A packed list's (ids, scores), or None when the key is absent."""
    raw = client.get(key)
    return None if raw is None else decode_scored(raw)


def read_features(client: Any, key: str, schema: dict[str, str]) -> dict[str, Any] | None:
    """A feature hash (``USER_FEATURES`` or ``VIDEO_FEATURES``), or None when absent."""
    raw = client.hgetall(key)
    return decode_features(raw, schema) if raw else None


def read_ranked(client: Any, key: str, n: int = -1) -> list[tuple[int, float]]:
    """A sorted set's top ``n`` (all for -1) as (video id, score), best first."""
    rows = client.zrevrange(key, 0, n - 1 if n > 0 else -1, withscores=True)
    return [(int(m), float(s)) for m, s in rows]
