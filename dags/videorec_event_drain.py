"""
### videorec_event_drain

Hourly: the serving tier's Redis Stream of impressions, clicks and feedback
(`<root>:{events}:stream`) into the event log, as new Parquet files in the day
partitions (`watch_events/dt=<arrival day>/drain-<first id>-<last id>.parquet`), so the
next daily retrain trains on them. How it survives a crash:
`videorec/streaming/drain.py`.

**For on-call.** Entries are acknowledged only after their file is written, so a failed
or killed run loses nothing: the retry (or the next hour) re-reads the pending entries
and rewrites the same file names, never a second copy. One drain at a time holds the
stream's lease: a retry started beside a live (or just-killed) attempt fails with
`DrainBusy`, reads nothing, and is retried. Bad entries go to
`<data>/_quarantine/drain/` with their reason. Watch the task's `lag`: the stream is
capped (MAXLEN about 1M entries), and entries trimmed before a drain reads them are
lost (`lost_trimmed`).

Runbook: `docs/runbook.md`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task
from airflow.timetables.trigger import CronTriggerTimetable
from videorec_dag_common import deadline, default_args, run_time, stage_config

with DAG(
    dag_id="videorec_event_drain",
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC"),
    start_date=dt.datetime(1995, 1, 1, tzinfo=dt.UTC),  # any data set's dates; no catchup
    catchup=False,
    max_active_runs=1,  # one consumer at a time: batches stay in stream order
    default_args=default_args(retries=3, timeout_min=30),
    deadline=deadline(hours=1),
    tags=["videorec", "streaming", "redis"],
    doc_md=__doc__,
) as dag:

    @task(doc_md="Drain the event stream into the event log's day partitions, then ack.")
    def drain(logical_date: Any = None, run_after: Any = None) -> dict[str, Any]:
        from videorec.streaming import drain_events

        cfg = stage_config()
        when = run_time(logical_date, run_after)  # a run by hand has no logical date
        res = drain_events(cfg, cfg.resolve_location(cfg.data.dir), when, log=print)
        print(
            f"drained {res['read']} entries: written {res['written']}, "
            f"quarantined {res['quarantined']}, lost_trimmed {res['lost_trimmed']}, "
            f"lag {res['lag']}"
        )
        return {k: res[k] for k in ("read", "written", "quarantined", "files", "lag")}

    drain()
