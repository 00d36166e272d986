"""What each serving worker holds in memory, refreshed in the background.

- **The catalogue** (:class:`Catalogue`): every video of the active generation as
  column arrays (channel, category, publish time, quality, the embedding), so that a
  request re-ranks and filters its ~200 candidates with numpy and reads no video hash.
  Reloaded when the generation pointer moves (every 4 h); the old one serves meanwhile.
  The videos of the hourly **new-videos generation** (``RedisKeys.new_videos``: videos
  published since the main index was built, embedded in the same space) are added to
  it (``Catalogue.is_new``) when that pointer moves; the main generation's rows are
  kept in memory (``LiveState.main``), so only the few new hashes are read then.
- **The fresh candidates** (:class:`FreshPool`): the new videos and the videos younger
  than ``serving.fresh_age_h`` that have an embedding, as one contiguous matrix: a home
  request scores them with the user's query embedding in one matrix-vector product.
- **The lists snapshot** (:class:`Lists`): trending and popular lists of the fresh
  (15-minute) generation, else the 4-hourly one. It feeds cold start and exploration,
  and it is the answer when Redis is unreachable, so the homepage is never blank.
- **Exploration counts**: impressions and clicks of the videos younger than
  ``serving.fresh_age_h`` (Thompson sampling's posteriors).
- **The pointer** itself, so the common request makes one Redis round trip.
- **The ranker** (:mod:`videorec.serving.ranker`): the stage-2 model the artifact
  store's ``ranker`` pointer names, loaded in full off the request path and swapped in
  as one reference (``LiveState.ranker``); None while no ranker is published.

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
    STATUS_COMPLETE,
    STATUS_FIELD,
    VIDEO_FEATURES,
    LiveKeys,
    RedisKeys,
    decode_features,
)
from videorec.serving.ranker import RankerStatus

# Video hash fields kept per item for responses (the embedding goes to a matrix).
ITEM_TEXT = ("title", "channel_name", "category", "language")


@dataclass
class Catalogue:
    """The videos of one generation, row-aligned arrays sorted by id.

    ``emb`` is (V, d) float32 with unit rows (zeros where a video has no embedding),
    so a dot product is a cosine similarity. ``is_new`` marks the rows that came from
    the new-videos generation ``new_generation`` (none when it is None).
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
    is_new: np.ndarray = field(default=None)  # type: ignore[assignment]  # (V,) bool
    new_generation: str | None = None
    # Derived in __post_init__ unless given (a merge reuses the main catalogue's).
    items: list[dict[str, Any]] = field(default=None)  # type: ignore[assignment]
    mmr_emb: np.ndarray = field(default=None)  # type: ignore[assignment]
    mmr_basis: np.ndarray | None = None  # (dims, d): mmr_emb's projection, None: emb itself

    def __post_init__(self) -> None:
        self.cat_code = {c: i for i, c in enumerate(self.categories)}
        if self.is_new is None:
            self.is_new = np.zeros(len(self.ids), bool)
        # The new rows that have an embedding, and those embeddings (contiguous): a
        # main video's similar list is merged with their inner products.
        self.new_rows = np.flatnonzero(self.is_new & self.has_emb)
        self.new_emb = np.ascontiguousarray(self.emb[self.new_rows])
        if self.mmr_emb is None:
            self.mmr_emb, self.mmr_basis = project(self.emb, MMR_DIMS)
        if self.items is None:
            self.items = response_items(self.ids, self.text, self.channel, self.duration_s,
                                        self.views, self.published_at)  # fmt: skip
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


def project(
    emb: np.ndarray, dims: int, sample: int = 20_000
) -> tuple[np.ndarray, np.ndarray | None]:
    """((V, min(d, dims)) unit rows, the (dims, d) basis): ``emb`` on its top principal
    directions (from a fixed sample of rows); ``emb`` itself and None when it has
    ``dims`` columns or fewer."""
    if emb.shape[1] <= dims or len(emb) < dims:
        return emb, None
    rows = emb[np.linspace(0, len(emb) - 1, min(sample, len(emb))).astype(np.int64)]
    _, _, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    basis = np.ascontiguousarray(vt[:dims], dtype=np.float32)
    return project_on(emb, basis), basis


