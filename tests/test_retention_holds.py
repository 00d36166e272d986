"""Holds and marks (``videorec.retention``): a reader using an old version while a
collection runs beside it keeps the version, or finds it gone before reading it;
never half deleted. The store is local and S3 for the protocol; the collectors are the
real ones (models, rankers, the feature stage's day caches) with the reader run at the
two moments that matter: between the collection's first look at its roots and its
marks, and after its marks."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

import videorec.retention as retention
from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, LocalArtifactStore, VersionNotFoundError
from videorec.config import parse_config
from videorec.retention import (
    VersionCollectingError,
    held_versions,
    hold,
    holding,
    release,
    sweep,
)

DATE = dt.date(2026, 11, 1)
OLD = "2026-10-01_old"  # older than every kept date below


def _put(store: ArtifactStore, name: str, version: str, **manifest: Any) -> None:
    with store.write_version(name, version, manifest) as out:
        (out / "payload.bin").write_bytes(b"x")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return LocalArtifactStore(tmp_path / "store")


def _sweep(store: ArtifactStore, roots: Any = (), **kw: Any) -> list[str]:
    return sweep(store, names.MODEL, before=DATE, roots=roots, grace_s=0, **kw)


def test_a_held_version_outlives_every_sweep_until_released(store: ArtifactStore) -> None:
    _put(store, names.MODEL, OLD)
    with holding(store, {names.MODEL: [OLD, None]}, why="a reader"):
        assert held_versions(store, names.MODEL) == {OLD}
        assert _sweep(store, dry_run=True) == []
        assert _sweep(store) == []
        assert store.exists(names.MODEL, OLD)
    assert held_versions(store, names.MODEL) == set()
    assert _sweep(store, dry_run=True) == [OLD]
    assert _sweep(store) == [OLD]
    assert not store.exists(names.MODEL, OLD)
    state = store.get_pointer(f"{names.HOLDS_POINTER}/{names.MODEL}")
    assert state["holds"] == {} and state["marks"] == {}  # nothing left behind


def test_a_hold_asked_for_during_the_deletes_waits_then_is_refused_naming_it(
    store: ArtifactStore,
) -> None:
    _put(store, names.MODEL, OLD)
    calls: list[int] = []
    refused: list[str] = []

    def roots() -> set[str]:  # read once before the marks and once after them
        calls.append(1)
        if len(calls) == 2:
            t0 = time.monotonic()
            with pytest.raises(VersionCollectingError) as err:
                hold(store, names.MODEL, [OLD], why="a late reader", wait_s=0.3)
            assert time.monotonic() - t0 >= 0.3  # it waited for the marks first
            refused.append(str(err.value))
        return set()

    assert _sweep(store, roots) == [OLD]
    assert len(calls) == 2 and OLD in refused[0] and "being deleted" in refused[0]
    # Once the collection is done the hold is taken, and the reader finds it gone.
    with holding(store, {names.MODEL: [OLD]}, why="the reader again", wait_s=0):
        assert not store.exists(names.MODEL, OLD)


def test_a_root_written_before_the_marks_keeps_its_version(store: ArtifactStore) -> None:
    """The roots are read again after the marks: a reader that held, published what
    makes the version a root and released, all before the marks, keeps it."""
    _put(store, names.MODEL, OLD)
    published: set[str] = set()

    def roots() -> set[str]:
        seen = set(published)
        if not published:  # the first look: the reader finishes right after it
            with holding(store, {names.MODEL: [OLD]}, why="a reader"):
                published.add(OLD)
        return seen

    assert _sweep(store, roots) == []
    assert store.exists(names.MODEL, OLD)


def test_a_hold_waits_out_a_dead_collection_s_mark(store: ArtifactStore) -> None:
    """A collection that died leaves its mark; a reader waits until it expires (or is
    lifted), then holds. An expired hold keeps nothing."""
    _put(store, names.MODEL, OLD)
    t0 = time.time()  # before the mark: it expires no sooner than t0 + 1 s
    assert retention._mark(store, names.MODEL, [OLD], "dead", ttl_s=1.0) == [OLD]
    hold_id = hold(store, names.MODEL, [OLD], why="a reader", wait_s=30)
    assert 1.0 <= time.time() - t0 < 20
    release(store, names.MODEL, hold_id)
    release(store, names.MODEL, hold_id)  # twice: fine
    # A mark lifted by its collection lets a waiting reader in at once.
    assert retention._mark(store, names.MODEL, [OLD], "live", ttl_s=600) == [OLD]
    got: list[str] = []
    waiter = threading.Thread(
        target=lambda: got.append(hold(store, names.MODEL, [OLD], why="waits", wait_s=30))
    )
    waiter.start()
    time.sleep(0.5)
    assert not got  # still waiting on the live mark
    retention._unmark(store, names.MODEL, "live")
    waiter.join(30)
    assert got and held_versions(store, names.MODEL) == {OLD}
    release(store, names.MODEL, got[0])
    hold(store, names.MODEL, [OLD], why="a reader that died", ttl_s=0.0)
    assert _sweep(store) == [OLD]


# ---- the real collectors, with a reader beside them


def _cfg(tmp: Path, **extra: Any) -> Any:
    return parse_config({
        "artifacts": {"root": str(tmp / "artifacts"), "keep_model_days": 3},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
        **extra,
    })  # fmt: skip


def _interleave(monkeypatch: pytest.MonkeyPatch, module: Any, fn: str, at: int, act: Any) -> None:
    """Run ``act()`` right after the ``at``-th call of ``module.fn`` (the collector's
    look at its roots: 1 its report's, 2 the sweep's before the marks, 3 after)."""
    real, calls = getattr(module, fn), []

    def wrapped(*args: Any) -> Any:
        calls.append(1)
        out = real(*args)
        if len(calls) == at:
            act()
        return out

    monkeypatch.setattr(module, fn, wrapped)


@pytest.mark.parametrize("when", ["before the marks", "after the marks"])
def test_a_rollback_by_hand_beside_a_ranker_collection(
    when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import videorec.ranking.retention as ranking_retention
    from videorec.ranking.publish import RankerPublishError, publish_ranker

    cfg = _cfg(tmp_path)
    store = LocalArtifactStore(tmp_path / "artifacts")
    for version in (OLD, "2026-11-01_new"):
        _put(store, names.RANKER, version, date=version[:10])
    publish_ranker(store, "2026-11-01_new")
    outcome: list[Any] = []

    def rollback() -> None:
        try:
            outcome.append(publish_ranker(store, OLD, force=True))
        except (VersionCollectingError, RankerPublishError) as err:
            outcome.append(err)

    monkeypatch.setattr(retention, "HOLD_WAIT_S", 0.3)
    at = 2 if when == "before the marks" else 3
    _interleave(monkeypatch, ranking_retention, "served_rankers", at, rollback)
    res = ranking_retention.collect_rankers(store, cfg, DATE, grace_s=0)
    live = store.get_pointer(names.RANKER_POINTER)
    if when == "before the marks":  # the pointer, read again, names it: kept, served
        assert outcome[0]["version"] == OLD and live["version"] == OLD
        assert store.exists(names.RANKER, OLD) and res["deleted"][names.RANKER] == []
    else:  # refused naming it; the pointer never named a deleted ranker
        assert isinstance(outcome[0], VersionCollectingError) and OLD in str(outcome[0])
        assert live["version"] == "2026-11-01_new"
        assert res["deleted"][names.RANKER] == [OLD] and not store.exists(names.RANKER, OLD)


@pytest.mark.parametrize("when", ["before the marks", "after the marks"])
def test_an_index_built_by_hand_from_an_old_model_beside_a_model_collection(
    when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build holds its model and the model's features version; the collection
    reads the stored indexes again after its marks."""
    import videorec.indexing.build as build
    import videorec.training.retention as model_retention
    from tests.test_indexing import write_model

    cfg = _cfg(tmp_path, index={"work_dir": str(tmp_path / "work"), "validation_queries": 400,
                                "latency_queries": 20})  # fmt: skip
    store = LocalArtifactStore(tmp_path / "artifacts")
    write_model(store, OLD, 12_000)
    features_held: list[set[str]] = []
    real_build = build._build

    def build_seeing_holds(*args: Any) -> Any:
        features_held.append(held_versions(store, names.FEATURES))
        return real_build(*args)

    monkeypatch.setattr(build, "_build", build_seeing_holds)
    outcome: list[Any] = []

    def build_by_hand() -> None:
        try:
            outcome.append(build.build_index(cfg, model_version=OLD, store=store))
        except (VersionCollectingError, build.IndexBuildError) as err:
            outcome.append(err)

    monkeypatch.setattr(retention, "HOLD_WAIT_S", 0.3)
    at = 2 if when == "before the marks" else 3
    _interleave(monkeypatch, model_retention, "served_models", at, build_by_hand)
    res = model_retention.collect_models(store, cfg, DATE, grace_s=0)
    if when == "before the marks":  # the index, read again, names its model: kept
        assert outcome[0]["model_version"] == OLD and not outcome[0]["skipped"]
        assert store.exists(names.MODEL, OLD) and res["deleted"][names.MODEL] == []
        # The model named no features version (written by hand): nothing else held.
        assert features_held == [set()]
        assert (
            model_retention.collect_models(store, cfg, DATE, grace_s=0)["deleted"][names.MODEL]
            == []
        )  # the index keeps it for good
    else:  # refused before reading anything; no index names the deleted model
        assert isinstance(outcome[0], VersionCollectingError) and OLD in str(outcome[0])
        assert res["deleted"][names.MODEL] == [OLD] and store.list_versions(names.INDEX) == []


