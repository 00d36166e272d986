"""The DAGs run by Airflow itself (`airflow dags test`) on a small platform, end to end.

Real everything: Airflow's metadata database and the MLflow registry on PostgreSQL (the
prod layout; test_cli's `videorec run` runs the retrain DAG on the SQLite defaults),
the feature stage through the Spark provider's spark-submit, tiny training, FAISS and
Redis. The runs are module fixtures; each test reads what one of them left behind.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from videorec.artifacts import open_store
from videorec.config import Config, load_config
from videorec.orchestrator import (
    EVENT_DRAIN_DAG,
    FRESH_VIDEOS_DAG,
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
        # The ranker branch on a sample: seconds, not minutes, and still above
        # retrieval alone on this platform.
        "ranking": {"max_users": 1000, "max_eval_users": 500, "negatives_per_user": 20,
                    "epochs": 2, "early_stopping_patience": 1},
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


@pytest.fixture(scope="module")
def first(
    small_platform: Path, redis_url: str, postgres_dbs: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:  # fmt: skip
    """One retrain run in the prod layout: Airflow's metadata and the MLflow registry
    on PostgreSQL. (SQLite, the local default, runs the same DAG in test_cli's
    `videorec run`.)"""
    tmp = tmp_path_factory.mktemp("dag-e2e")
    stores = {"mlflow": {"tracking_uri": postgres_dbs["mlflow"]},
              "airflow": {"metadata_db": postgres_dbs["airflow"]}}  # fmt: skip
    cfg, path = _write(tmp, "a", _config(tmp, small_platform, redis_url, **stores))
    run = _run(cfg, path, RETRAIN_DAG, LOGICAL)
    return {"cfg": cfg, "path": path, "tmp": tmp, "stores": stores, "run": run}


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
    # Every task ran; the ranker's gate may refuse it (see the ranker test below).
    index_path = {
        k: v for k, v in run["tasks"].items() if k not in ("gate_ranker", "publish_ranker")
    }
    assert set(index_path.values()) == {"success"}, run["tasks"]
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
    # The last tasks collected old versions: none here (one index; the features are
    # this run's, in the grace).
    assert x["collect_indexes"] == []
    assert x["collect_models"] == {
        "deleted": {"models/two-tower": [], f"mlflow {cfg.mlflow.registered_model}": []},
        "keep_from": "2026-10-26",
    }
    assert x["collect_features"]["deleted"] == {"features": [], "features-history": []}
    assert x["collect_features"]["keep_from"] == "2026-10-26"  # 7 dates up to 2026-11-01
    # After the ranker's publish or its refusal alike (the ranker test below).
    assert x["collect_rankers"]["deleted"] == {
        "models/ranker": [], "ranking-examples": [], f"mlflow {cfg.mlflow.registered_ranker}": []
    }  # fmt: skip


def test_the_run_s_rows_are_in_postgresql(
    first: dict[str, Any], postgres_dbs: dict[str, str]
) -> None:
    """The run's DAG run and model version are rows in PostgreSQL, not in a file beside it."""
    cfg, x = first["cfg"], first["run"]["xcom"]
    assert not list(first["tmp"].glob("**/*.db"))
    # Other tests here add runs (a re-run, a refused gate): the first run's row is read.
    states = _query(
        postgres_dbs["airflow"],
        "SELECT state FROM dag_run WHERE dag_id = %s AND logical_date = %s",
        RETRAIN_DAG, LOGICAL,
    )  # fmt: skip
    assert states and {s for (s,) in states} == {"success"}, states
    champion = _registry(cfg).get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["artifact_version"] == x["train"]
    rows = _query(
        postgres_dbs["mlflow"],
        "SELECT count(*) FROM model_versions WHERE name = %s AND version = %s",
        MODEL, int(champion.version),
    )  # fmt: skip
    assert rows == [(1,)]


RANKER_TASKS = ("ranking_examples", "train_ranker", "gate_ranker", "publish_ranker")


def test_the_retrain_dag_trains_gates_and_publishes_the_ranker(first: dict[str, Any]) -> None:
    """The ranker branch after the promoted two-tower: examples of this run's model,
    a ranker registered under its own name, and the `ranker` pointer if its gate
    promoted it (a refusal skips only the publish; the index path is untouched)."""
    from videorec.ranking.publish import read_ranker_pointer

    run, cfg = first["run"], first["cfg"]
    t, x = run["tasks"], run["xcom"]
    assert t["ranking_examples"] == t["train_ranker"] == "success", t
    examples = open_store(cfg).read_manifest("ranking-examples", x["ranking_examples"])
    assert examples["model_version"] == x["train"]
    assert examples["features_version"] == x["plan"]["features_version"]
    ranker = x["train_ranker"]
    found = _registry(cfg).search_model_versions(f"name = '{cfg.mlflow.registered_ranker}'")
    assert [v.tags["artifact_version"] for v in found] == [ranker]
    decision = found[0].tags["gate_decision"]
    pointer = read_ranker_pointer(open_store(cfg))
    if decision == "promoted":
        assert t["gate_ranker"] == t["publish_ranker"] == "success", t
        assert x["gate_ranker"] == x["publish_ranker"] == ranker
        assert pointer is not None and pointer["version"] == ranker
        champion = _registry(cfg).get_model_version_by_alias(
            cfg.mlflow.registered_ranker, "champion"
        )
        assert champion.tags["artifact_version"] == ranker
    else:
        assert t["gate_ranker"] == t["publish_ranker"] == "skipped", t
        assert pointer is None and "ranker gate refused" in run["log"]
        assert found[0].tags["gate_reason"] in run["log"]