def project_on(emb: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """``emb`` on ``basis`` (unit rows again); ``emb`` itself when ``basis`` is None."""
    if basis is None:
        return emb
    out = (emb @ basis.T).astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def response_items(ids: np.ndarray, text: list[dict[str, str]], channel: np.ndarray,
                   duration_s: np.ndarray, views: np.ndarray,
                   published_at: np.ndarray) -> list[dict[str, Any]]:  # fmt: skip
    """Response fields as Python values, built once: a response copies 20 of them."""
    return [
        {"video_id": vid, "title": t.get("title"), "channel_id": ch if ch >= 0 else None,
         "channel_name": t.get("channel_name"), "category": t.get("category"),
         "duration_s": None if d != d else d, "view_count": v,
         "published_at": None if p != p else iso(p)}
        for vid, t, ch, d, v, p in zip(ids.tolist(), text, channel.tolist(),
                                        duration_s.tolist(), views.tolist(),
                                        published_at.tolist(), strict=True)
    ]  # fmt: skip


def iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(epoch_s)))


def empty_catalogue(generation: str = "") -> Catalogue:
    z = np.zeros(0)
    return Catalogue(generation, z.astype(np.int64), z.astype(np.int64), z.astype(np.int32), [],
                     z, z, z.astype(np.int64), z.astype(np.float32), z.astype(np.float32),
                     np.zeros((0, 1), np.float32), z.astype(bool), [])  # fmt: skip


def load_catalogue(client: Any, keys: RedisKeys, gen: str, batch: int = 2000) -> Catalogue:
    """Every video hash of generation ``gen`` (found by SCAN), as a :class:`Catalogue`."""
    return catalogue_from_rows(gen, load_video_rows(client, keys, gen, batch))


def load_video_rows(
    client: Any, keys: RedisKeys, gen: str, batch: int = 2000
) -> list[tuple[int, dict[str, Any]]]:
    """(video id, decoded features) of every video hash of ``gen`` (found by SCAN)."""
    pattern = f"{keys.namespace(gen)}:v:*:features"
    names = sorted({k for k in client.scan_iter(match=pattern, count=10_000)})
    rows: list[tuple[int, dict[str, Any]]] = []
    for i in range(0, len(names), batch):
        pipe = client.pipeline(transaction=False)
        for name in names[i : i + batch]:
            pipe.hgetall(name)
        for name, raw in zip(names[i : i + batch], pipe.execute(), strict=True):
            if not raw:  # expired between the SCAN and the read
                continue
            vid = int(name.decode().rsplit("{", 1)[1].split("}", 1)[0])
            rows.append((vid, decode_features(raw, VIDEO_FEATURES)))
    return rows


def catalogue_from_rows(
    gen: str, rows: list[tuple[int, dict[str, Any]]], dim: int | None = None
) -> Catalogue:
    """A catalogue from (video id, decoded video features) pairs; with ``dim``, an
    embedding of another length counts as none (it is of another model)."""
    rows = sorted(rows, key=lambda r: r[0])
    n = len(rows)
    if n == 0:
        return empty_catalogue(gen)

    def col(name: str, default: float, dtype: Any) -> np.ndarray:
        return np.array([f.get(name, default) for _, f in rows], dtype=dtype)

    categories = sorted({f["category"] for _, f in rows if f.get("category")})
    code = {c: i for i, c in enumerate(categories)}
    dims = {len(f["embedding"]) for _, f in rows if "embedding" in f}
    d = dim or (max(dims) if dims else 1)
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


