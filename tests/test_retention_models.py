"""The model GCs (training/retention.py, ranking/retention.py) on a hand-built store,
local and S3, and `videorec models gc`.

The store holds two weeks of two-tower, ranker and ranking-examples versions, an old
model a stored index was built from, an index naming no model, the ranker pointer on
an old ranker (a rollback) with its previous one, examples no ranker was trained on,
and versions written by hand: what goes and what stays is known.
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
from videorec.ranking.publish import publish_ranker
from videorec.ranking.retention import collect_rankers
from videorec.retention import RetentionError
from videorec.training.retention import collect_models

DATE = dt.date(2026, 11, 1)
DAYS = [DATE - dt.timedelta(days=n) for n in range(-1, 13)]  # 2026-11-02 .. 10-20
SERVED_MODEL = dt.date(2026, 10, 22)  # a stored index was built from it
SERVED_RANKER, PREVIOUS_RANKER = dt.date(2026, 10, 24), dt.date(2026, 10, 21)
KEEP_FROM = dt.date(2026, 10, 30)  # keep_days 3 at DATE


def _v(d: dt.date, kind: str) -> str:
    return f"{d.isoformat()}_{kind}"


def _put(store: ArtifactStore, name: str, version: str, **manifest: Any) -> None:
    with store.write_version(name, version, manifest) as out:
        (out / "payload.bin").write_bytes(b"x")


def build_store(store: ArtifactStore) -> None:
    for d in DAYS:
        _put(store, names.MODEL, _v(d, "m"), date=d.isoformat())
        _put(store, names.RANKING_EXAMPLES, _v(d, "e"), date=d.isoformat(),
             model_version=_v(d, "m"))  # fmt: skip
        _put(store, names.RANKER, _v(d, "r"), date=d.isoformat(), examples_version=_v(d, "e"))
    _put(store, names.RANKING_EXAMPLES, "2026-10-23_orphan", date="2026-10-23")
    for name in (names.MODEL, names.RANKER, names.RANKING_EXAMPLES):
        _put(store, name, "by-hand")  # no date in its name: never collected
    _put(store, names.INDEX, "i-served", model_version=_v(SERVED_MODEL, "m"))
    _put(store, names.INDEX, "i-nameless")  # names no model: a problem, nothing kept for it
    publish_ranker(store, _v(PREVIOUS_RANKER, "r"))
    publish_ranker(store, _v(SERVED_RANKER, "r"))


def expected() -> dict[str, list[str]]:
    old = [d for d in DAYS if d < KEEP_FROM]
    rankers = [_v(d, "r") for d in old if d not in (SERVED_RANKER, PREVIOUS_RANKER)]
    examples = [_v(d, "e") for d in old if d not in (SERVED_RANKER, PREVIOUS_RANKER)]
    return {
        names.MODEL: sorted(_v(d, "m") for d in old if d != SERVED_MODEL),
        names.RANKER: sorted(rankers),
        names.RANKING_EXAMPLES: sorted([*examples, "2026-10-23_orphan"]),
    }


MLFLOW_KEYS = ("mlflow videorec-two-tower", "mlflow videorec-ranker")  # nothing registered


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return LocalArtifactStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def _tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every config here tracks in this test's own MLflow store (never the repo's)."""
    monkeypatch.setattr(sys.modules[__name__], "TRACKING", f"sqlite:///{tmp_path}/mlflow.db")


TRACKING = ""


def _cfg(keep_days: int = 3, root: str = "var/artifacts", **artifacts: Any) -> Any:
    return parse_config({
        "artifacts": {"root": root, "keep_model_days": keep_days, **artifacts},
        "mlflow": {"tracking_uri": TRACKING},
    })  # fmt: skip


def _collect(store: ArtifactStore, **kw: Any) -> dict[str, list[str]]:
    """Both collectors, as `videorec models gc` runs them: {name: sorted deleted}."""
    out = {}
    for collect in (collect_models, collect_rankers):
        res = collect(store, _cfg(), DATE, **kw)
        assert res["keep_from"] == KEEP_FROM.isoformat()
        out.update({n: sorted(v) for n, v in res["deleted"].items()})
    return out


def _listed(store: ArtifactStore) -> dict[str, list[str]]:
    return {n: store.list_versions(n) for n in expected()}


def _none() -> dict[str, list[str]]:
    return {n: [] for n in [*expected(), *MLFLOW_KEYS]}


