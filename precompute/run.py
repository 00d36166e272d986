"""``precompute``: one index version, one logical time -> one Redis generation, published.

Steps, each a function below:

1. Inputs: the index version (must have passed its gate), the model its manifest
   names and that model's user and video embeddings (their dimension must match the
   index's, and the videos must be the index's), the features version (by default the
   one the model was trained on) and the data set's ``videos`` table.
2. Generation id from (logical time, model, index and features versions, the
   precompute config's shaping fields, the code). When the pointer already names it,
   the run returns at once: re-running a finished run changes nothing. When the active
   generation outranks it, the run publishes nothing: one of an index published later
   (the index pointer's generation, recorded as ``index_generation``) outranks one of
   an index published earlier whatever their logical times, so a retrain's generation
   (its logical date) replaces the later 4-hourly run's of the index it replaced;
   between generations of one index, the later logical time.
   Then the run takes the generation's lease (``RedisKeys.lease``): a twin run for the
   same generation (the retrain's own beside the one the index's asset triggers, a
   hand run, an Airflow retry beside a zombie) waits while another holds it and then
   finds the generation published and skips, instead of writing every key a second
   time; if the holder failed or was killed (its lease lapses after
   ``precompute.lease_s``), the twin writes it.
3. Item-to-item recall@k of the index against exact search on a seeded sample of
   videos; below ``similar_recall_min`` nothing is written.
4. Writes, pipelined and TTL'd: base recommendations per active user (chunks of
   users with similar watched counts, one FAISS batch and one exclusion mask each),
   similar videos per video, trending (global, per category), popular per country
   and per language.
5. Every key counted again, the metadata marked complete, the pointer flipped by
   compare-and-swap (``publish.flip``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec import redis_keys
from videorec.artifact_names import (
    FEATURES,
    INDEX,
    MODEL,
    ONLINE_USER_FEATURES,
    ONLINE_VIDEO_FEATURES,
    USER_EMBEDDINGS_FILE,
    VIDEO_EMBEDDINGS_FILE,
)
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config, config_digest, source_digest
from videorec.examples import Resolver
from videorec.indexing.reader import IndexInputError, LoadedIndex, load_index, read_embeddings
from videorec.indexing.slots import active_version
from videorec.precompute import compute, inputs, lists
from videorec.precompute.publish import (
    GenerationWriter,
    PrecomputeError,
    PrecomputeInputError,
    begin,
    built_at,
    chunks,
    pointer_or_skip,
    publish_generation,
    read_meta,
    write_meta,
)
from videorec.redis_keys import STATUS_COMPLETE, RedisKeys, RedisLease, active_generation
from videorec.retention import holding

# Config fields that do not change what a generation holds (so not in its id).
RUNTIME_FIELDS = {
    "key_prefix", "ttl_s", "users_per_chunk", "pipeline_commands", "engine", "spark_partitions",
    "fresh_lookback_h", "fresh_ttl_s", "lease_s", "lease_wait_s",
}  # fmt: skip


@dataclass
class Inputs:
    """Everything one run reads, resolved and checked."""

    index: LoadedIndex
    metric: str
    model_version: str
    features_version: str
    fdir: Path
    window: tuple[dt.datetime, dt.datetime]
    catalogue: np.ndarray  # (n,) int64 video ids, sorted
    video_vectors: np.ndarray  # (n, d) float32, rows aligned with catalogue
    user_ids: np.ndarray  # (u,) int64, sorted
    user_vectors: np.ndarray  # (u, d) float32
    videos: pa.Table  # video_id, channel_id, title, category (the data set's table)
    data_dir: str
    index_dir: Path  # the index version's local folder (the index file is shipped from it)
    model_dir: Path  # the model version's local folder (its embeddings)
    # Local copies of versions the features version refers to (examples by reference).
    resolve: Resolver | None = None


def utc(t: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC; a naive one is refused (the logical time must be explicit)."""
    if not isinstance(t, dt.datetime) or t.tzinfo is None:
        raise ValueError(f"logical_time must be a timezone-aware datetime, got {t!r}")
    return t.astimezone(dt.UTC)


