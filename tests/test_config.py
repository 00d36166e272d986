from __future__ import annotations

from pathlib import Path

import pytest

from videorec.config import Config, ConfigError, available_profiles, load_config, parse_config


def test_every_shipped_profile_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    # prod takes its endpoints from the environment.
    monkeypatch.setenv("VIDEOREC_BUCKET", "videorec-test")
    monkeypatch.setenv("SPARK_MASTER_URL", "spark://spark-master:7077")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("AIRFLOW_METADATA_DB", "postgresql+psycopg2://airflow@db/airflow")
    profiles = available_profiles()
    assert {"local", "prod"} <= set(profiles)
    for name in profiles:
        cfg = load_config(profile=name)
        assert cfg.profile == name
    prod = load_config(profile="prod")
    assert prod.artifacts.root == "s3://videorec-test/videorec"
    assert prod.artifacts.s3_endpoint_url is None  # ${VIDEOREC_S3_ENDPOINT:-} -> unset
    assert prod.spark.master == "spark://spark-master:7077"
    assert prod.airflow.metadata_db == "postgresql+psycopg2://airflow@db/airflow"
    assert prod.airflow.executor == "CeleryExecutor"
    # hadoop-aws 3.5.0 (pyspark's Hadoop) loads AWS SDK v2 credential providers only.
    provider = prod.spark.conf["spark.hadoop.fs.s3a.aws.credentials.provider"]
    assert provider.startswith("software.amazon.awssdk."), provider


def test_local_profile_is_the_embedded_defaults() -> None:
    assert load_config(profile="local") == Config()
    assert Config().artifacts.root == "var/artifacts"
    assert Config().spark.master == "local[*]"
    assert Config().mlflow.tracking_uri.startswith("sqlite:///")


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("spark:\n  master: local[2]\n  mastr: typo\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value)
    assert "spark.mastr" in str(e.value)
    assert "unknown key" in str(e.value)


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("sparky: {}\n")
    with pytest.raises(ConfigError, match="sparky"):
        load_config(f)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("generate:\n  users: many\n")
    with pytest.raises(ConfigError, match=r"generate\.users"):
        load_config(f)


def test_out_of_range_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"contract\.max_invalid_share"):
        parse_config({"contract": {"max_invalid_share": 2.0}}, "inline")


def test_env_expansion_and_missing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("redis:\n  url: ${TEST_REDIS}\nspark:\n  master: ${TEST_MASTER:-local[2]}\n")
    monkeypatch.setenv("TEST_REDIS", "redis://example:6379/1")
    monkeypatch.delenv("TEST_MASTER", raising=False)
    cfg = load_config(f)
    assert cfg.redis.url == "redis://example:6379/1"
    assert cfg.spark.master == "local[2]"
    monkeypatch.delenv("TEST_REDIS")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "redis.url" in str(e.value) and "TEST_REDIS" in str(e.value) and str(f) in str(e.value)


def test_bad_yaml_and_missing_file_and_profile(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("spark: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="no such profile"):
        load_config(profile="staging")
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_a_repeated_key_bytes_and_a_dotted_name_are_named(tmp_path: Path) -> None:
    """Found by review: a second ``training:`` silently replaced the first; bytes that
    are not UTF-8 gave a codec error without the file; ``My.Config.yaml`` was refused
    as a profile name it never set."""
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  embed_dim: 32\nindex:\n  nlist: 8\ntraining:\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: .*'training' appears twice \(lines 1 and 5\)"):
        load_config(f)
    f.write_text("training:\n  epochs: 5\n  epochs: 6\n")
    with pytest.raises(ConfigError, match="'epochs' appears twice"):
        load_config(f)
    f.write_bytes(b"\xff\xfetraining: {}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not UTF-8"):
        load_config(f)
    dotted = tmp_path / "My.Config.yaml"
    dotted.write_text("training:\n  epochs: 5\n")
    assert load_config(dotted).profile == "custom" and load_config(dotted).training.epochs == 5


def test_digest_is_stable_and_tracks_changes() -> None:
    a, b = Config(), Config()
    assert a.digest() == b.digest() and len(a.digest()) == 12
    c = parse_config({"generate": {"seed": 43}})
    assert c.digest() != a.digest()
    assert c.section_digest("spark") == a.section_digest("spark")
    assert c.section_digest("generate") != a.section_digest("generate")


def test_source_digest_tracks_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from videorec.config import source_digest

    pkg = tmp_path / "digestpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("LAYERS = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    first = source_digest("digestpkg")
    assert source_digest("digestpkg") == first and len(first) == 12
    (pkg / "model.py").write_text("LAYERS = 3\n")
    assert source_digest("digestpkg") != first
    sys.modules.pop("digestpkg", None)
    # Index versions carry it, so changed indexing code never reuses an old build.
    assert len(source_digest("videorec.indexing")) == 12


def test_locations_keep_their_uri_and_paths_are_made_absolute() -> None:
    """``data.dir`` in the prod profile is ``s3://...``: a Path would fold it to ``s3:/``."""
    from videorec.config import REPO_ROOT

    cfg = parse_config({})
    assert cfg.resolve_location("s3://bucket/events") == "s3://bucket/events"
    assert cfg.resolve_location("var/data") == str(REPO_ROOT / "var/data")
    assert cfg.resolve_location("/abs/data") == "/abs/data"
    assert str(cfg.resolve_path("s3://bucket/events")) != "s3://bucket/events"  # why it exists