def test_an_index_build_holds_its_model_s_features_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import videorec.indexing.build as build

    cfg = _cfg(tmp_path)
    store = LocalArtifactStore(tmp_path / "artifacts")
    _put(store, names.FEATURES, "2026-09-30_f")
    _put(store, names.MODEL, OLD, features_version="2026-09-30_f")
    seen: list[tuple[set[str], set[str]]] = []
    monkeypatch.setattr(build, "_build", lambda *a: seen.append(
        (held_versions(store, names.MODEL), held_versions(store, names.FEATURES))) or {})  # fmt: skip
    build.build_index(cfg, model_version=OLD, store=store)
    assert seen == [({OLD}, {"2026-09-30_f"})]
    assert held_versions(store, names.MODEL) == held_versions(store, names.FEATURES) == set()
    with pytest.raises(build.IndexBuildError, match="2026-12-01_missing: no such model"):
        build.build_index(cfg, model_version="2026-12-01_missing", store=store)
    assert held_versions(store, names.MODEL) == set()  # released on the error too
    # A collection deleted the features version before the build could hold it (the
    # hold waits out the marks, then finds nothing): refused, naming both versions.
    store.delete_version(names.FEATURES, "2026-09-30_f")
    with pytest.raises(VersionNotFoundError, match=f"model {OLD} .* 2026-09-30_f"):
        build.build_index(cfg, model_version=OLD, store=store)
    assert len(seen) == 1  # nothing built
    assert held_versions(store, names.MODEL) == held_versions(store, names.FEATURES) == set()


