"""``precompute``: one index version, one logical time -> one Redis generation, published.

Steps, each a function below:

1. Inputs: the index version (must have passed its gate), the model its manifest
   names and that model's user and video embeddings (their dimension must match the
   index's, and the videos must be the index's), the features version (by default the
   one the model was trained on) and the data set's ``videos`` table.
2. Generation id from (logical time, model, index and features versions, the
   precompute config's shaping fields, the code). When the pointer already names it,
   the run returns at once: re-running a finished run changes nothing. When the active
   generation was built for a later logical time, the run publishes nothing.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec import redis_keys
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config, config_digest, source_digest
from videorec.indexing.build import (
    INDEX_ARTIFACT,
    MODEL_ARTIFACT,
    USER_EMBEDDINGS,
    VIDEO_EMBEDDINGS,
    IndexBuildError,
    read_embeddings,
)
from videorec.indexing.reader import LoadedIndex, load_index
from videorec.precompute import compute, inputs
from videorec.precompute.publish import (
    GenerationWriter,
    PrecomputeError,
    PrecomputeInputError,
    begin,
    chunks,
    flip,
    read_meta,
    write_meta,
)
from videorec.redis_keys import STATUS_COMPLETE, RedisKeys, active_generation

# Config fields that do not change what a generation holds (so not in its id).
RUNTIME_FIELDS = {"key_prefix", "ttl_s", "users_per_chunk", "pipeline_commands"}
CAS_ATTEMPTS = 16  # each lost round means another run published: progress is made


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


def utc(t: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC; a naive one is refused (the logical time must be explicit)."""
    if not isinstance(t, dt.datetime) or t.tzinfo is None:
        raise ValueError(f"logical_time must be a timezone-aware datetime, got {t!r}")
    return t.astimezone(dt.UTC)


