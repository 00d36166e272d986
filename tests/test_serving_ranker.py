"""The stage-2 ranker in the serving shim (``serving/ranker.py``): features and scores of a
request's candidates in one batched pass, its circuit breaker, and the served version
hot-swapped from the artifact store's ``ranker`` pointer.

Rankers are made here with the training code (``RankerModel`` + ``save_ranker``; torch
is fine in a test process): a random one, and "linear" ones whose score is a chosen
feature's exponential, so a test knows the order they must give. The HTTP tests run the
real uvicorn process over ``tests/serving_world.py``'s generation in the real Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import scipy.sparse as sp
import torch

from tests.serving_world import (
    FRESH,
    HIGH_DISLIKE,
    LOW_COMPLETION,
    NO_EMBEDDING,
    PLAYS,
    READ_KEY,
    World,
    serving_config,
    start_server,
    write_world,
)
from videorec import artifact_names as names
from videorec.artifacts import LocalArtifactStore
from videorec.config import RankingConfig, parse_config
from videorec.ranking.features import FEATURE_NAMES, knn_scores, pair_features
from videorec.ranking.model import RankerConfig, RankerModel
from videorec.ranking.publish import publish_ranker
from videorec.ranking.runtime import RankerRuntime
from videorec.ranking.train import save_ranker, score_pairs
from videorec.redis_keys import VIDEO_FEATURES, LiveKeys, RedisKeys, decode_scored, encode_field
from videorec.serving.feed import Breaker, Ctx, personal_pool
from videorec.serving.live import Catalogue, LiveState, catalogue_from_rows
from videorec.serving.rank import UserView, ranker_relevance, relevance
from videorec.serving.ranker import (
    RankerLoadError,
    ServedRanker,
    load_ranker,
    pair_inputs,
    ranker_scores,
    refresh_ranker,
    retrieval_rank,
)

HOME = "/api/v1/recommendations/home"
GEN = "20261201T0000-rankertest"
NOW = 1_790_000_000.0
SMALL = {"cross_layers": 2, "deep_dim": 16, "experts": 3, "expert_dim": 8, "tower_dim": 4}
ONLY_WATCH = {"watch": 1.0, "like": 0.0, "dislike": 0.0, "skip": 0.0}


# ---- rankers and their versions


def random_model(seed: int = 0) -> RankerModel:
    """A small ranker with random weights and feature scaling (every feature counts)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(FEATURE_NAMES)
    cfg = RankerConfig(list(FEATURE_NAMES), rng.normal(size=n).tolist(),
                       rng.uniform(0.5, 2.0, n).tolist(), **SMALL)  # fmt: skip
    return RankerModel(cfg).eval()


def linear_model(feature: str, coef: float) -> RankerModel:
    """A ranker whose watch logit is ``coef`` × the raw ``feature`` and whose other heads
    are constant: with :data:`ONLY_WATCH` its score is exp(coef · feature)."""
    n = len(FEATURE_NAMES)
    model = RankerModel(RankerConfig(list(FEATURE_NAMES), [0.0] * n, [1.0] * n, **SMALL))
    j = FEATURE_NAMES.index(feature)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # Crosses and deep part at zero pass x0 on unchanged; every expert's first unit
        # is relu(x_j + 10) = x_j + 10; watch's tower maps it back to coef · x_j.
        for expert in model.experts:
            expert[0].weight[0, j], expert[0].bias[0] = 1.0, 10.0
        model.towers[0][0].weight[0, 0] = 1.0
        model.towers[0][2].weight[0, 0], model.towers[0][2].bias[0] = coef, -10.0 * coef
    return model.eval()


def write_ranker(store: LocalArtifactStore, version: str, date: str, model: RankerModel,
                 item_ids: np.ndarray, neighbours: sp.csr_matrix) -> str:  # fmt: skip
    """Commit ``models/ranker/<version>`` as the training stage writes it."""
    with store.write_version(names.RANKER, version, {"date": date}) as out:
        save_ranker(out, model, {})
        n = sp.csr_matrix(neighbours, dtype=np.float32)
        np.savez(out / names.NEIGHBOURS_FILE, item_ids=np.asarray(item_ids, np.int64),
                 indptr=n.indptr, indices=n.indices, data=n.data)  # fmt: skip
    return version


