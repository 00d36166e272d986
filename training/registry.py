"""MLflow tracking and the model registry's quality gate.

Each training is an MLflow run (params, per-epoch metrics, the evaluation report and
plots). The checkpoint folder is logged as run artifacts and registered as a new
version of ``mlflow.registered_model``.

The gate compares the new version (the *challenger*: the model actually registered)
with the current ``champion`` on one split, in one run, with one scorer: the champion's
checkpoint is downloaded from its version's source (the run's ``model/`` artifact
folder), rebuilt from the model config it carries and scored by the same function as
the challenger. A figure stored by another run (each on its own split, or from before
a refit) would not be comparable. The split is the caller's choice; ``videorec train``
uses its hold-out (the features version's ``eval/``), the only split neither a refit
challenger nor an older champion trained on. The challenger takes the ``champion``
alias unless its figure is worse by more than ``training.gate_max_ndcg_drop``
(relative) and it is at least as good as the sanity floor the caller measured on the
same split (MostPopular, nightly); otherwise it gets the ``challenger`` alias. A champion that cannot be
loaded or scored is reported (the error is in the reason and the result) and, by
default (``training.gate_unscorable_champion``), the challenger is refused. Both
figures go to the run's metrics and, with the decision, the reason and the split, to
the version's tags.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videorec.config import Config

if TYPE_CHECKING:
    from videorec.training.model import TwoTowerModel

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC = "NDCG@20"


def tracking_uri(cfg: Config) -> str:
    """The tracking URI, with a local SQLite file's folder created and made absolute.
    Every use of MLflow goes through it, so it also hands MLflow the S3 endpoint of
    artifacts on S3 (``artifacts.s3_endpoint_url``): MLflow's S3 client reads it from
    the environment only (``MLFLOW_S3_ENDPOINT_URL``; one set there wins)."""
    endpoint = cfg.artifacts.s3_endpoint_url
    if endpoint and artifact_location(cfg).startswith("s3://"):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else cfg.resolve_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def artifact_location(cfg: Config) -> str:
    """Where the config's experiment keeps its runs' artifacts: ``mlflow.artifact_location``,
    else ``<artifacts.root>/mlflow`` (an absolute path, or an S3 prefix): a place every
    worker reads, where the champion's checkpoint must be for any later gate."""
    loc = cfg.mlflow.artifact_location or f"{cfg.artifacts.root.rstrip('/')}/mlflow"
    return cfg.resolve_location(loc)


def experiment_id(cfg: Config) -> str:
    """The config's experiment, created with :func:`artifact_location` if it is new.

    Two processes may create it at once (a retrain and a ranker run): the loser reads
    the winner's. An experiment created elsewhere keeps its own artifact location
    (MLflow cannot move one); a warning says so when it differs from the config's."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    name, want = cfg.mlflow.experiment, artifact_location(cfg)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=want)
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted: restore it, or set mlflow.experiment"
        )
    if exp.artifact_location.removeprefix("file://") != want.removeprefix("file://"):
        warnings.warn(
            f"MLflow experiment {name!r} keeps its artifacts at {exp.artifact_location}, "
            f"not at {want} (mlflow.artifact_location); MLflow cannot move an experiment's "
            "artifacts: set mlflow.experiment to a new name to use the configured place",
            stacklevel=2,
        )
    return exp.experiment_id


@contextlib.contextmanager
def start_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run (the ``ActiveRun``) in the config's experiment, ended on leaving.

    MLflow's fluent API logs to the process's tracking URI, which ``set_tracking_uri``
    also exports as ``MLFLOW_TRACKING_URI``. It points at the config's store for the
    run's length only and is put back after, so a caller's own MLflow runs in the same
    process (a notebook that trains, then logs its own run) go where they went before.
    """
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    before = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        with mlflow.start_run(
            experiment_id=experiment_id(cfg), run_name=run_name, tags=tags or {}
        ) as run:
            yield run
    finally:
        mlflow.set_tracking_uri(before)  # None: unset again, as MLflow's own helper does


def load_registered(cfg: Config, name: str, version: str | int) -> TwoTowerModel:
    """The model of a registered version: its source (the run's ``model/`` artifact
    folder) downloaded to a temporary folder and rebuilt from the checkpoint's own
    model config. Raises whatever MLflow or torch raise when that is impossible."""
    import mlflow
    from mlflow import MlflowClient

    from videorec.artifact_names import CHECKPOINT_FILE
    from videorec.training.train import load_checkpoint

    mv = MlflowClient(tracking_uri=tracking_uri(cfg)).get_model_version(name, str(version))
    with tempfile.TemporaryDirectory(prefix="videorec-champion-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source, dst_path=tmp, tracking_uri=tracking_uri(cfg)
        )
        path = Path(local)
        model, _ = load_checkpoint(path / CHECKPOINT_FILE if path.is_dir() else path)
    return model


