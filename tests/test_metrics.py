"""Metrics of videorec.evaluation.metrics against hand-computed cases and a naive loop.

The hand cases write every expected value out from the definitions in the module
docstring; the random cases compare with a per-user Python loop written here, which
shares no code with the vectorised implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from videorec.evaluation.interactions import _NULL_TS, ItemMeta
from videorec.evaluation.metrics import (
    DAY_US,
    beyond_accuracy,
    check_ks,
    coverage,
    first_relevant_rank,
    hits,
    ranking_metrics,
)
from videorec.evaluation.recommenders import exclude_items, top_k


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [i for i, items in enumerate(rows) for _ in items]
    c = [j for items in rows for j in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


# --- top-k selection -------------------------------------------------------------


def test_top_k_breaks_ties_by_lower_index() -> None:
    scores = np.array([[1.0, 2.0, 2.0, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0]], np.float32)
    idx, val = top_k(scores, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    assert val.tolist() == [[2.0, 2.0], [5.0, 5.0]]
    idx, _ = top_k(scores, 4)
    assert idx.tolist() == [[1, 2, 4, 0], [0, 1, 2, 3]]


def test_top_k_pads_when_too_few_candidates() -> None:
    scores = np.array([[0.3, -np.inf, 0.1, -np.inf]], np.float32)
    idx, val = top_k(scores, 3)
    assert idx.tolist() == [[0, 2, -1]]
    assert val[0, 2] == -np.inf
    idx, _ = top_k(scores, 6)  # longer than the catalogue
    assert idx.tolist() == [[0, 2, -1, -1, -1, -1]]
    with pytest.raises(ValueError, match="positive"):
        top_k(scores, 0)


def test_exclude_items_masks_exactly_the_stored_entries() -> None:
    s = np.zeros((2, 4), np.float32)
    exclude_items(s, _csr([[1, 3], []], 4))
    assert np.isneginf(s).tolist() == [[False, True, False, True], [False] * 4]


# --- ranking metrics, hand-computed ------------------------------------------------


def test_ranking_metrics_hand_cases() -> None:
    # user 0: hits at ranks 2 and 5; 3 held out, one of them outside the catalogue.
    # user 1: no hit at all.
    # user 2: fewer held-out items (1) than K, hit at rank 1.
    top = np.array([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4], [7, 0, 1, 2, 3]])
    relevant = _csr([[1, 2], [6], [7]], 8)
    n_rel = np.array([3, 1, 1])
    m = ranking_metrics(top, relevant, n_rel, ks=(2, 5))
    l2 = math.log2
    assert m["recall@2"] == pytest.approx([1 / 3, 0, 1])
    assert m["recall@5"] == pytest.approx([2 / 3, 0, 1])
    assert m["hitrate@2"].tolist() == [1, 0, 1]
    assert m["ndcg@2"] == pytest.approx([(1 / l2(3)) / (1 + 1 / l2(3)), 0, 1])
    # IDCG over min(|test|=3, K=5) = 3 ranks, although only 2 items can ever be hit.
    ideal5 = 1 + 1 / l2(3) + 1 / l2(4)
    assert m["ndcg@5"] == pytest.approx([(1 / l2(3) + 1 / l2(6)) / ideal5, 0, 1])


def test_ranking_metrics_ignore_empty_slots_and_reject_bad_input() -> None:
    top = np.array([[-1, 2, -1]])
    m = ranking_metrics(top, _csr([[0, 2]], 3), np.array([2]), ks=(1, 3))
    assert m["recall@1"].tolist() == [0.0] and m["recall@3"].tolist() == [0.5]
    with pytest.raises(ValueError, match="held-out"):
        ranking_metrics(top, _csr([[]], 3), np.array([0]), ks=(1,))
    with pytest.raises(ValueError, match="shorter"):
        ranking_metrics(top, _csr([[0]], 3), np.array([1]), ks=(5,))
    with pytest.raises(ValueError, match="positive"):
        check_ks([10, 0])
    with pytest.raises(ValueError, match="positive"):
        check_ks([])


def test_first_relevant_rank_hand_cases() -> None:
    scores = np.array(
        [
            [0.5, 0.9, 0.9, -np.inf, 0.1],  # best relevant: item 2, tied with item 1 before it
            [0.5, 0.9, 0.9, -np.inf, 0.1],  # relevant item excluded (-inf): no rank
            [0.1, 0.2, 0.3, 0.4, 0.5],  # no relevant item in the catalogue
            [0.1, 0.2, 0.3, 0.4, 0.5],  # two relevant; the better one (item 3) counts
        ],
        np.float32,
    )
    ranks = first_relevant_rank(scores, _csr([[2, 4], [3], [], [0, 3]], 5))
    assert ranks.tolist() == [2.0, math.inf, math.inf, 2.0]


def test_coverage() -> None:
    assert coverage(np.array([[0, 1], [1, -1]]), 10) == pytest.approx(0.2)


# --- against a naive per-user implementation --------------------------------------


def _naive(scores, excluded, relevant, n_relevant, ks):
    """One user at a time, straight from the definitions."""
    out = {f"{m}@{k}": [] for m in ("recall", "ndcg", "hitrate") for k in ks}
    out["rr"] = []
    out["lists"] = []
    for u in range(scores.shape[0]):
        cands = [j for j in range(scores.shape[1]) if j not in excluded[u]]
        ranked = sorted(cands, key=lambda j: (-scores[u, j], j))
        out["lists"].append(ranked[: max(ks)])
        rr = 0.0
        for pos, j in enumerate(ranked, start=1):
            if j in relevant[u]:
                rr = 1.0 / pos
                break
        out["rr"].append(rr)
        for k in ks:
            got = [j in relevant[u] for j in ranked[:k]]
            dcg = sum(1 / math.log2(r + 1) for r, g in enumerate(got, start=1) if g)
            idcg = sum(1 / math.log2(r + 1) for r in range(1, min(n_relevant[u], k) + 1))
            out[f"recall@{k}"].append(sum(got) / n_relevant[u])
            out[f"ndcg@{k}"].append(dcg / idcg)
            out[f"hitrate@{k}"].append(float(any(got)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_naive_loop_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m, ks = 40, 60, (1, 5, 10, 20)
    # One decimal: many exact ties, so tie-breaking is exercised.
    scores = np.round(rng.random((n, m)), 1).astype(np.float32)
    excluded = [set(rng.choice(m, rng.integers(0, 15), replace=False).tolist()) for _ in range(n)]
    relevant = []
    for u in range(n):
        pool = [j for j in range(m) if j not in excluded[u]]
        relevant.append(set(rng.choice(pool, rng.integers(0, 6), replace=False).tolist()))
    # Some held-out items lie outside the catalogue: they only raise the count.
    n_relevant = [len(r) + int(rng.integers(0, 3)) for r in relevant]
    n_relevant = [max(c, 1) for c in n_relevant]

    masked = exclude_items(scores.copy(), _csr([sorted(e) for e in excluded], m))
    rel = _csr([sorted(r) for r in relevant], m)
    idx, _ = top_k(masked, max(ks))
    got = ranking_metrics(idx, rel, np.array(n_relevant), ks)
    ranks = first_relevant_rank(masked, rel)
    want = _naive(scores, excluded, relevant, n_relevant, ks)

    assert idx.tolist() == want["lists"]
    for key in got:
        assert got[key] == pytest.approx(want[key]), key
    assert 1.0 / ranks == pytest.approx(want["rr"])
    # hits() agrees with plain membership.
    h = hits(idx, rel)
    assert h.tolist() == [[j in relevant[u] for j in idx[u]] for u in range(n)]


# --- beyond accuracy -------------------------------------------------------------


def _meta() -> ItemMeta:
    hour = 3600 * 1_000_000
    return ItemMeta(
        channel=np.array([0, 0, 0, 0, 1, -1], np.int32),
        category=np.array([0, 0, 1, 1, 1, -1], np.int32),
        # item 4: published 1 h before list 1 is served; item 5: after it; others old.
        published_us=np.array([0, 0, 0, 0, 100 * DAY_US - hour, 100 * DAY_US + hour]),
        # channel 0 existed before the window (day 50), channel 1 was created in it.
        channel_created_us=np.array([0, 0, 0, 0, 60 * DAY_US, _NULL_TS]),
        window_start_us=50 * DAY_US,
    )


def test_beyond_accuracy_hand_case() -> None:
    top = np.array([[0, 1, 2, 3], [4, 5, 0, 1]])
    pop = np.array([10, 5, 5, 1, 1, 2])
    serve = np.array([100 * DAY_US, 100 * DAY_US])
    m = beyond_accuracy(top, _meta(), pop, n_train_users=10, serve_ts=serve)
    # list 0: channel 0 x4 (1.0, over the cap of 3); categories 0,0,1,1 (0.5 > 30%).
    # list 1: channels 1,?,0,0 -> 2 of 4; categories 1,?,0,0 -> 2 of 4 (over 30%).
    assert m["top_channel_share"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["top_category_share"] == pytest.approx(0.5)
    assert m["lists_over_channel_cap"] == 1
    assert m["lists_over_category_cap"] == 2
    assert m["lists_breaking_caps"] == 2
    imp = [10, 5, 5, 1, 1, 2, 10, 5]
    assert m["mean_log_popularity"] == pytest.approx(np.mean(np.log(imp)))
    assert m["novelty_bits"] == pytest.approx(np.mean(-np.log2(np.array(imp) / 10)))
    assert m["fresh_video_share"] == pytest.approx(1 / 8)
    assert m["not_yet_published_share"] == pytest.approx(1 / 8)
    assert m["new_creator_share"] == pytest.approx(1 / 8)


def test_beyond_accuracy_reports_null_for_missing_fields() -> None:
    top = np.array([[0, 1, 2]])
    m = beyond_accuracy(top, ItemMeta.unknown(3), np.array([3, 2, 1]), 3, np.array([0]))
    for key in (
        "top_channel_share",
        "top_category_share",
        "lists_over_channel_cap",
        "lists_breaking_caps",
        "fresh_video_share",
        "new_creator_share",
    ):
        assert m[key] is None, key
    assert m["mean_log_popularity"] == pytest.approx(np.mean(np.log([3, 2, 1])))
    # Categories known but channels not (MovieLens): the category cap is still measured.
    meta = ItemMeta.unknown(3)
    meta.category[:] = [0, 0, 1]
    m = beyond_accuracy(top, meta, np.array([3, 2, 1]), 3, np.array([0]))
    assert m["lists_over_category_cap"] == 1 and m["lists_breaking_caps"] is None