def random_neighbours(n: int, per_row: int, seed: int) -> sp.csr_matrix:
    """An (n, n) co-visitation-like matrix: ``per_row`` positive votes a row, no diagonal."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), per_row)
    cols = rng.integers(0, n, n * per_row)
    m = sp.csr_matrix((rng.uniform(0.05, 1.0, len(rows)), (rows, cols)), shape=(n, n))
    m.setdiag(0)
    m.eliminate_zeros()
    return m


def cfg_with(tmp: Path, **ranking: Any) -> Any:
    return parse_config({"artifacts": {"root": str(tmp / "artifacts")}, "ranking": ranking}, "t")


# ---- a hand-built catalogue (no Redis)


def catalogue(n: int = 300, seed: int = 0) -> Catalogue:
    """Videos 100..100+n with every kind of value, unknowns included."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        v = 100 + i
        f: dict[str, Any] = {"category": "abcde"[i % 5], "channel_id": i % 17, "title": f"t{v}",
                             "published_at": NOW - float(rng.uniform(0.5, 900)) * 3600.0,
                             "views": int(rng.integers(0, 5000)),
                             "avg_completion": float(rng.uniform(0.2, 0.9)),
                             "dislike_ratio": float(rng.uniform(0, 0.1)),
                             "duration_s": float(rng.uniform(30, 3600)),
                             "embedding": rng.normal(size=8).astype(np.float32)}  # fmt: skip
        if i % 7 == 0:  # unknowns: completion, dislikes, duration, publication, category
            for k in ("avg_completion", "dislike_ratio", "duration_s", "published_at", "category"):
                f.pop(k)
        if i % 11 == 0:
            f.pop("embedding")
        rows.append((v, f))
    return catalogue_from_rows("g", rows)


def served(tmp: Path, model: RankerModel, cat: Catalogue, **ranking: Any) -> ServedRanker:
    """``model`` with a co-visitation matrix over most of ``cat``'s videos (every 9th is
    missing from it), written as a version and loaded as serving loads it."""
    store = LocalArtifactStore(tmp / "artifacts")
    item_ids = cat.ids[np.arange(len(cat)) % 9 != 4]
    version = f"2026-11-01_{uuid.uuid4().hex[:8]}"
    write_ranker(store, version, "2026-11-01", model, item_ids,
                 random_neighbours(len(item_ids), 12, seed=3))  # fmt: skip
    return load_ranker(store.local_path(names.RANKER, version), version, cfg_with(tmp, **ranking))


def a_user(cat: Catalogue, plays: int, seed: int = 1) -> UserView:
    rng = np.random.default_rng(seed)
    history = rng.choice(cat.ids, size=plays, replace=False).astype(np.int64)
    if plays > 3:
        history[plays // 2] = 99_999  # a play the catalogue does not hold
    emb = rng.normal(size=cat.emb.shape[1]).astype(np.float32)
    return UserView(history=history, embedding=emb, preferred={"a": 0.6, "b": 0.4})


def candidates(cat: Catalogue, n: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(cat), size=n, replace=False).astype(np.int64)
    return rows, np.sort(rng.normal(size=n))[::-1].copy()  # retrieval order, best first


# ---- acceptance: batched serving inference equals per-item inference


@pytest.mark.parametrize("plays", [0, 3, 80])
def test_batched_scores_equal_per_item_scores(tmp_path: Path, plays: int) -> None:
    cat = catalogue()
    model = random_model()
    ranker = served(tmp_path, model, cat)
    user = a_user(cat, plays)
    rows, retrieval = candidates(cat, 120)
    rank = retrieval_rank(retrieval)

    batch = ranker_scores(ranker, cat, rows, retrieval, rank, user, NOW)
    one_by_one = np.array([
        ranker_scores(ranker, cat, rows[i : i + 1], retrieval[i : i + 1], rank[i : i + 1], user, NOW)[0]
        for i in range(len(rows))
    ])  # fmt: skip
    assert batch.shape == (120,) and np.isfinite(batch).all() and batch.std() > 0
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-5, atol=1e-6)
    # The features too, column by column, and the training code's torch scores of them.
    x = pair_features(pair_inputs(ranker, cat, rows, retrieval, rank, user, NOW))[0]
    for i in (0, 57, 119):
        xi = pair_features(
            pair_inputs(ranker, cat, rows[i : i + 1], retrieval[i : i + 1], rank[i : i + 1], user, NOW)
        )[0, 0]  # fmt: skip
        np.testing.assert_allclose(x[i], xi, rtol=1e-6, atol=1e-6)
    torch_scores = score_pairs(model, x, RankingConfig())
    np.testing.assert_allclose(batch, torch_scores, rtol=1e-4, atol=1e-5)


