"""The feature job's own s3a reads and writes, against an S3 API endpoint (moto).

The feature stage run twice on a small platform: once with the events and the artifact
store on local disk (in the suite's Spark), once with both on S3 (``videorec
features`` in its own process, so its JVM starts with the S3A jars), where Spark reads the event files and writes the day, history and
window tables through Hadoop's S3A connector (``features.session.spark_uri``) and the
store commits what Spark wrote (an attempt's prefix, listed into the manifest). The S3
run must give the same tables.

What changes for S3 is configuration only (``spark.conf``): the jars, the endpoint and
the credentials. The jars are hadoop-aws 3.3.1 and the AWS SDK bundle it was built on,
the only copies on the registries these machines reach (``make s3a-jars``,
requirements-s3a.txt); pyspark's Hadoop is 3.5.0, whose defaults write some S3A
durations as ``60s``, which 3.3.1 reads as plain numbers, so the test sets those
numerically. A cluster uses hadoop-aws 3.5.0 (README, "Features past one machine"):
this proves the job's paths and the store's protocol over s3a, not that jar.

The S3 run's version then feeds the rest of the prod layout, each stage the CLI in its
own process on the same config: training, the index build and publish, the 4-hourly
precompute, the hourly new-videos delta and the 15-minute lists, all reading and
writing the S3 store and reading ``data.dir`` on S3.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from videorec import artifact_names as names
from videorec.artifacts import LocalArtifactStore, S3ArtifactStore
from videorec.config import parse_config
from videorec.examples import read_examples

DATE = "2026-11-01"
DATE_ = dt.date.fromisoformat(DATE)
S3A_JARS = Path(sys.executable).parent.parent / "s3a-jars"  # .venv/s3a-jars
# Hadoop 3.5's defaults for these are durations ("60s"); hadoop-aws 3.3.1 wants numbers.
NUMERIC_S3A = {
    "fs.s3a.threads.keepalivetime": "60",
    "fs.s3a.connection.timeout": "200000",
    "fs.s3a.connection.establish.timeout": "30000",
    "fs.s3a.connection.request.timeout": "0",
    "fs.s3a.connection.ttl": "300000",
    "fs.s3a.connection.idle.time": "60000",
    "fs.s3a.connection.acquisition.timeout": "60000",
    "fs.s3a.multipart.purge.age": "86400",
    "fs.s3a.retry.interval": "500",
    "fs.s3a.retry.throttle.interval": "100",
    "fs.s3a.assumed.role.session.duration": "1800",
}
TABLES = [names.VIDEO_FEATURES, names.USER_FEATURES, names.EVAL, names.WATCHED,
          names.TRENDING, names.ONLINE_USER_FEATURES, names.ONLINE_VIDEO_FEATURES]  # fmt: skip


def _jars() -> str:
    jars = sorted(S3A_JARS.glob("*.jar"))
    assert len(jars) == 2, f"{S3A_JARS}: no S3A jars; `make s3a-jars` fetches them"
    return ",".join(str(j) for j in jars)


def _run(
    argv: list[str], conf: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> dict[str, Any]:
    """``videorec ARGV --config CONF --json`` in its own process; its JSON."""
    exe = str(Path(sys.executable).parent / "videorec")
    p = subprocess.run([exe, *argv, "--config", str(conf), "--json"],
                       capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    assert p.returncode in ok, (p.returncode, p.stdout[-2000:], p.stderr[-4000:])
    return json.loads(p.stdout)


def _value(v: Any) -> Any:
    """A cell comparable across two runs: maps (lists of pairs) in key order, floats to
    12 significant digits (Spark's sums of one set of partials in another order)."""
    if isinstance(v, float):
        return float(f"{v:.12g}")
    if isinstance(v, list):
        items = [_value(x) for x in v]
        return sorted(items) if items and isinstance(v[0], tuple) else items
    if isinstance(v, tuple):
        return tuple(_value(x) for x in v)
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    return v


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    names_ = table.column_names
    rows = [tuple(_value(r[c]) for c in names_) for r in table.to_pylist(maps_as_pydicts=None)]
    return sorted(rows, key=repr)


@pytest.fixture(scope="module")
def tiny_platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten days of a small platform: S3 (moto) costs a request per file, and an
    incremental run writes each day's tables apart."""
    from videorec.datagen.synthetic import GeneratorParams, generate

    out = tmp_path_factory.mktemp("platform") / "tiny"
    params = GeneratorParams(users=800, videos=800, days=10, seed=3,
                             end_date=dt.date(2026, 11, 1))  # fmt: skip
    generate(params, out, config_digest="test", progress=False)
    return out


@pytest.fixture(scope="module")
def s3_run(
    tiny_platform: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """``videorec features`` with the events and the store on S3 (moto), in its own
    process: {"out" (its JSON), "bucket", "conf" (the config file), "body" (its
    contents), "env" (the environment reaching moto), "tmp"}."""
    from conftest import moto_env, s3_client, upload_tree

    tmp = tmp_path_factory.mktemp("s3a")
    client, bucket = s3_client(s3_endpoint), "features-s3a"
    client.create_bucket(Bucket=bucket)
    upload_tree(client, bucket, tiny_platform, "data")
    env = {**os.environ, **moto_env(s3_endpoint)}
    s3a = {
        "spark.jars": _jars(),
        "spark.hadoop.fs.s3a.endpoint": s3_endpoint,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.aws.credentials.provider":
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "spark.hadoop.fs.s3a.access.key": "test",
        "spark.hadoop.fs.s3a.secret.key": "test",
        **{f"spark.hadoop.{k}": v for k, v in NUMERIC_S3A.items()},
    }  # fmt: skip
    body = {
        "artifacts": {"root": f"s3://{bucket}/videorec", "s3_endpoint_url": s3_endpoint},
        "data": {"dir": f"s3://{bucket}/data"},
        "spark": {"conf": s3a, "shuffle_partitions": 4},
        "features": {"window_days": 5},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
    }  # fmt: skip
    conf = tmp / "s3.yaml"
    conf.write_text(yaml.safe_dump(body))
    out = _run(["features", "--date", DATE], conf, env)  # its own JVM, with the jars
    return {"out": out, "bucket": bucket, "conf": conf, "body": body, "env": env, "tmp": tmp}


def test_the_feature_job_reads_and_writes_s3_through_s3a(
    tiny_platform: Path, s3_run: dict[str, Any], s3_endpoint: str, tmp_path: Path, spark: Any
) -> None:
    from conftest import s3_client

    from videorec.features.job import build_features

    bucket = s3_run["bucket"]
    out = {"s3": s3_run["out"]}
    # The same config, local: in this process, on the suite's Spark.
    local_cfg = parse_config({"artifacts": {"root": str(tmp_path / "local")},
                              "features": {"window_days": 5}})  # fmt: skip
    out["local"] = build_features(local_cfg, str(tiny_platform), DATE_, spark=spark)
    local = LocalArtifactStore(tmp_path / "local")
    s3 = S3ArtifactStore(bucket, "videorec", s3_client(s3_endpoint), cache_dir=tmp_path / "cache")
    version = out["s3"]["version"]
    assert out["s3"]["uri"].startswith(f"s3://{bucket}/videorec/features/{version}/.attempt-")
    # Spark's files are the version's: listed in its manifest under the winning attempt.
    files = [f["path"] for f in s3.read_manifest(names.FEATURES, version)["files"]]
    assert any(p.startswith(f"{names.VIDEO_FEATURES}/part-") for p in files), files
    day_versions = s3.list_versions(names.FEATURES_DAY)
    assert len(day_versions) >= 5 and s3.list_versions(names.FEATURES_HISTORY)
    dirs = {k: st.local_path(names.FEATURES, out[k]["version"])
            for k, st in (("local", local), ("s3", s3))}  # fmt: skip
    for table in TABLES:
        a, b = (_rows(pq.read_table(dirs[k] / table)) for k in ("local", "s3"))
        assert a and a == b, table
    cols = ["user_id", "video_id", "ts", "weight", "history"]
    ex = {k: _rows(read_examples(dirs[k], cols, resolve=st.local_path))
          for k, st in (("local", local), ("s3", s3))}  # fmt: skip
    assert len(ex["local"]) > 1_000 and ex["local"] == ex["s3"]
    for key in ("rows_in", "rows_valid", "rows_quarantined"):
        counts = [o["report"]["validation"]["watch_events"][key] for o in out.values()]
        assert counts[0] == counts[1], key


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key root of the test's own in the suite's Redis; its keys are deleted after."""
    import redis

    prefix = f"s3chain{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    names_ = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if names_:
        client.delete(*names_)


def test_a_model_index_and_precompute_chain_from_an_s3_store(
    tiny_platform: Path, s3_run: dict[str, Any], s3_endpoint: str, redis_url: str,
    redis_prefix: str,
) -> None:  # fmt: skip
    """The prod layout past the feature stage: ``videorec train`` reads the features
    version's tables and its examples' day files from S3 and writes the model there
    (MLflow's artifacts too), ``videorec index build`` reads that model from S3, and
    ``videorec precompute run`` reads the index, the model, the features and the
    catalogue (``data.dir``: s3://) from S3 into Redis. Each is the CLI in its own
    process, as a deployment runs it."""
    import redis
    from conftest import s3_client

    from videorec.redis_keys import RedisKeys, read_scored

    tmp, bucket = s3_run["tmp"], s3_run["bucket"]
    prefix = redis_prefix
    conf = tmp / "chain.yaml"
    conf.write_text(yaml.safe_dump({
        **s3_run["body"],
        "redis": {"url": redis_url},
        "training": {"embed_dim": 16, "id_dim": 8, "hidden_dim": 32, "epochs": 2,
                     "batch_size": 256, "text_encoder": "none",
                     "text_cache_dir": str(tmp / "text")},
        "index": {"work_dir": str(tmp / "work"), "validation_queries": 50,
                  "latency_queries": 10},
        "precompute": {"key_prefix": prefix},
    }))  # fmt: skip
    env, fv = s3_run["env"], s3_run["out"]["version"]
    # 3: the gate refused this small model; the model version is written either way.
    trained = _run(["train", "--features", fv], conf, env, ok=(0, 3))
    mv = trained["model_version"]
    assert trained["model_uri"].startswith(f"s3://{bucket}/videorec/{names.MODEL}/{mv}/")
    s3 = S3ArtifactStore(bucket, "videorec", s3_client(s3_endpoint), cache_dir=tmp / "cache")
    assert s3.read_manifest(names.MODEL, mv)["features_version"] == fv
    assert any(o["Key"].startswith("videorec/mlflow/") for o in
               s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"])  # fmt: skip

    built = _run(["index", "build", "--model", mv], conf, env)
    iv = built["version"]
    assert s3.read_manifest(names.INDEX, iv)["model_version"] == mv
    assert built["vector_count"] > 500  # the 800-video catalogue, less the never-seen

    gen = _run(["precompute", "run", "--index", iv, "--at", f"{DATE}T04:00:00Z"], conf, env)
    meta = gen["meta"]
    assert gen["published"] and meta["model_version"] == mv and meta["features_version"] == fv
    assert meta["data"] == f"s3://{bucket}/data"
    assert meta["counts"]["recs"] > 100 and meta["counts"]["similar"] > 500, meta["counts"]
    client, keys = redis.Redis.from_url(redis_url), RedisKeys(prefix)
    recs = list(client.scan_iter(match=f"{keys.namespace(gen['generation'])}:u:*:recs"))
    assert len(recs) == meta["counts"]["recs"]
    catalogue = set(pq.read_table(tiny_platform / "videos", columns=["video_id"])
                    ["video_id"].to_pylist())  # fmt: skip
    for key in recs[:20]:
        ids, _ = read_scored(client, key)
        assert len(ids) > 0 and set(ids.tolist()) <= catalogue, key

    # The hourly new-videos path and the 15-minute lists read data.dir (s3://) too: the
    # catalogue beside the model's, and the event log's latest files.
    assert _run(["index", "publish", "--version", iv], conf, env)["active_version"] == iv
    fresh = _run(["fresh-videos", "--index", iv, "--at", f"{DATE}T05:00:00Z"], conf, env)
    assert fresh["pointer"]["published"] and fresh["redis"]["generation"], fresh
    delta = s3.read_manifest(names.DELTA_INDEX, fresh["delta"]["version"])
    assert delta["data"] == f"s3://{bucket}/data"
    lists = _run(["precompute", "trending", "--at", f"{DATE}T00:15:00Z"], conf, env)
    assert lists["published"] and lists["meta"]["counts"]["trending"] > 0, lists