def generation_id(
    cfg: Config, *, logical_time: dt.datetime, model_version: str, index_version: str,
    features_version: str,
) -> str:  # fmt: skip
    """``<yyyymmddThhmm>-<digest>``: the logical time, then a digest of the inputs'
    versions, the precompute config fields that shape the output, and the code."""
    shaping = cfg.precompute.model_dump(mode="json", exclude=RUNTIME_FIELDS)
    code = (
        source_digest("videorec.precompute")
        + hashlib.sha256(Path(redis_keys.__file__).read_bytes()).hexdigest()[:12]
    )
    digest = config_digest({
        "t": utc(logical_time).isoformat(), "model": model_version, "index": index_version,
        "features": features_version, "precompute": shaping, "code": code,
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
    man = _manifest(store, INDEX_ARTIFACT, index_version, "index version")
    if man.get("gate") != "passed":
        raise PrecomputeInputError(f"index version {index_version!r} did not pass its gate")
    model_version = man.get("model_version")
    if not model_version:
        raise PrecomputeInputError(
            f"index version {index_version!r}: manifest names no model_version"
        )
    mman = _manifest(store, MODEL_ARTIFACT, model_version, "model version")
    features_version = features_version or mman.get("features_version")
    if not features_version:
        raise PrecomputeInputError(f"model {model_version!r} names no features_version; pass one")
    _manifest(store, inputs.FEATURES_ARTIFACT, features_version, "features version")
    return man, model_version, features_version


def load_inputs(
    cfg: Config, store: ArtifactStore, index_version: str, model_version: str,
    features_version: str, data_dir: str | None, t: dt.datetime,
) -> Inputs:  # fmt: skip
    """Read and cross-check the index, the embeddings, the features and the videos."""
    from videorec.dataset import read_table

    try:
        loaded = load_index(store, index_version)
    except (OSError, RuntimeError) as err:
        raise PrecomputeInputError(f"index version {index_version!r}: cannot load: {err}") from None
    mdir = store.local_path(MODEL_ARTIFACT, model_version)
    try:
        videos_e = read_embeddings(mdir / VIDEO_EMBEDDINGS)
        users_e = read_embeddings(mdir / USER_EMBEDDINGS)
    except IndexBuildError as err:
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
    fman = store.read_manifest(inputs.FEATURES_ARTIFACT, features_version)
    window = inputs.window_of(fman)
    if window[1] > t:
        raise PrecomputeInputError(
            f"features {features_version!r} end at {window[1].isoformat()}, after the "
            f"logical time {t.isoformat()}: a run may not read its future"
        )
    data_dir = data_dir or fman.get("data")
    if not data_dir:
        raise PrecomputeInputError(f"features {features_version!r} name no data set; pass data_dir")
    data_dir = str(cfg.resolve_path(data_dir)) if "://" not in data_dir else data_dir
    videos = read_table(data_dir, "videos").select(["video_id", "channel_id", "title", "category"])
    vo, uo = np.argsort(videos_e.ids), np.argsort(users_e.ids)
    return Inputs(
        index=loaded, metric=loaded.manifest.get("metric", "inner_product"),
        model_version=model_version, features_version=features_version,
        fdir=store.local_path(inputs.FEATURES_ARTIFACT, features_version), window=window,
        catalogue=videos_e.ids[vo], video_vectors=np.ascontiguousarray(videos_e.vectors[vo]),
        user_ids=users_e.ids[uo], user_vectors=np.ascontiguousarray(users_e.vectors[uo]),
        videos=videos, data_dir=data_dir,
    )  # fmt: skip


# ---- base recommendations


def write_recs(
    w: GenerationWriter, inp: Inputs, cfg: Config, t: dt.datetime, plays: inputs.Plays
) -> dict[str, Any]:
    """Top ``recs_k`` unwatched videos for every active user with an embedding."""
    p = cfg.precompute
    users, last = inputs.last_played(inp.fdir, plays, inp.window[0].timestamp())
    since = (t - dt.timedelta(days=p.active_window_days)).timestamp()
    active = users[(last >= since) & (last <= t.timestamp())]
    has_emb = compute.isin_sorted(inp.user_ids, active)
    active, no_embedding = active[has_emb], int((~has_emb).sum())
    n_cat = len(inp.catalogue)
    # Watched (user row, catalogue position) pairs as sorted keys; videos outside the
    # catalogue cannot be recommended, so they need no exclusion.
    wu, wv = inputs.watched_pairs(inp.fdir, plays, p.max_watched_per_user)
    urow = np.searchsorted(active, wu)
    vpos = np.searchsorted(inp.catalogue, wv)
    ok = compute.isin_sorted(active, wu) & compute.isin_sorted(inp.catalogue, wv)
    watched = np.sort(compute.pair_keys(urow[ok], vpos[ok], n_cat))
    counts = np.bincount(urow[ok], minlength=len(active))
    vectors = inp.user_vectors[np.searchsorted(inp.user_ids, active)]
    fam = w.family("recs", lambda u: w.keys.user_recs(w.gen, u))
    order = np.argsort(counts, kind="stable")  # similar watched counts share a search width
    lengths = []
    for sl in chunks(len(active), p.users_per_chunk):
        rows = order[sl]

        def excluded(found: np.ndarray, rows: np.ndarray = rows) -> np.ndarray:
            pos = np.searchsorted(inp.catalogue, found)
            return compute.isin_sorted(watched, compute.pair_keys(rows[:, None], pos, n_cat))

        extra = int(counts[rows].max()) if len(rows) else 0
        top = compute.search_excluding(
            inp.index.index, vectors[rows], p.recs_k, extra, excluded, metric=inp.metric
        )
        w.put_blobs(fam, active[rows], redis_keys.encode_rows(top.ids, top.scores, top.lengths))
        lengths.append(top.lengths)
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return {
        "active_users": len(active) + no_embedding, "users_without_embedding": no_embedding,
        "watched_pairs": int(ok.sum()), "max_watched": int(counts.max()) if len(counts) else 0,
        "recs_per_user_mean": round(float(lens.mean()), 2) if len(lens) else 0.0,
        "users_short_of_k": int((lens < p.recs_k).sum()),
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


# ---- trending and popular


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names (g,), code per value (m,), -1 for None/"") of an object array of strings."""
    present = np.array([v is not None and v != "" for v in values], dtype=bool)
    names, codes = np.unique(values[present].astype(str), return_inverse=True)
    out = np.full(len(values), -1, np.int64)
    out[present] = codes
    return names, out


def lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(q,) object array: the value of each query's key (first one), None when absent."""
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    out = np.full(len(queries), None, dtype=object)
    if len(k):
        pos = np.minimum(np.searchsorted(k, queries), len(k) - 1)
        hit = k[pos] == queries
        out[hit] = v[pos[hit]]
    return out


def trending_lists(inp: Inputs, cfg: Config) -> dict[str | None, tuple[np.ndarray, np.ndarray]]:
    """{None: global, category: its list}, each (video ids, scores) best first."""
    p = cfg.precompute
    tr = inputs.trending_inputs(inp.fdir)
    vid = inputs.ids(tr["video_id"])
    as_int = {
        c: inputs.ids(pc.fill_null(tr[c], 0)) for c in ("views_1h", "views_24h", "viewers_24h")
    }
    score = compute.trending_scores(
        as_int["views_1h"], as_int["views_24h"], as_int["viewers_24h"],
        p.trending_half_life_h, p.trending_min_viewers,
    )  # fmt: skip
    keep = ~np.isnan(score)
    vid, score = vid[keep], score[keep]
    lists: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
    glob = compute.top_per_group(np.zeros(len(vid), np.int64), vid, score, p.trending_top_n)
    lists[None] = glob.get(0, (vid[:0], score[:0]))
    cats = np.asarray(inp.videos["category"].to_numpy(zero_copy_only=False), dtype=object)
    names, codes = _codes(lookup(inputs.ids(inp.videos["video_id"]), cats, vid))
    has = codes >= 0
    for code, lst in compute.top_per_group(
        codes[has], vid[has], score[has], p.trending_top_n
    ).items():
        lists[str(names[code])] = lst
    return lists


def popular_lists(
    inp: Inputs, cfg: Config, t: dt.datetime, plays: inputs.Plays, column: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{country or language of the player: (video ids, decayed popularity)}, best first."""
    p = cfg.precompute
    ug = inputs.user_groups(inp.fdir)
    values = np.asarray(ug[column].to_numpy(zero_copy_only=False), dtype=object)
    sel = plays.positive & (plays.ts_s <= t.timestamp())
    names, codes = _codes(lookup(inputs.ids(ug["user_id"]), values, plays.user_id[sel]))
    has = codes >= 0
    g, v, s = compute.decayed_sums(
        codes[has], plays.video_id[sel][has], plays.ts_s[sel][has], t.timestamp(),
        p.popular_half_life_h,
    )  # fmt: skip
    return {
        str(names[c]): lst for c, lst in compute.top_per_group(g, v, s, p.popular_top_n).items()
    }


# ---- the stage


def connect(cfg: Config) -> tuple[Any, str]:
    """A Redis client for the config's server (``services.resolve_redis``) and how it was found."""
    import redis

    from videorec.services import resolve_redis

    endpoint = resolve_redis(cfg)
    return redis.Redis.from_url(endpoint.url), endpoint.how


def _built_at(meta: dict[str, Any] | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(meta["built_at"]) if meta and meta.get("built_at") else None


def _newer_active(client: Any, keys: RedisKeys, current: str | None, t: dt.datetime) -> bool:
    """True when the active generation was built for a logical time after ``t``."""
    built = _built_at(read_meta(client, keys, current))
    return built is not None and built > t


def precompute(
    cfg: Config,
    *,
    index_version: str,
    logical_time: dt.datetime,
    features_version: str | None = None,
    data_dir: str | None = None,
    store: ArtifactStore | None = None,
    redis: Any = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write and publish the generation for (``index_version``, ``logical_time``).

    ``features_version`` defaults to the one the index's model was trained on;
    ``data_dir`` (the data set whose ``videos`` table gives channels, titles and
    categories) to the one that features version was built from; ``redis`` to a
    client for the config's server. Returns {generation, published, skipped, reason,
    previous, meta}. Raises PrecomputeError (nothing published) on bad inputs, a
    recall below ``similar_recall_min``, or a Redis failure.
    """
    say = log or (lambda _m: None)
    t = utc(logical_time)
    store = store or open_store(cfg)
    p = cfg.precompute
    keys = RedisKeys(p.key_prefix)
    _, model_version, features_version = resolve_versions(store, index_version, features_version)
    gen = generation_id(
        cfg, logical_time=t, model_version=model_version, index_version=index_version,
        features_version=features_version,
    )  # fmt: skip
    client, how = (redis, "the client given") if redis is not None else connect(cfg)
    current = _pointer(client, keys, how)
    result = {"generation": gen, "published": False, "skipped": True, "previous": current}
    if current == gen:
        return {**result, "reason": "already active", "meta": read_meta(client, keys, gen)}
    if _newer_active(client, keys, current, t):
        return {**result, "reason": f"the active generation {current} is newer", "meta": None}

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
        "index_version": index_version, "features_version": features_version,
        "data": inp.data_dir, "config_digest": cfg.digest(), "key_prefix": p.key_prefix,
        "ttl_s": p.ttl_s, "metric": inp.metric, f"similar_recall@{p.similar_k}": round(recall, 5),
        "similar_recall_sample": min(p.similar_recall_sample, len(inp.catalogue)),
        "trending_as_of": inp.window[1].isoformat(), "previous_generation": current,
    }  # fmt: skip
    t_write = time.perf_counter()
    begin(client, keys, gen, meta, p.ttl_s)
    say(f"generation {gen}: writing under {keys.namespace(gen)}")
    w = GenerationWriter(client, keys, gen, ttl_s=p.ttl_s, batch=p.pipeline_commands)
    meta.update(_write_all(w, inp, cfg, t))
    meta["counts"] = w.verify()
    meta["bytes_per_key"] = {f: w.memory_per_key(fam) for f, fam in w.families.items()}
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["status"] = STATUS_COMPLETE
    # The metadata expires with the generation's first keys, not a run's length later.
    write_meta(client, keys, gen, meta, max(p.ttl_s - int(time.perf_counter() - t_write), 1))
    return {**result, **_publish(client, keys, gen, current, t), "meta": meta}


def _pointer(client: Any, keys: RedisKeys, how: str) -> str | None:
    import redis as redis_lib

    try:
        return active_generation(client, keys)
    except (redis_lib.exceptions.RedisError, OSError) as err:
        raise PrecomputeError(f"Redis ({how}) is unreachable: {err}") from None


def _write_all(w: GenerationWriter, inp: Inputs, cfg: Config, t: dt.datetime) -> dict[str, Any]:
    """Write every family of keys; the statistics for the metadata."""
    plays = inputs.read_plays(inp.fdir)
    stats: dict[str, Any] = {"recs": write_recs(w, inp, cfg, t, plays)}
    stats["similar"] = write_similar(w, inp, cfg)
    trending = trending_lists(inp, cfg)
    w.put_ranked(w.family("trending", lambda c: w.keys.trending(w.gen, c)), trending)
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


def _publish(
    client: Any, keys: RedisKeys, gen: str, expected: str | None, t: dt.datetime
) -> dict[str, Any]:
    """Flip the pointer from ``expected`` to ``gen``, following concurrent publishes."""
    for _ in range(CAS_ATTEMPTS):
        r = flip(client, keys, expected, gen)
        if r.flipped:
            return {"published": True, "skipped": False, "reason": None, "previous": r.current}
        if r.incomplete:
            raise PrecomputeError(f"generation {gen}: metadata missing or incomplete at publish")
        if r.current == gen:  # a twin run (an Airflow retry beside a zombie) published it
            return {"published": False, "skipped": False, "reason": "published by a concurrent run"}
        if _newer_active(client, keys, r.current, t):
            return {"published": False, "skipped": False,
                    "reason": f"the active generation {r.current} is newer"}  # fmt: skip
        expected = r.current
    raise PrecomputeError(f"generation {gen}: the pointer kept changing; not published")


def status(cfg: Config, redis: Any, *, at: dt.datetime | None = None) -> dict[str, Any]:
    """The active generation, its metadata, and its age at ``at`` (seconds; None without ``at``)."""
    keys = RedisKeys(cfg.precompute.key_prefix)
    gen = active_generation(redis, keys)
    meta = read_meta(redis, keys, gen)
    built = _built_at(meta)
    prev = redis.get(keys.previous)
    return {
        "active": gen,
        "previous": prev.decode() if isinstance(prev, bytes) else prev,
        "meta": meta,
        "expired": gen is not None and meta is None,
        "age_s": round((utc(at) - built).total_seconds(), 1) if at and built else None,
        "expires_in_s": int(redis.ttl(keys.meta(gen))) if meta else None,
    }
