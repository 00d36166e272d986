"""Profile: where a daily incremental feature run's time goes, from Spark's event log.

    .venv/bin/python bench/features_daily_profile.py --events 1000000 [--repeat 2]

On ``bench/features_incremental.py``'s synthetic platform (generated once under
``--work``), runs the incremental stage for the day before the date (every day
computed) and then the daily run for the date, each in a fresh process on
``local[THREADS]`` with ``spark.eventLog.enabled``; ``--repeat`` runs the daily again
(its outputs deleted first, the day before's kept) to show the run-to-run spread. For
each daily run it prints the stage's own timings (``stage_seconds``) and, from the
event log: Spark jobs and SQL executions, the seconds some job was running, the
seconds between jobs (the driver's own work: planning, listing, publishing), the
seconds stages waited between submission and their first task, and the five longest
SQL executions with their plan's root; ``--stages`` lists every SQL execution's
stages with their task seconds, rows read and rows and bytes shuffled.

``--alt KEY=VALUE`` (repeatable) measures a second Spark conf against the first: each
measured run (the full pass with ``--full``, and the daily run) is made once per
variant per round, in the order A B, then B A, so ``--repeat 2`` gives A B B A and a
drift of the machine's speed over the runs falls on both. The day before's run uses
variant A. The last line prints each variant's job seconds.

Each run also reports ``jvm_cpu_s``: the CPU seconds its JVM's threads used, by group
(``tasks``, the JIT's ``jit_c2`` and ``jit_c1``, ``gc``, ``other``), from
``/proc/PID/task``: on two cores, the JIT's compiles take time from the tasks.
``--same-jvm N`` makes each daily run N times in one JVM (``same_jvm``: each run's
seconds and CPU), which shows what a warm JVM would save; ``--java-home`` runs Spark
on another JDK.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_host
from features_incremental import DATE, EVENTS_PER_USER, bench_platform

DAILY_OUTPUTS = {  # what a daily run of DATE writes that the day before's run did not
    "features": DATE, "features-quarantine": DATE, "features-day": DATE - dt.timedelta(days=1),
    "features-history": DATE - dt.timedelta(days=1),
    "features-recent": DATE - dt.timedelta(days=1),
}  # fmt: skip


# JVM threads by the name Linux gives them (15 characters, numbers trimmed): what each
# group of threads does. Everything else is "other" (the driver's planning, Janino's
# compiles of the generated code, the scheduler, the listeners).
THREAD_GROUPS = {
    "Executor task i": "tasks", "C2 CompilerThre": "jit_c2", "C1 CompilerThre": "jit_c1",
    "GC Thread": "gc", "G1 Conc": "gc", "G1 Refine": "gc", "G1 Service": "gc",
}  # fmt: skip


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) each thread group of process ``pid`` has used so far,
    from /proc/PID/task/*/stat (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for f in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            text = Path(f).read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = re.sub(r"[0-9 #-]+$", "", text[text.index("(") + 1 : text.rindex(")")])
        fields = text[text.rindex(")") + 2 :].split()
        group = THREAD_GROUPS.get(name, "other")
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _stage(
    data: str, root: str, mode: str, threads: int, evlog: str, conf: dict[str, str], runs: int
) -> dict[str, Any]:
    """One run in this process (the child), ``runs`` times in the same JVM for a daily
    run (its outputs deleted in between): the stage's timings, and the CPU seconds the
    JVM's thread groups used during each run."""
    import time

    from videorec.config import parse_config
    from videorec.features.job import build_features
    from videorec.features.session import spark_session

    cfg = parse_config({
        "artifacts": {"root": root},
        "spark": {"master": f"local[{threads}]", "driver_memory": "6g",
                  "shuffle_partitions": 2 * threads,
                  "conf": {"spark.eventLog.enabled": "true", "spark.eventLog.dir": evlog,
                           "spark.eventLog.compress": "false", **conf}},
        "features": {"incremental": mode != "full"},
    })  # fmt: skip
    date = DATE - dt.timedelta(days=1) if mode == "first" else DATE
    spark = spark_session(cfg, f"profile-{mode}")
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    out: list[dict[str, Any]] = []
    for i in range(runs if mode == "daily" else 1):
        if i:
            _drop_daily(Path(root))
        before, t0 = _thread_cpu(pid), time.perf_counter()
        res = build_features(cfg, data, date, spark=spark)
        wall, after = time.perf_counter() - t0, _thread_cpu(pid)
        cpu = {k: round(v - before.get(k, 0.0), 1) for k, v in sorted(after.items())}
        out.append({"job_s": round(wall, 1), "stage_seconds": res["report"].get("stage_seconds"),
                    "jvm_cpu_s": {"total": round(sum(cpu.values()), 1), **cpu}})  # fmt: skip
    first = out[0]
    return {**first, **({"same_jvm": [{k: r[k] for k in ("job_s", "jvm_cpu_s")} for r in out]}
                        if len(out) > 1 else {})}  # fmt: skip


