"""Versioned, atomically published artifacts on the local filesystem or S3, safe
with several writers at once.

Every stage output is a *version* of a named artifact (``features/examples``,
``index``, ...): a set of files plus ``_manifest.json``. The manifest is the commit
marker, so a version is visible only once it is whole, and it is immutable.

Versions are deterministic, so two writers can produce the same one at the same
time (an Airflow retry beside a zombie attempt, an engineer beside the DAG). Each
write *attempt* therefore stages its files where no other attempt looks, and the
commit is one step that exactly one attempt can win. A loser gets
VersionExistsError, removes only its own staging and can reuse the winner's version;
a failed attempt's clean-up never touches a committed version.

- local: an attempt stages in ``<name>/.staging/<version>.<uuid>/`` while holding an
  exclusive ``flock`` on ``<version>.<uuid>.lock`` beside it. The commit fsyncs every
  file and folder, renames the folder onto ``<name>/<version>`` (``rename(2)`` of a
  directory onto a non-empty one fails, so one attempt wins) and fsyncs the parent so
  the rename survives a power cut. Crash leftovers are removed by the next write of
  the same artifact: a staging folder whose lock nobody holds belongs to a dead
  process (the kernel drops a process's locks when it dies, whatever its pid or pid
  namespace), so it goes; a live writer holds its lock, so its folder stays. Folders
  without a lock file (the layout before this protocol) go once older than
  ``stale_after_s``.
- S3: an attempt uploads under its own prefix ``<name>/<version>/.attempt-<uuid>/``
  (``write_version_at`` yields that prefix, so Spark writes there too) and commits
  with one PUT of ``<name>/<version>/_manifest.json`` carrying ``If-None-Match: *``:
  S3 answers 412 PreconditionFailed to every attempt but the first. The manifest's
  ``files_prefix`` names the winning attempt's prefix, so a version's files are
  exactly that attempt's; readers (``read_bytes``, ``local_path``, ``files_uri``)
  follow it, and a manifest without it (written before this protocol) means the files
  sit at the version's root. Deleting removes the manifest with ``If-Match`` on its
  ETag, then that attempt's files only. A writer whose commit failed or whose answer
  was lost reads the manifest back before cleaning up, and leaves its files alone if
  the manifest names them. Attempt prefixes of crashed writers are invisible; the
  next write of the same version removes those not written to for ``stale_after_s``.

*Pointers* are small JSON objects (``index`` -> slots, active, previous). Besides
the plain ``get_pointer``/``put_pointer``, ``read_pointer`` returns (value, token)
and ``put_pointer_if(name, value, token)`` replaces the value only if the pointer is
unchanged since that token was read (token None: only if it does not exist yet),
raising PointerConflictError otherwise; read-modify-write callers retry on it.
Locally the token is the SHA-256 of the file, compared and replaced (``os.replace``
after fsync) under an ``flock`` on ``<pointer>.json.lock``, which ``put_pointer``
takes too. On S3 the token is the ETag, and the PUT carries ``If-Match`` (or
``If-None-Match: *`` to create). Both tokens derive from the content, so a value
written again byte for byte gets its old token back: callers whose values can
repeat must put a counter or a write id in them (``indexing.slots`` does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from videorec.config import Config

MANIFEST = "_manifest.json"
ATTEMPT = ".attempt-"  # S3: an attempt's prefix inside its version, hidden from listings
STALE_AFTER_S = 24 * 3600.0  # crash leftovers untouched this long are surely dead
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


class ArtifactError(RuntimeError):
    """An artifact operation failed; the message names the artifact and version."""


class VersionExistsError(ArtifactError):
    """The version is already published; versions are immutable."""


class VersionNotFoundError(ArtifactError):
    """No committed version by that name (a half-written one counts as absent)."""


class PointerConflictError(ArtifactError):
    """A conditional pointer write lost: the pointer changed since its token was read."""


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


def _manifest_body(
    name: str, version: str, extra: dict[str, Any] | None, files: list[dict[str, Any]]
) -> dict[str, Any]:
    """The manifest: the caller's fields plus name, version, file list and write time."""
    manifest = dict(extra or {})
    manifest.update(
        name=name,
        version=version,
        files=sorted(files, key=lambda f: f["path"]),
        # Lets garbage collection spare a version its builder has not assigned yet.
        written_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    )
    return manifest


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, default=str).encode()


