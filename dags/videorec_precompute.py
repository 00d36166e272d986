"""
### videorec_precompute

Every 4 hours, and whenever `videorec_daily_retrain` publishes a new index (the
`videorec_index_published` asset): base recommendations for active users, similar
videos, trending and popular lists and the online feature store, written into Redis
as one generation and published by one compare-and-swap of its pointer.

**For on-call.** `resolve_inputs` names the index version and the logical time; a run
started by the asset uses the published version and the retrain's logical time, so it
finds the retrain's own generation active and skips, or, while the retrain's
`precompute` is still writing it, waits for that run's lease and then skips ("written
by a twin run"). A failed `precompute` leaves the
previous generation live (its keys live 9 hours: one missed run is harmless); the log
says which input or which Redis command failed. `videorec precompute status` shows
the active generation and its age.

Runbook: `docs/runbook.md`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from videorec_dag_common import (
    INDEX_PUBLISHED,
    deadline,
    default_args,
    index_inputs,
    stage_config,
)

with DAG(
    dag_id="videorec_precompute",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 */4 * * *", timezone="UTC"), assets=[INDEX_PUBLISHED]
    ),
    start_date=dt.datetime(1995, 1, 1, tzinfo=dt.UTC),  # any data set's dates; no catchup
    catchup=False,
    max_active_runs=1,  # generations are published in order; a newer one wins anyway
    default_args=default_args(retries=2, timeout_min=90),
    deadline=deadline(hours=3),
    tags=["videorec", "precompute", "redis"],
    doc_md=__doc__,
) as dag:

    @task(doc_md="The index version and logical time: the asset event's, else the active "
          "index at the run's logical time.")  # fmt: skip
    def resolve_inputs(
        triggering_asset_events: Any = None,
        logical_date: dt.datetime | None = None,
        run_after: dt.datetime | None = None,
    ) -> dict[str, str]:
        return index_inputs(triggering_asset_events, logical_date, run_after)

    @task(doc_md="Write and publish the Redis generation for the resolved inputs.")
    def precompute(inputs: dict[str, str]) -> str:
        from videorec.precompute.run import precompute

        res = precompute(
            stage_config(), index_version=inputs["index_version"],
            logical_time=dt.datetime.fromisoformat(inputs["logical_time"]), log=print,
        )  # fmt: skip
        print(f"generation {res['generation']}: published={res['published']} {res.get('reason')}")
        return res["generation"]

    precompute(resolve_inputs())
