"""The main job behind ``make run`` and the dataset-level validation step.

``run_main_job`` grows with the pipeline: today it checks the services, makes the
default synthetic data set (reusing it when it already matches the config) and
validates it; later stages append their steps here and to the Airflow DAGs, which
call the same functions.
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
    cfg: Config, *, progress: bool = True, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """``make run``: services check, default data set, contract validation; a summary dict."""
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
    return {
        "config_digest": cfg.digest(),
        "profile": cfg.profile,
        "services": services,
        "data": {**data, "reused": reused},
        "validation": validation,
    }
