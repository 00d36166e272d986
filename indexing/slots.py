"""Blue-green slots for index versions, held in one pointer object.

The pointer ``index`` reads::

    {"active": "blue" | "green" | null,
     "slots": {"blue": {"version": ...} | null, "green": {...} | null},
     "previous": {"slot": ..., "version": ...} | null,
     "generation": 7,            # +1 on every publish or rollback
     "builds": [version, ...],   # assigned to a slot, oldest first (for GC)
     "deleting": {version: {"gc": id, "since": epoch_s}},  # GC at work on these
     "revision": 42,             # +1 on every write of the pointer
     "write_id": "..."}          # unique per logical change (see below)

Readers follow ``slots[active].version`` only. A build is assigned to the standby
slot (the one not active), which readers ignore; ``publish`` makes it active in one
pointer write; ``rollback`` makes the previous version active again, and marks the
version rolled back from, in one write too.

Writers run concurrently: a build's ``assign_standby`` in the DAG, an engineer's
``videorec index publish`` by hand, an Airflow retry beside a zombie attempt. Every
change is therefore a compare-and-swap (``ArtifactStore.read_pointer`` then
``put_pointer_if``): read the pointer and its token, check the change still applies
(the version exists, passed its gate, is not being deleted) and apply it, write only
if nobody wrote since; on a conflict, start again from a fresh read, a bounded number
of times with jittered backoff. No update is lost, and ``revision`` counts every
write. A change's ``write_id`` lets a writer recognise its own write when S3 lost the
answer to a PUT that did land, instead of applying the change twice; it also keeps
every written value distinct, which content-derived CAS tokens need.

Garbage collection cannot delete what another writer is about to publish: it first
marks the doomed versions in ``deleting`` with one CAS (only versions that, in the
state it wrote, are neither active, previous nor in a slot), then deletes their
files, then removes its marks with another CAS. ``publish`` and ``assign_standby``
refuse a marked version, so none can become live while its files go. Marks left by
a GC that died are taken over by a later one after ``STALE_MARK_S``. A version no
slot was ever given (a build not yet assigned, or one made by hand) is spared for
``UNASSIGNED_GRACE_S`` after it was written, so a build racing a GC keeps its output.
"""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from collections.abc import Callable
from typing import Any

from videorec.artifact_names import INDEX, INDEX_POINTER
from videorec.artifacts import ArtifactStore, VersionNotFoundError
from videorec.artifacts import cas_update as _cas_update

SLOTS = ("blue", "green")
STALE_MARK_S = 600.0  # a GC's delete takes seconds; a mark this old lost its owner
UNASSIGNED_GRACE_S = 3600.0  # a build's write and its slot assignment are seconds apart


class SlotError(RuntimeError):
    """A publish or rollback that cannot be done; the pointer is unchanged."""


class RolledBackError(SlotError):
    """The version to publish is the one rolled back from: a retried or re-run publish
    (the retrain DAG's names its version) would undo an on-call rollback."""


def _empty_state() -> dict[str, Any]:
    return {"active": None, "slots": dict.fromkeys(SLOTS), "previous": None,
            "generation": 0, "builds": [], "deleting": {}, "revision": 0}  # fmt: skip


def _normalised(value: dict[str, Any] | None) -> dict[str, Any]:
    """A private copy of the pointer's value, with the fields older pointers lack."""
    if value is None:
        return _empty_state()
    state = copy.deepcopy(value)
    state.setdefault("deleting", {})
    state.setdefault("revision", 0)
    return state


def read_state(store: ArtifactStore) -> dict[str, Any]:
    """The pointer's value, or the empty state when nothing was ever assigned."""
    return _normalised(store.read_pointer(INDEX_POINTER)[0])


def _active(state: dict[str, Any]) -> str | None:
    slot = state["active"]
    entry = state["slots"].get(slot) if slot else None
    return entry["version"] if entry else None


def active_version(store: ArtifactStore) -> tuple[str | None, int]:
    """(the version readers should serve or None, the pointer's generation)."""
    state = read_state(store)
    return _active(state), int(state["generation"])


def _standby(state: dict[str, Any]) -> str:
    return "green" if state["active"] == "blue" else "blue"


def _require_passed(store: ArtifactStore, version: str) -> dict[str, Any]:
    try:
        manifest = store.read_manifest(INDEX, version)
    except VersionNotFoundError:
        raise SlotError(f"index version {version!r} does not exist") from None
    if manifest.get("gate") != "passed":
        raise SlotError(f"index version {version!r} did not pass the validation gate")
    return manifest


