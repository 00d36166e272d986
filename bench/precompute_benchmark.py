"""Benchmark: base recommendations into Redis, end to end, against its two bounds.

    .venv/bin/python bench/precompute_benchmark.py --users 100000 1000000 --markdown

One run, one 1M-video catalogue (``--videos``), one index built by the build's own
functions (``IVF{nlist},SQ6``, nprobe ``--nprobe``: the index benchmark's 0.95-recall
setting at 1M). For each user count, measured in the same process, one after another:

- **search bound**: FAISS batch search alone, the same user chunks and the same search
  widths (``recs_k`` + the chunk's largest watched count) as the real run, nothing
  else: users/s.
- **write bound**: pipelined Redis writes alone of payloads of the same sizes (each
  user's packed list of ``recs_k`` items), encoded before the clock starts: users/s.
- **end to end**: ``precompute.run.write_recs`` (search, watched exclusion, packing,
  pipelined TTL'd writes) plus the count before publish (``GenerationWriter.verify``):
  users/s, and its share of the lower of the two bounds (the goal is 80%).
- bytes per user in Redis (``MEMORY USAGE`` over a sample) and the process's peak RSS.

The vectors are synthetic: unit vectors around 2,000 cluster centres (256-d), with
users drawn around the same centres with more noise (queries that lie away from the
candidates, as a query tower's do). Each user has a watched set of a heavy-tailed
size (geometric, mean ``--watched-mean``, cap ``features.max_watched_per_user``),
drawn from the catalogue. The similar-videos pass (one query per video) is timed
too, separately: it is catalogue-sized, not user-sized. Keys are written under a
``bench-<uuid>`` prefix and deleted after each phase. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import time
import uuid
from typing import Any

import bench_host
import numpy as np

D = 256


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float) -> np.ndarray:
    """(n, D) unit vectors around random ``centres``, made in blocks to bound memory."""
    out = np.empty((n, centres.shape[1]), np.float32)
    for lo in range(0, n, 200_000):
        m = min(200_000, n - lo)
        c = centres[rng.integers(0, len(centres), m)]
        out[lo : lo + m] = unit(c + noise * rng.standard_normal((m, centres.shape[1]), np.float32))
    return out


def build(vectors: np.ndarray, ids: np.ndarray, nprobe: int, train_sample: int) -> Any:
    from videorec.indexing.build import add_vectors, auto_nlist, new_index, train_on
    from videorec.indexing.reader import set_search_params

    n = len(ids)
    index = new_index(f"IVF{auto_nlist(n, train_sample)},SQ6", vectors.shape[1], "inner_product")
    sample = vectors[np.random.default_rng(0).choice(n, min(train_sample, n), replace=False)]
    train_on(index, sample)
    add_vectors(index, vectors, ids)
    set_search_params(index, {"nprobe": nprobe})
    return index


def watched_set(
    rng: np.random.Generator, users: np.ndarray, catalogue: np.ndarray, mean: float, cap: int
) -> Any:
    from videorec.precompute.inputs import Watched

    counts = np.minimum(rng.geometric(1.0 / mean, len(users)), cap)
    u = np.repeat(users, counts)
    v = catalogue[rng.integers(0, len(catalogue), len(u))]
    key = np.unique(u.astype(np.int64) * (len(catalogue) * 100) + v)  # distinct pairs
    u, v = key // (len(catalogue) * 100), key % (len(catalogue) * 100)
    return Watched(user_id=u, video_id=v, last_played_s=np.zeros(len(u)))


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def delete_prefix(client: Any, prefix: str) -> None:
    batch = []
    for name in client.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(name)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def one_scale(
    n_users: int, index: Any, catalogue: np.ndarray, vectors: np.ndarray, centres: np.ndarray,
    client: Any, cfg: Any, watched_mean: float, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The three measurements for ``n_users`` users."""
    from videorec import redis_keys
    from videorec.precompute.publish import GenerationWriter, chunks
    from videorec.precompute.run import Inputs, recs_work, write_recs

    p = cfg.precompute
    rng = np.random.default_rng(seed)
    user_ids = np.arange(n_users, dtype=np.int64) * 7 + 11
    user_vectors = clustered(rng, centres, n_users, 0.9)
    watched = watched_set(rng, user_ids, catalogue, watched_mean, cfg.features.max_watched_per_user)
    t = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    watched.last_played_s[:] = t.timestamp() - 3600
    inp = Inputs(
        index=type("L", (), {"index": index})(), metric="inner_product", model_version="bench",
        features_version="bench", fdir=None, window=(t, t), catalogue=catalogue,
        video_vectors=vectors, user_ids=user_ids, user_vectors=user_vectors, videos=None,
        data_dir="", index_dir=None, model_dir=None,
    )  # fmt: skip
    work = recs_work(inp, user_ids, watched)
    row = {"users": n_users, "watched_pairs": len(work.pair_rows),
           "watched_max": int(np.bincount(work.pair_rows).max())}  # fmt: skip

    # Bound 1: the FAISS searches alone, same chunks and widths.
    t0 = time.perf_counter()
    for sl in chunks(n_users, p.users_per_chunk):
        lo, hi = np.searchsorted(work.pair_rows, [sl.start, sl.stop])
        extra = int(np.bincount(work.pair_rows[lo:hi] - sl.start).max()) if hi > lo else 0
        index.search(work.vectors[sl], min(p.recs_k + extra, index.ntotal))
    row["search_s"] = round(time.perf_counter() - t0, 2)

    # Bound 2: the writes alone, of payloads of the same size, encoded beforehand.
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    keys = redis_keys.RedisKeys(prefix)
    w = GenerationWriter(client, keys, "bound", ttl_s=p.ttl_s, batch=p.pipeline_commands)
    fam = w.family("recs", lambda u: keys.user_recs("bound", u))
    ids_m = rng.integers(0, 10**9, (p.users_per_chunk, p.recs_k))
    sc = np.sort(rng.random((p.users_per_chunk, p.recs_k)), axis=1)[:, ::-1].astype(np.float32)
    blobs = redis_keys.encode_rows(ids_m, sc, np.full(p.users_per_chunk, p.recs_k))
    t0 = time.perf_counter()
    for sl in chunks(n_users, p.users_per_chunk):
        w.put_blobs(fam, work.user_ids[sl], blobs[: sl.stop - sl.start])
    row["write_s"] = round(time.perf_counter() - t0, 2)
    delete_prefix(client, prefix)

    # End to end: the stage's own function, then the count it makes before publishing.
    w = GenerationWriter(client, keys, "e2e", ttl_s=p.ttl_s, batch=p.pipeline_commands)
    used0 = int(client.info("memory")["used_memory"])
    t0 = time.perf_counter()
    stats = write_recs(w, inp, cfg, t, watched)
    row["e2e_write_s"] = round(time.perf_counter() - t0, 2)
    counts = w.verify()
    row["e2e_s"] = round(time.perf_counter() - t0, 2)
    row["redis_used_mb_delta"] = round(
        (int(client.info("memory")["used_memory"]) - used0) / 2**20, 1
    )
    row["bytes_per_user"] = w.memory_per_key(w.families["recs"], sample=1000)
    assert counts["recs"] == n_users and stats["users_short_of_k"] == 0, (counts, stats)
    delete_prefix(client, prefix)

    row["search_users_per_s"] = round(n_users / row["search_s"])
    row["write_users_per_s"] = round(n_users / row["write_s"])
    row["e2e_users_per_s"] = round(n_users / row["e2e_s"])
    bound = min(row["search_users_per_s"], row["write_users_per_s"])
    row["e2e_share_of_lower_bound"] = round(row["e2e_users_per_s"] / bound, 3)
    row["peak_rss_mb_so_far"] = peak_rss_mb()
    return row


