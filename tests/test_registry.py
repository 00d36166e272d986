"""The MLflow champion gate against a real local SQLite tracking store."""

from __future__ import annotations

from pathlib import Path

import pytest

from videorec.config import parse_config
from videorec.training.registry import (
    CHALLENGER,
    CHAMPION,
    register_and_gate,
    start_run,
    tracking_uri,
)


@pytest.fixture
def mlcfg(tmp_path: Path):
    return parse_config(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                "registered_model": "tt-test",
            },
            "artifacts": {"root": str(tmp_path / "artifacts")},
        }
    )


def _run_with_model(cfg, tmp_path: Path, name: str) -> str:
    import mlflow

    ck = tmp_path / f"{name}.pt"
    ck.write_bytes(b"checkpoint " + name.encode())
    with start_run(cfg, name) as run:
        mlflow.log_artifact(str(ck), "model")
    return run.info.run_id


def test_promotion_and_refusal(mlcfg, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(mlcfg))
    first = register_and_gate(mlcfg, _run_with_model(mlcfg, tmp_path, "a"), "model", 0.1000)
    assert first["decision"] == "promoted" and first["reason"] == "no champion yet"
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == first["version"]

    # 1% worse: within the allowed 2%, promoted.
    second = register_and_gate(mlcfg, _run_with_model(mlcfg, tmp_path, "b"), "model", 0.0990)
    assert (
        second["decision"] == "promoted" and second["champion_version_before"] == first["version"]
    )
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == second["version"]

    # 5% worse than the champion (0.0990): refused, stays challenger, champion unchanged.
    third = register_and_gate(mlcfg, _run_with_model(mlcfg, tmp_path, "c"), "model", 0.0940)
    assert third["decision"] == "refused"
    assert "more than 2% worse than champion" in third["reason"]
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == second["version"]
    assert int(client.get_model_version_by_alias("tt-test", CHALLENGER).version) == third["version"]
    mv = client.get_model_version("tt-test", str(third["version"]))
    assert mv.tags["gate_decision"] == "refused" and mv.tags["val_ndcg20"] == "0.094000"
    # The registered version points at the run's logged checkpoint.
    assert mv.run_id and mv.source.endswith("/model")


def test_gate_threshold_is_configurable(mlcfg, tmp_path: Path) -> None:
    strict = mlcfg.model_copy(
        update={"training": mlcfg.training.model_copy(update={"gate_max_ndcg_drop": 0.0})}
    )
    register_and_gate(strict, _run_with_model(strict, tmp_path, "a"), "model", 0.2)
    res = register_and_gate(strict, _run_with_model(strict, tmp_path, "b"), "model", 0.1999)
    assert res["decision"] == "refused"
    res = register_and_gate(strict, _run_with_model(strict, tmp_path, "c"), "model", 0.2)
    assert res["decision"] == "promoted"
