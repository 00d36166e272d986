"""The nightly champion gate, a step of its own: ``gate_model(cfg, model_version=V)``.

Training writes a model version; this step decides whether it goes live. It is
separate so an orchestrator can branch on its outcome: the DAG's gate task turns a
refusal into a skipped publish with the reason in its log, and nothing after it runs.

Nightly cost is kept small: the challenger (the committed checkpoint), the current
champion (downloaded from the registry and rebuilt from its own config) and the
MostPopular sanity floor are scored on one split, the features version's hold-out,
with one scorer (:func:`videorec.training.retrieval.split_scorer`). The full baseline
grid is an offline report (``videorec evaluate``), not part of the gate.

The step is idempotent per model version: the outcome is recorded on the registered
version's tags, so an Airflow retry or a second run returns it and registers nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from videorec import artifact_names as names
from videorec.artifacts import ArtifactStore, VersionNotFoundError, open_store
from videorec.config import Config
from videorec.retention import holding_model


class GateInputError(ValueError):
    """The model version to gate, or what it was trained on, does not exist."""


def most_popular_ndcg20(split: Any) -> float:
    """MostPopular's NDCG@20 on ``split`` (an EvalSplit): the gate's sanity floor."""
    from videorec.evaluation.harness import evaluate_fitted
    from videorec.evaluation.recommenders import MostPopular

    m, _ = evaluate_fitted(MostPopular().fit(split.train), split, beyond=False)
    return float("nan") if m["ndcg@20"] is None else float(m["ndcg@20"])


def gate_model(
    cfg: Config, *, model_version: str, store: ArtifactStore | None = None, log: Any = None
) -> dict[str, Any]:
    """Register ``model_version`` in MLflow and apply the champion gate, once.

    Returns :func:`videorec.training.registry.register_and_gate`'s outcome (``decision``
    "promoted" or "refused", ``reason`` naming the figures and the split, the registered
    ``version``, ``challenger_ndcg20``, ``champion_ndcg20``, ``floor_ndcg20``) plus
    ``model_version`` and ``skipped`` (True when the outcome was recorded before).
    Raises GateInputError for an unknown model version.
    """
    store = store or open_store(cfg)
    # Held while read: a gate re-run of an old model beside a collection keeps its inputs.
    with holding_model(store, model_version, why=f"gate of {model_version}") as mman:
        if mman is None:
            raise GateInputError(f"{store.uri(names.MODEL)}/{model_version}: no such model version")
        return _gate(cfg, store, model_version, mman, log or (lambda _m: None))


def _gate(
    cfg: Config, store: ArtifactStore, model_version: str, mman: dict[str, Any], say: Any
) -> dict[str, Any]:
    """:func:`gate_model`'s work, its inputs held."""
    from videorec.training.registry import recorded_gate, register_and_gate
    from videorec.training.train import load_checkpoint

    recorded = recorded_gate(cfg, model_version)
    if recorded is not None:
        say(f"gate of {model_version} already recorded: {recorded['decision']}")
        return {**recorded, "model_version": model_version, "skipped": True}
    features_version = mman["features_version"]
    split, score = _hold_out_scorer(cfg, store, features_version, mman["date"])
    floor = most_popular_ndcg20(split)
    say(f"gate of {model_version}: MostPopular floor NDCG@20 {floor:.4f}")
    model, _ = load_checkpoint(store.local_path(names.MODEL, model_version) / names.CHECKPOINT_FILE)
    outcome = register_and_gate(
        cfg, mman["mlflow_run_id"], "model", challenger=model, score=score,
        split=f"hold-out (features {features_version} eval/)", artifact_version=model_version,
        floor=floor,
    )  # fmt: skip
    say(f"gate of {model_version}: {outcome['decision']}: {outcome['reason']}")
    return {**outcome, "model_version": model_version, "skipped": False}


def _hold_out_scorer(
    cfg: Config, store: ArtifactStore, features_version: str, date: str
) -> tuple[Any, Any]:
    """(the features version's hold-out split, a scorer of any two-tower model on it)."""
    from videorec.evaluation.interactions import split_from_features
    from videorec.training.data import load_dimensions
    from videorec.training.retrieval import split_scorer
    from videorec.training.task import resolve_device
    from videorec.training.text import embed_texts, video_texts

    try:
        data = str(store.read_manifest(names.FEATURES, features_version)["data"])
    except VersionNotFoundError:
        raise GateInputError(f"features {features_version!r} does not exist") from None
    fdir = store.local_path(names.FEATURES, features_version)
    split = split_from_features(fdir, data=data, resolve=store.local_path)
    window_users = pq.read_table(fdir / names.USER_FEATURES, columns=["user_id"])["user_id"]
    videos_t, users_t = load_dimensions(data, window_users.to_numpy())

    def text() -> np.ndarray:  # only a model with a text input asks (cached on disk)
        texts = video_texts(videos_t["title"].to_pylist(), videos_t["tags"].to_pylist())
        return embed_texts(texts, cfg.resolve_path(cfg.training.text_cache_dir))

    score = split_scorer(
        split, videos_t, users_t, text=text,
        as_of=dt.datetime.combine(dt.date.fromisoformat(date), dt.time(), dt.UTC),
        training=cfg.training, device=resolve_device(cfg.training.device),
    )  # fmt: skip
    return split, score
