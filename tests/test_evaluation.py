"""The evaluation harness: splits, end-to-end runs, reports, the CLI and MovieLens figures."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videorec.evaluation.harness import evaluate, parse_ks, parse_models, run_evaluation
from videorec.evaluation.interactions import (
    Events,
    Interactions,
    build_split,
    per_user_temporal_holdout,
    split_from_dataset,
    split_from_features,
)
from videorec.evaluation.recommenders import EASE, MODEL_NAMES, EASERecency

VIDEOREC = str(Path(sys.executable).parent / "videorec")
ML_SMALL = Path(__file__).resolve().parents[2] / "shared/datasets/ml-latest-small"
S = 1_000_000  # microseconds per second


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic platform (about 26k watches, 800 videos, 80 channels)."""
    from videorec.datagen.synthetic import GeneratorParams, generate

    out = tmp_path_factory.mktemp("eval") / "platform"
    params = GeneratorParams(users=1500, videos=800, days=21, seed=3, end_date=dt.date(2026, 11, 1))
    generate(params, out, config_digest="t", progress=False)
    return out


# --- splits ------------------------------------------------------------------------


def test_per_user_temporal_holdout_by_hand() -> None:
    # user 1: 10 events -> last 2 held out; user 2: 3 events -> floor(0.6)=0 -> 1 held
    # out; user 3: 1 event -> held out (and later left out as a cold-start user).
    # user 2's last two events share a timestamp: the higher video id is "later".
    users = np.array([1] * 10 + [2, 2, 2] + [3])
    videos = np.array([*range(100, 110), 7, 9, 5, 1])
    ts = np.array([*range(10), 0, 5, 5, 0]) * S
    perm = np.random.default_rng(0).permutation(len(users))  # input order must not matter
    held = per_user_temporal_holdout(Events(users[perm], videos[perm], ts[perm]), 0.2)
    held_pairs = {
        (int(u), int(v)) for u, v in zip(users[perm][held], videos[perm][held], strict=True)
    }
    assert held_pairs == {(1, 108), (1, 109), (2, 9), (3, 1)}
    with pytest.raises(ValueError, match="fraction"):
        per_user_temporal_holdout(Events(users, videos, ts), 1.0)


def test_build_split_counts_and_exclusions() -> None:
    train = Events(
        np.array([1, 1, 1, 2, 2]), np.array([10, 11, 12, 10, 13]), np.array([1, 2, 3, 1, 2]) * S
    )
    test = Events(
        # user 1: 14 new (in catalogue? no: nobody trained on it), 13 new, 12 a re-watch,
        # 13 again (a duplicate). user 2: only a re-watch. user 9: cold start.
        np.array([1, 1, 1, 1, 2, 9]),
        np.array([14, 13, 12, 13, 10, 10]),
        np.array([7, 5, 6, 8, 9, 4]) * S,
    )
    split = build_split(train, test, items=None, protocol={"holdout_fraction": 0.2})
    t = split.test
    assert split.train.item_ids.tolist() == [10, 11, 12, 13]
    assert t.rows.tolist() == [split.train.user_rows(np.array([1]))[0]]
    assert t.n_relevant.tolist() == [2]  # 13 and 14; 14 is outside the catalogue
    assert t.relevant.toarray().tolist() == [[0, 0, 0, 1]]
    assert t.serve_ts.tolist() == [5 * S]
    assert split.stats["cold_start_users_left_out"] == 1
    assert split.stats["rewatch_pairs_dropped"] == 2
    assert split.stats["users_left_with_only_rewatches"] == 1
    assert split.stats["heldout_items_outside_catalogue"] == 1


