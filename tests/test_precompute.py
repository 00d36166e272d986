"""Redis precompute against the real Redis: encodings, generations, atomic publish.

One small world is built per module: a two-tower-like export (clustered unit vectors,
with a few videos re-uploaded on the same channel under the same title), a real FAISS
index built and gated by ``build_index``, a hand-made features version whose plays
cover each user's nearest videos (so exclusion has work to do), and a data set
``videos`` table. Each test writes under its own key prefix and deletes it after.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from videorec.artifact_names import INDEX as INDEX_ARTIFACT
from videorec.artifact_names import MODEL as MODEL_ARTIFACT
from videorec.artifacts import LocalArtifactStore
from videorec.config import parse_config
from videorec.contract import SCHEMAS
from videorec.indexing.build import build_index
from videorec.precompute import PrecomputeError, RedisWriteError, precompute, status
from videorec.precompute.compute import top_per_group, trending_scores
from videorec.precompute.publish import read_meta
from videorec.precompute.run import generation_id
from videorec.redis_keys import (
    USER_FEATURES,
    VIDEO_FEATURES,
    EncodingError,
    RedisKeys,
    active_generation,
    decode_scored,
    encode_rows,
    encode_scored,
    read_features,
    read_ranked,
    read_scored,
)

DIM = 16
N_BASE, N_REUPLOADS, N_USERS = 600, 10, 80
ACTIVE, INACTIVE = range(70), range(70, 75)  # users 75..79 never played
WINDOW_END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
T1 = WINDOW_END + dt.timedelta(hours=4)
FV, MV = "2026-11-01_feat", "2026-11-01_model"
TS = pa.timestamp("us", tz="UTC")


OUF_SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("country", pa.string()), ("language", pa.string()),
    ("activity_level", pa.string()), ("plays", pa.int64()), ("active_days", pa.int64()),
    ("avg_watch_time_s", pa.float64()), ("last_seen", TS), ("last_played_at", TS),
    ("recent_history", pa.list_(pa.int64())),
    ("preferred_categories", pa.list_(pa.struct([("category", pa.string()), ("weight", pa.float64())]))),
])  # fmt: skip
OVF_SCHEMA = pa.schema([
    ("video_id", pa.int64()), ("title", pa.string()), ("category", pa.string()),
    ("channel_id", pa.int64()), ("channel_name", pa.string()), ("duration_s", pa.float64()),
    ("published_at", TS), ("views", pa.int64()), ("unique_viewers", pa.int64()),
    ("avg_completion", pa.float64()), ("skip_rate", pa.float64()), ("like_ratio", pa.float64()),
    ("dislike_ratio", pa.float64()), ("channel_avg_completion", pa.float64()),
    ("channel_like_ratio", pa.float64()), ("language", pa.string()),
])  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write(folder: Path, table: pa.Table) -> None:
    """A Spark-style output folder holding one part file."""
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-00000.parquet")


def _export(path: Path, id_name: str, ids: np.ndarray, x: np.ndarray) -> None:
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    pq.write_table(pa.table({id_name: ids, "embedding": emb}), path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("precompute")
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, DIM))
    base = _unit(centres[rng.integers(0, 12, N_BASE)] + 0.4 * rng.normal(size=(N_BASE, DIM)))
    # Re-uploads: nearly the same vector as the original, same channel, same title
    # written differently: each is the original's nearest neighbour.
    reup = _unit(base[:N_REUPLOADS] + 0.01 * rng.normal(size=(N_REUPLOADS, DIM)))
    vectors = np.vstack([base, reup])
    vids = (np.arange(len(vectors)) * 3 + 1_000).astype(np.int64)
    users = _unit(centres[rng.integers(0, 12, N_USERS)] + 0.4 * rng.normal(size=(N_USERS, DIM)))
    uids = np.arange(N_USERS, dtype=np.int64) + 5

    store = LocalArtifactStore(tmp / "artifacts")
    with store.write_version(MODEL_ARTIFACT, MV, {"features_version": FV}) as out:
        _export(out / "video_embeddings.parquet", "video_id", vids, vectors)
        _export(out / "user_embeddings.parquet", "user_id", uids, users)
    cfg = parse_config({
        "artifacts": {"root": str(tmp / "artifacts")},
        "index": {"work_dir": str(tmp / "work"), "factory": "IVF{nlist},Flat",
                  "validation_queries": 20, "latency_queries": 10},
    })  # fmt: skip

    # The data set's videos: channels and titles (re-uploads share both), categories.
    cats = ["Music", "Gaming", "News"]
    rows = [{"video_id": int(v), "title": f"Video number {i}", "channel_id": i % 40,
             "category": cats[i % 3]} for i, v in enumerate(vids[:N_BASE])]  # fmt: skip
    rows += [{"video_id": int(vids[N_BASE + i]), "title": f"  VIDEO   number {i} ",
              "channel_id": i % 40, "category": cats[i % 3]} for i in range(N_REUPLOADS)]  # fmt: skip
    data = tmp / "data"
    _write(data / "videos", pa.Table.from_pylist(rows, schema=SCHEMAS["videos"]))

    # Watched: each active user's 8 nearest videos, spread over every table the
    # watched set is read from; 2 more near ones are left for the recommendations.
    nearest = np.argsort(-(users @ vectors.T), axis=1)
    ex, ev, uf = [], [], []
    for u in range(N_USERS):
        n = vids[nearest[u]]
        if u in ACTIVE:
            when = WINDOW_END - dt.timedelta(days=2, minutes=u)
            ex += [{"user_id": uids[u], "video_id": n[j], "ts": when + dt.timedelta(minutes=j),
                    "history": [int(n[3]), int(n[4])]} for j in range(3)]  # fmt: skip
            ev.append({"user_id": uids[u], "video_id": n[7], "ts": WINDOW_END - dt.timedelta(hours=3),
                       "is_positive": False})  # fmt: skip
            recent, plays = [int(n[5]), int(n[6])], 4
        elif u in INACTIVE:
            ex.append({"user_id": uids[u], "video_id": n[0], "history": [],
                       "ts": WINDOW_END - dt.timedelta(days=29, hours=23)})  # fmt: skip
            recent, plays = [], 1
        else:
            recent, plays = [], 0
        uf.append({"user_id": uids[u], "country": [None, "US", "DE", "BR"][u % 4],
                   "language": ["en", "pt"][u % 2], "plays": plays, "recent_history": recent})  # fmt: skip
    # The watched set (the whole window): the 8 nearest of each active user, the last
    # one in the hold-out span; an inactive user's one play a month ago.
    wat, ouf = [], []
    for u in [*ACTIVE, *INACTIVE]:
        n = vids[nearest[u]]
        played = [(n[j], WINDOW_END - dt.timedelta(days=2, minutes=u - j)) for j in range(7)]
        played = [*played, (n[7], WINDOW_END - dt.timedelta(hours=3))] if u in ACTIVE else [
            (n[0], WINDOW_END - dt.timedelta(days=29, hours=23))]  # fmt: skip
        wat += [{"user_id": uids[u], "video_id": int(v), "last_played_at": when, "plays": 1}
                for v, when in played]  # fmt: skip
        ouf.append({"user_id": uids[u], "country": uf[u]["country"], "language": uf[u]["language"],
                    "activity_level": "light", "plays": len(played), "active_days": 1,
                    "avg_watch_time_s": 61.5, "last_seen": played[-1][1] + dt.timedelta(minutes=1),
                    "last_played_at": played[-1][1], "recent_history": [int(v) for v, _ in played],
                    "preferred_categories": [{"category": "Music", "weight": 0.75},
                                             {"category": "News", "weight": 0.25}]})  # fmt: skip
    ovf = [{"video_id": int(v), "title": r["title"], "category": r["category"],
            "channel_id": r["channel_id"], "channel_name": f"Channel {r['channel_id']}",
            "duration_s": 300.0, "published_at": WINDOW_END - dt.timedelta(days=9), "views": 4,
            "unique_viewers": 3, "avg_completion": 0.5, "skip_rate": None, "like_ratio": 0.25,
            "dislike_ratio": 0.0, "channel_avg_completion": 0.4, "channel_like_ratio": None}
           for v, r in zip(vids, rows, strict=True)] + [{"video_id": 999_999, "title": "not indexed"}]  # fmt: skip
    a, b, c, d = (int(v) for v in vids[[0, 3, 1, 6]])  # categories Music, Music, Gaming, Music
    trending = pa.table({"video_id": [a, b, c, d], "views_1h": [10, 0, 5, 50],
                         "views_24h": [10, 30, 25, 50], "viewers_24h": [5, 20, 10, 1]})  # fmt: skip
    fman = {"window_start": (WINDOW_END - dt.timedelta(days=30)).isoformat(),
            "window_end": WINDOW_END.isoformat(), "data": str(data)}  # fmt: skip
    with store.write_version("features", FV, fman) as out:
        ex_schema = pa.schema([("user_id", pa.int64()), ("video_id", pa.int64()), ("ts", TS),
                               ("history", pa.list_(pa.int64()))])  # fmt: skip
        _write(out / "examples", pa.Table.from_pylist(ex, schema=ex_schema))
        ev_schema = pa.schema([("user_id", pa.int64()), ("video_id", pa.int64()), ("ts", TS),
                               ("is_positive", pa.bool_())])  # fmt: skip
        _write(out / "eval", pa.Table.from_pylist(ev, schema=ev_schema))
        uf_schema = pa.schema([("user_id", pa.int64()), ("country", pa.string()),
                               ("language", pa.string()), ("plays", pa.int64()),
                               ("recent_history", pa.list_(pa.int64()))])  # fmt: skip
        _write(out / "user_features", pa.Table.from_pylist(uf, schema=uf_schema))
        _write(out / "trending", trending)
        _write(out / "watched", pa.Table.from_pylist(wat, schema=pa.schema([
            ("user_id", pa.int64()), ("video_id", pa.int64()), ("last_played_at", TS),
            ("plays", pa.int64())])))  # fmt: skip
        _write(out / "online_user_features", pa.Table.from_pylist(ouf, schema=OUF_SCHEMA))
        _write(out / "online_video_features", pa.Table.from_pylist(ovf, schema=OVF_SCHEMA))
    # Built once its model's features version exists (the build holds and checks it).
    index_version = build_index(cfg, model_version=MV, store=store)["version"]
    watched = {int(uids[u]): set(vids[nearest[u][:8]].tolist()) for u in ACTIVE}
    next_best = {int(uids[u]): int(vids[nearest[u][8]]) for u in ACTIVE}
    country = {r["user_id"]: r["country"] for r in uf}
    positives = [{**r, "video_id": int(r["video_id"]), "country": country[r["user_id"]]}
                 for r in ex]  # fmt: skip
    return {"tmp": tmp, "store": store, "index_version": index_version, "vids": vids,
            "vectors": vectors, "uids": uids, "positives": positives, "watched": watched, "next_best": next_best,
            "trend": (a, b, c, d), "data": data, "ouf": ouf, "users": users}  # fmt: skip


@pytest.fixture
def env(world: dict[str, Any], redis_url: str) -> Iterator[dict[str, Any]]:
    """The world, a config writing under a fresh key prefix, a client; keys removed after."""
    prefix = f"test-precompute-{uuid.uuid4().hex[:10]}"
    cfg = parse_config({
        "artifacts": {"root": str(world["tmp"] / "artifacts")},
        # A short lease: a killed writer's lapses within seconds for the run after it.
        "precompute": {"key_prefix": prefix, "ttl_s": 600, "users_per_chunk": 16,
                       "pipeline_commands": 50, "similar_recall_sample": 200, "lease_s": 3,
                       "lease_wait_s": 60},
    })  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    yield {**world, "cfg": cfg, "client": client, "keys": RedisKeys(prefix)}
    names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if names:
        client.delete(*names)


def run(env: dict[str, Any], t: dt.datetime = T1, client: Any = None) -> dict[str, Any]:
    return precompute(
        env["cfg"], index_version=env["index_version"], logical_time=t, store=env["store"],
        redis=client if client is not None else env["client"],
    )  # fmt: skip


def test_another_data_set_is_another_generation(env: dict[str, Any], tmp_path: Path) -> None:
    """The catalogue read (re-upload groups, categories) comes from the data set, so a
    run over another one is not skipped as the features' data set's generation."""
    import shutil

    first = run(env)
    same = precompute(env["cfg"], index_version=env["index_version"], logical_time=T1,
                      store=env["store"], redis=env["client"], data_dir=str(env["data"]))  # fmt: skip
    assert same["skipped"] and same["generation"] == first["generation"]
    other = tmp_path / "other-data"
    shutil.copytree(env["data"], other)
    moved = precompute(env["cfg"], index_version=env["index_version"], logical_time=T1,
                       store=env["store"], redis=env["client"], data_dir=str(other))  # fmt: skip
    assert moved["published"] and moved["generation"] != first["generation"]
    assert moved["meta"]["data"] == str(other)


class FlakyRedis:
    """A client whose pipelines fail (or lose a key) at the n-th execute; else the real one."""

    def __init__(self, inner: redis.Redis, fail_at: int = 0, evict_at: int = 0) -> None:
        self.inner, self.fail_at, self.evict_at, self.executes = inner, fail_at, evict_at, 0

    def pipeline(self, transaction: bool = True) -> Any:
        outer, pipe = self, self.inner.pipeline(transaction=transaction)
        real_execute = pipe.execute

        def execute(*a: Any, **kw: Any) -> Any:
            outer.executes += 1
            if outer.executes == outer.fail_at:
                raise redis.exceptions.ConnectionError("injected: Redis refused the write")
            sets = [c[0][1] for c in pipe.command_stack if c[0][0] == "SET"]
            replies = real_execute(*a, **kw)
            if outer.executes == outer.evict_at and sets:
                outer.inner.delete(sets[0])  # as if evicted right after it was written
            return replies

        pipe.execute = execute
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---- encodings and key names


def test_packed_lists_round_trip_and_refuse_bad_input() -> None:
    ids = np.array([7, 2**40 + 3, -5], dtype=np.int64)
    scores = np.array([0.91, 0.5, -0.25], dtype=np.float32)
    blob = encode_scored(ids, scores)
    assert len(blob) == 1 + 10 * 3
    got_ids, got_scores = decode_scored(blob)
    assert got_ids.tolist() == ids.tolist()
    assert np.allclose(got_scores, scores, atol=1e-3) and got_scores.dtype == np.float32
    assert [len(x) for x in decode_scored(encode_scored(ids[:0], scores[:0]))] == [0, 0]
    # Rows of a matrix, each cut to its length, decode like single lists.
    m_ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    m_sc = np.linspace(1, 0, 12, dtype=np.float32).reshape(3, 4)
    blobs = encode_rows(m_ids, m_sc, np.array([4, 0, 2]))
    for row, (blob, n) in enumerate(zip(blobs, [4, 0, 2], strict=True)):
        i, s = decode_scored(blob)
        assert i.tolist() == m_ids[row, :n].tolist() and np.allclose(s, m_sc[row, :n], atol=1e-3)
    for bad in (b"", b"\x02" + bytes(10), b"\x01" + bytes(9)):
        with pytest.raises(EncodingError):
            decode_scored(bad)
    with pytest.raises(EncodingError):
        encode_scored(ids, np.array([1.0, np.nan, 0.0]))
    with pytest.raises(EncodingError):
        encode_scored(ids, np.array([1e6, 0.0, 0.0]))


def test_key_schema_hash_tags_and_names() -> None:
    from redis.crc import key_slot

    k = RedisKeys("vr")
    assert k.user_recs("g1", 42) == "vr:g:g1:u:{42}:recs"
    # A user's keys share a slot in every generation; the control keys share one too.
    assert key_slot(k.user_recs("g1", 42).encode()) == key_slot(k.user_recs("g2", 42).encode())
    assert len({key_slot(x.encode()) for x in (k.pointer, k.previous, k.meta("g9"))}) == 1
    assert k.pointer != "vr:generation" and "generation" not in k.pointer
    assert (
        k.trending("g1", "Film & {Animation}")
        == "vr:g:g1:trending:cat:Film%20%26%20%7BAnimation%7D"
    )
    for bad_root in ("has space", "br{ace}", ""):
        with pytest.raises(ValueError):
            RedisKeys(bad_root)
    with pytest.raises(ValueError):
        k.user_recs("a:b", 1)


def test_trending_formula_by_hand() -> None:
    w = 2 ** (-12.5 / 6.0)  # a view 1..24 h old, at the bucket's mid-age and a 6 h half-life
    got = trending_scores(
        np.array([10, 0, 5, 50]), np.array([10, 30, 25, 50]), np.array([5, 20, 10, 1]), 6.0, 2
    )
    assert np.allclose(got[:3], [10.0, 30 * w, 5 + 20 * w]) and np.isnan(got[3])
    assert top_per_group(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), 5) == {}
    lists = top_per_group(
        np.array([1, 0, 1, 1]), np.array([9, 8, 7, 6]), np.array([1.0, 5, 2, 2]), 2
    )
    assert {g: (i.tolist(), s.tolist()) for g, (i, s) in lists.items()} == {
        0: ([8], [5.0]),
        1: ([6, 7], [2.0, 2.0]),  # ties by video id
    }


# ---- a full run


def test_a_run_publishes_a_complete_counted_generation(env: dict[str, Any]) -> None:
    client, keys, cfg = env["client"], env["keys"], env["cfg"]
    res = run(env)
    gen, meta = res["generation"], res["meta"]
    assert res["published"] and not res["skipped"] and res["previous"] is None
    assert active_generation(client, keys) == gen and client.ttl(keys.pointer) == -1
    assert meta["counts"]["recs"] == len(ACTIVE) == meta["recs"]["active_users"]
    assert meta["counts"]["similar"] == len(env["vids"])
    assert meta["model_version"] == MV and meta["features_version"] == FV
    assert meta["index_version"] == env["index_version"] and meta["built_at"] == T1.isoformat()
    assert meta["similar_recall@100"] >= 0.8 and meta["bytes_per_key"]["recs"] > 2_000
    # Only active users have a key; every key carries the configured TTL.
    uids = env["uids"]
    assert all(client.exists(keys.user_recs(gen, int(uids[u]))) for u in ACTIVE)
    assert not any(client.exists(keys.user_recs(gen, int(uids[u]))) for u in range(70, 80))
    sample = [keys.user_recs(gen, int(uids[0])), keys.similar(gen, int(env["vids"][0])),
              keys.trending(gen), keys.popular_country(gen, "US"), keys.meta(gen)]  # fmt: skip
    for name in sample:
        assert 0 < client.ttl(name) <= cfg.precompute.ttl_s, name


def test_watched_videos_never_appear_in_base_recommendations(env: dict[str, Any]) -> None:
    gen = run(env)["generation"]
    firsts = []
    for uid, seen in env["watched"].items():
        ids, scores = read_scored(env["client"], env["keys"].user_recs(gen, uid))
        assert len(ids) == 200 and len(set(ids.tolist())) == 200
        assert not seen & set(ids.tolist()), uid
        assert np.all(np.diff(scores) <= 1e-3)  # best first (float16 rounding aside)
        firsts.append(ids[0] == env["next_best"][uid])
    # The exclusion removed the 8 nearest, so the 9th nearest now leads (the IVF search
    # may miss it for a few users).
    assert np.mean(firsts) >= 0.9


def test_the_online_feature_store_round_trips(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    res = run(env)
    gen, meta = res["generation"], res["meta"]
    uids, vids = env["uids"], env["vids"]
    # Everyone seen in the window has a hash (inactive users too: serving's cold path
    # reads their country and history); users never seen have none.
    assert meta["counts"]["user_features"] == len(ACTIVE) + len(INACTIVE)
    assert not client.exists(keys.user_features(gen, int(uids[79])))
    u = 3
    got = read_features(client, keys.user_features(gen, int(uids[u])), USER_FEATURES)
    want = env["ouf"][u]
    assert got["history"].tolist() == want["recent_history"]  # the hold-out play included
    assert got["last_seen"] == want["last_seen"].timestamp()
    assert got["preferred_categories"] == [["Music", 0.75], ["News", 0.25]]
    assert (got["country"], got["language"], got["plays"]) == (want["country"], "pt", 8)
    assert got["avg_watch_time_s"] == 61.5
    # The query embedding, for serving's search of the hour's new videos.
    assert np.array_equal(got["embedding"], env["users"][u].astype(np.float32))
    # Videos: every catalogue row; the indexed ones carry their embedding, nulls are absent.
    assert meta["counts"]["video_features"] == len(vids) + 1
    v = read_features(client, keys.video_features(gen, int(vids[5])), VIDEO_FEATURES)
    assert np.array_equal(v["embedding"], env["vectors"][5])
    assert (v["title"], v["category"], v["channel_id"], v["views"]) == (
        "Video number 5", "News", 5, 4)  # fmt: skip
    assert v["like_ratio"] == 0.25 and "skip_rate" not in v and "channel_like_ratio" not in v
    assert "embedding" not in read_features(
        client, keys.video_features(gen, 999_999), VIDEO_FEATURES
    )
    for name in (keys.user_features(gen, int(uids[u])), keys.video_features(gen, int(vids[5]))):
        assert 0 < client.ttl(name) <= env["cfg"].precompute.ttl_s
    assert meta["bytes_per_key"]["user_features"] > 0


def test_similar_lists_exclude_the_video_and_its_reuploads(env: dict[str, Any]) -> None:
    gen = run(env)["generation"]
    vids = env["vids"]
    from videorec.indexing.reader import load_index

    # Without the exclusion each re-upload is its original's nearest other video.
    index = load_index(env["store"], env["index_version"]).index
    _, raw = index.search(env["vectors"][:N_REUPLOADS], 2)
    assert {tuple(sorted(r)) for r in raw.tolist()} == {
        tuple(sorted((int(vids[i]), int(vids[N_BASE + i])))) for i in range(N_REUPLOADS)
    }
    for i in range(N_REUPLOADS):
        original, reupload = int(vids[i]), int(vids[N_BASE + i])
        for me, twin in ((original, reupload), (reupload, original)):
            ids, _ = read_scored(env["client"], env["keys"].similar(gen, me))
            assert len(ids) == 100 and me not in ids and twin not in ids
    ids, _ = read_scored(env["client"], env["keys"].similar(gen, int(vids[N_BASE - 1])))
    assert len(ids) == 100 and int(vids[N_BASE - 1]) not in ids


def test_trending_and_popular_lists(env: dict[str, Any]) -> None:
    res = run(env)
    gen, client, keys = res["generation"], env["client"], env["keys"]
    a, b, c, _d = env["trend"]  # d has one viewer: left out
    w = 2 ** (-12.5 / 6.0)
    want = [(a, 10.0), (c, 5 + 20 * w), (b, 30 * w)]
    got = read_ranked(client, keys.trending(gen))
    assert [v for v, _ in got] == [v for v, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want])
    assert [v for v, _ in read_ranked(client, keys.trending(gen, "Music"))] == [a, b]
    assert [v for v, _ in read_ranked(client, keys.trending(gen, "Gaming"))] == [c]
    assert res["meta"]["categories"] == ["Gaming", "Music"]
    assert res["meta"]["countries"] == ["BR", "DE", "US"] and res["meta"]["languages"] == [
        "en",
        "pt",
    ]
    # Popular in the US, by hand: every positive play of a US user, 2^(-age / 72 h).
    want_us: dict[int, float] = {}
    for row in env["positives"]:
        if row["country"] == "US":
            age_h = (T1 - row["ts"]).total_seconds() / 3600
            want_us[row["video_id"]] = want_us.get(row["video_id"], 0.0) + 2 ** (-age_h / 72)
    ranked = sorted(want_us.items(), key=lambda kv: (-kv[1], kv[0]))
    us = read_ranked(client, keys.popular_country(gen, "US"))
    assert [v for v, _ in us] == [v for v, _ in ranked]
    assert np.allclose([s for _, s in us], [s for _, s in ranked])


# ---- generations: idempotency, failures, concurrent readers


def test_a_rerun_changes_nothing(env: dict[str, Any]) -> None:
    first = run(env)
    counting = FlakyRedis(env["client"])
    again = run(env, client=counting)
    assert again["skipped"] and not again["published"] and again["reason"] == "already active"
    assert again["generation"] == first["generation"] and counting.executes == 0
    assert again["meta"] == first["meta"]
    # A twin run starting after the publish leaves the live metadata complete.
    from videorec.precompute.publish import begin

    gen = first["generation"]
    assert not begin(env["client"], env["keys"], gen, first["meta"], 600)
    assert read_meta(env["client"], env["keys"], gen) == first["meta"]


def _twins(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, first_client: Any
) -> tuple[dict[str, Any], list[str], list[Any]]:
    """Two runs for one generation: the first holds the lease and, before writing its
    first key, waits until the second has said it is waiting. (the second's result,
    the second's log, [the first's result or error]); ``env["writes"]`` counts the
    runs that wrote keys."""
    from videorec.precompute import run as run_module

    real, waiting = run_module._write_all, threading.Event()
    env["writes"] = 0

    def write_all(*a: Any, **kw: Any) -> Any:
        env["writes"] += 1
        assert waiting.wait(60), "the twin never waited"
        return real(*a, **kw)

    monkeypatch.setattr(run_module, "_write_all", write_all)
    t2, first_out, lines = T1 + dt.timedelta(hours=4), [], []

    def first() -> None:
        try:
            first_out.append(run(env, t2, client=first_client))
        except Exception as err:  # handed to the test
            first_out.append(err)

    def log(line: str) -> None:
        lines.append(line)
        if "waiting" in line:
            waiting.set()

    thread = threading.Thread(target=first)
    thread.start()
    key_prefix = f"{env['keys'].root}:{{precompute}}:gen:"
    deadline = dt.datetime.now() + dt.timedelta(seconds=60)
    while not any(k.endswith(b":lease") for k in env["client"].scan_iter(f"{key_prefix}*")):
        assert dt.datetime.now() < deadline and thread.is_alive(), first_out
        time.sleep(0.01)
    second = precompute(env["cfg"], index_version=env["index_version"], logical_time=t2,
                        store=env["store"], redis=env["client"], log=log)  # fmt: skip
    thread.join(120)
    return second, lines, first_out


def test_a_twin_run_waits_for_the_writer_and_skips(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain's precompute and the one its index's asset triggers, at once: one
    writes the generation, the other waits for its lease and skips, writing nothing."""
    counting = FlakyRedis(env["client"])
    second, lines, (first,) = _twins(env, monkeypatch, counting)
    assert first["published"] and first["meta"]["status"] == "complete", first
    assert second["skipped"] and not second["published"]
    assert second["generation"] == first["generation"]
    assert second["reason"] == "written by a twin run: already active"
    assert any("another run is writing it" in line for line in lines)
    assert env["writes"] == 1 and counting.executes > 0  # the first run wrote, alone
    assert not env["client"].exists(env["keys"].lease(first["generation"]))  # let go