def test_pair_inputs_read_history_most_recent_last_and_look_plays_up(tmp_path: Path) -> None:
    cat = catalogue()
    ranker = served(tmp_path, random_model(), cat, history_len=6)
    history = cat.ids[[5, 6, 7, 8]].copy()
    history[1] = 99_999  # not in the catalogue: a zero row, category -1
    user = UserView(history=history, embedding=None)
    rows, retrieval = candidates(cat, 10)
    x = pair_inputs(ranker, cat, rows, retrieval, retrieval_rank(retrieval), user, NOW)
    assert x.history.shape == (1, 6, 8) and x.candidate.shape == (1, 10, 8)
    # Two pads in front, then the plays oldest first, the unknown one a zero row.
    assert not x.history[0, [0, 1, 3]].any()
    np.testing.assert_array_equal(x.history[0, [2, 4, 5]], cat.emb[[5, 7, 8]])
    assert x.history_category[0].tolist() == [-1, -1, *cat.category[[5]], -1, *cat.category[[7, 8]]]
    assert not x.query.any()  # no query embedding: zeros (query_cosine 0)
    assert x.retrieval_rank[0].tolist() == list(range(10))
    assert x.hour[0] == pytest.approx((NOW / 3600) % 24)
    np.testing.assert_allclose(x.age_days[0], (NOW - cat.published_at[rows]) / 86400.0)
    # Co-visitation: the plays and candidates looked up in the matrix's item ids.
    hist_idx = ranker.item_index(np.r_[[-1, -1], history])
    want = knn_scores(ranker.neighbours, hist_idx[None], ranker.item_index(cat.ids[rows])[None])
    np.testing.assert_array_equal(x.knn, want)
    assert (ranker.item_index(cat.ids[[4, 13]]) == -1).all()  # not in the matrix


def test_a_version_of_other_features_or_missing_files_does_not_load(tmp_path: Path) -> None:
    cat = catalogue(40)
    store = LocalArtifactStore(tmp_path / "artifacts")
    other = RankerModel(RankerConfig(list(FEATURE_NAMES[:-1]), [0.0] * 24, [1.0] * 24, **SMALL))
    write_ranker(store, "2026-11-01_other", "2026-11-01", other, cat.ids, sp.csr_matrix((40, 40)))
    cfg = cfg_with(tmp_path)
    with pytest.raises(RankerLoadError, match="trained on features"):
        load_ranker(store.local_path(names.RANKER, "2026-11-01_other"), "x", cfg)
    with pytest.raises(RankerLoadError, match="No such file"):
        load_ranker(tmp_path, "2026-11-01_none", cfg)


# ---- acceptance: the breaker trips when the model raises


