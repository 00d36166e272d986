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

Deletes tolerate a twin collection (an Airflow retry beside a zombie): a version
already gone is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionNotFoundError

# A version committed less than this long ago is never collected: a retrain writes its
# versions and reads them again within the hour (features → train → gate → index).
GRACE_S = 6 * 3600.0


class RetentionError(ValueError):
    """A collection that cannot be done as asked (bad arguments); nothing is deleted."""


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
    return date - dt.timedelta(days=keep_days - 1)


def sweep(
    store: ArtifactStore,
    name: str,
    *,
    before: dt.date,
    roots: Collection[str],
    grace_s: float,
    dry_run: bool = False,
) -> list[str]:
    """Delete the versions of ``name`` dated before ``before`` that no root names and
    that were committed more than ``grace_s`` seconds ago; returns them, oldest first
    (with ``dry_run``, those that would go, and nothing is deleted)."""
    doomed = []
    for version in store.list_versions(name):
        day = version_day(version)
        if (
            day is not None  # a name no stage wrote is left alone
            and day < before
            and version not in roots
            and not store.written_within(name, version, grace_s)
        ):
            doomed.append(version)
    if not dry_run:
        for version in doomed:
            with contextlib.suppress(VersionNotFoundError):  # a twin collection came first
                store.delete_version(name, version)
    return doomed


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
