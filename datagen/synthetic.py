"""A seeded synthetic video platform: channels, videos, users and their watch sessions.

The generator is the embedded default data set for runs, tests and benchmarks. It is
built so that a recommender has real signal to find, and so that the ground truth is
known for offline simulation:

- **Catalogue.** 20 YouTube-like categories, each with a share of uploads, a
  log-normal duration and a word list. Channels have power-law sizes (Zipf), a main
  category and a quality prior. Each video gets a latent topic vector (its
  category's centroid plus channel and video noise), a quality, an exogenous
  popularity (heavy-tailed: quality, channel size and luck), and a title and tags
  drawn from its category's words, so text carries the same signal as the topic.
  About 45% of videos are uploaded inside the window, spread evenly, so the last 24
  hours always holds fresh videos.
- **Users.** A sparse interest mixture over 1 to 3 categories gives a latent
  interest vector; country, language, device, age bucket; a heavy-tailed activity
  rate (log-normal sessions per day); about 12% sign up inside the window (cold
  start).
- **Sessions.** Each user's sessions fall at diurnal times; a session plays a few
  videos chosen by the ground-truth preference model, a softmax over
  ``interest·topic``, quality, popularity and freshness (sampled with the Gumbel
  top-k trick over a per-user candidate pool, which keeps it vectorised).
- **Outcomes.** Completion follows the same affinity (long videos are completed
  less), watch time = completion × duration; a completion under 10% is a ``skip``;
  likes, dislikes, shares and "not interested" follow completion.
- **Impressions and clicks.** A share of sessions (``impressions``, default 3%) is
  logged as the serving tier logs it, like a sampled impression log: the session opens
  with a home-feed request (``request_id``) showing the session's ranked candidates
  (at least ``FEED_PAGE``, as far as the user scrolled), an ``impression`` per item at
  its ``position`` with the ``source`` that produced it; each play of the session is
  the ``click`` on its item (same request, same microsecond as the play, which carries
  the request id too); after the last play the user refreshes the feed a few times
  (``EXTRA_REQUESTS_MEAN``) and clicks nothing. The click-through rate comes out at a
  few percent. Plays, reactions and their random streams are the same with or without
  this log; only the event ids are numbered over all rows.

Everything is drawn from ``numpy.random.Generator`` streams keyed by (seed, stage,
chunk), so one seed always gives byte-identical tables whatever the machine.
``corrupt`` injects a known number of malformed rows of each kind the contract's
validator must catch; the manifest records how many of each.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from videorec.config import ContractConfig
from videorec.contract import AGE_BUCKETS, TS, Reason
from videorec.dataset import DatasetWriter

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

# The ground-truth preference model (recorded in the manifest for offline simulation).
CHOICE_WEIGHTS = {"affinity": 4.0, "quality": 0.6, "popularity": 0.6, "freshness": 1.2}
FRESHNESS_DAYS = 2.0
OUTCOME_WEIGHTS = {"affinity": 3.0, "quality": 0.8, "bias": -1.2, "long_video": 0.35, "noise": 1.1}
SKIP_BELOW_COMPLETION = 0.10
# The served-request log (impressions, clicks): items a feed response shows at least,
# unclicked refreshes per logged session (Poisson mean), and where shown items come from.
FEED_PAGE = 12
EXTRA_REQUESTS_MEAN = 2.5
SOURCES: tuple[tuple[str, float], ...] = (
    ("personal", 0.80), ("trending", 0.08), ("explore", 0.08), ("fresh", 0.04),
)  # fmt: skip


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


@dataclass
class _Catalog:
    cat_names: list[str]
    centroids: np.ndarray  # (n_categories, LATENT_DIM)
    channels: pa.Table
    videos: pa.Table
    video_cat: np.ndarray  # (V,) category index
    topic: np.ndarray  # (V, LATENT_DIM) unit vectors
    quality: np.ndarray  # (V,) logit scale
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
    return _Catalog(
        cat_names, centroids, channels, videos, v_cat, topic, quality, log_pop, published, duration
    )


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
    sess_len = np.minimum(1 + rng.geometric(0.22, size=S) - 1, MAX_SESSION_LEN)

    pool = sampler.draw(rng, users.interest_cats[lo:hi], users.interest_w[lo:hi])  # (n, P)
    aff = np.einsum("ud,upd->up", users.interest[lo:hi], cat.topic[pool])  # (n, P)
    cw = CHOICE_WEIGHTS
    static = (
        cw["affinity"] * aff
        + cw["quality"] * cat.quality[pool]
        + cw["popularity"] * cat.log_pop[pool]
    )
    # The (sessions × pool) score matrix is the hot spot: float32 and in-place ops.
    day_us = SECONDS_PER_DAY * 1e6
    pub_day = ((cat.published_us - start_us) / day_us).astype(np.float32)
    sess_day = ((sess_start - start_us) / day_us).astype(np.float32)
    sp = pool[sess_user]  # (S, P)
    age = sess_day[:, None] - pub_day[sp]
    score = static.astype(np.float32)[sess_user]
    score += np.float32(cw["freshness"]) * np.exp(-np.maximum(age, 0) / np.float32(FRESHNESS_DAYS))
    u = rng.random(score.shape, dtype=np.float32)
    np.maximum(u, np.finfo(np.float32).tiny, out=u)  # random() can return 0; log(0) is -inf
    score -= np.log(-np.log(u))  # Gumbel noise
    score[age < 0] = -np.inf  # not yet published
    L = MAX_SESSION_LEN
    top = np.argpartition(score, -L, axis=1)[:, -L:]
    top = np.take_along_axis(
        top, np.argsort(-np.take_along_axis(score, top, axis=1), axis=1), axis=1
    )
    top_score = np.take_along_axis(score, top, axis=1)
    take = (np.arange(L)[None, :] < sess_len[:, None]) & np.isfinite(top_score)
    s_idx, r_idx = np.nonzero(take)
    u_loc = sess_user[s_idx]
    vid = sp[s_idx, top[s_idx, r_idx]]
    a = aff[u_loc, top[s_idx, r_idx]]

    # Rewatches happen but are rare: keep a repeated (user, video) pair with prob 0.2.
    key = u_loc.astype(np.int64) * (len(cat.duration) + 1) + vid
    order = np.lexsort((r_idx, sess_start[s_idx]))
    _, first_pos = np.unique(key[order], return_index=True)
    is_first = np.zeros(len(key), dtype=bool)
    is_first[order[first_pos]] = True
    keep = is_first | (rng.random(len(key)) < 0.2)
    s_idx, r_idx, u_loc, vid, a = s_idx[keep], r_idx[keep], u_loc[keep], vid[keep], a[keep]

    # Outcome: completion from affinity and quality; long videos are finished less often.
    ow = OUTCOME_WEIGHTS
    dur = cat.duration[vid]
    z = (
        ow["affinity"] * a
        + ow["quality"] * cat.quality[vid]
        + ow["bias"]
        - ow["long_video"] * np.log(dur / 300.0)
        + rng.normal(0, ow["noise"], size=len(vid))
    )
    completion = np.clip(1 / (1 + np.exp(-z)) * rng.uniform(0.75, 1.1, size=len(vid)), 0.005, 1.0)
    watch_time = np.maximum(1.0, completion * dur).round(1)
    # Plays in a session follow each other: start = session start + earlier plays + gaps.
    m = len(vid)
    order = np.lexsort((r_idx, s_idx))
    s_o = s_idx[order]
    step = watch_time[order] + rng.exponential(20.0, size=m)  # play, then a gap
    before = np.cumsum(step) - step  # time of all earlier plays, across sessions
    sess_first = np.searchsorted(s_o, s_o, side="left")
    offset = np.empty(m)
    offset[order] = before - before[sess_first]  # ... counted from the session's first play
    play_ts = sess_start[s_idx] + (offset * 1e6).astype(np.int64)
    is_skip = completion < SKIP_BELOW_COMPLETION

    # Reactions follow the play: likes from high completion, dislikes and
    # "not interested" from low, shares rarely.
    p_like = 0.28 / (1 + np.exp(-9 * (completion - 0.8)))
    p_dislike = 0.10 / (1 + np.exp(-9 * (0.25 - completion)))
    p_share = 0.02 * completion**2
    p_not_int = np.where(is_skip, 0.12, 0.0)
    r = rng.random((4, m))
    reacted = {
        "like": r[0] < p_like,
        "dislike": (r[1] < p_dislike) & ~(r[0] < p_like),
        "share": r[2] < p_share,
        "not_interested": r[3] < p_not_int,
    }
    end_ts = play_ts + (watch_time * 1e6).astype(np.int64)
    ranked = _Ranked(sess_start, sess_len, sess_user, sp, top, top_score)
    served = _served_log(p, chunk, ranked, (s_idx, r_idx, play_ts, end_ts))
    none = np.full(m, -1)
    parts = {
        "ts": [play_ts],
        "u": [u_loc],
        "v": [vid],
        "type": [np.where(is_skip, 1, 0)],  # index into _TYPE_NAMES
        "watch": [watch_time],
        "sess": [s_idx],
        # A logged session's plays name the request (0: its first) that led to them.
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


@dataclass
class _Ranked:
    """Each session's ranked candidates (what a feed would have shown), from the sampler."""

    start: np.ndarray  # (S,) session start, µs
    length: np.ndarray  # (S,) plays drawn
    user: np.ndarray  # (S,) local user index
    pool: np.ndarray  # (S, P) candidate video indices
    top: np.ndarray  # (S, L) pool positions, best first
    score: np.ndarray  # (S, L) their scores; -inf: not yet published


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
    ranked: _Ranked,
    plays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, np.ndarray]:
    """Impressions and clicks of the logged sessions (the module doc's model) as event
    columns, and ``play_src``: per play, the source of its shown item (-1: the session
    is not logged). ``plays``: each play's (session, rank, start µs, end µs). Its own
    random stream, so the plays are the same whatever ``p.impressions`` is."""
    s_idx, r_idx, play_ts, end_ts = plays
    rng = _rng(p.seed, 6, chunk)
    S, L = ranked.top.shape
    logged = rng.random(S) < p.impressions
    src_of = _sample_cdf(np.cumsum([w for _, w in SOURCES]), rng.random((S, L)))  # (S, L)
    # As far as the user scrolled: every played rank is shown (plays are finite-score ranks).
    n_shown = np.minimum(
        np.isfinite(ranked.score).sum(axis=1), np.maximum(FEED_PAGE, ranked.length)
    )
    # The pool is drawn with replacement; a response shows each video once (first rank).
    vids = np.take_along_axis(ranked.pool, ranked.top, axis=1)  # (S, L)
    first_col = _first_in_row(vids)
    cols = np.arange(L)[None, :]
    keep = (first_col == cols) & (cols < n_shown[:, None])
    # A played duplicate rank is the click on the item's one impression: same source.
    src_of = np.take_along_axis(src_of, first_col, axis=1)
    rank_of = np.cumsum(keep, axis=1) - 1  # (S, L): position among the shown items
    shown = keep.sum(axis=1)
    n_req = np.where(logged, 1 + rng.poisson(EXTRA_REQUESTS_MEAN, size=S), 0)
    gap_us = (rng.uniform(20, 180, size=S) * 1e6).astype(np.int64)
    last_end = ranked.start.copy()  # refreshes come after the session's last play ends
    np.maximum.at(last_end, s_idx, end_ts)
    # Requests: (session, k), k = 0 the opening request, then the unclicked refreshes.
    rs = np.repeat(np.arange(S), n_req)
    k = np.arange(len(rs)) - np.repeat(np.cumsum(n_req) - n_req, n_req)
    req_ts = np.where(k == 0, ranked.start[rs], last_end[rs] + k * gap_us[rs])
    # Impressions: one per (request, item shown); a refresh re-orders the same list.
    ks, kj = np.nonzero(keep)  # the shown items, by session then rank
    first = np.searchsorted(ks, np.arange(S))  # each session's first shown item
    per = shown[rs]
    row = np.repeat(np.arange(len(rs)), per)
    s_row, k_row = rs[row], k[row]
    j = kj[first[s_row] + np.arange(len(row)) - np.repeat(np.cumsum(per) - per, per)]
    pos = (rank_of[s_row, j] + 5 * k_row) % shown[s_row]
    # Clicks: the logged sessions' plays, on the opening request, as each play starts.
    c = np.flatnonzero(logged[s_idx])
    play_src = np.full(len(s_idx), -1)
    play_src[c] = src_of[s_idx[c], r_idx[c]]
    n_imp, n_click = len(row), len(c)
    return {
        "ts": np.concatenate([req_ts[row], play_ts[c]]),
        "u": np.concatenate([ranked.user[s_row], ranked.user[s_idx[c]]]),
        "v": np.concatenate([
            ranked.pool[s_row, ranked.top[s_row, j]],
            ranked.pool[s_idx[c], ranked.top[s_idx[c], r_idx[c]]],
        ]),
        "type": np.concatenate([np.full(n_imp, 6), np.full(n_click, 7)]),
        "watch": np.full(n_imp + n_click, np.nan),
        "sess": np.concatenate([s_row, s_idx[c]]),
        "req": np.concatenate([k_row, np.zeros(n_click, dtype=np.int64)]),
        "pos": np.concatenate([pos, np.full(n_click, -1)]),
        "src": np.concatenate([src_of[s_row, j], play_src[c]]),
        "play_src": play_src,
    }  # fmt: skip


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
    ``ground_truth/`` (latent vectors). Deterministic for ``params``. The summary is
    JSON-able: paths, row counts, events by type, injected corruption by reason.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
                "choice_weights": CHOICE_WEIGHTS,
                "freshness_days": FRESHNESS_DAYS,
                "outcome_weights": OUTCOME_WEIGHTS,
                "skip_below_completion": SKIP_BELOW_COMPLETION,
            },
        }
        path = w.finish(manifest, overwrite=overwrite)
    return {
        "out": str(path),
        **{k: manifest[k] for k in ("as_of", "counts", "events_by_type", "injected_corruption")},
    }
