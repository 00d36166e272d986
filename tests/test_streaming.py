"""The event-log drain against the real Redis: exactly once into the log, crash or not."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videorec.config import Config
from videorec.contract import REASON_COLUMN, empty_table
from videorec.dataset import (
    DatasetWriter,
    append_events,
    event_files,
    load_validated,
    read_events,
)
from videorec.redis_keys import EVENTS_GROUP, LiveKeys, encode_stream_event
from videorec.streaming.drain import CRASH_ENV, DrainBusy, LeaseLost, drain_events

# The data set's as_of; events drained into it are served later (a live log).
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture
def redis_client(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url)


@pytest.fixture
def root(redis_client: Any) -> Iterator[str]:
    """A key root of this test's own; every key under it is deleted afterwards."""
    name = f"test-drain-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A hand-built data set: videos 1-3, one generated-style file on 2026-10-31."""
    videos = pa.table({"video_id": [1, 2, 3]})
    for f in empty_table("videos").schema:
        if f.name != "video_id":
            videos = videos.append_column(f.name, pa.nulls(3, f.type))
    # No request_id, position or source: a file written before they existed.
    old = pa.table({
        "event_id": ["g1"], "ts": pa.array([AS_OF - dt.timedelta(hours=2)], pa.timestamp("us", "UTC")),
        "user_id": [1], "video_id": [1], "event_type": ["watch"], "watch_time_s": [30.0],
        "video_duration_s": [60.0], "session_id": ["s"], "device": ["tv"], "country": ["US"],
    })  # fmt: skip
    with DatasetWriter(tmp_path / "data") as w:
        w.write_table("videos", videos)
        w.write_events(old)
        w.finish({"source": "test", "as_of": AS_OF.isoformat()})
    return tmp_path / "data"


def _event(i: int, ts: dt.datetime, **over: Any) -> dict[str, Any]:
    row = {
        "event_id": f"ev-{i}", "ts": ts.isoformat(), "user_id": 7, "video_id": 1 + i % 3,
        "event_type": "impression", "video_duration_s": 60.0, "session_id": "sess",
        "device": "mobile", "country": "US", "request_id": f"req-{i // 10}",
        "position": i % 10, "source": "personal",
    }  # fmt: skip
    row.update(over)
    return {k: v for k, v in row.items() if v is not None}


def _now(r: Any) -> dt.datetime:
    """Redis's clock: stream ids are its milliseconds, so events happen 'now' by it."""
    sec, usec = r.time()
    return dt.datetime.fromtimestamp(sec + usec / 1e6, dt.UTC)


def _xadd(r: Any, root: str, events: list[dict[str, Any]]) -> list[str]:
    stream = LiveKeys(root).events_stream
    return [r.xadd(stream, encode_stream_event(e)).decode() for e in events]


def _drained_ids(data: Path) -> list[str]:
    """Event ids in the drain's files, read back with the project's reader."""
    ev = read_events(data)
    return [e for e in ev["event_id"].to_pylist() if e.startswith("ev-")]