def test_rank_by_hand_on_the_run_s_versions_reuses_them(first: dict[str, Any]) -> None:
    """`videorec rank --features F --model M` on what the DAG built: every stage finds
    its output (nothing trained or registered again); the summary has both figures."""
    import json
    import subprocess
    import sys

    x = first["run"]["xcom"]
    cmd = [str(Path(sys.executable).parent / "videorec"), "rank", "--config", str(first["path"]),
           "--features", x["plan"]["features_version"], "--model", x["train"], "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    res = json.loads(proc.stdout)
    promoted = res["gate"]["decision"] == "promoted"
    assert proc.returncode == (0 if promoted else 3), proc.stderr[-3000:]
    assert res["examples"]["version"] == x["ranking_examples"] and res["examples"]["skipped"]
    assert res["ranker"]["version"] == x["train_ranker"] and res["ranker"]["skipped"]
    assert res["gate"]["skipped"] and res["gate"]["ranker_version"] == x["train_ranker"]
    for label in ("Funnel", "Retrieval"):
        assert 0 <= res["evaluation"][label]["ndcg@20"] <= 1, res["evaluation"]
        assert 0 <= res["evaluation"][label]["recall@20"] <= 1, res["evaluation"]
    assert (res["pointer"] or {}).get("version") == (x["train_ranker"] if promoted else None)


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
    # The features version exists, so the features task started no Spark at all.
    assert "Spark-Submit cmd" in first["run"]["log"]
    planned = again["xcom"]["plan"]["features_version"]
    assert f"features version {planned} exists: nothing submitted" in again["log"]
    assert "Spark-Submit cmd" not in again["log"]
    # The ranker branch too: the same examples and ranker, its gate read back.
    for task in ("ranking_examples", "train_ranker"):
        assert again["xcom"][task] == first["run"]["xcom"][task]
    ranker = cfg.mlflow.registered_ranker
    assert len(_registry(cfg).search_model_versions(f"name = '{ranker}'")) == 1
    assert f"gate of ranker {first['run']['xcom']['train_ranker']} already recorded" in again["log"]


def test_a_refused_gate_leaves_everything_live_and_says_why(first: dict[str, Any]) -> None:
    """A model that cannot learn (learning rate 1e-9): the gate refuses, nothing is published."""
    tmp = first["tmp"]
    doc = _config(tmp, Path(first["cfg"].data.dir), first["cfg"].redis.url,
                  training={"learning_rate": 1e-9, "epochs": 1}, **first["stores"])  # fmt: skip
    doc["precompute"] = {"key_prefix": first["cfg"].precompute.key_prefix}
    cfg, path = _write(tmp, "broken", doc)
    before = _live(cfg)
    run = _run(cfg, path, RETRAIN_DAG, LOGICAL)
    t = run["tasks"]
    assert t["train"] == "success" and t["gate"] == "skipped", t
    index_path = ("build_index", "validate_index", "publish", "precompute", "collect_indexes",
                  "collect_models", "collect_features")  # fmt: skip
    assert {t[k] for k in index_path} == {"skipped"}
    # No ranker on a refused model, so nothing of the ranker's is collected either.
    assert {t[k] for k in (*RANKER_TASKS, "collect_rankers")} == {"skipped"}
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


def test_the_event_drain_dag_lands_the_stream_in_the_event_log_once(
    first: dict[str, Any], tmp_path: Path
) -> None:
    """Served events on the stream, one videorec_event_drain run by Airflow: each in the
    event log once (a partition of the day they arrived), the stream acknowledged, the
    lease released; a second run drains nothing. Into a copy of the data set: the
    session's platform is other tests' too, and these events are after its as_of."""
    import redis

    from videorec.dataset import read_events
    from videorec.redis_keys import LiveKeys, encode_stream_event

    live = tmp_path / "live"
    shutil.copytree(first["cfg"].data.dir, live)
    doc = yaml.safe_load(first["path"].read_text())
    doc["data"]["dir"] = str(live)
    cfg, path = _write(tmp_path, "drain", doc)
    client, live = redis.Redis.from_url(cfg.redis.url), LiveKeys(cfg.precompute.key_prefix)
    sec, _ = client.time()
    ts = dt.datetime.fromtimestamp(sec, dt.UTC).isoformat()
    ids = [f"dag-drain-{i}" for i in range(40)]
    for i, eid in enumerate(ids):
        client.xadd(live.events_stream, encode_stream_event({
            "event_id": eid, "ts": ts, "user_id": 1 + i % 5, "video_id": 1 + i,
            "event_type": "impression", "request_id": f"{i // 10:032x}", "position": i % 10,
        }))  # fmt: skip
    hour = LOGICAL + dt.timedelta(hours=5)
    run = _run(cfg, path, EVENT_DRAIN_DAG, hour)
    assert run["state"] == "success", _errors(run["log"])
    assert run["xcom"]["drain"]["read"] == 40 and run["xcom"]["drain"]["quarantined"] == {}
    log = read_events(cfg.resolve_location(cfg.data.dir))
    drained = [e for e in log["event_id"].to_pylist() if e.startswith("dag-drain-")]
    assert sorted(drained) == sorted(ids)
    assert not client.exists(live.drain_lease) and client.xlen(live.events_stream) == 0
    again = _run(cfg, path, EVENT_DRAIN_DAG, hour + dt.timedelta(hours=1))
    assert again["state"] == "success" and again["xcom"]["drain"]["read"] == 0


def _errors(log: str) -> str:
    """The log's lines around its first error (a task's traceback), else its end."""
    at = max(log.find("Traceback"), log.find("[error"))
    return log[max(at - 500, 0) : at + 4000] if at >= 0 else log[-3000:]


def _upload(data: Path, t: dt.datetime, per_category: int = 1) -> pa.Table:
    """Append new videos to the data set ``data``: one per category, each a copy of an
    existing video of that category (channel, title, tags, duration) under a new id,
    published at ``t``. Returns (new video_id, template video_id, category)."""
    import pyarrow.compute as pc

    from videorec.dataset import append_videos, read_table

    videos = read_table(data, "videos")
    firsts = {}
    for i, c in enumerate(videos["category"].to_pylist()):
        firsts.setdefault(c, i)
    templates = videos.take(pa.array(sorted(firsts.values())))
    new_ids = pc.max(videos["video_id"]).as_py() + 1 + np.arange(templates.num_rows)
    new = templates.set_column(0, "video_id", pa.array(new_ids, pa.int64()))
    pub = pa.array([t] * new.num_rows, new.schema.field("published_at").type)
    new = new.set_column(new.schema.get_field_index("published_at"), "published_at", pub)
    append_videos(data, new, f"upload-{t:%Y%m%dT%H%M}.parquet")
    return pa.table({"video_id": new_ids, "template": templates["video_id"],
                     "category": templates["category"]})  # fmt: skip


def _served(cfg: Config, tmp: Path, uploads: pa.Table, vectors: np.ndarray) -> None:
    """The serving shim (a real uvicorn) on the stack: each new video has a similar
    list, shows up in main videos' lists, and is among the home feed candidates of the
    users whose query embedding is closest to it."""
    import httpx
    import pyarrow.parquet as pq
    import redis

    from tests.test_serving import READ_KEY, _config, _get, _start
    from videorec.artifact_names import USER_EMBEDDINGS_FILE
    from videorec.redis_keys import LiveKeys, decode_scored

    conf = _config(tmp, cfg.redis.url, cfg.precompute.key_prefix)
    doc = yaml.safe_load(conf.read_text())
    doc["artifacts"] = {"root": str(cfg.artifacts.root)}  # the stack's (readiness reads it)
    conf.write_text(yaml.safe_dump(doc))
    proc, base = _start(conf)
    try:
        ready = httpx.get(f"{base}/readyz", timeout=10).json()
        assert ready["checks"]["catalogue"]["new_videos"]["videos"] == uploads.num_rows, ready
        new_ids = uploads["video_id"].to_numpy()
        in_main_lists = 0
        for vid in new_ids.tolist():
            r = _get(base, f"/api/v1/recommendations/similar/{vid}", limit=20)
            assert r.status_code == 200 and r.json()["fallback"] is None, r.text
            top = r.json()["items"][0]["video_id"]  # its best main neighbour
            back = _get(base, f"/api/v1/recommendations/similar/{top}", limit=50).json()
            in_main_lists += vid in [i["video_id"] for i in back["items"]]
        assert in_main_lists >= len(new_ids) // 2, in_main_lists

        # For each new video, the user whose query embedding is closest to it.
        store = open_store(cfg)
        model = store.read_manifest("index", _live(cfg)["index"])["model_version"]
        users = pq.read_table(store.local_path("models/two-tower", model) / USER_EMBEDDINGS_FILE)
        u_ids = users["user_id"].to_numpy()
        u_vec = np.stack(users["embedding"].to_numpy(zero_copy_only=False))
        closest = u_ids[np.argmax(vectors @ u_vec.T, axis=1)]
        client, live = redis.Redis.from_url(cfg.redis.url), LiveKeys(cfg.precompute.key_prefix)
        found = 0
        for vid, user in zip(new_ids.tolist(), closest.tolist(), strict=True):
            r = _get(base, "/api/v1/recommendations/home", key=READ_KEY, user=user, limit=20)
            assert r.status_code == 200, r.text
            feed_id = r.json()["next_cursor"].split(".")[0]
            pool, _ = decode_scored(client.get(live.feed(user, feed_id)))
            found += vid in pool.tolist()
        assert found >= len(new_ids) * 0.8, found  # unless the user's filters hide it
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_new_video_is_recommendable_after_one_hourly_run(
    first: dict[str, Any], tmp_path: Path
) -> None:
    """Upload → one videorec_fresh_videos run → the delta index and the new-videos
    generation hold the new videos: the reader finds them merged with the main index,
    each has a similar list, and a failed later run leaves all of it live."""
    import redis

    from videorec.artifact_names import DELTA_INDEX
    from videorec.indexing.delta import read_delta_pointer
    from videorec.indexing.reader import IndexReader
    from videorec.redis_keys import RedisKeys, active_generation, decode_scored, read_features

    cfg0 = first["cfg"]
    live = tmp_path / "live"
    shutil.copytree(cfg0.data.dir, live)
    uploads = _upload(live, LOGICAL + dt.timedelta(minutes=20))
    doc = yaml.safe_load(first["path"].read_text())
    doc["data"]["dir"] = str(live)
    cfg, path = _write(tmp_path, "fresh", doc)
    hour = LOGICAL + dt.timedelta(hours=1)
    run = _run(cfg, path, FRESH_VIDEOS_DAG, hour)
    assert run["state"] == "success", _errors(run["log"])
    assert run["xcom"]["resolve_inputs"]["index_version"] == first["run"]["xcom"]["build_index"]

    store = open_store(cfg)
    version = run["xcom"]["build"]
    assert read_delta_pointer(store)["version"] == version
    man = store.read_manifest(DELTA_INDEX, version)
    assert man["videos"] == uploads.num_rows and man["content_path_trained"]
    reader = IndexReader(store)
    reader.refresh()
    assert reader.delta is not None and reader.delta.version == version
    new_ids = uploads["video_id"].to_numpy()
    vectors = reader.delta.index.reconstruct_batch(new_ids)  # IDMap2 keeps the vectors
    _, found = reader.search(vectors, 20)
    # Each finds itself at the top (the main index's quantised scores can put the
    # video it was copied from a hair above), beside main's videos.
    assert (found[:, :3] == new_ids[:, None]).any(axis=1).all()
    assert (~np.isin(found, new_ids)).any(axis=1).all()

    client = redis.Redis.from_url(cfg.redis.url)
    keys = RedisKeys.new_videos(cfg.precompute.key_prefix)
    gen = active_generation(client, keys)
    assert gen == run["xcom"]["new_videos"] and gen.startswith("20261101T0100-")
    from videorec.redis_keys import VIDEO_FEATURES

    same_category = []
    for vid, cat in zip(new_ids.tolist(), uploads["category"].to_pylist(), strict=True):
        f = read_features(client, keys.video_features(gen, vid), VIDEO_FEATURES)
        assert f["category"] == cat and len(f["embedding"]) == vectors.shape[1]
        sim_ids, _ = decode_scored(client.get(keys.similar(gen, vid)))
        assert len(sim_ids) == cfg.fresh_videos.similar_k and vid not in sim_ids
        cats = [read_features(client, RedisKeys(cfg.precompute.key_prefix).video_features(
            _live(cfg)["redis"], int(s)), VIDEO_FEATURES) for s in sim_ids[:10]]  # fmt: skip
        same_category.append(np.mean([c is not None and c.get("category") == cat for c in cats]))
    # The content path places a new video among its own category's videos.
    assert np.mean(same_category) > 0.5, same_category

    _served(cfg, tmp_path, uploads, vectors)

    # A failed run (more new videos than allowed) leaves the delta and generation live.
    doc["fresh_videos"] = {"max_videos": 1}
    bad_cfg, bad_path = _write(tmp_path, "bad", doc)
    failed = _run(bad_cfg, bad_path, FRESH_VIDEOS_DAG, hour + dt.timedelta(hours=1))
    assert failed["state"] == "failed" and "nightly build is overdue" in failed["log"]
    assert read_delta_pointer(store)["version"] == version
    assert active_generation(client, keys) == gen


def _query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(url.replace("+psycopg2", ""))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()
