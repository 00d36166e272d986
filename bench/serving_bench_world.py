"""A home-feed world for the serving load test, with and without the stage-2 ranker.

    .venv/bin/python bench/serving_bench_world.py --out var/bench-ranker
    redis-cli del 'videorec-bench-ranker:{events}:stream'
    .venv/bin/python bench/serving_benchmark.py --config var/bench-ranker/rule.yaml \\
        --endpoints home --markdown --json var/bench-ranker/rule.json
    redis-cli del 'videorec-bench-ranker:{events}:stream'
    .venv/bin/python bench/serving_benchmark.py --config var/bench-ranker/ranker.yaml \\
        --endpoints home --markdown --json var/bench-ranker/ranker.json
    .venv/bin/python bench/serving_bench_world.py --out var/bench-ranker --delete

What the ranker adds to a home request depends on the shapes, not on what the models
learnt: the candidates (the 200 base recommendations plus up to 50 fresh ones), the
history length, the embedding width, the ranker's architecture and the co-visitation
matrix's density. This writes those shapes at the scale of docs/benchmarks.md's serving
run without the pipeline's hours of training (the synthetic-100k platform took 27 min
to train the two-tower alone on 2 vCPUs):

1. a generation in Redis under its own key prefix (default ``videorec-bench-ranker``):
   ``--videos`` video hashes (256-d unit embeddings clustered by category, 20
   categories, 2,500 channels, 1 % published in the last day), ``--users`` users' base
   recommendations (the top 200 by inner product, from their two favourite categories)
   and feature hashes (40 plays, the query embedding, preferred categories, country,
   language), 21 trending and 24 popular lists of 200, the metadata and the pointer;
2. the data set's ``users`` and ``videos`` tables (``serving_benchmark.py`` samples ids
   from them) under ``<out>/data``;
3. two artifact stores: ``<out>/artifacts-rule`` (no ranker published: the rule ranks)
   and ``<out>/artifacts-ranker`` with one ranker version published: ``RankerModel``
   with the default ``ranking`` config's architecture (DCN-v2, 3 crosses, MMoE with 4
   experts) and random weights, and a co-visitation matrix shaped like ItemKNN's (100
   neighbours a video, within its category);
4. ``<out>/rule.yaml`` and ``<out>/ranker.yaml``: the same config but for the store.

No similar lists are written: this world is for the home endpoint.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

N_CATEGORIES, N_CHANNELS, DIM = 20, 2500, 256
COUNTRIES = ["US", "DE", "FR", "GB", "BR", "IN", "JP", "ES", "IT", "MX", "CA", "KR"]
LANGUAGES = ["en", "de", "fr", "pt", "hi", "ja", "es", "it", "ko", "ru", "nl", "pl"]
PLAYS, RECS, LIST_TOP = 40, 200, 200
KNN = 100  # ItemKNN's k (ranking/examples.py KNN_NEIGHBOURS)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_redis(client: Any, root: str, gen: str, videos: int, users: int, seed: int) -> dict:
    """The generation; returns what the tables and the ranker need."""
    from videorec.redis_keys import (
        JSON_FIELD,
        STATUS_COMPLETE,
        USER_FEATURES,
        VIDEO_FEATURES,
        RedisKeys,
        encode_field,
        encode_scored,
    )

    rng = np.random.default_rng(seed)
    keys = RedisKeys(root)
    now = time.time()
    ids = np.arange(1, videos + 1, dtype=np.int64)
    channel = rng.integers(0, N_CHANNELS, videos)
    category = channel % N_CATEGORIES
    cats = [f"cat{c:02d}" for c in range(N_CATEGORIES)]
    centroids = rng.normal(size=(N_CATEGORIES, DIM))
    emb = unit(centroids[category] + 0.8 * rng.normal(size=(videos, DIM)))
    age_h = np.where(rng.random(videos) < 0.01, rng.uniform(0.5, 24, videos),
                     rng.uniform(24, 24 * 365, videos))  # fmt: skip
    views = rng.zipf(1.6, videos).clip(1, 10_000_000)
    published = now - age_h * 3600.0
    duration = rng.lognormal(np.log(420), 0.8, videos).clip(10, 10_800)
    pipe = client.pipeline(transaction=False)
    for i, v in enumerate(ids.tolist()):
        fields = {
            "title": f"Video {v}", "category": cats[category[i]], "channel_id": int(channel[i]),
            "channel_name": f"Channel {channel[i]}", "language": LANGUAGES[channel[i] % 12],
            "duration_s": float(duration[i]), "published_at": float(published[i]),
            "views": int(views[i]), "avg_completion": float(rng.uniform(0.2, 0.9)),
            "dislike_ratio": float(rng.uniform(0, 0.06)), "embedding": emb[i],
        }  # fmt: skip
        pipe.hset(keys.video_features(gen, v),
                  mapping={k: encode_field(VIDEO_FEATURES[k], x) for k, x in fields.items()})  # fmt: skip
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    in_cat = [np.flatnonzero(category == c) for c in range(N_CATEGORIES)]
    user_ids = np.arange(1, users + 1, dtype=np.int64)
    for n, u in enumerate(user_ids.tolist()):
        likes = rng.choice(N_CATEGORIES, 2, replace=False)
        taste = unit(centroids[likes[0]] + 0.5 * centroids[likes[1]] + 0.3 * rng.normal(size=DIM))
        pool = np.concatenate([in_cat[likes[0]], in_cat[likes[1]]])
        hist = rng.choice(pool, PLAYS, replace=False)
        score = emb[pool] @ taste
        score[np.isin(pool, hist)] = -np.inf
        top = np.argsort(-score)[:RECS]
        pipe.set(keys.user_recs(gen, u), encode_scored(ids[pool[top]], score[top]))
        features = {
            "country": COUNTRIES[u % 12], "language": LANGUAGES[u % 12], "plays": PLAYS,
            "history": ids[hist], "embedding": taste,
            "preferred_categories": [[cats[likes[0]], 0.7], [cats[likes[1]], 0.3]],
        }  # fmt: skip
        pipe.hset(keys.user_features(gen, u),
                  mapping={k: encode_field(USER_FEATURES[k], x) for k, x in features.items()})  # fmt: skip
        if n % 500 == 499:
            pipe.execute()
    by_views = np.argsort(-views, kind="stable")
    lists = {keys.trending(gen): by_views[:LIST_TOP]}
    for c in range(N_CATEGORIES):
        lists[keys.trending(gen, cats[c])] = by_views[category[by_views] == c][:LIST_TOP]
    for j, cc in enumerate(COUNTRIES):
        lists[keys.popular_country(gen, cc)] = by_views[channel[by_views] % 12 == j][:LIST_TOP]
    for j, ll in enumerate(LANGUAGES):
        lists[keys.popular_language(gen, ll)] = by_views[channel[by_views] % 12 == j][:LIST_TOP]
    for key, rows in lists.items():
        pipe.zadd(key, {str(int(ids[r])): float(views[r]) for r in rows})
    meta = {"generation": gen, "categories": cats, "countries": COUNTRIES,
            "languages": LANGUAGES}  # fmt: skip
    built = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
    pipe.hset(keys.meta(gen), mapping={"status": STATUS_COMPLETE, "built_at": built,
                                       JSON_FIELD: json.dumps(meta)})  # fmt: skip
    pipe.set(keys.pointer, gen)
    pipe.execute()
    return {"ids": ids, "category": category, "channel": channel, "cats": cats,
            "published": published, "duration": duration, "user_ids": user_ids}  # fmt: skip


def write_tables(data: Path, w: dict) -> None:
    """The contract's ``users`` and ``videos`` tables (what the load test samples)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from videorec.contract import USERS, VIDEOS

    n_u, n_v = len(w["user_ids"]), len(w["ids"])
    ts = pa.array(np.full(n_u, 1_700_000_000_000_000), pa.timestamp("us", tz="UTC"))
    users = {f.name: pa.nulls(n_u, f.type) for f in USERS}
    users.update(user_id=pa.array(w["user_ids"]), signup_ts=ts)
    videos = {f.name: pa.nulls(n_v, f.type) for f in VIDEOS}
    videos.update(
        video_id=pa.array(w["ids"]), channel_id=pa.array(w["channel"].astype(np.int64)),
        category=pa.array([w["cats"][c] for c in w["category"]]),
        duration_s=pa.array(w["duration"]),
        published_at=pa.array((w["published"] * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC")),
    )  # fmt: skip
    for name, cols, schema in (("users", users, USERS), ("videos", videos, VIDEOS)):
        (data / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols, schema=schema), data / name / "part-0.parquet")


def write_ranker(store_root: Path, w: dict, seed: int) -> str:
    """A ranker version (default architecture, random weights, ItemKNN-shaped
    co-visitation) committed and published in the store at ``store_root``."""
    import scipy.sparse as sp
    import torch

    from videorec import artifact_names as names
    from videorec.artifacts import LocalArtifactStore
    from videorec.config import parse_config
    from videorec.ranking.features import FEATURE_NAMES
    from videorec.ranking.model import RankerModel
    from videorec.ranking.publish import publish_ranker
    from videorec.ranking.train import ranker_config, save_ranker

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rcfg = parse_config({}, "bench").ranking
    # Feature scaling of a plausible spread (the forward pass's cost does not depend on it).
    x = rng.normal(size=(256, len(FEATURE_NAMES))).astype(np.float32)
    model = RankerModel(ranker_config(rcfg, x)).eval()
    n = len(w["ids"])
    rows = np.repeat(np.arange(n), KNN)
    in_cat = [np.flatnonzero(w["category"] == c) for c in range(N_CATEGORIES)]
    cols = np.concatenate([rng.choice(in_cat[w["category"][i]], KNN) for i in range(n)])
    m = sp.csr_matrix((rng.uniform(0.01, 0.5, len(rows)).astype(np.float32), (rows, cols)),
                      shape=(n, n))  # fmt: skip
    m.setdiag(0)
    m.eliminate_zeros()
    store = LocalArtifactStore(store_root)
    date = dt.date.today().isoformat()
    version = f"{date}_bench{seed}"
    if not store.exists(names.RANKER, version):
        with store.write_version(names.RANKER, version, {"date": date, "bench": True}) as out:
            save_ranker(out, model, {})
            np.savez(out / names.NEIGHBOURS_FILE, item_ids=w["ids"], indptr=m.indptr,
                     indices=m.indices, data=m.data)  # fmt: skip
    publish_ranker(store, version, force=True)
    return version


def write_configs(out: Path, root: str, redis_url: str | None) -> None:
    import yaml

    for name in ("rule", "ranker"):
        conf = {
            "profile": f"bench-{name}",
            "artifacts": {"root": str((out / f"artifacts-{name}").resolve())},
            "data": {"dir": str((out / "data").resolve())},
            "precompute": {"key_prefix": root},
            "redis": {"url": redis_url},
        }
        (out / f"{name}.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--root", default="videorec-bench-ranker", help="Redis key prefix")
    ap.add_argument("--redis-url", default=None, help="default: the app's (127.0.0.1:6379)")
    ap.add_argument("--videos", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--delete", action="store_true", help="delete the Redis keys and stop")
    args = ap.parse_args()
    import redis

    client = redis.Redis.from_url(args.redis_url or "redis://127.0.0.1:6379/0")
    if args.root == "videorec":
        raise SystemExit("--root: give the benchmark its own key prefix, not the default")
    if args.delete:
        n = 0
        for key in client.scan_iter(match=f"{args.root}:*", count=10_000):
            n += client.delete(key)
        print(f"deleted {n} keys under {args.root}:")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M}-benchranker"
    w = write_redis(client, args.root, gen, args.videos, args.users, args.seed)
    print(f"generation {gen}: {args.videos:,} videos, {args.users:,} users "
          f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    write_tables(args.out / "data", w)
    version = write_ranker(args.out / "artifacts-ranker", w, args.seed)
    (args.out / "artifacts-rule").mkdir(exist_ok=True)
    write_configs(args.out, args.root, args.redis_url)
    print(f"ranker {version} published in {args.out / 'artifacts-ranker'}; configs "
          f"{args.out / 'rule.yaml'}, {args.out / 'ranker.yaml'} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
