"""End to end: features -> two-tower -> harness -> embeddings -> MLflow, on small synthetic data.

The data set is the small platform with one heavy user removed from the users table
(its events kept), and the registry already holds a champion (an untrained model with
a config of its own), so the run exercises unknown users, the validation phase's
inputs and the champion gate. The training task's ``fit`` is wrapped to record what
each phase trained on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import videorec.features.job as features_job
import videorec.training.train as train_mod
from videorec.artifact_names import CHECKPOINT_FILE
from videorec.config import Config, parse_config
from videorec.dataset import read_events, read_manifest, read_table
from videorec.examples import read_examples
from videorec.training.gate import GateInputError, gate_model
from videorec.training.model import TwoTowerConfig, TwoTowerModel
from videorec.training.train import (
    default_date,
    load_checkpoint,
    save_checkpoint,
    train_two_tower,
)

pytestmark = pytest.mark.slow

FEATURE_WARNING = "a warning from the feature stage"


def _without_heaviest_user(src: Path, dst: Path) -> int:
    """Copy the data set, dropping the user with the most watches from the users table."""
    shutil.copytree(src, dst)
    ev = read_events(dst)
    watches = ev.filter(pc.equal(ev["event_type"], "watch"))["user_id"].to_numpy()
    ids, counts = np.unique(watches, return_counts=True)
    dropped = int(ids[np.argmax(counts)])
    users = read_table(dst, "users")
    shutil.rmtree(dst / "users")
    (dst / "users").mkdir()
    keep = pc.not_equal(users["user_id"], pa.scalar(dropped, pa.int64()))
    pq.write_table(users.filter(keep), dst / "users" / "part-00000.parquet")
    return dropped


def _register_untrained_champion(cfg: Config, tmp: Path) -> None:
    """Version 1 with the champion alias: a randomly initialised model whose config
    (sizes, history length, vocabularies, no text) differs from the one trained."""
    import mlflow
    from mlflow import MlflowClient

    from videorec.training.registry import CHAMPION, start_run, tracking_uri

    mcfg = TwoTowerConfig(
        embed_dim=32, id_dim=16, hidden_dim=32, user_buckets=1009, video_buckets=1009,
        channel_buckets=101, history_len=8, text_dim=0, categories=["not-a-category"],
    )  # fmt: skip
    torch.manual_seed(0)
    (tmp / "champion").mkdir()
    save_checkpoint(tmp / "champion" / CHECKPOINT_FILE, TwoTowerModel(mcfg), {})
    with start_run(cfg, "untrained champion") as run:
        mlflow.log_artifact(str(tmp / "champion" / CHECKPOINT_FILE), "model")
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    name = cfg.mlflow.registered_model
    client.create_registered_model(name)
    mv = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, CHAMPION, mv.version)


@pytest.fixture(scope="module")
def trained(
    small_platform: Path, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("train")
    data = tmp / "data"
    dropped = _without_heaviest_user(small_platform, data)
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
    _register_untrained_champion(cfg, tmp)
    fits: list[dict[str, Any]] = []
    real_fit = train_mod.fit

    def recording_fit(trainer: Any, examples: Any, **kw: Any) -> Any:
        fits.append({"log_q": trainer.log_q.cpu().numpy().copy(), "examples": examples})
        return real_fit(trainer, examples, **kw)

    feats = features_job.build_features(
        cfg, str(data), default_date(read_manifest(data)), spark=spark
    )
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "fit", recording_fit)
        # The feature stage's warnings travel in its quality report; one is added here.
        mp.setattr(train_mod, "feature_warnings", lambda *_: [FEATURE_WARNING])
        res = train_two_tower(
            cfg, features_version=feats["version"], baselines=("MostPopular",), progress=False,
            log=said.append,
        )  # fmt: skip
    gate = gate_model(cfg, model_version=res["version"])
    return {"cfg": cfg, "res": res, "gate": gate, "tmp": tmp, "data": data, "dropped": dropped,
            "fits": fits, "said": said, "features_version": feats["version"]}  # fmt: skip


def test_two_tower_beats_most_popular_on_the_hold_out(trained: dict[str, Any]) -> None:
    models = trained["res"]["evaluation"]["models"]
    tt, mp = models["TwoTower"], models["MostPopular"]
    assert tt["recall@200"] > mp["recall@200"]
    assert tt["ndcg@20"] > mp["ndcg@20"]


def test_embeddings_for_every_user_and_video(trained: dict[str, Any]) -> None:
    out, data = Path(trained["res"]["uri"]), trained["data"]
    v = pq.read_table(out / "video_embeddings.parquet")
    u = pq.read_table(out / "user_embeddings.parquet")
    assert sorted(v["video_id"].to_pylist()) == sorted(
        read_table(data, "videos")["video_id"].to_pylist()
    )
    users = set(u["user_id"].to_pylist())
    assert set(read_table(data, "users")["user_id"].to_pylist()) <= users
    assert trained["dropped"] in users  # a user with events but no users row
    ev = np.stack(v["embedding"].to_numpy(zero_copy_only=False))
    assert ev.shape[1] == 64 and np.allclose(np.linalg.norm(ev, axis=1), 1.0, atol=1e-4)


def test_checkpoint_carries_its_config_and_reloads(trained: dict[str, Any]) -> None:
    model, meta = load_checkpoint(Path(trained["res"]["uri"]) / CHECKPOINT_FILE)
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


def test_gate_scores_the_registered_model_and_the_champion_on_the_hold_out(
    trained: dict[str, Any],
) -> None:
    """The untrained champion (v1, its own config) is loaded from its checkpoint and
    scored beside the refit model on this run's hold-out: the refit wins."""
    from mlflow import MlflowClient

    from videorec.training.registry import tracking_uri

    cfg, res, g = trained["cfg"], trained["res"], trained["gate"]
    assert g["skipped"] is False and g["model_version"] == res["version"]
    assert g["version"] == 2 and g["champion_version_before"] == 1 and g["champion_error"] is None
    assert g["split"].startswith("hold-out") and res["features_version"] in g["split"]
    # The challenger's figure is the registered (refit) model's hold-out NDCG@20, the
    # same number the harness reports for TwoTower.
    tt = res["evaluation"]["models"]["TwoTower"]["ndcg@20"]
    assert g["challenger_ndcg20"] == pytest.approx(tt, rel=1e-6)
    assert 0 <= g["champion_ndcg20"] < 0.5 * g["challenger_ndcg20"]
    # The sanity floor is MostPopular on the same hold-out, as the harness measures it.
    mp = res["evaluation"]["models"]["MostPopular"]["ndcg@20"]
    assert g["floor_ndcg20"] == pytest.approx(mp, rel=1e-6) and g["challenger_ndcg20"] > mp
    assert g["decision"] == "promoted"
    assert f"{g['challenger_ndcg20']:.4f}" in g["reason"]
    assert f"{g['champion_ndcg20']:.4f}" in g["reason"]
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    assert int(client.get_model_version_by_alias("tt-e2e", "champion").version) == 2
    metrics = client.get_run(res["mlflow"]["run_id"]).data.metrics
    assert metrics["gate_challenger_ndcg_at_20"] == pytest.approx(g["challenger_ndcg20"])
    assert metrics["gate_champion_ndcg_at_20"] == pytest.approx(g["champion_ndcg20"])
    run_tags = client.get_run(res["mlflow"]["run_id"]).data.tags
    assert run_tags["gate_decision"] == "promoted" and run_tags["gate_reason"] == g["reason"]


