"""The artifact store on the local filesystem and on a real S3 API endpoint.

The S3 endpoint is moto's standalone server (``moto_server``), started here as a
separate process and spoken to over HTTP by boto3: no S3-compatible server is
packaged for this machine (MinIO, Garage, SeaweedFS and Ceph RGW are absent).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FailingUploads, s3_client

from videorec.artifacts import (
    ArtifactError,
    ArtifactStore,
    LocalArtifactStore,
    PointerConflictError,
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


def test_s3_upload_failure_midway_leaves_no_version(s3_endpoint: str, tmp_path: Path) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="midway")
    store = S3ArtifactStore("midway", "p", FailingUploads(client, fail_at=2))
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


def test_pointer_compare_and_swap(store: ArtifactStore) -> None:
    assert store.read_pointer("index") == (None, None)
    t1 = store.put_pointer_if("index", {"n": 1}, None)  # None: create only
    with pytest.raises(PointerConflictError):
        store.put_pointer_if("index", {"n": 99}, None)  # a second creator loses
    value, token = store.read_pointer("index")
    assert value == {"n": 1} and token == t1
    t2 = store.put_pointer_if("index", {"n": 2}, t1)
    with pytest.raises(PointerConflictError):
        store.put_pointer_if("index", {"n": 3}, t1)  # read before the write of n=2
    assert store.read_pointer("index") == ({"n": 2}, t2)
    store.put_pointer("index", {"n": 4})  # the unconditional write still works...
    with pytest.raises(PointerConflictError):
        store.put_pointer_if("index", {"n": 5}, t2)  # ...and counts as a change
    assert store.get_pointer("index") == {"n": 4}


def test_s3_version_files_live_under_the_winning_attempt(s3_store: S3ArtifactStore) -> None:
    with s3_store.write_version("m", "v1", {"k": 1}) as d:
        (d / "w.bin").write_bytes(b"weights")
    m = s3_store.read_manifest("m", "v1")
    assert m["files_prefix"].startswith(".attempt-") and m["written_at"]
    base = s3_store._key("m", "v1")
    keys = sorted(s3_store._list_keys(base + "/"))
    assert keys == [f"{base}/{m['files_prefix']}/w.bin", f"{base}/_manifest.json"]
    assert s3_store.files_uri("m", "v1") == f"s3://{s3_store.bucket}/{base}/{m['files_prefix']}"
    assert (s3_store.local_path("m", "v1") / "w.bin").read_bytes() == b"weights"
    s3_store.delete_version("m", "v1")
    assert list(s3_store._list_keys(base + "/")) == []


def test_s3_versions_written_before_attempts_still_read(s3_store: S3ArtifactStore) -> None:
    # The old layout: files at the version's root, a manifest without files_prefix.
    base, c = s3_store._key("m", "v0"), s3_store.client
    c.put_object(Bucket=s3_store.bucket, Key=f"{base}/w.bin", Body=b"old")
    manifest = {"name": "m", "version": "v0", "files": [{"path": "w.bin", "bytes": 3}]}
    c.put_object(Bucket=s3_store.bucket, Key=f"{base}/_manifest.json", Body=json.dumps(manifest))
    assert s3_store.list_versions("m") == ["v0"]
    assert s3_store.read_bytes("m", "v0", "w.bin") == b"old"
    assert (s3_store.local_path("m", "v0") / "w.bin").read_bytes() == b"old"
    s3_store.delete_version("m", "v0")
    assert list(s3_store._list_keys(base + "/")) == []


class _LostCommitAnswer:
    """A real client whose conditional manifest PUT lands, then answers 412: what the
    SDK reports when the first answer was lost and its retry found the object there."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def put_object(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        resp = self._client.put_object(**kwargs)
        if kwargs.get("IfNoneMatch") == "*":
            raise ClientError(
                {
                    "Error": {"Code": "PreconditionFailed"},
                    "ResponseMetadata": {"HTTPStatusCode": 412},
                },
                "PutObject",
            )
        return resp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_a_commit_whose_answer_was_lost_is_kept(s3_store: S3ArtifactStore) -> None:
    lossy = S3ArtifactStore(s3_store.bucket, "videorec", _LostCommitAnswer(s3_store.client))
    with lossy.write_version("m", "v1") as d:  # no VersionExistsError: the manifest is ours
        (d / "w.bin").write_bytes(b"mine")
    assert s3_store.read_bytes("m", "v1", "w.bin") == b"mine"  # and its files were kept