def register_and_gate(
    cfg: Config,
    run_id: str,
    artifact_path: str,
    *,
    challenger: TwoTowerModel,
    score: Callable[[TwoTowerModel], float],
    split: str,
    artifact_version: str,
    floor: float | None = None,
    name: str | None = None,
    load: Callable[[str], Any] | None = None,
    max_drop: float | None = None,
    floor_name: str = "MostPopular",
) -> dict[str, Any]:
    """Register ``runs:/<run_id>/<artifact_path>`` and apply the champion gate, once.

    ``artifact_version`` is the committed ``models/two-tower`` version the checkpoint
    belongs to; it tags the registered version, so a second call for the same artifact
    version (an Airflow retry, a concurrent attempt) returns the recorded outcome
    instead of registering again. The champion is read again just before the alias
    moves; if another run promoted a new one meanwhile, the gate is run again against
    it (MLflow aliases have no compare-and-swap, so this narrows the race to the
    moment between that read and the alias write).

    ``challenger`` is the model logged at ``artifact_path`` (the one being registered);
    ``score`` maps any two-tower model to its NDCG@20 on one split, binding the model
    to the current data with the model's own config; ``split`` names that split (it is
    recorded, not interpreted). The challenger and the current champion are both
    scored with it now. ``floor`` is a baseline's NDCG@20 on the same split (the
    nightly gate passes MostPopular's): a challenger below it is refused whatever the
    champion scores, since a model that loses to popularity is broken, not worse. A challenger error propagates (the run is broken); a champion
    that cannot be loaded or scored is reported instead.

    Returns {"model", "version", "decision": "promoted" | "refused", "reason", "split",
    "challenger_ndcg20", "champion_ndcg20" (None without a scored champion),
    "champion_version_before" (None without a champion), "champion_error" (None, or
    the exception that stopped the champion from being loaded or scored),
    "floor_ndcg20" (``floor``)}.

    The same gate serves another model kind (the stage-2 ranker): ``name`` (default
    ``mlflow.registered_model``), ``load`` (a registered version -> a model ``score``
    accepts; default the two-tower's :func:`load_registered`), ``max_drop`` (default
    ``training.gate_max_ndcg_drop``) and ``floor_name`` (the floor's label in the reason).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    name = name or cfg.mlflow.registered_model
    load = load or (lambda version: load_registered(cfg, name, version))
    max_drop = cfg.training.gate_max_ndcg_drop if max_drop is None else max_drop
    recorded = recorded_gate(cfg, artifact_version, name=name)
    if recorded is not None:
        return recorded
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"videorec {name}")
    ours = float(score(challenger))
    for _ in range(3):
        # The champion is looked up before registering, so the new version is never
        # compared with itself.
        champion = _champion(client, name)
        theirs, error = _score_champion(load, champion, score, split)
        decision, reason = _decide(
            cfg,
            ours,
            None if champion is None else champion.version,
            theirs,
            error,
            split,
            max_drop,
        )
        if floor is not None and decision == "promoted" and not ours >= floor:
            decision = "refused"
            reason = (
                f"new model {GATE_METRIC} {ours:.4f} on {split} is below the {floor_name} "
                f"floor {floor:.4f} on the same split"
            )
        now_champion = _champion(client, name)
        if (now_champion and now_champion.version) == (champion and champion.version):
            break
    else:
        decision = "refused"
        reason = f"the champion kept changing while this model was being compared; {reason}"

    run = client.get_run(run_id)
    mv = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id
    )
    tags = {
        "artifact_version": artifact_version,
        "gate_split": split,
        "gate_ndcg20": repr(ours),  # full precision: a retry reads it back
        "gate_decision": decision,
        "gate_reason": reason,
    }
    if champion is not None:
        tags["gate_champion_version"] = str(champion.version)
        tags["gate_champion_ndcg20"] = "" if theirs is None else repr(theirs)
    if error is not None:
        tags["gate_champion_error"] = error
    if floor is not None:
        tags["gate_floor_ndcg20"] = repr(floor)
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, v)
    if math.isfinite(ours):
        client.log_metric(run_id, "gate_challenger_ndcg_at_20", ours)
    if theirs is not None:
        client.log_metric(run_id, "gate_champion_ndcg_at_20", theirs)
    client.set_registered_model_alias(
        name, CHAMPION if decision == "promoted" else CHALLENGER, mv.version
    )
    client.set_tag(run_id, "gate_decision", decision)
    client.set_tag(run_id, "gate_reason", reason)
    return {
        "model": name,
        "version": int(mv.version),
        "decision": decision,
        "reason": reason,
        "split": split,
        "challenger_ndcg20": ours,
        "champion_ndcg20": theirs,
        "champion_version_before": None if champion is None else int(champion.version),
        "champion_error": error,
        "floor_ndcg20": floor,
    }


def _champion(client: Any, name: str) -> Any:
    """The ``champion`` alias's model version, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _score_champion(
    load: Callable[[str], Any], champion: Any, score: Callable[[Any], float], split: str
) -> tuple[float | None, str | None]:
    """(the champion's figure, None) or (None, the error that stopped it being scored)."""
    if champion is None:
        return None, None
    try:
        theirs = float(score(load(champion.version)))
        if not math.isfinite(theirs):
            raise ValueError(f"its {GATE_METRIC} on {split} is {theirs}")
    except Exception as e:  # any failure is reported, never compared as a number
        # Cut long messages so the reason fits in an MLflow tag value.
        return None, f"{type(e).__name__}: {e}"[:1000]
    return theirs, None


