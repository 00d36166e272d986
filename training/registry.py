"""MLflow tracking and the model registry's quality gate.

Each training is an MLflow run (params, per-epoch metrics, the evaluation report and
plots). The checkpoint folder is logged as run artifacts and registered as a new
version of ``mlflow.registered_model``. The gate then compares the new version's
validation NDCG@20 with the current ``champion``'s: it takes the ``champion`` alias
unless it is worse by more than ``training.gate_max_ndcg_drop`` (relative); otherwise
it gets the ``challenger`` alias and the reason is recorded on the version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from videorec.config import Config

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC_TAG = "val_ndcg20"


def tracking_uri(cfg: Config) -> str:
    """The tracking URI, with a local SQLite file's folder created and made absolute."""
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else cfg.resolve_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def start_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None) -> Any:
    """Start (and return) an MLflow run in the config's experiment."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    mlflow.set_experiment(cfg.mlflow.experiment)
    return mlflow.start_run(run_name=run_name, tags=tags or {})


def register_and_gate(
    cfg: Config, run_id: str, artifact_path: str, val_ndcg20: float
) -> dict[str, Any]:
    """Register ``runs:/<run_id>/<artifact_path>`` and apply the champion gate.

    Returns {"model", "version", "decision": "promoted" | "refused", "reason",
    "val_ndcg20", "champion_version_before", "champion_val_ndcg20"}.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    name = cfg.mlflow.registered_model
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="videorec two-tower retrieval model")
    run = client.get_run(run_id)
    mv = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id
    )
    client.set_model_version_tag(name, mv.version, GATE_METRIC_TAG, f"{val_ndcg20:.6f}")
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    max_drop = cfg.training.gate_max_ndcg_drop
    out: dict[str, Any] = {
        "model": name,
        "version": int(mv.version),
        "val_ndcg20": val_ndcg20,
        "champion_version_before": int(champion.version) if champion else None,
        "champion_val_ndcg20": None,
    }
    if champion is None:
        decision, reason = "promoted", "no champion yet"
    else:
        best = float(champion.tags.get(GATE_METRIC_TAG, "nan"))
        out["champion_val_ndcg20"] = best
        floor = best * (1.0 - max_drop)
        if val_ndcg20 >= floor:
            decision = "promoted"
            reason = (
                f"validation NDCG@20 {val_ndcg20:.4f} >= {floor:.4f} "
                f"(champion v{champion.version}: {best:.4f}, allowed drop {max_drop:.0%})"
            )
        else:
            decision = "refused"
            reason = (
                f"validation NDCG@20 {val_ndcg20:.4f} is below {floor:.4f}: more than "
                f"{max_drop:.0%} worse than champion v{champion.version} ({best:.4f})"
            )
    if decision == "promoted":
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    else:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    client.set_model_version_tag(name, mv.version, "gate_decision", decision)
    client.set_model_version_tag(name, mv.version, "gate_reason", reason)
    out.update(decision=decision, reason=reason)
    return out