def _events(evlog: str, app: str) -> list[dict[str, Any]]:
    """The (uncompressed) event log of the application named ``app``."""
    for f in sorted(glob.glob(f"{evlog}/*/events_*")):
        lines = Path(f).read_text().splitlines()
        if any(f'"App Name":"{app}"' in line for line in lines[:20]):
            return [json.loads(line) for line in lines]
    raise FileNotFoundError(f"no event log of {app} in {evlog}")


def _plan_root(execution_start: dict[str, Any]) -> str:
    """What an SQL execution does: the folder a write goes to (its artifact and table),
    else its plan's root operator."""
    text = execution_start.get("physicalPlanDescription", "")
    written = re.search(
        r"Execute InsertIntoHadoopFsRelationCommand\nInput: .*\nArguments: (\S+?),", text
    )
    if written:
        parts = written.group(1).rstrip("/").split("/")
        artifact = next((p for p in parts if p.startswith("features")), "?")
        return f"write {artifact}/{parts[-1]}"
    lines = [x.strip().lstrip("+- ") for x in text.splitlines()[1:]]
    return next((x for x in lines if x and "AdaptiveSparkPlan" not in x), "")[:70]


# The task metrics summed over a run: (name, divisor to seconds or MB).
TASK_METRICS = {
    "Executor Run Time": ("run_s", 1e3), "Executor CPU Time": ("cpu_s", 1e9),
    "JVM GC Time": ("gc_s", 1e3),
    "Shuffle Write Metrics.Shuffle Bytes Written": ("shuffle_write_mb", 1e6),
    "Shuffle Write Metrics.Shuffle Write Time": ("shuffle_write_s", 1e9),
    "Input Metrics.Bytes Read": ("input_mb", 1e6),
    "Memory Bytes Spilled": ("spill_memory_mb", 1e6),
}  # fmt: skip


def _metric(metrics: dict[str, Any], key: str) -> float:
    for part in key.split("."):
        metrics = metrics.get(part, 0) if isinstance(metrics, dict) else 0
    return float(metrics or 0)


