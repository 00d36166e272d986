"""The ground truth of a synthetic platform, for offline simulation.

``load_truth(data_dir)`` reads back what :mod:`videorec.datagen.synthetic` recorded
(``ground_truth/users``, ``ground_truth/videos``, the videos' durations and upload
times, the manifest's weights) and answers, for any (user, video, page position,
time), what the platform's users would do if that video were served there:

- :meth:`Truth.p_click`: P(click | examined), the session's intent integrated out;
- :meth:`Truth.expected_watch_given_play`: E[watch time | play] in seconds;
- :meth:`Truth.expected_watch_s`: the product with the position's examination
  probability, the expected watch time a served slot earns.

The formulas are the generator's own functions (one definition, in ``synthetic``),
with the weights the data set's manifest records, so the two cannot drift. The
expectations over normal noise use a fixed ``QUADRATURE_NODES``-point Gauss-Hermite
quadrature (deterministic; no Monte Carlo); the completion jitter is integrated
exactly. A click on a video the user played in an earlier session is kept with
probability ``rewatch_keep`` only: pass ``watched`` where that is so (the default is a
first exposure). Two rare effects are left out: the generator caps a session at
``max_session_len`` plays and drops plays that would start after the window's end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from videorec.datagen.synthetic import (
    SECONDS_PER_DAY,
    click_logit,
    examination,
    expected_watch_given_play,
    outcome_logit,
    p_click_given_examined,
)
from videorec.dataset import read_manifest, read_table

_US_PER_DAY = SECONDS_PER_DAY * 1e6


def _vectors(col: pa.ChunkedArray) -> np.ndarray:
    """(n, d) float64 from a list<float> column of equal-length lists."""
    arr = col.combine_chunks()
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64)
    return flat.reshape(len(arr), -1) if len(arr) else flat.reshape(0, 0)


def _rows(known: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Row of each id in ``known`` (sorted); ValueError naming ids it does not hold."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{what} ids must be integers, got dtype {ids.dtype}")
    rows = np.minimum(np.searchsorted(known, ids), len(known) - 1)
    bad = known[rows] != ids
    if bad.any():
        missing = np.unique(ids[bad])
        shown = ", ".join(str(i) for i in missing[:10].tolist())
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(f"unknown {what} ids: {shown}{more}")
    return rows


@dataclass(frozen=True)
class Truth:
    """The latent model of one synthetic data set. Arrays are indexed by row; ids map
    to rows through the sorted ``user_ids`` / ``video_ids``. Times are µs since the
    Unix epoch (UTC)."""

    user_ids: np.ndarray  # (U,) sorted
    interest: np.ndarray  # (U, D) unit vectors
    video_ids: np.ndarray  # (V,) sorted
    topic: np.ndarray  # (V, D) unit vectors
    quality: np.ndarray  # (V,) logit scale: how long people watch once they click
    appeal: np.ndarray  # (V,) logit scale: how clickable title and thumbnail are
    clickbait: np.ndarray  # (V,) bool: appeal raised on a below-average video
    log_popularity: np.ndarray  # (V,)
    duration_s: np.ndarray  # (V,) seconds
    published_us: np.ndarray  # (V,)
    click_weights: dict[str, float]
    outcome_weights: dict[str, float]
    examination_exponent: float
    freshness_days: float
    rewatch_keep: float
    manifest: dict[str, Any]

    def examination(self, positions: np.ndarray) -> np.ndarray:
        """P(a user examines page position j), 0-based, elementwise."""
        return examination(positions, self.examination_exponent)

    def affinity(self, user_ids: np.ndarray, video_ids: np.ndarray) -> np.ndarray:
        """``interest·topic`` per (user, video) pair, broadcast; ValueError for unknown ids."""
        u, v = np.broadcast_arrays(np.asarray(user_ids), np.asarray(video_ids))
        ur = _rows(self.user_ids, u.ravel(), "user")
        vr = _rows(self.video_ids, v.ravel(), "video")
        return np.einsum("nd,nd->n", self.interest[ur], self.topic[vr]).reshape(u.shape)

    def p_click(
        self,
        user_ids: np.ndarray,
        video_ids: np.ndarray,
        at_us: np.ndarray | int,
        watched: np.ndarray | bool = False,
    ) -> np.ndarray:
        """P(click | examined) of each (user, video) shown at ``at_us`` (broadcast
        arrays; µs since the epoch); 0 where the video is not yet published (the platform
        never shows it). ``watched``: the user played the video in an earlier session
        (the click is then kept with probability ``rewatch_keep``). ValueError for
        unknown ids."""
        u, v, t, seen = np.broadcast_arrays(
            np.asarray(user_ids), np.asarray(video_ids), at_us, np.asarray(watched, dtype=bool)
        )
        vr = _rows(self.video_ids, v.ravel(), "video")
        aff = self.affinity(u.ravel(), v.ravel())
        age_days = (t.ravel().astype(np.int64) - self.published_us[vr]) / _US_PER_DAY
        logit = click_logit(
            aff, self.appeal[vr], self.log_popularity[vr], age_days, self.click_weights,
            self.freshness_days,
        )  # fmt: skip
        p = p_click_given_examined(logit, self.click_weights)
        p = np.where(seen.ravel(), self.rewatch_keep * p, p)
        return np.where(age_days >= 0, p, 0.0).reshape(u.shape)

    def expected_watch_given_play(self, user_ids: np.ndarray, video_ids: np.ndarray) -> np.ndarray:
        """E[watch time | play] in seconds per (user, video), broadcast arrays: the
        outcome model's expectation (affinity, quality, duration, noise)."""
        u, v = np.broadcast_arrays(np.asarray(user_ids), np.asarray(video_ids))
        vr = _rows(self.video_ids, v.ravel(), "video")
        z = outcome_logit(
            self.affinity(u.ravel(), v.ravel()), self.quality[vr], self.duration_s[vr],
            self.outcome_weights,
        )  # fmt: skip
        return expected_watch_given_play(z, self.duration_s[vr], self.outcome_weights).reshape(
            u.shape
        )

    def expected_watch_s(
        self,
        user_ids: np.ndarray,
        video_ids: np.ndarray,
        positions: np.ndarray,
        at_us: np.ndarray | int,
        watched: np.ndarray | bool = False,
    ) -> np.ndarray:
        """Expected seconds watched of each video served to its user at page position
        ``positions`` (0-based) at ``at_us``: examination(position) × P(click | examined)
        × E[watch time | play]; broadcast arrays (``watched``: see :meth:`p_click`). 0 for
        a video not yet published; ValueError for unknown ids or a negative position."""
        e = self.examination(np.asarray(positions))
        p = self.p_click(user_ids, video_ids, at_us, watched)
        w = self.expected_watch_given_play(user_ids, video_ids)
        return e * p * w


