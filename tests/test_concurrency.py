"""Concurrent writers: artifact versions and the blue-green pointer, with real processes.

Airflow retries a task while a zombie attempt may still run, and on-call engineers
run ``videorec index publish`` by hand while a DAG runs. These tests start separate
processes (``multiprocessing`` with ``spawn``: no state shared with pytest's) against
the local store and against the S3 API endpoint (moto's server over HTTP), and check
what the module docstrings of ``videorec.artifacts`` and ``videorec.indexing.slots``
promise: exactly one writer of a version commits, its files are whole and unmixed,
a failing writer's clean-up leaves the committed version alone, crash leftovers are
swept without touching a live writer, and no pointer update is lost.

Index versions here are small fakes (a manifest with ``gate: passed`` and one file),
not FAISS builds: the pointer protocol only reads the manifest's gate.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FailingUploads

from videorec import artifacts
from videorec.artifact_names import INDEX as INDEX_ARTIFACT
from videorec.artifacts import (
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    VersionExistsError,
)
from videorec.indexing import slots

CTX = mp.get_context("spawn")  # fresh interpreters: nothing inherited from pytest
NAME, VERSION = "features/examples", "2026-11-01_abc"
JOIN_S = 120


# --- helpers that run in the child processes (module level, so spawn can import them) --


def open_store(spec: dict[str, str], fail_upload_at: int | None = None) -> ArtifactStore:
    """The store ``spec`` names; ``fail_upload_at`` breaks that S3 upload (1-based)."""
    if spec["kind"] == "local":
        return LocalArtifactStore(spec["root"])
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=spec["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    if fail_upload_at is not None:
        client = FailingUploads(client, fail_upload_at)
    return S3ArtifactStore(spec["bucket"], "videorec", client, cache_dir=spec["cache"])


def content(writer: str) -> dict[str, bytes]:
    """Each writer's files: a shared name with its own bytes and size, and its own name."""
    return {
        "common.bin": writer.encode() * (1000 if writer == "A" else 2000),
        f"only-{writer}.bin": b"x" * 7,
        "sub/part-0": f"part of {writer}".encode(),
    }


@contextlib.contextmanager
def writing(store: ArtifactStore, method: str, manifest: dict[str, Any]) -> Iterator[Callable]:
    """Open a write of NAME/VERSION by ``method``; yield ``put(relpath, data)``."""
    if method == "write_version":
        with store.write_version(NAME, VERSION, manifest) as folder:

            def put_file(rel: str, data: bytes) -> None:
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)

            yield put_file
        return
    with store.write_version_at(NAME, VERSION, manifest) as uri:

        def put_uri(rel: str, data: bytes) -> None:
            # What Spark does with the URI: write objects (S3) or files (local) under it.
            if isinstance(store, S3ArtifactStore):
                bucket, _, key = uri.removeprefix("s3://").partition("/")
                store.client.put_object(Bucket=bucket, Key=f"{key}/{rel}", Body=data)
            else:
                Path(uri, rel).parent.mkdir(parents=True, exist_ok=True)
                Path(uri, rel).write_bytes(data)

        yield put_uri


def write_worker(
    spec: dict[str, str], writer: str, method: str, fail: str, sync: Any, out: Any
) -> None:
    """Write NAME/VERSION as ``writer``; ``fail`` is "", "body" or "upload".

    Both writers meet at ``entered`` mid-write; a failing writer then waits until the
    other has committed, so its clean-up runs against a committed version.
    """
    entered, committed = sync
    store = open_store(spec, fail_upload_at=2 if fail == "upload" else None)
    try:
        with writing(store, method, {"writer": writer}) as put:
            for rel, data in content(writer).items():
                put(rel, data)
            entered.wait(timeout=60)
            if fail:
                committed.wait(timeout=60)
            if fail == "body":
                raise RuntimeError("attempt killed")
        result = "committed"
        committed.set()
    except VersionExistsError:
        result = "exists"
    except (RuntimeError, ConnectionError):
        result = "failed"
    # Whatever happened, the version is now used the way a downstream task would.
    try:
        m = store.read_manifest(NAME, VERSION)
        files = {f["path"]: store.read_bytes(NAME, VERSION, f["path"]) for f in m["files"]}
    except Exception as err:  # reported, so the test names it rather than timing out
        m, files = {"read_error": repr(err)}, {}
    out.put((writer, result, m, files))


