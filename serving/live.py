"""What each serving worker holds in memory, refreshed in the background.

- **The catalogue** (:class:`Catalogue`): every video of the active generation as
  column arrays (channel, category, publish time, quality, the embedding), so that a
  request re-ranks and filters its ~200 candidates with numpy and reads no video hash.
  Reloaded when the generation pointer moves (every 4 h); the old one serves meanwhile.
- **The lists snapshot** (:class:`Lists`): trending and popular lists of the fresh
  (15-minute) generation, else the 4-hourly one. It feeds cold start and exploration,
  and it is the answer when Redis is unreachable, so the homepage is never blank.
- **Exploration counts**: impressions and clicks of the videos younger than
  ``serving.fresh_age_h`` (Thompson sampling's posteriors).
- **The pointer** itself, so the common request makes one Redis round trip.

Everything is read with the synchronous client in a worker thread: a reload parses
tens of thousands of hashes and must not stall the event loop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videorec.config import Config
from videorec.redis_keys import (
    JSON_FIELD,
    STATS_CLICKS,
    STATS_IMPRESSIONS,
    VIDEO_FEATURES,
    LiveKeys,
    RedisKeys,
    decode_features,
)

# Video hash fields kept per item for responses (the embedding goes to a matrix).
ITEM_TEXT = ("title", "channel_name", "category", "language")


@dataclass
class Catalogue:
    """The videos of one generation, row-aligned arrays sorted by id.

    ``emb`` is (V, d) float32 with unit rows (zeros where a video has no embedding),
    so a dot product is a cosine similarity.
    """

    generation: str
    ids: np.ndarray  # (V,) int64, sorted
    channel: np.ndarray  # (V,) int64, -1 unknown
    category: np.ndarray  # (V,) int32 codes into ``categories``, -1 unknown
    categories: list[str]
    published_at: np.ndarray  # (V,) float64 epoch s, NaN unknown
    duration_s: np.ndarray  # (V,) float64, NaN unknown
    views: np.ndarray  # (V,) int64
    completion: np.ndarray  # (V,) float32 mean completion, NaN unknown
    dislike: np.ndarray  # (V,) float32 dislikes per view, NaN unknown
    emb: np.ndarray  # (V, d) float32
    has_emb: np.ndarray  # (V,) bool
    text: list[dict[str, str]]  # per row: title, channel_name, category, language
    next_upload: np.ndarray = field(default=None)  # type: ignore[assignment]  # (V,) row or -1

    def __post_init__(self) -> None:
        self.cat_code = {c: i for i, c in enumerate(self.categories)}
        self.mmr_emb = project(self.emb, MMR_DIMS)
        # Response fields as Python values, built once: a response copies 20 of them.
        pub = self.published_at
        self.items = [
            {"video_id": vid, "title": t.get("title"), "channel_id": ch if ch >= 0 else None,
             "channel_name": t.get("channel_name"), "category": t.get("category"),
             "duration_s": None if d != d else d, "view_count": v,
             "published_at": None if p != p else iso(p)}
            for vid, t, ch, d, v, p in zip(self.ids.tolist(), self.text, self.channel.tolist(),
                                            self.duration_s.tolist(), self.views.tolist(),
                                            pub.tolist(), strict=True)
        ]  # fmt: skip
        # The channel's next upload after each video: rows ordered by (channel, time).
        order = np.lexsort((np.nan_to_num(self.published_at, nan=-1.0), self.channel))
        nxt = np.full(len(self.ids), -1, np.int64)
        same = (self.channel[order[1:]] == self.channel[order[:-1]]) & (
            self.channel[order[1:]] >= 0
        )
        nxt[order[:-1][same]] = order[1:][same]
        self.next_upload = nxt

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n,) int64, found (n,) bool) of video ``ids``; rows of unknown ids are 0."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        r = np.searchsorted(self.ids, ids).clip(0, len(self.ids) - 1)
        return r, self.ids[r] == ids

    def row(self, video_id: int) -> int | None:
        r, ok = self.rows(np.array([video_id]))
        return int(r[0]) if ok[0] else None

    def item(self, r: int) -> dict[str, Any]:
        """The response fields of row ``r`` (a copy)."""
        return self.items[r].copy()


# MMR compares a pool with each pick 20 times a page: on the top MMR_DIMS principal
# directions of the embeddings (unit rows again) that costs an eighth of 256-d, and the
# cosines it ranks by change little (diversity needs the order, not the digits).
MMR_DIMS = 32


def project(emb: np.ndarray, dims: int, sample: int = 20_000) -> np.ndarray:
    """(V, min(d, dims)) unit rows: ``emb`` on its top principal directions (from a
    fixed sample of rows); ``emb`` itself when it has ``dims`` columns or fewer."""
    if emb.shape[1] <= dims or len(emb) < dims:
        return emb
    rows = emb[np.linspace(0, len(emb) - 1, min(sample, len(emb))).astype(np.int64)]
    _, _, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    out = (emb @ vt[:dims].T).astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(epoch_s)))


def empty_catalogue(generation: str = "") -> Catalogue:
    z = np.zeros(0)
    return Catalogue(generation, z.astype(np.int64), z.astype(np.int64), z.astype(np.int32), [],
                     z, z, z.astype(np.int64), z.astype(np.float32), z.astype(np.float32),
                     np.zeros((0, 1), np.float32), z.astype(bool), [])  # fmt: skip


def load_catalogue(client: Any, keys: RedisKeys, gen: str, batch: int = 2000) -> Catalogue:
    """Every video hash of generation ``gen`` (found by SCAN), as a :class:`Catalogue`."""
    pattern = f"{keys.namespace(gen)}:v:*:features"
    names = sorted({k for k in client.scan_iter(match=pattern, count=10_000)})
    rows: list[tuple[int, dict[str, Any]]] = []
    for i in range(0, len(names), batch):
        pipe = client.pipeline(transaction=False)
        for name in names[i : i + batch]:
            pipe.hgetall(name)
        for name, raw in zip(names[i : i + batch], pipe.execute(), strict=True):
            vid = int(name.decode().rsplit("{", 1)[1].split("}", 1)[0])
            rows.append((vid, decode_features(raw, VIDEO_FEATURES)))
    return catalogue_from_rows(gen, rows)


def catalogue_from_rows(gen: str, rows: list[tuple[int, dict[str, Any]]]) -> Catalogue:
    """A catalogue from (video id, decoded video features) pairs."""
    rows = sorted(rows, key=lambda r: r[0])
    n = len(rows)
    if n == 0:
        return empty_catalogue(gen)

    def col(name: str, default: float, dtype: Any) -> np.ndarray:
        return np.array([f.get(name, default) for _, f in rows], dtype=dtype)

    categories = sorted({f["category"] for _, f in rows if f.get("category")})
    code = {c: i for i, c in enumerate(categories)}
    dims = {len(f["embedding"]) for _, f in rows if "embedding" in f}
    d = max(dims) if dims else 1
    emb = np.zeros((n, d), np.float32)
    has = np.zeros(n, bool)
    for i, (_, f) in enumerate(rows):
        v = f.get("embedding")
        if v is not None and len(v) == d:
            emb[i], has[i] = v, True
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    return Catalogue(
        generation=gen, ids=np.array([v for v, _ in rows], np.int64),
        channel=col("channel_id", -1, np.int64),
        category=np.array([code.get(f.get("category"), -1) for _, f in rows], np.int32),
        categories=categories, published_at=col("published_at", np.nan, np.float64),
        duration_s=col("duration_s", np.nan, np.float64), views=col("views", 0, np.int64),
        completion=col("avg_completion", np.nan, np.float32),
        dislike=col("dislike_ratio", np.nan, np.float32), emb=emb, has_emb=has,
        text=[{k: f[k] for k in ITEM_TEXT if k in f} for _, f in rows],
    )  # fmt: skip


@dataclass
class Lists:
    """Trending and popular lists: name -> (ids (n,) int64, scores (n,) float64), best first.

    Names: ``trending``, ``trending:<category>``, ``country:<CC>``, ``lang:<ll>``.
    """

    generation: str | None = None
    lists: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.zeros(0, np.int64), np.zeros(0))
        return self.lists.get(name, empty)


def load_lists(client: Any, root: str, gen: str | None) -> Lists:
    """The fresh generation's lists (the 4-hourly ``gen``'s where no fresh one is live)."""
    fresh = RedisKeys.fresh(root)
    fgen = client.get(fresh.pointer)
    keys, lgen = (fresh, fgen.decode()) if fgen else (RedisKeys(root), gen)
    if lgen is None:
        return Lists()
    raw = client.hget(keys.meta(lgen), JSON_FIELD)
    meta = json.loads(raw) if raw else {}
    wanted = {"trending": keys.trending(lgen)}
    wanted |= {f"trending:{c}": keys.trending(lgen, c) for c in meta.get("categories", [])}
    wanted |= {f"country:{c}": keys.popular_country(lgen, c) for c in meta.get("countries", [])}
    wanted |= {f"lang:{c}": keys.popular_language(lgen, c) for c in meta.get("languages", [])}
    pipe = client.pipeline(transaction=False)
    for key in wanted.values():
        pipe.zrevrange(key, 0, -1, withscores=True)
    out = {}
    for name, rows in zip(wanted, pipe.execute(), strict=True):
        if rows:
            out[name] = (np.array([int(m) for m, _ in rows], np.int64),
                         np.array([s for _, s in rows], np.float64))  # fmt: skip
    return Lists(lgen, out)


@dataclass
class ExploreStats:
    """Impressions and clicks of the fresh videos, row-aligned with ``rows``."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # catalogue rows
    impressions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    clicks: np.ndarray = field(default_factory=lambda: np.zeros(0))


