"""The hourly new-videos generation: what serving needs of the delta index's videos.

``publish_new_videos(cfg, delta_version=V, logical_time=t)`` writes, under the
``newvideos`` generation kind (``RedisKeys.new_videos``; docs/redis-keys.md):

- a feature hash per new video (title, category, channel, language, duration,
  publication time and its content-path embedding), so the serving catalogue holds
  it and the home feed can search the new videos with the user's query embedding;
- its similar list, from the main index and the delta searched together and merged
  by score (``indexing.reader.merge_results``), the video itself left out.

Then the generation is published by the same compare-and-swap as the 4-hourly and
15-minute ones. The generation id is a function of the delta version and the code,
so a re-run of the same hour publishes nothing new.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec import redis_keys
from videorec.artifact_names import DELTA_INDEX, NEW_VIDEOS_FILE
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config, config_digest, source_digest
from videorec.indexing.reader import load_delta, load_index, merge_results, read_embeddings
from videorec.precompute.publish import (
    GenerationWriter,
    PrecomputeInputError,
    begin,
    pointer_or_skip,
    publish_generation,
    write_meta,
)
from videorec.redis_keys import STATUS_COMPLETE, RedisKeys


def new_videos_generation_id(cfg: Config, delta_version: str, t: dt.datetime) -> str:
    """``<yyyymmddThhmm>-<digest>`` of the delta version, similar_k and the code."""
    digest = config_digest({
        "delta": delta_version, "t": t.isoformat(), "k": cfg.fresh_videos.similar_k,
        "code": source_digest("videorec.precompute"),
    })  # fmt: skip
    return f"{t:%Y%m%dT%H%M}-{digest[:10]}"


def similar_lists(
    main: Any, delta: Any, ids: np.ndarray, vectors: np.ndarray, k: int, metric: str
) -> list[bytes]:
    """Per new video (``ids`` (n,), ``vectors`` (n, d)): its top ``k`` neighbours in main
    and delta merged by score, itself left out, packed with ``encode_scored``."""
    if not len(ids):
        return []
    q = np.ascontiguousarray(vectors, np.float32)
    found = merge_results(main.search(q, k + 1), delta.search(q, min(k + 1, delta.ntotal)),
                          k + 1, metric)  # fmt: skip
    scores, hits = found
    if metric == "l2":  # stored larger-is-better, as every list (docs/redis-keys.md)
        scores = -scores
    out = []
    for me, s, h in zip(ids.tolist(), scores, hits, strict=True):
        keep = (h >= 0) & (h != me)
        out.append(redis_keys.encode_scored(h[keep][:k], s[keep][:k]))
    return out


def video_hashes(data: str, ids: np.ndarray, vectors: np.ndarray) -> list[dict[str, Any]]:
    """The feature hash of each new video (``ids`` (n,) sorted), as the 4-hourly
    generation writes a catalogue video's, with no viewing statistics yet."""
    from videorec.dataset import read_table
    from videorec.precompute.run import encoded_columns, hash_mappings

    cols = ["video_id", "title", "category", "channel_id", "duration_s", "published_at", "language"]
    videos = read_table(data, "videos").select(cols)
    videos = videos.filter(pc.is_in(videos["video_id"], value_set=pa.array(ids, pa.int64())))
    videos = videos.take(pc.sort_indices(videos["video_id"]))
    channels = read_table(data, "channels").select(["channel_id", "name"])
    videos = videos.join(channels.rename_columns(["channel_id", "channel_name"]), "channel_id")
    videos = videos.take(pc.sort_indices(videos["video_id"]))
    have = videos["video_id"].to_numpy()
    if not np.array_equal(have, ids):
        raise PrecomputeInputError(
            f"{len(ids) - len(have)} of the delta's videos are missing from {data}/videos"
        )
    maps = hash_mappings(encoded_columns(videos, redis_keys.VIDEO_FEATURES), videos.num_rows)
    blobs = np.ascontiguousarray(vectors, dtype="<f4")
    for i, m in enumerate(maps):
        m["embedding"] = blobs[i].tobytes()
    return maps


def publish_new_videos(
    cfg: Config,
    *,
    delta_version: str,
    logical_time: dt.datetime,
    store: ArtifactStore | None = None,
    redis: Any = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write and publish the new-videos generation of ``delta_version``; returns
    {generation, published, skipped, reason, previous, meta}. Raises
    PrecomputeInputError for a missing delta or index, PrecomputeError when Redis fails."""
    from videorec.precompute.run import connect, index_generation_of, utc

    say = log or (lambda _m: None)
    t = utc(logical_time)
    store = store or open_store(cfg)
    fc = cfg.fresh_videos
    try:
        man = store.read_manifest(DELTA_INDEX, delta_version)
        main = load_index(store, man["index_version"])
        delta = load_delta(store, delta_version)
    except (VersionNotFoundError, OSError, RuntimeError) as err:
        raise PrecomputeInputError(f"delta {delta_version!r}: cannot load: {err}") from None
    keys = RedisKeys.new_videos(cfg.precompute.key_prefix)
    gen = new_videos_generation_id(cfg, delta_version, t)
    client, how = (redis, "the client given") if redis is not None else connect(cfg)
    rank = index_generation_of(store, man["index_version"])  # the main index extended
    current, skipped = pointer_or_skip(client, keys, gen, t, how, rank)
    if skipped is not None:
        return skipped
    t0 = time.perf_counter()
    new = read_embeddings(store.local_path(DELTA_INDEX, delta_version) / NEW_VIDEOS_FILE)
    metric = man.get("metric", "inner_product")
    similar = similar_lists(main.index, delta.index, new.ids, new.vectors, fc.similar_k, metric)
    hashes = video_hashes(man["data"], new.ids, new.vectors)
    meta: dict[str, Any] = {
        "generation": gen, "kind": "newvideos", "built_at": t.isoformat(),
        "logical_time": t.isoformat(), "delta_version": delta_version,
        "index_version": man["index_version"], "index_generation": rank,
        "model_version": man["model_version"],
        "videos": len(new.ids), "config_digest": cfg.digest(), "previous_generation": current,
    }  # fmt: skip
    begin(client, keys, gen, meta, fc.ttl_s)
    w = GenerationWriter(client, keys, gen, ttl_s=fc.ttl_s, batch=cfg.precompute.pipeline_commands)
    w.put_hashes(w.family("video_features", lambda v: keys.video_features(gen, v)), new.ids, hashes)
    w.put_blobs(w.family("similar", lambda v: keys.similar(gen, v)), new.ids, similar)
    meta["counts"] = w.verify()
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["status"] = STATUS_COMPLETE
    write_meta(client, keys, gen, meta, fc.ttl_s)
    say(f"new videos {gen}: {len(new.ids):,} videos of delta {delta_version}")
    result = {"generation": gen, "published": False, "skipped": False, "previous": current}
    return {**result, **publish_generation(client, keys, gen, current, t, rank), "meta": meta}