def test_s3_a_dead_attempts_files_are_swept_by_the_next_write(s3_store: S3ArtifactStore) -> None:
    dead = s3_store._key("m", "v1", ".attempt-dead", "part-0")
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=dead, Body=b"orphan")
    assert s3_store.list_versions("m") == []
    with s3_store.write_version("m", "v0") as d:  # another version: not swept
        (d / "f").write_text("0")
    keys = set(s3_store._list_keys(s3_store._key("m") + "/"))
    assert dead in keys
    # Fresh leftovers may belong to a live writer; past stale_after_s they are dead.
    sweeping = S3ArtifactStore(s3_store.bucket, "videorec", s3_store.client, stale_after_s=0)
    with sweeping.write_version("m", "v1") as d:
        (d / "f").write_text("1")
    keys = set(s3_store._list_keys(s3_store._key("m", "v1") + "/"))
    prefix = s3_store._key("m", "v1", s3_store.read_manifest("m", "v1")["files_prefix"])
    assert keys == {f"{prefix}/f", s3_store._key("m", "v1", "_manifest.json")}


def test_local_leftovers_without_a_lock_go_by_age(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path, stale_after_s=3600)
    staging = tmp_path / "data" / ".staging"
    for name in ("v1-0ld", "v2-n3w", "deleted-v0-abcd"):  # the naming before locks
        (staging / name).mkdir(parents=True)
        (staging / name / "part").write_text("x")
    old = time.time() - 7200
    os.utime(staging / "v1-0ld", (old, old))
    with store.write_version("data", "v3") as d:
        (d / "f").write_text("x")
    # A lock-less folder may be a writer of the old code at work: it goes by age only.
    assert sorted(p.name for p in staging.iterdir()) == ["v2-n3w"]


def test_local_commit_fsyncs_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("fsync " + Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    store = LocalArtifactStore(tmp_path)
    with store.write_version("data", "v1") as d:
        (d / "sub").mkdir()
        (d / "sub" / "part").write_text("x")
        staged = d.name
    before = set(events[: events.index("rename")])
    assert {"fsync part", "fsync sub", "fsync _manifest.json", f"fsync {staged}"} <= before
    assert events[events.index("rename") + 1 :] == ["fsync data"]  # the rename itself


def test_s3_a_killed_losers_files_go_when_the_version_is_deleted(
    s3_store: S3ArtifactStore,
) -> None:
    """A zombie that lost the commit and was SIGKILLed leaves its attempt prefix; no
    write of that version comes again, so deleting the version must take it too."""
    sweeping = S3ArtifactStore(s3_store.bucket, "videorec", s3_store.client, stale_after_s=0)
    with sweeping.write_version("m", "v1") as d:
        (d / "f").write_text("1")
    dead = sweeping._key("m", "v1", ".attempt-killed", "part-0")
    sweeping.client.put_object(Bucket=sweeping.bucket, Key=dead, Body=b"orphan")
    sweeping.delete_version("m", "v1")
    assert list(sweeping._list_keys(sweeping._key("m", "v1") + "/")) == []


class _LostDeleteAnswer:
    """A real client whose conditional manifest DELETE lands, then answers as the SDK's
    retry would (the manifest is gone: 404)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def delete_object(self, **kwargs: Any) -> Any:
        resp = self._client.delete_object(**kwargs)
        if "IfMatch" in kwargs:
            return self._client.delete_object(**kwargs)  # moto: 404 / 412, as S3 answers
        return resp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_a_delete_whose_answer_was_lost_still_takes_the_files(
    s3_store: S3ArtifactStore,
) -> None:
    with s3_store.write_version("m", "v1") as d:
        (d / "f").write_text("1")
    lossy = S3ArtifactStore(s3_store.bucket, "videorec", _LostDeleteAnswer(s3_store.client))
    with pytest.raises(VersionNotFoundError, match="deleted or replaced concurrently"):
        lossy.delete_version("m", "v1")
    assert list(s3_store._list_keys(s3_store._key("m", "v1") + "/")) == []


def test_s3_a_deletion_killed_after_the_manifest_is_cleaned_by_the_next_sweep(
    s3_store: S3ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest went, the files did not (the collection was killed): nothing lists
    the version again, so the next collection of the artifact takes its files once stale."""
    import datetime as dt

    from videorec.retention import sweep

    for v in ("2026-01-01_old", "2026-02-01_new"):
        with s3_store.write_version("m", v) as d:
            (d / "f").write_text(v)

    def killed(prefix: str) -> None:
        raise KeyboardInterrupt  # SIGKILL right after the manifest's delete

    with monkeypatch.context() as m:
        m.setattr(s3_store, "_delete_prefix", killed)
        with pytest.raises(KeyboardInterrupt):
            sweep(s3_store, "m", before=dt.date(2026, 1, 15), roots=(), grace_s=0)
    old = s3_store._key("m", "2026-01-01_old") + "/"
    assert s3_store.list_versions("m") == ["2026-02-01_new"] and list(s3_store._list_keys(old))
    assert sweep(s3_store, "m", before=dt.date(2026, 1, 15), roots=(), grace_s=0) == []
    assert list(s3_store._list_keys(old))  # fresh: it may be a live writer's
    s3_store.stale_after_s = 0
    assert sweep(s3_store, "m", before=dt.date(2026, 1, 15), roots=(), grace_s=0) == []
    assert list(s3_store._list_keys(old)) == []
    assert s3_store.read_bytes("m", "2026-02-01_new", "f") == b"2026-02-01_new"