def test_collects_what_nothing_live_reads_and_keeps_the_rest(store: ArtifactStore) -> None:
    build_store(store)
    want = expected()
    assert all(want.values())  # the case is not empty
    before = _listed(store)
    assert _collect(store, grace_s=0, dry_run=True) == {**want, **{k: [] for k in MLFLOW_KEYS}}
    assert _listed(store) == before  # a dry run deletes nothing

    models = collect_models(store, _cfg(), DATE, grace_s=0)
    assert models["served"] == {_v(SERVED_MODEL, "m"): "i-served"}
    assert models["problems"] == ["index i-nameless names no model_version"]
    rankers = collect_rankers(store, _cfg(), DATE, grace_s=0)
    assert rankers["served"] == sorted([_v(SERVED_RANKER, "r"), _v(PREVIOUS_RANKER, "r")])
    got = {n: sorted(v) for r in (models, rankers) for n, v in r["deleted"].items()}
    assert got == {**want, **{k: [] for k in MLFLOW_KEYS}}
    for name, versions in before.items():
        assert store.list_versions(name) == sorted(set(versions) - set(want[name]))
        assert "by-hand" in store.list_versions(name)
    # What is live still reads: the index's model, the pointer's rankers and the
    # examples of every ranker left.
    assert store.exists(names.MODEL, _v(SERVED_MODEL, "m"))
    for version in store.list_versions(names.RANKER):
        examples = store.read_manifest(names.RANKER, version).get("examples_version")
        assert examples is None or store.exists(names.RANKING_EXAMPLES, examples), version
    assert _collect(store, grace_s=0) == _none()  # again: nothing to do


