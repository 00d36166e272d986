"""The DAG files as Airflow loads them: wiring, schedules, retries, docs, import cost."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from videorec.orchestrator import (
    DAGS_FOLDER,
    EVENT_DRAIN_DAG,
    FRESH_VIDEOS_DAG,
    PRECOMPUTE_DAG,
    RETRAIN_DAG,
    TRENDING_DAG,
)

DAG_FILES = sorted(p for p in DAGS_FOLDER.glob("videorec_*.py") if p.stem != "videorec_dag_common")
HEAVY = ("torch", "pyspark", "faiss", "pandas", "redis", "mlflow", "sklearn", "numpy")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The DAG folder parsed as the DAG processor parses it (the bundle on sys.path)."""
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS_FOLDER), bundle_path=DAGS_FOLDER)


def test_the_dagbag_loads_every_dag_without_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {
        RETRAIN_DAG,
        PRECOMPUTE_DAG,
        TRENDING_DAG,
        EVENT_DRAIN_DAG,
        FRESH_VIDEOS_DAG,
    }


def _edges(dag: Any) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_the_retrain_chain_and_its_schedule(dagbag: Any) -> None:
    dag = dagbag.dags[RETRAIN_DAG]
    assert _edges(dag) == {
        ("plan", "features"), ("plan", "train"), ("features", "train"), ("train", "gate"),
        ("gate", "build_index"), ("build_index", "validate_index"),
        ("validate_index", "publish"), ("publish", "precompute"),
        ("precompute", "collect_indexes"), ("collect_indexes", "collect_models"),
        ("collect_models", "collect_features"),
        # The ranker branch, from the promoted model (and the plan's features version).
        ("plan", "ranking_examples"), ("gate", "ranking_examples"),
        ("ranking_examples", "train_ranker"), ("train_ranker", "gate_ranker"),
        ("gate_ranker", "publish_ranker"), ("publish_ranker", "collect_rankers"),
        ("train_ranker", "collect_rankers"),
    }  # fmt: skip
    assert dag.timetable.summary == "0 2 * * *"
    features = dag.get_task("features")
    # The provider's operator, which checks the planned version before it submits.
    assert "SparkSubmitOperator" in [c.__name__ for c in type(features).__mro__[1:]]
    assert features.application.endswith("features/job.py")
    assert features._conn_id == "videorec_spark"
    publish = dag.get_task("publish")
    assert [o.name for o in publish.outlets] == ["videorec_index_published"]


def test_spark_submit_gets_the_configs_jvm_options_when_the_task_runs(dagbag: Any) -> None:
    """spark-submit starts the driver's JVM before the job runs, so the operator passes
    ``spark.java_options`` as conf; the macro reads the config at render time."""
    from videorec.config import load_config

    dag = dagbag.dags[RETRAIN_DAG]
    conf = dag.get_task("features").conf
    env = dag.get_template_env()
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        rendered = env.from_string(conf[key]).render()
        assert rendered == load_config().spark.java_options == "-XX:-DontCompileHugeMethods"


def test_the_ranker_branch_is_independent_of_the_index_after_the_gate(dagbag: Any) -> None:
    """A refused two-tower gate skips both branches; after it, neither branch waits on
    the other, so a ranker failure cannot stop the index from being published."""
    dag = dagbag.dags[RETRAIN_DAG]
    ranker = {"ranking_examples", "train_ranker", "gate_ranker", "publish_ranker"}
    index = {"build_index", "validate_index", "publish", "precompute"}
    for task_id in ranker | index:
        # all_success: a skipped gate (or ranker gate) skips what follows it.
        assert dag.get_task(task_id).trigger_rule == "all_success", task_id
    for task_id in index:
        assert not dag.get_task(task_id).get_flat_relative_ids(upstream=True) & ranker, task_id
    for task_id in ranker:
        assert not dag.get_task(task_id).get_flat_relative_ids(upstream=True) & index, task_id
        assert not dag.get_task(task_id).get_flat_relative_ids(upstream=False) & index, task_id
    assert "gate" in dag.get_task("ranking_examples").upstream_task_ids
    assert dag.leaves and {t.task_id for t in dag.leaves} == {"collect_features", "collect_rankers"}
    for task_id in (
        "collect_indexes",
        "collect_models",
        "collect_features",
    ):  # skipped by a refusal
        assert dag.get_task(task_id).trigger_rule == "all_success", task_id
    # The rankers' collection follows a refused ranker too, never a failure or no ranker.
    assert dag.get_task("collect_rankers").trigger_rule == "none_failed_min_one_success"
    assert not dag.get_task("collect_rankers").get_flat_relative_ids(upstream=True) & index


