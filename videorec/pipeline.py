"""The main job behind ``make run`` and the dataset-level validation step.

``run_main_job`` checks the services, makes the default synthetic data set (reusing it
when it already matches the config), validates it, then runs the real
``videorec_daily_retrain`` DAG with Airflow (``airflow dags test``: every task, in
order, against the embedded metadata database) for the data set's logical date, and
reads back what it published: the artifacts, the gate's decision, the index's
figures, the Redis generation, the stage-2 ranker (its version, gate decision, funnel
figures, the served pointer) and one user's recommendations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from videorec.config import Config, ContractConfig
from videorec.dataset import DatasetError, load_validated, read_manifest


def validate_dataset(
    data: str | Path,
    *,
    max_invalid_share: float,
    quarantine_dir: str | Path | None = None,
    limits: ContractConfig | None = None,
) -> dict[str, Any]:
    """Validate every table of a data set, write the quarantine, and summarise.

    Returns {"data", "ok", "tables": {table: counts}, "violations": [messages],
    "quarantine_dir", "injected_corruption"}; ``ok`` is False when a table's bad
    share is above ``max_invalid_share`` (the quarantine is written either way).
    """
    from videorec.contract import ContractViolation

    qdir = Path(quarantine_dir) if quarantine_dir else Path(data) / "_quarantine"
    vd = load_validated(
        data, max_invalid_share=max_invalid_share, quarantine_dir=qdir, check=False, limits=limits
    )
    violations = []
    for res in vd.results.values():
        try:
            res.check(max_invalid_share)
        except ContractViolation as err:
            violations.append(str(err))
    return {
        "data": str(data),
        "ok": not violations,
        "tables": vd.report(),
        "violations": violations,
        "quarantine_dir": str(qdir),
        "injected_corruption": vd.manifest.get("injected_corruption", {}),
    }


def ensure_synthetic_dataset(cfg: Config, *, progress: bool = True) -> tuple[dict[str, Any], bool]:
    """The config's default synthetic data set at ``data.dir``; (summary, reused).

    Generation is deterministic, so a folder whose manifest has the same params is
    the same data and is reused; any other content is replaced atomically.
    """
    from videorec.datagen.synthetic import GeneratorParams, generate

    out = cfg.resolve_path(cfg.data.dir)
    params = GeneratorParams(**cfg.generate.model_dump())
    wanted = {k: str(v) if k == "end_date" else v for k, v in dataclasses.asdict(params).items()}
    try:
        manifest = read_manifest(out)
    except DatasetError:
        manifest = None
    if manifest and manifest.get("params") == wanted:
        keys = ("as_of", "counts", "events_by_type", "injected_corruption")
        return {"out": str(out), **{k: manifest.get(k) for k in keys}}, True
    summary = generate(params, out, config_digest=cfg.digest(), overwrite=True, progress=progress)
    return summary, False


def run_main_job(
    cfg: Config,
    *,
    config_file: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``make run``: services, data set, validation, the retrain DAG; a summary dict.

    ``config_file`` is the file ``cfg`` was loaded from (None: its profile), passed to
    the DAG's tasks. The summary's ``dag`` holds the run's task states and versions,
    ``published`` what was read back (see :func:`published_summary`).
    """
    from videorec.services import ServiceUnavailable, find_java, resolve_redis

    say = log or (lambda _msg: None)
    services: dict[str, Any] = {}
    redis = resolve_redis(cfg)
    services["redis"] = {"url": redis.url, "how": redis.how}
    say(f"redis: {redis.url} ({redis.how})")
    try:
        services["java"] = find_java()
        say(f"java (for Spark): {services['java']}")
    except ServiceUnavailable as err:
        # Not fatal yet: no step of today's main job runs Spark.
        services["java"] = None
        say(f"java (for Spark): [yellow]not found[/yellow]: {err}")

    data, reused = ensure_synthetic_dataset(cfg, progress=progress)
    say(f"synthetic data set: {'reused' if reused else 'generated'} {data['out']}")
    validation = validate_dataset(
        data["out"], max_invalid_share=cfg.contract.max_invalid_share, limits=cfg.contract
    )
    summary = {
        "config_digest": cfg.digest(),
        "profile": cfg.profile,
        "services": services,
        "data": {**data, "reused": reused},
        "validation": validation,
    }
    if not validation["ok"]:
        return summary
    summary["dag"] = run_retrain_dag(cfg, data["out"], redis.url, config_file=config_file, say=say)
    summary["published"] = published_summary(cfg, summary["dag"], redis.url)
    return summary