def test_interactions_histories_and_recency() -> None:
    ev = Events(
        np.array([4, 4, 4, 4, 8]),
        np.array([30, 20, 30, 10, 20]),
        np.array([1, 2, 3, 3, 1]) * S,
    )
    it = Interactions.from_events(ev)
    assert it.user_ids.tolist() == [4, 8] and it.item_ids.tolist() == [10, 20, 30]
    assert it.matrix.toarray().tolist() == [[1, 1, 1], [0, 1, 0]]
    r = it.history_indptr
    # Time order, ties by video id: (1 s, 30), (2 s, 20), (3 s, 10), (3 s, 30).
    assert it.item_ids[it.event_cols[r[0] : r[1]]].tolist() == [30, 20, 10, 30]
    pos = it.recency_positions().toarray() - (it.recency_positions().toarray() > 0)
    # Distinct videos by last watch: 20 (2 s), 10 (3 s), 30 (3 s, after 10 by id).
    assert pos[0].tolist() == [1, 2, 0] and pos[1].tolist() == [0, 0, 0]
    assert it.item_popularity.tolist() == [1, 2, 1]
    assert it.item_cols(np.array([20, 99])).tolist() == [1, -1]


def test_split_from_dataset_and_validation(platform: Path) -> None:
    split = split_from_dataset(platform)
    tr = split.train
    assert split.stats["evaluated_users"] == split.test.n_users > 500
    # Training rows and hold-out never overlap (re-watches were dropped).
    assert tr.matrix[split.test.rows].multiply(split.test.relevant).nnz == 0
    # Every user's training events precede (or tie) the user's first held-out event.
    last_train = np.zeros(tr.n_users, np.int64)
    np.maximum.at(last_train, tr.event_rows, tr.event_ts)
    assert (last_train[split.test.rows] <= split.test.serve_ts).all()
    # The synthetic platform has channels and categories: metadata is filled in.
    assert (split.items.channel >= 0).all() and (split.items.category >= 0).all()

    val = split.validation()
    assert val.protocol["role"] == "validation"
    # Carved out of training: its train + hold-out are exactly the training events.
    assert val.train.n_events + val.stats["heldout_interactions"] == tr.n_events
    assert set(val.train.item_ids) <= set(tr.item_ids)
    np.testing.assert_array_equal(
        val.items.channel, split.items.channel[tr.item_cols(val.train.item_ids)]
    )


def test_split_from_features_version(platform: Path, tmp_path: Path) -> None:
    """A feature-stage version folder (written here with the stage's column layout)."""
    ts = pa.timestamp("us", tz="UTC")
    base = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
    version = tmp_path / "features" / "2026-11-01_abc"
    (version / "examples").mkdir(parents=True)
    (version / "eval").mkdir()
    vids = pq.read_table(next((platform / "videos").glob("*.parquet")))["video_id"]
    v = vids.to_numpy()[:6]
    examples = pa.table(
        {
            "user_id": pa.array([1, 1, 1, 2, 2], pa.int64()),
            "video_id": pa.array(v[[0, 1, 2, 0, 3]], pa.int64()),
            "ts": pa.array([base + dt.timedelta(hours=h) for h in range(5)], ts),
            "weight": [1.0] * 5,
            "history": pa.array([[], [1], [1, 2], [], [1]], pa.list_(pa.int64())),
        }
    )
    evals = pa.table(
        {
            "user_id": pa.array([1, 1, 2, 3], pa.int64()),
            "video_id": pa.array(v[[3, 4, 1, 0]], pa.int64()),
            "ts": pa.array([base + dt.timedelta(days=5)] * 4, ts),
            "event_type": ["watch", "skip", "watch", "watch"],
            "is_positive": [True, False, True, True],
        }
    )
    pq.write_table(examples, version / "examples" / "part-0.parquet")
    pq.write_table(evals, version / "eval" / "part-0.parquet")
    manifest = {"data": str(platform), "split": "last_days", "features_version": version.name}
    (version / "_manifest.json").write_text(json.dumps(manifest))

    split = split_from_features(version)
    assert split.train.n_events == 5 and split.train.item_ids.tolist() == sorted(v[[0, 1, 2, 3]])
    # The skip is not an interaction; user 3 has no training history.
    assert split.test.n_relevant.tolist() == [1, 1]
    assert split.stats["cold_start_users_left_out"] == 1
    assert split.protocol["split"] == "features:last_days"
    assert (split.items.channel >= 0).all()  # metadata from the data set in the manifest
    out = run_evaluation(features_version_dir=version, models="MostPopular", ks=(1, 2))
    assert set(out["models"]) == {"MostPopular"} and out["split"]["evaluated_users"] == 2