def test_a_ranker_gate_holds_the_ranker_its_examples_and_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import videorec.ranking.gate as gate

    cfg = _cfg(tmp_path)
    store = LocalArtifactStore(tmp_path / "artifacts")
    _put(store, names.FEATURES, "2026-09-30_f")
    _put(store, names.RANKING_EXAMPLES, "2026-10-01_x")
    _put(store, names.RANKER, OLD, examples_version="2026-10-01_x", features_version="2026-09-30_f")
    seen: list[tuple[set[str], ...]] = []
    monkeypatch.setattr(gate, "_gate", lambda *a: seen.append(tuple(
        held_versions(store, n) for n in (names.RANKER, names.RANKING_EXAMPLES, names.FEATURES)
    )) or {})  # fmt: skip
    gate.gate_ranker(cfg, ranker_version=OLD, store=store)
    assert seen == [({OLD}, {"2026-10-01_x"}, {"2026-09-30_f"})]
    # Its examples collected meanwhile: refused naming them, nothing gated, holds gone.
    store.delete_version(names.RANKING_EXAMPLES, "2026-10-01_x")
    with pytest.raises(gate.RankerGateInputError, match="ranking-examples version 2026-10-01_x"):
        gate.gate_ranker(cfg, ranker_version=OLD, store=store)
    assert len(seen) == 1
    assert all(held_versions(store, n) == set() for n in (names.RANKER, names.FEATURES))


def test_training_holds_its_features_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import videorec.training.train as train

    store = LocalArtifactStore(tmp_path / "artifacts")
    seen: list[set[str]] = []
    monkeypatch.setattr(train, "_train", lambda *a: seen.append(
        held_versions(store, names.FEATURES)) or {})  # fmt: skip
    train.train_two_tower(_cfg(tmp_path), features_version="2026-09-30_f", store=store)
    assert seen == [{"2026-09-30_f"}] and held_versions(store, names.FEATURES) == set()