def test_events_land_in_the_event_log_once_each(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    t = _now(redis_client)
    _xadd(redis_client, root, [_event(i, t) for i in range(25)])
    res = drain_events(cfg, str(data), t, client=redis_client, root=root, batch_size=10)
    assert res["read"] == 25 and res["acked"] == 25 and res["batches"] == 3
    assert sum(res["written"].values()) == 25 and res["quarantined"] == {}
    assert res["pending"] == 0 and redis_client.xlen(LiveKeys(root).events_stream) == 0
    assert sorted(_drained_ids(data)) == sorted(f"ev-{i}" for i in range(25))
    names = [Path(f).name for f in res["files"]]
    assert all(n.startswith("drain-") and n.endswith(".parquet") for n in names)
    # A second run finds nothing new and writes nothing.
    again = drain_events(cfg, str(data), t, client=redis_client, root=root)
    assert again["read"] == 0 and again["files"] == []
    # The old file (no request_id/position/source columns) and the new ones read together,
    # through the validator, with the stage's logical time as the as-of.
    vd = load_validated(data, max_invalid_share=0.0, as_of=t + dt.timedelta(minutes=10))
    ev = vd.tables["watch_events"]
    assert ev.num_rows == 26
    old = ev.filter(pa.compute.equal(ev["event_id"], "g1"))
    assert old["position"].to_pylist() == [None] and old["request_id"].to_pylist() == [None]
    assert sorted(ev["position"].drop_null().to_pylist()) == sorted(i % 10 for i in range(25))


def test_a_drain_killed_between_write_and_ack_lands_everything_exactly_once(
    cfg: Config, data: Path, redis_client: Any, root: str, redis_url: str
) -> None:
    t = _now(redis_client)
    _xadd(redis_client, root, [_event(i, t, event_type="click", position=None) for i in range(12)])
    # A real process, killed (os._exit) after the first batch's file is written.
    script = (
        "import datetime as dt, redis, sys\n"
        "from videorec.config import parse_config\n"
        "from videorec.streaming.drain import drain_events\n"
        "r = redis.Redis.from_url(sys.argv[3])\n"
        "cfg = parse_config({'streaming': {'drain_lease_s': 2}})\n"
        "drain_events(cfg, sys.argv[1], dt.datetime(2026, 12, 1, tzinfo=dt.UTC),\n"
        "             client=r, root=sys.argv[2], batch_size=5)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(data), root, redis_url],
        env={**os.environ, CRASH_ENV: "after_write"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert len(_drained_ids(data)) == 5  # the file is there ...
    pending = redis_client.xpending(LiveKeys(root).events_stream, EVENTS_GROUP)
    assert pending["pending"] == 5  # ... and its entries are not acknowledged
    # The killed run's lease (2 s here) holds the stream until it lapses: a retry
    # started before then is refused, one after drains.
    lease = LiveKeys(root).drain_lease
    assert 0 < redis_client.pttl(lease) <= 2000
    with pytest.raises(DrainBusy):
        drain_events(cfg, str(data), t, client=redis_client, root=root, batch_size=5)
    deadline = time.monotonic() + 10
    while redis_client.exists(lease):
        assert time.monotonic() < deadline, "the killed run's lease never lapsed"
        time.sleep(0.1)
    res = drain_events(cfg, str(data), t, client=redis_client, root=root, batch_size=5)
    assert res["redelivered"] == 5 and res["read"] == 12
    ids = _drained_ids(data)
    assert sorted(ids) == sorted(f"ev-{i}" for i in range(12))  # each once: the file was rewritten
    assert res["quarantined"] == {} and res["pending"] == 0


def test_a_rerun_with_other_batches_quarantines_copies_instead_of_duplicating(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    """A crash re-run whose batches differ writes other file names: the copies of events
    already in the partition go to the quarantine as duplicate_id, not into the log."""
    t = _now(redis_client)
    ids = _xadd(redis_client, root, [_event(i, t) for i in range(6)])
    stream = LiveKeys(root).events_stream
    drain_events(cfg, str(data), t, client=redis_client, root=root, batch_size=100)
    # As if the acknowledgement had been lost: the same entries, delivered again.
    redis_client.delete(stream)
    _xadd(redis_client, root, [_event(i, t) for i in range(4)])
    res = drain_events(cfg, str(data), t, client=redis_client, root=root, batch_size=2)
    assert res["quarantined"] == {"duplicate_id": 4} and res["written"] == {}
    assert sorted(_drained_ids(data)) == sorted(f"ev-{i}" for i in range(6))
    assert len(ids) == 6


def test_pending_entries_of_a_dead_consumer_are_reclaimed(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    t = _now(redis_client)
    stream = LiveKeys(root).events_stream
    _xadd(redis_client, root, [_event(i, t) for i in range(8)])
    redis_client.xgroup_create(stream, EVENTS_GROUP, id="0", mkstream=True)
    # Another consumer reads them and dies without acknowledging.
    got = redis_client.xreadgroup(EVENTS_GROUP, "worker-that-died", {stream: ">"}, count=8)
    assert len(got[0][1]) == 8
    res = drain_events(cfg, str(data), t, client=redis_client, root=root, claim_min_idle_ms=0)
    assert res["reclaimed"] == 8 and res["read"] == 8 and res["pending"] == 0
    assert sorted(_drained_ids(data)) == sorted(f"ev-{i}" for i in range(8))


def test_invalid_entries_are_quarantined_with_reasons_and_acknowledged(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    t = _now(redis_client)
    stream = LiveKeys(root).events_stream
    _xadd(redis_client, root, [
        _event(0, t),
        _event(1, t, event_type="view"),  # unknown event type
        _event(2, t, position=-1),  # negative position
        _event(3, t, user_id=None),  # missing user_id
        _event(4, t, user_id="seven"),  # wrong type: not a row at all
        _event(5, t, rating=5),  # a field the contract does not know
    ])  # fmt: skip
    redis_client.xadd(stream, {"event": "{not json"})
    redis_client.xadd(stream, {"payload": "no event field"})
    res = drain_events(cfg, str(data), t, client=redis_client, root=root)
    assert res["read"] == 8 and res["acked"] == 8 and res["pending"] == 0
    assert sum(res["written"].values()) == 1
    assert res["quarantined"] == {
        "unknown_event_type": 1, "negative_position": 1, "null_id": 1,
        "malformed_entry": 2, "undecodable_entry": 2,
    }  # fmt: skip
    q = data / "_quarantine" / "drain"
    rows = pq.read_table(next((q / "watch_events").rglob("drain-*.parquet")))
    assert sorted(rows[REASON_COLUMN].to_pylist()) == [
        "negative_position", "null_id", "unknown_event_type"
    ]  # fmt: skip
    raw = pq.read_table(next((q / "stream_entries").glob("drain-*.parquet"))).to_pylist()
    assert (
        sorted(r[REASON_COLUMN] for r in raw) == ["malformed_entry"] * 2 + ["undecodable_entry"] * 2
    )
    assert any("{not json" in r["entry"] for r in raw)  # kept raw
    assert any("seven" in r["detail"] for r in raw)


def test_entries_no_check_foresaw_are_quarantined_and_the_drain_goes_on(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    """Entries that raised past the checks (found by review) stalled the stream: each
    run failed on the same batch, and the entries behind them waited to be trimmed."""
    t = _now(redis_client)
    stream = LiveKeys(root).events_stream
    _xadd(redis_client, root, [_event(0, t)])
    redis_client.xadd(stream, {b"\xff\xfe": b"x"})  # a field name that is not UTF-8
    redis_client.xadd(stream, {"event": "[" * 100_000 + "]" * 100_000})  # nested too deep
    poison = [
        _event(1, t, event_type="watch", watch_time_s=10**400),  # past a double's range
        _event(2, t, event_id="ev-2\ud800"),  # a lone surrogate
        _event(3, t) | {"ts": "0001-01-01T00:00:00+05:00"},  # before any UTC time
    ]
    for e in poison:
        redis_client.xadd(stream, {"event": json.dumps(e)})
    # An integer a double cannot hold exactly: a row (the contract's cap then refuses it).
    exact = _event(4, t, event_type="watch", watch_time_s=2**53 + 1, video_duration_s=None)
    _xadd(redis_client, root, [exact, _event(5, t)])
    res = drain_events(cfg, str(data), t, client=redis_client, root=root)
    assert res["read"] == 8 and res["acked"] == 8 and res["pending"] == 0, res
    assert res["quarantined"] == {
        "undecodable_entry": 2, "malformed_entry": 3, "watch_time_over_cap": 1
    }, res  # fmt: skip
    assert sorted(_drained_ids(data)) == ["ev-0", "ev-5"]
    raw = pq.read_table(next((data / "_quarantine/drain/stream_entries").glob("*.parquet")))
    assert raw.num_rows == 5 and all(raw["detail"].to_pylist())


def test_no_logical_time_is_refused_before_anything_is_read(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    """It failed at the end, after writing and acknowledging (found by review); an
    Airflow 3 run triggered by hand has no logical date (the DAG passes run_after)."""
    t = _now(redis_client)
    _xadd(redis_client, root, [_event(i, t) for i in range(3)])
    with pytest.raises(ValueError, match="logical_time must be a datetime, got None"):
        drain_events(cfg, str(data), None, client=redis_client, root=root)  # type: ignore[arg-type]
    assert redis_client.xlen(LiveKeys(root).events_stream) == 3 and _drained_ids(data) == []


def test_an_event_stamped_past_midnight_by_a_clock_ahead_is_filed_under_its_day(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    """A serving host 2 s ahead of Redis, one second before midnight by Redis's clock:
    filed by arrival alone, its event broke the partition rule (found by review)."""
    stream = LiveKeys(root).events_stream
    midnight = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    arrival_ms = int((midnight - dt.timedelta(seconds=1)).timestamp() * 1000)
    ahead = _event(0, midnight + dt.timedelta(seconds=1))
    too_far = _event(1, midnight + dt.timedelta(minutes=10))  # past the 300 s skew
    for i, e in enumerate((ahead, too_far)):
        redis_client.xadd(stream, encode_stream_event(e), id=f"{arrival_ms}-{i}")
    res = drain_events(cfg, str(data), midnight, client=redis_client, root=root)
    assert res["written"] == {"2026-11-02": 1}, res
    assert res["quarantined"] == {"future_timestamp": 1}, res
    assert [Path(f).parent.name for f in res["files"]] == ["dt=2026-11-02"]


_RACER = (
    "import datetime as dt, json, redis, sys\n"
    "from videorec.config import parse_config\n"
    "from videorec.streaming.drain import DrainBusy, drain_events\n"
    "r = redis.Redis.from_url(sys.argv[3])\n"
    "try:\n"
    "    res = drain_events(parse_config({}), sys.argv[1], dt.datetime(2026, 12, 1, tzinfo=dt.UTC),\n"
    "                       client=r, root=sys.argv[2], batch_size=int(sys.argv[4]))\n"
    "    print(json.dumps({'read': res['read']}))\n"
    "except DrainBusy:\n"
    "    print(json.dumps({'busy': True}))\n"
)


def test_drains_started_together_land_each_event_once(
    cfg: Config, data: Path, redis_client: Any, root: str, redis_url: str
) -> None:
    """Three processes on one stream, with different batch sizes (a retry beside a
    zombie, a hand run beside the DAG's): one holds the lease, the others touch
    nothing. Found by review: without it, 6,000 entries gave 6,970 rows in the log."""
    t = _now(redis_client)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(6000):
        pipe.xadd(LiveKeys(root).events_stream, encode_stream_event(_event(i, t)))
    pipe.execute()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(data), root, redis_url, str(size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for size in (100, 100, 70)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    # Those that overlapped were refused; one that started after another ended read 0.
    assert sum(r.get("read", 0) for r in results) == 6000, results
    ids = _drained_ids(data)
    assert len(ids) == 6000 and len(set(ids)) == 6000
    assert not (data / "_quarantine").exists()


def test_a_drain_whose_lease_was_taken_stops_before_writing_more(
    cfg: Config, data: Path, redis_client: Any, root: str
) -> None:
    """Paused past its lease while another run took the stream: the batch it read is
    neither written nor acknowledged; the next run drains it, each event once."""
    t = _now(redis_client)
    _xadd(redis_client, root, [_event(i, t) for i in range(9)])
    lease = LiveKeys(root).drain_lease
    taken = lambda _msg: redis_client.set(lease, "another-run", px=60_000)  # noqa: E731
    with pytest.raises(LeaseLost, match="lapsed or was taken"):
        drain_events(cfg, str(data), t, client=redis_client, root=root, batch_size=3, log=taken)
    assert len(_drained_ids(data)) == 3  # the first batch: written, then the lease was gone
    assert redis_client.get(lease) == b"another-run"  # not released: it was not this run's
    with pytest.raises(DrainBusy, match="another drain holds the event stream"):
        drain_events(cfg, str(data), t, client=redis_client, root=root)
    redis_client.delete(lease)  # the other run ended
    res = drain_events(cfg, str(data), t, client=redis_client, root=root, batch_size=3)
    assert res["pending"] == 0 and res["quarantined"] == {}
    assert sorted(_drained_ids(data)) == sorted(f"ev-{i}" for i in range(9))
    assert not redis_client.exists(lease)  # released at the end


def test_appended_files_are_atomic_and_hidden_files_are_never_read(data: Path) -> None:
    day = dt.date(2026, 10, 31)
    before = event_files(data)
    t = read_events(data).slice(0, 1)
    t = t.set_column(0, "event_id", pa.array(["appended"]))
    out = append_events(data, day, t, "drain-1-2.parquet")
    assert out["rows"] == 1 and out["path"] == "dt=2026-10-31/drain-1-2.parquet"
    # A temp file of a crashed append, and a marker: neither is listed nor read.
    part = data / "watch_events" / "dt=2026-10-31"
    (part / ".drain-3-4.parquet.tmp-abcd").write_bytes(b"half a file")
    (part / "_SUCCESS").write_bytes(b"")
    assert [f["path"] for f in event_files(data)] == sorted(
        [*(f["path"] for f in before), "dt=2026-10-31/drain-1-2.parquet"]
    )
    assert sorted(read_events(data)["event_id"].to_pylist()) == ["appended", "g1"]
    assert event_files(data, dt.date(2026, 11, 1), dt.date(2026, 11, 2)) == []
    with pytest.raises(ValueError, match="visible name"):
        append_events(data, day, t, ".hidden.parquet")


def test_the_drain_loads_no_stage_torch_or_spark_and_the_core_not_it() -> None:
    """Streaming reads what the batch stages published; neither side imports the other."""
    code = (
        "import sys, json, videorec.streaming, videorec.dataset, videorec.contract;"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    stages = ("features", "training", "indexing", "precompute", "evaluation", "serving")
    banned = ("torch", "pyspark", *(f"videorec.{s}" for s in stages))
    assert [m for m in loaded if m.split(".")[0] in banned or m.startswith(banned)] == []
    code = "import sys, videorec.dataset, videorec.contract; print('videorec.streaming' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_the_cli_refuses_a_missing_data_set_with_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "videorec"), "drain-events", "--data", str(missing),
         "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] == "bad_input" and str(missing) in out["message"]


def test_the_drain_cli_lands_events_on_an_s3_event_log_once_each(
    data: Path, redis_client: Any, redis_url: str, root: str, s3_endpoint: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Production's layout: ``data.dir`` is an ``s3://`` URI (conf/prod.yaml). The CLI
    resolves it as a URI, the drain's files and its quarantine land in the bucket, and
    the project's reader finds each event once; a second run writes nothing."""
    import yaml
    from conftest import moto_env, s3_client, upload_tree

    client, bucket = s3_client(s3_endpoint), "drain-s3"
    client.create_bucket(Bucket=bucket)
    upload_tree(client, bucket, data, "data")
    aws = moto_env(s3_endpoint)
    conf = tmp_path / "s3.yaml"
    conf.write_text(yaml.safe_dump({
        "artifacts": {"root": str(tmp_path / "artifacts")}, "data": {"dir": f"s3://{bucket}/data"},
        "redis": {"url": redis_url}, "precompute": {"key_prefix": root},
    }))  # fmt: skip
    t = _now(redis_client)
    _xadd(redis_client, root, [_event(i, t) for i in range(25)])
    _xadd(redis_client, root, [_event(25, t, event_type="view")])  # quarantined

    def drain() -> dict[str, Any]:
        exe = str(Path(sys.executable).parent / "videorec")
        args = [exe, "drain-events", "--config", str(conf), "--json", "--batch-size", "10",
                "--at", t.isoformat()]  # fmt: skip
        p = subprocess.run(args, capture_output=True, text=True, timeout=300,
                           env={**os.environ, **aws})  # fmt: skip
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
        return json.loads(p.stdout)

    res = drain()
    assert res["read"] == 26 and res["acked"] == 26 and res["pending"] == 0
    assert sum(res["written"].values()) == 25
    assert res["quarantined"] == {"unknown_event_type": 1}
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(k for k in keys if k.startswith("data/watch_events/") and "/drain-" in k) == (
        sorted(f"data/{f}" for f in res["files"])
    )
    assert any(k.startswith("data/_quarantine/drain/watch_events/") for k in keys), keys
    assert not (tmp_path / "s3:").exists()  # the URI was not taken for a local path
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    drained = read_events(f"s3://{bucket}/data")["event_id"].to_pylist()
    assert sorted(drained) == sorted(["g1", *(f"ev-{i}" for i in range(25))])
    again = drain()
    assert again["read"] == 0 and again["files"] == []