def load_explore_stats(
    client: Any, live: LiveKeys, cat: Catalogue, fresh_rows: np.ndarray
) -> ExploreStats:
    """Counts of the catalogue's ``fresh_rows`` from the stats hash (one HMGET)."""
    if not len(fresh_rows):
        return ExploreStats()
    vids = cat.ids[fresh_rows].tolist()
    fields = [f"{STATS_IMPRESSIONS}{v}" for v in vids] + [f"{STATS_CLICKS}{v}" for v in vids]
    values = client.hmget(live.explore_stats, fields)
    counts = np.array([int(v) if v is not None else 0 for v in values], np.float64)
    n = len(vids)
    return ExploreStats(fresh_rows, counts[:n], np.minimum(counts[n:], counts[:n]))


def fresh_rows(cat: Catalogue, now_s: float, max_age_h: float) -> np.ndarray:
    """Rows of the catalogue published within ``max_age_h`` before ``now_s``."""
    age = now_s - cat.published_at
    return np.flatnonzero((age >= 0) & (age < max_age_h * 3600.0))


@dataclass
class LiveState:
    """One worker's in-memory view; replaced field by field by :func:`refresh`."""

    generation: str | None = None
    catalogue: Catalogue = field(default_factory=empty_catalogue)
    lists: Lists = field(default_factory=Lists)
    lists_loaded_at: float = 0.0
    stats: ExploreStats = field(default_factory=ExploreStats)
    index_ok: bool | None = None
    errors: int = 0  # refreshes that failed (Redis down): the snapshot keeps serving


