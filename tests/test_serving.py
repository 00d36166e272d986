"""The serving shim as real uvicorn processes against the real Redis.

A small platform's generation (``tests/serving_world.py``) and an hourly new-videos
generation over it are written into Redis under their own key root; the app reads
them over HTTP. Three servers: ``server`` (the embedded
defaults but quick refreshes), ``strict`` (re-ranking made to fail, a small per-user
rate limit, no index published) and ``lonely`` (its own redis-server, which a test
stops).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
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

from tests.serving_world import (
    BOTH_KEY,
    CATEGORIES,
    FEEDBACK_KEY,
    FRESH,
    HIGH_DISLIKE,
    LOW_COMPLETION,
    NO_EMBEDDING,
    PLAYS,
    READ_KEY,
    serving_config,
    start_server,
    write_new_videos,
    write_world,
)
from videorec.redis_keys import (
    STATE_CHANNEL_STRIKES,
    STATS_CLICKS,
    STATS_IMPRESSIONS,
    LiveKeys,
    RedisKeys,
    decode_scored,
    decode_stream_event,
)
from videorec.services import free_port, start_private_redis

GEN = "20261201T0000-servingtest"
NEWGEN = "20261201T0100-newvideos"  # the hourly new-videos generation over GEN
HOME, UP_NEXT = "/api/v1/recommendations/home", "/api/v1/recommendations/up-next"
FEEDBACK = "/api/v1/recommendations/feedback"
WARM = [u for u, p in PLAYS.items() if p == 40]
COLD = [u for u, p in PLAYS.items() if p == 0]


def _config(tmp: Path, redis_url: str, root: str, **serving: Any) -> Path:
    return serving_config(tmp, redis_url, root, **serving)


def _start(conf: Path) -> tuple[subprocess.Popen[bytes], str]:
    return start_server(conf)


@pytest.fixture(scope="module")
def world(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("serving")
    root = f"servingtest{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    data = write_world(client, root, GEN, time.time())
    new = write_new_videos(client, root, data, NEWGEN, time.time())
    yield {"tmp": tmp, "root": root, "keys": RedisKeys(root), "live": LiveKeys(root),
           "nkeys": RedisKeys.new_videos(root), "client": client, "world": data, "new": new,
           "redis_url": redis_url}  # fmt: skip
    for key in client.scan_iter(match=f"{root}:*", count=10_000):
        client.delete(key)


@pytest.fixture(scope="module")
def server(world: dict[str, Any]) -> Iterator[str]:
    proc, base = _start(_config(world["tmp"], world["redis_url"], world["root"]))
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def strict(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("strict")  # its own artifact store: no index published
    root = f"{world['root']}-strict"  # its own keys: rate-limit counters start at zero
    data = write_world(world["client"], root, GEN, time.time())
    conf = _config(tmp, world["redis_url"], root,
                   fault_injection=["rerank_error", "feedback_reply_lost"],
                   breaker_failures=2, breaker_cooldown_s=1.0, rate_limit_per_user=5)  # fmt: skip
    proc, base = _start(conf)
    yield base
    proc.terminate()
    proc.wait(timeout=30)
    assert data.gen == GEN
    for key in world["client"].scan_iter(match=f"{root}:*", count=10_000):
        world["client"].delete(key)


def _get(base: str, path: str, key: str | None = READ_KEY, user: int | None = None,
         **params: Any) -> httpx.Response:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if user is not None:
        headers["X-User-Id"] = str(user)
    return httpx.get(f"{base}{path}", params=params, headers=headers, timeout=10)


def _post(base: str, body: Any, user: int | None = 31, key: str = BOTH_KEY,
          idem: str | None = None, raw: bytes | None = None) -> httpx.Response:  # fmt: skip
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    if user is not None:
        headers["X-User-Id"] = str(user)
    if idem:
        headers["Idempotency-Key"] = idem
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{base}{FEEDBACK}", content=content, headers=headers, timeout=10)


def _home(base: str, user: int, **params: Any) -> dict[str, Any]:
    r = _get(base, HOME, user=user, **params)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


# ---- the home feed


def test_home_items_carry_their_fields_reason_and_source(
    server: str, world: dict[str, Any]
) -> None:
    body = _home(server, WARM[0])
    assert body["generation"] == GEN and len(body["items"]) == 20 and body["fallback"] is None
    assert body["ranker"] is None  # none published: the documented rule ranked the page
    first = next(i for i in body["items"] if i["source"] == "personal")
    assert set(first) >= {
        "video_id",
        "title",
        "channel_id",
        "channel_name",
        "category",
        "duration_s",
        "view_count",
        "published_at",
        "score",
        "reason",
        "source",
    }
    history_titles = {f"Video {v}" for v in world["world"].history[WARM[0]]}
    assert first["reason"].startswith("Because you watched “")
    assert first["reason"][len("Because you watched “") : -1] in history_titles
    sources = {i["source"] for i in body["items"]}
    assert sources <= {"personal", "popular", "trending", "explore", "fresh"}
    watched = set(world["world"].history[WARM[0]])
    assert not watched & {i["video_id"] for i in body["items"]}


def test_quality_filter_drops_low_completion_and_disliked_videos(server: str) -> None:
    seen = set()
    for user in WARM + COLD:
        seen |= {i["video_id"] for i in _home(server, user, limit=50)["items"]}
    assert len(seen) > 200  # the pages reach far into the catalogue
    assert LOW_COMPLETION not in seen and HIGH_DISLIKE not in seen


def test_pages_never_repeat_and_respect_diversity_on_every_page(server: str) -> None:
    for user in WARM[:15] + COLD[:3] + [12, 22]:
        shown: list[int] = []
        body = _home(server, user)
        for _ in range(4):
            items = body["items"]
            assert len(items) == 20
            per_channel = collections.Counter(i["channel_id"] for i in items)
            per_category = collections.Counter(i["category"] for i in items)
            assert max(per_channel.values()) <= 3, per_channel
            assert max(per_category.values()) <= 6, per_category  # 30% of 20
            shown += [i["video_id"] for i in items]
            body = _home(server, user, cursor=body["next_cursor"])
        assert len(shown) == len(set(shown)), f"user {user}: a page repeated an item"


def test_cursor_errors_are_clear(server: str, world: dict[str, Any]) -> None:
    body = _home(server, WARM[1])
    r = _get(server, HOME, user=WARM[1], cursor="not-a-cursor")
    assert r.status_code == 422 and r.json()["field"] == "cursor"
    # Another user's cursor, or one whose feed has expired: 410 Gone.
    r = _get(server, HOME, user=WARM[2], cursor=body["next_cursor"])
    assert r.status_code == 410 and r.json()["error"] == "cursor_expired"
    feed_id = body["next_cursor"].split(".")[0]
    world["client"].delete(world["live"].feed(WARM[1], feed_id))
    r = _get(server, HOME, user=WARM[1], cursor=body["next_cursor"])
    assert r.status_code == 410 and "expired" in r.json()["message"]


def test_exploration_takes_a_tenth_of_the_slots(server: str) -> None:
    counts = collections.Counter()
    for _ in range(3):
        for user in WARM:
            counts.update(i["source"] for i in _home(server, user)["items"])
    total = sum(counts.values())
    share = (counts["explore"] + counts["fresh"]) / total
    assert 0.09 <= share <= 0.11, counts
    assert counts["fresh"] > 0 and counts["explore"] > 0


def test_cold_start_blend_moves_from_popular_to_personal(server: str) -> None:
    def popular_share(users: list[int]) -> float:
        c = collections.Counter()
        for user in users:
            c.update(i["source"] for i in _home(server, user)["items"])
        main = c["personal"] + c["popular"] + c["trending"]
        return (c["popular"] + c["trending"]) / main

    by_plays = {p: [u for u, n in PLAYS.items() if n == p] for p in (0, 3, 10, 40)}
    shares = {p: popular_share(users) for p, users in by_plays.items()}
    assert shares[0] == 1.0  # no history: popular by country and language, trending
    assert shares[3] == pytest.approx(0.8, abs=0.06)  # the seed's 80% → 40% → 10%
    assert shares[10] == pytest.approx(0.4, abs=0.06)
    assert shares[40] == pytest.approx(0.1, abs=0.06)


def test_a_fresh_pointer_whose_lists_expired_falls_back_to_the_generations(
    server: str, world: dict[str, Any]
) -> None:
    """The 15-minute lists' pointer has no TTL, their keys do: a job stalled past them
    leaves a pointer to nothing. The lists then come from the 4-hourly generation
    (found by review: a cold user's page fell to one item)."""
    fresh = RedisKeys.fresh(world["root"])
    before = [i["source"] for i in _home(server, COLD[9])["items"]]
    world["client"].set(fresh.pointer, "20261201T0015-expiredfresh")
    try:
        time.sleep(1.5)  # three snapshot refreshes (snapshot_refresh_s 0.5)
        after = [i["source"] for i in _home(server, COLD[9])["items"]]
    finally:
        world["client"].delete(fresh.pointer)
    assert len(after) == len(before) == 20 and set(after) == set(before), (before, after)


def test_lists_stay_when_every_generations_lists_expired(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """Precompute down past its TTLs (pointer set, keys gone): the worker keeps the lists
    it served, stale rather than blank, and takes new ones once a generation has them."""
    from videorec.config import load_config
    from videorec.serving.live import LiveState, refresh

    client, root = world["client"], f"{world['root']}-expiry"
    write_world(client, root, GEN, time.time())
    cfg = load_config(_config(tmp_path, world["redis_url"], root))
    state = LiveState()
    try:
        refresh(state, client, cfg, 1_000.0)
        served = state.lists
        assert served.generation == GEN and len(served.get("trending")[0]) > 0
        gone = list(client.scan_iter(match=f"{RedisKeys(root).namespace(GEN)}:*", count=10_000))
        client.delete(*gone)
        refresh(state, client, cfg, 2_000.0)
        assert state.lists is served
        write_world(client, root, GEN, time.time())
        refresh(state, client, cfg, 3_000.0)
        assert state.lists is not served and len(state.lists.get("trending")[0]) > 0
    finally:
        for key in client.scan_iter(match=f"{root}:*", count=10_000):
            client.delete(key)


def test_cold_user_gets_declared_interests_and_country(server: str, world: dict[str, Any]) -> None:
    body = _home(server, COLD[0], country="DE", interests="Gaming")
    categories = collections.Counter(i["category"] for i in body["items"])
    assert categories["Gaming"] >= 3
    reasons = {i["reason"] for i in body["items"]}
    assert "Popular in your country" in reasons and "Trending in Gaming" in reasons


def test_thompson_sampling_gives_a_clicked_new_video_more_impressions(
    server: str, world: dict[str, Any]
) -> None:
    client, live = world["client"], world["live"]
    good, bad = FRESH[0], FRESH[1]
    client.hset(
        live.explore_stats, mapping={f"{STATS_IMPRESSIONS}{bad}": 200, f"{STATS_CLICKS}{bad}": 0}
    )

    def fresh_picks(n: int) -> collections.Counter[int]:
        c: collections.Counter[int] = collections.Counter()
        for k in range(n):
            items = _home(server, WARM[k % len(WARM)])["items"]
            c.update(i["video_id"] for i in items if i["source"] == "fresh")
        return c

    before = fresh_picks(60)
    for _ in range(30):  # good feedback on the new video, through the API
        assert _post(server, {"video_id": good, "action": "click"}, user=COLD[1]).status_code == 202
    client.hincrby(live.explore_stats, f"{STATS_IMPRESSIONS}{good}", 30)
    time.sleep(0.5)  # the workers' exploration counts refresh every 0.2 s here
    after = fresh_picks(60)
    assert after[good] > 2 * max(before[good], 1) and after[good] >= 20, (before, after)
    assert after[bad] <= 3  # 200 impressions, no click: it fades


# ---- feedback


def test_not_interested_hides_the_video_then_its_channel(
    server: str, world: dict[str, Any]
) -> None:
    user = WARM[3]
    items = _home(server, user)["items"]
    target = next(i for i in items if i["source"] == "personal")
    r = _post(server, {"video_id": target["video_id"], "action": "not_interested"}, user=user)
    assert r.status_code == 202 and r.json()["accepted"] is True
    after = _home(server, user, limit=50)["items"]
    assert target["video_id"] not in {i["video_id"] for i in after}
    channel = target["channel_id"]
    other = next(
        v for v, c in world["world"].channel.items() if c == channel and v != target["video_id"]
    )
    assert (
        _post(server, {"video_id": other, "action": "not_interested"}, user=user).status_code == 202
    )
    for _ in range(3):  # a second strike: the whole channel is gone from every page
        assert channel not in {i["channel_id"] for i in _home(server, user, limit=50)["items"]}


def test_feedback_is_recorded_once_and_replayed(server: str, world: dict[str, Any]) -> None:
    client, live = world["client"], world["live"]
    user, video = WARM[4], FRESH[5]
    before = client.xlen(live.events_stream)
    body = {"video_id": video, "action": "watch", "watch_time": 120.5}
    first = _post(server, body, user=user, idem="retry-key-0001")
    again = _post(server, body, user=user, idem="retry-key-0001")
    assert first.status_code == again.status_code == 202
    assert again.json() == {**first.json(), "replayed": True}
    entries = client.xrange(live.events_stream, min="-", max="+")[before:]
    events = [decode_stream_event(f) for _, f in entries]
    mine = [e for e in events if e["event_type"] == "watch" and e["user_id"] == user]
    assert len(mine) == 1
    assert mine[0]["event_id"] == first.json()["event_id"] and mine[0]["watch_time_s"] == 120.5
    assert mine[0]["video_duration_s"] == 300.0
    assert video not in {i["video_id"] for i in _home(server, user, limit=50)["items"]}


def test_responses_log_their_impressions(server: str, world: dict[str, Any]) -> None:
    client, live = world["client"], world["live"]
    last = client.xrevrange(live.events_stream, count=1)
    body = _home(server, WARM[5], device="tv")
    entries = client.xrange(live.events_stream, min=f"({last[0][0].decode()}" if last else "-")
    events = [decode_stream_event(f) for _, f in entries]
    mine = [e for e in events if e.get("request_id") == body["request_id"]]
    assert [e["video_id"] for e in mine] == [i["video_id"] for i in body["items"]]
    assert [e["position"] for e in mine] == list(range(20))
    assert [e["source"] for e in mine] == [i["source"] for i in body["items"]]
    assert {e["event_type"] for e in mine} == {"impression"} and {e["device"] for e in mine} == {
        "tv"
    }
    assert len({e["event_id"] for e in mine}) == 20


@pytest.mark.parametrize(
    ("body", "raw", "key", "user", "status", "error", "field"),
    [
        (None, b"{not json", BOTH_KEY, 31, 400, "malformed_json", None),
        ({"video_id": 1002}, None, BOTH_KEY, 31, 400, "missing_field", "action"),
        ({"video_id": 1002, "action": "watch"}, None, BOTH_KEY, 31, 400, "missing_field", "watch_time"),
        ({"video_id": 1002, "action": "love"}, None, BOTH_KEY, 31, 422, "invalid_value", "action"),
        ({"video_id": 1002, "action": "watch", "watch_time": -1}, None, BOTH_KEY, 31, 422,
         "invalid_value", "watch_time"),
        ({"video_id": 1002, "action": "watch", "watch_time": 901}, None, BOTH_KEY, 31, 422,
         "invalid_value", "watch_time"),  # over 3× the 300 s duration
        ({"video_id": 1002, "action": "like", "watch_time": 5}, None, BOTH_KEY, 31, 422,
         "invalid_value", "watch_time"),
        ({"video_id": 1002, "action": "like", "extra": 1}, None, BOTH_KEY, 31, 422,
         "invalid_value", "extra"),
        ({"video_id": 99, "action": "like"}, None, BOTH_KEY, 31, 404, "unknown_video", "video_id"),
        ({"video_id": 1002, "action": "like"}, None, READ_KEY, 31, 403, "forbidden", None),
        ({"video_id": 1002, "action": "like"}, None, BOTH_KEY, None, 400, "missing_field",
         "X-User-Id"),
        # The body itself: named as such (found by review: "None is required").
        (None, b"null", BOTH_KEY, 31, 400, "missing_field", None),
        (None, b"[]", BOTH_KEY, 31, 422, "invalid_value", None),
    ],
)  # fmt: skip
def test_feedback_errors_name_the_problem(
    server: str, body: Any, raw: bytes | None, key: str, user: int | None, status: int,
    error: str, field: str | None,
) -> None:  # fmt: skip
    r = _post(server, body, user=user, key=key, raw=raw)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["message"]
    assert r.json().get("field") == field
    assert "None" not in r.json()["message"], r.json()


# ---- up-next and similar


def test_up_next_is_the_channels_next_upload(server: str, world: dict[str, Any]) -> None:
    w = world["world"]
    user = COLD[2]  # no history: nothing of the channel is watched
    current = 1100  # an old video: its channel has later uploads
    r = _get(server, UP_NEXT, user=user, current_video=current, watch_time=250, total_duration=300)
    assert r.status_code == 200, r.text
    body = r.json()
    nxt = body["up_next"]
    assert nxt["source"] == "next_upload" and nxt["channel_id"] == w.channel[current]
    assert nxt["reason"] == f"New from Channel {w.channel[current]}"
    assert body["autoplay_in_seconds"] == pytest.approx(50 + 10)
    assert len(body["related"]) == 10 and current not in {i["video_id"] for i in body["related"]}
    # Without the player's duration, the catalogue's (300 s) is the one counted down
    # (found by review: a default of 1 s refused any watch_time past it).
    r = _get(server, UP_NEXT, user=user, current_video=current, watch_time=30)
    assert r.status_code == 200 and r.json()["autoplay_in_seconds"] == pytest.approx(270 + 10)
    # Once watched, the next upload gives way to a similar video for this user.
    assert _post(server, {"video_id": nxt["video_id"], "action": "watch", "watch_time": 280},
                 user=user).status_code == 202  # fmt: skip
    again = _get(server, UP_NEXT, user=user, current_video=current, watch_time=250,
                 total_duration=300).json()  # fmt: skip
    assert again["up_next"]["video_id"] != nxt["video_id"]
    assert again["up_next"]["source"] in ("next_upload", "similar")


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"current_video": 5}, 404, "current_video"),
        ({"current_video": 1100, "watch_time": 400, "total_duration": 300}, 422, "watch_time"),
        ({"current_video": 1100, "total_duration": 0}, 422, "total_duration"),
        ({}, 400, "current_video"),
    ],
)
def test_up_next_errors(server: str, params: dict[str, Any], status: int, field: str) -> None:
    r = _get(server, UP_NEXT, user=31, **params)
    assert r.status_code == status and r.json()["field"] == field


