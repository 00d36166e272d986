"""One feed page from candidate pools: re-rank, filter, diversify, explore, explain.

Pure numpy over catalogue rows (:class:`~videorec.serving.live.Catalogue`); no Redis,
no per-candidate Python loop where an array operation does it. The page is built in
this order (issue 13's request path):

1. **Pools.** ``personal``: the base recommendations (retrieval score); ``popular``:
   popular in the user's country and language, trending overall and in declared
   interests (cold start); ``explore``: well-rated trending/popular videos outside the
   user's usual categories; ``fresh``: videos younger than ``fresh_age_h`` and the
   hourly new videos. For a user with a query embedding, the fresh videos with an
   embedding are scored by inner product with it (:func:`fresh_candidates`, an exact
   search of the delta) and the best ``fresh_candidates`` join ``personal`` with that
   inner product as their retrieval score (so the new videos the index does not hold
   yet are re-ranked with the rest), and Thompson sampling chooses among them.
2. **Filters** (:func:`eligible`): watched, hidden (not interested, disliked), blocked
   or struck-out channels, then quality (completion below ``quality_min_completion`` or
   dislike ratio above ``quality_max_dislike_ratio`` once a video has
   ``quality_min_views`` views).
3. **Re-rank.** With a ranker loaded (:mod:`videorec.serving.ranker`: the stage-2
   model the artifact store's ``ranker`` pointer names), the personal pool is scored by
   it in one batched forward pass and :func:`ranker_relevance` turns the scores into
   relevance::

       z   = (score − mean) / std              over the request's candidates
       rel = exp(min(z, 8)) × freshness

   Without one, while its circuit breaker is open or when it fails, the documented rule
   (:func:`relevance`)::

       z   = (retrieval − mean) / std          over the candidates
       s   = z + 1.0·pref[category] + 1.0·(completion − 0.5) − 2.0·dislike_ratio
       rel = exp(min(s, 8)) × freshness        1.2 under 24 h, 1.1 under 7 days

   ``pref`` is the user's watch-time share per category (0 elsewhere), unknown
   completion and dislike count as 0.5 and 0.
4. **Slots** per page of ``size``: ``round(exploration_share·size)`` exploration slots,
   of which up to ``fresh_slots`` go by Thompson sampling (a draw from
   Beta(1 + clicks, 1 + impressions − clicks) per fresh video, best draws win) and the
   rest ε-greedy (uniform over the explore pool); of the remaining slots the cold-start
   share comes from ``popular``, the rest from ``personal`` (each falls back on the
   other when it runs dry).
5. **Diversity**: every pick, whatever its pool, respects at most ``max_per_channel``
   per channel and ``max(1, ⌊max_category_share·size⌋)`` per category on the page;
   within a pool the order is MMR over the embeddings (λ·rel/max rel − (1−λ)·max cosine
   to the page so far; cosines on the embeddings' top 32 principal directions).
6. **Order and reasons**: personal and popular picks interleaved by rank fraction,
   exploration picks at random positions after the first; each item explained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from videorec.config import ServingConfig
from videorec.serving.live import Catalogue, ExploreStats, FreshPool

SOURCES = ("personal", "popular", "trending", "explore", "fresh", "similar", "next_upload",
           "fallback_snapshot")  # fmt: skip
SRC = {name: np.int8(i) for i, name in enumerate(SOURCES)}
W_CATEGORY, W_COMPLETION, W_DISLIKE, S_MAX = 1.0, 1.0, 2.0, 8.0
MMR_POOL_MAX = 512


@dataclass
class UserView:
    """What the filters and the re-rank need to know about the caller."""

    history: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids, oldest first
    hidden: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # video ids
    blocked_channels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    preferred: dict[str, float] = field(default_factory=dict)  # category -> share
    plays: int = 0
    country: str | None = None
    language: str | None = None
    interests: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None  # (d,) float32 query embedding, None: none


@dataclass
class Pool:
    """Candidates: catalogue rows (n,), relevance (n,) > 0, source codes (n,); ``ranker``
    the ranker version whose scores the relevance comes from (None: the rule, retrieval
    order or a list's scores)."""

    rows: np.ndarray
    score: np.ndarray
    source: np.ndarray
    ranker: str | None = None

    @classmethod
    def empty(cls) -> Pool:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8))

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, keep: np.ndarray) -> Pool:
        return Pool(self.rows[keep], self.score[keep], self.source[keep])


