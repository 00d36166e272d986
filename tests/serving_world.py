"""A small platform's generation written into Redis, for the serving tests.

480 videos on 24 channels in 6 categories (unit embeddings clustered by category, 12
videos published in the last day, two of low quality), 60 users: 10 without history
(no hash, no recommendations), and 10 each with 3 and 10 plays and 30 with 40 plays;
their base recommendations are the top 200 unwatched by inner product with their query
embedding, as precompute writes them, and all but ``NO_EMBEDDING`` have that embedding
in their feature hash. :func:`write_new_videos` writes an hourly new-videos generation:
one video per category at its cluster's centre, published minutes ago. Timestamps are
relative to the wall clock because serving ages videos by it.

:func:`serving_config` and :func:`start_server` run the app over such a world as
production starts it (``uvicorn videorec.serving.app:app``), with three API keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from videorec.redis_keys import (
    JSON_FIELD,
    STATUS_COMPLETE,
    USER_FEATURES,
    VIDEO_FEATURES,
    RedisKeys,
    encode_field,
    encode_scored,
)
from videorec.services import free_port

CATEGORIES = ["Music", "News", "Gaming", "Sports", "Comedy", "Education"]
N_VIDEOS, N_CHANNELS, DIM = 480, 24, 16
FIRST_VIDEO = 1000
FRESH = list(range(FIRST_VIDEO, FIRST_VIDEO + 12))  # published within the last 20 h
LOW_COMPLETION, HIGH_DISLIKE = FIRST_VIDEO + 100, FIRST_VIDEO + 101
PLAYS = {**dict.fromkeys(range(1, 11), 0), **dict.fromkeys(range(11, 21), 3),
         **dict.fromkeys(range(21, 31), 10), **dict.fromkeys(range(31, 61), 40)}  # fmt: skip
NO_EMBEDDING = (11, 21, 41, 51)  # users with history but no query embedding
INDEX_VERSION = "2026-11-30_m1.i1"  # the index the generation was built from (its meta)
NEW_FIRST = 5000  # new videos: NEW_FIRST + category index
READ_KEY, FEEDBACK_KEY, BOTH_KEY = "test-read-key", "test-feedback-key", "test-both-key"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World:
    gen: str
    video_ids: np.ndarray
    channel: dict[int, int]
    category: dict[int, str]
    history: dict[int, list[int]] = field(default_factory=dict)
    recs: dict[int, list[int]] = field(default_factory=dict)
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM)))
    emb: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM)))  # row per video_ids
    likes: dict[int, list[str]] = field(default_factory=dict)  # categories, favourite first
    user_emb: dict[int, np.ndarray] = field(default_factory=dict)  # those written


def write_world(client: Any, root: str, gen: str, now: float, seed: int = 7) -> World:
    """Write the generation ``gen`` under ``root`` and point readers at it."""
    rng = np.random.default_rng(seed)
    keys = RedisKeys(root)
    ids = np.arange(FIRST_VIDEO, FIRST_VIDEO + N_VIDEOS)
    chan = {int(v): int(i % N_CHANNELS) for i, v in enumerate(ids)}
    cat = {int(v): CATEGORIES[chan[int(v)] % len(CATEGORIES)] for v in ids}
    centroids = rng.normal(size=(len(CATEGORIES), DIM))
    emb = np.stack([centroids[CATEGORIES.index(cat[int(v)])] for v in ids])
    emb = unit(emb + 0.6 * rng.normal(size=emb.shape))
    age_h = np.where(
        np.isin(ids, FRESH), rng.uniform(1, 20, len(ids)), rng.uniform(48, 2000, len(ids))
    )
    pipe = client.pipeline(transaction=False)
    for i, v in enumerate(ids.tolist()):
        completion = 0.05 if v == LOW_COMPLETION else float(rng.uniform(0.3, 0.9))
        fields = {
            "title": f"Video {v}", "category": cat[v], "channel_id": chan[v],
            "channel_name": f"Channel {chan[v]}", "language": "en", "duration_s": 300.0,
            "published_at": now - age_h[i] * 3600, "views": 5 if v in FRESH else 100 + i,
            "avg_completion": None if v in FRESH else completion,
            "dislike_ratio": 0.5 if v == HIGH_DISLIKE else float(rng.uniform(0, 0.05)),
            "embedding": emb[i].astype(np.float32),
        }  # fmt: skip
        mapping = {k: encode_field(VIDEO_FEATURES[k], x) for k, x in fields.items()}
        pipe.hset(
            keys.video_features(gen, v), mapping={k: x for k, x in mapping.items() if x is not None}
        )
        sims = emb @ emb[i]
        sims[i] = -np.inf
        top = np.argsort(-sims)[:20]
        pipe.set(keys.similar(gen, v), encode_scored(ids[top], sims[top]))
    world = World(gen, ids, chan, cat, centroids=centroids, emb=emb)
    for user, plays in PLAYS.items():
        if plays == 0:
            continue
        likes = rng.choice(len(CATEGORIES), size=2, replace=False)
        taste = unit(centroids[likes[0]] + 0.5 * centroids[likes[1]])
        in_taste = np.flatnonzero(np.isin([CATEGORIES.index(cat[int(v)]) for v in ids], likes))
        hist = [int(x) for x in ids[rng.choice(in_taste, size=plays, replace=False)]]
        scores = emb @ taste
        scores[np.isin(ids, hist)] = -np.inf
        top = np.argsort(-scores)[:200]
        world.history[user], world.recs[user] = hist, [int(x) for x in ids[top]]
        world.likes[user] = [CATEGORIES[likes[0]], CATEGORIES[likes[1]]]
        pipe.set(keys.user_recs(gen, user), encode_scored(ids[top], scores[top]))
        features = {
            "country": "US" if user % 2 else "DE", "language": "en" if user % 2 else "de",
            "plays": plays, "history": np.asarray(hist, np.int64),
            "preferred_categories": [[CATEGORIES[likes[0]], 0.7], [CATEGORIES[likes[1]], 0.3]],
        }  # fmt: skip
        if user not in NO_EMBEDDING:
            features["embedding"] = world.user_emb[user] = taste.astype(np.float32)
        pipe.hset(keys.user_features(gen, user),
                  mapping={k: encode_field(USER_FEATURES[k], x) for k, x in features.items()})  # fmt: skip
    views = {int(v): 100 + i for i, v in enumerate(ids)}
    for name, members in _lists(ids, cat, views).items():
        key = {"trending": keys.trending(gen)} | {
            f"trending:{c}": keys.trending(gen, c) for c in CATEGORIES
        } | {"country:US": keys.popular_country(gen, "US"), "country:DE": keys.popular_country(gen, "DE"),
             "lang:en": keys.popular_language(gen, "en"), "lang:de": keys.popular_language(gen, "de")}  # fmt: skip
        pipe.zadd(key[name], members)
    built = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
    meta = {
        "generation": gen,
        "categories": CATEGORIES,
        "countries": ["DE", "US"],
        "languages": ["de", "en"],
        "index_version": INDEX_VERSION,
    }
    pipe.hset(keys.meta(gen), mapping={"status": STATUS_COMPLETE, "built_at": built,
                                       JSON_FIELD: json.dumps(meta)})  # fmt: skip
    pipe.set(keys.pointer, gen)
    pipe.execute()
    return world


def new_video_ids() -> list[int]:
    """The new videos :func:`write_new_videos` writes: one per category, in order."""
    return [NEW_FIRST + i for i in range(len(CATEGORIES))]


def write_new_videos(client: Any, root: str, world: World, ngen: str, now: float,
                     index_version: str = INDEX_VERSION, seed: int = 11,
                     point: bool = True) -> list[int]:  # fmt: skip
    """Write the new-videos generation ``ngen`` (one video per category near its
    cluster's centre, published 5 to 30 minutes before ``now``, on channels of their
    own; similar lists of main and new videos merged by inner product), its metadata
    naming ``index_version``, and (``point``) point readers at it; returns the new
    video ids."""
    rng = np.random.default_rng(seed)
    keys = RedisKeys.new_videos(root)
    ids = new_video_ids()
    emb = unit(world.centroids + 0.2 * rng.normal(size=world.centroids.shape))
    all_ids = np.concatenate([world.video_ids, ids])
    all_emb = np.concatenate([world.emb, emb])
    pipe = client.pipeline(transaction=False)
    for i, v in enumerate(ids):
        fields = {
            "title": f"New video {v}", "category": CATEGORIES[i], "channel_id": 100 + i,
            "channel_name": f"New channel {i}", "language": "en", "duration_s": 240.0,
            "published_at": now - float(rng.uniform(5, 30)) * 60,
            "embedding": emb[i].astype(np.float32),
        }  # fmt: skip
        pipe.hset(keys.video_features(ngen, v),
                  mapping={k: encode_field(VIDEO_FEATURES[k], x) for k, x in fields.items()})  # fmt: skip
        sims = all_emb @ emb[i]
        sims[len(world.video_ids) + i] = -np.inf
        top = np.argsort(-sims)[:20]
        pipe.set(keys.similar(ngen, v), encode_scored(all_ids[top], sims[top]))
        for key in (keys.video_features(ngen, v), keys.similar(ngen, v)):
            pipe.expire(key, 3 * 3600)
    meta = {"delta_version": f"delta-{ngen}", "index_version": index_version,
            "model_version": "2026-11-30_m1", "videos": len(ids),
            "logical_time": dt.datetime.fromtimestamp(now, dt.UTC).isoformat()}  # fmt: skip
    pipe.hset(keys.meta(ngen), mapping={"status": STATUS_COMPLETE, "built_at": meta["logical_time"],
                                        JSON_FIELD: json.dumps(meta)})  # fmt: skip
    if point:
        pipe.set(keys.pointer, ngen)
    pipe.execute()
    return ids


def _lists(
    ids: np.ndarray, cat: dict[int, str], views: dict[int, int]
) -> dict[str, dict[str, float]]:
    """Trending overall and per category (top 30 / 15 by views), popular per country
    and language (every other video, by views)."""
    by_views = sorted((int(v) for v in ids), key=lambda v: -views[v])
    out: dict[str, dict[str, float]] = {
        "trending": {str(v): float(views[v]) for v in by_views[:30]}
    }
    for c in CATEGORIES:
        out[f"trending:{c}"] = dict(
            list({str(v): float(views[v]) for v in by_views if cat[v] == c}.items())[:15]
        )
    for name, parity in (("country:US", 1), ("lang:en", 1), ("country:DE", 0), ("lang:de", 0)):
        out[name] = {str(v): float(views[v]) for v in by_views if v % 2 == parity}
    return out


# ---- the server


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def serving_config(tmp: Path, redis_url: str, root: str, extra: dict[str, Any] | None = None,
                   **serving: Any) -> Path:  # fmt: skip
    """A config file under ``tmp`` (artifacts in ``tmp/artifacts``): the world's Redis key
    ``root``, quick refreshes, the three API keys, ``serving`` settings and ``extra``
    sections (e.g. ``{"ranking": {...}}``)."""
    conf = tmp / f"serving-{uuid.uuid4().hex[:6]}.yaml"
    conf.write_text(yaml.safe_dump({
        "artifacts": {"root": str(tmp / "artifacts")},
        "redis": {"url": redis_url},
        "precompute": {"key_prefix": root},
        # Budgets of 500 ms, not the production 50 ms (Redis) and 20 ms (re-ranking):
        # these tests check answers, not speed (bench/serving_benchmark.py does), and
        # share two vCPUs with another test worker, whose load could stall one request
        # past 20 ms and make it a fallback the test does not expect.
        "serving": {"similar_limit_max": 50, "refresh_s": 0.2, "snapshot_refresh_s": 0.5,
                    "redis_timeout_ms": 500.0, "rerank_timeout_ms": 500.0,
                    "api_keys": [
            {"name": "reader", "sha256": _digest(READ_KEY), "scopes": ["read"]},
            {"name": "feedback-only", "sha256": _digest(FEEDBACK_KEY), "scopes": ["feedback"]},
            {"name": "app", "sha256": _digest(BOTH_KEY), "scopes": ["read", "feedback"]},
        ], **serving},
        **(extra or {}),
    }))  # fmt: skip
    return conf


def start_server(conf: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``uvicorn videorec.serving.app:app`` on a free port, as production starts it;
    (the process, its base URL) once ``/healthz`` answers."""
    port = free_port()
    env = {**os.environ, "VIDEOREC_CONFIG": str(conf)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "videorec.serving.app:app", "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            pytest.fail(f"uvicorn did not start: {out[-3000:]}")
        time.sleep(0.2)