def refresh(state: LiveState, client: Any, cfg: Config, now_s: float) -> None:
    """One refresh of ``state`` (run in a thread): pointer, catalogue on a new
    generation, lists when due or after a new generation, exploration counts."""
    root = cfg.precompute.key_prefix
    keys = RedisKeys(root)
    raw = client.get(keys.pointer)
    gen = raw.decode() if raw else None
    if gen is not None and gen != state.catalogue.generation:
        state.catalogue = load_catalogue(client, keys, gen)
        state.lists_loaded_at = 0.0
    state.generation = gen
    if now_s - state.lists_loaded_at >= cfg.serving.snapshot_refresh_s:
        state.lists = load_lists(client, root, gen)
        state.lists_loaded_at = now_s
    rows = fresh_rows(state.catalogue, now_s, cfg.serving.fresh_age_h)
    state.stats = load_explore_stats(client, LiveKeys(root), state.catalogue, rows)
    if state.lists_loaded_at == now_s and len(state.catalogue):  # once a minute or so
        prune_explore_stats(client, LiveKeys(root), state.catalogue, rows)


def prune_explore_stats(client: Any, live: LiveKeys, cat: Catalogue, fresh: np.ndarray) -> int:
    """Drop the counts of videos the catalogue knows and that are no longer fresh (the
    hash would otherwise grow by every video ever clicked); returns fields dropped."""
    fields = [f.decode() if isinstance(f, bytes) else f for f in client.hkeys(live.explore_stats)]
    if not fields:
        return 0
    ids = np.array([int(f.split(":", 1)[1]) for f in fields], np.int64)
    rows, known = cat.rows(ids)
    stale = known & ~np.isin(rows, fresh)
    drop = [f for f, d in zip(fields, stale.tolist(), strict=True) if d]
    return client.hdel(live.explore_stats, *drop) if drop else 0