def low_quality(cat: Catalogue, s: ServingConfig) -> np.ndarray:
    """(V,) bool: videos the quality filter drops (completion below
    ``quality_min_completion`` or dislike ratio above ``quality_max_dislike_ratio``, once
    they have ``quality_min_views`` views; unknown values pass). Per catalogue, not per
    request: the serving worker caches it."""
    judged = cat.views >= s.quality_min_views
    low = cat.completion < s.quality_min_completion  # NaN compares False: kept
    return judged & (low | (cat.dislike > s.quality_max_dislike_ratio))


def banned_rows(cat: Catalogue, user: UserView, low: np.ndarray) -> np.ndarray:
    """(V,) bool over the catalogue: what ``user`` must not be shown (filters 2 above)."""
    banned = low.copy()
    for ids in (user.history, user.hidden):
        rows, found = cat.rows(ids)
        banned[rows[found]] = True
    if len(user.blocked_channels):
        banned |= np.isin(cat.channel, user.blocked_channels)
    return banned


def eligible(cat: Catalogue, rows: np.ndarray, user: UserView, s: ServingConfig) -> np.ndarray:
    """(n,) bool: rows the user may be shown (the filters, for one-off callers)."""
    return ~banned_rows(cat, user, low_quality(cat, s))[rows]


def preference(cat: Catalogue, user: UserView) -> np.ndarray:
    """(C,) the user's watch-time share per catalogue category code."""
    pref = np.zeros(len(cat.categories) + 1)  # the last slot: unknown category (-1)
    for name, weight in user.preferred.items():
        code = cat.cat_code.get(name)
        if code is not None:
            pref[code] = weight
    return pref


def freshness(cat: Catalogue, rows: np.ndarray, now_s: float, s: ServingConfig) -> np.ndarray:
    """(n,) the freshness multiplier of each row (1 where none applies)."""
    age_h = (now_s - cat.published_at[rows]) / 3600.0
    out = np.ones(len(rows))
    for max_age_h, boost in reversed(s.freshness_boosts):  # youngest last: it wins
        out = np.where((age_h >= 0) & (age_h < max_age_h), boost, out)
    return out


def relevance(
    cat: Catalogue, rows: np.ndarray, retrieval: np.ndarray, user: UserView, now_s: float,
    s: ServingConfig,
) -> np.ndarray:  # fmt: skip
    """(n,) relevance > 0 of the candidates ``rows`` by the rule in the module docstring."""
    r = np.asarray(retrieval, np.float64)
    z = (r - r.mean()) / (r.std() + 1e-6) if len(r) > 1 else np.zeros(len(r))
    completion = np.nan_to_num(cat.completion[rows], nan=0.5)
    dislike = np.nan_to_num(cat.dislike[rows], nan=0.0)
    score = z + W_CATEGORY * preference(cat, user)[cat.category[rows]]
    score += W_COMPLETION * (completion - 0.5) - W_DISLIKE * dislike
    return np.exp(np.minimum(score, S_MAX)) * freshness(cat, rows, now_s, s)


def ranker_relevance(
    cat: Catalogue, rows: np.ndarray, score: np.ndarray, now_s: float, s: ServingConfig
) -> np.ndarray:
    """(n,) relevance > 0 of the candidates ``rows`` from the ranker's scores (n,): a
    monotone transform of the score standardised over the request's candidates (the
    same scale the rule's relevance has, so MMR's trade-off means the same), times the
    freshness multiplier."""
    r = np.asarray(score, np.float64)
    z = (r - r.mean()) / (r.std() + 1e-6) if len(r) > 1 else np.zeros(len(r))
    return np.exp(np.minimum(z, S_MAX)) * freshness(cat, rows, now_s, s)


