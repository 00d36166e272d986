"""The MLflow champion gate against a real local SQLite tracking store and real models.

A tiny two-tower model is trained on clustered interactions (each user watches one
cluster of videos), so a trained model ranks a user's held-out videos far above a
randomly initialised one; the gate scores both on the same hold-out with the harness.
"""

from __future__ import annotations

import datetime as dt
import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from videorec.artifact_names import CHECKPOINT_FILE
from videorec.config import Config, TrainingConfig, parse_config
from videorec.evaluation.interactions import Events, build_split, per_user_temporal_holdout
from videorec.training.model import TwoTowerModel
from videorec.training.registry import (
    CHALLENGER,
    CHAMPION,
    register_and_gate,
    start_run,
    tracking_uri,
)
from videorec.training.retrieval import TwoTowerRecommender, bare_dimensions, split_scorer
from videorec.training.train import save_checkpoint

N_USERS, N_CLUSTERS, PER_CLUSTER, WATCHES = 150, 6, 12, 10
TINY = TrainingConfig(
    embed_dim=16, id_dim=8, hidden_dim=32, user_buckets=1009, video_buckets=1009,
    channel_buckets=101, text_encoder="none", batch_size=64, warmup_steps=5,
    learning_rate=1e-2, dropout=0.0, device="cpu", seed=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    """A hold-out split, a scorer over it, a trained model and a random one (same config)."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(N_USERS) * 10 + 7, WATCHES)  # ids are not row numbers
    cluster = (users // 10) % N_CLUSTERS
    videos = 1000 + cluster * PER_CLUSTER + rng.integers(0, PER_CLUSTER, len(users))
    ts = (np.tile(np.arange(WATCHES), N_USERS) + 1) * 3_600_000_000  # hourly, int64 us
    ev = Events(users.astype(np.int64), videos.astype(np.int64), ts.astype(np.int64))
    held = per_user_temporal_holdout(ev, 0.3)
    split = build_split(ev.take(~held), ev.take(held), items=None, protocol={})
    v_t, u_t = bare_dimensions(split.train)
    as_of = dt.datetime(1970, 1, 2, tzinfo=dt.UTC)
    score = split_scorer(
        split, v_t, u_t, text=lambda: None, as_of=as_of, training=TINY, device="cpu"
    )
    # 20 epochs: converged whatever the seed (hold-out nDCG 0.57 to 0.64 over seeds 1 to
    # 12, against 0.10 to 0.59 over seeds 1 to 24 at 6 epochs, where one init can fail the test).
    trained = TwoTowerRecommender(training=TINY, history_len=5, epochs=20).fit(split.train)
    good = trained.trainer.model
    torch.manual_seed(123)
    bad = TwoTowerModel(good.cfg).eval()
    return {"split": split, "score": score, "good": good, "bad": bad}


@pytest.fixture
def mlcfg(tmp_path: Path) -> Config:
    return parse_config(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                "registered_model": "tt-test",
            },
            "artifacts": {"root": str(tmp_path / "artifacts")},
        }
    )


def _run_with_model(cfg: Config, tmp_path: Path, name: str, model: TwoTowerModel) -> str:
    """An MLflow run whose ``model/`` artifact folder holds the model's checkpoint."""
    import mlflow

    folder = tmp_path / name
    folder.mkdir()
    save_checkpoint(folder / CHECKPOINT_FILE, model, {"note": name})
    with start_run(cfg, name) as run:
        mlflow.log_artifact(str(folder / CHECKPOINT_FILE), "model")
    return run.info.run_id


def _gate(
    cfg: Config, tmp_path: Path, name: str, model: TwoTowerModel, score: Callable,
    floor: float | None = None,
) -> dict:  # fmt: skip
    run_id = _run_with_model(cfg, tmp_path, name, model)
    return register_and_gate(
        cfg, run_id, "model", challenger=model, score=score, split="tiny hold-out",
        artifact_version=f"2026-11-01_{name}", floor=floor,
    )  # fmt: skip


def _local_artifacts(cfg: Config, run_id: str) -> Path:
    from mlflow import MlflowClient

    uri = MlflowClient(tracking_uri=tracking_uri(cfg)).get_run(run_id).info.artifact_uri
    parsed = urllib.parse.urlparse(uri)
    assert parsed.scheme in ("", "file"), uri
    return Path(urllib.parse.unquote(parsed.path))


def test_a_run_points_mlflow_at_the_config_s_store_for_its_length_only(
    mlcfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's own MLflow use in the same process (a notebook that trains, then logs
    a run of its own) still goes to the caller's store after a videorec run."""
    import mlflow

    mine = f"sqlite:///{tmp_path}/mine.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mine)
    mlflow.set_tracking_uri(mine)
    try:
        with start_run(mlcfg, "a videorec run") as run:
            assert mlflow.get_tracking_uri() == tracking_uri(mlcfg) != mine
            mlflow.log_param("where", "videorec")
        assert mlflow.get_tracking_uri() == mine
        with mlflow.start_run() as own:
            mlflow.log_param("where", "mine")
        assert mlflow.MlflowClient(mine).get_run(own.info.run_id).data.params == {"where": "mine"}
        theirs = mlflow.MlflowClient(tracking_uri(mlcfg)).get_run(run.info.run_id)
        assert theirs.data.params == {"where": "videorec"}
        assert theirs.info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(None)  # the process as it was before the test: nothing set


def test_the_trained_model_is_far_better_than_the_random_one(world: dict[str, Any]) -> None:
    good, bad = world["score"](world["good"]), world["score"](world["bad"])
    assert good > 2 * bad and good > 0.2
    assert world["score"](world["good"]) == good  # scoring is deterministic


def test_promotion_and_refusal_on_one_split(
    world: dict[str, Any], mlcfg: Config, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(mlcfg))
    score, good, bad = world["score"], world["good"], world["bad"]
    good_s, bad_s = score(good), score(bad)

    first = _gate(mlcfg, tmp_path, "random", bad, score)
    assert first["decision"] == "promoted" and first["reason"].startswith("no champion yet")
    assert first["champion_ndcg20"] is None and first["champion_version_before"] is None
    assert first["challenger_ndcg20"] == pytest.approx(bad_s)

    # The trained model against the random champion, re-scored from its checkpoint.
    second = _gate(mlcfg, tmp_path, "trained", good, score)
    assert second["decision"] == "promoted" and second["champion_version_before"] == 1
    assert second["challenger_ndcg20"] == pytest.approx(good_s)
    assert second["champion_ndcg20"] == pytest.approx(bad_s)
    assert f"{good_s:.4f}" in second["reason"] and f"{bad_s:.4f}" in second["reason"]
    assert second["split"] == "tiny hold-out" and second["champion_error"] is None
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == 2

    # The random model against the trained champion: refused, reason names both figures.
    third = _gate(mlcfg, tmp_path, "random-again", bad, score)
    assert third["decision"] == "refused" and third["champion_version_before"] == 2
    assert third["champion_ndcg20"] == pytest.approx(good_s)
    assert f"{bad_s:.4f}" in third["reason"] and f"{good_s:.4f}" in third["reason"]
    assert "more than 2% worse than champion v2" in third["reason"]
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == 2
    assert int(client.get_model_version_by_alias("tt-test", CHALLENGER).version) == 3
    mv = client.get_model_version("tt-test", "3")
    assert mv.tags["gate_decision"] == "refused" and mv.tags["gate_reason"] == third["reason"]
    assert mv.tags["gate_split"] == "tiny hold-out" and mv.tags["gate_champion_version"] == "2"
    assert float(mv.tags["gate_ndcg20"]) == pytest.approx(bad_s, abs=1e-6)
    assert float(mv.tags["gate_champion_ndcg20"]) == pytest.approx(good_s, abs=1e-6)
    assert mv.run_id and mv.source.endswith("/model")
    metrics = client.get_run(mv.run_id).data.metrics
    assert metrics["gate_challenger_ndcg_at_20"] == pytest.approx(bad_s)
    assert metrics["gate_champion_ndcg_at_20"] == pytest.approx(good_s)

    # The allowed drop is configurable: with 100% anything finite passes.
    lax = mlcfg.model_copy(
        update={"training": mlcfg.training.model_copy(update={"gate_max_ndcg_drop": 1.0})}
    )
    assert _gate(lax, tmp_path, "random-lax", bad, score)["decision"] == "promoted"


def test_a_challenger_below_the_floor_is_refused_even_without_a_champion(
    world: dict[str, Any], mlcfg: Config, tmp_path: Path
) -> None:
    """The nightly floor (MostPopular's figure on the split): losing to it refuses."""
    from mlflow import MlflowClient

    score, good, bad = world["score"], world["good"], world["bad"]
    good_s, bad_s = score(good), score(bad)
    out = _gate(mlcfg, tmp_path, "random", bad, score, floor=good_s)
    assert out["decision"] == "refused" and out["floor_ndcg20"] == good_s
    assert f"below the MostPopular floor {good_s:.4f}" in out["reason"]
    assert f"{bad_s:.4f}" in out["reason"]
    client = MlflowClient(tracking_uri=tracking_uri(mlcfg))
    assert int(client.get_model_version_by_alias("tt-test", CHALLENGER).version) == 1
    with pytest.raises(Exception, match="alias"):
        client.get_model_version_by_alias("tt-test", CHAMPION)
    # Above the floor, the same gate promotes; the floor is read back from the tags.
    ok = _gate(mlcfg, tmp_path, "trained", good, score, floor=bad_s)
    assert ok["decision"] == "promoted" and ok["floor_ndcg20"] == pytest.approx(bad_s)
    from videorec.training.registry import recorded_gate

    assert recorded_gate(mlcfg, "2026-11-01_trained")["floor_ndcg20"] == pytest.approx(bad_s)


def test_a_champion_that_cannot_be_loaded_is_reported_not_compared(
    world: dict[str, Any], mlcfg: Config, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(mlcfg))
    score, good, bad = world["score"], world["good"], world["bad"]
    first = _gate(mlcfg, tmp_path, "trained", good, score)
    assert first["decision"] == "promoted"
    art = _local_artifacts(mlcfg, client.get_model_version("tt-test", "1").run_id) / "model"
    assert (art / CHECKPOINT_FILE).is_file()
    shutil.rmtree(art)

    # Even the good model is refused: the champion cannot be checked against it.
    gone = _gate(mlcfg, tmp_path, "after-delete", good, score)
    assert gone["decision"] == "refused" and gone["champion_ndcg20"] is None
    assert gone["champion_error"] and "could not be loaded or scored" in gone["reason"]
    assert gone["champion_error"] in gone["reason"] and "nan" not in gone["reason"].lower()
    assert f"{score(good):.4f}" in gone["reason"]
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == 1
    tags = client.get_model_version("tt-test", str(gone["version"])).tags
    assert tags["gate_champion_error"] == gone["champion_error"]

    # The operator's way out: promote over a champion known to be broken.
    lenient = mlcfg.model_copy(
        update={
            "training": mlcfg.training.model_copy(update={"gate_unscorable_champion": "promote"})
        }
    )
    over = _gate(lenient, tmp_path, "over-broken", bad, score)
    assert over["decision"] == "promoted" and over["champion_error"]
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == over["version"]

    # A checkpoint that is there but is not a checkpoint is reported the same way.
    ck = _local_artifacts(mlcfg, client.get_model_version("tt-test", str(over["version"])).run_id)
    (ck / "model" / CHECKPOINT_FILE).write_bytes(b"not a torch checkpoint")
    garbled = _gate(mlcfg, tmp_path, "after-garble", good, score)
    assert garbled["decision"] == "refused" and garbled["champion_ndcg20"] is None
    assert garbled["champion_error"] and garbled["champion_error"] in garbled["reason"]


def test_a_second_gate_of_one_artifact_version_returns_the_first_outcome(
    world: dict[str, Any], mlcfg: Config, tmp_path: Path
) -> None:
    """An Airflow retry (or the loser of a commit race) must not register again."""
    from mlflow import MlflowClient

    score, good = world["score"], world["good"]
    first = _gate(mlcfg, tmp_path, "once", good, score)
    run_id = _run_with_model(mlcfg, tmp_path, "retry", good)
    again = register_and_gate(
        mlcfg, run_id, "model", challenger=good, score=score, split="tiny hold-out",
        artifact_version="2026-11-01_once",
    )  # fmt: skip
    assert again == first
    versions = MlflowClient(tracking_uri=tracking_uri(mlcfg)).search_model_versions(
        "name = 'tt-test'"
    )
    assert len(versions) == 1


def test_a_champion_promoted_while_scoring_is_compared_again(
    world: dict[str, Any], mlcfg: Config, tmp_path: Path
) -> None:
    """Another run moves the champion alias while this gate scores the old champion:
    the gate must compare with the new champion, not promote over it unseen."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(mlcfg))
    score, good, bad = world["score"], world["good"], world["bad"]
    _gate(mlcfg, tmp_path, "old-champion", bad, score)  # v1, champion
    _gate(mlcfg, tmp_path, "strong", good, score)  # v2, promoted over v1
    client.set_registered_model_alias("tt-test", CHAMPION, "1")  # back to the weak one
    calls = {"n": 0}

    def racing_score(model: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 2:  # while the champion (v1) is scored, v2 is promoted again
            client.set_registered_model_alias("tt-test", CHAMPION, "2")
        return score(model)

    res = _gate(mlcfg, tmp_path, "weak-challenger", bad, racing_score)
    assert res["champion_version_before"] == 2
    assert res["decision"] == "refused"
    assert int(client.get_model_version_by_alias("tt-test", CHAMPION).version) == 2


def test_runs_keep_their_artifacts_in_the_store_not_the_working_directory(
    mlcfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: dict[str, Any]
) -> None:
    """MLflow's default (./mlruns under the working directory of whichever process made
    the experiment) would put the champion on one worker's disk: the experiment is made
    at ``<artifacts.root>/mlflow``, or where ``mlflow.artifact_location`` says."""
    from mlflow import MlflowClient

    from videorec.training.registry import artifact_location, experiment_id

    cwd = tmp_path / "worker-cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_id = _run_with_model(mlcfg, tmp_path, "placed", world["good"])
    client = MlflowClient(tracking_uri=tracking_uri(mlcfg))
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert artifact_location(mlcfg) == str(tmp_path / "artifacts" / "mlflow")
    assert exp.artifact_location.removeprefix("file://") == str(tmp_path / "artifacts" / "mlflow")
    assert (_local_artifacts(mlcfg, run_id) / "model" / CHECKPOINT_FILE).is_file()
    assert _local_artifacts(mlcfg, run_id).is_relative_to(tmp_path / "artifacts" / "mlflow")
    assert not list(cwd.iterdir())  # nothing under the working directory
    assert experiment_id(mlcfg) == exp.experiment_id  # found again, not made twice

    # A configured place (relative: from the repo root; here absolute) wins, for a new
    # experiment; an existing one elsewhere keeps its place, and a warning says so.
    other = mlcfg.model_copy(update={"mlflow": mlcfg.mlflow.model_copy(
        update={"experiment": "placed-by-config", "artifact_location": str(tmp_path / "ml")}
    )})  # fmt: skip
    placed = client.get_experiment(experiment_id(other))
    assert placed.artifact_location.removeprefix("file://") == str(tmp_path / "ml")
    moved = mlcfg.model_copy(update={"mlflow": mlcfg.mlflow.model_copy(
        update={"artifact_location": str(tmp_path / "elsewhere")})})  # fmt: skip
    with pytest.warns(UserWarning, match="MLflow cannot move an experiment's artifacts"):
        assert experiment_id(moved) == exp.experiment_id


def test_the_champion_is_gated_from_artifacts_on_s3(
    world: dict[str, Any], tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prod layout: artifacts (and so MLflow's) on S3, the tracking store apart.
    The second gate downloads the champion's checkpoint from S3 and scores it."""
    from conftest import s3_client

    bucket = f"ml-{tmp_path.name.lower().replace('_', '-')[:40]}"
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(key, value)
    # Absent before, restored to absent after: the config's endpoint is the one used.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "unset")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    cfg = parse_config({
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "registered_model": "tt-s3"},
        "artifacts": {"root": f"s3://{bucket}/videorec", "s3_endpoint_url": s3_endpoint},
    })  # fmt: skip
    score = world["score"]
    first = _gate(cfg, tmp_path, "first", world["good"], score)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("videorec/mlflow/") and k.endswith(CHECKPOINT_FILE) for k in keys)
    second = _gate(cfg, tmp_path, "second", world["good"], score)
    assert first["decision"] == second["decision"] == "promoted", second
    assert second["champion_error"] is None
    assert second["champion_ndcg20"] == pytest.approx(score(world["good"]))
