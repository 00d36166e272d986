"""Retention of the two-tower model versions: those nothing live reads are deleted.

A ``models/two-tower`` version holds the checkpoints and both towers' exported
embeddings: its video embeddings alone are videos x dimension x 4 bytes (512 GB at 500
million videos and 256 dimensions), and one is written per logical date. Nothing
read them back once a newer model was served; this collects them, keeping:

- **the served lineage**: the model of every stored index version (the index GC bounds
  those; the precompute and the hourly delta read the active index's model, and a
  rollback reaches the others);
- **recent dates**: the models of the ``artifacts.keep_model_days`` dates up to the
  date, and of any later date (the gate, the ranking examples and an index built by
  hand read a recent one);
- **the grace**: any version committed less than 6 hours ago.

The champion the gate compares a challenger with is not among them: the gate loads
it from the MLflow registry's copy (the run's ``model/`` artifacts), never from here.
Those copies go with the store's versions: the run artifacts of a registered version
whose store version is gone, unless an alias (``champion``, ``challenger``) holds it
(``registry.collect_version_artifacts``; the run, its metrics and the gate's tags stay).

Two writers: an index build holds its model and the model's features version
(``videorec.retention.holding``) from before it reads them until the index is in a
slot, and the sweep reads the stored indexes again after marking what it deletes; so
an index built by hand from an old model while a collection runs either keeps its
model, or finds it gone before reading it and fails naming it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, open_store
from videorec.config import Config
from videorec.retention import GRACE_S, first_kept, logged, served_models, sweep
from videorec.training.registry import collect_version_artifacts


def collect_models(
    store: ArtifactStore,
    cfg: Config,
    date: dt.date,
    *,
    keep_days: int | None = None,
    grace_s: float = GRACE_S,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete the ``models/two-tower`` versions nothing live reads as of logical
    ``date`` (module docstring); ``keep_days`` defaults to ``artifacts.keep_model_days``.
    With ``dry_run`` nothing is deleted.

    Returns {"date", "keep_from" (the oldest date kept whole), "dry_run", "deleted":
    {name: [versions]}, "served": {model version: index version}, "problems": [...]}.
    Raises RetentionError for ``keep_days`` < 1."""
    keep_from = first_kept(date, cfg.artifacts.keep_model_days if keep_days is None else keep_days)
    served, problems = served_models(store)
    deleted = sweep(
        store, names.MODEL, before=keep_from, grace_s=grace_s, dry_run=dry_run,
        roots=lambda: served_models(store)[0],  # read again after the marks
    )  # fmt: skip
    # The registry's copies go with the store's versions, unless an alias holds them.
    kept = [v for v in store.list_versions(names.MODEL) if not (dry_run and v in deleted)]
    registered = cfg.mlflow.registered_model
    copies = collect_version_artifacts(cfg, registered, kept, date.isoformat(), dry_run=dry_run)
    return {
        "date": date.isoformat(),
        "keep_from": keep_from.isoformat(),
        "dry_run": dry_run,
        "deleted": {names.MODEL: deleted, f"mlflow {registered}": copies},
        "served": served,
        "problems": problems,
    }


def collect_for_run(
    cfg: Config, date: dt.date, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """:func:`collect_models` as a retrain task: logs what went and returns the summary
    its XCom carries ({"deleted": {name: [versions]}, "keep_from"})."""
    return logged("models", collect_models(open_store(cfg), cfg, date), log)
