"""The features GC (features/retention.py) on a hand-built store, local and S3.

The store holds a month of incremental features versions, each listing the day
histories of its window, one old version a stored index's model was trained on, and
histories back to two months before the date: what goes and what stays is known.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, LocalArtifactStore
from videorec.config import parse_config
from videorec.features.retention import collect_features
from videorec.retention import RetentionError

DATE = dt.date(2026, 11, 1)
WINDOW = 10
SERVED = dt.date(2026, 10, 25)  # the old features version a stored index reaches


def _day(d: dt.date, n: int) -> dt.date:
    return d - dt.timedelta(days=n)


def _hist(d: dt.date) -> str:
    return f"{d.isoformat()}_h{d.day:02d}"


def _features(d: dt.date) -> str:
    return f"{d.isoformat()}_f{d.day:02d}"


def _put(store: ArtifactStore, name: str, version: str, **manifest: Any) -> None:
    with store.write_version(name, version, manifest) as out:
        (out / "part-0.parquet").write_bytes(b"x")


def build_store(store: ArtifactStore) -> None:
    """Features versions of 2026-10-22 .. 2026-11-02 (each listing its window's
    histories), histories of 2026-10-12 .. 2026-11-01, an index → model → the
    2026-10-25 version, an index whose model is gone, and a version by hand."""
    for n in range(-1, WINDOW + 1):  # 2026-11-02 (after the date) back to 2026-10-22
        d = _day(DATE, n)
        days = [
            [_day(d, k).isoformat(), f"day-{k}", _hist(_day(d, k))] for k in range(1, WINDOW + 1)
        ]
        _put(store, names.FEATURES, _features(d), date=d.isoformat(), days=days)
    _put(store, names.FEATURES, "by-hand", date=DATE.isoformat())  # no date in its name
    for n in range(0, 2 * WINDOW + 1):
        _put(store, names.FEATURES_HISTORY, _hist(_day(DATE, n)))
    _put(store, names.MODEL, "m-old", features_version=_features(SERVED))
    _put(store, names.INDEX, "m-old.i1", model_version="m-old")
    _put(store, names.INDEX, "m-gone.i1", model_version="m-gone")


def expected_deleted() -> dict[str, list[str]]:
    """keep_days 3 at 2026-11-01: features before 2026-10-30 go, except the served
    2026-10-25; histories before 2026-10-22 go, except those a kept version lists."""
    kept_features = [_day(DATE, n) for n in range(-1, 3)] + [SERVED]
    listed = {_hist(_day(d, k)) for d in kept_features for k in range(1, WINDOW + 1)}
    features = [_features(_day(DATE, n)) for n in range(3, WINDOW + 1) if _day(DATE, n) != SERVED]
    histories = [
        _hist(_day(DATE, n))
        for n in range(WINDOW + 1, 2 * WINDOW + 1)
        if _hist(_day(DATE, n)) not in listed
    ]
    return {names.FEATURES: sorted(features), names.FEATURES_HISTORY: sorted(histories)}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return LocalArtifactStore(tmp_path / "store")


def _cfg(keep_days: int = 3) -> Any:
    return parse_config(
        {"artifacts": {"keep_features_days": keep_days}, "features": {"window_days": WINDOW}}
    )


def test_collects_what_nothing_live_reads_and_keeps_the_rest(store: ArtifactStore) -> None:
    build_store(store)
    want = expected_deleted()
    assert want[names.FEATURES] and want[names.FEATURES_HISTORY]  # the case is not empty
    before = {n: store.list_versions(n) for n in (names.FEATURES, names.FEATURES_HISTORY)}
    dry = collect_features(store, _cfg(), DATE, grace_s=0, dry_run=True)
    assert {n: sorted(v) for n, v in dry["deleted"].items()} == want
    assert {n: store.list_versions(n) for n in before} == before  # a dry run deletes nothing

    res = collect_features(store, _cfg(), DATE, grace_s=0)
    assert {n: sorted(v) for n, v in res["deleted"].items()} == want
    assert res["keep_from"] == "2026-10-30"
    assert res["served"] == {_features(SERVED): "m-old.i1"}
    assert len(res["problems"]) == 1 and "m-gone.i1" in res["problems"][0]
    for name, versions in before.items():
        assert store.list_versions(name) == sorted(set(versions) - set(want[name]))
    assert "by-hand" in store.list_versions(names.FEATURES)
    # Every remaining features version can still read each history it lists.
    for version in store.list_versions(names.FEATURES):
        for _d, _v, history in store.read_manifest(names.FEATURES, version).get("days", []):
            assert store.exists(names.FEATURES_HISTORY, history), (version, history)
    # Again: nothing more to do.
    again = collect_features(store, _cfg(), DATE, grace_s=0)
    assert again["deleted"] == {names.FEATURES: [], names.FEATURES_HISTORY: []}


def test_versions_within_the_grace_are_kept(tmp_path: Path) -> None:
    """A run that has just written its (old-dated) version and is about to train on it."""
    store = LocalArtifactStore(tmp_path / "store")
    build_store(store)
    res = collect_features(store, _cfg(), DATE, grace_s=3600)
    assert res["deleted"] == {names.FEATURES: [], names.FEATURES_HISTORY: []}


def test_two_collections_at_once_delete_each_version_once_and_fail_neither(
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    build_store(store)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(collect_features(store, _cfg(), DATE, grace_s=0))
        except BaseException as err:  # reported below, in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    want = expected_deleted()
    for name, versions in want.items():
        assert not set(versions) & set(store.list_versions(name))


def test_a_new_version_committed_during_the_collection_keeps_its_histories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill commits a version listing old histories after the GC listed the
    features versions: the histories are read from the versions listed after the
    deletes, so its histories stay."""
    import videorec.features.retention as retention

    store = LocalArtifactStore(tmp_path / "store")
    build_store(store)
    old = _day(DATE, 2 * WINDOW - 3)  # its histories (2026-10-12 .. 10-14): no other lists
    backfill = [[_day(old, k).isoformat(), f"day-{k}", _hist(_day(old, k))] for k in range(1, 4)]
    assert set(h for _d, _v, h in backfill) <= set(expected_deleted()[names.FEATURES_HISTORY])
    real_sweep = retention.sweep

    def sweep_then_commit(s: ArtifactStore, name: str, **kw: Any) -> list[str]:
        gone = real_sweep(s, name, **kw)
        if name == names.FEATURES:  # the backfill commits between the two sweeps
            _put(s, names.FEATURES, _features(old), date=old.isoformat(), days=backfill)
        return gone

    monkeypatch.setattr(retention, "sweep", sweep_then_commit)
    collect_features(store, _cfg(), DATE, grace_s=0)
    for _d, _v, history in backfill:
        assert store.exists(names.FEATURES_HISTORY, history), history