def run_processes(jobs: list[tuple[Callable, tuple]]) -> list[Any]:
    """Start one process per (target, args); each gets a queue last. Their reports."""
    out = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args, out)) for target, args in jobs]
    for p in procs:
        p.start()
    results: list[Any] = []
    deadline = time.monotonic() + JOIN_S
    try:
        while len(results) < len(procs) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                results.append(out.get(timeout=0.5))
                continue
            if not any(p.is_alive() for p in procs) and out.empty():
                break  # a child died without reporting: its exit code says so below
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len(results) == len(procs), results
    return results


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Where the child processes find the store: a folder, or a fresh moto bucket."""
    if request.param == "local":
        return {"kind": "local", "root": str(tmp_path / "store")}
    return s3_spec(request.getfixturevalue("s3_endpoint"), tmp_path)


def s3_spec(endpoint: str, tmp_path: Path) -> dict[str, str]:
    """A fresh bucket on the moto server, named after the test."""
    bucket = f"c-{tmp_path.name.lower().replace('_', '-')[:40]}"
    spec = {"kind": "s3", "endpoint": endpoint, "bucket": bucket, "cache": str(tmp_path / "c")}
    open_store(spec).client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    return spec


def stray_files(store: ArtifactStore) -> list[str]:
    """What lies under NAME besides the committed version's own files and manifest."""
    if isinstance(store, LocalArtifactStore):
        staging = Path(store.uri(NAME)) / ".staging"
        return sorted(os.listdir(staging)) if staging.is_dir() else []
    # From the manifest itself, so the check reads the layout before attempts too.
    files = store._key(NAME, VERSION, store.read_manifest(NAME, VERSION).get("files_prefix", ""))
    manifest = store._key(NAME, VERSION, "_manifest.json")
    return sorted(
        k
        for k in store._list_keys(store._key(NAME) + "/")
        if k != manifest and not k.startswith(files + "/")
    )


def assert_version_is(store: ArtifactStore, writer: str) -> None:
    """The committed version is exactly ``writer``'s: manifest, file list and bytes."""
    m = store.read_manifest(NAME, VERSION)
    want = content(writer)
    assert m["writer"] == writer
    assert {f["path"]: f["bytes"] for f in m["files"]} == {k: len(v) for k, v in want.items()}
    for rel, data in want.items():
        assert store.read_bytes(NAME, VERSION, rel) == data, rel
    local = store.local_path(NAME, VERSION)
    assert {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()} == {
        *want,
        "_manifest.json",
    }


# --- versions ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["write_version", "write_version_at"])
def test_two_writers_of_one_version_exactly_one_commits(spec: dict[str, str], method: str) -> None:
    sync = (CTX.Barrier(2), CTX.Event())
    results = run_processes([(write_worker, (spec, w, method, "", sync)) for w in ("A", "B")])
    outcome = {writer: result for writer, result, _, _ in results}
    assert sorted(outcome.values()) == ["committed", "exists"], outcome
    winner = next(w for w, r in outcome.items() if r == "committed")
    store = open_store(spec)
    assert_version_is(store, winner)
    # The loser reused the winner's version: it read the winner's manifest and bytes.
    for _, _, manifest, files in results:
        assert manifest["writer"] == winner and files == content(winner)
    assert stray_files(store) == []  # the loser removed its own staging, nothing else


def check_failing_writer(spec: dict[str, str], method: str, fail: str) -> None:
    """A commits while B is mid-write; B then fails: A's version must stay whole."""
    sync = (CTX.Barrier(2), CTX.Event())
    results = run_processes(
        [
            (write_worker, (spec, "A", method, "", sync)),
            (write_worker, (spec, "B", method, fail, sync)),
        ]
    )
    outcome = {writer: result for writer, result, _, _ in results}
    assert outcome == {"A": "committed", "B": "failed"}
    store = open_store(spec)
    assert_version_is(store, "A")
    assert stray_files(store) == []


@pytest.mark.parametrize("method", ["write_version", "write_version_at"])
def test_a_failing_writers_clean_up_spares_the_committed_version(
    spec: dict[str, str], method: str
) -> None:
    check_failing_writer(spec, method, "body")


def test_a_writer_failing_mid_upload_spares_the_committed_version(
    s3_endpoint: str, tmp_path: Path
) -> None:
    # Its uploads land on the same keys as the committed files unless each attempt
    # has its own prefix; then its clean-up deletes what it uploaded.
    check_failing_writer(s3_spec(s3_endpoint, tmp_path), "write_version", "upload")


