"""Versioned, atomically published artifacts on the local filesystem or S3.

Every stage output is a *version* of a named artifact (``features/examples``,
``index/blue``, ...): a folder of files plus ``_manifest.json``. The manifest is
the commit marker, so a version is visible only once it is whole:

- local: files are written into a hidden staging folder beside the target and
  published with one ``rename(2)``, which is atomic on a POSIX filesystem;
- S3: every file is uploaded first and the manifest last (S3 has no atomic
  multi-object commit; readers treat a version without a manifest as absent,
  the same protocol Hadoop's ``_SUCCESS`` marker uses).

A failed write leaves nothing that ``list_versions`` or a reader can see.

*Pointers* are small JSON objects (``index/active`` -> {slot, version}) written
in one atomic step (local ``os.replace``, one S3 PUT); blue/green swaps and
"latest good run" markers are pointers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from videorec.config import Config

MANIFEST = "_manifest.json"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


class ArtifactError(RuntimeError):
    """An artifact operation failed; the message names the artifact and version."""


class VersionExistsError(ArtifactError):
    """The version is already published; versions are immutable."""


class VersionNotFoundError(ArtifactError):
    """No committed version by that name (a half-written one counts as absent)."""


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not all(_SEGMENT.fullmatch(p) for p in parts):
        raise ArtifactError(
            f"invalid artifact name {name!r}: use path segments of letters, digits and ._=+-"
        )
    return name


def _check_version(version: str) -> str:
    if not _SEGMENT.fullmatch(version):
        raise ArtifactError(
            f"invalid version {version!r}: one path segment of letters, digits and ._=+-"
        )
    return version


def _files_of(folder: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]


class ArtifactStore(ABC):
    """Versioned artifacts and pointers; see the module docstring for the protocol."""

    @abstractmethod
    def uri(self, name: str, version: str | None = None) -> str:
        """Where the artifact (or one version of it) lives, as a path or s3:// URI."""

    @abstractmethod
    def list_versions(self, name: str) -> list[str]:
        """Committed versions of ``name``, sorted ascending (half-written ones excluded)."""

    @abstractmethod
    def read_bytes(self, name: str, version: str, relpath: str) -> bytes:
        """One file of a committed version."""

    @abstractmethod
    def local_path(self, name: str, version: str) -> Path:
        """A local folder holding the version's files (S3: downloaded once to a cache)."""

    @abstractmethod
    @contextlib.contextmanager
    def write_version(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[Path]:
        """Yield an empty local folder; on a clean exit publish its files as ``version``.

        The manifest written is ``manifest`` plus name, version and the file list.
        On an exception nothing is published and the exception propagates.
        Raises VersionExistsError if the version is already published.
        """

    @abstractmethod
    @contextlib.contextmanager
    def write_version_at(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[str]:
        """Like :meth:`write_version` for distributed writers (Spark): yield a URI.

        Local: a staging folder's path, renamed into place on success. S3: the
        version's own ``s3://`` prefix, written in place, with the manifest uploaded
        last (so readers still see nothing until the end). On an exception the
        written files are removed and nothing is published.
        """

    @abstractmethod
    def delete_version(self, name: str, version: str) -> None:
        """Remove a version (manifest first, so it disappears atomically for readers)."""

    @abstractmethod
    def get_pointer(self, name: str) -> dict[str, Any] | None:
        """The pointer's JSON value, or None if it was never written."""

    @abstractmethod
    def put_pointer(self, name: str, value: dict[str, Any]) -> None:
        """Replace the pointer's value in one atomic step."""

    def exists(self, name: str, version: str) -> bool:
        """True if ``version`` of ``name`` is committed."""
        try:
            self.read_manifest(name, version)
        except VersionNotFoundError:
            return False
        return True

    def read_manifest(self, name: str, version: str) -> dict[str, Any]:
        """The committed version's manifest; VersionNotFoundError if there is none."""
        try:
            raw = self.read_bytes(name, version, MANIFEST)
        except FileNotFoundError:
            raise VersionNotFoundError(f"{self.uri(name, version)}: no such version") from None
        return json.loads(raw)

    def latest_version(self, name: str) -> str | None:
        """The greatest committed version, or None."""
        versions = self.list_versions(name)
        return versions[-1] if versions else None


class LocalArtifactStore(ArtifactStore):
    """Artifacts under a local folder; publish is a directory rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, name: str, version: str | None = None) -> Path:
        d = self.root / _check_name(name)
        return d / _check_version(version) if version is not None else d

    def uri(self, name: str, version: str | None = None) -> str:
        return str(self._dir(name, version))

    def list_versions(self, name: str) -> list[str]:
        d = self._dir(name)
        if not d.is_dir():
            return []
        return sorted(
            p.name
            for p in d.iterdir()
            if not p.name.startswith((".", "_")) and (p / MANIFEST).is_file()
        )

    def read_bytes(self, name: str, version: str, relpath: str) -> bytes:
        d = self._dir(name, version)
        if not (d / MANIFEST).is_file():
            raise FileNotFoundError(str(d / relpath))
        return (d / relpath).read_bytes()

    def local_path(self, name: str, version: str) -> Path:
        d = self._dir(name, version)
        if not (d / MANIFEST).is_file():
            raise VersionNotFoundError(f"{d}: no such version")
        return d

    @contextlib.contextmanager
    def write_version(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[Path]:
        with self.write_version_at(name, version, manifest) as staging:
            yield Path(staging)

    @contextlib.contextmanager
    def write_version_at(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[str]:
        target = self._dir(name, version)
        if target.exists():
            raise VersionExistsError(f"{target}: version already published")
        staging_root = self._dir(name) / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = staging_root / f"{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield str(staging)
            _write_manifest(staging, name, version, manifest)
            try:
                # Atomic publish: rename(2) of a directory onto a missing path.
                os.rename(staging, target)
            except OSError as err:
                if target.exists():
                    raise VersionExistsError(f"{target}: published concurrently") from err
                raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def delete_version(self, name: str, version: str) -> None:
        d = self._dir(name, version)
        if not d.exists():
            raise VersionNotFoundError(f"{d}: no such version")
        # Move aside first so readers never see a version with files missing.
        trash = self._dir(name) / ".staging" / f"deleted-{version}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _pointer_path(self, name: str) -> Path:
        return self.root / "_pointers" / f"{_check_name(name)}.json"

    def get_pointer(self, name: str) -> dict[str, Any] | None:
        p = self._pointer_path(name)
        return json.loads(p.read_text()) if p.is_file() else None

    def put_pointer(self, name: str, value: dict[str, Any]) -> None:
        p = self._pointer_path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(value, f, sort_keys=True, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class S3ArtifactStore(ArtifactStore):
    """Artifacts under ``s3://bucket/prefix`` through boto3; the manifest is uploaded last."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import boto3  # deferred: only S3 users pay for the import

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3")
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "videorec-s3-cache")

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, name: str, version: str | None = None) -> str:
        parts = [_check_name(name)] + ([_check_version(version)] if version else [])
        return f"s3://{self.bucket}/{self._key(*parts)}"

    def _list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def list_versions(self, name: str) -> list[str]:
        base = self._key(_check_name(name)) + "/"
        versions = set()
        for key in self._list_keys(base):
            rest = key[len(base) :].split("/")
            if len(rest) == 2 and rest[1] == MANIFEST and not rest[0].startswith((".", "_")):
                versions.add(rest[0])
        return sorted(versions)

    def read_bytes(self, name: str, version: str, relpath: str) -> bytes:
        from botocore.exceptions import ClientError

        key = self._key(_check_name(name), _check_version(version), relpath)
        if relpath != MANIFEST and not self.exists(name, version):
            raise FileNotFoundError(f"s3://{self.bucket}/{key}")
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise

    def local_path(self, name: str, version: str) -> Path:
        manifest = self.read_manifest(name, version)
        dest = self.cache_dir / self.bucket / self._key(name, version)
        if (dest / MANIFEST).is_file():
            return dest  # versions are immutable, so a complete cached copy is current
        tmp = dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:8]}")
        try:
            for f in manifest["files"]:
                out = tmp / f["path"]
                out.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(
                    self.bucket, self._key(name, version, f["path"]), str(out)
                )
            (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1))
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not (dest / MANIFEST).is_file():  # not a concurrent download: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    @contextlib.contextmanager
    def write_version(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[Path]:
        if self.exists(name, version):
            raise VersionExistsError(f"{self.uri(name, version)}: version already published")
        staging = Path(tempfile.mkdtemp(prefix="videorec-s3-staging-"))
        uploaded: list[str] = []
        try:
            yield staging
            _write_manifest(staging, name, version, manifest)
            for f in _files_of(staging):
                key = self._key(name, version, f["path"])
                self.client.upload_file(str(staging / f["path"]), self.bucket, key)
                uploaded.append(key)
            # The manifest goes last: until it lands the version does not exist.
            key = self._key(name, version, MANIFEST)
            self.client.upload_file(str(staging / MANIFEST), self.bucket, key)
        except BaseException:
            for key in uploaded:  # best effort; without a manifest they are invisible anyway
                with contextlib.suppress(Exception):
                    self.client.delete_object(Bucket=self.bucket, Key=key)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextlib.contextmanager
    def write_version_at(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[str]:
        if self.exists(name, version):
            raise VersionExistsError(f"{self.uri(name, version)}: version already published")
        base = self._key(name, version)
        self._delete_prefix(base + "/")  # leftovers of an earlier failed attempt
        try:
            yield self.uri(name, version)
            files = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + "/"):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(base) + 1 :]
                    if rel != MANIFEST and not rel.endswith("/"):
                        files.append({"path": rel, "bytes": obj["Size"]})
            body = dict(manifest or {})
            body.update(name=name, version=version, files=sorted(files, key=lambda f: f["path"]))
            self.client.put_object(
                Bucket=self.bucket,
                Key=f"{base}/{MANIFEST}",
                Body=json.dumps(body, sort_keys=True, indent=1, default=str).encode(),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._delete_prefix(base + "/")
            raise

    def _delete_prefix(self, prefix: str) -> None:
        for key in list(self._list_keys(prefix)):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_version(self, name: str, version: str) -> None:
        if not self.exists(name, version):
            raise VersionNotFoundError(f"{self.uri(name, version)}: no such version")
        base = self._key(name, version)
        self.client.delete_object(Bucket=self.bucket, Key=f"{base}/{MANIFEST}")
        self._delete_prefix(base + "/")

    def get_pointer(self, name: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        key = self._key("_pointers", f"{_check_name(name)}.json")
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(body)

    def put_pointer(self, name: str, value: dict[str, Any]) -> None:
        key = self._key("_pointers", f"{_check_name(name)}.json")
        body = json.dumps(value, sort_keys=True, indent=1).encode()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)


def _write_manifest(folder: Path, name: str, version: str, extra: dict[str, Any] | None) -> None:
    manifest = dict(extra or {})
    manifest.update(name=name, version=version, files=_files_of(folder))
    (folder / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1, default=str))


def open_store(cfg: Config) -> ArtifactStore:
    """The artifact store the config names: ``s3://bucket/prefix`` or a local folder."""
    root = cfg.artifacts.root
    if root.startswith("s3://"):
        import boto3

        bucket, _, prefix = root[len("s3://") :].partition("/")
        client = boto3.client(
            "s3", endpoint_url=cfg.artifacts.s3_endpoint_url, region_name=cfg.artifacts.s3_region
        )
        return S3ArtifactStore(bucket, prefix, client)
    return LocalArtifactStore(cfg.resolve_path(root))
