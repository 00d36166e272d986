"""Retention of the feature stage's outputs: the versions nothing live reads are deleted.

One features version is written per logical date and config, about the window's size
(about 430 MB a day at 20M events), and the day histories behind the incremental
versions' examples add one per event day; nothing else deletes them. The day caches
(``features-day``, ``features-recent``, ``features-plan``) are collected by the run
itself (``features.incremental.collect_day_caches``); this module collects the rest, by
mark and sweep from the roots a reader can reach:

- **the served lineage**: every stored index version (the index GC bounds them, and a
  rollback reaches the previous one) names its model, and the model its features
  version, which the 4-hourly precompute reads (online features, the watched set);
- **recent dates**: the features versions of the ``keep_days`` dates up to ``date``, and
  of any later date (a retrain, a gate re-run, the ranker, an index built by hand read
  a recent one);
- **the grace**: any version committed less than ``grace_s`` ago (wall clock, as the
  other collectors' grace: a run that has just written its version and is about to
  train on it).

A ``features-history`` version is kept while a remaining features version lists it
(its examples are references to the history's files) or while its day is one of the
``window_days`` before ``date`` (the next runs reuse it). The quarantine
(``features-quarantine``, ``features-quarantine-day``) is never collected: it holds the
rows the contract refused.

Two writers: features versions are deleted before histories, and the histories still
needed are read from the features versions listed *after* that, so a run that commits
a version meanwhile keeps what it names. A features run holds the day caches and
histories its window reads from before it checks them until its version is committed
(``videorec.retention.holding``), and an index build holds its model's features
version; every sweep reads its roots again after marking what it deletes. So a hand
backfill of an old date beside a collection either keeps what it reuses or finds it
gone before reading it and computes it again.

The rule every collector shares (a date before the first kept, no root, past the
grace) and the index → model lineage are ``videorec.retention``'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config
from videorec.retention import GRACE_S, first_kept, logged, served_models, sweep


def served_features(store: ArtifactStore) -> tuple[dict[str, str], list[str]]:
    """The features versions the stored index versions' models were trained on:
    ({features version: the first index version reaching it}, [problems]): a problem
    names an index whose model, or a model whose features version, is gone (such an
    index cannot be precomputed anyway; nothing is kept for it)."""
    models, problems = served_models(store)
    live: dict[str, str] = {}
    for model, index_version in models.items():
        try:
            features = store.read_manifest(names.MODEL, model).get("features_version")
        except VersionNotFoundError as err:  # a model gone
            problems.append(f"index {index_version}: {err}")
            continue
        if not features:
            problems.append(f"model {model} (index {index_version}) names no features_version")
            continue
        live.setdefault(str(features), index_version)
    return live, problems


def _listed_histories(store: ArtifactStore, features_versions: list[str]) -> set[str]:
    """The ``features-history`` versions the incremental features versions list."""
    listed: set[str] = set()
    for version in features_versions:
        try:
            days = store.read_manifest(names.FEATURES, version).get("days", [])
        except VersionNotFoundError:  # deleted meanwhile by a twin collection
            continue
        listed.update(str(history) for _day, _day_version, history in days if history)
    return listed


def collect_features(
    store: ArtifactStore,
    cfg: Config,
    date: dt.date,
    *,
    keep_days: int | None = None,
    grace_s: float = GRACE_S,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete the ``features`` and ``features-history`` versions nothing live reads as of
    logical ``date`` (module docstring); ``keep_days`` defaults to
    ``artifacts.keep_features_days``. With ``dry_run`` nothing is deleted.

    Returns {"date", "keep_from" (the oldest date kept whole), "dry_run", "deleted":
    {name: [versions]}, "served": {features version: index version}, "problems": [...]}.
    Raises RetentionError for ``keep_days`` < 1."""
    keep_from = first_kept(
        date, cfg.artifacts.keep_features_days if keep_days is None else keep_days
    )
    served, problems = served_features(store)
    deleted = {
        names.FEATURES: sweep(
            store, names.FEATURES, before=keep_from, grace_s=grace_s, dry_run=dry_run,
            roots=lambda: served_features(store)[0],  # read again after the marks
        )
    }  # fmt: skip

    def listed_histories() -> set[str]:
        # Listed after the deletes: a version committed meanwhile keeps its histories.
        remaining = [
            v
            for v in store.list_versions(names.FEATURES)
            if not (dry_run and v in deleted[names.FEATURES])
        ]
        return _listed_histories(store, remaining)

    deleted[names.FEATURES_HISTORY] = sweep(
        store,
        names.FEATURES_HISTORY,
        before=date - dt.timedelta(days=cfg.features.window_days),  # the next runs reuse
        roots=listed_histories,
        grace_s=grace_s,
        dry_run=dry_run,
    )
    return {
        "date": date.isoformat(),
        "keep_from": keep_from.isoformat(),
        "dry_run": dry_run,
        "deleted": deleted,
        "served": served,
        "problems": problems,
    }


def collect_for_run(
    cfg: Config, date: dt.date, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """:func:`collect_features` as the retrain's last step: logs what went and returns
    the summary its XCom carries ({"deleted": {name: [versions]}, "keep_from"})."""
    return logged("features", collect_features(open_store(cfg), cfg, date), log)