def hold_a_write(root: str, version: str, crash: bool, release: Any, conn: Any) -> None:
    """Stage a version, report its staging folder, then die (``crash``) or wait and commit."""
    store = LocalArtifactStore(root)
    with store.write_version(NAME, version, {"writer": version}) as folder:
        (folder / "data").write_bytes(version.encode())
        conn.send(folder.name)  # a pipe write is done when send returns, unlike Queue.put
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up code runs, as in an OOM kill
        release.wait(timeout=60)


def test_local_crash_leftovers_go_and_a_live_writers_staging_stays(tmp_path: Path) -> None:
    root, release = str(tmp_path / "store"), CTX.Event()
    procs, staged = {}, {}
    for role in ("live", "dead"):
        recv, send = CTX.Pipe(duplex=False)
        procs[role] = CTX.Process(
            target=hold_a_write, args=(root, f"v-{role}", role == "dead", release, send)
        )
        procs[role].start()
        assert recv.poll(JOIN_S), f"the {role} writer never staged"
        staged[role] = recv.recv()
    try:
        procs["dead"].join(JOIN_S)
        assert procs["dead"].exitcode == -signal.SIGKILL
        staging = tmp_path / "store" / NAME / ".staging"
        assert {p.name for p in staging.iterdir() if p.is_dir()} == set(staged.values())
        # Another write of the artifact sweeps what the dead writer left, and only that.
        store = LocalArtifactStore(root)
        with store.write_version(NAME, "v-other") as folder:
            (folder / "data").write_bytes(b"other")
        live = staged["live"]
        assert sorted(p.name for p in staging.iterdir()) == [live, f"{live}.lock"]
    finally:
        release.set()
        procs["live"].join(JOIN_S)
    assert procs["live"].exitcode == 0
    assert store.read_bytes(NAME, "v-live", "data") == b"v-live"
    assert store.list_versions(NAME) == ["v-live", "v-other"]
    assert list(staging.iterdir()) == []


# --- the blue-green pointer ------------------------------------------------------------

ROUNDS = {"local": 150, "s3": 30}  # per process; S3 rounds cost about ten HTTP calls each


def fake_index(store: ArtifactStore, version: str) -> None:
    """A tiny index version the slots accept: the gate passed, one file."""
    with store.write_version(INDEX_ARTIFACT, version, {"gate": "passed"}) as d:
        (d / "index.faiss").write_bytes(version.encode())


def active_unreadable(store: ArtifactStore) -> str | None:
    """What is wrong with reading the active version's files, or None if they read back.

    A failed read only counts if the version is still active after it: one replaced
    meanwhile may go (GC keeps the previous version, not older ones), and a reader
    then follows the pointer again.
    """
    for _ in range(5):
        version, _ = slots.active_version(store)
        if version is None:
            return "no active version"
        try:
            data = store.read_bytes(INDEX_ARTIFACT, version, "index.faiss")
            problem = None if data == version.encode() else f"active {version}: wrong bytes"
        except FileNotFoundError:
            problem = f"active {version}: files gone"
        if problem is None or slots.active_version(store)[0] == version:
            return problem
    return None


def publish_gc_worker(spec: dict[str, str], me: str, rounds: int, start: Any, out: Any) -> None:
    """Build (fake), publish and collect garbage ``rounds`` times; report what happened."""
    store = open_store(spec)
    generations: list[int] = []
    deleted: list[str] = []
    errors: list[str] = []
    start.wait(60)
    for i in range(rounds):
        version = f"2026-12-01_{me}{i:04d}"
        try:
            fake_index(store, version)
            state = slots.publish(store, version)
            generations.append(state["generation"])
            if state["slots"][state["active"]]["version"] != version:
                errors.append(f"round {i}: publish returned another active version")
            deleted += slots.collect_garbage(store, keep=2)
        except Exception as err:
            errors.append(f"round {i}: {err!r}")
            continue
        problem = active_unreadable(store)
        if problem:
            errors.append(f"round {i}: {problem}")
    out.put((me, generations, deleted, errors[:20]))


def test_two_processes_publish_and_collect_garbage_without_lost_updates(
    spec: dict[str, str],
) -> None:
    rounds = ROUNDS[spec["kind"]]
    start = CTX.Barrier(2)
    results = run_processes([(publish_gc_worker, (spec, me, rounds, start)) for me in "AB"])
    assert [e for r in results for e in r[3]] == []
    # Every publish here is of a fresh version, so each wrote exactly one generation:
    # the generations the two processes got are 1..N, none twice, none skipped.
    generations = sorted(g for r in results for g in r[1])
    assert generations == list(range(1, 2 * rounds + 1))
    deleted = [v for r in results for v in r[2]]
    assert len(deleted) == len(set(deleted)), "two collections deleted one version"
    store = open_store(spec)
    state = slots.read_state(store)
    assert state["generation"] == 2 * rounds and state["deleting"] == {}
    assert active_unreadable(store) is None
    remaining = store.list_versions(INDEX_ARTIFACT)
    written = {f"2026-12-01_{me}{i:04d}" for me in "AB" for i in range(rounds)}
    assert set(remaining) | set(deleted) == written and not set(remaining) & set(deleted)
    assert len(remaining) <= 5  # keep=2 plus the active, previous and standby versions


