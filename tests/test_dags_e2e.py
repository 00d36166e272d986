"""The DAGs run by Airflow itself (`airflow dags test`) on a small platform, end to end.

Real everything: Airflow's metadata database (SQLite under a temp AIRFLOW_HOME, then
PostgreSQL), the feature stage through the Spark provider's spark-submit, tiny
training, FAISS, the MLflow registry (SQLite, then PostgreSQL) and Redis. The runs
are module fixtures; each test reads what one of them left behind.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from videorec.artifacts import open_store
from videorec.config import Config, load_config
from videorec.orchestrator import (
    PRECOMPUTE_DAG,
    RETRAIN_DAG,
    TRENDING_DAG,
    airflow_env,
    dags_test,
    migrate,
)

pytestmark = pytest.mark.slow

LOGICAL = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)  # the small platform's as-of day
MODEL = "dag-e2e"


def _config(tmp: Path, data: Path, redis_url: str, **over: Any) -> dict[str, Any]:
    """A small, fast config with every path under ``tmp``."""
    doc: dict[str, Any] = {
        "artifacts": {"root": str(tmp / "artifacts")},
        "data": {"dir": str(data)},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "registered_model": MODEL},
        "airflow": {"home": str(tmp / "airflow")},
        "redis": {"url": redis_url},
        "spark": {"driver_memory": "1g", "shuffle_partitions": 4},
        "training": {
            "embed_dim": 32, "id_dim": 16, "hidden_dim": 64, "epochs": 2,
            "early_stopping_patience": 1, "batch_size": 512, "text_encoder": "none",
            "text_cache_dir": str(tmp / "text"),
        },
        "index": {"work_dir": str(tmp / "work"), "validation_queries": 300,
                  "latency_queries": 50},
        "precompute": {"key_prefix": f"dage2e{uuid.uuid4().hex[:8]}"},
    }  # fmt: skip
    for section, values in over.items():
        doc[section] = {**doc.get(section, {}), **values}
    return doc


def _write(tmp: Path, name: str, doc: dict[str, Any]) -> tuple[Config, Path]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path), path


def _run(cfg: Config, path: Path, dag_id: str, when: dt.datetime) -> dict[str, Any]:
    env = airflow_env(cfg, config_file=path)
    migrate(env)
    lines: list[str] = []
    outcome = dags_test(dag_id, when, env, echo=lines.append)
    return {**outcome, "log": "\n".join(lines)}


@pytest.fixture(scope="module")
def first(
    small_platform: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One retrain run on SQLite stores."""
    tmp = tmp_path_factory.mktemp("dag-e2e")
    cfg, path = _write(tmp, "a", _config(tmp, small_platform, redis_url))
    return {"cfg": cfg, "path": path, "tmp": tmp, "run": _run(cfg, path, RETRAIN_DAG, LOGICAL)}


def _registry(cfg: Config) -> Any:
    from mlflow import MlflowClient

    from videorec.training.registry import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(cfg))


def _live(cfg: Config) -> dict[str, Any]:
    """What readers see now: the index pointer and the Redis generation pointer."""
    import redis

    from videorec.indexing.slots import read_state
    from videorec.redis_keys import RedisKeys, active_generation

    client = redis.Redis.from_url(cfg.redis.url)
    state = read_state(open_store(cfg))
    return {
        "index": state["slots"][state["active"]]["version"] if state["active"] else None,
        "index_generation": state["generation"],
        "redis": active_generation(client, RedisKeys(cfg.precompute.key_prefix)),
    }


def test_the_retrain_dag_runs_end_to_end_and_publishes(first: dict[str, Any]) -> None:
    import redis

    from videorec.redis_keys import RedisKeys, read_scored

    run, cfg = first["run"], first["cfg"]
    assert run["state"] == "success", run["log"][-3000:]
    assert set(run["tasks"].values()) == {"success"}, run["tasks"]
    x = run["xcom"]
    assert x["train"] == x["gate"] and x["build_index"].startswith(x["train"])
    assert x["plan"]["features_version"].startswith("2026-11-01_")
    live = _live(cfg)
    assert live["index"] == x["build_index"] == x["publish"] and live["index_generation"] == 1
    assert live["redis"] == x["precompute"]
    champion = _registry(cfg).get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["artifact_version"] == x["train"]
    assert champion.tags["gate_decision"] == "promoted"
    client = redis.Redis.from_url(cfg.redis.url)
    keys = RedisKeys(cfg.precompute.key_prefix)
    gen = live["redis"]
    assert len(list(client.scan_iter(f"{keys.namespace(gen)}:u:*:recs", count=1000))) > 100
    some = next(client.scan_iter(f"{keys.namespace(gen)}:v:*:similar", count=1000))
    assert read_scored(client, some.decode()) is not None
    # The tasks' progress reached the log the caller streams.
    assert "refit on all" in run["log"]


def test_a_rerun_of_the_same_date_registers_no_second_model_version(first: dict[str, Any]) -> None:
    """An Airflow re-run (or every task retried): outputs found, nothing new registered."""
    cfg = first["cfg"]
    before = _live(cfg)
    again = _run(cfg, first["path"], RETRAIN_DAG, LOGICAL)
    assert again["state"] == "success", again["log"][-3000:]
    assert again["xcom"]["train"] == first["run"]["xcom"]["train"]
    assert len(_registry(cfg).search_model_versions(f"name = '{MODEL}'")) == 1
    assert _live(cfg) == before  # publish was a no-op: the pointer's generation did not move
    assert "already recorded: promoted" in again["log"]


