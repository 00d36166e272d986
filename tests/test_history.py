"""The per-user example builder (pure Arrow; Spark calls it once per user)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from videorec.features.history import user_examples

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def _plays(rows: list[tuple[int, str, int, bool, bool]]) -> pa.Table:
    """rows: (seconds after T0, event_id, video_id, is_watch, is_positive)."""
    return pa.table(
        {
            "user_id": [1] * len(rows),
            "event_id": [r[1] for r in rows],
            "ts": pa.array(
                [T0 + dt.timedelta(seconds=r[0]) for r in rows], pa.timestamp("us", tz="UTC")
            ),
            "video_id": pa.array([r[2] for r in rows], pa.int64()),
            "is_watch": [r[3] for r in rows],
            "is_positive": [r[4] for r in rows],
            "weight": [float(i) for i in range(len(rows))],
        }
    )


def test_history_is_strictly_before_time_ordered_and_skips_non_watches() -> None:
    plays = _plays(
        [
            (30, "e3", 3, True, True),  # input order is not time order
            (10, "e1", 1, True, True),
            (20, "e2", 2, True, False),  # a watch that is not a positive: still history
            (30, "e4", 4, True, True),  # same second as e3: neither sees the other
            (40, "e5", 5, False, False),  # a skip: not history
            (50, "e6", 6, True, True),
        ]
    )
    out = user_examples(plays, history_len=50, max_examples=100)
    got = {
        e: h for e, h in zip(out["event_id"].to_pylist(), out["history"].to_pylist(), strict=True)
    }
    assert got == {"e1": [], "e3": [1, 2], "e4": [1, 2], "e6": [1, 2, 3, 4]}
    assert out["event_id"].to_pylist() == ["e1", "e3", "e4", "e6"]  # time order, ties by id
    assert out["history_len"].to_pylist() == [0, 2, 2, 4]
    assert out["weight"].to_pylist() == [1.0, 0.0, 3.0, 5.0]  # other columns carried over


def test_history_is_cut_to_the_last_n_and_examples_capped() -> None:
    rows = [(i, f"e{i:03d}", 100 + i, True, i >= 55) for i in range(60)]
    out = user_examples(_plays(rows), history_len=50, max_examples=3)
    assert out["event_id"].to_pylist() == ["e057", "e058", "e059"]  # the 3 most recent
    h = out["history"].to_pylist()
    assert h[0] == [100 + i for i in range(7, 57)]  # the 50 watches before second 57
    assert all(len(x) == 50 for x in h)


def test_user_without_positives() -> None:
    out = user_examples(_plays([(1, "a", 1, True, False)]), history_len=5, max_examples=5)
    assert out.num_rows == 0 and out.schema.field("history").type == pa.list_(pa.int64())
