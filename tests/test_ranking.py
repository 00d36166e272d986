"""The stage-2 ranker's parts: losses, score, features without leakage, runtime, pointer.

The end-to-end run (examples -> training -> funnel beats retrieval -> gate) is in
tests/test_training.py, on the trained two-tower fixture.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from videorec import artifact_names as names
from videorec.artifacts import LocalArtifactStore
from videorec.config import Config, ConfigError, parse_config
from videorec.evaluation.interactions import Events, Interactions
from videorec.evaluation.recommenders import Recommender
from videorec.ranking.examples import (
    KINDS,
    Catalogue,
    EventLog,
    candidate_pairs,
    last_plays,
    outcome_labels,
    sample_users,
    video_stats_as_of,
)
from videorec.ranking.features import FEATURE_NAMES, PairInputs, knn_scores, pair_features
from videorec.ranking.model import HEADS, Labels, RankerConfig, RankerModel, head_losses
from videorec.ranking.publish import RankerPublishError, publish_ranker, read_ranker_pointer
from videorec.ranking.runtime import RankerRuntime, combine
from videorec.ranking.train import Pairs, grouped_ndcg, save_ranker, watch_weights

DAY_US = 86_400_000_000
T0 = 1_700_000_000_000_000  # µs


def _bce(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_each_heads_loss_on_a_hand_computed_case() -> None:
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0], [2.0, -0.5, 0.5, 0.0]])
    y = Labels(
        played=torch.tensor([1.0, 0.0]), watch_weight=torch.tensor([3.0, 2.0]),
        like=torch.tensor([1.0, 0.0]), dislike=torch.tensor([0.0, 1.0]),
        skip=torch.tensor([0.0, 0.0]),
    )  # fmt: skip
    got = {k: float(v) for k, v in head_losses(logits, y).items()}
    want = {
        # weighted LR: mean of w·BCE
        "watch": (3.0 * _bce(0.0, 1) + 2.0 * _bce(2.0, 0)) / 2,
        "like": (_bce(1.0, 1) + _bce(-0.5, 0)) / 2,
        "dislike": (_bce(-1.0, 0) + _bce(0.5, 1)) / 2,
        "skip": (_bce(2.0, 0) + _bce(0.0, 0)) / 2,
    }
    assert got == pytest.approx(want, rel=1e-6)
    assert tuple(got) == HEADS


def test_watch_weights_follow_watch_time_impressions_and_the_objective(cfg: Config) -> None:
    labels = {
        "played": np.array([1, 1, 0, 0, 1], np.float32),
        "watch_s": np.array([300, 100, 0, 0, 0], np.float32),  # the last: unknown watch time
        "shown": np.array([0, 0, 1, 0, 0], np.float32),
        **{k: np.zeros(5, np.float32) for k in ("like", "dislike", "skip")},
    }
    p = Pairs(np.zeros((5, 2), np.float32), np.zeros(5), np.zeros(5), np.zeros(5), labels)
    w = watch_weights(p, cfg.ranking)
    assert w.tolist() == pytest.approx([1.5, 0.5, 2.0, 1.0, 1.0])  # mean play 200 s
    click = cfg.ranking.model_copy(update={"objective": "click"})
    assert watch_weights(p, click).tolist() == pytest.approx([1.0, 1.0, 2.0, 1.0, 1.0])


def test_the_combined_score_uses_the_configured_weights(tmp_path: Path) -> None:
    c = parse_config({"ranking": {"score_weights": {"watch": 2.0, "like": 1.0, "dislike": 3.0,
                                                   "skip": 0.5}}})  # fmt: skip
    logits = np.array([[math.log(0.5), 0.0, 0.0, 0.0], [0.0, 100.0, -100.0, 100.0]])
    s = combine(logits, c.ranking.score_weights)
    assert s.tolist() == pytest.approx([2 * 0.5 + 0.5 - 1.5 - 0.25, 2 * 1.0 + 1.0 - 0.0 - 0.5])
    # Only the click-through: every other head's weight 0.
    assert combine(logits, {"watch": 1.0}).tolist() == pytest.approx([0.5, 1.0])
    for bad in ({"watch": -1.0}, {"clicks": 1.0}):
        with pytest.raises(ConfigError):
            parse_config({"ranking": {"score_weights": bad}})


def _log(rows: list[tuple[int, int, int, str, float]]) -> EventLog:
    u, v, t, k, w = (np.array(x) for x in zip(*rows, strict=True))
    return EventLog(u.astype(np.int64), v.astype(np.int64), t.astype(np.int64),
                    np.array([KINDS[x] for x in k], np.int8), w.astype(float),
                    np.full(len(u), 100.0))  # fmt: skip


def test_video_statistics_count_only_events_strictly_before_the_pairs_time() -> None:
    log = _log([
        (1, 10, T0, "watch", 50.0), (2, 10, T0 + 10, "watch", 100.0),
        (3, 10, T0 + 20, "dislike", np.nan), (4, 10, T0 + 5_000, "watch", 10.0),
        (1, 11, T0 + 1_000, "skip", 5.0),
    ])  # fmt: skip
    s = video_stats_as_of(log, np.array([10, 10, 10, 10, 11, 99]),
                          np.array([T0, T0 + 1_000, T0 + 5_000, T0 + 5_001_000, T0 + 1_000, T0]))  # fmt: skip
    # At T0 nothing is before; at T0+1ms three events (two plays, a dislike); the play at
    # T0+5ms counts only after its millisecond; video 11's skip is at its query time.
    assert s["views"].tolist() == [0, 2, 2, 3, 0, 0]
    assert s["completion"][1:4].tolist() == pytest.approx([0.75, 0.75, 160 / 300])
    assert np.isnan(s["completion"][0]) and np.isnan(s["completion"][4])
    assert s["dislike_ratio"][1:4].tolist() == pytest.approx([0.5, 0.5, 1 / 3])


def test_labels_count_only_the_users_span() -> None:
    log = _log([
        (1, 10, T0 - 1, "watch", 50.0),  # before the span: a feature, never a label
        (1, 10, T0, "watch", 30.0), (1, 10, T0 + 5, "watch", 20.0), (1, 10, T0 + 6, "like", np.nan),
        (1, 11, T0 + 7, "impression", np.nan), (1, 12, T0 + 8, "skip", 2.0),
        (1, 13, T0 + DAY_US, "watch", 1.0),  # at the span's end: outside
        (2, 10, T0 + 1, "dislike", np.nan),
    ])  # fmt: skip
    lab = outcome_labels(log, np.array([2, 1]), np.array([T0, T0]), np.array([T0 + DAY_US] * 2),
                         np.array([[10, 11, -1, -1], [10, 11, 12, 13]]))  # fmt: skip
    assert lab["played"].tolist() == [[0, 0, 0, 0], [1, 0, 1, 0]]
    assert lab["watch_s"].tolist() == [[0, 0, 0, 0], [50, 0, 2, 0]]
    assert lab["like"].tolist() == [[0, 0, 0, 0], [1, 0, 0, 0]]
    assert lab["dislike"].tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    assert lab["skip"].tolist() == [[0, 0, 0, 0], [0, 0, 1, 0]]
    assert lab["shown"].tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]


class _FixedRetrieval(Recommender):
    """A retrieval model with fixed embeddings (what candidate_pairs reads)."""

    name = "Fixed"

    def __init__(self, query: np.ndarray, items: np.ndarray) -> None:
        super().__init__()
        self.query_, self.candidates_ = query, items

    def fit(self, train: Interactions) -> Self:
        self.train_ = train
        return self

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        return (self.query_[user_rows] @ self.candidates_.T).astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {}


def test_training_labels_end_where_the_hold_out_begins() -> None:
    """last_days: a user with no hold-out watch (only a skip on the hold-out day) was
    labelled up to the window's end, and one with a watch up to it: the hold-out span,
    which the gate judges, labelled training pairs (found by review)."""
    from videorec.evaluation.interactions import Events, build_split
    from videorec.ranking.examples import KINDS, EventLog, label_ends, outcome_labels

    day = 86_400_000_000
    u, v = np.array([1] * 5 + [2] * 5), np.array([10, 11, 12, 13, 14] * 2)
    ts = np.array([0, 1, 2, 3, 4] * 2) * day
    held = Events(np.array([1]), np.array([20]), np.array([9 * day + 3_600_000_000]))
    split = build_split(Events(u, v, ts), held, items=None, protocol={"holdout_fraction": 0.2})
    val = split.validation()
    ids = val.train.user_ids[val.test.rows]
    fman = {"split": "last_days", "features_config": {"eval_days": 1}}
    ends = label_ends(split, ids, fman, 10 * day)
    assert ends.tolist() == [9 * day, 9 * day]
    assert label_ends(split, ids, {"split": "per_user"}, 10 * day).tolist() == [
        9 * day + 3_600_000_000, 10 * day]  # fmt: skip
    skip = EventLog(user=np.array([2]), video=np.array([14]), ts_us=np.array([int(9.5 * day)]),
                    kind=np.array([KINDS["skip"]], np.int8), watch_s=np.array([3.0]),
                    duration_s=np.array([60.0]))  # fmt: skip
    start = np.zeros(len(ids), np.int64)
    labels = outcome_labels(skip, ids, start, ends, np.array([[14], [14]]))
    assert labels["played"].sum() == 0 and labels["skip"].sum() == 0


def test_no_pair_feature_uses_an_event_at_or_after_the_pairs_time() -> None:
    """A hand-built log: adding events at or after every pair's time changes no feature
    (labels may change: they are what happened next). One user's "after" is another's
    "before" (video statistics are shared), so the added events start at the latest
    pair time; the first lands exactly on it."""
    rng = np.random.default_rng(0)
    users, videos = np.array([1, 2, 3]), np.arange(100, 120)
    t_user = np.array([T0 + 10 * DAY_US, T0 + 12 * DAY_US, T0 + 15 * DAY_US])
    n = 60
    u = rng.choice(users, n)
    t = T0 + (rng.random(n) * (t_user[u - 1] - T0)).astype(np.int64)  # all before
    train = Interactions.from_events(Events(u, rng.choice(videos, n), t))
    rec = _FixedRetrieval(rng.normal(size=(3, 8)), rng.normal(size=(len(train.item_ids), 8))).fit(
        train
    )
    cat = Catalogue(train.item_ids, rng.integers(-1, 3, len(train.item_ids)),
                    np.full(len(train.item_ids), T0), np.full(len(train.item_ids), 200.0))  # fmt: skip
    past = _log([(int(a), int(b), int(c), "watch", 50.0) for a, b, c in zip(u, train.item_ids[rng.integers(0, len(train.item_ids), n)], t, strict=True)])  # fmt: skip
    future_rows = [(int(us), int(v), int(t_user.max() + dt), kind, 80.0)
                   for us in users for v in train.item_ids[:6] for dt, kind in
                   ((0, "watch"), (1, "dislike"), (DAY_US, "skip"), (5, "impression"))]  # fmt: skip
    future = _log(future_rows)
    both = EventLog(
        *(np.concatenate([getattr(past, f), getattr(future, f)]) for f in past.__dataclass_fields__)
    )
    neighbours = sp.random(
        len(train.item_ids), len(train.item_ids), density=0.3, random_state=1, format="csr"
    )
    args = dict(k=5, history_len=4, negatives=0, seed=0)
    rows = train.user_rows(users)
    end = np.full(3, t_user.max() + 2 * DAY_US)
    a = candidate_pairs(rec, neighbours, cat, rows, t_user, end, past, **args)
    b = candidate_pairs(rec, neighbours, cat, rows, t_user, end, both, **args)
    assert a["video_id"].equals(b["video_id"]) and a.num_rows == 15
    assert np.array_equal(a["features"].combine_chunks().values.to_numpy(),
                          b["features"].combine_chunks().values.to_numpy())  # fmt: skip
    assert sum(b["played"].to_pylist()) > 0 == sum(a["played"].to_pylist())  # labels did change


def test_last_plays_are_right_aligned_and_padded() -> None:
    train = Interactions.from_events(Events(np.array([1, 1, 1, 2]), np.array([5, 6, 7, 5]),
                                            np.array([3, 1, 2, 1])))  # fmt: skip
    got = last_plays(train, np.array([0, 1]), 2)
    assert got.tolist() == [[2, 0], [-1, 0]]  # user 1 watched 6, 7, 5 in time order: last two 7, 5


def test_knn_scores_sum_decayed_votes_of_the_history() -> None:
    s = sp.csr_matrix(np.array([[0, 0.5, 0.2], [0.1, 0, 0], [0.4, 0.3, 0]]))
    got = knn_scores(s, np.array([[-1, 2, 0]]), np.array([[1, 2, -1]]))  # most recent: item 0
    assert got[0, 0].tolist() == pytest.approx([0.3 + 0.5, 0.3 * 0.8 + 0.5])
    assert got[0, 1].tolist() == pytest.approx([0.2, 0.2])
    assert got[0, 2].tolist() == [0.0, 0.0]


def _inputs(rng: np.random.Generator, u: int, c: int) -> PairInputs:
    d, h = 8, 5
    return PairInputs(
        query=rng.normal(size=(u, d)), history=rng.normal(size=(u, h, d)),
        history_category=rng.integers(-1, 4, (u, h)), candidate=rng.normal(size=(u, c, d)),
        candidate_category=rng.integers(-1, 4, (u, c)), retrieval_score=rng.normal(size=(u, c)),
        retrieval_rank=np.tile(np.arange(c), (u, 1)), views=rng.integers(0, 100, (u, c)),
        completion=rng.random((u, c)), dislike_ratio=rng.random((u, c)) * 0.1,
        age_days=rng.random((u, c)) * 30, duration_s=rng.random((u, c)) * 900,
        hour=rng.random(u) * 24, knn=rng.random((u, c, 2)),
    )  # fmt: skip


def _ranker(tmp: Path, arch: str = "mmoe") -> tuple[RankerModel, RankerRuntime]:
    n = len(FEATURE_NAMES)
    torch.manual_seed(0)
    model = RankerModel(RankerConfig(list(FEATURE_NAMES), [0.1] * n, [2.0] * n, architecture=arch,
                                     disabled_features=["hour_sin"])).eval()  # fmt: skip
    save_ranker(tmp, model, {})
    return model, RankerRuntime.load(tmp / names.RANKER_WEIGHTS_FILE)


@pytest.mark.parametrize("arch", ["mmoe", "shared_bottom"])
def test_batched_inference_equals_per_item_and_the_torch_model(tmp_path: Path, arch: str) -> None:
    model, rt = _ranker(tmp_path, arch)
    x = _inputs(np.random.default_rng(1), 1, 40)
    feats = pair_features(x)[0]  # (40, F)
    batched = rt.logits(feats)
    single = np.concatenate([rt.logits(feats[i : i + 1]) for i in range(len(feats))])
    assert np.allclose(batched, single, atol=1e-5)
    with torch.no_grad():
        assert np.allclose(batched, model(torch.from_numpy(feats)).numpy(), atol=1e-5)
    # Features of one candidate alone equal its row of the batch (no cross-candidate leak).
    one = PairInputs(**{k: (v[:, 3:4] if getattr(v, "ndim", 0) >= 2 and k.startswith(
        ("candidate", "retrieval", "views", "completion", "dislike", "age", "duration", "knn"))
        else v) for k, v in vars(x).items()})  # fmt: skip
    assert np.allclose(pair_features(one)[0, 0], feats[3], atol=1e-6)


def test_grouped_ndcg_on_a_hand_case() -> None:
    # User 1: gains 1 at positions 2 and 1 of its three -> DCG 1/log2(3) + 1/log2(2)... ideal 1 + 1/log2(3)
    s, g, u = (
        np.array([3.0, 2.0, 1.0, 5.0, 4.0]),
        np.array([0, 1, 1, 0, 0.0]),
        np.array([1, 1, 1, 2, 2]),
    )
    want = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert grouped_ndcg(s, g, u) == pytest.approx(want)  # user 2 has no gain: not counted


def test_sampled_users_are_stable_whatever_the_list() -> None:
    ids = np.arange(1, 1001)
    keep = set(ids[sample_users(ids, 100)])
    assert len(keep) == 100
    some = np.array([*sorted(keep)[:10], 5000, 5001])
    assert set(some[sample_users(some, 11)]) <= set(some) and sample_users(ids[:5], 10).all()


def _version(store: LocalArtifactStore, version: str, date: str) -> None:
    with store.write_version(names.RANKER, version, {"date": date}) as out:
        (out / "x").write_text("x")


def test_the_pointer_moves_by_cas_never_back_unless_forced(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    _version(store, "2026-11-01_a", "2026-11-01")
    _version(store, "2026-11-02_b", "2026-11-02")
    assert read_ranker_pointer(store) is None
    with pytest.raises(RankerPublishError, match="no such ranker"):
        publish_ranker(store, "2026-11-03_missing")
    assert publish_ranker(store, "2026-11-02_b")["version"] == "2026-11-02_b"
    rev = read_ranker_pointer(store)["revision"]
    assert publish_ranker(store, "2026-11-02_b")["revision"] == rev  # idempotent: no write
    with pytest.raises(RankerPublishError, match="older"):
        publish_ranker(store, "2026-11-01_a")  # yesterday's zombie run
    back = publish_ranker(store, "2026-11-01_a", force=True)  # a manual rollback
    assert (back["version"], back["previous"]) == ("2026-11-01_a", "2026-11-02_b")