def summarise(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Jobs, SQL executions, busy and idle seconds, stage launch waits, longest SQL."""
    jobs: dict[int, list[int]] = {}
    submitted: dict[int, int] = {}
    launched: dict[int, int] = {}
    sql: dict[int, dict[str, Any]] = {}
    tasks = dict.fromkeys(TASK_METRICS, 0.0)
    sql_of: dict[int, str | None] = {}  # job id: its SQL execution id
    for e in events:
        kind = e["Event"]
        if kind == "SparkListenerJobStart":
            jobs[e["Job ID"]] = [e["Submission Time"], e["Submission Time"]]
            sql_of[e["Job ID"]] = (e.get("Properties") or {}).get("spark.sql.execution.id")
        elif kind == "SparkListenerJobEnd":
            jobs[e["Job ID"]][1] = e["Completion Time"]
        elif kind == "SparkListenerStageSubmitted":
            submitted[e["Stage Info"]["Stage ID"]] = e["Stage Info"]["Submission Time"]
        elif kind == "SparkListenerTaskStart":
            launched.setdefault(e["Stage ID"], e["Task Info"]["Launch Time"])
        elif kind == "SparkListenerTaskEnd" and e.get("Task Metrics"):
            for key in TASK_METRICS:
                tasks[key] += _metric(e["Task Metrics"], key)
        elif kind.endswith("SQLExecutionStart"):
            sql[e["executionId"]] = {"start": e["time"], "root": _plan_root(e)}
        elif kind.endswith("SQLExecutionEnd"):
            sql[e["executionId"]]["s"] = (e["time"] - sql[e["executionId"]]["start"]) / 1000
    spans = sorted((a, b, job) for job, (a, b) in jobs.items())
    busy = idle = 0
    end = spans[0][0]
    gaps = []  # (ms without a job running, what ran next)
    for a, b, job in spans:
        if a > end:
            nxt = sql.get(int(sql_of[job])) if sql_of.get(job) is not None else None
            gaps.append((a - end, nxt["root"] if nxt else f"job {job}"))
        idle += max(0, a - end)
        busy += max(0, b - max(a, end))
        end = max(end, b)
    waits = [launched[s] - t for s, t in submitted.items() if s in launched]
    longest = sorted((x for x in sql.values() if "s" in x), key=lambda x: -x["s"])[:5]
    return {
        "jobs": len(jobs), "sql_executions": len(sql), "stages": len(submitted),
        "jobs_running_s": round(busy / 1000, 1), "between_jobs_s": round(idle / 1000, 1),
        "stage_launch_wait_s": round(sum(waits) / 1000, 1),
        "tasks": {name: round(tasks[key] / div, 1) for key, (name, div) in TASK_METRICS.items()},
        "longest_sql": [f"{x['s']:.1f}s {x['root']}" for x in longest],
        "longest_gaps": [f"{ms / 1000:.1f}s before {root}" for ms, root in sorted(gaps)[-6:]],
        "sql_timeline": [f"{(x['start'] - spans[0][0]) / 1000:6.1f}s +{x.get('s', 0):5.1f}s "
                         f"{x['root']}" for x in sorted(sql.values(), key=lambda x: x["start"])],
    }  # fmt: skip


# A completed stage's accumulators shown per stage: (name, label, divisor).
STAGE_METRICS = (
    ("internal.metrics.executorRunTime", "task s", 1e3),
    ("internal.metrics.input.recordsRead", "rows in", 1),
    ("internal.metrics.shuffle.read.recordsRead", "shuffled in", 1),
    ("internal.metrics.shuffle.write.recordsWritten", "shuffled out", 1),
    ("internal.metrics.shuffle.write.bytesWritten", "MB out", 1e6),
)  # fmt: skip


def stage_lines(events: list[dict[str, Any]]) -> list[str]:
    """Each SQL execution (seconds, plan root) and under it each of its stages: wall
    seconds, the wait for its first task (a stage submitted while others hold every
    slot waits for one), tasks, and STAGE_METRICS (what finds a step that computes a
    frame twice, or shuffles a table it could keep in place)."""
    sql: dict[int, dict[str, Any]] = {}
    sql_of_stage: dict[int, int] = {}
    done: dict[int, dict[str, Any]] = {}
    launched: dict[int, int] = {}  # stage id: its first task's launch time (ms)
    for e in events:
        kind = e["Event"]
        if kind == "SparkListenerTaskStart":
            launched.setdefault(e["Stage ID"], e["Task Info"]["Launch Time"])
        elif kind.endswith("SQLExecutionStart"):
            sql[e["executionId"]] = {"start": e["time"], "root": _plan_root(e)}
        elif kind.endswith("SQLExecutionEnd"):
            sql[e["executionId"]]["s"] = (e["time"] - sql[e["executionId"]]["start"]) / 1000
        elif kind == "SparkListenerJobStart":
            x = (e.get("Properties") or {}).get("spark.sql.execution.id")
            for stage in e["Stage IDs"]:
                if x is not None:
                    sql_of_stage[stage] = int(x)
        elif kind == "SparkListenerStageCompleted":
            done[e["Stage Info"]["Stage ID"]] = e["Stage Info"]
    lines = []
    for x_id, x in sorted(sql.items()):
        lines.append(f"[{x_id}] {x.get('s', 0):5.1f}s {x['root']}")
        for sid in sorted(s for s, owner in sql_of_stage.items() if owner == x_id and s in done):
            info = done[sid]
            acc = {a["Name"]: a.get("Value") for a in info.get("Accumulables", [])}
            wall = (info["Completion Time"] - info["Submission Time"]) / 1000
            wait = (launched.get(sid, info["Submission Time"]) - info["Submission Time"]) / 1000
            shown = ", ".join(
                f"{label} {float(acc.get(name) or 0) / div:g}" for name, label, div in STAGE_METRICS
            )
            lines.append(
                f"    stage {sid}: {wall:.1f}s (first task after {wait:.2f}s), "
                f"{info['Number of Tasks']} tasks, {shown}"
            )
    return lines


def _child(*args: str, java_home: str | None = None) -> dict[str, Any]:
    env = {**os.environ, **({"JAVA_HOME": java_home} if java_home else {})}
    out = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True,
                         text=True, check=True, env=env)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _drop_daily(root: Path) -> None:
    for name, day in DAILY_OUTPUTS.items():
        for v in (root / name).glob(f"{day.isoformat()}_*"):
            shutil.rmtree(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="daily runs (0: --full alone)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "videorec-bench-features"))
    ap.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark conf for every run (e.g. the driver's JVM options)",
    )
    ap.add_argument(
        "--alt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="variant B's Spark conf on top of --conf: runs alternate A B, B A",
    )
    ap.add_argument("--full", action="store_true", help="profile a full pass too")
    ap.add_argument("--stages", action="store_true", help="list each SQL execution's stages")
    ap.add_argument(
        "--same-jvm",
        type=int,
        default=1,
        metavar="N",
        help="make each daily run N times in one JVM (what a warm JVM saves); the event "
        "log's figures then cover all N",
    )
    ap.add_argument("--java-home", help="the JDK every run's Spark starts (JAVA_HOME)")
    ap.add_argument("--one", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        data, root, mode, threads, evlog, conf, runs = args.one
        res = _stage(data, root, mode, int(threads), evlog, json.loads(conf), int(runs))
        print(json.dumps(res))
        return
    conf_a = dict(c.split("=", 1) for c in args.conf)
    variants = {"A": json.dumps(conf_a)}
    if args.alt:
        variants["B"] = json.dumps({**conf_a, **dict(c.split("=", 1) for c in args.alt)})
    work = Path(args.work)
    data = bench_platform(work, args.events)
    users = round(args.events / EVENTS_PER_USER)
    # The header opens the output, so its load_after is this moment's; the last line
    # gives the load after the runs.
    print(json.dumps({**bench_host.header(),
                      "platform_users": users, "threads": args.threads,
                      "variants": {k: json.loads(v) for k, v in variants.items()}}))  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    evlog = root / "eventlog"
    t = str(args.threads)
    timings: dict[str, list[float]] = {}

    def measured(mode: str, label: str, variant: str, out: str) -> None:
        shutil.rmtree(evlog, ignore_errors=True)
        evlog.mkdir()
        runs = str(args.same_jvm if mode == "daily" else 1)
        res = _child(str(data), out, mode, t, str(evlog), variants[variant], runs,
                     java_home=args.java_home)  # fmt: skip
        timings.setdefault(f"{mode} {variant}", []).append(res["job_s"])
        events = _events(str(evlog), f"profile-{mode}")
        print(json.dumps({"run": label, "variant": variant, **res, **summarise(events)},
                         indent=1))  # fmt: skip
        if args.stages:
            print("\n".join(stage_lines(events)))

    rounds = [list(variants) if i % 2 == 0 else list(variants)[::-1]
              for i in range(max(args.repeat, 1))]  # fmt: skip
    if args.full:
        for i, order in enumerate(rounds if args.alt else rounds[:1]):  # one without --alt
            for v in order:
                shutil.rmtree(root / "full", ignore_errors=True)
                measured("full", f"full {i + 1}", v, str(root / "full"))
    if args.repeat:
        evlog.mkdir(exist_ok=True)
        first = _child(str(data), str(root), "first", t, str(evlog), variants["A"], "1",
                       java_home=args.java_home)  # fmt: skip
        print(json.dumps({"run": "first", **first}))
        n = 0
        for i, order in enumerate(rounds):
            for v in order:
                if n:
                    _drop_daily(root)
                n += 1
                measured("daily", f"daily {i + 1}", v, str(root))
    print(json.dumps({"job_s": timings, "load_after": bench_host.load_average()}))
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
