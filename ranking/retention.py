"""Retention of the stage-2 ranker's versions and of the examples it was trained on.

One ``models/ranker`` version and one ``ranking-examples`` version (every sampled
user's candidates with their features and outcomes) are written per logical date;
this deletes those nothing live reads, keeping:

- **the served rankers**: the version the ``ranker`` pointer serves and the previous
  one (what a rollback goes back to without ``--force``);
- **recent dates**: the versions of the ``artifacts.keep_model_days`` dates up to the
  date, and of any later date (the gate reads the challenger and its evaluation pairs;
  ``videorec rank publish VERSION --force`` may roll back to any of them);
- **the examples of every ranker kept**, so a kept ranker can be gated again;
- **the grace**: any version committed less than 6 hours ago.

The gate's champion comes from the MLflow registry's copy, never from here; those
copies go with the store's rankers unless an alias holds them (as the two-tower's,
``training/retention.py``). Rankers
are deleted first and the examples still needed are read from the rankers listed
*after* that, so a ranker committed meanwhile keeps its examples. A publish holds its
ranker across its compare-and-swap (``videorec.retention.holding``) and the sweep reads
the pointer again after marking what it deletes, so a rollback by hand to an old ranker
beside a collection either keeps it or is refused naming it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config
from videorec.retention import GRACE_S, first_kept, logged, sweep
from videorec.training.registry import collect_version_artifacts


def served_rankers(store: ArtifactStore) -> set[str]:
    """The versions the ``ranker`` pointer names: the served one and the previous."""
    state = store.get_pointer(names.RANKER_POINTER) or {}
    return {str(v) for v in (state.get("version"), state.get("previous")) if v}


def _examples_of(store: ArtifactStore, rankers: list[str]) -> set[str]:
    """The ``ranking-examples`` versions ``rankers`` were trained on."""
    used: set[str] = set()
    for version in rankers:
        try:
            examples = store.read_manifest(names.RANKER, version).get("examples_version")
        except VersionNotFoundError:  # deleted meanwhile by a twin collection
            continue
        if examples:
            used.add(str(examples))
    return used


def collect_rankers(
    store: ArtifactStore,
    cfg: Config,
    date: dt.date,
    *,
    keep_days: int | None = None,
    grace_s: float = GRACE_S,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete the ``models/ranker`` and ``ranking-examples`` versions nothing live reads
    as of logical ``date`` (module docstring); ``keep_days`` defaults to
    ``artifacts.keep_model_days``. With ``dry_run`` nothing is deleted.

    Returns {"date", "keep_from", "dry_run", "deleted": {name: [versions]}, "served":
    [ranker versions], "problems": []}. Raises RetentionError for ``keep_days`` < 1."""
    keep_from = first_kept(date, cfg.artifacts.keep_model_days if keep_days is None else keep_days)
    served = served_rankers(store)
    gone = sweep(
        store, names.RANKER, before=keep_from, grace_s=grace_s, dry_run=dry_run,
        roots=lambda: served_rankers(store),  # read again after the marks
    )  # fmt: skip

    def remaining() -> list[str]:
        return [v for v in store.list_versions(names.RANKER) if not (dry_run and v in gone)]

    examples = sweep(
        store,
        names.RANKING_EXAMPLES,
        before=keep_from,
        roots=lambda: _examples_of(store, remaining()),
        grace_s=grace_s,
        dry_run=dry_run,
    )
    # The registry's copies go with the store's versions, unless an alias holds them.
    registered = cfg.mlflow.registered_ranker
    copies = collect_version_artifacts(
        cfg, registered, remaining(), date.isoformat(), dry_run=dry_run
    )
    return {
        "date": date.isoformat(),
        "keep_from": keep_from.isoformat(),
        "dry_run": dry_run,
        "deleted": {
            names.RANKER: gone,
            names.RANKING_EXAMPLES: examples,
            f"mlflow {registered}": copies,
        },
        "served": sorted(served),
        "problems": [],
    }


def collect_for_run(
    cfg: Config, date: dt.date, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """:func:`collect_rankers` as the ranker branch's last task: logs what went and
    returns the summary its XCom carries ({"deleted": {name: [versions]}, "keep_from"})."""
    return logged("rankers", collect_rankers(open_store(cfg), cfg, date), log)
