"""
### videorec_daily_retrain

Once a day: features (Spark) → train → gate (MLflow champion/challenger) → build
index → validate → publish (blue-green) → precompute (Redis).

**For on-call.** Each task calls one stage function with the logical date and the
versions the task before it returned (XCom holds versions only). Every task is
idempotent: a retry or a re-run of the same date finds its output and does nothing,
and registers no second model version.

- A **skipped `gate`** means the champion gate refused the new model: its log and the
  MLflow model version's `gate_reason` tag say why (both NDCG@20 figures, the split).
  Nothing after it ran; the live index and Redis generation are unchanged.
- A **failed `build_index` or `validate_index`** means the index missed its recall
  target; the live index is unchanged. Deterministic failures are not retried.
- `publish` emits the `videorec_index_published` asset, which also starts the
  `videorec_precompute` DAG (it finds this run's generation active and skips).

Runbook: `docs/runbook.md`.
"""

from __future__ import annotations

import datetime as dt
import sys
from importlib.util import find_spec
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, task
from airflow.timetables.trigger import CronTriggerTimetable
from videorec_dag_common import (
    INDEX_PUBLISHED,
    SPARK_CONN_ID,
    deadline,
    default_args,
    stage_config,
)


def _planned(key: str) -> str:
    """A Jinja expression for one field of the plan task's XCom."""
    return "{{ ti.xcom_pull(task_ids='plan')['" + key + "'] }}"


with DAG(
    dag_id="videorec_daily_retrain",
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
    start_date=dt.datetime(1995, 1, 1, tzinfo=dt.UTC),  # any data set's dates; no catchup
    catchup=False,
    max_active_runs=1,  # two retrains would race for the champion alias and the slots
    default_args=default_args(retries=2, timeout_min=120),
    deadline=deadline(hours=6),
    tags=["videorec", "retrain", "daily"],
    doc_md=__doc__,
    params={
        "data": Param(None, type=["null", "string"], description="event log (default: data.dir)"),
        "spark_driver_memory": Param("2g", type="string"),
    },
) as dag:

    @task(doc_md="The features version this run builds and trains on (data, date, config).")
    def plan(params: Any = None, logical_date: Any = None) -> dict[str, str]:
        from videorec.features.job import plan_features

        return plan_features(stage_config(), params["data"], logical_date.date())

    features = SparkSubmitOperator(
        task_id="features",
        doc_md="The 30-day feature stage on Spark, submitted through the `videorec_spark` "
        "connection; writes the planned features version (a no-op when it exists).",
        conn_id=SPARK_CONN_ID,
        application=find_spec("videorec.features.job").origin,
        application_args=["--date", _planned("date"), "--data", _planned("data")],
        name="videorec-features-{{ ds }}",
        conf={"spark.driver.memory": "{{ params.spark_driver_memory }}"},
        env_vars={"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable},
        verbose=False,
    )

    @task(doc_md="Train the two-tower model on the planned features version.")
    def train(plan: dict[str, str]) -> str:
        from videorec.training.train import train_two_tower

        res = train_two_tower(
            stage_config(), features_version=plan["features_version"], progress=False,
            log=print,
        )  # fmt: skip
        return res["version"]

    @task(doc_md="Register the model in MLflow and gate it; a refusal skips the rest.")
    def gate(model_version: str) -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        from videorec.training.gate import gate_model

        outcome = gate_model(stage_config(), model_version=model_version, log=print)
        if outcome["decision"] != "promoted":
            raise AirflowSkipException(
                f"gate refused {model_version} (registered v{outcome['version']}): "
                f"{outcome['reason']}; nothing is published"
            )
        return model_version

    @task(doc_md="Build and recall-gate the FAISS index into the standby slot.")
    def build_index(model_version: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from videorec.indexing.build import IndexGateError, build_index

        try:
            return build_index(stage_config(), model_version=model_version, log=print)["version"]
        except IndexGateError as err:  # deterministic: a retry would fail the same way
            raise AirflowFailException(str(err)) from err

    @task(doc_md="Read the stored index back as readers will and re-check its recall.")
    def validate_index(index_version: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from videorec.indexing.validate import IndexValidationError, validate_index

        try:
            print(validate_index(stage_config(), index_version=index_version))
        except IndexValidationError as err:
            raise AirflowFailException(str(err)) from err
        return index_version

    @task(doc_md="Blue-green publish: one compare-and-swap of the index pointer.",
          outlets=[INDEX_PUBLISHED])  # fmt: skip
    def publish(index_version: str, logical_date: Any = None, outlet_events: Any = None) -> str:
        from videorec.artifacts import open_store
        from videorec.indexing.slots import publish

        state = publish(open_store(stage_config()), index_version)
        print(f"published {index_version}: pointer generation {state['generation']}")
        outlet_events[INDEX_PUBLISHED].extra = {
            "index_version": index_version, "logical_time": logical_date.isoformat(),
        }  # fmt: skip
        return index_version

    @task(doc_md="Base recommendations, similar videos and online features into Redis.")
    def precompute(index_version: str, logical_date: Any = None) -> str:
        from videorec.precompute.run import precompute

        res = precompute(
            stage_config(), index_version=index_version, logical_time=logical_date, log=print
        )
        print(f"generation {res['generation']}: published={res['published']} {res.get('reason')}")
        return res["generation"]

    planned = plan()
    model = train(planned)
    planned >> features >> model
    index = build_index(gate(model))
    precompute(publish(validate_index(index)))
