"""
### videorec_daily_retrain

Once a day: features (Spark) → train → gate (MLflow champion/challenger) → build
index → validate → publish (blue-green) → precompute (Redis) → collect the old index
versions, then the model and features versions nothing live reads; and, beside the
index once the two-tower gate promoted the model, the stage-2 ranker: ranking examples →
train ranker → its own champion gate → publish the `ranker` pointer → collect the old
ranker and ranking-examples versions.

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
- The **ranker branch** (`ranking_examples` → `train_ranker` → `gate_ranker` →
  `publish_ranker`) starts from the promoted two-tower model and runs beside the index
  tasks: a ranker failure never stops the index from being built and published.
  A **skipped `gate_ranker`** means the ranker's champion gate (MLflow
  `mlflow.registered_ranker`) refused it: the log and the version's `gate_reason` tag
  say why; the `ranker` pointer, and so the served ranker, is unchanged.

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
    run_time,
    spark_java_options,
    stage_config,
)


def _planned(key: str) -> str:
    """A Jinja expression for one field of the plan task's XCom."""
    return "{{ ti.xcom_pull(task_ids='plan')['" + key + "'] }}"


class FeaturesSubmit(SparkSubmitOperator):
    """spark-submit of the feature stage, or nothing when the planned version exists.

    The job finds an existing version and does nothing too, but only once spark-submit
    has started a JVM and Spark (tens of seconds here, a place in a cluster's queue in
    production); a re-run of the date, or a retry after the job committed, stops here.
    """

    def execute(self, context: Any) -> Any:
        from videorec.features.job import features_written

        version = context["ti"].xcom_pull(task_ids="plan")["features_version"]
        if features_written(stage_config(), version):
            self.log.info("features version %s exists: nothing submitted", version)
            return None
        return super().execute(context)


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
    user_defined_macros={"spark_java_options": spark_java_options},
    params={
        "data": Param(None, type=["null", "string"], description="event log (default: data.dir)"),
        "spark_driver_memory": Param("2g", type="string"),
    },
) as dag:

    @task(doc_md="The features version this run builds and trains on (data, date, config).")
    def plan(params: Any = None, logical_date: Any = None, run_after: Any = None) -> dict[str, str]:
        from videorec.features.job import plan_features

        when = run_time(logical_date, run_after)
        return plan_features(stage_config(), params["data"], when.date())

    features = FeaturesSubmit(
        task_id="features",
        doc_md="The 30-day feature stage on Spark, submitted through the `videorec_spark` "
        "connection; writes the planned features version from the plan's event files "
        "(nothing is submitted when it exists).",
        conn_id=SPARK_CONN_ID,
        application=find_spec("videorec.features.job").origin,
        application_args=[
            "--date",
            _planned("date"),
            "--data",
            _planned("data"),
            "--plan",
            _planned("features_version"),
        ],
        name="videorec-features-" + _planned("date"),  # a run by hand has no {{ ds }}
        conf={
            "spark.driver.memory": "{{ params.spark_driver_memory }}",
            "spark.driver.extraJavaOptions": "{{ spark_java_options() }}",
            "spark.executor.extraJavaOptions": "{{ spark_java_options() }}",
        },
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
    def publish(
        index_version: str, logical_date: Any = None, run_after: Any = None,
        outlet_events: Any = None,
    ) -> str:  # fmt: skip
        from airflow.sdk.exceptions import AirflowSkipException

        from videorec.artifacts import open_store
        from videorec.indexing.slots import RolledBackError, publish

        try:  # a retry, a cleared task or a re-run after on-call rolled this version back
            state = publish(open_store(stage_config()), index_version)
        except RolledBackError as err:
            raise AirflowSkipException(f"{err}; nothing after it runs") from None
        print(f"published {index_version}: pointer generation {state['generation']}")
        outlet_events[INDEX_PUBLISHED].extra = {
            "index_version": index_version,
            "logical_time": run_time(logical_date, run_after).isoformat(),
        }  # fmt: skip
        return index_version

    @task(doc_md="Base recommendations, similar videos and online features into Redis.")
    def precompute(index_version: str, logical_date: Any = None, run_after: Any = None) -> str:
        from videorec.precompute.run import precompute

        when = run_time(logical_date, run_after)
        res = precompute(stage_config(), index_version=index_version, logical_time=when, log=print)
        print(f"generation {res['generation']}: published={res['published']} {res.get('reason')}")
        return res["generation"]

    @task(doc_md="Delete the index versions beyond `index.keep_versions` (never the "
          "active, previous or standby one; indexing/slots.py).")  # fmt: skip
    def collect_indexes(generation: str) -> list[str]:
        from videorec.artifacts import open_store
        from videorec.indexing.slots import collect_garbage

        cfg = stage_config()
        return collect_garbage(open_store(cfg), cfg.index.keep_versions)

    @task(doc_md="Delete the two-tower model versions nothing live reads: neither a "
          "stored index's model nor a recent date's; and their MLflow run artifacts "
          "unless an alias holds them (training/retention.py).")  # fmt: skip
    def collect_models(
        deleted_indexes: list[str], logical_date: Any = None, run_after: Any = None
    ) -> dict[str, Any]:
        from videorec.training.retention import collect_for_run

        return collect_for_run(stage_config(), run_time(logical_date, run_after).date(), log=print)

    @task(doc_md="Delete the features versions and day histories nothing live reads "
          "(features/retention.py).")  # fmt: skip
    def collect_features(
        models: dict[str, Any], logical_date: Any = None, run_after: Any = None
    ) -> dict[str, Any]:
        from videorec.features.retention import collect_for_run

        return collect_for_run(stage_config(), run_time(logical_date, run_after).date(), log=print)

    @task(doc_md="Ranking examples: the promoted model's candidates, labelled by outcomes.")
    def ranking_examples(plan: dict[str, str], model_version: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from videorec.ranking.examples import RankingInputError, build_ranking_examples

        try:
            res = build_ranking_examples(
                stage_config(), features_version=plan["features_version"],
                model_version=model_version, log=print,
            )  # fmt: skip
        except RankingInputError as err:  # deterministic (a model without its validation
            raise AirflowFailException(str(err)) from None  # checkpoint): no retry
        print(f"ranking examples {res['version']}: {res['train_pairs']} training pairs, "
              f"{res['eval_pairs']} evaluation pairs, skipped={res['skipped']}")  # fmt: skip
        return res["version"]

    @task(doc_md="Train the stage-2 ranker and evaluate the funnel against retrieval alone.")
    def train_ranker(examples_version: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from videorec.ranking.train import RankerInputError, train_ranker

        try:
            res = train_ranker(stage_config(), examples_version=examples_version, log=print)
        except RankerInputError as err:  # deterministic (unknown disabled features): no retry
            raise AirflowFailException(str(err)) from None
        return res["version"]

    @task(doc_md="Register the ranker in MLflow and gate it; a refusal skips its publish.")
    def gate_ranker(ranker_version: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from videorec.ranking.gate import RankerGateInputError, gate_ranker

        try:
            outcome = gate_ranker(stage_config(), ranker_version=ranker_version, log=print)
        except RankerGateInputError as err:
            raise AirflowFailException(str(err)) from None
        if outcome["decision"] != "promoted":
            raise AirflowSkipException(
                f"ranker gate refused {ranker_version} (registered v{outcome['version']}): "
                f"{outcome['reason']}; the served ranker is unchanged"
            )
        return ranker_version

    @task(doc_md="Point the `ranker` pointer at the promoted ranker (compare-and-swap).")
    def publish_ranker(ranker_version: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from videorec.artifacts import open_store
        from videorec.ranking.publish import RankerPublishError, publish_ranker

        try:  # an older date than the live ranker's (a late zombie, a backfill) is refused
            state = publish_ranker(open_store(stage_config()), ranker_version)
        except RankerPublishError as err:
            raise AirflowFailException(str(err)) from None
        print(f"ranker pointer: live {state['version']} (previous {state.get('previous')})")
        return ranker_version

    # After the ranker's publish, or its gate's refusal (a refused ranker is collected
    # in its turn); never after a failure, nor when no ranker was trained.
    @task(trigger_rule="none_failed_min_one_success",
          doc_md="Delete the ranker and ranking-examples versions nothing live reads: "
          "neither served, nor a recent date's, nor a kept ranker's examples; and "
          "the rankers' MLflow run artifacts unless an alias holds them "
          "(ranking/retention.py).")  # fmt: skip
    def collect_rankers(
        trained: str, logical_date: Any = None, run_after: Any = None
    ) -> dict[str, Any]:
        from videorec.ranking.retention import collect_for_run

        return collect_for_run(stage_config(), run_time(logical_date, run_after).date(), log=print)

    planned = plan()
    model = train(planned)
    planned >> features >> model
    promoted = gate(model)
    index = build_index(promoted)
    # Old versions go once the new generation is live (a refused gate keeps them all):
    # the indexes first, as the model and features GCs keep what every stored index reads.
    collect_features(collect_models(collect_indexes(precompute(publish(validate_index(index))))))
    # The ranker branch: downstream of the gate only (a refusal skips it too), and of
    # nothing on the index's path, so either branch fails without stopping the other.
    examples = ranking_examples(planned, promoted)
    trained = train_ranker(examples)
    publish_ranker(gate_ranker(trained)) >> collect_rankers(trained)
