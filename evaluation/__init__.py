"""Offline evaluation: temporal splits, full-catalogue ranking metrics, baselines, reports.

The public API, re-exported here:

- :class:`Interactions`, :class:`EvalSplit`, :func:`split_from_dataset`,
  :func:`split_from_features` (``videorec.evaluation.interactions``);
- :class:`Recommender` and the baselines (``videorec.evaluation.recommenders``);
- :func:`evaluate` and :func:`run_evaluation` (``videorec.evaluation.harness``), the
  functions behind ``videorec evaluate``.
"""

from videorec.evaluation.harness import EvaluationResult, evaluate, run_evaluation
from videorec.evaluation.interactions import (
    EvalSplit,
    Events,
    HeldOut,
    Interactions,
    ItemMeta,
    split_from_dataset,
    split_from_features,
)
from videorec.evaluation.recommenders import (
    ALS,
    EASE,
    MODELS,
    EASERecency,
    ItemKNN,
    MostPopular,
    Recommender,
    register_model,
)

__all__ = [
    "ALS",
    "EASE",
    "MODELS",
    "EASERecency",
    "EvalSplit",
    "EvaluationResult",
    "Events",
    "HeldOut",
    "Interactions",
    "ItemKNN",
    "ItemMeta",
    "MostPopular",
    "Recommender",
    "evaluate",
    "register_model",
    "run_evaluation",
    "split_from_dataset",
    "split_from_features",
]