def test_the_breaker_trips_when_the_model_raises_and_the_rule_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = catalogue()
    ranker = served(tmp_path, random_model(), cat)
    cfg = parse_config({"serving": {"breaker_failures": 2, "breaker_cooldown_s": 30.0}}, "t")
    ctx = Ctx(cfg, None, LiveState(catalogue=cat, ranker=ranker), Breaker(5, 30.0))
    user = a_user(cat, 30)
    rows, retrieval = candidates(cat, 100)
    ids = cat.ids[rows]

    def keep(r: np.ndarray) -> np.ndarray:
        return np.ones(len(r), bool)

    rule = relevance(cat, rows, retrieval, user, NOW, cfg.serving)
    pool, fallback = personal_pool(ctx, cat, user, ids, retrieval, NOW, keep)
    assert fallback is None and pool.ranker == ranker.version
    want = ranker_relevance(
        cat, rows, ranker_scores(ranker, cat, rows, retrieval, retrieval_rank(retrieval), user, NOW),
        NOW, cfg.serving,
    )  # fmt: skip
    np.testing.assert_allclose(pool.score, want)
    assert (pool.score > 0).all() and not np.allclose(pool.score, rule)

    calls = []

    def broken(self: RankerRuntime, x: np.ndarray, weights: Any) -> np.ndarray:
        calls.append(len(x))
        raise RuntimeError("the model is broken")

    monkeypatch.setattr(RankerRuntime, "score", broken)
    for t in (NOW + 1, NOW + 2):  # two failures: the rule's order, counted
        pool, fallback = personal_pool(ctx, cat, user, ids, retrieval, t, keep)
        assert fallback == "ranker_error" and pool.ranker is None
        np.testing.assert_array_equal(
            pool.score, relevance(cat, rows, retrieval, user, t, cfg.serving)
        )
    assert calls == [100, 100] and ctx.ranker_breaker.open
    pool, fallback = personal_pool(ctx, cat, user, ids, retrieval, NOW + 3, keep)
    assert fallback == "ranker_breaker_open" and calls == [100, 100]  # not called while open
    np.testing.assert_array_equal(
        pool.score, relevance(cat, rows, retrieval, user, NOW + 3, cfg.serving)
    )
    assert not ctx.breaker.open  # re-ranking itself never failed: the rule answered
    # After the cool-down one request tries the model again (half open): still failing.
    pool, fallback = personal_pool(ctx, cat, user, ids, retrieval, NOW + 40, keep)
    assert fallback == "ranker_error" and calls == [100, 100, 100] and ctx.ranker_breaker.open
    # Mended: the next try after the cool-down closes the breaker.
    monkeypatch.undo()
    pool, fallback = personal_pool(ctx, cat, user, ids, retrieval, NOW + 80, keep)
    assert fallback is None and pool.ranker == ranker.version and not ctx.ranker_breaker.open


# ---- the app over the Redis world


@pytest.fixture(scope="module")
def world(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The serving world in Redis, with ten videos of one warm user's candidates (ranks
    150 to 199 of their base recommendations, spread over categories and channels) made
    3,000 s long where every other video is 300 s: a duration-minded ranker moves them up."""
    root = f"rankertest{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    data = write_world(client, root, GEN, time.time())
    user = next(u for u, p in PLAYS.items() if p == 40 and u not in NO_EMBEDDING)
    skip = {LOW_COMPLETION, HIGH_DISLIKE, *FRESH}
    tail = [v for v in data.recs[user][150:] if v not in skip]
    by_category: dict[str, list[int]] = {}
    for v in tail:
        by_category.setdefault(data.category[v], []).append(v)
    boosted: list[int] = []  # round robin over the categories, one video per channel
    for i in range(len(tail)):
        for vids in by_category.values():
            if i < len(vids) and data.channel[vids[i]] not in {data.channel[b] for b in boosted}:
                boosted.append(vids[i])
    boosted = boosted[:10]
    assert len(boosted) == 10
    keys = RedisKeys(root)
    for v in boosted:
        client.hset(keys.video_features(GEN, v), "duration_s",
                    encode_field(VIDEO_FEATURES["duration_s"], 3000.0))  # fmt: skip
    yield {"root": root, "client": client, "world": data, "user": user, "boosted": boosted,
           "redis_url": redis_url, "neighbours": random_neighbours(len(data.video_ids), 15, 5)}  # fmt: skip
    for key in client.scan_iter(match=f"{root}:*", count=10_000):
        client.delete(key)


def _store(folder: Path) -> LocalArtifactStore:
    return LocalArtifactStore(folder / "artifacts")


def _publish(w: dict[str, Any], store: LocalArtifactStore, date: str, model: RankerModel) -> str:
    data: World = w["world"]
    version = write_ranker(store, f"{date}_{uuid.uuid4().hex[:6]}", date, model,
                           data.video_ids, w["neighbours"])  # fmt: skip
    publish_ranker(store, version, force=True)
    return version


def _get(base: str, path: str, user: int | None = None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {READ_KEY}"}
    if user is not None:
        headers["X-User-Id"] = str(user)
    return httpx.get(f"{base}{path}", params=params, headers=headers, timeout=10)


def _ranker_check(base: str) -> dict[str, Any]:
    return _get(base, "/readyz").json()["checks"]["ranker"]


def _wait(predicate: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def _personal_order(client: Any, root: str, user: int, body: dict[str, Any]) -> list[int]:
    """The page's candidate pool as stored for its later pages: ids, best first."""
    ids, scores = decode_scored(
        client.get(LiveKeys(root).feed(user, body["next_cursor"].split(".")[0]))
    )
    return [int(v) for v in ids[np.argsort(-scores, kind="stable")]]