def recorded_gate(
    cfg: Config, artifact_version: str, name: str | None = None
) -> dict[str, Any] | None:
    """The gate outcome already recorded for a model artifact version, or None.

    Read back from the registered version's tags (``artifact_version`` and ``gate_*``),
    in the shape :func:`register_and_gate` returns.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    name = name or cfg.mlflow.registered_model
    try:
        found = client.search_model_versions(
            f"name = '{name}' and tags.artifact_version = '{artifact_version}'"
        )
    except MlflowException:
        return None
    done = [v for v in found if "gate_decision" in v.tags]
    if not done:
        return None
    mv = min(done, key=lambda v: int(v.version))  # the first registration is the one
    t = mv.tags

    def num(key: str) -> float | None:
        return float(t[key]) if t.get(key) else None

    before = t.get("gate_champion_version")
    return {
        "model": name,
        "version": int(mv.version),
        "decision": t["gate_decision"],
        "reason": t.get("gate_reason", ""),
        "split": t.get("gate_split", ""),
        "challenger_ndcg20": num("gate_ndcg20"),
        "champion_ndcg20": num("gate_champion_ndcg20"),
        "champion_version_before": int(before) if before else None,
        "champion_error": t.get("gate_champion_error"),
        "floor_ndcg20": num("gate_floor_ndcg20"),
    }


def _decide(
    cfg: Config,
    ours: float,
    champion_version: str | None,
    theirs: float | None,
    error: str | None,
    split: str,
    max_drop: float,
) -> tuple[str, str]:
    """(decision, reason) of the gate; the reason names both figures and the split."""
    if not math.isfinite(ours):
        return "refused", f"the new model's {GATE_METRIC} on {split} is {ours}, not a number"
    mine = f"new model {GATE_METRIC} {ours:.4f} on {split}"
    if champion_version is None:
        return "promoted", f"no champion yet ({mine})"
    if error is not None:
        policy = cfg.training.gate_unscorable_champion
        what = f"champion v{champion_version} could not be loaded or scored on {split}: {error}"
        if policy == "promote":
            return "promoted", (
                f"{what}; {mine}; promoted because training.gate_unscorable_champion is 'promote'"
            )
        return "refused", (
            f"{what}; {mine}; refused so that nothing goes live unchecked "
            "(training.gate_unscorable_champion: refuse)"
        )
    assert theirs is not None
    floor = theirs * (1.0 - max_drop)
    if ours >= floor:
        return "promoted", (
            f"{mine} >= {floor:.4f}: champion v{champion_version} {theirs:.4f} on the same "
            f"split, allowed drop {max_drop:.0%}"
        )
    return "refused", (
        f"{mine} is below {floor:.4f}: more than {max_drop:.0%} worse than champion "
        f"v{champion_version} ({theirs:.4f} on the same split)"
    )


ARTIFACTS_DELETED_TAG = "artifacts_deleted"  # on a version whose run artifacts went


def collect_version_artifacts(
    cfg: Config, name: str, kept: Collection[str], date: str, *, dry_run: bool = False
) -> list[str]:
    """Delete the run artifacts behind the registered versions of ``name`` that hold no
    alias (``champion``, ``challenger``) and whose store version (tag ``artifact_version``)
    is not in ``kept``; returns those store versions, sorted. Each such version keeps its
    run, metrics and ``gate_*`` tags (the gate's history) and is tagged
    ``artifacts_deleted`` = ``date``; a later collection skips it. With ``dry_run``,
    what would go, and nothing is deleted or tagged. A registered model that does not
    exist has nothing to collect.

    The gate loads its champion from these artifacts, so an alias always keeps them;
    a version moved to ``champion`` by hand after its artifacts went cannot be scored
    (the gate then reports it, ``training.gate_unscorable_champion``)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    try:
        aliased = {str(v) for v in client.get_registered_model(name).aliases.values()}
    except MlflowException:  # never registered: nothing to collect
        return []
    gone = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        artifact_version = mv.tags.get("artifact_version")
        if (
            str(mv.version) in aliased
            or not artifact_version
            or artifact_version in kept
            or ARTIFACTS_DELETED_TAG in mv.tags
        ):
            continue
        gone.append(artifact_version)
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):  # a twin collection's rmtree
                get_artifact_repository(mv.source).delete_artifacts()
            client.set_model_version_tag(name, mv.version, ARTIFACTS_DELETED_TAG, date)
    return sorted(gone)
