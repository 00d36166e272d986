"""The served ranker: the ``ranker`` pointer, moved by compare-and-swap.

The gate promotes a ranker in MLflow; :func:`publish_ranker` makes it the one the
serving shim loads (its refresh loop reads the pointer and hot-swaps the version's
``ranker.npz`` and ``neighbours.npz``). The pointer holds ``version``, ``date``,
``previous`` (what it replaced: a rollback target) and a ``revision``.

Two writers: an Airflow retry beside a zombie attempt, or an engineer publishing by
hand while a DAG runs. Every change is a conditional write (:func:`~videorec.artifacts.
cas_update`); a version is only published if it exists, held against a collection
until the pointer names it; and a DAG run never moves the
pointer back to an older logical date (a late zombie of yesterday's run must not undo
today's), which ``force`` (a manual rollback) allows.
"""

from __future__ import annotations

from typing import Any

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionNotFoundError, cas_update
from videorec.retention import holding


class RankerPublishError(ValueError):
    """The version does not exist, or publishing it would move the pointer back."""


def read_ranker_pointer(store: ArtifactStore) -> dict[str, Any] | None:
    """The pointer's state ({"version", "date", "previous", "revision"}), None: never set."""
    return store.get_pointer(names.RANKER_POINTER)


def publish_ranker(store: ArtifactStore, version: str, *, force: bool = False) -> dict[str, Any]:
    """Point ``ranker`` at ``version``; returns the pointer's state now in force.

    Idempotent (publishing the live version writes nothing). Raises RankerPublishError
    for an unknown version, or one older (by logical date) than the live one unless
    ``force``.
    """
    # Held from before the check until the pointer names it: a collection beside this
    # publish (an old ranker rolled back to) cannot delete it in between.
    with holding(store, {names.RANKER: [version]}, why=f"publish_ranker {version}"):
        try:
            date = str(store.read_manifest(names.RANKER, version)["date"])
        except VersionNotFoundError:
            raise RankerPublishError(
                f"{store.uri(names.RANKER)}/{version}: no such ranker"
            ) from None
        return _point_at(store, version, date, force)


def _point_at(store: ArtifactStore, version: str, date: str, force: bool) -> dict[str, Any]:
    def change(state: dict[str, Any]) -> bool:
        live = state.get("version")
        if live == version:
            return False
        if live and not force and str(state.get("date", "")) > date:
            raise RankerPublishError(
                f"ranker {version} ({date}) is older than the live {live} ({state['date']}); "
                "publish with force (videorec rank publish VERSION --force) to roll back"
            )
        state.update({"version": version, "date": date, "previous": live})
        return True

    return cas_update(store, names.RANKER_POINTER, change, lambda v: dict(v or {}))
