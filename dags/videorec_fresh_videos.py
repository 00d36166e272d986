"""
### videorec_fresh_videos

Hourly, and right after every index publish: the videos published since the active
index's model was trained are embedded by that model's candidate tower in content
mode (no id: the tower was trained with id dropout), stored as the **delta index**
(`index-delta/<version>`, a flat index) and made live by the `index-delta` pointer's
compare-and-swap; then the **new-videos Redis generation** (their feature hashes and
similar lists, main and delta merged by score) is published for the serving shim.
How the delta is compacted (the next nightly index includes its videos, and the next
run's delta no longer holds them): `videorec/indexing/delta.py`.

**For on-call.** A failed run changes nothing that is live: the previous delta and
the previous new-videos generation keep serving (the Redis keys live 3 hours, so two
missed runs are harmless); the next run builds from scratch. A delta is refused when
the active index changed under it (the publish after it builds the right one), and
when more than `fresh_videos.max_videos` videos are missing from the index, which
means the nightly retrain is overdue.

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
    dag_id="videorec_fresh_videos",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("5 * * * *", timezone="UTC"), assets=[INDEX_PUBLISHED]
    ),
    start_date=dt.datetime(1995, 1, 1, tzinfo=dt.UTC),  # any data set's dates; no catchup
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1, timeout_min=20),
    deadline=deadline(hours=1),
    tags=["videorec", "fresh", "index", "redis"],
    doc_md=__doc__,
) as dag:

    @task(doc_md="The index version to extend and the logical time: the asset event's, "
          "else the active index at the run's logical time.")  # fmt: skip
    def resolve_inputs(
        triggering_asset_events: Any = None,
        logical_date: dt.datetime | None = None,
        run_after: dt.datetime | None = None,
    ) -> dict[str, str]:
        return index_inputs(triggering_asset_events, logical_date, run_after)

    @task(doc_md="Embed the new videos in content mode and store the delta index version.")
    def build(inputs: dict[str, str]) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from videorec.indexing.delta import DeltaError, build_delta

        try:
            res = build_delta(
                stage_config(), index_version=inputs["index_version"],
                logical_time=dt.datetime.fromisoformat(inputs["logical_time"]), log=print,
            )  # fmt: skip
        except DeltaError as err:  # deterministic (too many videos, a bad index): no retry
            raise AirflowFailException(str(err)) from None
        print(f"delta {res['version']}: {res['videos']} videos, skipped={res['skipped']}")
        return res["version"]

    @task(doc_md="Point the index-delta pointer at the new version (compare-and-swap).")
    def publish(delta_version: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from videorec.artifacts import open_store
        from videorec.indexing.delta import DeltaError, publish_delta

        try:
            state = publish_delta(open_store(stage_config()), delta_version)
        except DeltaError as err:  # another index went live: the run it triggers builds anew
            raise AirflowFailException(str(err)) from None
        print(f"delta pointer: live {state['version']}, published={state['published']}")
        return delta_version

    @task(doc_md="Write and publish the new-videos Redis generation; delete old deltas.")
    def new_videos(delta_version: str, inputs: dict[str, str]) -> str:
        from videorec.artifacts import open_store
        from videorec.indexing.delta import collect_delta_garbage
        from videorec.precompute.new_videos import publish_new_videos

        cfg = stage_config()
        at = dt.datetime.fromisoformat(inputs["logical_time"])
        res = publish_new_videos(cfg, delta_version=delta_version, logical_time=at, log=print)
        print(f"new videos {res['generation']}: published={res['published']} {res.get('reason')}")
        gone = collect_delta_garbage(
            open_store(cfg), logical_time=at, keep_s=cfg.fresh_videos.keep_versions_s
        )
        print(f"deleted {len(gone)} old delta versions")
        return res["generation"]

    inputs = resolve_inputs()
    new_videos(publish(build(inputs)), inputs)
