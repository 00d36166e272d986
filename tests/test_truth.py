"""The synthetic platform's click model and its ground-truth oracle (datagen/truth.py):
position bias, appeal against quality, and the oracle's expectations against what the
generator logged."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from videorec.datagen.synthetic import (
    CLICK_WEIGHTS,
    OUTCOME_WEIGHTS,
    POLICIES,
    GeneratorParams,
    click_logit,
    completion,
    expected_watch_given_play,
    generate,
    p_click_given_examined,
    sigmoid,
)
from videorec.datagen.truth import Truth, load_truth
from videorec.dataset import MANIFEST, read_events

END = dt.date(2026, 11, 1)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small platform whose every session is logged (impressions=1.0)."""
    out = tmp_path_factory.mktemp("truth") / "p"
    params = GeneratorParams(users=2000, videos=1500, days=14, seed=11, end_date=END,
                             impressions=1.0)  # fmt: skip
    generate(params, out, config_digest="t", progress=False)
    return out


@pytest.fixture(scope="module")
def truth(logged: Path) -> Truth:
    return load_truth(logged)


@pytest.fixture(scope="module")
def events(logged: Path) -> dict[str, pd.DataFrame]:
    ev = read_events(logged).to_pandas()
    ev["t_us"] = ev.ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64")
    plays = ev[ev.event_type.isin(["watch", "skip"])]
    clicks = ev[ev.event_type == "click"][["request_id", "video_id"]].assign(clicked=1)
    imp = ev[ev.event_type == "impression"].merge(clicks, on=["request_id", "video_id"],
                                                  how="left")  # fmt: skip
    imp["clicked"] = imp.clicked.fillna(0)
    # Whether the user had already played the video when it was shown.
    first = plays.groupby(["user_id", "video_id"]).t_us.min().rename("first_play").reset_index()
    imp = imp.merge(first, on=["user_id", "video_id"], how="left")
    imp["watched"] = imp.first_play < imp.t_us
    return {"plays": plays, "imp": imp}


def test_the_whole_page_is_logged_with_its_policy(events: dict) -> None:
    imp = events["imp"]
    per_request = imp.groupby("request_id").agg(
        n=("position", "size"), top=("position", "max"), sources=("source", "nunique")
    )
    assert (per_request.n == per_request.top + 1).all()  # positions 0..n-1, each once
    assert per_request.n.median() == 40 and (per_request.sources == 1).all()
    assert set(imp.source) == set(POLICIES)
    share = imp.groupby("request_id").source.first().value_counts(normalize=True)
    for name, w in POLICIES.items():
        assert abs(share[name] - w["share"]) < 0.03, (name, share[name])


def test_ctr_falls_with_position_even_on_random_pages(events: dict) -> None:
    """Position bias: on explore pages (random order) the click-through rate still
    falls with the position, by about the examination curve."""
    imp = events["imp"]
    for pages in (imp, imp[imp.source == "explore"]):
        ctr = pages.groupby(pd.cut(pages.position, [-1, 0, 4, 14, 39])).clicked.mean().to_numpy()
        assert (np.diff(ctr) < 0).all(), ctr
    explore = imp[imp.source == "explore"]
    top = explore[explore.position < 5].clicked.mean()
    deep = explore[explore.position >= 30].clicked.mean()
    assert top > 3 * deep, (top, deep)  # examination: 0.59 against 0.12 on average


def test_clicks_and_watch_time_disagree_on_clickbait(truth: Truth, events: dict) -> None:
    """High appeal with low quality is clicked more and watched less than the reverse."""
    v = pd.DataFrame({"video_id": truth.video_ids, "appeal": truth.appeal, "q": truth.quality})
    a_hi, a_lo = v.appeal.quantile([0.75, 0.25])
    q_hi, q_lo = v.q.quantile([0.75, 0.25])
    bait = set(v.video_id[(v.appeal > a_hi) & (v.q < q_lo)])
    gems = set(v.video_id[(v.appeal < a_lo) & (v.q > q_hi)])
    assert len(bait) >= 50 and len(gems) >= 50
    imp, plays = events["imp"], events["plays"]
    ctr_bait = imp[imp.video_id.isin(bait)].clicked.mean()
    ctr_gems = imp[imp.video_id.isin(gems)].clicked.mean()
    comp = plays.watch_time_s / plays.video_duration_s
    comp_bait, comp_gems = comp[plays.video_id.isin(bait)], comp[plays.video_id.isin(gems)]
    assert len(comp_bait) >= 300 and len(comp_gems) >= 300
    assert ctr_bait > 1.3 * ctr_gems, (ctr_bait, ctr_gems)
    assert comp_bait.mean() < comp_gems.mean() - 0.1, (comp_bait.mean(), comp_gems.mean())
    # ... and the truth says the same.
    skip = plays.event_type == "skip"
    assert skip[plays.video_id.isin(bait)].mean() > 2 * skip[plays.video_id.isin(gems)].mean()
    assert truth.clickbait.mean() > 0.03 and (truth.quality[truth.clickbait] < 0).all()