def with_new_videos(
    main: Catalogue, rows: list[tuple[int, dict[str, Any]]], new_gen: str | None
) -> Catalogue:
    """``main`` plus the new-videos generation ``new_gen``'s video ``rows`` (a video in
    both keeps its main row), marked in ``is_new``. Only the new rows are parsed: the
    main catalogue's columns, response items and MMR projection are reused."""
    ids = np.array([v for v, _ in rows], np.int64)
    _, in_main = main.rows(ids)
    rows = [r for r, dup in zip(rows, in_main.tolist(), strict=True) if not dup]
    rows = list({v: (v, f) for v, f in rows}.values())  # one row per id
    if new_gen is None or not rows or not len(main):
        return main
    part = catalogue_from_rows(new_gen, rows, dim=main.emb.shape[1])
    categories = sorted(set(main.categories) | set(part.categories))
    code = {c: i for i, c in enumerate(categories)}

    def recode(cat: Catalogue) -> np.ndarray:
        table = np.array([code[c] for c in cat.categories] + [-1], np.int32)
        return table[cat.category]  # -1 indexes the trailing -1: unknown stays unknown

    ids = np.concatenate([main.ids, part.ids])
    order = np.argsort(ids, kind="stable")

    def cat2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])[order]

    text, items = main.text + part.text, main.items + part.items
    order_l = order.tolist()
    return Catalogue(
        generation=main.generation, ids=ids[order], channel=cat2(main.channel, part.channel),
        category=cat2(recode(main), recode(part)), categories=categories,
        published_at=cat2(main.published_at, part.published_at),
        duration_s=cat2(main.duration_s, part.duration_s), views=cat2(main.views, part.views),
        completion=cat2(main.completion, part.completion),
        dislike=cat2(main.dislike, part.dislike), emb=cat2(main.emb, part.emb),
        has_emb=cat2(main.has_emb, part.has_emb), text=[text[i] for i in order_l],
        is_new=cat2(np.zeros(len(main), bool), np.ones(len(part), bool)),
        new_generation=new_gen, items=[items[i] for i in order_l],
        mmr_emb=cat2(main.mmr_emb, project_on(part.emb, main.mmr_basis)),
        mmr_basis=main.mmr_basis,
    )  # fmt: skip


def new_videos_meta(client: Any, root: str, ngen: str) -> dict[str, Any] | None:
    """The new-videos generation's metadata if it is complete, else None."""
    nkeys = RedisKeys.new_videos(root)
    raw = client.hgetall(nkeys.meta(ngen))
    status = raw.get(STATUS_FIELD.encode()) or raw.get(STATUS_FIELD)
    body = raw.get(JSON_FIELD.encode()) or raw.get(JSON_FIELD)
    if not body or (status.decode() if isinstance(status, bytes) else status) != STATUS_COMPLETE:
        return None
    meta = json.loads(body)
    if not isinstance(meta, dict):
        raise ValueError(f"new-videos generation {ngen}: metadata is not a JSON object")
    return meta


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
    """The fresh generation's lists, else the 4-hourly ``gen``'s: where no fresh one is
    live, or its keys are gone (the pointer has no TTL, its lists expire after
    ``precompute.fresh_ttl_s``: a 15-minute job stalled that long). Empty when neither
    has a trending list."""
    fresh = RedisKeys.fresh(root)
    fgen = client.get(fresh.pointer)
    for keys, lgen in ((fresh, fgen.decode() if fgen else None), (RedisKeys(root), gen)):
        if lgen is not None and (lists := _read_lists(client, keys, lgen)).lists.get("trending"):
            return lists
    return Lists()


def _read_lists(client: Any, keys: RedisKeys, lgen: str) -> Lists:
    """Generation ``lgen``'s lists under ``keys`` (those its metadata names)."""
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
    catalogue: Catalogue | None = None  # the catalogue ``rows`` index


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
    return ExploreStats(fresh_rows, counts[:n], np.minimum(counts[n:], counts[:n]), cat)


def fresh_rows(cat: Catalogue, now_s: float, max_age_h: float) -> np.ndarray:
    """Rows of the catalogue published within ``max_age_h`` before ``now_s``."""
    age = now_s - cat.published_at
    return np.flatnonzero((age >= 0) & (age < max_age_h * 3600.0))


@dataclass
class FreshPool:
    """The fresh candidates of ``catalogue``: its new-videos rows and its rows younger
    than ``serving.fresh_age_h``, those with an embedding; ``emb`` (m, d) their unit
    embeddings, contiguous, so scoring them for a user is one matrix-vector product."""

    catalogue: Catalogue | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    emb: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.float32))


def fresh_pool(cat: Catalogue, young: np.ndarray, previous: FreshPool | None = None) -> FreshPool:
    """The :class:`FreshPool` of ``cat`` given its ``young`` rows (``previous`` when it
    holds the same rows of the same catalogue: nothing is copied then)."""
    rows = np.union1d(np.asarray(young, np.int64), np.flatnonzero(cat.is_new))
    rows = rows[cat.has_emb[rows]]
    if previous is not None and previous.catalogue is cat and np.array_equal(rows, previous.rows):
        return previous
    return FreshPool(cat, rows, np.ascontiguousarray(cat.emb[rows]))


