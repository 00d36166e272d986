"""The Airflow the product's DAGs run on locally: its environment, database and runs.

``make run`` and the DAG tests run the real DAGs with ``airflow dags test`` (every task
in-process, in order, against a real metadata database); ``make airflow`` starts the
scheduler, DAG processor and UI on the same environment. This module only builds the
environment and calls the ``airflow`` command; it imports no stage and not Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from videorec.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO_ROOT / "dags"
RETRAIN_DAG = "videorec_daily_retrain"
PRECOMPUTE_DAG = "videorec_precompute"
TRENDING_DAG = "videorec_trending"
EVENT_DRAIN_DAG = "videorec_event_drain"
FRESH_VIDEOS_DAG = "videorec_fresh_videos"


class AirflowRunError(RuntimeError):
    """An ``airflow`` command failed; the message names it and ends with its output."""


def airflow_env(
    cfg: Config, *, config_file: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """The process environment for ``airflow`` commands on ``cfg``.

    AIRFLOW_HOME and the metadata database from the ``airflow`` section, the repo's
    ``dags/`` folder, no example DAGs, the ``videorec_spark`` connection on the config's
    Spark master, the venv's ``bin`` first on PATH (``spark-submit``), and the videorec
    config the tasks load: ``config_file`` when given, else the profile.
    """
    home = cfg.resolve_path(cfg.airflow.home)
    db = cfg.airflow.metadata_db or f"sqlite:///{home / 'airflow.db'}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": cfg.airflow.executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        "AIRFLOW_CONN_VIDEOREC_SPARK": json.dumps({"conn_type": "spark", "host": cfg.spark.master}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("VIDEOREC_CONFIG", None)
    env.pop("VIDEOREC_PROFILE", None)
    if config_file is not None:
        env["VIDEOREC_CONFIG"] = str(Path(config_file).resolve())
    else:
        env["VIDEOREC_PROFILE"] = cfg.profile
    return env


def airflow(
    args: list[str], env: dict[str, str], *, echo: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> str:  # fmt: skip
    """Run ``airflow ARGS``; its output (also passed line by line to ``echo``).

    Raises AirflowRunError on a non-zero exit, with the output's last lines.
    """
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPO_ROOT,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if echo is not None:
            echo(line.rstrip("\n"))
    rc = proc.wait(timeout=timeout_s)
    out = "".join(lines)
    if rc != 0:
        raise AirflowRunError(f"airflow {' '.join(args)} exited {rc}:\n{out[-4000:]}")
    return out


def migrate(env: dict[str, str]) -> None:
    """Create or upgrade the metadata database (idempotent; seconds)."""
    airflow(["db", "migrate"], env)


def dags_test(
    dag_id: str, logical_date: dt.datetime, env: dict[str, str], *,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run one DAG for ``logical_date`` with ``airflow dags test``; its run's outcome.

    Returns {"dag_id", "run_id", "state", "tasks": {task_id: state}, "xcom": {task_id:
    return value}} read back from the metadata database.
    """
    # Deadlines off: Airflow 3.3.2's `dags test` crashes at the end of a run that has one
    # (see dags/videorec_dag_common.py); the scheduler path keeps them.
    env = {**env, "VIDEOREC_DAG_DEADLINES": "off"}
    try:
        airflow(["dags", "test", dag_id, logical_date.isoformat()], env, echo=echo)
    except AirflowRunError as err:
        try:  # a run that failed a task is an outcome; one that never started is not
            return {**run_outcome(dag_id, logical_date, env), "error": str(err)[-2000:]}
        except AirflowRunError:
            raise err from None
    outcome = run_outcome(dag_id, logical_date, env)
    if not outcome["tasks"]:
        raise AirflowRunError(
            f"{dag_id} for {logical_date.isoformat()}: the run created no task (a logical "
            "date before the DAG's start_date?)"
        )
    return outcome


_OUTCOME = """
import json, sys
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from sqlalchemy import select

dag_id, logical = sys.argv[1], sys.argv[2]
with create_session() as s:
    runs = s.scalars(select(DagRun).where(DagRun.dag_id == dag_id)).all()
    runs = [r for r in runs if r.logical_date and r.logical_date.isoformat() == logical]
    run = max(runs, key=lambda r: r.id)
    tis = s.scalars(select(TaskInstance).where(
        TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)).all()
    xcom = {}
    for x in s.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run.run_id,
            XComModel.key == "return_value")).all():
        xcom[x.task_id] = XComModel.deserialize_value(x)
    print(json.dumps({"dag_id": dag_id, "run_id": run.run_id, "state": str(run.state),
        "note": run.note, "tasks": {t.task_id: str(t.state) for t in tis},
        "tries": {t.task_id: t.try_number for t in tis}, "xcom": xcom}, default=str))
"""


def run_outcome(dag_id: str, logical_date: dt.datetime, env: dict[str, str]) -> dict[str, Any]:
    """The latest run of ``dag_id`` for ``logical_date``: state, task states, return values."""
    proc = subprocess.run(
        [sys.executable, "-c", _OUTCOME, dag_id, logical_date.isoformat()],
        env=env, capture_output=True, text=True, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AirflowRunError(f"reading the run of {dag_id}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
