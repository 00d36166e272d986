"""End to end: features -> two-tower -> harness -> embeddings -> MLflow, on small synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from videorec.config import parse_config
from videorec.dataset import read_table
from videorec.training.train import CHECKPOINT, load_checkpoint, train_two_tower

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(
    small_platform: Path, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("train")
    cfg = parse_config(
        {
            "artifacts": {"root": str(tmp / "artifacts")},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "registered_model": "tt-e2e"},
            "training": {
                "embed_dim": 64, "id_dim": 32, "hidden_dim": 128, "epochs": 4,
                "early_stopping_patience": 2, "batch_size": 512, "text_cache_dir": str(tmp / "text"),
            },
        }
    )  # fmt: skip
    res = train_two_tower(
        cfg, str(small_platform), spark=spark, baselines=("MostPopular",), progress=False
    )
    return {"cfg": cfg, "res": res, "tmp": tmp}


def test_two_tower_beats_most_popular_on_the_hold_out(trained: dict[str, Any]) -> None:
    models = trained["res"]["evaluation"]["models"]
    tt, mp = models["TwoTower"], models["MostPopular"]
    assert tt["recall@200"] > mp["recall@200"]
    assert tt["ndcg@20"] > mp["ndcg@20"]


def test_embeddings_for_every_user_and_video(trained: dict[str, Any], small_platform: Path) -> None:
    out = Path(trained["res"]["uri"])
    v = pq.read_table(out / "video_embeddings.parquet")
    u = pq.read_table(out / "user_embeddings.parquet")
    assert sorted(v["video_id"].to_pylist()) == sorted(
        read_table(small_platform, "videos")["video_id"].to_pylist()
    )
    assert set(read_table(small_platform, "users")["user_id"].to_pylist()) <= set(
        u["user_id"].to_pylist()
    )
    ev = np.stack(v["embedding"].to_numpy(zero_copy_only=False))
    assert ev.shape[1] == 64 and np.allclose(np.linalg.norm(ev, axis=1), 1.0, atol=1e-4)


def test_checkpoint_carries_its_config_and_reloads(trained: dict[str, Any]) -> None:
    model, meta = load_checkpoint(Path(trained["res"]["uri"]) / CHECKPOINT)
    assert model.cfg.embed_dim == 64 and not model.training
    assert (
        meta["model_config"]["embed_dim"] == 64 and meta["config_digest"] == trained["cfg"].digest()
    )
    assert meta["features_version"] == trained["res"]["features_version"]
    assert len(meta["model_config"]["categories"]) == 20


def test_mlflow_run_registry_and_gate(trained: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    from videorec.training.registry import tracking_uri

    cfg, res = trained["cfg"], trained["res"]
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    run = client.get_run(res["mlflow"]["run_id"])
    assert run.data.params["training.embed_dim"] == "64"
    assert "best_val_recall_at_200" in run.data.metrics
    assert "eval/TwoTower/ndcg_at_20" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "val_recall_at_200")
    assert len(history) == len(res["epochs"]) >= 1
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "evaluation"} <= arts
    assert res["mlflow"]["decision"] == "promoted" and res["mlflow"]["version"] == 1
    assert int(client.get_model_version_by_alias("tt-e2e", "champion").version) == 1


def test_rerun_is_a_noop(trained: dict[str, Any], small_platform: Path, spark: Any) -> None:
    again = train_two_tower(
        trained["cfg"], str(small_platform), spark=spark, baselines=("MostPopular",), progress=False
    )
    assert again["skipped"] is True and again["version"] == trained["res"]["version"]


def test_cli_train_json_reuses_the_version(
    trained: dict[str, Any], small_platform: Path, tmp_path: Path
) -> None:
    """`videorec train --json` as a subprocess: the harness JSON plus the training outcome.

    The config equals the fixture's, so the CLI finds the version the function trained
    and prints its summary without training again (the Airflow-retry case).
    """
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(trained["cfg"].model_dump(mode="json")))
    videorec = str(Path(sys.executable).parent / "videorec")
    args = ["train", "--config", str(conf), "--data", str(small_platform)]
    proc = subprocess.run(
        [videorec, *args, "--baselines", "MostPopular", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["models"]) == {"TwoTower", "MostPopular"}
    assert out["model_version"] == trained["res"]["version"] and out["skipped"] is True
    assert out["mlflow"]["run_id"] == trained["res"]["mlflow"]["run_id"]
    assert out["mlflow"]["decision"] == "promoted"

    bad = subprocess.run(
        [videorec, *args[:-1], str(tmp_path / "no-such-data"), "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "no-such-data" in json.loads(bad.stdout)["message"]