# --- the harness end to end ------------------------------------------------------


def test_harness_end_to_end_baselines_learn(platform: Path, tmp_path: Path) -> None:
    from videorec.artifacts import LocalArtifactStore

    store = LocalArtifactStore(tmp_path / "artifacts")
    out = tmp_path / "report"
    res = run_evaluation(platform, params="reference", out=out, store=store, config_digest="t")
    models = res["models"]
    assert list(models) == list(MODEL_NAMES)
    for name, m in models.items():
        for key in ("recall@20", "ndcg@20", "recall@200", "hitrate@20", "mrr", "coverage@200"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        # Longer lists can only find more: recall is monotone in K.
        assert m["recall@10"] <= m["recall@20"] <= m["recall@50"] <= m["recall@200"]
        assert m["users"] == res["split"]["evaluated_users"]
    # A real check that the baselines learn: they beat popularity clearly.
    pop = models["MostPopular"]
    for name in ("EASE", "ItemKNN", "EASE-recency"):
        assert models[name]["ndcg@20"] > 1.2 * pop["ndcg@20"], name
        assert models[name]["recall@20"] > 1.2 * pop["recall@20"], name
    assert res["params"]["EASE"] == {"lam": 200.0}
    assert res["params_source"]["EASE-recency"] == "reference+validation"
    # Beyond accuracy: the synthetic data has channels, so nothing is null there.
    assert pop["top_channel_share@20"] is not None and pop["lists_breaking_caps@20"] is not None

    files = {p.name for p in out.iterdir()}
    assert files == {"report.md", "metrics.json", "recall_at_k.png", "popularity.png"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["models"] == models
    assert (out / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert f"{models['EASE']['ndcg@20']:.4f}" in md
    versions = store.list_versions("evaluation")
    assert len(versions) == 1 and res["artifact"]["version"] == versions[0]
    stored = json.loads(store.read_bytes("evaluation", versions[0], "metrics.json"))
    assert stored["models"] == models


def test_tuning_uses_validation_only(platform: Path) -> None:
    split = split_from_dataset(platform)
    grids = {
        "ItemKNN": {"k": [5, 50]},
        "EASE": {"lam": [1.0, 300.0]},
        "EASE-recency": {"lam": [300.0], "decay": [0.5, 0.99]},
    }
    res = evaluate(split, models=["ItemKNN", "EASE", "EASE-recency"], grids=grids)
    val = split.validation()
    from videorec.evaluation.harness import evaluate_fitted
    from videorec.evaluation.recommenders import make_model

    for name, rep in res.models.items():
        assert rep.params_source == "validation"
        assert len(rep.tuning) == 2
        best = max(rep.tuning, key=lambda t: t["score"])
        assert {k: rep.params[k] for k in best["params"]} == best["params"]
        # The recorded score is the validation NDCG@20 of that grid point.
        model = make_model(name, best["params"]).fit(val.train)
        m, _ = evaluate_fitted(model, val, ks=(20,), beyond=False)
        assert m["ndcg@20"] == pytest.approx(best["score"])


@pytest.mark.parametrize("n_users", [15, 120])  # users-side (Woodbury) and items-side solve
def test_ease_weights_match_the_textbook_inverse(n_users: int) -> None:
    import scipy.sparse as sp

    from videorec.evaluation.recommenders import ease_weights

    rng = np.random.default_rng(n_users)
    x = sp.csr_matrix((rng.random((n_users, 60)) < 0.15).astype(np.float32))
    p = np.linalg.inv(x.T.toarray() @ x.toarray() + 7.0 * np.eye(60))
    want = -p / np.diag(p)[None, :]
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(ease_weights(x, 7.0), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        ease_weights(x, 0.0)


def test_ease_family_shares_weights_without_mixing_models(platform: Path) -> None:
    split = split_from_dataset(platform)
    given = {"EASE-recency": {"lam": 50.0, "decay": 0.9}, "EASE": {"lam": 50.0}}
    both = evaluate(split, models=["EASE-recency", "EASE"], params=given, ks=(20,))
    alone = evaluate(split, models=["EASE"], params=given, ks=(20,))
    assert both.models["EASE"].metrics == alone.models["EASE"].metrics
    assert both.models["EASE"].params == {"lam": 50.0}
    assert both.models["EASE-recency"].metrics["ndcg@20"] != alone.models["EASE"].metrics["ndcg@20"]
    # Reusing B gives exactly what a fresh fit gives.
    rows = split.test.rows
    fresh = EASERecency(50.0, 0.9).fit(split.train).recommend(rows, 50)
    reused = EASERecency(50.0, 0.9).reuse_weights(EASE(50.0).fit(split.train)).recommend(rows, 50)
    assert np.array_equal(fresh[0], reused[0]) and np.array_equal(fresh[1], reused[1])
    with pytest.raises(ValueError, match="lambda"):
        EASERecency(10.0, 0.9).reuse_weights(EASE(50.0).fit(split.train))


def test_extra_models_and_mlflow(platform: Path, tmp_path: Path, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    # The caller's own run in MLflow's default experiment, whose artifacts go to
    # ./mlruns: the working directory is this test's, not the repo.
    monkeypatch.chdir(tmp_path)

    class Custom(EASE):
        name = "Custom"

    with mlflow.start_run() as run:
        res = run_evaluation(
            platform,
            models="MostPopular",
            extra_models=[Custom(lam=50.0)],
            mlflow_run=run,
        )
    assert set(res["models"]) == {"MostPopular", "Custom"}
    logged = mlflow.tracking.MlflowClient().get_run(run.info.run_id)
    assert logged.data.metrics["eval/Custom/ndcg_at_20"] == pytest.approx(
        res["models"]["Custom"]["ndcg@20"]
    )
    assert logged.data.params["eval/Custom/lam"] == "50.0"
    names = {
        a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "evaluation")
    }
    assert "evaluation/report.md" in names and "evaluation/metrics.json" in names


def test_registered_model_is_tuned_and_listed(platform: Path) -> None:
    from videorec.evaluation import recommenders as rec

    class Shrunk(EASE):
        name = "Shrunk"

    rec.register_model("Shrunk", Shrunk, reference={"lam": 30.0}, grid={"lam": [30.0, 3000.0]})
    try:
        assert parse_models("all")[-1] == "Shrunk"
        res = evaluate(split_from_dataset(platform), models=["Shrunk"], ks=(20,))
        rep = res.models["Shrunk"]
        assert rep.params_source == "validation" and len(rep.tuning) == 2
        assert rep.params == _best(rep.tuning)
    finally:
        for table in (rec.MODELS, rec.REFERENCE_PARAMS, rec.PARAM_GRIDS):
            table.pop("Shrunk", None)
    assert "Shrunk" not in parse_models("all")


def _best(trials: list[dict[str, Any]]) -> dict[str, Any]:
    return max(trials, key=lambda t: t["score"])["params"]


def test_bad_arguments() -> None:
    assert parse_models("all") == MODEL_NAMES
    assert parse_models("EASE, ALS,EASE") == ("EASE", "ALS")
    with pytest.raises(ValueError, match="unknown model 'Nope'"):
        parse_models("EASE,Nope")
    assert parse_ks("200,10,20") == (10, 20, 200)
    for bad in ("0,20", "-5", "ten", ""):
        with pytest.raises(ValueError):
            parse_ks(bad)


# --- the CLI -------------------------------------------------------------------------


def _cli(*args: str) -> tuple[int, Any]:
    proc = subprocess.run([VIDEOREC, *args], capture_output=True, text=True, timeout=900)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not one JSON object: {proc.stdout!r} {proc.stderr!r}") from None


def test_cli_json_shape(platform: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, res = _cli("evaluate", "--data", str(platform), "--split", "per-user-temporal",
                     "--models", "all", "--out", str(out), "--json")  # fmt: skip
    assert code == 0, res
    assert res["ok"] is True and res["out"] == str(out)
    assert list(res["models"]) == sorted(MODEL_NAMES)  # --json sorts keys
    for m in res["models"].values():
        for key in ("recall@20", "ndcg@20", "recall@200"):
            assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0
    sources = res["params_source"]
    assert sources.pop("MostPopular") == "none"
    assert set(sources.values()) == {"validation"}
    assert (out / "report.md").is_file()


def test_cli_bad_input_exits_2_with_json(platform: Path, tmp_path: Path) -> None:
    code, res = _cli("evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--json")
    assert code == 2 and res["ok"] is False and "not a data set directory" in res["message"]
    code, res = _cli("evaluate", "--data", str(platform), "--models", "EASE,Bogus",
                     "--out", str(tmp_path / "r"), "--json")  # fmt: skip
    assert code == 2 and "unknown model 'Bogus'" in res["message"]
    code, res = _cli("evaluate", "--data", str(platform), "--k", "0,20",
                     "--out", str(tmp_path / "r"), "--json")  # fmt: skip
    assert code == 2 and "positive" in res["message"]
    code, res = _cli("evaluate", "--data", str(platform), "--split", "random",
                     "--out", str(tmp_path / "r"), "--json")  # fmt: skip
    assert code == 2 and "unknown split" in res["message"]
    assert not (tmp_path / "r").exists()


# --- MovieLens reference figures --------------------------------------------------

# Measured with an independent script on the same protocol (issue 4).
REFERENCE = {
    "MostPopular": (0.0684, 0.0900),
    "ItemKNN": (0.1121, 0.1291),
    "ALS": (0.1139, 0.1260),
    "EASE": (0.1279, 0.1407),
}


@pytest.mark.slow
def test_movielens_reference_figures(tmp_path: Path) -> None:
    if not (ML_SMALL / "ratings.csv").is_file():
        pytest.skip(f"no shared MovieLens copy at {ML_SMALL}")
    from videorec.datagen.movielens import import_movielens

    data = tmp_path / "ml-small"
    import_movielens(ML_SMALL, data, config_digest="test")
    split = split_from_dataset(data)
    assert split.stats["evaluated_users"] == 610
    res = evaluate(split, models=list(REFERENCE), params="reference")
    for name, (recall, ndcg) in REFERENCE.items():
        m = res.models[name].metrics
        assert m["recall@20"] == pytest.approx(recall, rel=0.03), name
        assert m["ndcg@20"] == pytest.approx(ndcg, rel=0.03), name


def test_cli_evaluates_an_s3_data_set_as_it_does_a_local_one(
    platform: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    """``data.dir: s3://…`` (production's layout): the harness reads the data set through
    S3 and scores the same figures as on the local copy."""
    import os

    import yaml
    from conftest import moto_env, s3_client, upload_tree

    client, bucket = s3_client(s3_endpoint), "eval-s3"
    client.create_bucket(Bucket=bucket)
    upload_tree(client, bucket, platform, "data")
    conf = tmp_path / "s3.yaml"
    conf.write_text(yaml.safe_dump({"artifacts": {"root": str(tmp_path / "artifacts")},
                                    "data": {"dir": f"s3://{bucket}/data"}}))  # fmt: skip
    runs = {}
    for where, extra in (("s3", []), ("local", ["--data", str(platform)])):
        proc = subprocess.run(
            [VIDEOREC, "evaluate", "--config", str(conf), "--models", "MostPopular",
             "--out", str(tmp_path / f"report-{where}"), "--json", *extra],
            capture_output=True, text=True, timeout=600, env={**os.environ, **moto_env(s3_endpoint)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[where] = json.loads(proc.stdout)
    assert runs["s3"]["models"]["MostPopular"]["recall@20"] > 0
    assert runs["s3"]["models"] == runs["local"]["models"]