def test_an_unknown_users_validation_hold_out_is_not_trained_on(trained: dict[str, Any]) -> None:
    """The dropped user (missing from the users table) keeps its own validation boundary,
    and gets a row of its own (a minimal user row, as the feature stage adds), not the
    unknown row 0 shared with every other missing user."""
    from videorec.artifacts import open_store
    from videorec.evaluation.interactions import split_from_features

    fdir = open_store(trained["cfg"]).local_path("features", trained["res"]["features_version"])
    val = split_from_features(fdir).validation()
    row = val.train.user_rows(np.array([trained["dropped"]]))[0]
    boundary = val.test.serve_ts[val.test.rows == row]
    assert len(boundary) == 1
    val_fit, refit = trained["fits"]
    mine = refit["examples"].user_ids == trained["dropped"]
    assert (refit["examples"].user_rows[mine] != 0).all()
    mine_all = refit["examples"].ts[mine]
    # Part of the dropped user's examples are its validation hold-out.
    ex = read_examples(fdir, ["user_id"])["user_id"].to_numpy()
    assert len(mine_all) == int((ex == trained["dropped"]).sum())
    n_before = int((mine_all < boundary[0]).sum())
    assert 0 < n_before < len(mine_all)
    mine_val = val_fit["examples"].ts[val_fit["examples"].user_ids == trained["dropped"]]
    assert len(mine_val) == n_before and mine_val.max() < boundary[0]


def test_the_validation_phase_counts_log_q_over_its_own_examples(trained: dict[str, Any]) -> None:
    """The validation-phase model's logQ comes from its examples; the refit's from all."""
    val_fit, refit = trained["fits"]
    assert len(val_fit["examples"]) < len(refit["examples"])
    for phase in (val_fit, refit):
        ex, log_q = phase["examples"], phase["log_q"]
        counts = np.bincount(ex.label_rows, minlength=len(log_q))[1:]
        seen = counts > 0
        np.testing.assert_allclose(
            log_q[1:][seen], np.log(counts[seen] / len(ex)), rtol=1e-5, atol=1e-6
        )
    assert not np.allclose(val_fit["log_q"], refit["log_q"])


def test_feature_stage_warnings_reach_the_summary_and_the_log(trained: dict[str, Any]) -> None:
    assert trained["res"]["warnings"] == [FEATURE_WARNING]
    assert any(FEATURE_WARNING in line for line in trained["said"])