def test_keep_days_below_one_is_refused() -> None:
    with pytest.raises(RetentionError, match="keep_days must be at least 1"):
        collect_features(LocalArtifactStore("/nonexistent"), _cfg(), DATE, keep_days=0)
    with pytest.raises(ValueError, match="keep_features_days"):
        _cfg(keep_days=0)


def test_cli_gc_dry_run_then_gc_and_a_bad_keep_days(tmp_path: Path) -> None:
    """`videorec features gc`: JSON out, exit 2 naming a bad --keep-days, nothing lost."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    build_store(store)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"artifacts": {"root": str(tmp_path / "artifacts")},
                                    "features": {"window_days": WINDOW}}))  # fmt: skip
    exe = str(Path(sys.executable).parent / "videorec")

    def cli(*args: str) -> tuple[int, Any]:
        p = subprocess.run([exe, "features", "gc", "--date", DATE.isoformat(), "--config",
                            str(conf), *args], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "Traceback" not in p.stderr, p.stderr
        return p.returncode, json.loads(p.stdout) if "--json" in args else p.stdout

    before = store.list_versions(names.FEATURES)
    bad_date = subprocess.run([exe, "features", "gc", "--date", "2026-13-01", "--config", str(conf)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad_date.returncode == 2 and "not a date (YYYY-MM-DD): '2026-13-01'" in bad_date.stderr
    code, out = cli("--keep-days", "0", "--json")
    assert code == 2 and "keep_days must be at least 1" in out["message"], out
    # The versions were all written just now: the 6-hour grace keeps every one.
    code, out = cli("--keep-days", "3", "--dry-run", "--json")
    assert code == 0 and out["dry_run"] and out["deleted"][names.FEATURES] == [], out
    code, text = cli("--keep-days", "3")
    assert code == 0 and "features: deleted 0" in text and "2026-10-30" in text, text
    assert store.list_versions(names.FEATURES) == before


def test_the_run_s_step_logs_and_returns_versions_only(tmp_path: Path) -> None:
    """The retrain's last task: its XCom holds versions and a date, its log the counts."""
    from videorec.features.retention import collect_for_run

    cfg = parse_config({"artifacts": {"root": str(tmp_path / "artifacts")}})
    build_store(LocalArtifactStore(tmp_path / "artifacts"))
    said: list[str] = []
    res = collect_for_run(cfg, DATE, log=said.append)
    assert res == {"deleted": {names.FEATURES: [], names.FEATURES_HISTORY: []},
                   "keep_from": "2026-10-26"}  # fmt: skip
    assert "deleted features 0, features-history 0" in said[-1] and "m-gone.i1" in said[-1]