def fresh_candidates(
    fresh: FreshPool, embedding: np.ndarray | None, keep: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n,), inner products (n,) float64), best first: of the fresh candidates
    (new videos, young videos) those ``keep`` (len(fresh.rows),) allows, the top ``k`` by
    inner product with the user's query ``embedding``: an exact search of the delta,
    one (m, d) matrix-vector product. Empty without an embedding (or of another size)."""
    empty = (np.zeros(0, np.int64), np.zeros(0))
    if embedding is None or k <= 0 or not len(fresh.rows):
        return empty
    if embedding.shape != (fresh.emb.shape[1],):
        return empty
    score = fresh.emb @ embedding.astype(np.float32, copy=False)
    idx = np.flatnonzero(keep)
    if len(idx) > k:
        idx = idx[np.argpartition(-score[idx], k - 1)[:k]]
    idx = idx[np.argsort(-score[idx], kind="stable")]
    return fresh.rows[idx], score[idx].astype(np.float64)


def explore_keep(stats: ExploreStats, keep: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """(len(stats.rows),) bool: the fresh videos Thompson sampling may pick for a user,
    ``keep`` marking those the filters allow; only the user's own fresh candidates
    ``mine`` (rows) when any of them is among them (exploration then personalised)."""
    if not len(mine) or not len(stats.rows):
        return keep
    own = keep & np.isin(stats.rows, mine)
    return own if own.any() else keep


class PageCaps:
    """Per-page diversity counts: channel and category of every pick so far."""

    def __init__(self, cat: Catalogue, size: int, s: ServingConfig) -> None:
        self.cat = cat
        self.max_channel = s.max_per_channel
        self.max_category = max(1, int(np.floor(s.max_category_share * size + 1e-9)))
        self.rows: list[int] = []
        self.channels: dict[int, int] = {}
        self.cats: dict[int, int] = {}

    def allowed(self, rows: np.ndarray) -> np.ndarray:
        """(n,) bool: rows that fit the caps and are not on the page yet."""
        ok = ~np.isin(rows, np.asarray(self.rows, np.int64))
        full_ch = [c for c, n in self.channels.items() if n >= self.max_channel and c >= 0]
        full_cat = [c for c, n in self.cats.items() if n >= self.max_category and c >= 0]
        if full_ch:
            ok &= ~np.isin(self.cat.channel[rows], full_ch)
        if full_cat:
            ok &= ~np.isin(self.cat.category[rows], full_cat)
        return ok

    def fits(self, row: int) -> bool:
        """Whether one more pick ``row`` fits (a scalar check, for per-item loops)."""
        ch, cg = int(self.cat.channel[row]), int(self.cat.category[row])
        return (
            row not in self.rows
            and (ch < 0 or self.channels.get(ch, 0) < self.max_channel)
            and (cg < 0 or self.cats.get(cg, 0) < self.max_category)
        )

    def add(self, row: int) -> None:
        self.rows.append(row)
        ch, cg = int(self.cat.channel[row]), int(self.cat.category[row])
        self.channels[ch] = self.channels.get(ch, 0) + 1
        self.cats[cg] = self.cats.get(cg, 0) + 1


def mmr_picks(cat: Catalogue, pool: Pool, k: int, caps: PageCaps, lam: float) -> np.ndarray:
    """Indices into ``pool`` of up to ``k`` picks by MMR, each within ``caps`` (updated).

    MMR's value of candidate i is λ·rel_i − (1−λ)·max over picks p of cos(i, p). Taking
    pick j can only lower it, to at most λ·rel_i − (1−λ)·cos(i, j): so a step is an
    argmax, one (n, 32) product and an elementwise minimum, in float32.
    """
    if k <= 0 or not len(pool):
        return np.zeros(0, np.int64)
    if len(pool) > MMR_POOL_MAX:  # G is n²: the best MMR_POOL_MAX by relevance compete
        keep = np.argsort(-pool.score, kind="stable")[:MMR_POOL_MAX]
        return keep[
            mmr_picks(cat, Pool(pool.rows[keep], pool.score[keep], pool.source[keep]), k, caps, lam)
        ]
    gain = (lam * pool.score / max(float(pool.score.max()), 1e-12)).astype(np.float32)  # (n,)
    emb = cat.mmr_emb[pool.rows] * np.float32(1.0 - lam)  # (n, ≤ 32): (1−λ)·unit rows
    value = np.where(caps.allowed(pool.rows), gain, np.float32(-np.inf))
    on_page = np.asarray(caps.rows, np.int64)
    if len(on_page):  # picks from other pools already on the page
        value = np.minimum(value, gain - (emb @ cat.mmr_emb[on_page].T).max(axis=1))
    channel, category = cat.channel[pool.rows], cat.category[pool.rows]
    picks: list[int] = []
    for _ in range(k):
        j = int(np.argmax(value))
        if value[j] == -np.inf:
            break
        picks.append(j)
        row = int(pool.rows[j])
        caps.add(row)
        np.minimum(value, gain - emb @ (emb[j] / np.float32(1.0 - lam or 1.0)), out=value)
        value[j] = -np.inf
        ch, cg = int(channel[j]), int(category[j])
        if ch >= 0 and caps.channels[ch] >= caps.max_channel:
            value[channel == ch] = -np.inf
        if cg >= 0 and caps.cats[cg] >= caps.max_category:
            value[category == cg] = -np.inf
    return np.asarray(picks, np.int64)


def thompson_picks(
    cat: Catalogue, stats: ExploreStats, keep: np.ndarray, k: int, caps: PageCaps,
    rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Up to ``k`` fresh rows with the best Beta(1 + clicks, 1 + misses) draws.

    ``keep`` (len(stats.rows),) bool marks the eligible ones. A video with no
    impressions draws from Beta(1, 1), so new creators are shown; one that earns clicks
    is drawn high more often and gains impressions, one that does not fades.
    """
    if k <= 0 or not len(stats.rows):
        return np.zeros(0, np.int64)
    misses = np.maximum(stats.impressions - stats.clicks, 0.0)
    draw = rng.beta(1.0 + stats.clicks, 1.0 + misses)
    draw = np.where(keep, draw, -1.0)
    out: list[int] = []
    for j in np.argsort(-draw, kind="stable"):
        if len(out) == k or draw[j] < 0:
            break
        row = int(stats.rows[j])
        if caps.fits(row):
            caps.add(row)
            out.append(row)
    return np.asarray(out, np.int64)