def test_similar_videos_best_first(server: str, world: dict[str, Any]) -> None:
    r = _get(server, "/api/v1/recommendations/similar/1010", limit=5)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 5 and [i["source"] for i in items] == ["similar"] * 5
    scores = [i["similarity_score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert items[0]["reason"] == "Similar to “Video 1010”"


@pytest.mark.parametrize(
    ("path", "key", "params", "status", "error", "field"),
    [
        ("/api/v1/recommendations/similar/1010", None, {}, 401, "unauthenticated", None),
        ("/api/v1/recommendations/similar/1010", "not-a-key", {}, 401, "unauthenticated", None),
        ("/api/v1/recommendations/similar/1010", FEEDBACK_KEY, {}, 403, "forbidden", None),
        ("/api/v1/recommendations/similar/999", READ_KEY, {}, 404, "unknown_video", "video_id"),
        ("/api/v1/recommendations/similar/1010", READ_KEY, {"limit": 0}, 422, "invalid_value", "limit"),
        ("/api/v1/recommendations/similar/1010", READ_KEY, {"limit": 51}, 422, "invalid_value", "limit"),
        ("/api/v1/recommendations/similar/ten", READ_KEY, {}, 422, "invalid_value", "video_id"),
        ("/api/v1/recommendations/similar/36893488147419103231", READ_KEY, {}, 422,
         "invalid_value", "video_id"),  # past int64: found by the fuzz run, was a 500
        ("/api/v1/nothing-here", READ_KEY, {}, 404, "not_found", None),
        (HOME, READ_KEY, {}, 400, "missing_field", "X-User-Id"),
        (HOME, READ_KEY, {"limit": 51, "user": 31}, 422, "invalid_value", "limit"),
        (HOME, READ_KEY, {"tz": "Mars/Olympus", "user": 31}, 422, "invalid_value", "tz"),
        # A folder of the zone database, not a zone: found by review, was a 500.
        (HOME, READ_KEY, {"tz": "America", "user": 31}, 422, "invalid_value", "tz"),
        (HOME, READ_KEY, {"device": "fridge", "user": 31}, 422, "invalid_value", "device"),
        (HOME, FEEDBACK_KEY, {"user": 31}, 403, "forbidden", None),
    ],
)  # fmt: skip
def test_errors_are_json_naming_the_problem(
    server: str, path: str, key: str | None, params: dict[str, Any], status: int, error: str,
    field: str | None,
) -> None:  # fmt: skip
    r = _get(server, path, key, **params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and body["message"]
    assert body.get("field") == field


# ---- new videos (the hourly new-videos generation)


SIMILAR = "/api/v1/recommendations/similar"
# A similar list read from Redis: no fallback, or only "the index is not published"
# (until test_readiness publishes one); never "similar_missing" (computed instead).
PRECOMPUTED = (None, "index_unavailable")


def _catalogue(base: str) -> dict[str, Any]:
    return _get(base, "/readyz", key=None).json()["checks"]["catalogue"]


def _stored_pool(world: dict[str, Any], user: int, body: dict[str, Any]) -> set[int]:
    """The candidates a first page stored for the feed's later pages (its personal pool)."""
    blob = world["client"].get(world["live"].feed(user, body["next_cursor"].split(".")[0]))
    return set(decode_scored(blob)[0].tolist())


def _matched_user(world: dict[str, Any]) -> tuple[int, int]:
    """A warm user with a query embedding, and the new video of their favourite category."""
    w = world["world"]
    user = next(u for u in WARM if u in w.user_emb)
    return user, world["new"][CATEGORIES.index(w.likes[user][0])]


def test_new_video_is_in_its_clusters_similar_lists_and_has_its_own(
    server: str, world: dict[str, Any]
) -> None:
    w, new = world["world"], world["new"]
    for i, category in enumerate(CATEGORIES):
        main = next(int(v) for v in w.video_ids if w.category[int(v)] == category)
        body = _get(server, f"{SIMILAR}/{main}", limit=20).json()
        assert body["fallback"] in PRECOMPUTED and len(body["items"]) == 20
        ids = [it["video_id"] for it in body["items"]]
        assert new[i] in ids and not set(new) - {new[i]} & set(ids)  # its cluster's only
        scores = [it["similarity_score"] for it in body["items"]]
        assert scores == sorted(scores, reverse=True) and len(set(ids)) == 20
        item = next(it for it in body["items"] if it["video_id"] == new[i])
        assert item["title"] == f"New video {new[i]}" and item["category"] == category
    # A new video's own list: the new-videos generation's precomputed one.
    stored, _ = decode_scored(world["client"].get(world["nkeys"].similar(NEWGEN, new[2])))
    r = _get(server, f"{SIMILAR}/{new[2]}", limit=10)
    assert r.status_code == 200 and r.json()["fallback"] in PRECOMPUTED
    assert [it["video_id"] for it in r.json()["items"]] == stored[:10].tolist()
    assert r.json()["items"][0]["reason"] == f"Similar to “New video {new[2]}”"
    up = _get(server, UP_NEXT, user=COLD[3], current_video=new[2], total_duration=240)
    assert up.status_code == 200 and up.json()["fallback"] in PRECOMPUTED


def test_matched_user_gets_the_new_video_until_they_hide_it(
    server: str, world: dict[str, Any]
) -> None:
    user, video = _matched_user(world)
    shown = 0
    for _ in range(5):
        body = _home(server, user)
        assert video in _stored_pool(world, user, body)  # a personal candidate every time
        shown += video in {i["video_id"] for i in body["items"]}
    assert shown >= 1  # and on the page (re-ranked first by its inner product)
    # A user without a query embedding: no new video among their personal candidates.
    plain = next(u for u in WARM if u in NO_EMBEDDING)
    assert not set(world["new"]) & _stored_pool(world, plain, _home(server, plain))
    r = _post(server, {"video_id": video, "action": "not_interested"}, user=user)
    assert r.status_code == 202
    for _ in range(10):  # hidden: never again, in no slot (personal, fresh, explore)
        body = _home(server, user, limit=50)
        assert video not in {i["video_id"] for i in body["items"]}
        assert video not in _stored_pool(world, user, body)


def test_new_videos_built_for_another_index_are_ignored(server: str, world: dict[str, Any]) -> None:
    client, nkeys, new = world["client"], world["nkeys"], world["new"]
    user, video = _matched_user(world)
    other = "20261201T0200-otherindex"
    write_new_videos(client, world["root"], world["world"], other, time.time(),
                     index_version="2026-10-01_m0.i0")  # fmt: skip
    try:
        _wait(lambda: _catalogue(server)["new_videos"]["ignored"] == "index_mismatch")
        cat = _catalogue(server)
        assert cat["videos"] == 480 and cat["new_videos"]["generation"] is None
        assert _get(server, f"{SIMILAR}/{new[0]}").status_code == 404
        main = next(
            int(v)
            for v in world["world"].video_ids
            if world["world"].category[int(v)] == CATEGORIES[0]
        )
        ids = {it["video_id"] for it in _get(server, f"{SIMILAR}/{main}", limit=20).json()["items"]}
        assert not ids & set(new)
        assert video not in _stored_pool(world, user, _home(server, user))
    finally:
        client.set(nkeys.pointer, NEWGEN)
        _wait(lambda: _catalogue(server)["new_videos"]["generation"] == NEWGEN)


def test_catalogue_keeps_serving_when_new_videos_are_unreadable_or_gone(
    server: str, world: dict[str, Any]
) -> None:
    client, nkeys, new = world["client"], world["nkeys"], world["new"]
    bad = "20261201T0300-unreadable"
    write_new_videos(client, world["root"], world["world"], bad, time.time(), point=False)
    client.hset(nkeys.video_features(bad, new[1]), "published_at", "not a number")
    errors = _catalogue(server)["refresh_errors"]
    client.set(nkeys.pointer, bad)
    try:
        _wait(lambda: _catalogue(server)["refresh_errors"] >= errors + 3)  # tried, and again
        cat = _catalogue(server)  # the catalogue as it was: the last good new videos
        assert cat["ok"] and cat["videos"] == 486 and cat["new_videos"]["generation"] == NEWGEN
        assert _get(server, f"{SIMILAR}/{new[1]}").status_code == 200
        assert _home(server, WARM[12])["fallback"] is None
        client.delete(nkeys.pointer)  # none at all (not published yet, or expired)
        _wait(lambda: _catalogue(server)["videos"] == 480)
        assert _catalogue(server)["new_videos"] == {"generation": None, "videos": 0,
                                                    "ignored": None}  # fmt: skip
        assert _get(server, f"{SIMILAR}/{new[1]}").status_code == 404
        assert _get(server, f"{SIMILAR}/1010").json()["fallback"] in PRECOMPUTED
        body = _home(server, WARM[12])
        assert body["fallback"] is None and len(body["items"]) == 20
    finally:
        client.set(nkeys.pointer, NEWGEN)
        _wait(lambda: _catalogue(server)["new_videos"]["generation"] == NEWGEN)


def test_an_hourly_change_reads_the_new_videos_not_the_main_generation(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: a new new-videos generation re-reads its few hashes only; the main
    generation's catalogue rows are kept, not scanned and parsed again."""
    from videorec.config import parse_config
    from videorec.serving import live

    client = world["client"]
    root = f"{world['root']}-hourly"
    data = write_world(client, root, GEN, time.time())
    cfg = parse_config({"precompute": {"key_prefix": root}})
    state = live.LiveState()
    try:
        live.refresh(state, client, cfg, time.time())
        main = state.main
        assert len(state.catalogue) == 480 and state.new_generation is None
        reads: list[str] = []
        real = live.load_video_rows
        monkeypatch.setattr(
            live, "load_video_rows", lambda c, k, g, *a: reads.append(g) or real(c, k, g, *a)
        )
        new = write_new_videos(client, root, data, "20261201T0100-first", time.time())
        live.refresh(state, client, cfg, time.time())
        assert reads == ["20261201T0100-first"] and state.main is main
        assert (
            len(state.catalogue) == 486 and state.catalogue.new_generation == "20261201T0100-first"
        )
        assert state.catalogue.is_new[state.catalogue.rows(np.array(new))[0]].all()
        assert set(state.catalogue.rows(np.array(new))[0].tolist()) <= set(
            state.stats.rows.tolist()
        )
        assert set(state.catalogue.rows(np.array(new))[0].tolist()) <= set(
            state.fresh.rows.tolist()
        )
        live.refresh(state, client, cfg, time.time())  # nothing moved: nothing read
        write_new_videos(client, root, data, "20261201T0200-second", time.time(), seed=3)
        live.refresh(state, client, cfg, time.time())
        assert reads == ["20261201T0100-first", "20261201T0200-second"] and state.main is main
        assert state.catalogue.new_generation == "20261201T0200-second"
    finally:
        for key in client.scan_iter(match=f"{root}:*", count=10_000):
            client.delete(key)


# ---- failure behaviour


def _metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reranking_failure_opens_the_breaker_then_retrieval_order(strict: str) -> None:
    users = iter(WARM)  # one request per user: the strict server allows 5 per user
    first = _home(strict, next(users))
    assert first["fallback"] == "rerank_error" and len(first["items"]) == 20
    assert _home(strict, next(users))["fallback"] == "rerank_error"  # the 2nd failure opens it
    assert _home(strict, next(users))["fallback"] == "breaker_open"
    assert _metric(strict, "videorec_fallbacks_total", reason="rerank_error") == 2
    assert _metric(strict, "videorec_fallbacks_total", reason="breaker_open") >= 1
    assert _metric(strict, "videorec_rerank_breaker_open") == 1
    time.sleep(1.1)  # the cool-down: one more try (still failing here), open again
    assert _home(strict, next(users))["fallback"] == "rerank_error"


def test_index_missing_similar_and_up_next_still_answer(strict: str, world: dict[str, Any]) -> None:
    r = _get(strict, "/api/v1/recommendations/similar/1010", limit=5)
    assert r.status_code == 200 and r.json()["fallback"] == "index_unavailable"
    assert len(r.json()["items"]) == 5
    assert _metric(strict, "videorec_fallbacks_total", reason="index_unavailable") >= 1
    # A video whose precomputed list is gone too: the catalogue's embeddings, then trending.
    world["client"].delete(RedisKeys(f"{world['root']}-strict").similar(GEN, 1200))
    r = _get(strict, UP_NEXT, user=WARM[10], current_video=1200, total_duration=300)
    assert r.status_code == 200 and r.json()["fallback"] == "similar_missing"
    assert r.json()["up_next"] is not None and len(r.json()["related"]) == 10
    assert _metric(strict, "videorec_fallbacks_total", reason="similar_missing") >= 1


def test_rate_limit_per_user_is_a_429_with_retry_after(strict: str) -> None:
    user = COLD[5]
    codes = [_get(strict, HOME, user=user).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    r = _get(strict, HOME, user=user)
    assert r.json()["error"] == "rate_limited" and 1 <= int(r.headers["Retry-After"]) <= 61
    assert _get(strict, HOME, user=COLD[6]).status_code == 200  # another user is not limited


def test_a_rate_limited_feedback_leaves_its_idempotency_key_free(
    strict: str, world: dict[str, Any]
) -> None:
    """A 429 applied nothing, so the retry its Retry-After asks for must be new, not a
    409 for the 24 hours of a stored answer (found by review: the key stayed pending)."""
    user, key = COLD[7], "rate-limited-0001"
    assert [_get(strict, HOME, user=user).status_code for _ in range(5)] == [200] * 5
    r = _post(strict, {"video_id": 1200, "action": "dislike"}, user=user, idem=key)
    assert r.status_code == 429 and r.json()["error"] == "rate_limited", r.text
    live = LiveKeys(f"{world['root']}-strict")
    assert not world["client"].exists(live.idempotency("app", f"{user}:{key}"))


def test_a_lost_feedback_reply_is_replayed_not_applied_twice(
    strict: str, world: dict[str, Any]
) -> None:
    """``feedback_reply_lost``: Redis applies the transaction, the reply is dropped, the
    client gets a 503 that says to retry with the key; the retry replays the stored answer
    (found by review: the retry applied the dislike again, two strikes from one)."""
    client, live = world["client"], LiveKeys(f"{world['root']}-strict")
    user, key, body = COLD[8], "lost-reply-0001", {"video_id": 1200, "action": "dislike"}
    first = _post(strict, body, user=user, idem=key)
    assert first.status_code == 503, first.text
    assert "retry with the same idempotency key" in first.json()["message"]
    again = _post(strict, body, user=user, idem=key)
    assert again.status_code == 202 and again.json()["replayed"] is True, again.text
    events = [decode_stream_event(f) for _, f in client.xrange(live.events_stream)]
    mine = [e for e in events if e["user_id"] == user]
    assert [e["event_id"] for e in mine] == [again.json()["event_id"]]
    strikes = {k: v for k, v in client.hgetall(live.user_state(user)).items()
               if k.startswith(STATE_CHANNEL_STRIKES.encode())}  # fmt: skip
    assert list(strikes.values()) == [b"1"], strikes


def test_redis_down_home_answers_from_the_snapshot(
    world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("lonely")
    own = start_private_redis(tmp / "redis")
    client = redis.Redis.from_url(own.url)
    write_world(client, world["root"], GEN, time.time())
    proc, base = _start(_config(tmp, own.url, world["root"]))
    try:
        _wait(lambda: _get(base, "/readyz", key=None).json()["checks"]["catalogue"]["ok"])
        assert _home(base, WARM[0])["fallback"] is None
        client.shutdown(nosave=True)
        t0 = time.monotonic()
        body = _home(base, WARM[0], country="US")
        assert time.monotonic() - t0 < 2.0
        assert body["fallback"] == "redis_unavailable" and len(body["items"]) == 20
        assert {i["source"] for i in body["items"]} == {"fallback_snapshot"}
        assert _metric(base, "videorec_fallbacks_total", reason="redis_unavailable") >= 1
        r = _get(base, "/api/v1/recommendations/similar/1010")
        assert r.status_code == 200 and r.json()["fallback"] == "redis_unavailable"
        r = _post(base, {"video_id": 1010, "action": "like"}, user=WARM[0])
        assert r.status_code == 503 and r.json()["error"] == "unavailable"  # not silently lost
        assert _get(base, "/readyz", key=None).status_code == 503
        # Redis back (empty, on the same port): the spooled impressions are appended.
        port = own.url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run(["redis-server", "--port", port, "--bind", "127.0.0.1", "--daemonize",
                        "yes", "--save", "", "--dir", str(tmp)], check=True)  # fmt: skip
        stream = LiveKeys(world["root"]).events_stream

        def spooled() -> list[dict[str, Any]]:
            try:
                entries = client.xrange(stream)
            except redis.exceptions.ConnectionError:
                return []
            events = [decode_stream_event(f) for _, f in entries]
            return [e for e in events if e.get("request_id") == body["request_id"]]

        _wait(lambda: len(spooled()) == 20)
        assert {e["source"] for e in spooled()} == {"fallback_snapshot"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        with contextlib.suppress(redis.exceptions.RedisError):
            client.shutdown(nosave=True)


# ---- operations


def test_metrics_count_requests_by_endpoint(server: str) -> None:
    _home(server, WARM[6])
    text = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'videorec_request_seconds_bucket{endpoint="home",le="0.015",status="2xx"}' in text
    assert "videorec_generation_age_seconds" in text and "videorec_impressions_total" in text


def test_readiness_names_what_is_missing_then_passes(server: str, world: dict[str, Any]) -> None:
    from videorec.artifact_names import INDEX
    from videorec.artifacts import LocalArtifactStore
    from videorec.indexing.slots import assign_standby, publish

    assert _get(server, "/healthz", key=None).json() == {"status": "ok"}
    r = _get(server, "/readyz", key=None)
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["redis"]["ok"] and checks["generation"]["ok"] and checks["catalogue"]["ok"]
    assert checks["generation"]["id"] == GEN and checks["generation"]["age_s"] < 600
    assert checks["catalogue"]["videos"] == 480 + 6  # the main generation's and the new ones
    assert checks["catalogue"]["new_videos"] == {"generation": NEWGEN, "videos": 6,
                                                 "ignored": None}  # fmt: skip
    assert checks["index"] == {"ok": False, "version": None}
    store = LocalArtifactStore(world["tmp"] / "artifacts")
    with store.write_version(INDEX, "2026-11-01_m.i", {"gate": "passed"}):
        pass
    assign_standby(store, "2026-11-01_m.i")
    publish(store, "2026-11-01_m.i")
    r = _get(server, "/readyz", key=None)
    assert r.status_code == 200 and r.json()["checks"]["index"]["version"] == "2026-11-01_m.i"


def test_no_generation_is_a_503_not_a_crash(server: str, world: dict[str, Any]) -> None:
    client, keys = world["client"], world["keys"]
    client.delete(keys.pointer)
    try:
        _wait(lambda: _get(server, "/api/v1/recommendations/similar/1010").status_code == 503)
        r = _get(server, "/api/v1/recommendations/similar/1010")
        assert r.json()["error"] == "not_ready"
        assert _get(server, "/readyz", key=None).json()["checks"]["generation"]["ok"] is False
        assert _get(server, HOME, user=WARM[7]).status_code == 200  # never blank, never 5xx
    finally:
        client.set(keys.pointer, GEN)


def test_a_serving_process_loads_no_torch_spark_or_index_builder(world: dict[str, Any]) -> None:
    """The app built and asked requests in a fresh interpreter: what it loaded."""
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from videorec.serving.app import app\n"
        "with TestClient(app) as c:\n"
        f"    h = {{'X-API-Key': '{READ_KEY}', 'X-User-Id': '31'}}\n"
        "    for path in ('/api/v1/recommendations/similar/1010', '/api/v1/recommendations/home'):\n"
        "        r = c.get(path, headers=h)\n"
        "        assert r.status_code == 200, r.text\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    conf = _config(world["tmp"], world["redis_url"], world["root"])
    env = {**os.environ, "VIDEOREC_CONFIG": str(conf)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    banned = ("torch", "pyspark", "faiss", "videorec.indexing.build", "videorec.training",
              "videorec.features", "videorec.precompute", "videorec.streaming",
              "videorec.ranking.model", "videorec.ranking.train", "videorec.ranking.examples",
              "videorec.ranking.gate")  # fmt: skip
    assert not {m for m in loaded if m.split(".")[0] in banned or m.startswith(banned)}
    assert "videorec.serving.app" in loaded and "redis" in loaded
    assert CATEGORIES  # the world's categories exist (import used by other tests)


# ---- fuzzing


def test_api_fuzz_finds_no_server_error(server: str, tmp_path: Path) -> None:
    """schemathesis against /openapi.json: every operation but /readyz (whose 503 means
    "not ready", by design), generated valid and invalid inputs (the coverage phase's
    boundary values too), not one 5xx."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server}/openapi.json",
         "--checks", "not_a_server_error", "--header", f"X-API-Key: {BOTH_KEY}",
         "--max-examples", "40", "--seed", "13", "--generation-database", "none",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "10",
         "--exclude-path", "/readyz"],  # its 503 is its answer while not ready
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (
        "Tested: 6" in out and " passed" in out
    )  # home, up-next, similar, feedback, healthz, metrics


def test_videorec_serve_with_two_workers_adds_up_their_metrics(world: dict[str, Any]) -> None:
    """As production starts it: ``videorec serve`` with 2 workers; /metrics, whichever
    worker answers, counts the requests both served (prometheus multiprocess mode)."""
    port = free_port()
    conf = _config(world["tmp"], world["redis_url"], world["root"])
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    cli = Path(sys.executable).with_name("videorec")
    proc = subprocess.Popen([str(cli), "serve", "--config", str(conf), "--port", str(port),
                             "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _alive(base), timeout_s=60)
        _wait(lambda: _get(base, "/readyz", key=None).json()["checks"]["catalogue"]["ok"], 30)
        for k in range(40):
            _home(base, WARM[k % len(WARM)])

        def counted() -> float:
            text = httpx.get(f"{base}/metrics", timeout=10).text
            rows = [ln for ln in text.splitlines()
                    if ln.startswith('videorec_request_seconds_count{endpoint="home"')]  # fmt: skip
            return sum(float(ln.rsplit(" ", 1)[1]) for ln in rows)

        assert all(counted() == 40 for _ in range(6))  # the same total from either worker
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _alive(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_served_impressions_and_feedback_reach_the_event_log_once_after_a_crash(
    server: str, world: dict[str, Any], tmp_path: Path
) -> None:
    """What the server logged (impressions of a page, one feedback) drained by a drain
    process killed between writing its file and acknowledging, then run again: every
    stream entry is in the event log exactly once."""
    import pyarrow as pa

    from videorec.config import parse_config
    from videorec.contract import empty_table
    from videorec.dataset import DatasetWriter, read_events
    from videorec.streaming.drain import CRASH_ENV, drain_events

    page = _home(server, WARM[8])
    fb = _post(server, {"video_id": page["items"][0]["video_id"], "action": "like",
                        "request_id": page["request_id"], "position": 0}, user=WARM[8],
               idem="e2e-like-0001")  # fmt: skip
    assert fb.status_code == 202
    client, stream = world["client"], world["live"].events_stream
    in_stream = {decode_stream_event(f)["event_id"] for _, f in client.xrange(stream)}
    assert len(in_stream) == client.xlen(stream)  # serving never logs an id twice
    videos = pa.table({"video_id": world["world"].video_ids})
    for f in empty_table("videos").schema:
        if f.name != "video_id":
            videos = videos.append_column(f.name, pa.nulls(len(videos), f.type))
    with DatasetWriter(tmp_path / "data") as w:
        w.write_table("videos", videos)
        w.finish({"source": "test", "as_of": "2026-11-01T00:00:00+00:00"})
    data = tmp_path / "data"
    script = (
        "import datetime as dt, redis, sys\n"
        "from videorec.config import parse_config\n"
        "from videorec.streaming.drain import drain_events\n"
        "cfg = parse_config({'streaming': {'drain_lease_s': 1}})\n"
        "drain_events(cfg, sys.argv[1], dt.datetime(2026, 12, 2, tzinfo=dt.UTC),\n"
        "             client=redis.Redis.from_url(sys.argv[3]), root=sys.argv[2], batch_size=50)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(data), world["root"], world["redis_url"]],
                          env={**os.environ, CRASH_ENV: "after_write"}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 75, proc.stderr[-2000:]  # killed after its first file
    _wait(lambda: not client.exists(world["live"].drain_lease))  # its lease lapses (1 s)
    cfg = parse_config({"precompute": {"key_prefix": world["root"]}})
    res = drain_events(cfg, str(data), dt.datetime(2026, 12, 2, tzinfo=dt.UTC), client=client,
                       root=world["root"], batch_size=50)  # fmt: skip
    assert res["quarantined"] == {} and res["pending"] == 0
    log = read_events(data)
    ids = log["event_id"].to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == in_stream
    rows = log.to_pylist()
    like = [r for r in rows if r["event_id"] == fb.json()["event_id"]]
    assert (
        len(like) == 1
        and like[0]["event_type"] == "like"
        and like[0]["request_id"] == page["request_id"]
    )
    shown = [
        r for r in rows if r["request_id"] == page["request_id"] and r["event_type"] == "impression"
    ]
    assert sorted(r["position"] for r in shown) == list(range(20))