def generation_id(
    cfg: Config, *, logical_time: dt.datetime, model_version: str, index_version: str,
    features_version: str, data: str,
) -> str:  # fmt: skip
    """``<yyyymmddThhmm>-<digest>``: the logical time, then a digest of the inputs'
    versions, the data set whose catalogue it reads (``data``, resolved), the
    precompute config fields that shape the output, and the code."""
    shaping = cfg.precompute.model_dump(mode="json", exclude=RUNTIME_FIELDS)
    code = (
        source_digest("videorec.precompute")
        + hashlib.sha256(Path(redis_keys.__file__).read_bytes()).hexdigest()[:12]
    )
    digest = config_digest({
        "t": utc(logical_time).isoformat(), "model": model_version, "index": index_version,
        "features": features_version, "data": data, "precompute": shaping, "code": code,
    })  # fmt: skip
    return f"{utc(logical_time):%Y%m%dT%H%M}-{digest[:10]}"


def _manifest(store: ArtifactStore, name: str, version: str, what: str) -> dict[str, Any]:
    try:
        return store.read_manifest(name, version)
    except VersionNotFoundError:
        raise PrecomputeInputError(
            f"{what} {version!r} does not exist ({store.uri(name)})"
        ) from None


def resolve_versions(
    store: ArtifactStore, index_version: str, features_version: str | None
) -> tuple[dict[str, Any], str, str]:
    """(index manifest, model version, features version), checked to exist."""
    man = _manifest(store, INDEX, index_version, "index version")
    if man.get("gate") != "passed":
        raise PrecomputeInputError(f"index version {index_version!r} did not pass its gate")
    model_version = man.get("model_version")
    if not model_version:
        raise PrecomputeInputError(
            f"index version {index_version!r}: manifest names no model_version"
        )
    mman = _manifest(store, MODEL, model_version, "model version")
    features_version = features_version or mman.get("features_version")
    if not features_version:
        raise PrecomputeInputError(f"model {model_version!r} names no features_version; pass one")
    _manifest(store, FEATURES, features_version, "features version")
    return man, model_version, features_version


def input_data(
    cfg: Config, store: ArtifactStore, features_version: str, data_dir: str | None
) -> str:
    """The data set a run reads the catalogue from, resolved: ``data_dir``, else the one
    the features version was built from."""
    data = data_dir or store.read_manifest(FEATURES, features_version).get("data")
    if not data:
        raise PrecomputeInputError(f"features {features_version!r} name no data set; pass data_dir")
    return cfg.resolve_location(data)


def load_inputs(
    cfg: Config, store: ArtifactStore, index_version: str, model_version: str,
    features_version: str, data_dir: str, t: dt.datetime,
) -> Inputs:  # fmt: skip
    """Read and cross-check the index, the embeddings, the features and the videos
    (``data_dir``: :func:`input_data`)."""
    from videorec.dataset import read_table

    try:
        # Batched searches of thousands of users: on the GPU when there is one.
        loaded = load_index(store, index_version, gpu=True)
    except (OSError, RuntimeError) as err:
        raise PrecomputeInputError(f"index version {index_version!r}: cannot load: {err}") from None
    mdir = store.local_path(MODEL, model_version)
    try:
        videos_e = read_embeddings(mdir / VIDEO_EMBEDDINGS_FILE)
        users_e = read_embeddings(mdir / USER_EMBEDDINGS_FILE)
    except IndexInputError as err:
        raise PrecomputeInputError(f"model {model_version!r}: {err}") from None
    d = loaded.index.d
    for what, e in (("video", videos_e), ("user", users_e)):
        if e.vectors.shape[1] != d:
            raise PrecomputeInputError(
                f"model {model_version!r}: {what} embeddings have dimension "
                f"{e.vectors.shape[1]}, index {index_version!r} has {d}"
            )
    if loaded.index.ntotal != len(videos_e.ids):
        raise PrecomputeInputError(
            f"index {index_version!r} holds {loaded.index.ntotal:,} vectors, model "
            f"{model_version!r} exports {len(videos_e.ids):,} videos"
        )
    fman = store.read_manifest(FEATURES, features_version)
    window = inputs.window_of(fman)
    if window[1] > t:
        raise PrecomputeInputError(
            f"features {features_version!r} end at {window[1].isoformat()}, after the "
            f"logical time {t.isoformat()}: a run may not read its future"
        )
    videos = read_table(data_dir, "videos").select(["video_id", "channel_id", "title", "category"])
    vo, uo = np.argsort(videos_e.ids), np.argsort(users_e.ids)
    return Inputs(
        index=loaded, metric=loaded.manifest.get("metric", "inner_product"),
        model_version=model_version, features_version=features_version,
        fdir=store.local_path(FEATURES, features_version), window=window,
        catalogue=videos_e.ids[vo], video_vectors=np.ascontiguousarray(videos_e.vectors[vo]),
        user_ids=users_e.ids[uo], user_vectors=np.ascontiguousarray(users_e.vectors[uo]),
        videos=videos, data_dir=data_dir, index_dir=store.local_path(INDEX, index_version),
        model_dir=mdir, resolve=store.local_path,
    )  # fmt: skip