@dataclass
class LiveState:
    """One worker's in-memory view; replaced field by field by :func:`refresh`."""

    generation: str | None = None
    catalogue: Catalogue = field(default_factory=empty_catalogue)  # main + new videos
    main: Catalogue = field(default_factory=empty_catalogue)  # the main generation's alone
    main_index_version: str | None = None  # the index the main generation was built from
    new_pointer: str | None = None  # the new-videos pointer the catalogue was built for
    new_generation: str | None = None  # the new-videos generation merged (None: none)
    new_ignored: str | None = None  # why new_pointer's generation is not merged
    lists: Lists = field(default_factory=Lists)
    lists_loaded_at: float = 0.0
    stats: ExploreStats = field(default_factory=ExploreStats)
    fresh: FreshPool = field(default_factory=FreshPool)
    index_ok: bool | None = None
    errors: int = 0  # refreshes that failed (Redis down): the snapshot keeps serving
    # The served ranker (a ServedRanker; None: the rule ranks) and what its refresh saw.
    ranker: Any = None
    ranker_status: RankerStatus = field(default_factory=RankerStatus)


def refresh(state: LiveState, client: Any, cfg: Config, now_s: float) -> None:
    """One refresh of ``state`` (run in a thread): the pointers; the catalogue on a new
    main generation or a new new-videos generation; lists when due or after a new
    generation; exploration counts and fresh candidates."""
    root = cfg.precompute.key_prefix
    keys = RedisKeys(root)
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.pointer)
    pipe.get(RedisKeys.new_videos(root).pointer)
    raw, nraw = pipe.execute()
    gen = raw.decode() if raw else None
    ngen = nraw.decode() if nraw else None
    moved = gen is not None and gen != state.main.generation
    if moved:
        main = load_catalogue(client, keys, gen)
        state.main_index_version = index_version(client, keys, gen)
        state.main = main
        state.lists_loaded_at = 0.0
    if moved or ngen != state.new_pointer:
        try:
            cat, merged, ignored = merge_new_videos(client, root, state, ngen)
        except Exception:  # unreadable: the catalogue as it was (the main one alone after
            state.errors += 1  # a new main generation); tried again next refresh
            if moved:
                state.catalogue, state.new_generation, state.new_pointer = state.main, None, None
                state.new_ignored = "unreadable"
        else:
            state.catalogue, state.new_generation, state.new_ignored = cat, merged, ignored
            state.new_pointer = ngen
    state.generation = gen
    if now_s - state.lists_loaded_at >= cfg.serving.snapshot_refresh_s:
        lists = load_lists(client, root, gen)
        # Every generation's lists expired (precompute down past its TTLs): the lists
        # served last stay, stale but not blank, until a generation has lists again.
        if lists.lists or not state.lists.lists:
            state.lists = lists
        state.lists_loaded_at = now_s
    cat = state.catalogue
    young = fresh_rows(cat, now_s, cfg.serving.fresh_age_h)
    rows = np.union1d(young, np.flatnonzero(cat.is_new))  # new videos are explored too
    state.fresh = fresh_pool(cat, young, state.fresh)
    state.stats = load_explore_stats(client, LiveKeys(root), cat, rows)
    if state.lists_loaded_at == now_s and len(cat):  # once a minute or so
        prune_explore_stats(client, LiveKeys(root), cat, rows)


def index_version(client: Any, keys: RedisKeys, gen: str) -> str | None:
    """The index version generation ``gen``'s metadata records (None: not recorded)."""
    raw = client.hget(keys.meta(gen), JSON_FIELD)
    meta = json.loads(raw) if raw else {}
    version = meta.get("index_version") if isinstance(meta, dict) else None
    return str(version) if version else None


def merge_new_videos(
    client: Any, root: str, state: LiveState, ngen: str | None
) -> tuple[Catalogue, str | None, str | None]:
    """(catalogue, new-videos generation merged, why none was) for the new-videos
    pointer ``ngen``: ``state.main`` plus its videos when its metadata is complete and
    names the main generation's index version (when the main one records it: other
    embeddings are in another model's space). Raises when it cannot be read."""
    if ngen is None:
        return state.main, None, None
    meta = new_videos_meta(client, root, ngen)
    if meta is None:
        return state.main, None, "incomplete"
    want = state.main_index_version
    if want is not None and str(meta.get("index_version")) != want:
        return state.main, None, "index_mismatch"
    rows = load_video_rows(client, RedisKeys.new_videos(root), ngen)
    cat = with_new_videos(state.main, rows, ngen)
    return cat, ngen if cat is not state.main else None, None


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
