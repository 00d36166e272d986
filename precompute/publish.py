"""Writing one generation into Redis, counting it, and publishing it with one pointer flip.

A generation's keys are written with pipelined commands (no per-key round trip), each
with the TTL from config. Nothing points at them until ``publish`` succeeds, so a run
that dies midway leaves the active generation untouched and its partial keys
expiring. Before the flip every key the run meant to write is counted again with
pipelined ``EXISTS`` (regenerated from the ids, not remembered), so a generation is
published only when it is complete in Redis, not merely when the writes returned.

The flip is a compare-and-swap in a Lua script, atomic on the server: it sets the
pointer to the new generation only if the pointer still holds what this run read
before it started, and only if the new generation's metadata says ``complete``. The
control keys share one hash tag, so the script is valid on Redis Cluster too.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videorec.redis_keys import (
    BUILT_AT_FIELD,
    JSON_FIELD,
    STATUS_COMPLETE,
    STATUS_FIELD,
    STATUS_WRITING,
    RedisKeys,
    active_generation,
)


class PrecomputeError(RuntimeError):
    """Precompute cannot produce or publish a generation; nothing was published."""


class PrecomputeInputError(PrecomputeError, ValueError):
    """The inputs named cannot make a generation (a missing or failed index, a model
    whose embeddings do not match it, features from the future): bad input, exit 2."""


class RedisWriteError(PrecomputeError):
    """Redis refused or lost a write, or a key written is missing at the count."""


# KEYS: pointer, previous, new generation's meta. ARGV: expected pointer ("" = none),
# new generation id. Returns {1, old} when flipped, {0, current} when the pointer
# moved since it was read, {-1, current} when the new generation is not complete.
CAS_ATTEMPTS = 16  # each lost round means another run published: progress is made

_CAS = """
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return {0, cur} end
if redis.call('HGET', KEYS[3], ARGV[3]) ~= ARGV[4] then return {-1, cur} end
redis.call('SET', KEYS[1], ARGV[2])
if cur ~= '' then redis.call('SET', KEYS[2], cur) end
return {1, cur}
"""

# KEYS: one sorted set. ARGV: ttl_s, then score, member pairs. Replaces the set.
_REPLACE_ZSET = """
redis.call('DEL', KEYS[1])
local n = #ARGV
for i = 2, n, 1000 do
  redis.call('ZADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, n)))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""


@dataclass
class Family:
    """What one kind of key should hold once the generation is written."""

    name: str
    key: Callable[[Any], str]  # id (or name) -> key
    members: list[np.ndarray] = field(default_factory=list)  # ids written, chunk by chunk

    @property
    def count(self) -> int:
        return int(sum(len(m) for m in self.members))


class GenerationWriter:
    """Pipelined, TTL'd writes into one generation, remembering what was meant."""

    def __init__(self, client: Any, keys: RedisKeys, gen: str, *, ttl_s: int, batch: int):
        self.client, self.keys, self.gen = client, keys, gen
        self.ttl_s, self.batch = int(ttl_s), int(batch)
        self.families: dict[str, Family] = {}
        # Families whose keys other processes wrote and counted (Spark executors).
        self.verified_elsewhere: dict[str, int] = {}

    def add_verified(self, name: str, count: int) -> None:
        """Record ``count`` keys of family ``name`` written and counted by other workers."""
        self.verified_elsewhere[name] = int(count)

    def family(self, name: str, key: Callable[[Any], str]) -> Family:
        return self.families.setdefault(name, Family(name, key))

    def _execute(self, pipe: Any, what: str) -> list[Any]:
        import redis

        try:
            replies = pipe.execute(raise_on_error=True)
        except (redis.exceptions.RedisError, OSError) as err:
            raise RedisWriteError(f"generation {self.gen}: writing {what} failed: {err}") from err
        return replies

    def put_blobs(self, family: Family, members: np.ndarray, values: Sequence[bytes]) -> None:
        """SET each member's key to its value with the TTL; (m,) ids, m values."""
        if len(members) != len(values):
            raise ValueError(f"{len(members)} members but {len(values)} values")
        names = [family.key(m) for m in members.tolist()]
        for lo in range(0, len(names), self.batch):
            pipe = self.client.pipeline(transaction=False)
            for name, value in zip(
                names[lo : lo + self.batch], values[lo : lo + self.batch], strict=True
            ):
                pipe.set(name, value, ex=self.ttl_s)
            if not all(self._execute(pipe, family.name)):
                raise RedisWriteError(f"generation {self.gen}: a SET of {family.name} was refused")
        family.members.append(np.asarray(members))

    def put_hashes(
        self, family: Family, members: np.ndarray, mappings: Sequence[dict[str, Any]]
    ) -> None:
        """HSET each member's hash to its (non-empty) mapping, then EXPIRE it; pipelined.

        A generation key is written once, by one run (a twin run writes the same
        values), so the hash is not cleared first.
        """
        if len(members) != len(mappings):
            raise ValueError(f"{len(members)} members but {len(mappings)} mappings")
        names = [family.key(m) for m in members.tolist()]
        step = max(self.batch // 2, 1)  # two commands per key
        for lo in range(0, len(names), step):
            pipe = self.client.pipeline(transaction=False)
            for name, mapping in zip(names[lo : lo + step], mappings[lo : lo + step], strict=True):
                pipe.hset(name, mapping=mapping)
                pipe.expire(name, self.ttl_s)
            if not all(self._execute(pipe, family.name)[1::2]):
                raise RedisWriteError(f"generation {self.gen}: an EXPIRE of {family.name} failed")
        family.members.append(np.asarray(members))

    def put_ranked(self, family: Family, lists: dict[Any, tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace each named sorted set (member: video id, score) and set its TTL.

        Each set is replaced by one script (DEL, ZADD, EXPIRE), atomic on the server, so
        even a re-run over a generation readers use never shows a set half-filled.
        Empty lists are not written (and not expected).
        """
        names = [name for name, (items, _) in lists.items() if len(items)]
        for lo in range(0, len(names), self.batch):
            pipe = self.client.pipeline(transaction=False)
            wanted = []
            for name in names[lo : lo + self.batch]:
                items, scores = lists[name]
                flat = [
                    x for pair in zip(scores.tolist(), items.tolist(), strict=True) for x in pair
                ]
                pipe.eval(_REPLACE_ZSET, 1, family.key(name), self.ttl_s, *flat)
                wanted.append(len(items))
            got = self._execute(pipe, family.name)
            if [int(g) for g in got] != wanted:
                raise RedisWriteError(
                    f"generation {self.gen}: {family.name}: sizes {got} != {wanted}"
                )
        family.members.append(np.asarray(names, dtype=object))

    def count_present(self, family: Family) -> int:
        """Keys of ``family`` present in Redis now, counted with pipelined EXISTS."""
        present = 0
        for chunk in family.members:
            names = [family.key(m) for m in chunk.tolist()]
            pipe = self.client.pipeline(transaction=False)
            for lo in range(0, len(names), self.batch):
                pipe.exists(*names[lo : lo + self.batch])
            present += sum(self._execute(pipe, f"the count of {family.name}")) if names else 0
        return present

    def verify(self) -> dict[str, int]:
        """{family: keys written}; RedisWriteError when any key is missing."""
        counts = {}
        for fam in self.families.values():
            present = self.count_present(fam)
            if present != fam.count:
                raise RedisWriteError(
                    f"generation {self.gen}: {fam.name}: {present} keys present of "
                    f"{fam.count} written (evicted, expired or lost); not published"
                )
            counts[fam.name] = present
        return {**counts, **self.verified_elsewhere}

    def memory_per_key(self, family: Family, sample: int = 64) -> float | None:
        """Mean ``MEMORY USAGE`` in bytes over the first ``sample`` keys of ``family``."""
        names = [family.key(m) for chunk in family.members for m in chunk[:sample].tolist()]
        names = names[:sample]
        if not names:
            return None
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)  # every field of a hash, not 5
        sizes = [s for s in self._execute(pipe, "MEMORY USAGE") if s is not None]
        return round(float(np.mean(sizes)), 1) if sizes else None


# ---- metadata and the pointer


def write_meta(client: Any, keys: RedisKeys, gen: str, meta: dict[str, Any], ttl_s: int) -> None:
    """Store a generation's metadata hash (status, built_at, json) with the TTL."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.meta(gen), mapping={
        STATUS_FIELD: meta["status"], BUILT_AT_FIELD: meta["built_at"],
        JSON_FIELD: json.dumps(meta, sort_keys=True, default=str),
    })  # fmt: skip
    pipe.expire(keys.meta(gen), int(ttl_s))
    pipe.execute()


def read_meta(client: Any, keys: RedisKeys, gen: str | None) -> dict[str, Any] | None:
    """A generation's metadata, or None when it is absent (never written, or expired)."""
    if gen is None:
        return None
    raw = client.hget(keys.meta(gen), JSON_FIELD)
    return None if raw is None else json.loads(raw)


# KEYS: a generation's meta. ARGV: built_at, json, ttl_s. Marks it as being written,
# unless it is complete already: a twin run (an Airflow retry beside a zombie) starting
# after the first one published must not make the live generation look unfinished.
_BEGIN = """
if redis.call('HGET', KEYS[1], 'status') == 'complete' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'writing', 'built_at', ARGV[1], 'json', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def begin(client: Any, keys: RedisKeys, gen: str, meta: dict[str, Any], ttl_s: int) -> bool:
    """Mark ``gen`` as being written (the pointer script refuses it until complete);
    False when it is complete already (then it is left as it is)."""
    doc = json.dumps({**meta, "status": STATUS_WRITING}, sort_keys=True, default=str)
    return bool(client.eval(_BEGIN, 1, keys.meta(gen), meta["built_at"], doc, int(ttl_s)))


@dataclass
class FlipResult:
    """The outcome of one compare-and-swap of the pointer."""

    flipped: bool
    current: str | None  # the pointer's value before the flip (or now, when not flipped)
    incomplete: bool = False


def flip(client: Any, keys: RedisKeys, expected: str | None, gen: str) -> FlipResult:
    """Point readers at ``gen`` if the pointer still holds ``expected`` and ``gen`` is complete."""
    code, cur = client.eval(
        _CAS, 3, keys.pointer, keys.previous, keys.meta(gen),
        expected or "", gen, STATUS_FIELD, STATUS_COMPLETE,
    )  # fmt: skip
    cur = (cur.decode() if isinstance(cur, bytes) else cur) or None
    return FlipResult(flipped=int(code) == 1, current=cur, incomplete=int(code) == -1)


def chunks(n: int, size: int) -> Iterable[slice]:
    """Slices covering range(n) in pieces of at most ``size``."""
    for lo in range(0, n, size):
        yield slice(lo, min(lo + size, n))


def built_at(meta: dict[str, Any] | None) -> dt.datetime | None:
    """The logical time a generation was built for (its ``built_at``), or None."""
    return dt.datetime.fromisoformat(meta["built_at"]) if meta and meta.get("built_at") else None


def newer_active(
    client: Any, keys: RedisKeys, current: str | None, t: dt.datetime,
    index_generation: int | None = None,
) -> bool:  # fmt: skip
    """True when the active generation outranks one built for logical time ``t`` from
    the index that went live at ``index_generation`` (the index pointer's generation:
    ``index_generation_of``). A generation of a later-published index outranks one of an
    earlier, whatever their logical times: a retrain's generation (its logical date,
    say 02:00) published after the 04:00 run of the index it replaces must go live.
    Otherwise, or where either side does not know its index's generation, the later
    logical time outranks."""
    meta = read_meta(client, keys, current)
    built = built_at(meta)
    if built is None:
        return False
    theirs = meta.get("index_generation") if meta else None
    if index_generation is not None and isinstance(theirs, int) and theirs != index_generation:
        return theirs > index_generation
    return built > t


def publish_generation(
    client: Any, keys: RedisKeys, gen: str, expected: str | None, t: dt.datetime,
    index_generation: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Flip the pointer from ``expected`` to ``gen``, following concurrent publishes,
    unless the active one outranks it (:func:`newer_active`)."""
    for _ in range(CAS_ATTEMPTS):
        r = flip(client, keys, expected, gen)
        if r.flipped:
            return {"published": True, "skipped": False, "reason": None, "previous": r.current}
        if r.incomplete:
            raise PrecomputeError(f"generation {gen}: metadata missing or incomplete at publish")
        if r.current == gen:  # a twin run (an Airflow retry beside a zombie) published it
            return {"published": False, "skipped": False, "reason": "published by a concurrent run"}
        if newer_active(client, keys, r.current, t, index_generation):
            return {"published": False, "skipped": False,
                    "reason": f"the active generation {r.current} is newer"}  # fmt: skip
        expected = r.current
    raise PrecomputeError(f"generation {gen}: the pointer kept changing; not published")


def pointer_or_skip(
    client: Any, keys: RedisKeys, gen: str, t: dt.datetime, how: str,
    index_generation: int | None = None,
) -> tuple[str | None, dict[str, Any] | None]:  # fmt: skip
    """(the generation the pointer holds, the skipped result when ``gen`` is that one and
    its keys still live, or the active one outranks a generation for ``t`` and
    ``index_generation`` (:func:`newer_active`); else None).

    Raises PrecomputeError when Redis cannot be reached (``how`` says which server).
    """
    import redis as redis_lib

    try:
        current = active_generation(client, keys)
    except (redis_lib.exceptions.RedisError, OSError) as err:
        raise PrecomputeError(f"Redis ({how}) is unreachable: {err}") from None
    result = {"generation": gen, "published": False, "skipped": True, "previous": current}
    if current == gen:
        meta = read_meta(client, keys, gen)
        if meta is not None:
            return current, {**result, "reason": "already active", "meta": meta}
        # The pointer outlived its generation (every key has expired, the pointer has no
        # TTL): nothing is served, so the run rebuilds the same generation.
    if newer_active(client, keys, current, t, index_generation):
        return current, {**result, "reason": f"the active generation {current} is newer",
                         "meta": None}  # fmt: skip
    return current, None