def test_a_refused_gate_leaves_everything_live_and_says_why(first: dict[str, Any]) -> None:
    """A model that cannot learn (learning rate 1e-9): the gate refuses, nothing is published."""
    tmp = first["tmp"]
    doc = _config(tmp, Path(first["cfg"].data.dir), first["cfg"].redis.url,
                  training={"learning_rate": 1e-9, "epochs": 1})  # fmt: skip
    doc["precompute"] = {"key_prefix": first["cfg"].precompute.key_prefix}
    cfg, path = _write(tmp, "broken", doc)
    before = _live(cfg)
    run = _run(cfg, path, RETRAIN_DAG, LOGICAL)
    t = run["tasks"]
    assert t["train"] == "success" and t["gate"] == "skipped", t
    assert {t[k] for k in ("build_index", "validate_index", "publish", "precompute")} == {"skipped"}
    assert _live(cfg) == before
    assert "gate refused" in run["log"] and "nothing is published" in run["log"]
    client = _registry(cfg)
    refused = client.get_model_version_by_alias(MODEL, "challenger")
    assert refused.tags["gate_decision"] == "refused" and "below" in refused.tags["gate_reason"]
    assert refused.tags["gate_reason"] in run["log"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["artifact_version"] == first["run"]["xcom"]["train"]


def test_the_precompute_and_trending_dags_publish_their_generations(first: dict[str, Any]) -> None:
    import redis

    from videorec.redis_keys import RedisKeys, active_generation, read_ranked

    cfg, path = first["cfg"], first["path"]
    four_am = LOGICAL + dt.timedelta(hours=4)
    pre = _run(cfg, path, PRECOMPUTE_DAG, four_am)
    assert pre["state"] == "success", pre["log"][-3000:]
    assert pre["xcom"]["resolve_inputs"] == {
        "index_version": first["run"]["xcom"]["build_index"], "logical_time": four_am.isoformat()
    }  # fmt: skip
    assert _live(cfg)["redis"] == pre["xcom"]["precompute"] != first["run"]["xcom"]["precompute"]

    quarter = LOGICAL + dt.timedelta(minutes=15)
    tr = _run(cfg, path, TRENDING_DAG, quarter)
    assert tr["state"] == "success", tr["log"][-3000:]
    client = redis.Redis.from_url(cfg.redis.url)
    fresh = RedisKeys.fresh(cfg.precompute.key_prefix)
    gen = active_generation(client, fresh)
    assert gen == tr["xcom"]["refresh"] and gen.startswith("20261101T0015-")
    assert len(read_ranked(client, fresh.trending(gen))) > 10


# ---- PostgreSQL: Airflow's metadata and MLflow's tracking store, fresh databases


def _postgres_admin_url() -> str:
    import os

    return os.environ.get("VIDEOREC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _connect_admin() -> Any:
    """An autocommit connection to the server; starts the machine's cluster if it is down."""
    import glob
    import subprocess
    import time

    import psycopg2

    url = _postgres_admin_url()
    try:
        conn = psycopg2.connect(url, connect_timeout=3)
    except psycopg2.OperationalError:
        versions = [Path(p).name for p in glob.glob("/etc/postgresql/*")]
        for v in versions:  # the machine's cluster, as the environment notes start it
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "start"], check=False
            )
        time.sleep(2)
        try:
            conn = psycopg2.connect(url, connect_timeout=3)
        except psycopg2.OperationalError as err:
            pytest.fail(f"PostgreSQL at {url} is unreachable and could not be started: {err}")
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module")
def postgres_dbs() -> Iterator[dict[str, str]]:
    """Two fresh databases (airflow, mlflow) for this test run, dropped afterwards."""
    from urllib.parse import urlsplit

    conn = _connect_admin()
    tag = uuid.uuid4().hex[:10]
    names = {"airflow": f"videorec_test_airflow_{tag}", "mlflow": f"videorec_test_mlflow_{tag}"}
    base = urlsplit(_postgres_admin_url())
    with conn.cursor() as cur:
        for name in names.values():
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {k: f"postgresql+psycopg2://{base.netloc}/{name}" for k, name in names.items()}
    finally:
        with conn.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def test_one_retrain_run_on_postgresql_stores(
    small_platform: Path, redis_url: str, postgres_dbs: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    """The prod layout: Airflow's metadata and the MLflow registry and gate on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("dag-e2e-pg")
    doc = _config(tmp, small_platform, redis_url,
                  mlflow={"tracking_uri": postgres_dbs["mlflow"]},
                  airflow={"metadata_db": postgres_dbs["airflow"]})  # fmt: skip
    cfg, path = _write(tmp, "pg", doc)
    run = _run(cfg, path, RETRAIN_DAG, LOGICAL)
    assert run["state"] == "success", run["log"][-3000:]
    champion = _registry(cfg).get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["artifact_version"] == run["xcom"]["train"]
    assert _live(cfg)["index"] == run["xcom"]["build_index"]
    # The rows are in PostgreSQL, not in a file beside the run.
    assert not list(tmp.glob("**/*.db"))
    runs = _query(
        postgres_dbs["airflow"], "SELECT state FROM dag_run WHERE dag_id = %s", RETRAIN_DAG
    )
    assert runs == [("success",)]
    versions = _query(
        postgres_dbs["mlflow"], "SELECT count(*) FROM model_versions WHERE name = %s", MODEL
    )
    assert versions == [(1,)]


def _query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(url.replace("+psycopg2", ""))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()
