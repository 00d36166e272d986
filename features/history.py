"""Per-user training examples with their watch history, as a pure Arrow function.

Spark groups the plays by user and calls :func:`user_examples` once per user (via
``applyInArrow``): a per-user sort and a binary search give each example exactly the
watches *strictly before* it (ties on the timestamp excluded), time-ordered and cut to
the last ``history_len``. A window frame in Spark SQL cannot express "strictly earlier
timestamp, last N rows" without materialising an over-long list per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The columns user_examples needs; anything else in the input is passed through.
REQUIRED = ("user_id", "event_id", "ts", "video_id", "is_watch", "is_positive")


def user_examples(plays: pa.Table, history_len: int, max_examples: int) -> pa.Table:
    """Training examples of one user's plays.

    ``plays``: one user's plays with REQUIRED columns (``is_watch``: counts as history;
    ``is_positive``: becomes an example) plus any columns to carry over. Returns the
    positive rows, at most the ``max_examples`` most recent (by ts, then event_id),
    in time order, with ``history`` (list<int64>: video ids of the last
    ``history_len`` watches with ts strictly before the example's, oldest first) and
    ``history_len``.
    """
    order = pc.sort_indices(plays, sort_keys=[("ts", "ascending"), ("event_id", "ascending")])
    t = plays.take(order)
    ts = t["ts"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    video = t["video_id"].to_numpy(zero_copy_only=False)
    is_watch = t["is_watch"].to_numpy(zero_copy_only=False)
    pos_idx = np.flatnonzero(t["is_positive"].to_numpy(zero_copy_only=False))[-max_examples:]
    w_ts, w_video = ts[is_watch], video[is_watch]
    # Number of watches strictly before each example: the left insertion point.
    ends = np.searchsorted(w_ts, ts[pos_idx], side="left")
    starts = np.maximum(ends - history_len, 0)
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = (
        np.concatenate([w_video[s:e] for s, e in zip(starts, ends, strict=True)])
        if len(pos_idx)
        else np.zeros(0, dtype=np.int64)
    )
    out = t.take(pa.array(pos_idx, type=pa.int64()))
    out = out.append_column(
        "history", pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int64()))
    )
    return out.append_column("history_len", pa.array(lengths.astype(np.int32)))