def random_picks(pool: Pool, k: int, caps: PageCaps, rng: np.random.Generator) -> np.ndarray:
    """Indices into ``pool`` of up to ``k`` uniform picks within ``caps`` (ε-greedy)."""
    out: list[int] = []
    if k <= 0 or not len(pool):
        return np.zeros(0, np.int64)
    for j in rng.permutation(len(pool)):
        if len(out) == k:
            break
        row = int(pool.rows[j])
        if caps.fits(row):
            caps.add(row)
            out.append(int(j))
    return np.asarray(out, np.int64)


def popular_share(plays: int, s: ServingConfig) -> float:
    """The share of a page from popular/trending lists for a user with ``plays`` plays."""
    i = int(np.searchsorted(np.asarray(s.cold_start_plays), plays, side="right"))
    return s.cold_start_popular_share[i]


@dataclass
class Page:
    """A page: catalogue rows, scores and source codes, in display order."""

    rows: np.ndarray
    score: np.ndarray
    source: np.ndarray


def interleave(a: Page, b: Page) -> Page:
    """``a`` and ``b`` merged by rank fraction (i/len), ``a`` first on ties."""
    ka = (np.arange(len(a.rows)) + 0.5) / max(len(a.rows), 1)
    kb = (np.arange(len(b.rows)) + 0.5) / max(len(b.rows), 1) + 1e-9
    order = np.argsort(np.concatenate([ka, kb]), kind="stable")
    cat = [np.concatenate([x, y])[order] for x, y in zip(
        (a.rows, a.score, a.source), (b.rows, b.score, b.source), strict=True)]  # fmt: skip
    return Page(*cat)


