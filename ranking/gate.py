"""The ranker's champion gate, a step of its own: ``gate_ranker(cfg, ranker_version=V)``.

The same registry gate as the two-tower's (:func:`videorec.training.registry.
register_and_gate`), under ``mlflow.registered_ranker``: the new ranker (the committed
checkpoint) and the current champion ranker (downloaded from the registry, rebuilt from
its own config) are both scored on the new version's evaluation pairs, one scorer: the
funnel's NDCG@20 on the features version's hold-out. The floor is retrieval alone on the
same users: a ranker that does worse than not ranking is refused whatever the champion
scores. Idempotent per ranker version (the outcome is on the registered version's tags).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config
from videorec.retention import holding


class RankerGateInputError(ValueError):
    """The ranker version to gate does not exist."""


def _load_registered_ranker(cfg: Config, version: str | int) -> Any:
    """A registered ranker version's model (its run's ``ranker/`` artifacts)."""
    import mlflow
    from mlflow import MlflowClient

    from videorec.ranking.train import load_ranker
    from videorec.training.registry import tracking_uri

    name = cfg.mlflow.registered_ranker
    mv = MlflowClient(tracking_uri=tracking_uri(cfg)).get_model_version(name, str(version))
    with tempfile.TemporaryDirectory(prefix="videorec-ranker-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp,
                                                         tracking_uri=tracking_uri(cfg)))  # fmt: skip
        model, _ = load_ranker(local / names.RANKER_CHECKPOINT_FILE if local.is_dir() else local)
    return model


def gate_ranker(
    cfg: Config, *, ranker_version: str, store: ArtifactStore | None = None, log: Any = None
) -> dict[str, Any]:
    """Register ``ranker_version`` in MLflow and apply the champion gate, once.

    Returns the registry gate's outcome (``decision``, ``reason``, ``version``,
    ``challenger_ndcg20``, ``champion_ndcg20``, ``floor_ndcg20``: retrieval alone) plus
    ``ranker_version`` and ``skipped``. Raises RankerGateInputError for an unknown version
    or one whose examples or features version is gone.
    """
    store = store or open_store(cfg)
    # Held while read, as the two-tower's gate holds its inputs: a gate of an old ranker
    # beside the rankers' collection keeps the ranker, its examples and its features.
    with holding(store, {names.RANKER: [ranker_version]}, why=f"gate of {ranker_version}"):
        try:
            man = store.read_manifest(names.RANKER, ranker_version)
        except VersionNotFoundError:
            raise RankerGateInputError(
                f"{store.uri(names.RANKER)}/{ranker_version}: no such ranker"
            ) from None
        from videorec.training.registry import recorded_gate

        recorded = recorded_gate(cfg, ranker_version, name=cfg.mlflow.registered_ranker)
        if recorded is not None:  # a re-run: what was decided, its inputs not needed
            (log or (lambda _m: None))(
                f"gate of ranker {ranker_version} already recorded: {recorded['decision']}"
            )
            return {**recorded, "ranker_version": ranker_version, "skipped": True}
        inputs = {names.RANKING_EXAMPLES: man.get("examples_version"),
                  names.FEATURES: man.get("features_version")}  # fmt: skip
        with holding(store, {n: [v] for n, v in inputs.items()}, why=f"gate of {ranker_version}"):
            for n, v in inputs.items():
                if not v or not store.exists(n, v):
                    raise RankerGateInputError(
                        f"ranker {ranker_version}: its {n} version {v} is not stored "
                        f"under {store.uri(n)}"
                    )
            return _gate(cfg, store, ranker_version, man, log or (lambda _m: None))


def _gate(
    cfg: Config, store: ArtifactStore, ranker_version: str, man: dict[str, Any], say: Any
) -> dict[str, Any]:
    """:func:`gate_ranker`'s work, its inputs held."""
    from videorec.evaluation.interactions import split_from_features
    from videorec.ranking.examples import EVAL_PAIRS_FILE
    from videorec.ranking.features import FEATURE_NAMES
    from videorec.ranking.train import Pairs, evaluate_funnel, load_ranker, score_pairs
    from videorec.training.registry import register_and_gate

    name = cfg.mlflow.registered_ranker
    pairs = Pairs.read(
        store.local_path(names.RANKING_EXAMPLES, man["examples_version"]) / EVAL_PAIRS_FILE
    )
    fman = store.read_manifest(names.FEATURES, man["features_version"])
    split = split_from_features(
        store.local_path(names.FEATURES, man["features_version"]),
        data=fman["data"],
        resolve=store.local_path,
    )

    def score(model: Any) -> float:
        if list(model.cfg.feature_names) != list(FEATURE_NAMES):
            raise ValueError("the ranker was trained on other features than ranking/features.py's")
        m = evaluate_funnel(split, pairs, {"Funnel": score_pairs(model, pairs.x, cfg.ranking)})
        return float(m["Funnel"]["ndcg@20"])

    floor = float(evaluate_funnel(split, pairs, {})["Retrieval"]["ndcg@20"])
    model, _ = load_ranker(
        store.local_path(names.RANKER, ranker_version) / names.RANKER_CHECKPOINT_FILE
    )
    outcome = register_and_gate(
        cfg, man["mlflow_run_id"], "ranker", challenger=model, score=score,
        split=f"hold-out (ranking examples {man['examples_version']} eval pairs)",
        artifact_version=ranker_version, floor=floor, name=name,
        load=lambda v: _load_registered_ranker(cfg, v), max_drop=cfg.ranking.gate_max_ndcg_drop,
        floor_name="retrieval-alone",
    )  # fmt: skip
    say(f"gate of ranker {ranker_version}: {outcome['decision']}: {outcome['reason']}")
    return {**outcome, "ranker_version": ranker_version, "skipped": False}