@pytest.fixture(scope="module")
def server(
    world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ranker-server")
    conf = serving_config(tmp, world["redis_url"], world["root"],
                          extra={"ranking": {"score_weights": ONLY_WATCH}})  # fmt: skip
    proc, base = start_server(conf)
    yield {"base": base, "store": _store(tmp), "conf": conf}
    proc.terminate()
    proc.wait(timeout=30)


def test_the_home_feed_follows_the_published_ranker(
    server: dict[str, Any], world: dict[str, Any]
) -> None:
    base, store, user, boosted = server["base"], server["store"], world["user"], world["boosted"]
    check = _ranker_check(base)
    assert check == {"ok": True, "version": None, "pointer": None, "error": None,
                     "breaker_open": False}  # fmt: skip
    r = _get(base, HOME, user=user)
    assert r.status_code == 200 and r.json()["ranker"] is None  # the rule
    rule_order = _personal_order(world["client"], world["root"], user, r.json())
    assert not set(rule_order[:10]) & set(boosted)

    version = _publish(world, store, "2026-11-01", linear_model("log_duration", 2.0))
    _wait(lambda: _ranker_check(base)["version"] == version)
    body = _get(base, HOME, user=user).json()
    assert body["ranker"] == version and body["fallback"] is None
    order = _personal_order(world["client"], world["root"], user, body)
    assert set(order[:10]) == set(boosted)  # the ranker's order: the long videos first
    # On the page, MMR and the caps still apply: the personal picks the ranker put first
    # come first (as many as the diversity caps let in), the rest after them.
    personal = [i["video_id"] for i in body["items"] if i["source"] == "personal"]
    lead = next((k for k, v in enumerate(personal) if v not in boosted), len(personal))
    assert lead >= 4 and not set(personal[lead:]) & set(boosted)


def test_a_new_ranker_is_swapped_in_and_a_broken_one_keeps_the_old(
    server: dict[str, Any], world: dict[str, Any]
) -> None:
    base, store, user, boosted = server["base"], server["store"], world["user"], world["boosted"]
    long_first = _publish(world, store, "2026-11-02", linear_model("log_duration", 2.0))
    _wait(lambda: _ranker_check(base)["version"] == long_first)
    short_first = _publish(world, store, "2026-11-03", linear_model("log_duration", -2.0))
    _wait(lambda: _ranker_check(base)["version"] == short_first)
    body = _get(base, HOME, user=user).json()
    assert body["ranker"] == short_first
    order = _personal_order(world["client"], world["root"], user, body)
    assert set(order[-10:]) == set(boosted)  # now last
    assert not {i["video_id"] for i in body["items"] if i["source"] == "personal"} & set(boosted)

    # A version whose files are broken: the pointer moves, the old ranker keeps serving.
    broken = write_ranker(store, "2026-11-04_broken", "2026-11-04", linear_model("log_views", 1.0),
                          world["world"].video_ids, world["neighbours"])  # fmt: skip
    (store.local_path(names.RANKER, broken) / names.RANKER_WEIGHTS_FILE).write_bytes(b"not an npz")
    publish_ranker(store, broken)
    _wait(lambda: _ranker_check(base)["pointer"] == broken)
    check = _ranker_check(base)
    assert check["version"] == short_first and broken in check["error"]
    assert _get(base, HOME, user=user).json()["ranker"] == short_first
    # A rollback to a good version clears the error.
    publish_ranker(store, long_first, force=True)
    _wait(lambda: _ranker_check(base)["version"] == long_first)
    assert _ranker_check(base)["error"] is None


def test_the_app_answers_while_the_model_raises(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (so the model can be made to raise): every request answers 200, ranked
    by the rule; after ``breaker_failures`` the breaker is open and the model uncalled."""
    from fastapi.testclient import TestClient

    from videorec.config import load_config
    from videorec.serving.app import create_app

    store = _store(tmp_path)
    version = _publish(world, store, "2026-11-01", random_model())
    conf = serving_config(tmp_path, world["redis_url"], world["root"], breaker_failures=2,
                          breaker_cooldown_s=600.0, refresh_s=60.0)  # fmt: skip
    users = [u for u, p in PLAYS.items() if p >= 10 and u not in NO_EMBEDDING]
    headers = {"X-API-Key": READ_KEY}
    with TestClient(create_app(load_config(conf))) as c:
        assert c.get("/readyz").json()["checks"]["ranker"]["version"] == version
        body = c.get(HOME, headers={**headers, "X-User-Id": str(users[0])}).json()
        assert body["ranker"] == version and body["fallback"] is None
        calls = []

        def broken(self: RankerRuntime, x: np.ndarray, weights: Any) -> np.ndarray:
            calls.append(len(x))
            raise RuntimeError("the model is broken")

        monkeypatch.setattr(RankerRuntime, "score", broken)
        answers = [c.get(HOME, headers={**headers, "X-User-Id": str(u)}) for u in users[1:5]]
        assert [a.status_code for a in answers] == [200] * 4
        assert [a.json()["fallback"] for a in answers] == ["ranker_error", "ranker_error",
                                                           "ranker_breaker_open", "ranker_breaker_open"]  # fmt: skip
        assert all(a.json()["ranker"] is None and len(a.json()["items"]) == 20 for a in answers)
        assert len(calls) == 2  # not called while the breaker is open
        assert c.get("/readyz").json()["checks"]["ranker"]["breaker_open"] is True
        text = c.get("/metrics").text
        assert "videorec_ranker_breaker_open 1.0" in text
        assert 'videorec_fallbacks_total{reason="ranker_error"}' in text


def test_a_serving_process_with_a_ranker_loads_no_torch(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The app in a fresh interpreter ranks a home request with the published ranker;
    neither torch nor the ranker's training code is loaded."""
    store = _store(tmp_path)
    version = _publish(world, store, "2026-11-01", random_model())
    conf = serving_config(tmp_path, world["redis_url"], world["root"])
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from videorec.serving.app import app\n"
        "with TestClient(app) as c:\n"
        f"    h = {{'X-API-Key': '{READ_KEY}', 'X-User-Id': '{world['user']}'}}\n"
        "    r = c.get('/api/v1/recommendations/home', headers=h)\n"
        "    assert r.status_code == 200, r.text\n"
        "    print(json.dumps(r.json()['ranker']))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "VIDEOREC_CONFIG": str(conf)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == version
    loaded = set(json.loads(lines[-1]))
    banned = ("torch", "pyspark", "videorec.ranking.model", "videorec.ranking.train",
              "videorec.ranking.examples", "videorec.ranking.gate", "videorec.training")  # fmt: skip
    assert not {m for m in loaded if m.split(".")[0] in banned or m.startswith(banned)}
    assert "videorec.ranking.runtime" in loaded and "videorec.serving.ranker" in loaded


def test_refresh_without_a_pointer_serves_no_ranker(tmp_path: Path) -> None:
    state = LiveState()
    store = _store(tmp_path)
    refresh_ranker(state, store, cfg_with(tmp_path), NOW)
    assert state.ranker is None and state.ranker_status.pointer is None
    cat = catalogue(40)
    v = write_ranker(store, "2026-11-01_a", "2026-11-01", random_model(), cat.ids,
                     sp.csr_matrix((40, 40)))  # fmt: skip
    publish_ranker(store, v)
    refresh_ranker(state, store, cfg_with(tmp_path), NOW)
    assert state.ranker.version == v and state.ranker_status.loads == {"ok": 1, "error": 0}
    before = state.ranker
    refresh_ranker(state, store, cfg_with(tmp_path), NOW + 5)  # unchanged: nothing reloaded
    assert state.ranker is before