def build_page(
    cat: Catalogue, personal: Pool, popular: Pool, explore: Pool, stats: ExploreStats,
    fresh_keep: np.ndarray, size: int, pop_share: float, s: ServingConfig,
    rng: np.random.Generator,
) -> Page:  # fmt: skip
    """One page of up to ``size`` items from eligible pools (steps 4 to 6 above)."""
    caps = PageCaps(cat, size, s)
    n_explore = round(s.exploration_share * size)
    fresh = thompson_picks(cat, stats, fresh_keep, min(s.fresh_slots, n_explore), caps, rng)
    eps = random_picks(explore, n_explore - len(fresh), caps, rng)
    rest = size - len(fresh) - len(eps)
    n_pop = round(pop_share * rest) if len(personal) else rest
    pop_i = mmr_picks(cat, popular, n_pop, caps, s.mmr_lambda)
    per_i = mmr_picks(cat, personal, rest - len(pop_i), caps, s.mmr_lambda)
    if len(pop_i) + len(per_i) < rest:  # personal ran dry: more popular
        more = mmr_picks(cat, popular, rest - len(pop_i) - len(per_i), caps, s.mmr_lambda)
        pop_i = np.concatenate([pop_i, more])
    main = interleave(
        Page(personal.rows[per_i], personal.score[per_i], personal.source[per_i]),
        Page(popular.rows[pop_i], popular.score[pop_i], popular.source[pop_i]),
    )
    extra = Page(
        np.concatenate([fresh, explore.rows[eps]]),
        np.concatenate([np.zeros(len(fresh)), explore.score[eps]]),
        np.concatenate([np.full(len(fresh), SRC["fresh"]), np.full(len(eps), SRC["explore"])]),
    )
    return insert_at_random(main, extra, rng)


def insert_at_random(main: Page, extra: Page, rng: np.random.Generator) -> Page:
    """``extra`` items placed at random positions after the first of ``main``."""
    n = len(main.rows) + len(extra.rows)
    if not len(extra.rows):
        return main
    slots = np.sort(rng.choice(np.arange(min(1, n - 1), n), size=len(extra.rows), replace=False))
    mask = np.zeros(n, bool)
    mask[slots] = True
    out = []
    for m, e in zip((main.rows, main.score, main.source), (extra.rows, extra.score, extra.source),
                    strict=True):  # fmt: skip
        col = np.empty(n, dtype=np.result_type(m, e))
        col[mask], col[~mask] = e, m
        out.append(col)
    return Page(*out)


def explain(
    cat: Catalogue, page: Page, history_rows: np.ndarray, pool_names: list[str]
) -> list[str]:
    """A reason per page item: "Because you watched “…”" naming the history video most
    similar to a personal pick, "Trending in …", "New from …", "Popular in your country"."""
    hist = history_rows[cat.has_emb[history_rows]] if len(history_rows) else history_rows
    because = np.full(len(page.rows), -1, np.int64)
    personal = page.source == SRC["personal"]
    if len(hist) and personal.any():
        sims = cat.emb[page.rows[personal]] @ cat.emb[hist].T  # (p, h) cosines
        because[personal] = hist[np.argmax(sims, axis=1)]
    reasons = []
    for i, (row, src) in enumerate(zip(page.rows.tolist(), page.source.tolist(), strict=True)):
        name, text = SOURCES[src], cat.text[row]
        if name == "personal":
            title = cat.text[because[i]].get("title") if because[i] >= 0 else None
            reasons.append(f"Because you watched “{title}”" if title else "Recommended for you")
        elif name == "fresh":
            reasons.append(f"New from {text.get('channel_name') or 'a new creator'}")
        elif name == "popular":
            reasons.append("Popular in your country")
        else:  # trending, explore, fallback: trending content
            reasons.append(f"Trending in {text.get('category') or 'your area'}")
    return reasons
