"""The artifact store on the local filesystem and on a real S3 API endpoint.

The S3 endpoint is moto's standalone server (``moto_server``), started here as a
separate process and spoken to over HTTP by boto3: no S3-compatible server is
packaged for this machine (MinIO, Garage, SeaweedFS and Ceph RGW are absent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import s3_client

from videorec.artifacts import (
    ArtifactError,
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    VersionExistsError,
    VersionNotFoundError,
    open_store,
)
from videorec.config import parse_config


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


def test_write_read_list(store: ArtifactStore) -> None:
    assert store.list_versions("features/examples") == []
    with store.write_version("features/examples", "2026-11-01_abc", {"config_digest": "abc"}) as d:
        (d / "part-0.parquet").write_bytes(b"PAR1 data")
        (d / "sub").mkdir()
        (d / "sub" / "report.json").write_text('{"rows": 3}')
    with store.write_version("features/examples", "2026-11-02_abc", {"config_digest": "abc"}) as d:
        (d / "x").write_text("x")
    assert store.list_versions("features/examples") == ["2026-11-01_abc", "2026-11-02_abc"]
    assert store.latest_version("features/examples") == "2026-11-02_abc"
    assert (
        store.read_bytes("features/examples", "2026-11-01_abc", "sub/report.json") == b'{"rows": 3}'
    )
    m = store.read_manifest("features/examples", "2026-11-01_abc")
    assert m["config_digest"] == "abc" and m["version"] == "2026-11-01_abc"
    assert {f["path"]: f["bytes"] for f in m["files"]} == {
        "part-0.parquet": 9,
        "sub/report.json": 11,
    }
    local = store.local_path("features/examples", "2026-11-01_abc")
    assert (local / "part-0.parquet").read_bytes() == b"PAR1 data"
    assert store.exists("features/examples", "2026-11-01_abc")
    assert not store.exists("features/examples", "2026-10-31_abc")


def test_versions_are_immutable(store: ArtifactStore) -> None:
    with store.write_version("model", "v1") as d:
        (d / "w").write_text("1")
    with pytest.raises(VersionExistsError), store.write_version("model", "v1") as d:
        (d / "w").write_text("2")
    assert store.read_bytes("model", "v1", "w") == b"1"


def test_failed_write_leaves_no_visible_version(store: ArtifactStore) -> None:
    with pytest.raises(RuntimeError, match="disk full"), store.write_version("model", "v2") as d:
        (d / "half.bin").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert store.list_versions("model") == []
    assert not store.exists("model", "v2")
    with pytest.raises(VersionNotFoundError):
        store.read_manifest("model", "v2")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("model", "v2", "half.bin")
    # The same version can then be written for real.
    with store.write_version("model", "v2") as d:
        (d / "whole.bin").write_bytes(b"whole")
    assert store.list_versions("model") == ["v2"]


def test_delete_and_pointers(store: ArtifactStore) -> None:
    for v in ("v1", "v2"):
        with store.write_version("index/blue", v) as d:
            (d / "index.faiss").write_bytes(v.encode())
    store.delete_version("index/blue", "v1")
    assert store.list_versions("index/blue") == ["v2"]
    with pytest.raises(VersionNotFoundError):
        store.delete_version("index/blue", "v1")
    assert store.get_pointer("index/active") is None
    store.put_pointer("index/active", {"slot": "blue", "version": "v2"})
    assert store.get_pointer("index/active") == {"slot": "blue", "version": "v2"}
    store.put_pointer("index/active", {"slot": "green", "version": "v3"})
    assert store.get_pointer("index/active") == {"slot": "green", "version": "v3"}


def test_bad_names_are_rejected(store: ArtifactStore) -> None:
    for name, version in (("../etc", "v1"), ("ok", "a/b"), ("ok", ".hidden"), ("", "v1")):
        with pytest.raises(ArtifactError, match="invalid"), store.write_version(name, version):
            pass


def test_local_staging_is_hidden_until_publish(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with store.write_version("data", "v1") as d:
        (d / "f").write_text("x")
        # Mid-write: the staging folder exists but no reader can see a version.
        assert store.list_versions("data") == []
        assert not (tmp_path / "data" / "v1").exists()
    assert store.list_versions("data") == ["v1"]
    assert not any((tmp_path / "data" / ".staging").iterdir())


class _FailingClient:
    """Wraps a real boto3 client and fails the n-th upload (unit-level fault injection)."""

    def __init__(self, client: Any, fail_at: int) -> None:
        self._client, self._n, self._fail_at = client, 0, fail_at

    def upload_file(self, *args: Any, **kwargs: Any) -> None:
        self._n += 1
        if self._n == self._fail_at:
            raise ConnectionError("network dropped mid-upload")
        self._client.upload_file(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_upload_failure_midway_leaves_no_version(s3_endpoint: str, tmp_path: Path) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="midway")
    store = S3ArtifactStore("midway", "p", _FailingClient(client, fail_at=2))
    with pytest.raises(ConnectionError), store.write_version("emb", "v1") as d:
        for i in range(3):
            (d / f"part-{i}").write_text(str(i))
    assert store.list_versions("emb") == []
    assert not store.exists("emb", "v1")
    # The part that did land was cleaned up too.
    assert client.list_objects_v2(Bucket="midway").get("KeyCount", 0) == 0


def test_s3_manifest_is_the_commit_marker(s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="marker")
    # A writer that crashed after uploading data but before the manifest:
    client.put_object(Bucket="marker", Key="p/emb/v9/part-0", Body=b"orphan")
    store = S3ArtifactStore("marker", "p", client)
    assert store.list_versions("emb") == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("emb", "v9", "part-0")


def test_open_store_from_config(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = open_store(parse_config({"artifacts": {"root": str(tmp_path / "a")}}))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path / "a"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3_client(s3_endpoint).create_bucket(Bucket="from-config")
    cfg = parse_config(
        {
            "artifacts": {
                "root": "s3://from-config/vr",
                "s3_endpoint_url": s3_endpoint,
                "s3_region": "us-east-1",
            }
        }
    )
    s3 = open_store(cfg)
    assert isinstance(s3, S3ArtifactStore) and s3.bucket == "from-config" and s3.prefix == "vr"
    with s3.write_version("x", "v1", {"config_digest": cfg.digest()}) as d:
        (d / "a.json").write_text(json.dumps({"ok": True}))
    assert s3.read_manifest("x", "v1")["config_digest"] == cfg.digest()
    assert s3.uri("x", "v1") == "s3://from-config/vr/x/v1"


def test_write_version_at_for_distributed_writers(store: ArtifactStore) -> None:
    # A distributed writer writes straight into the URI (Spark via s3a:// in prod).
    def write(uri: str, rel: str) -> None:
        if isinstance(store, S3ArtifactStore):
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            store.client.put_object(Bucket=bucket, Key=f"{key}/{rel}", Body=b"PAR1")
        else:
            Path(uri, rel).write_bytes(b"PAR1")

    with store.write_version_at("features", "2026-11-01", {"config_digest": "d"}) as uri:
        write(uri, "part-0.parquet")
        assert store.list_versions("features") == []  # not visible mid-write
    assert store.list_versions("features") == ["2026-11-01"]
    m = store.read_manifest("features", "2026-11-01")
    assert [f["path"] for f in m["files"]] == ["part-0.parquet"] and m["config_digest"] == "d"

    with pytest.raises(RuntimeError), store.write_version_at("features", "2026-11-02") as uri:
        write(uri, "part-0.parquet")
        raise RuntimeError("executor lost")
    assert store.list_versions("features") == ["2026-11-01"]
    with pytest.raises(VersionExistsError), store.write_version_at("features", "2026-11-01"):
        pass