def run_retrain_dag(
    cfg: Config, data: str, redis_url: str, *, config_file: str | Path | None,
    say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """``videorec_daily_retrain`` for the data set's logical date, through Airflow; the
    tasks use the Redis server at ``redis_url`` (the one this job found or started)."""
    import datetime as dt

    from videorec.orchestrator import RETRAIN_DAG, airflow_env, dags_test, migrate
    from videorec.training.train import default_date

    env = airflow_env(cfg, config_file=config_file)
    env["REDIS_URL"] = redis_url
    migrate(env)
    logical = dt.datetime.combine(default_date(read_manifest(data)), dt.time(), dt.UTC)
    say(f"airflow: {RETRAIN_DAG} for {logical.isoformat()} (home {env['AIRFLOW_HOME']})")
    return dags_test(RETRAIN_DAG, logical, env, echo=_progress(say))


# Parts of Airflow's and its libraries' output lines that are not the stages' progress.
NOISE = (" loc=", "category=", "graphviz", "warnings.warn")


def _progress(say: Callable[[str], None]) -> Callable[[str], None]:
    """Echo the task starts and ends and the stages' own lines, not Airflow's chatter."""

    def echo(line: str) -> None:
        if "[DAG TEST] starting task_id=" in line:
            say(f"▶ {line.split('task_id=')[1].split()[0]}")
        elif "[DAG TEST] end task task_id=" in line:
            say(f"  done {line.split('task_id=')[1].split()[0]}")
        elif "ALERT" in line:
            say(f"  {line.split('] ', 1)[-1]}")
        elif line[:4].isdigit() or any(k in line for k in NOISE):
            return  # Airflow's and Spark's own log lines; the task logs keep them
        elif line.strip():
            say(f"  {line.strip()}")

    return echo


def published_summary(cfg: Config, run: dict[str, Any], redis_url: str) -> dict[str, Any]:
    """What the retrain run left live: versions, gate, index figures, generation, the
    ranker (:func:`ranker_summary`), one user's recommendations with titles (read back
    from the stores, not the run)."""
    from videorec import artifact_names as names
    from videorec.artifacts import open_store

    store = open_store(cfg)
    x = run["xcom"]
    plan = x.get("plan") or {}
    model = x.get("train")
    out: dict[str, Any] = {
        "features": plan.get("features_version"), "model": model,
        "index": x.get("build_index"), "generation": x.get("precompute"),
        "ranking_examples": x.get("ranking_examples"), "ranker": x.get("train_ranker"),
        "mlflow": cfg.mlflow.tracking_uri,
    }  # fmt: skip
    out["artifacts"] = {
        what: store.uri(name, out[what])
        for what, name in (("features", names.FEATURES), ("model", names.MODEL),
                           ("index", names.INDEX), ("ranking_examples", names.RANKING_EXAMPLES),
                           ("ranker", names.RANKER))
        if out[what]
    }  # fmt: skip
    if model:
        from videorec.training.registry import recorded_gate

        out["gate"] = recorded_gate(cfg, model)
    if out["index"]:
        man = store.read_manifest(names.INDEX, out["index"])
        keys = ("factory", "vector_count", "recall_k", "recall_target", "nprobe", "qps")
        out["index_figures"] = {k: man.get(k) for k in keys} | {
            "recall": man.get(f"recall@{man.get('recall_k')}")
        }
    out["ranking"] = ranker_summary(cfg, store, out["ranker"])
    out["sample_user"] = sample_recommendations(cfg, redis_url)
    return out


def ranker_summary(cfg: Config, store: Any, version: str | None) -> dict[str, Any]:
    """The ranker of a run: {"version", "gate" (the recorded outcome under
    ``mlflow.registered_ranker``, None: not gated), "funnel" and "retrieval" (NDCG@20,
    Recall@20 on the hold-out's users), "pointer" (the served ranker's state)}."""
    import json

    from videorec import artifact_names as names
    from videorec.ranking.publish import read_ranker_pointer
    from videorec.training.registry import recorded_gate

    out: dict[str, Any] = {"version": version, "gate": None, "funnel": None, "retrieval": None}
    if version:
        out["gate"] = recorded_gate(cfg, version, name=cfg.mlflow.registered_ranker)
        ev = json.loads(store.read_bytes(names.RANKER, version, "summary.json"))["evaluation"]
        for key, label in (("funnel", "Funnel"), ("retrieval", "Retrieval")):
            m = ev.get(label) or {}
            out[key] = {k: m.get(k) for k in ("ndcg@20", "recall@20", "users")}
    out["pointer"] = read_ranker_pointer(store)
    return out


def sample_recommendations(cfg: Config, redis_url: str, n: int = 10) -> dict[str, Any] | None:
    """One user's base recommendations from the active generation, with titles."""
    import numpy as np
    import redis as redis_lib

    from videorec.dataset import read_table
    from videorec.redis_keys import RedisKeys, active_generation, read_scored

    client = redis_lib.Redis.from_url(redis_url)
    keys = RedisKeys(cfg.precompute.key_prefix)
    gen = active_generation(client, keys)
    if gen is None:
        return None
    users = np.sort(read_table(cfg.resolve_location(cfg.data.dir), "users")["user_id"].to_numpy())
    for uid in users[:500].tolist():
        found = read_scored(client, keys.user_recs(gen, uid))
        if found is not None:
            break
    else:
        return {"generation": gen, "user_id": None, "items": []}
    ids, scores = found
    videos = read_table(cfg.resolve_location(cfg.data.dir), "videos").to_pandas()
    titles = videos.set_index("video_id")["title"]
    items = [
        {"video_id": int(v), "score": float(s), "title": str(titles.get(int(v), "?"))}
        for v, s in zip(ids[:n], scores[:n], strict=True)
    ]
    return {"generation": gen, "user_id": int(uid), "items": items}