def test_expected_watch_given_play_matches_the_plays(truth: Truth, events: dict) -> None:
    """Within 2% overall and 5% in each fifth of the prediction (Monte Carlo noise of
    ~30k plays; the plays cut by the window's end are the only other difference)."""
    plays = events["plays"]
    pred = truth.expected_watch_given_play(plays.user_id.to_numpy(), plays.video_id.to_numpy())
    obs = plays.watch_time_s.to_numpy()
    assert abs(obs.mean() / pred.mean() - 1) < 0.02, (obs.mean(), pred.mean())
    fifth = pd.qcut(pred, 5, labels=False)
    by = pd.DataFrame({"f": fifth, "obs": obs, "pred": pred}).groupby("f").mean()
    assert (abs(by.obs / by.pred - 1) < 0.05).all(), by


def test_examination_times_p_click_matches_the_logged_ctr(truth: Truth, events: dict) -> None:
    """Per position within 8% (+0.004) of the logged click-through rate, 2% overall, 5%
    per fifth of appeal; the videos the user had already played are clicked at
    rewatch_keep times the rate."""
    imp = events["imp"]
    u, v, t = imp.user_id.to_numpy(), imp.video_id.to_numpy(), imp.t_us.to_numpy()
    pos, seen = imp.position.to_numpy(), imp.watched.to_numpy()
    imp = imp.assign(pred=truth.examination(pos) * truth.p_click(u, v, t, seen))
    by = imp.groupby("position").agg(obs=("clicked", "mean"), pred=("pred", "mean"))
    assert (abs(by.obs - by.pred) < 0.08 * by.pred + 0.004).all(), by
    assert abs(imp.clicked.mean() / imp.pred.mean() - 1) < 0.02
    assert seen.mean() > 0.05  # rewatches are part of it
    # By the video's appeal too, within 5% (a 0.8 or 1.2 appeal weight, or the
    # session's intent left out, miss by 10% or more at one end).
    fifth = pd.qcut(truth.appeal[np.searchsorted(truth.video_ids, v)], 5, labels=False)
    by_appeal = imp.assign(f=fifth).groupby("f").agg(obs=("clicked", "mean"), pred=("pred", "mean"))
    assert (abs(by_appeal.obs / by_appeal.pred - 1) < 0.05).all(), by_appeal
    # Leaving the position bias out would not fit: deep positions are examined less.
    flat = imp.assign(pred=truth.p_click(u, v, t, seen)).groupby("position").pred.mean()
    assert (flat.loc[10:] > 2 * by.obs.loc[10:]).all()
    # expected_watch_s is the product of the three parts.
    w = truth.expected_watch_s(u[:500], v[:500], pos[:500], t[:500], seen[:500])
    parts = imp.pred.to_numpy()[:500] * truth.expected_watch_given_play(u[:500], v[:500])
    np.testing.assert_allclose(w, parts, rtol=1e-12)


def test_quadrature_matches_monte_carlo_of_the_sampling_formulas() -> None:
    rng = np.random.default_rng(0)
    logit = np.array([-4.0, -1.0, 0.0, 2.0])
    n = 400_000
    intent = rng.normal(0, 0.8, (n, 1))
    mc = sigmoid(logit[None, :] + intent).mean(axis=0)
    np.testing.assert_allclose(p_click_given_examined(logit), mc, atol=2e-3)
    z_mean, dur = np.array([-3.0, -0.5, 1.0, 4.0]), np.array([20.0, 300.0, 1200.0, 60.0])
    w = OUTCOME_WEIGHTS
    z = z_mean[None, :] + rng.normal(0, w["noise"], (n, 4))
    jitter = rng.uniform(w["jitter_low"], w["jitter_high"], (n, 4))
    watch = np.maximum(1.0, completion(z, jitter) * dur).round(1).mean(axis=0)
    np.testing.assert_allclose(expected_watch_given_play(z_mean, dur), watch, rtol=4e-3)


def test_unknown_ids_negative_positions_and_unpublished_videos(truth: Truth) -> None:
    u, v = truth.user_ids[:3], truth.video_ids[:3]
    t = int(truth.published_us.max())
    with pytest.raises(ValueError, match=r"unknown user ids: 999999"):
        truth.p_click(np.array([u[0], 999_999]), v[:2], t)
    with pytest.raises(ValueError, match=r"unknown video ids: -5, 77777"):
        truth.expected_watch_s(u[0], np.array([v[0], 77_777, -5]), 0, t)
    with pytest.raises(ValueError, match="0-based"):
        truth.expected_watch_s(u, v, np.array([0, -1, 2]), t)
    newest = truth.video_ids[np.argmax(truth.published_us)]
    before = int(truth.published_us.max()) - 1
    assert truth.p_click(u[0], newest, before) == 0.0
    assert truth.expected_watch_s(u[0], newest, 0, before) == 0.0
    assert truth.p_click(u[0], newest, before + 2) > 0.0
    # Broadcasting: one user against many videos, one time.
    assert truth.expected_watch_s(u[0], truth.video_ids, 3, t).shape == truth.video_ids.shape
    # The oracle's click model is the generator's: same function, the manifest's weights.
    assert truth.click_weights == CLICK_WEIGHTS
    aff = float(np.dot(truth.interest[0], truth.topic[0]))
    age = (t - truth.published_us[0]) / 86_400e6
    logit = click_logit(aff, truth.appeal[0], truth.log_popularity[0], age)
    assert truth.p_click(u[0], v[0], t) == pytest.approx(float(p_click_given_examined(logit)))


def test_load_truth_needs_the_click_model(logged: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(logged, old)
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["ground_truth"]["click_weights"]
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no click-model ground truth"):
        load_truth(old)