# ---- base recommendations


def active_users(cfg: Config, t: dt.datetime, watched: inputs.Watched) -> np.ndarray:
    """(a,) sorted ids of users with a play in ``precompute.active_window_days`` before ``t``."""
    users, last = watched.last_played_per_user()
    since = (t - dt.timedelta(days=cfg.precompute.active_window_days)).timestamp()
    return users[(last >= since) & (last <= t.timestamp())]


def recs_work(inp: Inputs, active: np.ndarray, watched: inputs.Watched) -> RecsWork:
    """The users to write, ordered by watched count (so a chunk shares a search width),
    with their vectors and their watched pairs grouped in the same order."""
    has_emb = compute.isin_sorted(inp.user_ids, active)
    users = active[has_emb]
    known = compute.isin_sorted(users, watched.user_id)
    wrow = np.searchsorted(users, watched.user_id[known])
    counts = np.bincount(wrow, minlength=len(users))
    order = np.argsort(counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    prow = rank[wrow]
    by_row = np.argsort(prow, kind="stable")
    return RecsWork(
        user_ids=users[order], vectors=inp.user_vectors[np.searchsorted(inp.user_ids, users)][order],
        pair_rows=prow[by_row], pair_videos=watched.video_id[known][by_row],
        no_embedding=int((~has_emb).sum()),
    )  # fmt: skip


@dataclass
class RecsWork:
    """Users in write order: (u,) ids, (u, d) vectors, and the watched pairs as (p,) rows
    into that order (sorted) and (p,) video ids."""

    user_ids: np.ndarray
    vectors: np.ndarray
    pair_rows: np.ndarray
    pair_videos: np.ndarray
    no_embedding: int


def write_recs(
    w: GenerationWriter, inp: Inputs, cfg: Config, t: dt.datetime, watched: inputs.Watched
) -> dict[str, Any]:
    """Top ``recs_k`` unwatched videos for every active user with an embedding."""
    p = cfg.precompute
    work = recs_work(inp, active_users(cfg, t, watched), watched)
    fam = w.family("recs", lambda u: w.keys.user_recs(w.gen, u))
    slices = list(chunks(len(work.user_ids), p.users_per_chunk))
    bounds = [np.searchsorted(work.pair_rows, [sl.start, sl.stop]) for sl in slices]

    def search(i: int) -> tuple[np.ndarray, np.ndarray]:
        sl, (lo, hi) = slices[i], bounds[i]
        width = compute.watched_width(work.pair_rows[lo:hi] - sl.start, sl.stop - sl.start)
        return compute.search_wide(inp.index.index, work.vectors[sl], p.recs_k + width)

    lengths = []
    # The next chunk's search (FAISS, GIL released) runs while this one's exclusion,
    # packing and pipelined writes run here: the stage costs about the larger of the
    # two, not their sum.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss") as pool:
        pending = pool.submit(search, 0) if slices else None
        for i, sl in enumerate(slices):
            dist, found = pending.result()
            if i + 1 < len(slices):
                pending = pool.submit(search, i + 1)
            lo, hi = bounds[i]
            top = compute.keep_unwatched(
                dist, found, work.pair_rows[lo:hi] - sl.start,
                work.pair_videos[lo:hi], p.recs_k, metric=inp.metric,
            )  # fmt: skip
            w.put_blobs(
                fam, work.user_ids[sl], redis_keys.encode_rows(top.ids, top.scores, top.lengths)
            )
            lengths.append(top.lengths)
    return recs_stats(work, np.concatenate(lengths) if lengths else np.zeros(0, np.int64), p.recs_k)


def recs_stats(work: RecsWork, lengths: np.ndarray, k: int) -> dict[str, Any]:
    """The metadata's summary of the base recommendations written."""
    counts = np.bincount(work.pair_rows, minlength=len(work.user_ids))
    return {
        "active_users": len(work.user_ids) + work.no_embedding,
        "users_without_embedding": work.no_embedding, "watched_pairs": len(work.pair_rows),
        "max_watched": int(counts.max()) if len(counts) else 0,
        "recs_per_user_mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        "users_short_of_k": int((lengths < k).sum()),
    }  # fmt: skip


# ---- similar videos


def reupload_keys(videos: pa.Table) -> np.ndarray:
    """(m,) str per row of ``videos``: "<channel>\\0<title>", the title lower-cased with
    whitespace collapsed; "" when either is unknown."""
    title = pc.utf8_trim_whitespace(
        pc.utf8_lower(pc.replace_substring_regex(videos["title"], r"\s+", " "))
    )
    key = pc.binary_join_element_wise(pc.cast(videos["channel_id"], pa.string()), title, "\x00")
    key = pc.if_else(pc.equal(title, ""), pa.scalar(None, pa.string()), key)
    return np.asarray(pc.fill_null(key, "").to_numpy(zero_copy_only=False), dtype=str)


def similar_recall(inp: Inputs, k: int, sample: int, seed: int) -> float:
    """Item-to-item recall@k of the index against exact search, the video itself left
    out of both, on a seeded sample of the catalogue."""
    n = len(inp.catalogue)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    k1 = min(k + 1, n)
    q = inp.video_vectors[rows]
    truth = inp.catalogue[compute.exact_top(inp.video_vectors, q, k1, inp.metric)]
    _, found = inp.index.index.search(q, k1)
    me = inp.catalogue[rows][:, None]

    def without_self(m: np.ndarray) -> np.ndarray:
        order = np.argsort(m == me, axis=1, kind="stable")[:, : k1 - 1 if k1 > k else k1]
        return np.take_along_axis(m, order, axis=1)

    return compute.recall_vs_exact(without_self(found), without_self(truth))


def write_similar(w: GenerationWriter, inp: Inputs, cfg: Config) -> dict[str, Any]:
    """Top ``similar_k`` videos for every catalogue video, without it and its reuploads."""
    p = cfg.precompute
    vids = np.asarray(inp.videos["video_id"].to_numpy(zero_copy_only=False), dtype=np.int64)
    groups = compute.duplicate_groups(inp.catalogue, vids, reupload_keys(inp.videos))
    sizes = np.bincount(groups)
    extra = int(sizes.max()) if len(sizes) else 1  # the video and all of its reuploads
    fam = w.family("similar", lambda v: w.keys.similar(w.gen, v))
    short = 0
    for sl in chunks(len(inp.catalogue), p.users_per_chunk):
        rows = np.arange(sl.start, sl.stop)

        def excluded(found: np.ndarray, rows: np.ndarray = rows) -> np.ndarray:
            pos = np.minimum(np.searchsorted(inp.catalogue, found), len(inp.catalogue) - 1)
            return groups[pos] == groups[rows][:, None]

        top = compute.search_excluding(
            inp.index.index, inp.video_vectors[rows], p.similar_k, extra, excluded,
            metric=inp.metric,
        )  # fmt: skip
        blobs = redis_keys.encode_rows(top.ids, top.scores, top.lengths)
        w.put_blobs(fam, inp.catalogue[rows], blobs)
        short += int((top.lengths < p.similar_k).sum())
    return {"reupload_groups": int((sizes > 1).sum()), "videos_short_of_k": short}


# ---- the online feature store


def encoded_columns(table: pa.Table, schema: dict[str, str]) -> dict[str, list[Any]]:
    """{field: (m,) stored values, None for nulls} for each ``schema`` field in ``table``.

    Whole columns are converted by Arrow (numbers to text, timestamps to epoch
    seconds, id lists to packed bytes sliced from one buffer); only the JSON lists
    are built per row.
    """
    out: dict[str, list[Any]] = {}
    for name, kind in schema.items():
        if name not in table.column_names:
            continue
        col = table[name].combine_chunks()
        if pa.types.is_timestamp(col.type):
            secs = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us", "UTC")), pa.int64()), 1e6)
            col = secs
        if kind in (redis_keys.INT, redis_keys.FLOAT):
            if pa.types.is_floating(col.type):
                col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
            out[name] = pc.cast(col, pa.string()).to_pylist()
        elif kind == redis_keys.TEXT:
            out[name] = pc.cast(col, pa.string()).to_pylist()
        elif kind == redis_keys.IDS:
            out[name] = _packed_lists(col)
        elif kind == redis_keys.JSON_LIST:
            out[name] = [
                None if v is None else redis_keys.encode_field(kind, [list(x.values()) for x in v])
                for v in col.to_pylist()
            ]
        else:
            raise ValueError(f"{name}: kind {kind!r} is not read from a table")
    return out


def _packed_lists(col: pa.Array) -> list[bytes | None]:
    """Each row of an int64 list column as little-endian int64 bytes (None for null)."""
    flat = np.asarray(pc.list_flatten(col).to_numpy(zero_copy_only=False), dtype="<i8")
    buf = memoryview(flat.tobytes())
    offsets = (col.offsets.to_numpy() - col.offsets[0].as_py()) * 8
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    return [bytes(buf[offsets[i] : offsets[i + 1]]) if valid[i] else None for i in range(len(col))]


def hash_mappings(columns: dict[str, list[Any]], n: int) -> list[dict[str, Any]]:
    """(n,) HSET mappings: per row, its non-null fields."""
    names = list(columns)
    rows = zip(*(columns[c] for c in names), strict=True) if names else ([()] * n)
    return [{k: v for k, v in zip(names, row, strict=True) if v is not None} for row in rows]


# Feature hash field -> the online table's column, where the names differ.
USER_COLUMNS = {"history": "recent_history"}


def write_features(w: GenerationWriter, inp: Inputs, t: dt.datetime) -> dict[str, Any]:
    """The online feature store: a hash per user seen in the window up to ``t``, one per
    catalogue video (the index's videos carry their embedding)."""
    ufields = [f for f in redis_keys.USER_FEATURES if f != "embedding"]
    cols = [USER_COLUMNS.get(f, f) for f in ufields]
    uf = inputs.read_columns(inp.fdir, ONLINE_USER_FEATURES, ["user_id", *cols])
    uf = uf.rename_columns(["user_id", *ufields])
    seen = pc.less_equal(uf["last_seen"], pa.scalar(t, uf.schema.field("last_seen").type))
    uf = uf.filter(pc.fill_null(seen, False))
    users = inputs.ids(uf["user_id"])
    maps = hash_mappings(encoded_columns(uf, redis_keys.USER_FEATURES), uf.num_rows)
    # The query embedding goes with the features: serving searches the hour's new
    # videos (not in the base recommendations) with it.
    has_q = compute.isin_sorted(inp.user_ids, users)
    q_rows = np.searchsorted(inp.user_ids, users)
    q_blobs = np.ascontiguousarray(inp.user_vectors, dtype="<f4")
    for i in np.flatnonzero(has_q).tolist():
        maps[i]["embedding"] = q_blobs[q_rows[i]].tobytes()
    w.put_hashes(w.family("user_features", lambda u: w.keys.user_features(w.gen, u)), users, maps)

    vcols = [f for f in redis_keys.VIDEO_FEATURES if f != "embedding"]
    vf = inputs.read_columns(inp.fdir, ONLINE_VIDEO_FEATURES, ["video_id", *vcols])
    vids = inputs.ids(vf["video_id"])
    vmaps = hash_mappings(encoded_columns(vf, redis_keys.VIDEO_FEATURES), vf.num_rows)
    in_index = compute.isin_sorted(inp.catalogue, vids)
    rows = np.searchsorted(inp.catalogue, vids)
    blobs = np.ascontiguousarray(inp.video_vectors, dtype="<f4")
    for i in np.flatnonzero(in_index).tolist():
        vmaps[i]["embedding"] = blobs[rows[i]].tobytes()
    w.put_hashes(w.family("video_features", lambda v: w.keys.video_features(w.gen, v)), vids, vmaps)
    return {"users": len(users), "videos": len(vids), "videos_with_embedding": int(in_index.sum())}


# ---- trending and popular


def trending_lists(inp: Inputs, cfg: Config) -> dict[str | None, tuple[np.ndarray, np.ndarray]]:
    """{None: global, category: its list}, each (video ids, scores) best first."""
    return lists.trending_from_counts(inputs.trending_inputs(inp.fdir), inp.videos, cfg.precompute)


def popular_lists(
    inp: Inputs, cfg: Config, t: dt.datetime, plays: inputs.Plays, column: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{country or language of the player: (video ids, decayed popularity)}, best first."""
    groups = inputs.user_groups(inp.fdir)
    return lists.popular_from_plays(groups, column, plays, t.timestamp(), cfg.precompute)


# ---- the stage


def connect(cfg: Config) -> tuple[Any, str]:
    """A Redis client for the config's server (``services.resolve_redis``) and how it was found."""
    import redis

    from videorec.services import resolve_redis

    endpoint = resolve_redis(cfg)
    return redis.Redis.from_url(endpoint.url), endpoint.how


def precompute(
    cfg: Config,
    *,
    index_version: str,
    logical_time: dt.datetime,
    features_version: str | None = None,
    data_dir: str | None = None,
    store: ArtifactStore | None = None,
    redis: Any = None,
    spark: Any = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write and publish the generation for (``index_version``, ``logical_time``).

    ``features_version`` defaults to the one the index's model was trained on;
    ``data_dir`` (the data set whose ``videos`` table gives channels, titles and
    categories) to the one that features version was built from; ``redis`` to a
    client for the config's server. With ``spark`` (a SparkSession), base
    recommendations are computed and written by its executors (``precompute.spark``);
    everything else, and the publish, stays here. Returns {generation, published, skipped, reason,
    previous, meta}. Raises PrecomputeError (nothing published) on bad inputs, a
    recall below ``similar_recall_min``, or a Redis failure.
    """
    say = log or (lambda _m: None)
    t = utc(logical_time)
    store = store or open_store(cfg)
    p = cfg.precompute
    keys = RedisKeys(p.key_prefix)
    _, model_version, features_version = resolve_versions(store, index_version, features_version)
    data_dir = input_data(cfg, store, features_version, data_dir)
    gen = generation_id(
        cfg, logical_time=t, model_version=model_version, index_version=index_version,
        features_version=features_version, data=data_dir,
    )  # fmt: skip
    client, how = (redis, "the client given") if redis is not None else connect(cfg)
    rank = index_generation_of(store, index_version)
    current, skipped = pointer_or_skip(client, keys, gen, t, how, rank)
    if skipped is not None:
        return skipped
    lease, current, skipped = claim_generation(client, keys, gen, t, how, rank, p, say)
    if skipped is not None:
        return skipped
    assert lease is not None  # held whenever nothing was skipped
    try:
        return _write_and_publish(
            cfg, store, client, keys, gen, t, rank, current,
            (model_version, index_version, features_version, data_dir), spark, say,
        )  # fmt: skip
    finally:
        lease.release()


def claim_generation(
    client: Any, keys: RedisKeys, gen: str, t: dt.datetime, how: str, rank: int | None,
    p: Any, say: Any, poll_s: float = 1.0,
) -> tuple[RedisLease | None, str | None, dict[str, Any] | None]:  # fmt: skip
    """(``gen``'s lease, the pointer's generation, None) once this run holds the lease
    and ``gen`` still needs writing; (None, None, the skipped result) when a twin run
    that held it published ``gen`` (or a newer generation) meanwhile. Waits while
    another run holds it, at most ``p.lease_wait_s`` seconds, then raises
    PrecomputeError (nothing written), as it does when Redis cannot be reached."""
    import redis as redis_lib

    lease = RedisLease(client, keys.lease(gen), round(p.lease_s * 1000))
    waited, deadline = False, time.monotonic() + p.lease_wait_s
    try:
        while not lease.acquire():
            if time.monotonic() >= deadline:
                raise PrecomputeError(
                    f"generation {gen}: another run has held {lease.key} for over "
                    f"{p.lease_wait_s:g} s (precompute.lease_wait_s); nothing written"
                )
            if not waited:
                say(f"generation {gen}: another run is writing it ({lease.key}); waiting")
                waited = True
            time.sleep(poll_s)
    except (redis_lib.exceptions.RedisError, OSError) as err:
        raise PrecomputeError(f"Redis ({how}) is unreachable: {err}") from None
    try:  # checked again once held: the twin may have published and let go in between
        current, skipped = pointer_or_skip(client, keys, gen, t, how, rank)
    except BaseException:
        lease.release()
        raise
    if skipped is None:
        return lease, current, None
    lease.release()
    if waited and skipped["reason"] == "already active":
        skipped = {**skipped, "reason": "written by a twin run: already active"}
    return None, None, skipped


def _write_and_publish(
    cfg: Config, store: ArtifactStore, client: Any, keys: RedisKeys, gen: str,
    t: dt.datetime, rank: int | None, current: str | None, versions: tuple[str, str, str, str],
    spark: Any, say: Any,
) -> dict[str, Any]:  # fmt: skip
    """Write every key of ``gen`` and publish it (the caller holds its lease)."""
    model_version, index_version, features_version, data_dir = versions
    p = cfg.precompute
    result = {"generation": gen, "published": False, "skipped": True, "previous": current}

    # The model's and the features' versions are held while they are read: a hand run
    # for an old index beside a collection keeps them (videorec.retention).
    inputs = {MODEL: [model_version], FEATURES: [features_version]}
    with holding(store, inputs, why=f"precompute {gen}"):
        for name, (version,) in inputs.items():  # checked once held: none can go now
            _manifest(store, name, version, f"{name} version")
        t0 = time.perf_counter()
        inp = load_inputs(cfg, store, index_version, model_version, features_version, data_dir, t)
        recall = similar_recall(inp, p.similar_k, p.similar_recall_sample, p.seed)
        if recall < p.similar_recall_min:
            raise PrecomputeError(
                f"index {index_version!r}: item-to-item recall@{p.similar_k} {recall:.4f} < "
                f"precompute.similar_recall_min {p.similar_recall_min}; nothing published"
            )
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        meta: dict[str, Any] = {
            "generation": gen, "built_at": t.isoformat(), "model_version": model_version,
            "index_version": index_version, "index_generation": rank,
            "features_version": features_version,
            "data": inp.data_dir, "config_digest": cfg.digest(), "key_prefix": p.key_prefix,
            "ttl_s": p.ttl_s, "metric": inp.metric, f"similar_recall@{p.similar_k}": round(recall, 5),
            "similar_recall_sample": min(p.similar_recall_sample, len(inp.catalogue)),
            "trending_as_of": inp.window[1].isoformat(), "previous_generation": current,
        }  # fmt: skip
        t_write = time.perf_counter()
        begin(client, keys, gen, meta, p.ttl_s)
        say(f"generation {gen}: writing under {keys.namespace(gen)}")
        w = GenerationWriter(client, keys, gen, ttl_s=p.ttl_s, batch=p.pipeline_commands)
        meta.update(_write_all(w, inp, cfg, t, spark))
    meta["counts"] = w.verify()
    meta["bytes_per_key"] = {f: w.memory_per_key(fam) for f, fam in w.families.items()}
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["status"] = STATUS_COMPLETE
    # The metadata expires with the generation's first keys, not a run's length later.
    write_meta(client, keys, gen, meta, max(p.ttl_s - int(time.perf_counter() - t_write), 1))
    return {**result, **publish_generation(client, keys, gen, current, t, rank), "meta": meta}


def index_generation_of(store: ArtifactStore, index_version: str) -> int | None:
    """The index pointer's generation (``indexing.slots``: +1 per publish or rollback)
    that made ``index_version`` live, when it is the active index; -1 when another one
    is (a generation of an index not live never displaces one of the live index's);
    None when no index is published (generations are then ordered by logical time)."""
    active, generation = active_version(store)
    if active is None:
        return None
    return generation if active == index_version else -1


def _write_all(
    w: GenerationWriter, inp: Inputs, cfg: Config, t: dt.datetime, spark: Any = None
) -> dict[str, Any]:
    """Write every family of keys; the statistics for the metadata."""
    stats: dict[str, Any] = {"recs": _write_recs(w, inp, cfg, t, spark)}
    stats["similar"] = write_similar(w, inp, cfg)
    stats["features"] = write_features(w, inp, t)
    trending = trending_lists(inp, cfg)
    w.put_ranked(w.family("trending", lambda c: w.keys.trending(w.gen, c)), trending)
    plays = inputs.read_plays(inp.fdir, inp.resolve)
    countries = popular_lists(inp, cfg, t, plays, "country")
    w.put_ranked(w.family("popular_country", lambda c: w.keys.popular_country(w.gen, c)), countries)
    languages = popular_lists(inp, cfg, t, plays, "language")
    w.put_ranked(
        w.family("popular_language", lambda c: w.keys.popular_language(w.gen, c)), languages
    )
    stats["categories"] = sorted(
        c for c, (ids, _) in trending.items() if c is not None and len(ids)
    )
    stats["countries"] = sorted(c for c, (ids, _) in countries.items() if len(ids))
    stats["languages"] = sorted(c for c, (ids, _) in languages.items() if len(ids))
    return stats


def _write_recs(
    w: GenerationWriter, inp: Inputs, cfg: Config, t: dt.datetime, spark: Any
) -> dict[str, Any]:
    """Base recommendations here, or from the executors of ``spark`` when one is given."""
    if spark is None:
        return write_recs(w, inp, cfg, t, inputs.read_watched(inp.fdir))
    from videorec.precompute import spark as spark_job

    p = cfg.precompute
    users = spark_job.users_frame(spark, inp, inp.model_dir / USER_EMBEDDINGS_FILE, t,
                                  p.active_window_days)  # fmt: skip
    return spark_job.write_recs_spark(
        spark, w, inp, users, redis_url=client_url(w.client), k=p.recs_k,
        partitions=p.spark_partitions or spark.sparkContext.defaultParallelism,
        users_per_chunk=p.users_per_chunk,
    )  # fmt: skip


def client_url(client: Any) -> str:
    """A redis:// (or unix://) URL for the server ``client`` talks to, for other processes."""
    from urllib.parse import quote

    kw = client.connection_pool.connection_kwargs
    auth = f":{quote(kw['password'], safe='')}@" if kw.get("password") else ""
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def status(cfg: Config, redis: Any, *, at: dt.datetime | None = None) -> dict[str, Any]:
    """The active generation, its metadata, and its age at ``at`` (seconds; None without ``at``)."""
    keys = RedisKeys(cfg.precompute.key_prefix)
    gen = active_generation(redis, keys)
    meta = read_meta(redis, keys, gen)
    built = built_at(meta)
    prev = redis.get(keys.previous)
    return {
        "active": gen,
        "previous": prev.decode() if isinstance(prev, bytes) else prev,
        "meta": meta,
        "expired": gen is not None and meta is None,
        "age_s": round((utc(at) - built).total_seconds(), 1) if at and built else None,
        "expires_in_s": int(redis.ttl(keys.meta(gen))) if meta else None,
    }