def assign_worker(spec: dict[str, str], rounds: int, start: Any, out: Any) -> None:
    """A build loop: fake index versions, each assigned to the standby slot."""
    store = open_store(spec)
    start.wait(60)
    assigned = []
    for i in range(rounds):
        version = f"2026-12-02_b{i:04d}"
        fake_index(store, version)
        slots.assign_standby(store, version)
        assigned.append(version)
    out.put(("build", assigned))


def publish_worker(spec: dict[str, str], rounds: int, start: Any, out: Any) -> None:
    """An engineer publishing whatever the standby slot holds, again and again."""
    store = open_store(spec)
    start.wait(60)
    generations = []
    while len(generations) < rounds:
        try:
            state = slots.publish(store)
        except slots.SlotError:
            time.sleep(0.005)  # the standby slot is empty until the first build lands
            continue
        generations.append(state["generation"])
    out.put(("publish", generations))


def test_a_build_assigning_while_someone_publishes_loses_nothing(tmp_path: Path) -> None:
    spec = {"kind": "local", "root": str(tmp_path / "store")}
    start, rounds = CTX.Barrier(2), ROUNDS["local"]
    results = dict(
        run_processes(
            [(assign_worker, (spec, rounds, start)), (publish_worker, (spec, rounds // 3, start))]
        )
    )
    # Each publish made a new version active (standby never holds the active one), so
    # its generations are 1..N; a stale write from the build would repeat one.
    assert results["publish"] == list(range(1, rounds // 3 + 1))
    state = slots.read_state(open_store(spec))
    # Every assignment survived: none was overwritten by a publish's stale state.
    assert state["builds"] == results["build"]
    assert state["generation"] == rounds // 3


class _Crash(BaseException):
    """The process dies here (a BaseException, like SystemExit: nothing catches it)."""


class CountingStore(LocalArtifactStore):
    """A local store that counts pointer writes; write number ``crash_at`` dies first."""

    def __init__(self, root: Path, crash_at: int | None = None) -> None:
        super().__init__(root)
        self.writes, self.crash_at = 0, crash_at

    def _count(self) -> None:
        self.writes += 1
        if self.writes == self.crash_at:
            raise _Crash

    def put_pointer(self, name: str, value: dict[str, Any]) -> None:
        self._count()
        super().put_pointer(name, value)

    def put_pointer_if(self, name: str, value: dict[str, Any], token: str | None) -> str:
        self._count()
        return super().put_pointer_if(name, value, token)


def two_published(store: ArtifactStore) -> None:
    """v1 then v2 published: v2 active, v1 previous."""
    for v in ("v1", "v2"):
        fake_index(store, v)
        slots.publish(store, v)


def test_rollback_is_one_pointer_write(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "a")
    two_published(store)
    store.writes = 0
    slots.rollback(store)
    assert store.writes == 1
    # A process that dies where a second write would be leaves a whole rollback or
    # none; never v1 active with v2 unmarked in standby, which a plain publish would
    # put live again.
    crashing = CountingStore(tmp_path / "b")
    two_published(crashing)
    crashing.writes, crashing.crash_at = 0, 2
    with contextlib.suppress(_Crash):
        slots.rollback(crashing)
    state = slots.read_state(LocalArtifactStore(tmp_path / "b"))
    assert (slots.status(crashing)["active_version"], state.get("rolled_back")) in (
        ("v2", None),  # not rolled back at all
        ("v1", "v2"),  # rolled back and marked
    )


class LostAnswerStore(LocalArtifactStore):
    """Its next conditional pointer write lands but reports a conflict: S3 does that
    when the answer to a PUT is lost and the SDK's retry finds its own write there."""

    lose_next = False

    def put_pointer_if(self, name: str, value: dict[str, Any], token: str | None) -> str:
        new_token = super().put_pointer_if(name, value, token)
        if self.lose_next:
            self.lose_next = False
            # Looked up here, so the module still imports against the code before CAS.
            raise artifacts.PointerConflictError("the answer was lost")
        return new_token


def test_a_change_whose_answer_was_lost_is_not_applied_twice(tmp_path: Path) -> None:
    store = LostAnswerStore(tmp_path)
    two_published(store)
    store.lose_next = True
    slots.rollback(store)  # applied twice, it would roll forward to v2 again
    st = slots.status(store)
    assert (st["active_version"], st["rolled_back"], st["generation"]) == ("v1", "v2", 3)


class LostAnswerThenAnotherWriter(LostAnswerStore):
    """The lost-answer case with another writer landing before the retry reads."""

    def put_pointer_if(self, name: str, value: dict[str, Any], token: str | None) -> str:
        lose = self.lose_next
        try:
            return super().put_pointer_if(name, value, token)
        finally:
            if lose:  # between our landed write and our retry, a build assigns v3
                fake_index(self, "v3")
                slots.assign_standby(LocalArtifactStore(self.root), "v3")


def test_a_rollback_whose_answer_was_lost_behind_another_write_is_not_repeated(
    tmp_path: Path,
) -> None:
    # The retry cannot recognise its own write (another one came after it); a second
    # rollback would make v2, the version just rolled back from, live again.
    store = LostAnswerThenAnotherWriter(tmp_path)
    two_published(store)
    store.lose_next = True
    slots.rollback(store)
    st = slots.status(store)
    assert st["active_version"] == "v1"
    assert st["slots"][slots.read_state(store)["active"]]["version"] == "v1"


def test_a_second_rollback_does_not_put_the_rolled_back_version_live_again(
    tmp_path: Path,
) -> None:
    """Two engineers roll back, the second reading after the first wrote (or one re-runs
    the command after a timeout): found by review, v2 went live again."""
    store = LocalArtifactStore(tmp_path)
    two_published(store)
    slots.rollback(store)
    with pytest.raises(slots.SlotError, match="is the one rolled back from"):
        slots.rollback(store)
    st = slots.status(store)
    assert (st["active_version"], st["rolled_back"], st["generation"]) == ("v1", "v2", 3)
    with pytest.raises(slots.RolledBackError, match="with --force"):
        slots.publish(store, "v2")  # a retried or re-run publish of the DAG names it
    slots.publish(store, "v2", force=True)  # a person undoing the rollback: allowed
    assert slots.status(store)["active_version"] == "v2"


class FailingDeletes(LocalArtifactStore):
    """A local store whose deletes fail while ``broken``: a GC dies after marking."""

    broken = False

    def delete_version(self, name: str, version: str) -> None:
        if self.broken:
            raise OSError("the GC's process died here")
        super().delete_version(name, version)


def test_a_version_being_collected_cannot_be_published(tmp_path: Path) -> None:
    store = FailingDeletes(tmp_path)
    for v in ("v1", "v2", "v3"):
        fake_index(store, v)
        slots.publish(store, v)  # v3 active, v2 previous: v1 is garbage with keep=1
    store.broken = True
    with pytest.raises(OSError, match="died"):
        slots.collect_garbage(store, keep=1)
    assert list(slots.read_state(store)["deleting"]) == ["v1"]
    assert store.exists(INDEX_ARTIFACT, "v1")  # still whole, but no longer publishable
    for action in (slots.publish, slots.assign_standby, slots.ensure_in_a_slot):
        with pytest.raises(slots.SlotError, match="being deleted"):
            action(store, "v1")
    store.broken = False
    assert slots.collect_garbage(store, keep=1) == []  # a fresh mark may be a live GC's
    assert slots.collect_garbage(store, keep=1, stale_mark_s=0) == ["v1"]  # a dead one's
    state = slots.read_state(store)
    assert state["deleting"] == {} and state["builds"] == ["v2", "v3"]
    assert store.list_versions(INDEX_ARTIFACT) == ["v2", "v3"]
    assert slots.active_version(store)[0] == "v3"


def test_gc_spares_a_build_not_yet_assigned(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    for v in ("v1", "v2", "v3"):
        fake_index(store, v)
        slots.publish(store, v)
    fake_index(store, "v0-fresh")  # written, its build not yet at assign_standby
    assert slots.collect_garbage(store, keep=1) == ["v1"]
    state = slots.assign_standby(store, "v0-fresh")  # what the build does next still works
    assert state["slots"]["blue" if state["active"] == "green" else "green"] == {
        "version": "v0-fresh"
    }
    fake_index(store, "v0-old")
    assert slots.collect_garbage(store, keep=1, grace_s=0) == ["v0-old"]
