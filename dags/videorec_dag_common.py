"""Wiring shared by the videorec DAGs: default arguments, on-call callbacks, assets.

Imported by the DAG files at parse time, so it imports Airflow's SDK and nothing
heavy; the stage functions are imported inside the tasks. It holds no DAG.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import Asset

log = logging.getLogger("videorec.oncall")

# Published by the retrain DAG's publish task (extra: index_version, logical_time) and
# consumed by the precompute and fresh-videos DAGs, so a new index reaches Redis (and
# its delta is rebuilt) without waiting for their next scheduled run.
INDEX_PUBLISHED = Asset(name="videorec_index_published", uri="videorec://index/published")

# The Spark connection the feature stage is submitted through: `local[*]` in the local
# profile (AIRFLOW_CONN_VIDEOREC_SPARK, set by `make run` / `make airflow`), a YARN,
# Kubernetes or standalone master in production. Changing it moves the job, not the DAG.
SPARK_CONN_ID = "videorec_spark"

RUNBOOK = "docs/runbook.md"


def on_call_line(context: dict[str, Any]) -> str:
    """One line an on-call engineer can act on: what failed, for which date, why, next."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    err = context.get("exception")
    when = context.get("logical_date") or context.get("run_id")
    return (
        f"videorec ALERT {dag_id}.{task_id} failed for {when} (try "
        f"{getattr(ti, 'try_number', '?')}): {type(err).__name__ if err else 'error'}: {err}; "
        f"nothing after it ran and what is live is unchanged; see {RUNBOOK}#{dag_id}"
    )


def task_failed(context: dict[str, Any]) -> None:
    """``on_failure_callback`` of every task: the on-call line, in the task's log."""
    log.error(on_call_line(context))


def deadline_missed(context: dict[str, Any] | None = None, **_: Any) -> None:
    """The DAG-run deadline's callback: a run still going past its deadline. Airflow
    passes one ``context`` keyword: ``{"dag_run": <the run as the REST API's JSON>,
    "deadline": {"id", "deadline_time"}}`` (``airflow.models.deadline``)."""
    run = (context or {}).get("dag_run") or {}
    due = ((context or {}).get("deadline") or {}).get("deadline_time", "?")
    log.error(
        "videorec ALERT %s run %s missed its deadline (%s); see %s#%s",
        run.get("dag_id", "?"),
        run.get("dag_run_id") or run.get("run_id", "?"),
        due,
        RUNBOOK,
        run.get("dag_id", ""),
    )


def run_time(logical_date: dt.datetime | None, run_after: dt.datetime | None) -> dt.datetime:
    """The time a run is for: its logical date, or, for a run triggered by hand (which
    Airflow 3 gives no logical date), when it was asked to run. One value per run, so
    every task of the run agrees."""
    when = logical_date or run_after
    if when is None:
        raise ValueError("the run has neither a logical date nor a run_after")
    return when


def default_args(retries: int = 2, timeout_min: int = 60) -> dict[str, Any]:
    """Retries with exponential back-off, a per-task timeout, the failure callback."""
    return {
        "owner": "videorec",
        "retries": retries,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=20),
        "execution_timeout": dt.timedelta(minutes=timeout_min),
        "on_failure_callback": task_failed,
    }


def deadline(hours: float) -> Any:
    """A DAG-run deadline ``hours`` after the run was queued, calling ``deadline_missed``.

    None when ``$VIDEOREC_DAG_DEADLINES`` is ``off``: ``airflow dags test`` in Airflow
    3.3.2 crashes when a run with a deadline ends (``DagRun.update_state`` looks the
    SDK DAG's alert objects up as database ids), so ``make run`` and the DAG tests,
    which run DAGs that way, turn them off. The scheduler path is unaffected.
    """
    import os

    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    if os.environ.get("VIDEOREC_DAG_DEADLINES", "on") == "off":
        return None

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=hours),
        callback=SyncCallback("videorec_dag_common.deadline_missed"),
    )


def stage_config() -> Any:
    """The videorec config the tasks run on: ``$VIDEOREC_CONFIG``, else the profile."""
    from videorec.config import load_config

    return load_config()


def spark_java_options() -> str:
    """The config's JVM options for Spark's driver and executors (``spark.java_options``).
    A template macro, so the config is read when the task runs, not when the file is
    parsed: spark-submit starts the driver's JVM before the job can set them."""
    return str(stage_config().spark.java_options)


def index_inputs(
    triggering_asset_events: Any, logical_date: dt.datetime | None, run_after: dt.datetime | None
) -> dict[str, str]:
    """{"index_version", "logical_time"} for a run over the active index: the
    triggering publish event's, else the index active now and the run's logical time
    (a scheduled run). Fails the task when no index is published yet."""
    events = list((triggering_asset_events or {}).get(INDEX_PUBLISHED, []))
    if events:
        extra = events[-1].extra
        return {"index_version": extra["index_version"], "logical_time": extra["logical_time"]}
    from airflow.sdk.exceptions import AirflowFailException

    from videorec.artifacts import open_store
    from videorec.indexing.slots import active_version

    version, _ = active_version(open_store(stage_config()))
    if version is None:
        raise AirflowFailException("no index is published yet (videorec index publish)")
    return {"index_version": version, "logical_time": run_time(logical_date, run_after).isoformat()}