def test_a_second_gate_registers_no_second_version(trained: dict[str, Any]) -> None:
    """An Airflow retry of the gate task: the recorded outcome, no new registry entry."""
    from mlflow import MlflowClient

    from videorec.training.registry import tracking_uri

    cfg = trained["cfg"]
    again = gate_model(cfg, model_version=trained["res"]["version"])
    assert again["skipped"] is True
    assert {k: again[k] for k in ("version", "decision", "reason", "floor_ndcg20")} == {
        k: trained["gate"][k] for k in ("version", "decision", "reason", "floor_ndcg20")
    }
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    assert len(client.search_model_versions("name = 'tt-e2e'")) == 2  # the champion and ours


def test_gating_an_unknown_model_version_names_it(trained: dict[str, Any]) -> None:
    with pytest.raises(GateInputError, match="2026-01-01_nope: no such model version"):
        gate_model(trained["cfg"], model_version="2026-01-01_nope")


def test_a_streamed_run_counts_the_examples_the_in_memory_run_loads(
    trained: dict[str, Any],
) -> None:
    """``training.data: stream`` takes its shards from the split's one key scan, and
    the validation phase filters the stream as read: the same examples as in memory."""
    cfg = trained["cfg"]
    tcfg = cfg.training.model_copy(update={"data": "stream", "epochs": 1})
    said: list[str] = []
    res = train_two_tower(
        cfg.model_copy(update={"training": tcfg}), features_version=trained["features_version"],
        baselines=("MostPopular",), progress=False, log=said.append,
    )  # fmt: skip
    assert not res["skipped"] and res["version"] != trained["res"]["version"]

    def counts(lines: list[str], data: str) -> str:
        (line,) = [m for m in lines if m.startswith("training on") and f"({data}," in m]
        return line.split(": ", 1)[1]  # "N examples (validation phase), M in all"

    assert counts(said, "stream") == counts(trained["said"], "memory")


def test_rerun_is_a_noop(trained: dict[str, Any]) -> None:
    again = train_two_tower(
        trained["cfg"],
        features_version=trained["features_version"],
        baselines=("MostPopular",),
        progress=False,
    )
    assert again["skipped"] is True and again["version"] == trained["res"]["version"]


def test_cli_train_json_reuses_the_version(trained: dict[str, Any], tmp_path: Path) -> None:
    """`videorec train --json` as a subprocess: the harness JSON plus the training outcome.

    The config equals the fixture's, so the CLI finds the version the function trained
    and prints its summary without training again (the Airflow-retry case).
    """
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(trained["cfg"].model_dump(mode="json")))
    videorec = str(Path(sys.executable).parent / "videorec")
    args = ["train", "--config", str(conf), "--data", str(trained["data"])]
    proc = subprocess.run(
        [videorec, *args, "--baselines", "MostPopular", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["models"]) == {"TwoTower", "MostPopular"}
    assert out["model_version"] == trained["res"]["version"] and out["skipped"] is True
    assert out["mlflow"]["run_id"] == trained["res"]["mlflow"]["run_id"]
    assert out["mlflow"]["decision"] == "promoted" and out["mlflow"]["skipped"] is True

    bad = subprocess.run(
        [videorec, *args[:-1], str(tmp_path / "no-such-data"), "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "no-such-data" in json.loads(bad.stdout)["message"]


def test_a_short_ranker_run_beats_retrieval_alone_and_passes_its_gate(
    trained: dict[str, Any],
) -> None:
    """The stage-2 funnel on the small platform: examples from this two-tower version,
    a few epochs of the ranker, its funnel above retrieval alone on the same hold-out
    users, the gate promotes it under its own registered name, and a second run of
    each stage reuses the committed version."""
    from videorec.ranking.examples import build_ranking_examples
    from videorec.ranking.gate import gate_ranker
    from videorec.ranking.train import train_ranker

    cfg = trained["cfg"].model_copy(
        update={"ranking": trained["cfg"].ranking.model_copy(update={"epochs": 6})}
    )
    ex = build_ranking_examples(
        cfg, features_version=trained["features_version"], model_version=trained["res"]["version"]
    )
    assert ex["train_pairs"] > 0 and ex["positives"] > 0 and not ex["skipped"]
    res = train_ranker(cfg, examples_version=ex["version"])
    funnel, alone = res["evaluation"]["Funnel"], res["evaluation"]["Retrieval"]
    assert funnel["users"] == alone["users"] > 0
    assert funnel["ndcg@20"] > alone["ndcg@20"]
    gate = gate_ranker(cfg, ranker_version=res["version"])
    assert gate["decision"] == "promoted" and gate["model"] == cfg.mlflow.registered_ranker
    assert gate["floor_ndcg20"] == pytest.approx(alone["ndcg@20"])
    again = build_ranking_examples(
        cfg, features_version=trained["features_version"], model_version=trained["res"]["version"]
    )
    assert again["skipped"] and again["version"] == ex["version"]
    assert train_ranker(cfg, examples_version=ex["version"])["skipped"]
    assert gate_ranker(cfg, ranker_version=res["version"])["skipped"]
