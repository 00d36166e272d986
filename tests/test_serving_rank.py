"""The page builder's pure functions (``serving/rank.py``) on a hand-built catalogue.

Unit level: no Redis, no HTTP (tests/test_serving.py runs the same code in uvicorn).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from videorec.config import ServingConfig
from videorec.serving.feed import Breaker
from videorec.serving.live import Catalogue, ExploreStats, catalogue_from_rows
from videorec.serving.rank import (
    SRC,
    Pool,
    UserView,
    build_page,
    eligible,
    freshness,
    popular_share,
    relevance,
    thompson_picks,
)

NOW = 1_790_000_000.0
CATS = ["a", "b", "c", "d", "e"]


def _catalogue(n: int = 300, seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(n):
        emb = rng.normal(size=8).astype(np.float32)
        rows.append((v, {"category": CATS[v % 5], "channel_id": v % 17, "channel_name": f"c{v % 17}",
                         "title": f"t{v}", "published_at": NOW - (v + 1) * 3600.0, "views": 100,
                         "avg_completion": 0.6, "dislike_ratio": 0.01, "duration_s": 60.0,
                         "embedding": emb}))  # fmt: skip
    return catalogue_from_rows("g", rows)


def _pool(cat: Catalogue, rows: np.ndarray, source: str, rng: np.random.Generator) -> Pool:
    return Pool(rows, rng.uniform(0.1, 5, len(rows)), np.full(len(rows), SRC[source], np.int8))


def test_eligible_drops_watched_hidden_blocked_and_low_quality() -> None:
    rows = [(v, {"channel_id": v % 3, "views": 50, "avg_completion": 0.5, "dislike_ratio": 0.0})
            for v in range(10)]  # fmt: skip
    rows[4][1]["avg_completion"] = 0.05  # low completion, judged (50 views)
    rows[5][1]["dislike_ratio"] = 0.6
    rows[6][1].update(avg_completion=0.05, views=3)  # too few views to judge: kept
    cat = catalogue_from_rows("g", rows)
    user = UserView(history=np.array([0]), hidden=np.array([1]), blocked_channels=np.array([2]))
    keep = eligible(cat, np.arange(10), user, ServingConfig())
    # channel 2: videos 2, 5, 8
    assert np.flatnonzero(keep).tolist() == [3, 6, 7, 9]


def test_freshness_boosts_by_age() -> None:
    cat = _catalogue()
    boost = freshness(cat, np.array([0, 22, 23, 30, 167, 200]), NOW, ServingConfig())
    assert boost.tolist() == [1.2, 1.2, 1.1, 1.1, 1.0, 1.0]  # ages 1, 23, 24, 31, 168, 201 h


def test_relevance_prefers_the_users_categories() -> None:
    cat = _catalogue()
    rows = np.arange(100, 110)
    user = UserView(preferred={"a": 1.0})
    rel = relevance(cat, rows, np.ones(10), user, NOW, ServingConfig())
    in_a = cat.category[rows] == cat.cat_code["a"]
    assert rel[in_a].min() > rel[~in_a].max()


@pytest.mark.parametrize("seed", range(25))
def test_every_page_respects_the_caps_and_the_exploration_share(seed: int) -> None:
    cat, s = _catalogue(seed=seed), ServingConfig()
    rng = np.random.default_rng(seed)
    personal = _pool(cat, rng.choice(200, 150, replace=False), "personal", rng)
    popular = _pool(cat, np.arange(200, 260), "popular", rng)
    explore = _pool(cat, np.arange(260, 300), "trending", rng)
    stats = ExploreStats(np.arange(0, 10), np.zeros(10), np.zeros(10))
    for size in (5, 10, 20, 50):
        page = build_page(
            cat, personal, popular, explore, stats, np.ones(10, bool), size, 0.4, s, rng
        )
        assert len(page.rows) == size and len(set(page.rows.tolist())) == size
        assert max(collections.Counter(cat.channel[page.rows].tolist()).values()) <= 3
        cap = max(1, int(0.3 * size))
        assert max(collections.Counter(cat.category[page.rows].tolist()).values()) <= cap
        explored = np.isin(page.source, [SRC["explore"], SRC["fresh"]]).sum()
        assert explored == round(0.1 * size)


def test_popular_share_follows_history_length() -> None:
    s = ServingConfig()
    assert [popular_share(p, s) for p in (0, 4, 5, 19, 20, 500)] == [0.8, 0.8, 0.4, 0.4, 0.1, 0.1]
    with pytest.raises(ValueError, match="one share more"):
        ServingConfig(cold_start_plays=[5], cold_start_popular_share=[0.5])


def test_thompson_sampling_favours_clicked_videos() -> None:
    cat, s = _catalogue(), ServingConfig()
    from videorec.serving.rank import PageCaps

    stats = ExploreStats(
        np.array([0, 1, 2]), np.array([50.0, 50.0, 0.0]), np.array([40.0, 0.0, 0.0])
    )
    rng = np.random.default_rng(1)
    wins = collections.Counter(
        int(thompson_picks(cat, stats, np.ones(3, bool), 1, PageCaps(cat, 20, s), rng)[0])
        for _ in range(400)
    )
    assert wins[0] > 250 and wins[1] < 10  # the unseen video 2 still gets its chances
    assert wins[2] > 10


def test_breaker_opens_after_failures_and_half_opens_after_cool_down() -> None:
    b = Breaker(failures=2, cooldown_s=10.0)
    b.record(False, 0.0)
    assert b.allow(1.0)
    b.record(False, 1.0)
    assert not b.allow(2.0) and not b.allow(10.9)
    assert b.allow(11.0)  # half open: one more failure re-opens it at once
    b.record(False, 11.0)
    assert not b.allow(12.0)
    assert b.allow(21.5)
    b.record(True, 21.5)
    b.record(False, 22.0)
    assert b.allow(22.1)  # one failure after a success: still closed


def test_impression_events_are_the_stream_encoding_of_contract_rows() -> None:
    import json

    from videorec.redis_keys import encode_stream_event
    from videorec.serving.feed import Context, log_impressions

    items = [{"video_id": 7, "source": "personal"}, {"video_id": 9, "source": "fresh"}]
    for device in (None, "tv"):
        events = log_impressions(None, None, 42, "ab" * 16, items, NOW, Context(device=device))  # type: ignore[arg-type]
        for pos, (text, item) in enumerate(zip(events, items, strict=True)):
            want = {"event_id": f"{'ab' * 16}-{pos}", "ts": "2026-09-21T14:13:20.000000+00:00",
                    "user_id": 42, "video_id": item["video_id"], "event_type": "impression",
                    "request_id": "ab" * 16, "position": pos, "source": item["source"],
                    "device": device}  # fmt: skip
            assert json.loads(text) == json.loads(encode_stream_event(want)["event"])