def test_a_twin_writes_the_generation_when_the_writer_fails(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    second, _, (first,) = _twins(env, monkeypatch, FlakyRedis(env["client"], fail_at=6))
    assert isinstance(first, RedisWriteError) and env["writes"] == 2
    assert second["published"] and not second["skipped"]
    assert active_generation(env["client"], env["keys"]) == second["generation"]
    assert read_meta(env["client"], env["keys"], second["generation"])["status"] == "complete"


def test_a_lapsed_lease_is_taken_and_a_held_one_is_waited_for_then_refused(
    env: dict[str, Any],
) -> None:
    """A killed writer's lease (never renewed) lapses after its expiry, and the next run
    writes the generation; one a live writer holds past ``lease_wait_s`` is refused by
    name, with nothing written."""
    client, keys = env["client"], env["keys"]
    gen = generation_id(env["cfg"], logical_time=T1, model_version=MV,
                        index_version=env["index_version"], features_version=FV,
                        data=str(env["data"]))  # fmt: skip
    client.set(keys.lease(gen), "a-killed-run", px=3000)
    lines: list[str] = []
    res = precompute(env["cfg"], index_version=env["index_version"], logical_time=T1,
                     store=env["store"], redis=client, log=lines.append)  # fmt: skip
    assert res["published"] and res["generation"] == gen
    assert any("another run is writing it" in line for line in lines)  # it waited
    t2 = T1 + dt.timedelta(hours=4)
    gen2 = generation_id(env["cfg"], logical_time=t2, model_version=MV,
                         index_version=env["index_version"], features_version=FV,
                         data=str(env["data"]))  # fmt: skip
    client.set(keys.lease(gen2), "a-live-run", px=60_000)
    impatient = env["cfg"].model_copy(
        update={"precompute": env["cfg"].precompute.model_copy(update={"lease_wait_s": 1.0})}
    )
    with pytest.raises(PrecomputeError, match=r"precompute\.lease_wait_s"):
        precompute(impatient, index_version=env["index_version"], logical_time=t2,
                   store=env["store"], redis=client)  # fmt: skip
    assert not list(client.scan_iter(match=f"{keys.namespace(gen2)}:*"))
    assert client.get(keys.lease(gen2)) == b"a-live-run"  # not released by the refused run
    assert active_generation(client, keys) == gen


def test_a_run_that_fails_once_it_holds_the_lease_lets_it_go(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost between taking the lease and the pointer's second check: the error
    is the run's, and the lease is released, not left renewing for a twin to wait on."""
    from videorec.precompute import run as run_module

    real, calls = run_module.pointer_or_skip, []

    def second_check_fails(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise PrecomputeError("Redis (test) is unreachable: injected")
        return real(*a, **kw)

    monkeypatch.setattr(run_module, "pointer_or_skip", second_check_fails)
    with pytest.raises(PrecomputeError, match="injected"):
        run(env)
    gen = generation_id(env["cfg"], logical_time=T1, model_version=MV,
                        index_version=env["index_version"], features_version=FV,
                        data=str(env["data"]))  # fmt: skip
    assert len(calls) == 2 and not env["client"].exists(env["keys"].lease(gen))


def test_a_pointer_that_outlived_its_generation_is_rebuilt(env: dict[str, Any]) -> None:
    first = run(env)
    gen, client = first["generation"], env["client"]
    for key in client.scan_iter(match=f"{env['keys'].namespace(gen)}:*", count=10_000):
        client.delete(key)  # every key expired; the pointer (no TTL) still names it
    client.delete(env["keys"].meta(gen))
    again = run(env)
    assert again["generation"] == gen and again["published"] and not again["skipped"]
    assert read_meta(client, env["keys"], gen)["status"] == "complete"
    ns = env["keys"].namespace(gen)
    assert sum(1 for _ in client.scan_iter(match=f"{ns}:*", count=10_000)) == sum(
        first["meta"]["counts"].values()
    )


def test_a_run_failing_midway_leaves_the_old_generation_and_a_rerun_completes(
    env: dict[str, Any],
) -> None:
    client, keys = env["client"], env["keys"]
    old = run(env)["generation"]
    uid = int(env["uids"][0])
    before = client.get(keys.user_recs(old, uid))
    t2 = T1 + dt.timedelta(hours=4)
    with pytest.raises(RedisWriteError, match="injected"):
        run(env, t2, client=FlakyRedis(client, fail_at=6))
    assert active_generation(client, keys) == old
    assert client.get(keys.user_recs(old, uid)) == before
    partial = [
        n for n in client.scan_iter(match=f"{keys.root}:g:*", count=1000) if old.encode() not in n
    ]
    assert partial and all(0 < client.ttl(n) <= 600 for n in partial)  # expiring, not live
    new = run(env, t2)
    assert new["published"] and new["previous"] == old != new["generation"]
    assert active_generation(client, keys) == new["generation"]
    assert client.get(keys.previous).decode() == old
    assert status(env["cfg"], client, at=t2 + dt.timedelta(minutes=30))["age_s"] == 1800.0


def test_a_writer_killed_midway_leaves_the_old_generation_and_a_rerun_completes(
    env: dict[str, Any], tmp_path: Path, redis_url: str
) -> None:
    """SIGKILL of a `videorec precompute run` process while it writes: writes are held
    (CLIENT PAUSE WRITE) the moment its first data key appears, so the kill lands midway
    every time, not only when the race allows."""
    import signal
    import subprocess
    import sys

    import yaml

    client, keys = env["client"], env["keys"]
    old = run(env)["generation"]
    before = client.get(keys.user_recs(old, int(env["uids"][0])))
    t2 = T1 + dt.timedelta(hours=4)
    gen = generation_id(env["cfg"], logical_time=t2, model_version=MV,
                        index_version=env["index_version"], features_version=FV,
                        data=str(env["data"]))  # fmt: skip
    conf = tmp_path / "c.yaml"
    conf.write_text(
        yaml.safe_dump({**env["cfg"].model_dump(mode="json"), "redis": {"url": redis_url}})
    )
    exe = str(Path(sys.executable).parent / "videorec")
    proc = subprocess.Popen([exe, "precompute", "run", "--index", env["index_version"],
                             "--at", t2.isoformat(), "--config", str(conf), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    probes = [keys.user_recs(gen, int(u)) for u in env["uids"][list(ACTIVE)]]
    try:
        deadline = dt.datetime.now() + dt.timedelta(seconds=120)
        while not client.exists(*probes):
            assert proc.poll() is None, proc.communicate()
            assert dt.datetime.now() < deadline, "the writer never wrote"
        client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert active_generation(client, keys) == old  # readers still get the old generation
    assert client.get(keys.user_recs(old, int(env["uids"][0]))) == before
    partial = list(client.scan_iter(match=f"{keys.namespace(gen)}:*", count=1000))
    assert 0 < len(partial) < 2 * len(env["vids"])  # midway: some keys, far from all
    assert all(0 < client.ttl(n) <= 600 for n in partial)  # expiring, not live
    assert read_meta(client, keys, gen)["status"] == "writing"
    again = run(env, t2)
    assert again["published"] and again["previous"] == old
    assert again["generation"] == gen
    assert again["meta"]["counts"]["recs"] == len(ACTIVE)


def test_the_spark_engine_writes_what_the_local_one_does(env: dict[str, Any], spark: Any) -> None:
    """Base recommendations from Spark executors (local[2]): the same bytes per user as
    the local run, counted by the executors, the generation published."""
    local = run(env)
    cfg = env["cfg"].model_copy(update={"precompute": env["cfg"].precompute.model_copy(
        update={"key_prefix": env["keys"].root + "-spark", "engine": "spark",
                "spark_partitions": 3, "users_per_chunk": 7})})  # fmt: skip
    keys = RedisKeys(cfg.precompute.key_prefix)
    try:
        res = precompute(cfg, index_version=env["index_version"], logical_time=T1,
                         store=env["store"], redis=env["client"], spark=spark)  # fmt: skip
        assert res["published"] and res["generation"] == local["generation"]
        assert res["meta"]["recs"]["engine"] == "spark"
        assert res["meta"]["counts"]["recs"] == len(ACTIVE)
        for u in env["uids"][list(ACTIVE)]:
            got = env["client"].get(keys.user_recs(res["generation"], int(u)))
            assert got == env["client"].get(env["keys"].user_recs(local["generation"], int(u)))
            assert 0 < env["client"].ttl(keys.user_recs(res["generation"], int(u))) <= 600
    finally:
        names = list(env["client"].scan_iter(match=f"{keys.root}:*", count=1000))
        if names:
            env["client"].delete(*names)


def test_a_key_lost_before_the_count_blocks_the_flip(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    old = run(env)["generation"]
    with pytest.raises(RedisWriteError, match="recs: 69 keys present of 70"):
        run(env, T1 + dt.timedelta(hours=4), client=FlakyRedis(client, evict_at=3))
    assert active_generation(client, keys) == old


def test_an_older_logical_time_never_replaces_a_newer_generation(env: dict[str, Any]) -> None:
    newer = run(env, T1 + dt.timedelta(hours=8))
    older = run(env, T1)
    assert not older["published"] and "newer" in older["reason"]
    assert active_generation(env["client"], env["keys"]) == newer["generation"]


def test_the_generation_of_an_index_published_later_outranks_a_later_logical_time(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """A retrain (logical 02:00) publishes index Y after the 04:00 run of index X went
    live: Y's generation must replace it (found by review: refused as older, serving
    kept X's recommendations until 08:00). A late run of X, whatever its time, then
    cannot displace Y's; nor can X's again after Y is rolled back... until X is live."""
    import shutil

    from videorec.indexing import slots

    root = tmp_path / "artifacts"  # a store of this test's own: its slots are published
    shutil.copytree(env["tmp"] / "artifacts", root)
    store = LocalArtifactStore(root)
    cfg = env["cfg"].model_copy(update={"artifacts": env["cfg"].artifacts.model_copy(
        update={"root": str(root)})})  # fmt: skip
    x = env["index_version"]
    y = build_index(parse_config({
        "artifacts": {"root": str(root)},
        "index": {"work_dir": str(tmp_path / "work"), "factory": "IVF{nlist},Flat", "nlist": 8,
                  "validation_queries": 20, "latency_queries": 10},
    }), model_version=MV, store=store)["version"]  # fmt: skip
    assert y != x

    def at(version: str, hours: int) -> dict[str, Any]:
        return precompute(cfg, index_version=version, logical_time=WINDOW_END + dt.timedelta(
            hours=hours), store=store, redis=env["client"])  # fmt: skip

    slots.publish(store, x)
    four_am = at(x, 28)
    assert four_am["published"] and four_am["meta"]["index_generation"] == 1
    slots.publish(store, y)
    retrain = at(y, 26)
    assert retrain["published"], retrain.get("reason")
    assert retrain["meta"]["index_generation"] == 2
    late = at(x, 32)  # the old index's run, later in time: X is no longer live
    assert not late["published"] and "newer" in late["reason"]
    assert active_generation(env["client"], env["keys"]) == retrain["generation"]
    slots.rollback(store)  # X live again (pointer generation 3): its generation outranks Y's
    back = at(x, 32)
    assert back["published"] and back["meta"]["index_generation"] == 3


def test_readers_keep_a_consistent_generation_during_a_publish(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    old = run(env)["generation"]
    reader = redis.Redis(connection_pool=client.connection_pool)
    users = [int(u) for u in env["uids"][:5]]
    seen: set[str] = set()
    errors: list[str] = []
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            gen = active_generation(reader, keys)  # resolve once, then read inside it
            lists = [read_scored(reader, keys.user_recs(gen, u)) for u in users]
            meta_gen = reader.hget(keys.meta(gen), "status")
            if any(x is None for x in lists) or meta_gen != b"complete":
                errors.append(gen)
            seen.add(gen)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        new = run(env, T1 + dt.timedelta(hours=4))["generation"]
        for _ in range(200):  # let the reader see the new generation too
            if new in seen:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    assert not errors and {old, new} <= seen
    # A reader that resolved the old generation still reads all of it.
    assert all(read_scored(client, keys.user_recs(old, u)) is not None for u in users)


# ---- bad input


def test_bad_inputs_are_named_and_publish_nothing(env: dict[str, Any], tmp_path: Path) -> None:
    from videorec.services import free_port

    with pytest.raises(PrecomputeError, match="index version 'nope' does not exist"):
        precompute(env["cfg"], index_version="nope", logical_time=T1, store=env["store"],
                   redis=env["client"])  # fmt: skip
    with pytest.raises(ValueError, match="timezone-aware"):
        run(env, dt.datetime(2026, 11, 1, 4))
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    with pytest.raises(PrecomputeError, match="unreachable"):
        run(env, client=dead)
    # A model whose user embeddings do not match the index's dimension.
    store = env["store"]
    good = store.read_manifest(INDEX_ARTIFACT, env["index_version"])
    with store.write_version(
        MODEL_ARTIFACT, "2026-11-01_wrongdim", {"features_version": FV}
    ) as out:
        x = _unit(np.random.default_rng(0).normal(size=(len(env["vids"]), DIM + 1)))
        _export(out / "video_embeddings.parquet", "video_id", env["vids"], x)
        _export(out / "user_embeddings.parquet", "user_id", env["uids"], x[: len(env["uids"])])
    index_dir = store.local_path(INDEX_ARTIFACT, env["index_version"])
    bad = {k: good[k] for k in ("gate", "metric", "nprobe", "probe_parameter")}
    with store.write_version(
        INDEX_ARTIFACT, "wrongdim", {**bad, "model_version": "2026-11-01_wrongdim"}
    ) as out:
        (out / "index.faiss").write_bytes((index_dir / "index.faiss").read_bytes())
    with pytest.raises(PrecomputeError, match="dimension 17, index 'wrongdim' has 16"):
        precompute(env["cfg"], index_version="wrongdim", logical_time=T1, store=store,
                   redis=env["client"])  # fmt: skip
    assert active_generation(env["client"], env["keys"]) is None


def test_cli_run_status_and_bad_input(env: dict[str, Any], tmp_path: Path, redis_url: str) -> None:
    """`videorec precompute run|status` as a real subprocess: a run publishes, status
    reports it, a missing index exits 2 naming it, an unreachable Redis exits 1."""
    import json
    import subprocess
    import sys

    import yaml

    exe = str(Path(sys.executable).parent / "videorec")
    conf = tmp_path / "c.yaml"
    body = env["cfg"].model_dump(mode="json")
    body["redis"] = {"url": redis_url}
    conf.write_text(yaml.safe_dump(body))

    def cli(*args: str, config: Path = conf) -> tuple[int, dict[str, Any]]:
        p = subprocess.run([exe, "precompute", *args, "--config", str(config), "--json"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert "Traceback" not in p.stderr, p.stderr
        return p.returncode, json.loads(p.stdout)

    at = T1.isoformat()
    code, res = cli("run", "--index", env["index_version"], "--at", at)
    assert code == 0 and res["published"] is True, res
    code, st = cli("status", "--at", (T1 + dt.timedelta(hours=1)).isoformat())
    assert code == 0 and st["active"] == res["generation"] and st["age_s"] == 3600.0
    code, err = cli("run", "--index", "2026-11-01_nope.abc", "--at", at)
    assert code == 2 and "2026-11-01_nope.abc" in err["message"]
    code, err = cli("run", "--index", env["index_version"])
    assert code == 2 and "--at" in err["message"]
    down = tmp_path / "down.yaml"
    down.write_text(yaml.safe_dump({**body, "redis": {"url": "redis://127.0.0.1:1/0"}}))
    code, err = cli("run", "--index", env["index_version"], "--at", at, config=down)
    assert code == 1 and "unreachable" in err["message"]
    code, err = cli("status", config=down)
    assert code == 1 and "unreachable" in err["message"]


def test_fresh_lists_of_more_events_are_another_generation_not_a_rewrite(
    tmp_path: Path, redis_url: str
) -> None:
    """The drain appends events before t after t: the 15-minute lists of t read again
    are a function of the files read, so they make another generation and never rewrite
    the live one's keys (found by review: same id, the twin rewrote the live lists)."""
    import pyarrow.compute as pc

    from videorec.datagen.synthetic import GeneratorParams, generate
    from videorec.dataset import append_events, read_table
    from videorec.precompute.fresh import refresh_trending

    data = tmp_path / "platform"
    generate(GeneratorParams(users=400, videos=300, days=5, seed=7,
                             end_date=dt.date(2026, 11, 1)), data, config_digest="test",
             progress=False)  # fmt: skip
    t = dt.datetime(2026, 10, 31, 23, 0, tzinfo=dt.UTC)
    prefix = f"test-fresh-{uuid.uuid4().hex[:10]}"
    cfg = parse_config({"data": {"dir": str(data)}, "precompute": {"key_prefix": prefix}})
    client, keys = redis.Redis.from_url(redis_url), RedisKeys.fresh(prefix)
    try:
        a = refresh_trending(cfg, logical_time=t, redis=client)
        before = client.zrevrange(keys.trending(a["generation"]), 0, -1, withscores=True)
        ev = read_table(str(data), "watch_events")
        plays = ev.filter(pc.equal(ev["event_type"], "watch")).slice(0, 60)
        late = {**{c: plays[c] for c in plays.column_names},
                "event_id": pa.array([f"late-{i}" for i in range(60)], plays["event_id"].type),
                "ts": pa.array([t - dt.timedelta(minutes=30)] * 60, plays["ts"].type)}  # fmt: skip
        append_events(str(data), t.date(), pa.table(late), "drain-late.parquet")
        b = refresh_trending(cfg, logical_time=t, redis=client)
        assert b["generation"] != a["generation"] and b["published"], b.get("reason")
        assert b["meta"]["events_read"] == a["meta"]["events_read"] + 60
        assert client.zrevrange(keys.trending(a["generation"]), 0, -1, withscores=True) == before
        again = refresh_trending(cfg, logical_time=t, redis=client)
        assert again["skipped"] and again["generation"] == b["generation"]
    finally:
        names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if names:
            client.delete(*names)
