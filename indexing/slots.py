"""Blue-green slots for index versions, held in one pointer object.

The pointer ``index`` (``ArtifactStore.put_pointer``, replaced atomically) reads::

    {"active": "blue" | "green" | null,
     "slots": {"blue": {"version": ...} | null, "green": {...} | null},
     "previous": {"slot": ..., "version": ...} | null,
     "generation": 7,            # +1 on every publish or rollback
     "builds": [version, ...]}   # assigned to a slot, oldest first (for GC)

Readers follow ``slots[active].version`` only. A build is assigned to the standby
slot (the one not active), which readers ignore; ``publish`` makes it active in one
pointer write; ``rollback`` makes the previous version active again. Writers are
the pipeline's index tasks, which run one at a time, so read-modify-write of the
pointer needs no lock.
"""

from __future__ import annotations

from typing import Any

from videorec.artifacts import ArtifactStore, VersionNotFoundError
from videorec.indexing.build import INDEX_ARTIFACT

POINTER = "index"
SLOTS = ("blue", "green")


class SlotError(RuntimeError):
    """A publish or rollback that cannot be done; the pointer is unchanged."""


def read_state(store: ArtifactStore) -> dict[str, Any]:
    """The pointer's value, or the empty state when nothing was ever assigned."""
    state = store.get_pointer(POINTER)
    if state is None:
        return {"active": None, "slots": dict.fromkeys(SLOTS), "previous": None,
                "generation": 0, "builds": []}  # fmt: skip
    return state


def active_version(store: ArtifactStore) -> tuple[str | None, int]:
    """(the version readers should serve or None, the pointer's generation)."""
    state = read_state(store)
    slot = state["active"]
    entry = state["slots"].get(slot) if slot else None
    return (entry["version"] if entry else None), int(state["generation"])


def _standby(state: dict[str, Any]) -> str:
    return "green" if state["active"] == "blue" else "blue"


def _require_passed(store: ArtifactStore, version: str) -> dict[str, Any]:
    try:
        manifest = store.read_manifest(INDEX_ARTIFACT, version)
    except VersionNotFoundError:
        raise SlotError(f"index version {version!r} does not exist") from None
    if manifest.get("gate") != "passed":
        raise SlotError(f"index version {version!r} did not pass the validation gate")
    return manifest


def assign_standby(store: ArtifactStore, version: str) -> dict[str, Any]:
    """Put a validated version into the standby slot; what readers serve is unchanged."""
    _require_passed(store, version)
    state = read_state(store)
    slot = _standby(state)
    state["slots"][slot] = {"version": version}
    state["builds"] = [b for b in state["builds"] if b != version] + [version]
    state.pop("rolled_back", None)  # a fresh build is what the next publish means
    store.put_pointer(POINTER, state)
    return state


def ensure_in_a_slot(store: ArtifactStore, version: str) -> dict[str, Any]:
    """Assign ``version`` to the standby slot unless a slot already holds it."""
    state = read_state(store)
    if any(e and e["version"] == version for e in state["slots"].values()):
        return state
    return assign_standby(store, version)


def publish(store: ArtifactStore, version: str | None = None) -> dict[str, Any]:
    """Make ``version`` (default: the standby slot's) active in one pointer write.

    Publishing the version that is already active is a no-op, so a retried task
    does not move ``previous``.
    """
    state = read_state(store)
    if version is None:
        entry = state["slots"].get(_standby(state))
        if entry is None:
            raise SlotError("no version in the standby slot: build one first")
        version = entry["version"]
        if version == state.get("rolled_back"):
            raise SlotError(
                f"the standby slot holds {version}, which was rolled back; "
                "build a new version or publish it by name (--version)"
            )
    _require_passed(store, version)
    current, _ = active_version(store)
    if version == current:
        return state
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
    store.put_pointer(POINTER, state)
    return state


def rollback(store: ArtifactStore) -> dict[str, Any]:
    """Make the previous version active again.

    The version rolled back from stays in the standby slot, marked, so that a plain
    ``publish`` does not put it live again. If the standby slot held a newer build
    not yet published, the previous version takes that slot; the build stays stored
    and can be published by name.
    """
    state = read_state(store)
    prev = state.get("previous")
    if not prev:
        raise SlotError("no previous version to roll back to")
    bad, _ = active_version(store)
    state = publish(store, prev["version"])
    state["rolled_back"] = bad
    store.put_pointer(POINTER, state)
    return state


def collect_garbage(store: ArtifactStore, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest builds; the active, previous and standby
    versions are always kept. Returns the deleted versions."""
    state = read_state(store)
    protected = {e["version"] for e in state["slots"].values() if e}
    if state.get("previous"):
        protected.add(state["previous"]["version"])
    order = state["builds"]
    stored = store.list_versions(INDEX_ARTIFACT)
    # Versions never assigned (e.g. built by hand) count as older than any build.
    by_age = [v for v in stored if v not in order] + [v for v in order if v in stored]
    newest = set(by_age[-keep:]) if keep > 0 else set()
    doomed = [v for v in by_age if v not in protected and v not in newest]
    for v in doomed:
        store.delete_version(INDEX_ARTIFACT, v)
    if doomed:
        state["builds"] = [b for b in state["builds"] if b not in doomed]
        store.put_pointer(POINTER, state)
    return doomed


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
            m = store.read_manifest(INDEX_ARTIFACT, entry["version"])
            summary = {k: m.get(k) for k in MANIFEST_SUMMARY if k in m}
        except VersionNotFoundError:
            summary = {"missing": True}
        slots[name] = {"version": entry["version"], "active": name == state["active"], **summary}
    return {
        "active": state["active"],
        "active_version": active_version(store)[0],
        "previous": state.get("previous"),
        "rolled_back": state.get("rolled_back"),
        "generation": state["generation"],
        "slots": slots,
        "versions": store.list_versions(INDEX_ARTIFACT),
    }