def load_truth(data_dir: str | os.PathLike[str]) -> Truth:
    """The ground truth of the synthetic data set at ``data_dir``. ValueError when the
    data set does not record the click model (not synthetic, or generated before it)."""
    manifest = read_manifest(data_dir)
    gt = manifest.get("ground_truth") or {}
    needed = (
        "click_weights", "outcome_weights", "examination_exponent", "freshness_days",
        "rewatch_keep",
    )  # fmt: skip
    if manifest.get("source") != "synthetic" or any(k not in gt for k in needed):
        raise ValueError(
            f"{data_dir}: no click-model ground truth in the manifest (needs a synthetic data "
            "set from a generator with appeal and position bias: run `videorec generate`)"
        )
    root = os.fspath(data_dir)
    gu = pq.read_table(os.path.join(root, "ground_truth", "users"))
    gv = pq.read_table(os.path.join(root, "ground_truth", "videos"))
    videos = read_table(data_dir, "videos").select(["video_id", "duration_s", "published_at"])
    gu = gu.sort_by("user_id")
    gv = gv.sort_by("video_id")
    videos = videos.sort_by("video_id")
    if not gv["video_id"].equals(videos["video_id"]):
        raise ValueError(f"{data_dir}: ground_truth/videos and videos hold different ids")
    published = videos["published_at"].cast(pa.int64()).to_numpy()
    return Truth(
        user_ids=gu["user_id"].to_numpy(),
        interest=_vectors(gu["interest"]),
        video_ids=gv["video_id"].to_numpy(),
        topic=_vectors(gv["topic"]),
        quality=gv["quality"].to_numpy(),
        appeal=gv["appeal"].to_numpy(),
        clickbait=gv["clickbait"].to_numpy(),
        log_popularity=gv["log_popularity"].to_numpy(),
        duration_s=videos["duration_s"].to_numpy(),
        published_us=published,
        click_weights={k: float(x) for k, x in gt["click_weights"].items()},
        outcome_weights={k: float(x) for k, x in gt["outcome_weights"].items()},
        examination_exponent=float(gt["examination_exponent"]),
        freshness_days=float(gt["freshness_days"]),
        rewatch_keep=float(gt["rewatch_keep"]),
        manifest=manifest,
    )