@pytest.mark.parametrize(
    ("task_id", "kwargs", "named"),
    [
        ("ranking_examples", {"plan": {"features_version": "2026-11-01_f"},
                              "model_version": "2026-11-01_nope"}, "2026-11-01_nope"),
        ("train_ranker", {"examples_version": "2026-11-01_nope"}, "2026-11-01_nope"),
        ("gate_ranker", {"ranker_version": "2026-11-01_nope"}, "2026-11-01_nope"),
        ("publish_ranker", {"ranker_version": "2026-11-01_nope"}, "2026-11-01_nope"),
    ],
)  # fmt: skip
def test_a_ranker_input_error_fails_its_task_without_a_retry(
    dagbag: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task_id: str,
    kwargs: dict[str, Any], named: str,
) -> None:  # fmt: skip
    """An unknown version is deterministic: AirflowFailException (no retry), naming it."""
    from airflow.sdk.exceptions import AirflowFailException

    conf = tmp_path / "c.yaml"
    conf.write_text(f"artifacts:\n  root: {tmp_path / 'artifacts'}\n"
                    f"mlflow:\n  tracking_uri: sqlite:///{tmp_path}/mlflow.db\n")  # fmt: skip
    monkeypatch.setenv("VIDEOREC_CONFIG", str(conf))
    task = dagbag.dags[RETRAIN_DAG].get_task(task_id)
    with pytest.raises(AirflowFailException, match=named):
        task.python_callable(**kwargs)


def test_precompute_runs_every_4_hours_or_on_a_published_index(dagbag: Any) -> None:
    dag = dagbag.dags[PRECOMPUTE_DAG]
    assert _edges(dag) == {("resolve_inputs", "precompute")}
    assert dag.timetable.timetable.summary == "0 */4 * * *"
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["videorec_index_published"]


def test_trending_runs_every_15_minutes(dagbag: Any) -> None:
    dag = dagbag.dags[TRENDING_DAG]
    assert [t.task_id for t in dag.tasks] == ["refresh"]
    assert dag.timetable.summary == "*/15 * * * *"


def test_the_event_drain_runs_hourly(dagbag: Any) -> None:
    dag = dagbag.dags[EVENT_DRAIN_DAG]
    assert [t.task_id for t in dag.tasks] == ["drain"]
    assert dag.timetable.summary == "0 * * * *"


def test_fresh_videos_run_hourly_or_on_a_published_index(dagbag: Any) -> None:
    dag = dagbag.dags[FRESH_VIDEOS_DAG]
    assert _edges(dag) == {("resolve_inputs", "build"), ("build", "publish"),
                           ("publish", "new_videos"), ("resolve_inputs", "new_videos")}  # fmt: skip
    assert dag.timetable.timetable.summary == "5 * * * *"
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["videorec_index_published"]