class ArtifactStore(ABC):
    """Versioned artifacts and pointers; see the module docstring for the protocol."""

    @abstractmethod
    def uri(self, name: str, version: str | None = None) -> str:
        """Where the artifact (or one version of it) lives, as a path or s3:// URI."""

    def files_uri(self, name: str, version: str) -> str:
        """Where a committed version's files are (S3: its winning attempt's prefix)."""
        if not self.exists(name, version):
            raise VersionNotFoundError(f"{self.uri(name, version)}: no such version")
        return self.uri(name, version)

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

        The manifest written is ``manifest`` plus name, version, the file list and the
        write time. On an exception nothing is published and the exception propagates.
        Raises VersionExistsError if the version is already published, at the start or
        at the commit (another writer won): the winner's version is then the one to use.
        """

    @abstractmethod
    @contextlib.contextmanager
    def write_version_at(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[str]:
        """Like :meth:`write_version` for distributed writers (Spark): yield a URI.

        The URI is this attempt's own staging (local: a folder renamed into place on
        success; S3: an ``s3://`` prefix under the version that the manifest names).
        On an exception this attempt's files are removed and nothing is published.
        """

    @abstractmethod
    def delete_version(self, name: str, version: str) -> None:
        """Remove a version (manifest first, so it disappears atomically for readers)."""

    def clean_leftovers(self, name: str) -> list[str]:
        """Remove what dead writers and deletions of ``name`` left behind, unlisted;
        returns what was removed (every collection calls it before its own deletes)."""
        return []

    @abstractmethod
    def read_pointer(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the pointer's value, its token), or (None, None) if it was never written."""

    @abstractmethod
    def put_pointer_if(self, name: str, value: dict[str, Any], token: str | None) -> str:
        """Replace the pointer only if unchanged since ``token`` was read; the new token.

        ``token`` None means "only if the pointer does not exist". Raises
        PointerConflictError when another write came first; nothing is written then.
        """

    @abstractmethod
    def put_pointer(self, name: str, value: dict[str, Any]) -> None:
        """Replace the pointer's value in one atomic step, whatever it holds."""

    def get_pointer(self, name: str) -> dict[str, Any] | None:
        """The pointer's JSON value, or None if it was never written."""
        return self.read_pointer(name)[0]

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

    def written_within(self, name: str, version: str, seconds: float) -> bool:
        """True if the version was committed less than ``seconds`` ago (wall clock: for
        garbage collection's grace, never for a computation). False when it is gone or
        its manifest predates the write time."""
        try:
            stamp = self.read_manifest(name, version).get("written_at")
        except VersionNotFoundError:
            return False
        if not stamp:
            return False
        age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)
        return age.total_seconds() < seconds


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` so a rename of it publishes data."""
    for p in folder.rglob("*"):
        if p.is_file() or p.is_dir():
            _fsync_path(p)
    _fsync_path(folder)


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None if it is held or gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class LocalArtifactStore(ArtifactStore):
    """Artifacts under a local folder; publish is a directory rename."""

    def __init__(
        self, root: str | os.PathLike[str], *, stale_after_s: float = STALE_AFTER_S
    ) -> None:
        self.root = Path(root)
        self.stale_after_s = stale_after_s

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
        with contextlib.suppress(OSError):  # housekeeping must not fail the write
            self.clean_staging(name)
        staging, lock = self._new_staging(staging_root, version)
        try:
            yield str(staging)
            body = _manifest_body(name, version, manifest, _files_of(staging))
            (staging / MANIFEST).write_bytes(_dumps(body))
            _fsync_tree(staging)
            try:
                # Atomic publish: rename(2) of a directory fails onto a non-empty one.
                os.rename(staging, target)
            except OSError as err:
                if target.exists():
                    raise VersionExistsError(f"{target}: published concurrently") from err
                raise
            _fsync_path(target.parent)  # make the new directory entry durable
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            lock_path = staging_root / f"{staging.name}.lock"
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()  # unlinked before closing: still ours when it goes
            os.close(lock)

    @staticmethod
    def _new_staging(staging_root: Path, version: str) -> tuple[Path, int]:
        """A fresh staging folder and the fd that holds its lock while this attempt lives."""
        token = f"{version}.{uuid.uuid4().hex}"
        # Lock first, folder second: a cleaner only considers folders, so it never
        # sees this attempt's folder without its lock held.
        lock_path = staging_root / f"{token}.lock"
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A cleaner may have unlinked the lock file between our open and our flock
            # (it saw a lock file with no folder): then we hold a lock on a file no
            # one else can see. Keep the lock only if it is still the file at the path.
            try:
                if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        staging = staging_root / token
        staging.mkdir()
        return staging, fd

    def clean_leftovers(self, name: str) -> list[str]:
        return self.clean_staging(name)

    def clean_staging(self, name: str) -> list[str]:
        """Remove what crashed writers of ``name`` left in its staging area.

        A staging folder goes when nobody holds its lock (its writer is dead); a
        deleted version's trash goes at once; a folder without a lock file (written
        before locks) goes once its mtime is ``stale_after_s`` old. A live writer
        always holds its lock, so its folder is never touched. Returns the names
        removed.
        """
        staging_root = self._dir(name) / ".staging"
        if not staging_root.is_dir():
            return []
        removed = []
        for entry in sorted(staging_root.iterdir()):
            if entry.suffix == ".lock":
                if not entry.with_suffix("").exists() and self._remove_if_dead(entry, None):
                    removed.append(entry.name)
                continue
            lock_path = entry.with_name(entry.name + ".lock")
            if lock_path.exists():
                if self._remove_if_dead(lock_path, entry):
                    removed.append(entry.name)
            elif entry.name.startswith("deleted-"):
                # A deleted version moved aside: nobody reads it, a second rmtree is harmless.
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
            elif time.time() - entry.lstat().st_mtime > self.stale_after_s:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    @staticmethod
    def _remove_if_dead(lock_path: Path, folder: Path | None) -> bool:
        fd = _try_lock(lock_path)
        if fd is None:
            return False  # a live writer holds it (or it just finished)
        try:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
        finally:
            os.close(fd)
        return True

    def delete_version(self, name: str, version: str) -> None:
        d = self._dir(name, version)
        trash = self._dir(name) / ".staging" / f"deleted-{version}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        # Move aside first so readers never see a version with files missing; the
        # rename also decides between two concurrent deletes.
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            raise VersionNotFoundError(f"{d}: no such version") from None
        shutil.rmtree(trash, ignore_errors=True)

    def _pointer_path(self, name: str) -> Path:
        return self.root / "_pointers" / f"{_check_name(name)}.json"

    @contextlib.contextmanager
    def _pointer_lock(self, path: Path) -> Iterator[None]:
        """Hold an exclusive flock on the pointer's lock file (never deleted)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read_pointer(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        # No lock: os.replace swaps whole files, so a read sees one complete value.
        try:
            raw = self._pointer_path(name).read_bytes()
        except FileNotFoundError:
            return None, None
        return json.loads(raw), hashlib.sha256(raw).hexdigest()

    def put_pointer_if(self, name: str, value: dict[str, Any], token: str | None) -> str:
        p = self._pointer_path(name)
        with self._pointer_lock(p):
            try:
                current: str | None = hashlib.sha256(p.read_bytes()).hexdigest()
            except FileNotFoundError:
                current = None
            if current != token:
                raise PointerConflictError(f"{p}: changed since it was read")
            return self._replace(p, value)

    def put_pointer(self, name: str, value: dict[str, Any]) -> None:
        p = self._pointer_path(name)
        with self._pointer_lock(p):  # never between a conditional write's compare and swap
            self._replace(p, value)

    @staticmethod
    def _replace(p: Path, value: dict[str, Any]) -> str:
        raw = json.dumps(value, sort_keys=True, indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_path(p.parent)
        return hashlib.sha256(raw).hexdigest()


def _error_code(err: Exception) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    response = getattr(err, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code, int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _lost_condition(err: Exception) -> bool:
    """True for S3's answer to a conditional request that another write beat."""
    code, status = _error_code(err)
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _missing(err: Exception) -> bool:
    code, status = _error_code(err)
    return code in ("NoSuchKey", "404") or status == 404


# S3's answers that say the configured store itself is wrong (its bucket, its
# credentials): the operator's to fix, as bad input is.
_STORE_CONFIG_CODES = frozenset({
    "NoSuchBucket", "InvalidBucketName", "AccessDenied", "AllAccessDisabled",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
})  # fmt: skip


def storage_failure(err: BaseException) -> tuple[str, str] | None:
    """What an S3 client's error (botocore's, which the store lets through) says for a
    command's exit: ("bad_input", message) for a store that is misconfigured (no such
    bucket, credentials refused or missing), ("storage_error", message) for any other
    failure of the S3 API (an outage, a throttle past the SDK's retries); None for an
    error that is not botocore's."""
    if not type(err).__module__.startswith("botocore"):
        return None
    code, _ = _error_code(err)  # type: ignore[arg-type]
    misconfigured = code in _STORE_CONFIG_CODES or type(err).__name__ in (
        "NoCredentialsError", "PartialCredentialsError", "NoRegionError",
    )  # fmt: skip
    kind = "bad_input" if misconfigured else "storage_error"
    return kind, f"artifact store (S3): {err}"


class S3ArtifactStore(ArtifactStore):
    """Artifacts under ``s3://bucket/prefix`` through boto3; a conditional manifest PUT
    commits each version (see the module docstring)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        import boto3  # deferred: only S3 users pay for the import

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3")
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "videorec-s3-cache")
        self.stale_after_s = stale_after_s

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, name: str, version: str | None = None) -> str:
        parts = [_check_name(name)] + ([_check_version(version)] if version else [])
        return f"s3://{self.bucket}/{self._key(*parts)}"

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _list_keys(self, prefix: str) -> Iterator[str]:
        for obj in self._list(prefix):
            yield obj["Key"]

    def list_versions(self, name: str) -> list[str]:
        base = self._key(_check_name(name)) + "/"
        versions = set()
        for key in self._list_keys(base):
            rest = key[len(base) :].split("/")
            if len(rest) == 2 and rest[1] == MANIFEST and not rest[0].startswith((".", "_")):
                versions.add(rest[0])
        return sorted(versions)

    def _get(self, key: str) -> tuple[bytes, str]:
        """(body, ETag) of one object; FileNotFoundError if it is absent."""
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _missing(err):
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise
        return resp["Body"].read(), resp["ETag"]

    def _committed(self, name: str, version: str) -> tuple[dict[str, Any], str, str]:
        """(manifest, its ETag, the key prefix of the version's files)."""
        key = self._key(_check_name(name), _check_version(version), MANIFEST)
        try:
            raw, etag = self._get(key)
        except FileNotFoundError:
            raise VersionNotFoundError(f"{self.uri(name, version)}: no such version") from None
        manifest = json.loads(raw)
        return manifest, etag, self._key(name, version, manifest.get("files_prefix", ""))

    def files_uri(self, name: str, version: str) -> str:
        return f"s3://{self.bucket}/{self._committed(name, version)[2]}"

    def read_bytes(self, name: str, version: str, relpath: str) -> bytes:
        if relpath == MANIFEST:
            return self._get(self._key(_check_name(name), _check_version(version), MANIFEST))[0]
        try:
            files = self._committed(name, version)[2]
        except VersionNotFoundError:
            raise FileNotFoundError(f"{self.uri(name, version)}/{relpath}") from None
        return self._get(f"{files}/{relpath}")[0]

    def local_path(self, name: str, version: str) -> Path:
        manifest, _, files = self._committed(name, version)
        # Keyed by the attempt too: a version deleted and written again is new content.
        attempt = manifest.get("files_prefix", "").removeprefix(ATTEMPT) or "root"
        dest = self.cache_dir / self.bucket / self._key(name, version) / attempt
        if (dest / MANIFEST).is_file():
            return dest  # versions are immutable, so a complete cached copy is current
        tmp = dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:8]}")
        try:
            for f in manifest["files"]:
                out = tmp / f["path"]
                out.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, f"{files}/{f['path']}", str(out))
            (tmp / MANIFEST).write_bytes(_dumps(manifest))
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not (dest / MANIFEST).is_file():  # not a concurrent download: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _begin(self, name: str, version: str) -> str:
        """A fresh attempt's prefix (relative to the version) after sweeping dead ones."""
        from botocore.exceptions import ClientError

        if self.exists(name, version):
            raise VersionExistsError(f"{self.uri(name, version)}: version already published")
        with contextlib.suppress(ClientError):  # housekeeping must not fail the write
            self._sweep_attempts(name, version)
        return f"{ATTEMPT}{uuid.uuid4().hex}"

    def _sweep_attempts(self, name: str, version: str) -> None:
        """Delete attempt prefixes of this version nobody wrote to for stale_after_s."""
        base = self._key(name, version) + "/"
        newest: dict[str, float] = {}
        for obj in self._list(base):
            head = obj["Key"][len(base) :].split("/", 1)[0]
            if head.startswith(ATTEMPT):
                stamp = obj["LastModified"].timestamp()
                newest[head] = max(newest.get(head, 0.0), stamp)
        cutoff = time.time() - self.stale_after_s
        for attempt, stamp in newest.items():
            if stamp < cutoff and not self._is_committed(name, version, attempt):
                self._delete_prefix(f"{base}{attempt}/")

    def clean_leftovers(self, name: str) -> list[str]:
        """Delete the attempts of versions of ``name`` that have no manifest and that
        nobody wrote to for ``stale_after_s``: what a deletion killed between its
        manifest and its files left (nothing writes such a version again to sweep it).
        Returns the prefixes deleted."""
        base = self._key(_check_name(name)) + "/"
        newest: dict[tuple[str, str], float] = {}
        committed: set[str] = set()
        for obj in self._list(base):
            rest = obj["Key"][len(base) :].split("/")
            if len(rest) == 2 and rest[1] == MANIFEST:
                committed.add(rest[0])
            elif len(rest) > 2 and rest[1].startswith(ATTEMPT):
                at = (rest[0], rest[1])
                newest[at] = max(newest.get(at, 0.0), obj["LastModified"].timestamp())
        cutoff = time.time() - self.stale_after_s
        gone = []
        for (version, attempt), stamp in sorted(newest.items()):
            # Listed before the manifest check: a commit between the two keeps its files.
            if version in committed or stamp >= cutoff or self.exists(name, version):
                continue
            self._delete_prefix(f"{base}{version}/{attempt}/")
            gone.append(f"{version}/{attempt}")
        return gone

    def _is_committed(self, name: str, version: str, attempt: str) -> bool:
        try:
            return self._committed(name, version)[0].get("files_prefix") == attempt
        except VersionNotFoundError:
            return False

    def _commit(self, name: str, version: str, body: dict[str, Any]) -> None:
        """PUT the manifest if none exists; VersionExistsError if another attempt won."""
        from botocore.exceptions import ClientError

        key = self._key(name, version, MANIFEST)
        for _ in range(5):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=_dumps(body), IfNoneMatch="*"
                )
                return
            except ClientError as err:
                if _error_code(err)[1] == 409:  # another conditional PUT in flight: ask again
                    time.sleep(0.2)
                    continue
                if not _lost_condition(err):
                    raise
            break
        # 412: somebody's manifest is there. It can be ours if a retry of our own PUT
        # found the first one landed (the answer was lost).
        if self._is_committed(name, version, body["files_prefix"]):
            return
        if not self.exists(name, version):  # only 409s: nothing committed yet, nor by us
            raise ArtifactError(f"{self.uri(name, version)}: commit kept conflicting")
        raise VersionExistsError(f"{self.uri(name, version)}: published concurrently")

    def _abandon(self, name: str, version: str, attempt: str) -> None:
        """Delete this attempt's files unless the committed manifest names them."""
        try:
            if self._is_committed(name, version, attempt):
                return
        except Exception:
            return  # cannot tell: leave them for the sweep of a later write
        self._delete_prefix(self._key(name, version, attempt) + "/")

    @contextlib.contextmanager
    def write_version(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[Path]:
        attempt = self._begin(name, version)
        staging = Path(tempfile.mkdtemp(prefix="videorec-s3-staging-"))
        try:
            yield staging
            files = _files_of(staging)
            for f in files:
                key = self._key(name, version, attempt, f["path"])
                self.client.upload_file(str(staging / f["path"]), self.bucket, key)
            body = _manifest_body(name, version, manifest, files)
            self._commit(name, version, {**body, "files_prefix": attempt})
        except BaseException:
            with contextlib.suppress(Exception):
                self._abandon(name, version, attempt)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextlib.contextmanager
    def write_version_at(
        self, name: str, version: str, manifest: dict[str, Any] | None = None
    ) -> Iterator[str]:
        attempt = self._begin(name, version)
        base = self._key(name, version, attempt)
        try:
            yield f"s3://{self.bucket}/{base}"
            files = [
                {"path": obj["Key"][len(base) + 1 :], "bytes": obj["Size"]}
                for obj in self._list(base + "/")
                if not obj["Key"].endswith("/")  # "directory" markers some writers leave
            ]
            body = _manifest_body(name, version, manifest, files)
            self._commit(name, version, {**body, "files_prefix": attempt})
        except BaseException:
            with contextlib.suppress(Exception):
                self._abandon(name, version, attempt)
            raise

    def _delete_prefix(self, prefix: str) -> None:
        for key in list(self._list_keys(prefix)):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_version(self, name: str, version: str) -> None:
        from botocore.exceptions import ClientError

        manifest, etag, files = self._committed(name, version)
        try:
            # Conditional: only the manifest read above, never one committed since.
            self.client.delete_object(
                Bucket=self.bucket, Key=self._key(name, version, MANIFEST), IfMatch=etag
            )
        except ClientError as err:
            if _lost_condition(err) or _missing(err):
                # Deleted by a twin, or by this very call when its answer was lost and
                # botocore's retry found no manifest: the files of the manifest read
                # above go all the same (an attempt's prefix is never reused, so a
                # version written again since keeps its own).
                if manifest.get("files_prefix"):
                    self._delete_prefix(files + "/")
                raise VersionNotFoundError(
                    f"{self.uri(name, version)}: deleted or replaced concurrently"
                ) from None
            raise
        if manifest.get("files_prefix"):
            self._delete_prefix(files + "/")
        else:  # the layout before attempts: only the listed files, never another attempt's
            for f in manifest["files"]:
                self.client.delete_object(Bucket=self.bucket, Key=f"{files}/{f['path']}")
        # Attempts that lost the commit and were killed before cleaning up (a SIGKILLed
        # zombie) would otherwise stay forever: nothing writes this version again.
        self._sweep_attempts(name, version)

    def _pointer_key(self, name: str) -> str:
        return self._key("_pointers", f"{_check_name(name)}.json")

    def read_pointer(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            raw, etag = self._get(self._pointer_key(name))
        except FileNotFoundError:
            return None, None
        return json.loads(raw), etag

    def put_pointer_if(self, name: str, value: dict[str, Any], token: str | None) -> str:
        from botocore.exceptions import ClientError

        key = self._pointer_key(name)
        condition = {"IfMatch": token} if token is not None else {"IfNoneMatch": "*"}
        body = json.dumps(value, sort_keys=True, indent=1).encode()
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)
        except ClientError as err:
            # 404: If-Match on a pointer deleted since; 409: a concurrent conditional PUT.
            if _lost_condition(err) or _missing(err):
                raise PointerConflictError(
                    f"s3://{self.bucket}/{key}: changed since read"
                ) from None
            raise
        return resp["ETag"]

    def put_pointer(self, name: str, value: dict[str, Any]) -> None:
        body = json.dumps(value, sort_keys=True, indent=1).encode()
        self.client.put_object(Bucket=self.bucket, Key=self._pointer_key(name), Body=body)


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


CAS_ATTEMPTS = 64  # each lost round means another writer won one: progress is made


def cas_update(
    store: ArtifactStore,
    pointer: str,
    change: Callable[[dict[str, Any]], bool],
    normalise: Callable[[dict[str, Any] | None], dict[str, Any]],
    *,
    error: type[Exception] = PointerConflictError,
) -> dict[str, Any]:
    """Apply ``change`` to the pointer ``pointer`` by compare-and-swap; the state now in force.

    ``normalise`` turns the stored value (None: never written) into a private, complete
    state. ``change`` edits that fresh copy in place and returns whether there is
    anything to write; it may raise (nothing is written then). It runs again on every
    retry, so it must depend only on the state it is given and the store. Raises
    ``error`` after :data:`CAS_ATTEMPTS` lost rounds (nothing written then).
    """
    write_id = uuid.uuid4().hex
    for attempt in range(CAS_ATTEMPTS):
        value, token = store.read_pointer(pointer)
        if value is not None and value.get("write_id") == write_id:
            return normalise(value)  # our PUT landed though its answer was lost
        state = normalise(value)
        if not change(state):
            return state
        state["revision"] = int(state.get("revision", 0)) + 1
        state["write_id"] = write_id
        try:
            store.put_pointer_if(pointer, state, token)
            return state
        except PointerConflictError:
            # Jittered backoff, so two writers in lockstep stop colliding.
            time.sleep(random.uniform(0, min(0.25, 0.002 * 2**attempt)))
    raise error(
        f"the {pointer} pointer kept changing under this update ({CAS_ATTEMPTS} attempts); "
        "nothing was written, retry"
    )
