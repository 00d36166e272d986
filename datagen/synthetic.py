"""A seeded synthetic video platform: channels, videos, users and their watch sessions.

The generator is the embedded default data set for runs, tests and benchmarks. It is
built so that a recommender has real signal to find, and so that the ground truth is
known for offline simulation (:mod:`videorec.datagen.truth` reads it back):

- **Catalogue.** 20 YouTube-like categories, each with a share of uploads, a
  log-normal duration and a word list. Channels have power-law sizes (Zipf), a main
  category and a quality prior. Each video gets a latent topic vector (its
  category's centroid plus channel and video noise), a **quality** (logit scale: how
  long people watch once they click), an **appeal** (logit scale: how clickable its
  title and thumbnail are), an exogenous popularity (heavy-tailed: quality, channel
  size and luck), and a title and tags drawn from its category's words, so text
  carries the same signal as the topic. Appeal is only weakly tied to quality
  (``APPEAL``: a little quality, a channel style, the video's own luck) and a share of
  below-average videos is clickbait (appeal raised a lot): clicks and watch time
  disagree. About 45% of videos are uploaded inside the window, spread evenly, so the
  last 24 hours always holds fresh videos.
- **Users.** A sparse interest mixture over 1 to 3 categories gives a latent
  interest vector; country, language, device, age bucket; a heavy-tailed activity
  rate (log-normal sessions per day); about 12% sign up inside the window (cold
  start).
- **Sessions: a served page and a position-based click model.** Each user's sessions
  fall at diurnal times. A session is served one page of ``PAGE_LEN`` videos (each
  once, none unpublished) from the user's candidate pool (``POOL_SIZE`` draws, 60%
  from the user's categories, weighted by popularity) by an impression **policy**
  drawn per session (``POLICIES``): ``personal`` (the previous model: the true
  affinity with noise, popularity and freshness), ``trending`` (popularity and
  freshness), ``explore`` (random) or ``fresh`` (newest uploads); none of them leaves
  out what the user has watched. The user examines position j
  (0-based) with probability ``examination(j) = (1 + j) ** -EXAMINATION_EXPONENT``
  (position bias) and clicks an examined video with probability
  ``sigmoid(click_logit + intent)``: ``click_logit`` is affinity
  (``interest·topic``), appeal, popularity and freshness (``CLICK_WEIGHTS``; quality
  is not visible before watching) and ``intent`` ~ N(0, ``session_sd``) is the
  session's mood, shared by its page. Each click is a play, in page order. A click on
  a video the user clicked (played) in an earlier session is kept with probability
  ``REWATCH_KEEP`` (rewatches are rare), and a session plays at most
  ``MAX_SESSION_LEN`` videos.
- **Outcomes.** Completion = ``clip(sigmoid(z) * U(jitter), min_completion, 1)`` with
  ``z = outcome_logit(affinity, quality, duration) + N(0, noise)`` (long videos are
  completed less; appeal plays no part, so clickbait is clicked and then skipped);
  watch time = max(1 s, completion × duration), rounded to 0.1 s; a completion under
  10% is a ``skip``; likes, dislikes, shares and "not interested" follow completion.
- **Impressions and clicks.** A share of sessions (``impressions``, default 3%) is
  logged as the serving tier logs it, like a sampled impression log: one home-feed
  request (``request_id``) whose whole page is logged, an ``impression`` per video at
  its ``position`` with the session's policy as ``source``; each play of the session
  is the ``click`` on its item (same request, same microsecond as the play, which
  carries the request id too). The whole response is logged (as the serving shim
  does), not only as far as the user scrolled: a click-dependent depth would bias the
  logged click-through rate of deep positions. The click-through rate comes out near
  6%, from about 30% at the top to 3% at the bottom. Plays, reactions and their random
  streams are the same with or without this log; only the event ids are numbered over
  all rows.

The formulas the ground truth is made of (:func:`examination`, :func:`click_logit`,
:func:`p_click_given_examined`, :func:`outcome_logit`, :func:`completion` and
:func:`expected_watch_given_play`) are defined once, here; the generator samples from
them and :mod:`videorec.datagen.truth` takes their expectations, with the weights the
manifest records.

Everything is drawn from ``numpy.random.Generator`` streams keyed by (seed, stage,
chunk), so one seed always gives byte-identical tables whatever the machine.
``corrupt`` injects a known number of malformed rows of each kind the contract's
validator must catch; the manifest records how many of each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec.config import ContractConfig
from videorec.contract import AGE_BUCKETS, TS, Reason
from videorec.dataset import DatasetWriter, check_target

LATENT_DIM = 16
USERS_PER_CHUNK = 2000
POOL_SIZE = 256  # candidate videos per user the session sampler chooses among
MAX_SESSION_LEN = 24
SECONDS_PER_DAY = 86_400

# name, share of uploads, median duration (s), log-sd of duration, its words (title and tag vocabulary)
# fmt: off
_CATEGORY_TABLE: tuple[tuple[str, float, float, float, str], ...] = (
    ("Music", 0.12, 230, 0.45, "song live acoustic remix album concert cover lyrics guitar piano beat band singer jazz hiphop"),
    ("Gaming", 0.11, 1300, 0.9, "gameplay speedrun walkthrough boss minecraft fps rpg esports stream mod level raid console indie multiplayer"),
    ("Entertainment", 0.09, 600, 0.8, "celebrity show trailer reaction interview drama prank challenge talkshow episode awards behind scenes tv gossip"),
    ("Comedy", 0.06, 420, 0.7, "sketch standup funny parody jokes roast improv satire bloopers skit comedian laugh meme spoof hilarious"),
    ("Education", 0.06, 900, 0.7, "lecture explained history math lesson tutorial course exam learn language grammar physics biology chemistry study"),
    ("Science & Technology", 0.06, 780, 0.7, "review unboxing smartphone laptop ai robot space rocket experiment gadget coding chip quantum engineering camera"),
    ("News & Politics", 0.05, 480, 0.8, "news election debate breaking report policy economy analysis parliament president protest briefing headlines vote budget"),
    ("Sports", 0.06, 540, 0.8, "highlights goal football basketball tennis match league training transfer final cricket marathon olympics coach derby"),
    ("Howto & Style", 0.05, 660, 0.7, "diy howto hack repair organize cleaning outfit fashion haul declutter woodworking sewing garden renovation tips"),
    ("Film & Animation", 0.04, 720, 1.0, "animation shortfilm cartoon anime cgi stopmotion scene director storyboard pixar movie cinema vfx character studio"),
    ("People & Blogs", 0.07, 720, 0.8, "vlog dayinmylife storytime routine family qna morning lifestyle moving friends update diary weekend honest chat"),
    ("Travel & Events", 0.03, 840, 0.7, "travel tour city beach roadtrip hotel flight backpacking island festival guide hiking streetfood budget mountains"),
    ("Autos & Vehicles", 0.03, 780, 0.7, "car drift engine supercar motorcycle testdrive ev tesla restoration race turbo truck offroad detailing garage"),
    ("Pets & Animals", 0.03, 300, 0.8, "dog cat puppy kitten wildlife rescue zoo bird aquarium horse training cute safari ocean reptile"),
    ("Nonprofits & Activism", 0.01, 540, 0.7, "charity climate volunteer fundraiser awareness community donation rights campaign ngo ocean cleanup justice relief support"),
    ("Kids", 0.03, 420, 0.9, "nursery rhymes toys kids abc colors cartoon learning songs playtime counting puppets story bedtime dinosaur"),
    ("Cooking", 0.04, 600, 0.6, "recipe cooking baking dinner vegan pasta bread chef kitchen dessert curry grill mealprep breakfast spicy"),
    ("Fitness", 0.03, 1200, 0.6, "workout yoga hiit abs stretching gym running pilates strength cardio squat beginner fatloss mobility calisthenics"),
    ("Beauty", 0.02, 720, 0.6, "makeup skincare hair nails grwm tutorial foundation routine lipstick glow drugstore eyeliner haircut curls fragrance"),
    ("Documentary", 0.01, 2700, 0.6, "documentary investigation nature history truecrime biography war ancient planet expedition mystery archive ocean empire untold"),
)
CATEGORIES: tuple[tuple[str, float, float, float, tuple[str, ...]], ...] = tuple(
    (name, share, med, sd, tuple(words.split())) for name, share, med, sd, words in _CATEGORY_TABLE
)
GENERIC_WORDS = tuple(["best", "new", "top", "official", "full", "ultimate", "2026", "part", "episode", "my", "first", "epic", "easy", "why", "how"])
# country, language, share of users (and of channels)
COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "en", 0.28), ("IN", "hi", 0.16), ("BR", "pt", 0.09), ("ID", "id", 0.06), ("MX", "es", 0.06),
    ("JP", "ja", 0.05), ("GB", "en", 0.05), ("DE", "de", 0.05), ("FR", "fr", 0.04), ("ES", "es", 0.04),
    ("KR", "ko", 0.03), ("CA", "en", 0.03), ("TR", "tr", 0.03), ("PH", "en", 0.03),
)
DEVICES: tuple[tuple[str, float], ...] = (("mobile", 0.62), ("desktop", 0.22), ("tv", 0.11), ("tablet", 0.05))
AGE_SHARES = (0.08, 0.27, 0.28, 0.18, 0.11, 0.08)
# Hour-of-day weights (UTC), an evening peak: sessions are not uniform in time.
HOUR_WEIGHTS = np.array([3, 2, 1.5, 1, 1, 1, 1.5, 2.5, 3, 3, 3, 3.5, 4, 4, 4, 4.5, 5, 6, 7.5, 8.5, 9, 8, 6.5, 4.5])
# fmt: on

# The ground truth (recorded in the manifest; videorec.datagen.truth reads it back).
# Appeal (logit scale): quality's share, a channel style and the video's own sd; a
# share of below-average videos (quality < 0) is clickbait, its appeal raised.
APPEAL = {"quality": 0.3, "channel_sd": 0.4, "video_sd": 0.65, "clickbait_share": 0.15,
          "clickbait_boost": 1.5}  # fmt: skip
# The served page: videos per session page, and the position bias of examination.
PAGE_LEN = 40
EXAMINATION_EXPONENT = 0.6
# Click logit of an examined video; session_sd: the sd of the session's intent.
CLICK_WEIGHTS = {"affinity": 4.0, "appeal": 1.0, "popularity": 0.5, "freshness": 0.8,
                 "bias": -2.9, "session_sd": 0.8}  # fmt: skip
FRESHNESS_DAYS = 2.0
# Completion logit, its noise, and the uniform jitter and floor of completion.
OUTCOME_WEIGHTS = {"affinity": 3.0, "quality": 0.8, "bias": -1.2, "long_video": 0.35,
                   "noise": 1.1, "jitter_low": 0.75, "jitter_high": 1.1,
                   "min_completion": 0.005}  # fmt: skip
SKIP_BELOW_COMPLETION = 0.10
REWATCH_KEEP = 0.2  # a click on a video the user played in an earlier session is kept
# The impression policies: share of sessions, then the page score's weights
# (affinity in sd of the user's pool, log popularity, freshness, N(0, 1) noise).
POLICIES: dict[str, dict[str, float]] = {
    "personal": {"share": 0.80, "affinity": 1.0, "popularity": 0.6, "freshness": 1.0, "noise": 0.3},
    "trending": {"share": 0.08, "affinity": 0.0, "popularity": 1.0, "freshness": 1.0, "noise": 0.3},
    "explore": {"share": 0.08, "affinity": 0.0, "popularity": 0.0, "freshness": 0.0, "noise": 1.0},
    "fresh": {"share": 0.04, "affinity": 0.0, "popularity": 0.3, "freshness": 3.0, "noise": 0.3},
}  # fmt: skip
# The served-request log's source names: the policies, in this order.
SOURCES: tuple[tuple[str, float], ...] = tuple((k, v["share"]) for k, v in POLICIES.items())
# Gauss-Hermite nodes the expectations over normal noise use.
QUADRATURE_NODES = 48


@dataclass(frozen=True)
class GeneratorParams:
    """Size and seed of a synthetic platform. ``end_date`` is the exclusive window end (UTC)."""

    users: int
    videos: int
    days: int
    seed: int
    end_date: dt.date
    corrupt: float = 0.0
    impressions: float = 0.03  # share of sessions whose served requests are logged

    def __post_init__(self) -> None:
        if self.users < 10 or self.videos < 20 or not 1 <= self.days <= 366:
            raise ValueError(f"need users >= 10, videos >= 20, 1 <= days <= 366; got {self}")
        if not 0.0 <= self.corrupt <= 0.5:
            raise ValueError(f"corrupt must be a fraction in [0, 0.5]; got {self.corrupt}")
        if not 0.0 <= self.impressions <= 1.0:
            raise ValueError(f"impressions must be a fraction in [0, 1]; got {self.impressions}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32); got {self.seed}")
        if self.users > 10**9 or self.videos > 10**9:  # ids and counts stay in int64 arrays
            raise ValueError(f"users and videos must be at most 10**9; got {self}")
        if self.end_date < dt.date(1971, 1, 1) or self.end_date > dt.date(9999, 1, 1):
            raise ValueError(f"end_date must be between 1971 and 9998; got {self.end_date}")

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.combine(self.end_date, dt.time(), dt.UTC)

    @property
    def start(self) -> dt.datetime:
        return self.end - dt.timedelta(days=self.days)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    # One independent stream per (seed, stage, chunk): chunks can be generated in any
    # order and the result depends only on the seed.
    return np.random.default_rng([seed, *stream])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def _ts_array(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.int64()).cast(TS)


def _sample_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn by inverse CDF: ``cdf`` ascending ending at 1, ``u`` uniform [0, 1)."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _strings(prefix: str, ids: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(ids).cast(pa.string()), "")


# ---- The ground truth's formulas: defined once; the generator samples from them and
# videorec.datagen.truth takes their expectations (with the manifest's weights).


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise, float64 (no overflow for large |x|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def freshness(age_days: np.ndarray, freshness_days: float = FRESHNESS_DAYS) -> np.ndarray:
    """exp(-age / freshness_days), elementwise: 1 at upload, falling with the age in days
    (negative ages count as 0)."""
    return np.exp(-np.maximum(age_days, 0.0) / freshness_days)


def examination(position: np.ndarray, exponent: float = EXAMINATION_EXPONENT) -> np.ndarray:
    """P(the user examines page position ``position``), 0-based: ``(1 + j) ** -exponent``,
    elementwise (1 at the top). ValueError for a negative position."""
    pos = np.asarray(position)
    if (pos < 0).any():
        raise ValueError(f"positions are 0-based, got {pos[pos < 0][:5].tolist()}")
    return (1.0 + pos) ** -float(exponent)


def click_logit(
    affinity: np.ndarray,
    appeal: np.ndarray,
    log_popularity: np.ndarray,
    age_days: np.ndarray,
    weights: dict[str, float] = CLICK_WEIGHTS,
    freshness_days: float = FRESHNESS_DAYS,
) -> np.ndarray:
    """The click logit of an examined video, before the session's intent (same-shape
    arrays, broadcast): affinity (``interest·topic``), appeal, log popularity and
    freshness at ``age_days`` (days since upload); quality is not visible before a play."""
    w = weights
    return (
        w["affinity"] * np.asarray(affinity, dtype=np.float64)
        + w["appeal"] * appeal
        + w["popularity"] * log_popularity
        + w["freshness"] * freshness(age_days, freshness_days)
        + w["bias"]
    )


def normal_expectation(
    f: Callable[[np.ndarray], np.ndarray],
    mean: np.ndarray,
    sd: float,
    nodes: int = QUADRATURE_NODES,
) -> np.ndarray:
    """E[f(mean + sd·Z)] for Z ~ N(0, 1), elementwise over ``mean``, by ``nodes``-point
    Gauss-Hermite quadrature (``f`` maps an array of ``mean``'s shape to one)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    mean = np.asarray(mean, dtype=np.float64)
    out = np.zeros(mean.shape)
    for xk, wk in zip(x, w, strict=True):  # one node at a time: memory stays O(len(mean))
        out += wk * f(mean + np.sqrt(2.0) * sd * xk)
    return out / np.sqrt(np.pi)


def p_click_given_examined(
    logit: np.ndarray, weights: dict[str, float] = CLICK_WEIGHTS
) -> np.ndarray:
    """P(click | examined) = E[sigmoid(logit + intent)], intent ~ N(0, session_sd): the
    session's mood integrated out (quadrature), elementwise over :func:`click_logit`."""
    return normal_expectation(sigmoid, logit, weights["session_sd"])


def outcome_logit(
    affinity: np.ndarray,
    quality: np.ndarray,
    duration_s: np.ndarray,
    weights: dict[str, float] = OUTCOME_WEIGHTS,
) -> np.ndarray:
    """The completion logit of a play before its noise (broadcast arrays): affinity,
    quality and the duration in seconds (long videos are completed less)."""
    w = weights
    return (
        w["affinity"] * np.asarray(affinity, dtype=np.float64)
        + w["quality"] * quality
        + w["bias"]
        - w["long_video"] * np.log(np.asarray(duration_s) / 300.0)
    )


def completion(
    z: np.ndarray, jitter: np.ndarray, weights: dict[str, float] = OUTCOME_WEIGHTS
) -> np.ndarray:
    """A play's completion (share of the duration watched), elementwise:
    ``clip(sigmoid(z) * jitter, min_completion, 1)``, ``z`` the noisy outcome logit,
    ``jitter`` ~ U(jitter_low, jitter_high). Watch time is
    ``max(1 s, completion × duration)``, rounded to 0.1 s."""
    return np.clip(sigmoid(z) * jitter, weights["min_completion"], 1.0)


def expected_watch_given_play(
    z_mean: np.ndarray, duration_s: np.ndarray, weights: dict[str, float] = OUTCOME_WEIGHTS
) -> np.ndarray:
    """E[watch time | play] in seconds, elementwise: :func:`completion` × duration with
    its 1 s floor, the jitter integrated exactly (the clipped product is piecewise linear
    in it) and the logit noise by Gauss-Hermite quadrature; the 0.1 s rounding is left
    out (under 0.05 s). ``z_mean``: :func:`outcome_logit`."""
    w = weights
    a, b = w["jitter_low"], w["jitter_high"]
    d = np.asarray(duration_s, dtype=np.float64)
    floor = np.maximum(w["min_completion"], 1.0 / d)  # max(1 s, c·d) = d·max(1/d, c)

    def mean_over_jitter(z: np.ndarray) -> np.ndarray:
        s = sigmoid(z)
        with np.errstate(divide="ignore"):  # s == 0 far in the tail: the floor applies
            c1, c2 = np.clip(floor / s, a, b), np.clip(1.0 / s, a, b)  # the two kinks in u
        return d * (floor * (c1 - a) + s * (c2**2 - c1**2) / 2 + (b - c2)) / (b - a)

    return normal_expectation(mean_over_jitter, z_mean, w["noise"])


@dataclass
class _Catalog:
    cat_names: list[str]
    centroids: np.ndarray  # (n_categories, LATENT_DIM)
    channels: pa.Table
    videos: pa.Table
    video_cat: np.ndarray  # (V,) category index
    topic: np.ndarray  # (V, LATENT_DIM) unit vectors (float32 values, as recorded)
    quality: np.ndarray  # (V,) logit scale
    appeal: np.ndarray  # (V,) logit scale
    clickbait: np.ndarray  # (V,) bool
    log_pop: np.ndarray  # (V,) exogenous popularity, mean 0
    published_us: np.ndarray  # (V,)
    duration: np.ndarray  # (V,) seconds


def _make_catalog(p: GeneratorParams) -> _Catalog:
    rng = _rng(p.seed, 1)
    n_cat = len(CATEGORIES)
    cat_names = [c[0] for c in CATEGORIES]
    cat_share = np.array([c[1] for c in CATEGORIES])
    cat_share = cat_share / cat_share.sum()
    centroids = _unit(rng.normal(size=(n_cat, LATENT_DIM)))

    # Channels: Zipf sizes (a few giants, a long tail of small creators).
    n_ch = max(5, p.videos // 10)
    ch_cat = rng.choice(n_cat, size=n_ch, p=cat_share)
    ch_quality = rng.normal(0.0, 0.6, size=n_ch)
    ch_offset = rng.normal(0.0, 0.25, size=(n_ch, LATENT_DIM))
    ch_size = rng.permutation(1.0 / np.arange(1, n_ch + 1) ** 0.8)
    ch_country = rng.choice(len(COUNTRIES), size=n_ch, p=[c[2] for c in COUNTRIES])
    ch_created = _us(p.start) - (rng.uniform(30, 5 * 365, size=n_ch) * SECONDS_PER_DAY * 1e6)
    channels = pa.table(
        {
            "channel_id": np.arange(1, n_ch + 1, dtype=np.int64),
            "name": [
                f"{CATEGORIES[c][4][i % 15].title()} Channel {i + 1}" for i, c in enumerate(ch_cat)
            ],
            "main_category": [cat_names[c] for c in ch_cat],
            "created_at": _ts_array(ch_created),
            "language": [COUNTRIES[c][1] for c in ch_country],
        }
    )

    # Videos.
    V = p.videos
    v_ch = rng.choice(n_ch, size=V, p=ch_size / ch_size.sum())
    off_topic = rng.random(V) < 0.15
    v_cat = np.where(off_topic, rng.choice(n_cat, size=V, p=cat_share), ch_cat[v_ch])
    topic = _unit(centroids[v_cat] + ch_offset[v_ch] + rng.normal(0.0, 0.35, size=(V, LATENT_DIM)))
    topic = topic.astype(np.float32).astype(np.float64)  # as ground_truth records it
    quality = ch_quality[v_ch] + rng.normal(0.0, 0.5, size=V)
    ch_effect = np.log(ch_size[v_ch] / ch_size.mean())
    log_pop = 0.8 * quality + 0.5 * ch_effect + rng.normal(0.0, 1.0, size=V)
    log_pop -= log_pop.mean()
    med = np.array([c[2] for c in CATEGORIES])[v_cat]
    sd = np.array([c[3] for c in CATEGORIES])[v_cat]
    duration = np.clip(np.exp(np.log(med) + sd * rng.normal(size=V)), 15.0, 4 * 3600.0).round(1)
    in_window = rng.random(V) < 0.45
    start_us, end_us = _us(p.start), _us(p.end)
    back = start_us - np.minimum(rng.exponential(180.0, size=V), 3 * 365) * SECONDS_PER_DAY * 1e6
    fresh = rng.uniform(start_us, end_us, size=V)
    published = np.where(in_window, fresh, back).astype(np.int64)

    n_words = rng.integers(3, 7, size=V)
    word_idx = rng.integers(0, 15, size=(V, 8))
    generic = rng.integers(0, len(GENERIC_WORDS), size=V)
    use_generic = rng.random(V) < 0.5
    n_tags = rng.integers(3, 7, size=V)
    titles, descriptions, tags = [], [], []
    for i in range(V):
        words = CATEGORIES[v_cat[i]][4]
        w = [words[j] for j in dict.fromkeys(word_idx[i, : n_words[i]].tolist())]
        if use_generic[i]:
            w.insert(0, GENERIC_WORDS[generic[i]])
        titles.append(" ".join(w).capitalize())
        t = list(dict.fromkeys(words[j] for j in word_idx[i, ::-1][: n_tags[i]].tolist()))
        tags.append(t)
        descriptions.append(f"A {cat_names[v_cat[i]].lower()} video about {', '.join(w[-3:])}.")
    videos = pa.table(
        {
            "video_id": np.arange(1, V + 1, dtype=np.int64),
            "title": titles,
            "description": descriptions,
            "tags": pa.array(tags, type=pa.list_(pa.string())),
            "category": [cat_names[c] for c in v_cat],
            "channel_id": (v_ch + 1).astype(np.int64),
            "duration_s": duration,
            "published_at": _ts_array(published),
            "language": channels["language"].take(pa.array(v_ch)),
        }
    )
    appeal, clickbait = _appeal(p, quality, v_ch, n_ch)
    return _Catalog(
        cat_names, centroids, channels, videos, v_cat, topic, quality, appeal, clickbait,
        log_pop, published, duration,
    )  # fmt: skip


def _appeal(
    p: GeneratorParams, quality: np.ndarray, v_ch: np.ndarray, n_ch: int
) -> tuple[np.ndarray, np.ndarray]:
    """(V,) appeal (logit scale) and (V,) clickbait flags, from their own stream (the
    rest of the catalogue draws the same without them): ``APPEAL``'s share of quality,
    a channel style, the video's own luck, and a boost for the clickbait, a share of the
    videos of below-zero quality."""
    rng = _rng(p.seed, 7)
    w = APPEAL
    ch_style = rng.normal(0.0, w["channel_sd"], size=n_ch)
    appeal = w["quality"] * quality + ch_style[v_ch] + rng.normal(0.0, w["video_sd"], len(v_ch))
    clickbait = (quality < 0) & (rng.random(len(v_ch)) < w["clickbait_share"])
    return appeal + w["clickbait_boost"] * clickbait, clickbait


def catalogue_table(p: GeneratorParams) -> pa.Table:
    """Only the videos table of the platform ``p`` describes (no users, no events):
    for embedding a large catalogue without simulating its watch history."""
    return _make_catalog(p).videos


@dataclass
class _Users:
    table: pa.Table
    interest: np.ndarray  # (U, LATENT_DIM)
    interest_cats: np.ndarray  # (U, 3) category indices, -1 padded
    interest_w: np.ndarray  # (U, 3) weights summing to 1
    activity: np.ndarray  # (U,) sessions per active day
    signup_us: np.ndarray  # (U,)
    country: np.ndarray  # (U,) index into COUNTRIES
    device: np.ndarray  # (U,) index into DEVICES


def _make_users(p: GeneratorParams, cat: _Catalog) -> _Users:
    rng = _rng(p.seed, 2)
    U, n_cat = p.users, len(CATEGORIES)
    cat_share = np.array([c[1] for c in CATEGORIES])
    # Sparse mixture: 1-3 categories chosen in proportion to category shares.
    k = rng.choice([1, 2, 3], size=U, p=[0.4, 0.4, 0.2])
    g = rng.gumbel(size=(U, n_cat)) + np.log(cat_share)
    top3 = np.argsort(-g, axis=1)[:, :3]
    w = rng.dirichlet(np.ones(3), size=U)
    w[np.arange(3)[None, :] >= k[:, None]] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    cats = np.where(w > 0, top3, -1)
    interest = _unit(
        (w[:, :, None] * cat.centroids[top3]).sum(axis=1) + rng.normal(0, 0.25, (U, LATENT_DIM))
    )
    interest = interest.astype(np.float32).astype(np.float64)  # as ground_truth records it
    country = rng.choice(len(COUNTRIES), size=U, p=[c[2] for c in COUNTRIES])
    lang = np.array([c[1] for c in COUNTRIES], dtype=object)[country]
    lang = np.where(rng.random(U) < 0.12, "en", lang)
    device = rng.choice(len(DEVICES), size=U, p=[d[1] for d in DEVICES])
    age = rng.choice(len(AGE_BUCKETS), size=U, p=AGE_SHARES)
    start_us, end_us = _us(p.start), _us(p.end)
    new = rng.random(U) < 0.12
    signup = np.where(
        new,
        rng.uniform(start_us, end_us, size=U),
        start_us - rng.exponential(400.0, size=U) * SECONDS_PER_DAY * 1e6,
    ).astype(np.int64)
    activity = np.clip(np.exp(rng.normal(np.log(0.25), 1.1, size=U)), 0.01, 8.0)
    declares = rng.random(U) < 0.7
    names = np.array(cat.cat_names, dtype=object)
    declared = [
        [names[c] for c in cats[i, : min(k[i], 2)]] if declares[i] else [] for i in range(U)
    ]
    table = pa.table(
        {
            "user_id": np.arange(1, U + 1, dtype=np.int64),
            "country": [COUNTRIES[c][0] for c in country],
            "language": lang.tolist(),
            "signup_ts": _ts_array(signup),
            "age_bucket": [AGE_BUCKETS[a] for a in age],
            "declared_interests": pa.array(declared, type=pa.list_(pa.string())),
        }
    )
    return _Users(table, interest, cats, w, activity, signup, country, device)


class _PoolSampler:
    """Draws per-user candidate pools: 60% from the user's categories, 40% from everywhere,
    each in proportion to exogenous popularity."""

    def __init__(self, cat: _Catalog) -> None:
        pop = np.exp(cat.log_pop)
        self.global_cdf = np.cumsum(pop) / pop.sum()
        self.by_cat: list[tuple[np.ndarray, np.ndarray]] = []
        for c in range(len(CATEGORIES)):
            idx = np.flatnonzero(cat.video_cat == c)
            if len(idx) == 0:  # tiny catalogues may miss a category: fall back to all
                idx = np.arange(len(pop))
            w = pop[idx]
            self.by_cat.append((idx, np.cumsum(w) / w.sum()))

    def draw(self, rng: np.random.Generator, cats: np.ndarray, w: np.ndarray) -> np.ndarray:
        n = len(cats)
        pool = np.empty((n, POOL_SIZE), dtype=np.int64)
        n_int = int(POOL_SIZE * 0.6)
        pool[:, n_int:] = _sample_cdf(self.global_cdf, rng.random((n, POOL_SIZE - n_int)))
        wcdf = np.cumsum(w, axis=1)
        slot_cat_pos = (rng.random((n, n_int))[:, :, None] > wcdf[:, None, :]).sum(axis=2)
        slot_cat = np.take_along_axis(cats, np.minimum(slot_cat_pos, 2), axis=1)
        u = rng.random((n, n_int))
        for c, (idx, cdf) in enumerate(self.by_cat):
            m = slot_cat == c
            if m.any():
                pool[:, :n_int][m] = idx[_sample_cdf(cdf, u[m])]
        return pool


def _chunk_events(
    p: GeneratorParams,
    cat: _Catalog,
    users: _Users,
    sampler: _PoolSampler,
    lo: int,
    hi: int,
    chunk: int,
) -> dict[str, np.ndarray]:
    """Events of users [lo, hi) as numpy columns (ids are 0-based indices here)."""
    rng = _rng(p.seed, 3, chunk)
    n = hi - lo
    start_us, end_us = _us(p.start), _us(p.end)
    first = np.maximum(users.signup_us[lo:hi], start_us)
    active_days = (end_us - first) / (SECONDS_PER_DAY * 1e6)
    n_sess = rng.poisson(users.activity[lo:hi] * active_days)
    sess_user = np.repeat(np.arange(n), n_sess)
    S = len(sess_user)
    if S == 0:
        return {}
    # Session start: a day inside the user's active span, an hour from the diurnal curve.
    t = first[sess_user] + rng.random(S) * (end_us - first[sess_user])
    day0 = (t // (SECONDS_PER_DAY * 1e6)) * SECONDS_PER_DAY * 1e6
    hour = rng.choice(24, size=S, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    t2 = day0 + (hour * 3600 + rng.uniform(0, 3600, size=S)) * 1e6
    sess_start = np.where((t2 >= first[sess_user]) & (t2 < end_us), t2, t).astype(np.int64)

    pool = sampler.draw(rng, users.interest_cats[lo:hi], users.interest_w[lo:hi])  # (n, P)
    aff = np.einsum("ud,upd->up", users.interest[lo:hi], cat.topic[pool])  # (n, P)
    policy = _sample_cdf(np.cumsum([s for _, s in SOURCES]), rng.random(S))  # (S,)
    top, valid = _serve_pages(rng, cat, pool, aff, sess_user, sess_start, policy, start_us)
    pages = _Pages(sess_start, sess_user, policy, pool[sess_user[:, None], top], valid)

    # The position-based click model: examined with the position's probability, then
    # clicked by the click logit and the session's intent. Each click is a play.
    K = top.shape[1]
    aff_page = aff[sess_user[:, None], top]  # (S, K)
    vid_page = pages.video
    age_days = (sess_start[:, None] - cat.published_us[vid_page]) / (SECONDS_PER_DAY * 1e6)
    logit = click_logit(aff_page, cat.appeal[vid_page], cat.log_pop[vid_page], age_days)
    logit += rng.normal(0.0, CLICK_WEIGHTS["session_sd"], size=S)[:, None]
    p_click = examination(np.arange(K))[None, :] * sigmoid(logit)
    s_idx, r_idx = np.nonzero(valid & (rng.random((S, K)) < p_click))  # by session, position
    u_loc = sess_user[s_idx]
    vid = vid_page[s_idx, r_idx]
    a = aff_page[s_idx, r_idx]

    # Rewatches happen but are rare: a click on a video the user clicked in an earlier
    # session is kept with probability REWATCH_KEEP.
    key = u_loc.astype(np.int64) * (len(cat.duration) + 1) + vid
    order = np.lexsort((r_idx, sess_start[s_idx]))
    _, first_pos = np.unique(key[order], return_index=True)
    is_first = np.zeros(len(key), dtype=bool)
    is_first[order[first_pos]] = True
    keep = is_first | (rng.random(len(key)) < REWATCH_KEEP)
    s_idx, r_idx, u_loc, vid, a = s_idx[keep], r_idx[keep], u_loc[keep], vid[keep], a[keep]
    # At most MAX_SESSION_LEN plays a session, the first in page order (s_idx is sorted).
    keep = np.arange(len(s_idx)) - np.searchsorted(s_idx, s_idx) < MAX_SESSION_LEN
    s_idx, r_idx, u_loc, vid, a = s_idx[keep], r_idx[keep], u_loc[keep], vid[keep], a[keep]

    # Outcome: completion from affinity and quality (not appeal); long videos are
    # finished less often.
    ow = OUTCOME_WEIGHTS
    m = len(vid)
    dur = cat.duration[vid]
    z = outcome_logit(a, cat.quality[vid], dur) + rng.normal(0, ow["noise"], size=m)
    comp = completion(z, rng.uniform(ow["jitter_low"], ow["jitter_high"], size=m))
    watch_time = np.maximum(1.0, comp * dur).round(1)
    # Plays in a session follow each other: start = session start + earlier plays + gaps.
    order = np.lexsort((r_idx, s_idx))
    s_o = s_idx[order]
    step = watch_time[order] + rng.exponential(20.0, size=m)  # play, then a gap
    before = np.cumsum(step) - step  # time of all earlier plays, across sessions
    sess_first = np.searchsorted(s_o, s_o, side="left")
    offset = np.empty(m)
    offset[order] = before - before[sess_first]  # ... counted from the session's first play
    play_ts = sess_start[s_idx] + (offset * 1e6).astype(np.int64)
    is_skip = comp < SKIP_BELOW_COMPLETION

    # Reactions follow the play: likes from high completion, dislikes and
    # "not interested" from low, shares rarely.
    p_like = 0.28 / (1 + np.exp(-9 * (comp - 0.8)))
    p_dislike = 0.10 / (1 + np.exp(-9 * (0.25 - comp)))
    p_share = 0.02 * comp**2
    p_not_int = np.where(is_skip, 0.12, 0.0)
    r = rng.random((4, m))
    reacted = {
        "like": r[0] < p_like,
        "dislike": (r[1] < p_dislike) & ~(r[0] < p_like),
        "share": r[2] < p_share,
        "not_interested": r[3] < p_not_int,
    }
    end_ts = play_ts + (watch_time * 1e6).astype(np.int64)
    served = _served_log(p, chunk, pages, (s_idx, vid, play_ts))
    none = np.full(m, -1)
    parts = {
        "ts": [play_ts],
        "u": [u_loc],
        "v": [vid],
        "type": [np.where(is_skip, 1, 0)],  # index into _TYPE_NAMES
        "watch": [watch_time],
        "sess": [s_idx],
        # A logged session's plays name the request (0: its only one) that led to them.
        "req": [np.where(served["play_src"] >= 0, 0, -1)],
        "pos": [none],
        "src": [served["play_src"]],
    }
    type_code = {"like": 2, "dislike": 3, "share": 4, "not_interested": 5}
    for name, mask in reacted.items():
        k = int(mask.sum())
        parts["ts"].append(end_ts[mask] + 1_000_000 * (1 + type_code[name]))
        parts["u"].append(u_loc[mask])
        parts["v"].append(vid[mask])
        parts["type"].append(np.full(k, type_code[name]))
        parts["watch"].append(np.full(k, np.nan))
        parts["sess"].append(s_idx[mask])
        for col in ("req", "pos", "src"):
            parts[col].append(np.full(k, -1))
    for col, values in parts.items():
        values.append(served[col])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    # Plays that spill past the window's end have not happened yet.
    inside = out["ts"] < end_us
    out = {k: v[inside] for k, v in out.items()}
    # At one instant: the impression, then the click, then the play it started.
    order = np.lexsort((_TYPE_ORDER[out["type"]], out["ts"]))
    out = {k: v[order] for k, v in out.items()}
    out["u"] = out["u"] + lo
    return out


def _serve_pages(
    rng: np.random.Generator,
    cat: _Catalog,
    pool: np.ndarray,
    aff: np.ndarray,
    sess_user: np.ndarray,
    sess_start: np.ndarray,
    policy: np.ndarray,
    start_us: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each session's page, as its policy ranks the user's pool (``POLICIES``): (S, K)
    pool columns, best first, K = min(PAGE_LEN, POOL_SIZE), and (S, K) whether each slot
    holds a video (a pool may have fewer distinct published videos than a page).

    ``pool``/``aff``: (n, P) per local user; ``sess_user``, ``sess_start`` (µs),
    ``policy`` (index into ``POLICIES``): (S,). The (S, P) score matrix is the hot spot:
    float32 and in-place ops.
    """
    P = pool.shape[1]
    coef = np.array(
        [
            [w[k] for k in ("affinity", "popularity", "freshness", "noise")]
            for w in POLICIES.values()
        ],
        dtype=np.float32,
    )  # (policies, 4)
    sd = np.maximum(aff.std(axis=1, keepdims=True), 1e-9)
    aff_z = ((aff - aff.mean(axis=1, keepdims=True)) / sd).astype(np.float32)
    static = coef[:, 0, None, None] * aff_z + coef[:, 1, None, None] * cat.log_pop[pool].astype(
        np.float32
    )  # (policies, n, P)
    # A page shows a video once: the pool's later draws of a video never show.
    static[:, _first_in_row(pool) != np.arange(P)[None, :]] = -np.inf
    day_us = SECONDS_PER_DAY * 1e6
    pub_day = ((cat.published_us[pool] - start_us) / day_us).astype(np.float32)  # (n, P)
    sess_day = ((sess_start - start_us) / day_us).astype(np.float32)
    age = sess_day[:, None] - pub_day[sess_user]  # (S, P)
    score = static[policy, sess_user]
    c = coef[policy]  # (S, 4)
    fresh = np.exp(-np.maximum(age, 0) / np.float32(FRESHNESS_DAYS))
    fresh *= c[:, 2:3]
    score += fresh
    noise = rng.standard_normal(score.shape, dtype=np.float32)
    noise *= c[:, 3:4]
    score += noise
    score[age < 0] = -np.inf  # not yet published
    K = min(PAGE_LEN, P)
    top = np.argpartition(score, P - K, axis=1)[:, P - K :]
    top_score = np.take_along_axis(score, top, axis=1)
    order = np.argsort(-top_score, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return top, np.isfinite(np.take_along_axis(top_score, order, axis=1))


@dataclass
class _Pages:
    """The page each session was served."""

    start: np.ndarray  # (S,) session start, µs
    user: np.ndarray  # (S,) local user index
    policy: np.ndarray  # (S,) index into POLICIES (and SOURCES)
    video: np.ndarray  # (S, K) video indices by position
    valid: np.ndarray  # (S, K) False: an empty slot


def _first_in_row(x: np.ndarray) -> np.ndarray:
    """(S, L): for each cell, the column where its value first appears in its row."""
    order = np.argsort(x, axis=1, kind="stable")  # equal values stay in column order
    xs = np.take_along_axis(x, order, axis=1)
    starts = np.ones(x.shape, dtype=bool)
    starts[:, 1:] = xs[:, 1:] != xs[:, :-1]
    # Each sorted cell's group start (a running max of start positions), in columns.
    col = np.arange(x.shape[1])[None, :]
    group_start = np.maximum.accumulate(np.where(starts, col, 0), axis=1)
    first_sorted = np.take_along_axis(order, group_start, axis=1)
    out = np.empty_like(order)
    np.put_along_axis(out, order, first_sorted, axis=1)
    return out


def _served_log(
    p: GeneratorParams,
    chunk: int,
    pages: _Pages,
    plays: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, np.ndarray]:
    """Impressions and clicks of the logged sessions (the module doc's model) as event
    columns, and ``play_src``: per play, its session's policy (-1: the session is not
    logged). ``plays``: each play's (session, video, start µs). Its own random stream,
    so the plays are the same whatever ``p.impressions`` is."""
    s_idx, vid, play_ts = plays
    rng = _rng(p.seed, 6, chunk)
    logged = rng.random(len(pages.start)) < p.impressions
    # Impressions: the logged sessions' whole pages, at the session's start.
    ks, kj = np.nonzero(pages.valid & logged[:, None])
    # Clicks: the logged sessions' plays, as each play starts.
    c = np.flatnonzero(logged[s_idx])
    play_src = np.where(logged[s_idx], pages.policy[s_idx], -1)
    n_imp, n_click = len(ks), len(c)
    return {
        "ts": np.concatenate([pages.start[ks], play_ts[c]]),
        "u": np.concatenate([pages.user[ks], pages.user[s_idx[c]]]),
        "v": np.concatenate([pages.video[ks, kj], vid[c]]),
        "type": np.concatenate([np.full(n_imp, 6), np.full(n_click, 7)]),
        "watch": np.full(n_imp + n_click, np.nan),
        "sess": np.concatenate([ks, s_idx[c]]),
        "req": np.zeros(n_imp + n_click, dtype=np.int64),
        "pos": np.concatenate([kj, np.full(n_click, -1)]),
        "src": np.concatenate([pages.policy[ks], play_src[c]]),
        "play_src": play_src,
    }


_TYPE_NAMES = (
    "watch", "skip", "like", "dislike", "share", "not_interested", "impression", "click",
)  # fmt: skip
# Sort rank among events at the same instant: impression, click, then the rest as coded.
_TYPE_ORDER = np.array([0, 1, 2, 3, 4, 5, -2, -1])
CORRUPTIONS: tuple[Reason, ...] = (
    Reason.NULL_ID,
    Reason.UNKNOWN_EVENT_TYPE,
    Reason.NEGATIVE_WATCH_TIME,
    Reason.WATCH_TIME_OVER_3X_DURATION,
    Reason.FUTURE_TIMESTAMP,
    Reason.UNKNOWN_VIDEO,
    Reason.DUPLICATE_ID,
    Reason.NON_FINITE_WATCH_TIME,
    Reason.INVALID_DURATION,
    Reason.WATCH_TIME_OVER_CAP,
    Reason.TIMESTAMP_BEFORE_FLOOR,
    Reason.PARTITION_MISMATCH,
    Reason.NULL_TIMESTAMP,
    Reason.NEGATIVE_POSITION,
)
# Injected against the contract's default limits (a data set does not know the config
# it will be read with); each broken value is far past its limit.
_LIMITS = ContractConfig()


def _to_table(
    ev: dict[str, np.ndarray], p: GeneratorParams, cat: _Catalog, users: _Users, first_id: int
) -> pa.Table:
    n = len(ev["ts"])
    ids = np.arange(first_id, first_id + n)
    watch = ev["watch"]
    return pa.table(
        {
            "event_id": _strings(f"s{p.seed}-", ids),
            "ts": _ts_array(ev["ts"]),
            "user_id": ev["u"] + 1,
            "video_id": ev["v"] + 1,
            "event_type": pa.array(np.array(_TYPE_NAMES, dtype=object)[ev["type"]], type=pa.string()),
            "watch_time_s": pa.array(watch, mask=np.isnan(watch)),
            "video_duration_s": cat.duration[ev["v"]],
            "session_id": _strings(f"s{p.seed}-", ev["sess_global"]),
            "device": pa.array(np.array([d[0] for d in DEVICES], dtype=object)[ev["device"]], type=pa.string()),
            "country": pa.array(np.array([c[0] for c in COUNTRIES], dtype=object)[users.country[ev["u"]]], type=pa.string()),
            "request_id": _request_ids(p.seed, ev["sess_global"], ev["req"]),
            "position": pa.array(ev["pos"].astype(np.int32), mask=ev["pos"] < 0),
            "source": pa.array(np.array([s[0] for s in SOURCES], dtype=object)[ev["src"]], type=pa.string(), mask=ev["src"] < 0),
        }
    )  # fmt: skip


def _request_ids(seed: int, sess: np.ndarray, req: np.ndarray) -> pa.Array:
    """``r<seed>-<session>-<k>``: the session's k-th served request (null where req < 0)."""
    ids = pc.binary_join_element_wise(
        f"r{seed}-", pa.array(sess).cast(pa.string()), "-", pa.array(req).cast(pa.string()), ""
    )
    return pc.if_else(pa.array(req >= 0), ids, pa.scalar(None, pa.string()))


def _corrupt(
    t: pa.Table, p: GeneratorParams, chunk: int, n_videos: int, counts: dict[str, int]
) -> tuple[pa.Table, pa.ChunkedArray]:
    """Break ``corrupt`` × rows of the chunk, one contract rule per broken row, cycling
    through the kinds; add the number of each to ``counts``.

    Returns the table and each row's *arrival* time, which decides its day partition:
    a future timestamp from a skewed client clock still arrives, and is filed, today;
    so do the 1970 timestamps and the rows filed days after they happened.
    """
    n_bad = round(p.corrupt * t.num_rows)
    if n_bad == 0:
        return t, t["ts"]
    rng = _rng(p.seed, 4, chunk)
    rows = rng.choice(t.num_rows, size=n_bad, replace=False)
    kinds = np.arange(n_bad) % len(CORRUPTIONS)
    cols = {name: t[name].to_pylist() for name in t.column_names}
    dup_rows: list[int] = []
    # Sources for duplicates: untouched rows whose copy (+1 s) stays inside the window.
    last_ok = pa.scalar(p.end - dt.timedelta(seconds=2), type=TS)
    in_time = pc.less(t["ts"], last_ok).to_numpy(zero_copy_only=False)
    sources = rng.permutation(np.setdiff1d(np.flatnonzero(in_time), rows))
    for row, kind in zip(rows.tolist(), kinds.tolist(), strict=True):
        reason = CORRUPTIONS[kind]
        if reason is Reason.NULL_ID:
            cols["user_id"][row] = None
        elif reason is Reason.UNKNOWN_EVENT_TYPE:
            cols["event_type"][row] = "view"
        elif reason is Reason.NEGATIVE_WATCH_TIME:
            cols["watch_time_s"][row] = -abs(cols["watch_time_s"][row] or 5.0)
        elif reason is Reason.WATCH_TIME_OVER_3X_DURATION:
            cols["watch_time_s"][row] = round(3.5 * cols["video_duration_s"][row] + 1.0, 1)
        elif reason is Reason.FUTURE_TIMESTAMP:
            cols["ts"][row] = p.end + dt.timedelta(
                seconds=float(rng.uniform(3600, 5 * SECONDS_PER_DAY))
            )
        elif reason is Reason.UNKNOWN_VIDEO:
            cols["video_id"][row] = n_videos + 1 + int(rng.integers(0, 1_000_000))
        elif reason is Reason.DUPLICATE_ID:
            # A retried client send: the same event id again, one second later. The
            # validator keeps the earliest, so exactly this copy is quarantined.
            dup_rows.append(int(sources[len(dup_rows)]))
            continue
        elif reason is Reason.NON_FINITE_WATCH_TIME:
            cols["watch_time_s"][row] = float("nan")  # a player that divided by zero
        elif reason is Reason.INVALID_DURATION:
            # A browser player reports NaN until the video's metadata has loaded.
            cols["video_duration_s"][row] = float("nan")
        elif reason is Reason.WATCH_TIME_OVER_CAP:
            cols["video_duration_s"][row] = None
            cols["watch_time_s"][row] = round(2 * _LIMITS.max_watch_time_s + 1.0, 1)
        elif reason is Reason.TIMESTAMP_BEFORE_FLOOR:
            # An unset client clock: the first day of 1970, filed on its arrival day.
            cols["ts"][row] = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                seconds=float(rng.uniform(0, SECONDS_PER_DAY))
            )
        elif reason is Reason.NULL_TIMESTAMP:
            cols["ts"][row] = None  # filed by its arrival time all the same
        elif reason is Reason.NEGATIVE_POSITION:
            cols["position"][row] = -1  # an off-by-one in a client's rank
        elif reason is Reason.PARTITION_MISMATCH:
            # Filed days later than even a late arrival may be (a replayed backlog).
            late = dt.timedelta(hours=_LIMITS.late_arrival_hours)
            cols["ts"][row] -= late + dt.timedelta(days=float(rng.uniform(1, 4)))
        counts[reason.value] = counts.get(reason.value, 0) + 1
    out = pa.table(cols, schema=t.schema)
    arrival = t["ts"]
    if dup_rows:
        dups = t.take(pa.array(dup_rows))
        shifted = pc.add(dups["ts"], pa.scalar(1_000_000, pa.duration("us")))
        dups = dups.set_column(dups.schema.get_field_index("ts"), "ts", shifted)
        counts[Reason.DUPLICATE_ID.value] = counts.get(Reason.DUPLICATE_ID.value, 0) + len(dup_rows)
        out = pa.concat_tables([out, dups])
        arrival = pa.chunked_array([*arrival.chunks, *shifted.chunks], type=arrival.type)
    return out, arrival


def generate(
    params: GeneratorParams,
    out_dir: str | Path,
    *,
    config_digest: str,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the platform into the data set directory ``out_dir``; return a summary.

    Writes the contract tables (watch_events by day, videos, channels, users) and
    ``ground_truth/``: per user the interest vector and activity, per video the topic
    vector, quality, appeal, clickbait flag and log popularity; the manifest's
    ``ground_truth`` holds the model's weights (:mod:`videorec.datagen.truth` reads both). Deterministic for ``params``. The summary is
    JSON-able: paths, row counts, events by type, injected corruption by reason.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    check_target(out_dir, overwrite)  # before the work, not at the end of it
    p = params
    cat = _make_catalog(p)
    users = _make_users(p, cat)
    sampler = _PoolSampler(cat)
    injected: dict[str, int] = {}
    by_type: dict[str, int] = {}
    n_events = 0
    n_sessions = 0
    chunks = list(range(0, p.users, USERS_PER_CHUNK))
    with (
        DatasetWriter(out_dir) as w,
        Progress(
            TextColumn("generating events"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("users · {task.fields[events]:,} events"),
            TimeElapsedColumn(),
            disable=not progress,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("users", total=p.users, events=0)
        for chunk, lo in enumerate(chunks):
            hi = min(p.users, lo + USERS_PER_CHUNK)
            ev = _chunk_events(p, cat, users, sampler, lo, hi, chunk)
            if ev:
                # Session ids are global so they stay unique across chunks.
                _, sess_local = np.unique(ev["sess"], return_inverse=True)
                ev["sess_global"] = sess_local + n_sessions
                # Each session is on one device: mostly the user's usual one.
                rng = _rng(p.seed, 5, chunk)
                n_s = int(sess_local.max()) + 1
                sess_user = ev["u"][np.unique(sess_local, return_index=True)[1]]
                usual = rng.random(n_s) < 0.8
                other = rng.choice(len(DEVICES), size=n_s, p=[d[1] for d in DEVICES])
                ev["device"] = np.where(usual, users.device[sess_user], other)[sess_local]
                n_sessions += n_s
                t = _to_table(ev, p, cat, users, n_events)
                n_events += t.num_rows
                for name, cnt in zip(*np.unique(ev["type"], return_counts=True), strict=True):
                    by_type[_TYPE_NAMES[name]] = by_type.get(_TYPE_NAMES[name], 0) + int(cnt)
                t, arrival = _corrupt(t, p, chunk, p.videos, injected)
                w.write_events(t, partition_ts=arrival)
            bar.update(task, advance=hi - lo, events=n_events)
        w.write_table("videos", cat.videos)
        w.write_table("channels", cat.channels)
        w.write_table("users", users.table)
        w.write_table(
            "ground_truth/users",
            pa.table(
                {
                    "user_id": users.table["user_id"],
                    "interest": pa.array(
                        list(users.interest.astype(np.float32)), type=pa.list_(pa.float32())
                    ),
                    "sessions_per_day": users.activity,
                }
            ),
        )
        w.write_table(
            "ground_truth/videos",
            pa.table(
                {
                    "video_id": cat.videos["video_id"],
                    "topic": pa.array(
                        list(cat.topic.astype(np.float32)), type=pa.list_(pa.float32())
                    ),
                    "quality": cat.quality,
                    "appeal": cat.appeal,
                    "clickbait": cat.clickbait,
                    "log_popularity": cat.log_pop,
                }
            ),
        )
        counts = {
            "watch_events": n_events + injected.get(Reason.DUPLICATE_ID.value, 0),
            "videos": cat.videos.num_rows,
            "channels": cat.channels.num_rows,
            "users": users.table.num_rows,
            "sessions": n_sessions,
        }
        manifest = {
            "source": "synthetic",
            "generator": "videorec.datagen.synthetic",
            "params": {k: str(v) if isinstance(v, dt.date) else v for k, v in asdict(p).items()},
            "window_start": p.start.isoformat(),
            "as_of": p.end.isoformat(),
            "config_digest": config_digest,
            "counts": counts,
            "events_by_type": dict(sorted(by_type.items())),
            "injected_corruption": dict(sorted(injected.items())),
            "ground_truth": {
                "latent_dim": LATENT_DIM,
                "appeal": APPEAL,
                "page_len": PAGE_LEN,
                "examination_exponent": EXAMINATION_EXPONENT,
                "click_weights": CLICK_WEIGHTS,
                "freshness_days": FRESHNESS_DAYS,
                "outcome_weights": OUTCOME_WEIGHTS,
                "skip_below_completion": SKIP_BELOW_COMPLETION,
                "rewatch_keep": REWATCH_KEEP,
                "max_session_len": MAX_SESSION_LEN,
                "policies": POLICIES,
            },
        }
        path = w.finish(manifest, overwrite=overwrite)
    return {
        "out": str(path),
        **{k: manifest[k] for k in ("as_of", "counts", "events_by_type", "injected_corruption")},
    }
