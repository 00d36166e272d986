"""Retention of dated versions: the rule every artifact collector shares.

The daily stages write one version of their artifact per logical date and config,
named ``<YYYY-MM-DD>_<digest>`` (features, models, rankers, ranking examples), and
nothing overwrites or deletes them. Each stage's collector (``features/retention.py``,
``training/retention.py``, ``ranking/retention.py``) knows its own *roots*, the
versions something live still reads; this module holds what they share:

- :func:`sweep`: a version goes when its date is before the first date kept, no root
  names it, and it was not committed within the grace (wall clock: a run that has just
  written an old-dated version, a backfill, is about to read it). A name without a
  date (a version written by hand) is never collected.
- :func:`served_models`: the models/two-tower versions the stored index versions were
  built from. The index GC (``indexing/slots.py``) bounds those, the 4-hourly precompute
  and the hourly delta read the active one's model, and a rollback reaches the others;
  so every later collector keeps what they reach.

Two writers. Deletes tolerate a twin collection (an Airflow retry beside a zombie): a
version already gone is skipped, and a version another live collection has marked is
left to it. A reader that uses an old version while a collection runs (an index built
by hand from an old model, a ranker rolled back to, a backfill reusing old day caches)
*holds* it (:func:`holding`), and :func:`sweep` *marks* what it is about to delete;
both are compare-and-swap writes of one pointer per artifact (``holds/<name>``), so
they are ordered:

- a sweep never marks a version a live hold names, and reads its roots again after
  marking, so a root that appeared before the marks (an index published from the
  model, a features version listing the history) keeps its version;
- a hold waits (up to ``HOLD_WAIT_S``) while a collection's mark names one of its
  versions, then takes the hold and the reader checks the version exists: it finds
  it whole, or gone (the same answer as any missing version), never half deleted.

Holds and marks carry an expiry (``HOLD_TTL_S``, ``MARK_TTL_S``), so a reader or a
collection that died stops counting. The index keeps its own marks in the slot
pointer (``indexing/slots.py``), where its publish checks them.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from videorec import artifact_names as names
from videorec.artifacts import ArtifactError, ArtifactStore, VersionNotFoundError, cas_update

# A version committed less than this long ago is never collected: a retrain writes its
# versions and reads them again within the hour (features → train → gate → index).
GRACE_S = 6 * 3600.0
HOLD_TTL_S = 24 * 3600.0  # a reader that died keeps its versions this long at most
MARK_TTL_S = GRACE_S  # a collection that died keeps readers off its versions this long
HOLD_WAIT_S = 120.0  # how long a reader waits for a collection's marks (seconds of deletes)

Roots = Collection[str] | Callable[[], Collection[str]]
_log = logging.getLogger(__name__)


class RetentionError(ValueError):
    """A collection that cannot be done as asked (bad arguments); nothing is deleted."""


class VersionCollectingError(ArtifactError):
    """A reader asked to hold versions a collection is deleting, and its marks did not
    clear within the wait."""


def version_day(version: str) -> dt.date | None:
    """The day a ``<YYYY-MM-DD>_<digest>`` version is of; None for another name."""
    try:
        return dt.date.fromisoformat(version.split("_", 1)[0])
    except ValueError:
        return None


def first_kept(date: dt.date, keep_days: int) -> dt.date:
    """The oldest logical date kept whole when ``keep_days`` dates up to ``date`` are
    kept. Raises RetentionError for ``keep_days`` < 1 (a collection that would delete
    the version the run itself has just written)."""
    if keep_days < 1:
        raise RetentionError(f"keep_days must be at least 1 (got {keep_days})")
    try:
        return date - dt.timedelta(days=keep_days - 1)
    except OverflowError:  # more days than there are before the date: keep everything
        return dt.date.min


def sweep(
    store: ArtifactStore,
    name: str,
    *,
    before: dt.date,
    roots: Roots,
    grace_s: float,
    dry_run: bool = False,
    mark_ttl_s: float = MARK_TTL_S,
) -> list[str]:
    """Delete the versions of ``name`` dated before ``before`` that no root names, no
    live hold names, and that were committed more than ``grace_s`` seconds ago; returns
    them, oldest first (with ``dry_run``, those that would go, and nothing is deleted).

    ``roots`` is the set of versions something live reads, or a function returning it:
    a function is called again after the candidates are marked, so a root written
    meanwhile is seen (module docstring, "Two writers")."""
    if not dry_run:  # what an earlier collection killed mid-delete left, unlisted
        store.clean_leftovers(name)
    read_roots = roots if callable(roots) else (lambda: roots)
    first_roots = set(read_roots())
    candidates = [
        version
        for version in store.list_versions(name)
        if (day := version_day(version)) is not None  # a name no stage wrote is left alone
        and day < before
        and version not in first_roots
        and not store.written_within(name, version, grace_s)
    ]
    if not candidates:
        return []
    if dry_run:
        held = held_versions(store, name)
        return [v for v in candidates if v not in held]
    mark_id = uuid.uuid4().hex
    marked = _mark(store, name, candidates, mark_id, mark_ttl_s)
    try:
        later_roots = set(read_roots())  # after the marks: nothing can become one unseen
        doomed = [v for v in marked if v not in later_roots]
        for version in doomed:
            with contextlib.suppress(VersionNotFoundError):  # a twin collection came first
                store.delete_version(name, version)
    finally:
        if marked:
            _unmark(store, name, mark_id)
    return doomed


# ---- holds and marks (module docstring, "Two writers")


def _holds_pointer(name: str) -> str:
    return f"{names.HOLDS_POINTER}/{name}"


def _holds_state(value: dict[str, Any] | None) -> dict[str, Any]:
    """A private copy of ``holds/<name>``: {"holds": {hold id: {"versions", "why",
    "until"}}, "marks": {version: {"by", "until"}}} (``until``: epoch seconds)."""
    state = copy.deepcopy(value) if value else {}
    state.setdefault("holds", {})
    state.setdefault("marks", {})
    return state


def _drop_expired(state: dict[str, Any], now: float) -> None:
    state["holds"] = {k: h for k, h in state["holds"].items() if float(h["until"]) > now}
    state["marks"] = {v: m for v, m in state["marks"].items() if float(m["until"]) > now}


def _live_state(store: ArtifactStore, name: str) -> dict[str, Any]:
    state = _holds_state(store.read_pointer(_holds_pointer(name))[0])
    _drop_expired(state, time.time())
    return state


def held_versions(store: ArtifactStore, name: str) -> set[str]:
    """The versions of ``name`` that a live hold names."""
    return {v for h in _live_state(store, name)["holds"].values() for v in h["versions"]}


def _mark(
    store: ArtifactStore, name: str, candidates: list[str], mark_id: str, ttl_s: float
) -> list[str]:
    """Mark the ``candidates`` no live hold and no other live mark names, in one
    compare-and-swap; returns those marked (in ``candidates``' order)."""
    marked: list[str] = []

    def change(state: dict[str, Any]) -> bool:
        now = time.time()
        _drop_expired(state, now)
        held = {v for h in state["holds"].values() for v in h["versions"]}
        marked[:] = [v for v in candidates if v not in held and v not in state["marks"]]
        for v in marked:
            state["marks"][v] = {"by": mark_id, "until": now + ttl_s}
        return bool(marked)

    cas_update(store, _holds_pointer(name), change, _holds_state)
    return marked


def _unmark(store: ArtifactStore, name: str, mark_id: str) -> None:
    def change(state: dict[str, Any]) -> bool:
        _drop_expired(state, time.time())
        ours = [v for v, m in state["marks"].items() if m["by"] == mark_id]
        for v in ours:
            del state["marks"][v]
        return bool(ours)

    cas_update(store, _holds_pointer(name), change, _holds_state)


def hold(
    store: ArtifactStore,
    name: str,
    versions: Collection[str],
    *,
    why: str,
    ttl_s: float = HOLD_TTL_S,
    wait_s: float | None = None,
) -> str:
    """Hold ``versions`` of ``name`` against every collection until :func:`release`
    (or ``ttl_s`` seconds, if the reader dies); returns the hold's id. Waits up to
    ``wait_s`` seconds (default ``HOLD_WAIT_S``) while a collection's mark names one of them, then raises
    VersionCollectingError. The caller checks the versions exist *after* this: a
    version deleted just before is simply absent. ``why`` says who holds (logged in
    the pointer, for whoever reads it)."""
    hold_id, wanted = uuid.uuid4().hex, sorted(set(versions))
    wait_s = HOLD_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    marked: list[str] = []

    def change(state: dict[str, Any]) -> bool:
        now = time.time()
        _drop_expired(state, now)
        marked[:] = [v for v in wanted if v in state["marks"]]
        if marked:
            return False
        state["holds"][hold_id] = {"versions": wanted, "why": why, "until": now + ttl_s}
        return True

    while True:
        cas_update(store, _holds_pointer(name), change, _holds_state)
        if not marked:
            return hold_id
        if time.monotonic() >= deadline:
            raise VersionCollectingError(
                f"{store.uri(name)}: {', '.join(marked)} being deleted by a collection "
                f"(still marked after {wait_s:g} s); use a version the collection keeps, "
                "or retry once it has finished"
            )
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


def release(store: ArtifactStore, name: str, hold_id: str) -> None:
    """End the hold ``hold_id`` on versions of ``name`` (a hold already gone is fine)."""

    def change(state: dict[str, Any]) -> bool:
        _drop_expired(state, time.time())
        return state["holds"].pop(hold_id, None) is not None

    cas_update(store, _holds_pointer(name), change, _holds_state)


@contextlib.contextmanager
def holding(
    store: ArtifactStore,
    versions: Mapping[str, Collection[str | None]],
    *,
    why: str,
    ttl_s: float = HOLD_TTL_S,
    wait_s: float | None = None,
) -> Iterator[None]:
    """Hold ``versions`` ({artifact name: versions}; None entries skipped) while the
    block runs (:func:`hold`). A release that fails is logged, not raised: the hold
    expires after ``ttl_s``."""
    taken: list[tuple[str, str]] = []
    try:
        for name, wanted in versions.items():
            present = [v for v in wanted if v]
            if present:
                hold_id = hold(store, name, present, why=why, ttl_s=ttl_s, wait_s=wait_s)
                taken.append((name, hold_id))
        yield
    finally:
        for name, hold_id in reversed(taken):
            try:
                release(store, name, hold_id)
            except Exception as err:  # any store's error: the hold expires on its own
                _log.warning("hold %s on %s not released (%s); it expires", hold_id, name, err)


def served_models(store: ArtifactStore) -> tuple[dict[str, str], list[str]]:
    """The model versions the stored index versions were built from: ({model version:
    the first index version naming it}, [problems]); a problem names an index whose
    manifest names no model (such an index cannot be precomputed anyway)."""
    models: dict[str, str] = {}
    problems: list[str] = []
    for index_version in store.list_versions(names.INDEX):
        try:
            model = store.read_manifest(names.INDEX, index_version).get("model_version")
        except VersionNotFoundError:  # deleted meanwhile by the index GC
            continue
        if not model:
            problems.append(f"index {index_version} names no model_version")
            continue
        models.setdefault(str(model), index_version)
    return models, problems


def logged(what: str, res: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """A collection's result as a retrain task returns it (versions and a date: its
    XCom), after logging the counts, the first date kept and any problem."""
    counts = ", ".join(f"{name} {len(v)}" for name, v in res["deleted"].items())
    log(f"{what} collected as of {res['date']}: deleted {counts}; every date from "
        f"{res['keep_from']} kept; problems: {res['problems'] or 'none'}")  # fmt: skip
    return {"deleted": res["deleted"], "keep_from": res["keep_from"]}


@contextlib.contextmanager
def holding_model(
    store: ArtifactStore, model_version: str, *, why: str
) -> Iterator[dict[str, Any] | None]:
    """Hold a ``models/two-tower`` version, then the features version its manifest
    names (what an index build, the gate and the ranking examples read), while the block
    runs; yields the model's manifest, or None when there is no such version.

    Raises VersionNotFoundError when the features version is gone: a collection may
    have deleted it between reading the manifest and holding it (a hold waits for a
    collection's marks to clear, it does not bring the version back)."""
    with holding(store, {names.MODEL: [model_version]}, why=why):
        try:
            manifest: dict[str, Any] | None = store.read_manifest(names.MODEL, model_version)
        except VersionNotFoundError:
            manifest = None
        features = (manifest or {}).get("features_version")
        with holding(store, {names.FEATURES: [features]}, why=why):
            if features and not store.exists(names.FEATURES, features):
                raise VersionNotFoundError(
                    f"model {model_version} was trained on features version {features}, "
                    f"which {store.uri(names.FEATURES)} no longer holds (collected)"
                )
            yield manifest