def _require_usable(store: ArtifactStore, state: dict[str, Any], version: str) -> None:
    """Refuse a version being deleted or without a passed gate, as of ``state``.

    Called after ``state`` was read and before the write that depends on it: a GC
    that marks the version after this check changes the pointer, so the write fails
    its CAS and the check runs again.
    """
    if version in state["deleting"]:
        raise SlotError(f"index version {version!r} is being deleted by garbage collection")
    _require_passed(store, version)


def _update(store: ArtifactStore, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Apply ``change`` to the index pointer by compare-and-swap (:func:`cas_update`)."""
    return cas_update(store, INDEX_POINTER, change, _normalised)


def cas_update(
    store: ArtifactStore,
    pointer: str,
    change: Callable[[dict[str, Any]], bool],
    normalise: Callable[[dict[str, Any] | None], dict[str, Any]],
) -> dict[str, Any]:
    """:func:`videorec.artifacts.cas_update`, raising SlotError when it keeps losing."""
    return _cas_update(store, pointer, change, normalise, error=SlotError)


def _assign(store: ArtifactStore, state: dict[str, Any], version: str) -> None:
    _require_usable(store, state, version)
    state["slots"][_standby(state)] = {"version": version}
    state["builds"] = [b for b in state["builds"] if b != version] + [version]
    state.pop("rolled_back", None)  # a fresh build is what the next publish means


def assign_standby(store: ArtifactStore, version: str) -> dict[str, Any]:
    """Put a validated version into the standby slot; what readers serve is unchanged."""

    def change(state: dict[str, Any]) -> bool:
        _assign(store, state, version)
        return True

    return _update(store, change)


def ensure_in_a_slot(store: ArtifactStore, version: str) -> dict[str, Any]:
    """Assign ``version`` to the standby slot unless a slot already holds it."""

    def change(state: dict[str, Any]) -> bool:
        if any(e and e["version"] == version for e in state["slots"].values()):
            return False
        _assign(store, state, version)
        return True

    return _update(store, change)


def _activate(store: ArtifactStore, state: dict[str, Any], version: str) -> bool:
    """Make ``version`` active in ``state``; False if it already is."""
    _require_usable(store, state, version)
    current = _active(state)
    if version == current:
        return False
    slot = next((s for s, e in state["slots"].items() if e and e["version"] == version), None)
    if slot is None or slot == state["active"]:
        slot = _standby(state)
        state["slots"][slot] = {"version": version}
    if state["active"] is not None and current is not None:
        state["previous"] = {"slot": state["active"], "version": current}
    state["active"] = slot
    state["generation"] = int(state["generation"]) + 1
    if version not in state["builds"]:
        state["builds"].append(version)
    state.pop("rolled_back", None)
    return True


def publish(
    store: ArtifactStore, version: str | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Make ``version`` (default: the standby slot's) active in one pointer write.

    Publishing the version that is already active is a no-op, so a retried task
    does not move ``previous``. The version rolled back from is refused
    (:class:`RolledBackError`) unless ``force``: only a person undoes a rollback.
    Returns the state in force afterwards.
    """

    def change(state: dict[str, Any]) -> bool:
        target = version
        if target is None:
            entry = state["slots"].get(_standby(state))
            if entry is None:
                raise SlotError("no version in the standby slot: build one first")
            target = entry["version"]
        if target == state.get("rolled_back") and target != _active(state) and not force:
            raise RolledBackError(
                f"{target} was rolled back (videorec index rollback); publishing it again "
                "undoes that: build a new version, or publish it by name with --force"
            )
        return _activate(store, state, target)

    return _update(store, change)


def rollback(store: ArtifactStore) -> dict[str, Any]:
    """Make the previous version active again, in one pointer write.

    The version rolled back from stays in the standby slot, marked, so that a plain
    ``publish`` does not put it live again. If the standby slot held a newer build
    not yet published, the previous version takes that slot; the build stays stored
    and can be published by name.

    A rollback means "away from what is active now": the active and previous versions
    are pinned at the first read. A retry that finds the previous version active (its
    own write landed though the answer was lost, or someone rolled back the same way)
    does nothing, and one that finds anything else active refuses, rather than roll
    back a second time or away from a version published meanwhile.
    """
    first = read_state(store)
    if not first.get("previous"):
        raise SlotError("no previous version to roll back to")
    bad, target = _active(first), first["previous"]["version"]
    _refuse_the_rolled_back(first, target)

    def change(state: dict[str, Any]) -> bool:
        active = _active(state)
        if active == target and active != bad:
            return False  # already rolled back
        if active != bad or not state.get("previous"):
            raise SlotError(
                f"the active index changed from {bad} to {active} since the rollback was "
                "asked for; nothing was rolled back"
            )
        _refuse_the_rolled_back(state, state["previous"]["version"])
        _activate(store, state, state["previous"]["version"])
        state["rolled_back"] = bad  # same write: a crash cannot leave it unmarked
        return True

    return _update(store, change)


def _refuse_the_rolled_back(state: dict[str, Any], target: str) -> None:
    """A rollback whose previous version is the one just rolled back from (a second
    engineer's rollback, a re-run after a timeout) would put it live again."""
    if target == state.get("rolled_back"):
        raise SlotError(
            f"the previous version {target} is the one rolled back from; a second rollback "
            "would put it live again. Publish a version by name (--version) instead"
        )


def _doomed(store: ArtifactStore, state: dict[str, Any], keep: int, grace_s: float) -> list[str]:
    """Versions GC may delete as of ``state``, oldest first."""
    protected = {e["version"] for e in state["slots"].values() if e}
    if state.get("previous"):
        protected.add(state["previous"]["version"])
    order = state["builds"]
    stored = store.list_versions(INDEX)
    # Versions never assigned (e.g. built by hand) count as older than any build.
    unassigned = [v for v in stored if v not in order]
    by_age = unassigned + [v for v in order if v in stored]
    newest = set(by_age[-keep:]) if keep > 0 else set()
    return [
        v
        for v in by_age
        if v not in protected and v not in newest and v not in state["deleting"]
        and not (v in unassigned and store.written_within(INDEX, v, grace_s))
    ]  # fmt: skip


def collect_garbage(
    store: ArtifactStore,
    keep: int,
    *,
    grace_s: float = UNASSIGNED_GRACE_S,
    stale_mark_s: float = STALE_MARK_S,
) -> list[str]:
    """Delete all but the ``keep`` newest builds; the active, previous and standby
    versions are always kept, and so are unassigned versions younger than
    ``grace_s``. Returns the deleted versions (see the module docstring)."""
    gc_id = uuid.uuid4().hex
    mine: list[str] = []

    def mark(state: dict[str, Any]) -> bool:
        now = time.time()
        deleting = state["deleting"]
        # Marks of a GC that died are taken over, so their deletion finishes.
        taken = [v for v, m in deleting.items() if now - float(m["since"]) > stale_mark_s]
        mine[:] = taken + _doomed(store, state, keep, grace_s)
        for v in mine:
            deleting[v] = {"gc": gc_id, "since": now}
        return bool(mine)

    _update(store, mark)
    for v in mine:
        # Already gone when a taken-over mark's GC got that far before it died.
        with contextlib.suppress(VersionNotFoundError):
            store.delete_version(INDEX, v)
    if not mine:
        return []

    def unmark(state: dict[str, Any]) -> bool:
        ours = [v for v in mine if state["deleting"].get(v, {}).get("gc") == gc_id]
        for v in ours:
            del state["deleting"][v]
        state["builds"] = [b for b in state["builds"] if b not in ours]
        return bool(ours)

    _update(store, unmark)
    return list(mine)


MANIFEST_SUMMARY = (
    "model_version", "factory", "vector_count", "dimension", "bytes_per_vector", "nprobe",
    "recall@100", "p50_ms", "p99_ms", "qps", "exact_qps", "build_seconds",
)  # fmt: skip


def status(store: ArtifactStore) -> dict[str, Any]:
    """Both slots with their manifests' main figures, the active slot and the history."""
    state = read_state(store)
    slots: dict[str, Any] = {}
    for name in SLOTS:
        entry = state["slots"].get(name)
        if entry is None:
            slots[name] = None
            continue
        try:
            m = store.read_manifest(INDEX, entry["version"])
            summary = {k: m.get(k) for k in MANIFEST_SUMMARY if k in m}
        except VersionNotFoundError:
            summary = {"missing": True}
        slots[name] = {"version": entry["version"], "active": name == state["active"], **summary}
    return {
        "active": state["active"],
        "active_version": _active(state),
        "previous": state.get("previous"),
        "rolled_back": state.get("rolled_back"),
        "generation": state["generation"],
        "revision": state["revision"],
        "deleting": sorted(state["deleting"]),
        "slots": slots,
        "versions": store.list_versions(INDEX),
    }