def similar_pass(
    index: Any, catalogue: np.ndarray, vectors: np.ndarray, k: int, chunk: int
) -> dict:
    """The similar-videos search over the catalogue (one query per video), timed alone."""
    t0 = time.perf_counter()
    for lo in range(0, len(catalogue), chunk):
        index.search(vectors[lo : lo + chunk], k + 2)
    s = time.perf_counter() - t0
    return {
        "videos": len(catalogue),
        "search_s": round(s, 1),
        "videos_per_s": round(len(catalogue) / s),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--videos", type=int, default=1_000_000)
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--train-sample", type=int, default=150_000)
    ap.add_argument("--watched-mean", type=float, default=30.0)
    ap.add_argument("--similar", action="store_true", help="also time the similar-videos pass")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    load_before = bench_host.load_average()

    import faiss
    import redis

    from videorec.config import parse_config
    from videorec.services import resolve_redis

    cfg = parse_config({})
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    client = redis.Redis.from_url(resolve_redis(cfg).url)
    rng = np.random.default_rng(42)
    centres = rng.standard_normal((2_000, D)).astype(np.float32)
    catalogue = np.arange(args.videos, dtype=np.int64) * 13 + 1_000_003  # sorted
    vectors = clustered(rng, centres, args.videos, 0.6)
    t0 = time.perf_counter()
    index = build(vectors, catalogue, args.nprobe, args.train_sample)
    out: dict[str, Any] = {
        **bench_host.header(load_before),
        "faiss": faiss.__version__, "redis": client.info("server")["redis_version"],
        "videos": args.videos, "index": f"IVF{faiss.extract_index_ivf(index).nlist},SQ6",
        "nprobe": args.nprobe, "index_build_s": round(time.perf_counter() - t0, 1),
        "recs_k": cfg.precompute.recs_k, "users_per_chunk": cfg.precompute.users_per_chunk,
        "pipeline_commands": cfg.precompute.pipeline_commands, "rows": [],
    }  # fmt: skip
    for n in args.users:
        row = one_scale(n, index, catalogue, vectors, centres, client, cfg, args.watched_mean, n)
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.similar:
        out["similar"] = similar_pass(index, catalogue, vectors, cfg.precompute.similar_k, 4096)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out, indent=1))
    if args.markdown:
        print(
            "| users | search alone u/s | writes alone u/s | end to end u/s | share of lower bound | B/user | peak RSS MB |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in out["rows"]:
            print(f"| {r['users']:,} | {r['search_users_per_s']:,} | {r['write_users_per_s']:,} | "
                  f"{r['e2e_users_per_s']:,} | {r['e2e_share_of_lower_bound']:.0%} | "
                  f"{r['bytes_per_user']} | {r['peak_rss_mb_so_far']:,} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