@pytest.mark.parametrize(
    "dag_id", [RETRAIN_DAG, PRECOMPUTE_DAG, TRENDING_DAG, EVENT_DRAIN_DAG, FRESH_VIDEOS_DAG]
)
def test_every_dag_and_task_is_documented_retried_and_alerting(dagbag: Any, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert "videorec" in dag.tags and dag.doc_md and "on-call" in dag.doc_md.lower()
    assert dag.deadline, "a DAG-run deadline calls deadline_missed"
    for t in dag.tasks:
        assert t.doc_md, f"{dag_id}.{t.task_id} has no doc_md"
        assert t.retries >= 1 and t.retry_exponential_backoff, f"{t.task_id}: no back-off"
        assert t.max_retry_delay and t.execution_timeout
        assert [cb.__name__ for cb in t.on_failure_callback] == ["task_failed"]


def test_the_deadline_alert_names_the_dag_and_the_run_as_airflow_calls_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through Airflow's own callback executor, with the context it builds
    (``airflow.models.deadline``: one ``context`` keyword holding the run as the REST
    API's JSON). Found by review: the alert said "? run ?"."""
    import logging

    import structlog
    from airflow.sdk.execution_time.callback_supervisor import execute_callback

    run = {"dag_id": RETRAIN_DAG, "dag_run_id": "scheduled__2026-11-01T02:00:00+00:00",
           "logical_date": "2026-11-01T02:00:00Z", "state": "running"}  # fmt: skip
    context = {"dag_run": run, "deadline": {"id": "d1", "deadline_time": "2026-11-01T08:00Z"}}
    sys.path.insert(0, str(DAGS_FOLDER))
    try:
        with caplog.at_level(logging.ERROR, logger="videorec.oncall"):
            ok, err = execute_callback("videorec_dag_common.deadline_missed",
                                       {"context": context}, "", None,
                                       structlog.get_logger())  # fmt: skip
    finally:
        sys.path.remove(str(DAGS_FOLDER))
    assert ok, err
    line = next(r.getMessage() for r in caplog.records if r.name == "videorec.oncall")
    assert f"videorec ALERT {RETRAIN_DAG} run scheduled__2026-11-01T02:00:00+00:00" in line
    assert "2026-11-01T08:00Z" in line and "docs/runbook.md" in line


def test_tasks_of_a_run_triggered_by_hand_take_its_run_after(
    dagbag: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow 3 gives a run triggered by hand no logical date: the tasks got None and
    failed (plan: None.date(); refresh: "logical_time must be a timezone-aware
    datetime"). Found by review. Called as the task runner calls them."""
    from videorec.datagen.synthetic import GeneratorParams, generate

    data = tmp_path / "data"
    generate(GeneratorParams(users=60, videos=40, days=3, seed=1, end_date=dt.date(2026, 11, 1)),
             data, config_digest="t", progress=False)  # fmt: skip
    conf = tmp_path / "c.yaml"
    conf.write_text(f"artifacts:\n  root: {tmp_path / 'artifacts'}\ndata:\n  dir: {data}\n")
    monkeypatch.setenv("VIDEOREC_CONFIG", str(conf))
    after = dt.datetime(2026, 11, 1, 15, 30, tzinfo=dt.UTC)
    plan = dagbag.dags[RETRAIN_DAG].get_task("plan").python_callable
    planned = plan(params={"data": None}, logical_date=None, run_after=after)
    assert planned["date"] == "2026-11-01"
    for dag_id, task_id in ((RETRAIN_DAG, "precompute"), (TRENDING_DAG, "refresh"),
                            (EVENT_DRAIN_DAG, "drain"), (RETRAIN_DAG, "collect_models")):  # fmt: skip
        params = dagbag.dags[dag_id].get_task(task_id).python_callable.__code__.co_varnames
        assert "run_after" in params, (dag_id, task_id)


def test_the_on_call_line_names_the_task_the_date_and_the_error() -> None:
    sys.path.insert(0, str(DAGS_FOLDER))
    try:
        from videorec_dag_common import on_call_line
    finally:
        sys.path.remove(str(DAGS_FOLDER))

    class TI:
        dag_id, task_id, try_number = RETRAIN_DAG, "build_index", 3

    line = on_call_line({"ti": TI(), "exception": ValueError("recall 0.91 < 0.95"),
                         "logical_date": dt.datetime(2026, 11, 1, tzinfo=dt.UTC)})  # fmt: skip
    assert "\n" not in line
    assert "videorec_daily_retrain.build_index failed for 2026-11-01 00:00:00+00:00" in line
    assert "(try 3): ValueError: recall 0.91 < 0.95" in line and "docs/runbook.md" in line


_IMPORT_COST = """
import importlib.util, json, sys, time
sys.path.insert(0, sys.argv[1])
import airflow.sdk  # Airflow itself is loaded before any DAG file, as in the processor
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
import airflow.timetables.assets, airflow.timetables.trigger
before = set(sys.modules)
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dagfile", sys.argv[2])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
took = time.perf_counter() - t0
print(json.dumps({"s": took, "new": sorted(m.split(".")[0] for m in set(sys.modules) - before)}))
"""


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_a_dag_file_imports_in_under_a_second_and_loads_nothing_heavy(
    dag_file: Path, tmp_path: Path
) -> None:
    """Each file in a fresh interpreter: parse cost and the modules it pulls in."""
    import os

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_COST, str(DAGS_FOLDER), str(dag_file)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["s"] < 1.0, f"{dag_file.name} took {out['s']:.2f}s to import"
    assert not set(out["new"]) & set(HEAVY), (
        f"{dag_file.name} loaded {set(out['new']) & set(HEAVY)}"
    )


def test_precompute_takes_the_index_and_time_from_the_published_asset_event(dagbag: Any) -> None:
    """The asset-triggered path (``airflow dags test`` cannot trigger by asset): the
    event's extra names the index version and logical time, through Airflow's own
    accessor of triggering events."""
    from types import SimpleNamespace

    from airflow.sdk.definitions.asset import AssetUniqueKey
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    task = dagbag.dags[PRECOMPUTE_DAG].get_task("resolve_inputs")
    extra = {"index_version": "2026-11-01_a.b", "logical_time": "2026-11-01T00:00:00+00:00"}
    key = AssetUniqueKey(name="videorec_index_published", uri="videorec://index/published")
    events = TriggeringAssetEventsAccessor({key: [SimpleNamespace(extra={"x": 1}),
                                                  SimpleNamespace(extra=extra)]})  # fmt: skip
    assert task.python_callable(triggering_asset_events=events) == extra
