"""
### videorec_trending

Every 15 minutes: trending (global, per category) and popular (per country, per
language) lists from the event log's newest partitions, read with Arrow (no Spark),
published on their own Redis pointer (`<root>:{trending}:active`). Why this source and
when to switch to stream counts: `videorec/precompute/fresh.py`.

**For on-call.** Runs overlap never (one active run); a late or failed run leaves the
last lists live for 2 hours (`precompute.fresh_ttl_s`), and the 4-hourly generation
holds its own trending lists as the fallback readers use when these expire.

Runbook: `docs/runbook.md`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task
from airflow.timetables.trigger import CronTriggerTimetable
from videorec_dag_common import deadline, default_args, run_time, stage_config

with DAG(
    dag_id="videorec_trending",
    schedule=CronTriggerTimetable("*/15 * * * *", timezone="UTC"),
    start_date=dt.datetime(1995, 1, 1, tzinfo=dt.UTC),  # any data set's dates; no catchup
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1, timeout_min=10),
    deadline=deadline(hours=0.5),
    tags=["videorec", "trending", "redis"],
    doc_md=__doc__,
) as dag:

    @task(doc_md="Count the last 24-48 h of events and publish the fresh lists.")
    def refresh(logical_date: Any = None, run_after: Any = None) -> str:
        from videorec.precompute.fresh import refresh_trending

        when = run_time(logical_date, run_after)  # a run by hand has no logical date
        res = refresh_trending(stage_config(), logical_time=when, log=print)
        print(f"fresh lists {res['generation']}: published={res['published']} {res.get('reason')}")
        return res["generation"]

    refresh()