def test_versions_within_the_grace_are_kept(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    build_store(store)
    assert _collect(store, grace_s=3600) == _none()


def test_two_collections_at_once_delete_each_version_once_and_fail_neither(
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    build_store(store)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _collect(store, grace_s=0)
        except BaseException as err:  # reported below, in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, versions in expected().items():
        assert not set(versions) & set(store.list_versions(name))


def test_a_ranker_committed_during_the_collection_keeps_its_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ranker trained (by hand, on old examples) commits after the rankers' sweep: the
    examples still needed are read from the rankers listed after it, so its stay."""
    import videorec.ranking.retention as retention

    store = LocalArtifactStore(tmp_path / "store")
    build_store(store)
    old_examples = _v(dt.date(2026, 10, 26), "e")
    assert old_examples in expected()[names.RANKING_EXAMPLES]
    real_sweep = retention.sweep

    def sweep_then_commit(s: ArtifactStore, name: str, **kw: Any) -> list[str]:
        gone = real_sweep(s, name, **kw)
        if name == names.RANKER:
            _put(s, names.RANKER, "2026-11-01_late", date="2026-11-01",
                 examples_version=old_examples)  # fmt: skip
        return gone

    monkeypatch.setattr(retention, "sweep", sweep_then_commit)
    collect_rankers(store, _cfg(), DATE, grace_s=0)
    assert store.exists(names.RANKING_EXAMPLES, old_examples)


def test_keep_days_below_one_is_refused_and_nothing_goes(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    build_store(store)
    before = _listed(store)
    for collect in (collect_models, collect_rankers):
        with pytest.raises(RetentionError, match="keep_days must be at least 1"):
            collect(store, _cfg(), DATE, keep_days=0, grace_s=0)
    assert _listed(store) == before
    with pytest.raises(ValueError, match="keep_model_days"):
        _cfg(keep_days=0)


def test_cli_models_gc(tmp_path: Path) -> None:
    """`videorec models gc`: JSON out, exit 2 naming a bad --keep-days, a bad --date or
    a missing action, nothing lost; the versions were all written just now, so the
    6-hour grace keeps every one."""
    root = tmp_path / "artifacts"
    store = LocalArtifactStore(root)
    build_store(store)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"artifacts": {"root": str(root)},
                                    "mlflow": {"tracking_uri": TRACKING}}))  # fmt: skip
    exe = str(Path(sys.executable).parent / "videorec")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([exe, "models", *args, "--config", str(conf)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "Traceback" not in p.stderr, p.stderr
        return p

    before = _listed(store)
    p = cli("gc", "--date", DATE.isoformat(), "--keep-days", "0", "--json")
    assert p.returncode == 2 and "keep_days must be at least 1" in json.loads(p.stdout)["message"]
    p = cli("gc", "--date", "2026-11-31")
    assert p.returncode == 2 and "not a date (YYYY-MM-DD): '2026-11-31'" in p.stderr
    p = cli("--date", DATE.isoformat())
    assert p.returncode == 2 and "action" in p.stderr
    p = cli("gc", "--date", DATE.isoformat(), "--keep-days", "3", "--dry-run", "--json")
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["models"]["dry_run"] and out["rankers"]["dry_run"], out
    assert out["models"]["deleted"] == {names.MODEL: [], MLFLOW_KEYS[0]: []}
    assert out["rankers"]["served"] == sorted([_v(SERVED_RANKER, "r"), _v(PREVIOUS_RANKER, "r")])
    p = cli("gc", "--date", DATE.isoformat(), "--keep-days", "3")
    assert p.returncode == 0, p.stderr
    for text in ("models/two-tower: deleted 0", "models/ranker: deleted 0",
                 "ranking-examples: deleted 0", "every date from 2026-10-30",
                 "index i-nameless names no model_version"):  # fmt: skip
        assert text in p.stdout, p.stdout
    assert _listed(store) == before


def test_the_run_s_steps_log_and_return_versions_only(tmp_path: Path) -> None:
    """The retrain's tasks: their XComs hold versions and a date, their logs the counts."""
    from videorec.ranking.retention import collect_for_run as rankers_for_run
    from videorec.training.retention import collect_for_run as models_for_run

    cfg = parse_config({"artifacts": {"root": str(tmp_path / "artifacts")},
                        "mlflow": {"tracking_uri": TRACKING}})  # fmt: skip
    build_store(LocalArtifactStore(tmp_path / "artifacts"))
    said: list[str] = []
    assert models_for_run(cfg, DATE, log=said.append) == {
        "deleted": {names.MODEL: [], MLFLOW_KEYS[0]: []}, "keep_from": "2026-10-26"}  # fmt: skip
    assert "models collected as of 2026-11-01: deleted models/two-tower 0" in said[-1]
    assert "i-nameless" in said[-1]
    res = rankers_for_run(cfg, DATE, log=said.append)
    assert res == {"deleted": {names.RANKER: [], names.RANKING_EXAMPLES: [], MLFLOW_KEYS[1]: []},
                   "keep_from": "2026-10-26"}  # fmt: skip
    assert "deleted models/ranker 0, ranking-examples 0, mlflow videorec-ranker 0" in said[-1]


def _register(cfg: Any, name: str, artifact_version: str, folder: str, tmp: Path) -> Any:
    """A run logging one file under ``folder``, registered as a version of ``name``
    tagged with its store version, as the gate registers one."""
    import mlflow
    from mlflow import MlflowClient

    from videorec.training.registry import start_run, tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    payload = tmp / f"{artifact_version}.bin"
    payload.write_bytes(b"weights")
    with start_run(cfg, artifact_version) as run:
        mlflow.log_artifact(str(payload), folder)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(
        name, f"{run.info.artifact_uri}/{folder}", run_id=run.info.run_id,
        tags={"artifact_version": artifact_version},
    )  # fmt: skip
    return mv


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_registry_s_copies_go_with_the_store_s_versions_unless_an_alias_holds_them(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run artifacts behind registered versions (the gate's champion is loaded from
    there) go when their store version went, unless an alias holds them; the run, the
    version and its tags stay, tagged ``artifacts_deleted``."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from videorec.training.registry import ARTIFACTS_DELETED_TAG, tracking_uri

    if kind == "s3":
        store = request.getfixturevalue("s3_store")
        endpoint = request.getfixturevalue("s3_endpoint")
        for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                           ("AWS_DEFAULT_REGION", "us-east-1"), ("MLFLOW_S3_ENDPOINT_URL", "-")):  # fmt: skip
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")  # restored to absent after
        cfg = _cfg(root=f"s3://{store.bucket}/{store.prefix}", s3_endpoint_url=endpoint)
    else:
        store = LocalArtifactStore(tmp_path / "store")
        cfg = _cfg(root=str(tmp_path / "store"))
    build_store(store)
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    two_tower, ranker = cfg.mlflow.registered_model, cfg.mlflow.registered_ranker
    # Registered: a recent model (kept), two old ones of which one is the champion, and
    # an old ranker (the store's is collected) and the pointer's ranker (kept).
    mvs = {v: _register(cfg, two_tower, v, "model", tmp_path)
           for v in (_v(DATE, "m"), _v(dt.date(2026, 10, 25), "m"), _v(dt.date(2026, 10, 26), "m"))}  # fmt: skip
    client.set_registered_model_alias(
        two_tower, "champion", mvs[_v(dt.date(2026, 10, 26), "m")].version
    )
    old_ranker = _register(cfg, ranker, _v(dt.date(2026, 10, 27), "r"), "ranker", tmp_path)
    served_ranker = _register(cfg, ranker, _v(SERVED_RANKER, "r"), "ranker", tmp_path)

    dry = _collect(store, grace_s=0, dry_run=True)
    assert dry[MLFLOW_KEYS[0]] == [_v(dt.date(2026, 10, 25), "m")]
    assert dry[MLFLOW_KEYS[1]] == [_v(dt.date(2026, 10, 27), "r")]
    got = _collect(store, grace_s=0)
    assert got == {
        **expected(),
        MLFLOW_KEYS[0]: dry[MLFLOW_KEYS[0]],
        MLFLOW_KEYS[1]: dry[MLFLOW_KEYS[1]],
    }

    def readable(mv: Any) -> bool:
        try:
            download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / f"dl{mv.name}{mv.version}"),
                               tracking_uri=tracking_uri(cfg))  # fmt: skip
        except Exception:  # MLflow raises its own or the file system's errors
            return False
        return True

    gone = [mvs[_v(dt.date(2026, 10, 25), "m")], old_ranker]
    for mv in gone:
        assert not readable(mv), mv.source
        tags = client.get_model_version(mv.name, mv.version).tags
        assert tags[ARTIFACTS_DELETED_TAG] == DATE.isoformat()
        assert tags["artifact_version"]  # the version and its tags stay
    for mv in [*mvs.values(), served_ranker]:
        if mv not in gone:
            assert readable(mv), mv.source  # recent, the champion, the served ranker
    assert _collect(store, grace_s=0) == _none()  # again: nothing left to do
