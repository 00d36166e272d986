"""The ranker's forward pass in numpy, and the final score: what the serving shim runs.

The serving process imports no torch (tests/test_boundaries.py): a ranker version
carries its weights twice, the torch checkpoint for training and the gate, and an
``.npz`` of the same arrays that :class:`RankerRuntime` evaluates here with a few
matrix products (B pairs × ~25 features; a page's 200 candidates in well under a
millisecond). ``tests/test_ranking.py`` checks both give the same scores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HEADS: tuple[str, ...] = ("watch", "like", "dislike", "skip")  # = ranking.model.HEADS
MAX_WATCH_LOGIT = 20.0  # exp(20) ≈ 5e8 mean plays: far past any real estimate


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _linear(w: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def combine(logits: np.ndarray, weights: Mapping[str, float]) -> np.ndarray:
    """The final score (N,) of (N, 4) head logits in :data:`HEADS` order::

        w_watch·exp(watch) + w_like·σ(like) − w_dislike·σ(dislike) − w_skip·σ(skip)

    ``exp(watch)`` is the watch head's odds: the expected watch time in units of the
    mean play. ``weights`` maps each head name to its weight (missing: 0).
    """
    sig = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 1:], -60.0, 60.0)))
    return (
        weights.get("watch", 0.0) * np.exp(np.minimum(logits[:, 0], MAX_WATCH_LOGIT))
        + weights.get("like", 0.0) * sig[:, 0]
        - weights.get("dislike", 0.0) * sig[:, 1]
        - weights.get("skip", 0.0) * sig[:, 2]
    )


@dataclass
class RankerRuntime:
    """A ranker's weights (the torch state dict's arrays) and its config dict."""

    weights: dict[str, np.ndarray]
    config: dict[str, Any]

    @classmethod
    def load(cls, npz_path: str | Path) -> RankerRuntime:
        """Read an ``.npz`` written by :func:`save_runtime` (config under ``__config__``)."""
        with np.load(npz_path, allow_pickle=False) as z:
            weights = {k: z[k].astype(np.float32) for k in z.files if k != "__config__"}
            config = json.loads(str(z["__config__"]))
        return cls(weights, config)

    @property
    def feature_names(self) -> list[str]:
        return list(self.config["feature_names"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, F) pair features -> (N, 4) head logits, as ``RankerModel.eval()`` gives."""
        w = self.weights
        x0 = (np.asarray(x, np.float32) - w["mean"]) * w["inv_std"] * w["keep"]
        xl = x0
        for i in range(int(self.config["cross_layers"])):
            xl = x0 * _linear(w, f"cross.{i}", xl) + xl
        deep = _relu(_linear(w, "deep.3", _relu(_linear(w, "deep.0", x0))))
        h = np.concatenate([xl, deep], axis=1)
        n_experts = sum(1 for k in w if k.startswith("experts.") and k.endswith(".0.weight"))
        experts = np.stack([_relu(_linear(w, f"experts.{e}.0", h)) for e in range(n_experts)], 1)
        mmoe = "gates.0.weight" in w
        out = []
        for i in range(len(HEADS)):
            if mmoe:
                g = _softmax(_linear(w, f"gates.{i}", h))
                mixed = (g[:, :, None] * experts).sum(1)
            else:
                mixed = experts[:, 0]
            t = _relu(_linear(w, f"towers.{i}.0", mixed))
            out.append(_linear(w, f"towers.{i}.2", t))
        return np.concatenate(out, axis=1)

    def score(self, x: np.ndarray, weights: Mapping[str, float]) -> np.ndarray:
        """(N,) final scores of (N, F) pair features (:func:`combine`)."""
        return combine(self.logits(x), weights)


def save_runtime(
    path: str | Path, weights: Mapping[str, np.ndarray], config: dict[str, Any]
) -> None:
    """Write the arrays and the config (JSON) into one ``.npz``."""
    arrays = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    with open(path, "wb") as f:
        np.savez(f, __config__=np.array(json.dumps(config)), **arrays)