def test_a_precompute_holds_its_model_and_features_then_checks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before the hold (resolve_versions), then again once held: a collection
    that deleted the features version in between is named, nothing is written."""
    import videorec.precompute.run as run

    store = LocalArtifactStore(tmp_path / "artifacts")
    _put(store, names.FEATURES, "2026-09-30_f", data=str(tmp_path / "data"))
    _put(store, names.MODEL, OLD, features_version="2026-09-30_f")
    _put(store, names.INDEX, "i1", gate="passed", model_version=OLD)
    seen: list[tuple[set[str], set[str]]] = []

    class Stop(Exception):
        pass

    def load_inputs(*a: Any) -> Any:
        seen.append((held_versions(store, names.MODEL), held_versions(store, names.FEATURES)))
        raise Stop

    monkeypatch.setattr(run, "load_inputs", load_inputs)
    monkeypatch.setattr(run, "pointer_or_skip", lambda *a: (None, None))
    monkeypatch.setattr(run, "connect", lambda cfg: (None, "none"))
    # No Redis here: the generation's lease (tests/test_precompute.py) is held by a stub.
    lease = SimpleNamespace(release=lambda: None)
    monkeypatch.setattr(run, "claim_generation", lambda *a: (lease, None, None))
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with pytest.raises(Stop):
        run.precompute(_cfg(tmp_path), index_version="i1", logical_time=at, store=store)
    assert seen == [({OLD}, {"2026-09-30_f"})]
    real_resolve = run.resolve_versions

    def resolve_then_collected(*a: Any) -> Any:
        out = real_resolve(*a)
        store.delete_version(names.FEATURES, "2026-09-30_f")  # the collection, in between
        return out

    monkeypatch.setattr(run, "resolve_versions", resolve_then_collected)
    monkeypatch.setattr(run, "input_data", lambda *a: "data")
    with pytest.raises(run.PrecomputeInputError, match="2026-09-30_f' does not exist"):
        run.precompute(_cfg(tmp_path), index_version="i1", logical_time=at, store=store)
    assert len(seen) == 1
    assert held_versions(store, names.MODEL) == held_versions(store, names.FEATURES) == set()


def test_a_backfill_holds_the_day_caches_it_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A features run of an old date holds the day, history and recent-list versions
    its window reads: a collection of a much later date beside it keeps them; once the
    run is over the same collection deletes them."""
    from videorec.features import incremental

    cfg = _cfg(tmp_path)
    store = LocalArtifactStore(tmp_path / "artifacts")
    old = dt.date(2026, 8, 1)
    plans = [
        incremental.DayPlan(old + dt.timedelta(days=i), (), f"{old + dt.timedelta(days=i)}_d",
                            f"{old + dt.timedelta(days=i)}_h" if i else None)
        for i in range(3)
    ]  # fmt: skip
    for p in plans:
        _put(store, names.FEATURES_DAY, p.version)
        if p.history_version:
            _put(store, names.FEATURES_HISTORY, p.history_version)
            _put(store, names.FEATURES_RECENT, p.history_version)
    later = DATE + dt.timedelta(days=90)
    beside: list[dict[str, list[str]]] = []

    class Stop(Exception):
        """Ends the run once the collection beside it has run: nothing to compute here."""

    def ensure_days(*args: Any, **kw: Any) -> dict[str, Any]:  # the run's first read
        beside.append(incremental.collect_day_caches(store, cfg, later, grace_s=0))
        raise Stop

    monkeypatch.setattr(incremental, "ensure_days", ensure_days)
    ids = {k: SimpleNamespace(valid=pa.table({f"{k[:-1]}_id": [1]})) for k in ("videos", "users")}
    with pytest.raises(Stop):
        incremental.build_features_incremental(
            cfg, "data", old + dt.timedelta(days=3), spark=None, store=store, manifest={},
            plans=plans, version="2026-08-04_v", dims=ids,
        )  # fmt: skip
    assert beside == [{names.FEATURES_DAY: [], names.FEATURES_RECENT: [], names.FEATURES_PLAN: []}]
    after = incremental.collect_day_caches(store, cfg, later, grace_s=0)
    assert after[names.FEATURES_DAY] == [p.version for p in plans]
    assert after[names.FEATURES_RECENT] == [p.history_version for p in plans[1:]]


def test_the_cli_names_a_model_being_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`videorec index build --model M` while a collection's mark names M: exit 2 and
    a JSON body naming M, no traceback; M untouched."""
    import yaml

    from videorec.cli.app import main

    cfg = _cfg(tmp_path)
    store = LocalArtifactStore(tmp_path / "artifacts")
    _put(store, names.MODEL, OLD)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert retention._mark(store, names.MODEL, [OLD], "busy", ttl_s=600) == [OLD]
    monkeypatch.setattr(retention, "HOLD_WAIT_S", 0.2)
    code = main(["index", "build", "--model", OLD, "--config", str(conf), "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 2 and body["error"] == "bad_input", body
    assert OLD in body["message"] and "being deleted by a collection" in body["message"]
    assert store.exists(names.MODEL, OLD)
