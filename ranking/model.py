"""The stage-2 ranker in one file: DCN-v2 crosses, then MMoE (or a shared bottom), four heads.

Input: the (B, F) pair features of :mod:`videorec.ranking.features`, standardised with
the training set's mean and standard deviation (buffers, so a checkpoint carries them).

- **Crosses: DCN-v2** (Wang et al., WWW 2021), ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``
  with full-rank ``W_l`` (F is small, ~25, so the low-rank mixture buys nothing), in
  parallel with a two-layer ReLU MLP on ``x0``. Chosen over DeepFM/AutoInt because its
  crosses are explicit, bounded-degree polynomial terms of dense features (a retrieval
  score times a category share times a completion), exactly what these inputs need,
  at a cost of L·F² multiply-adds.
- **Multi-task: MMoE** (Ma et al., KDD 2018; ``architecture: mmoe``): ``experts`` ReLU
  experts over ``[x_L, deep]``, a softmax gate per head; or a **shared bottom**
  (``architecture: shared_bottom``): one ReLU layer all heads share. Chosen by
  measurement (docs/benchmarks.md).
- **Heads** (:data:`HEADS`), each a small tower giving one logit:
  ``watch``: weighted logistic regression (Covington et al., RecSys 2016): a played
  candidate weighs its watch time over the mean watch time of plays, a candidate not
  played weighs 1 (an impression shown and not played weighs
  ``impression_negative_weight``), so ``exp(logit)`` estimates the expected watch
  time in units of the mean play; ``like``, ``dislike``, ``skip``: logistic
  regression on whether that happened.

The final score is :func:`videorec.ranking.runtime.combine` of the four logits with
the configured weights. The numpy runtime (:mod:`videorec.ranking.runtime`) computes
the same forward pass from :func:`export_weights`' arrays without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEADS: tuple[str, ...] = ("watch", "like", "dislike", "skip")


@dataclass
class RankerConfig:
    """Everything that defines the ranker's shape; saved in every checkpoint."""

    feature_names: list[str]
    feature_mean: list[float]
    feature_std: list[float]
    architecture: str = "mmoe"  # "mmoe" | "shared_bottom"
    cross_layers: int = 3
    deep_dim: int = 128
    experts: int = 4
    expert_dim: int = 64
    tower_dim: int = 32
    dropout: float = 0.1
    # Features zeroed after standardisation (ablations); the model keeps its shape.
    disabled_features: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankerConfig:
        return cls(**d)


def _tower(d_in: int, d_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, 1))


class RankerModel(nn.Module):
    """(B, F) pair features -> (B, len(HEADS)) logits."""

    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        if cfg.architecture not in ("mmoe", "shared_bottom"):
            raise ValueError(f"architecture must be mmoe or shared_bottom; got {cfg.architecture}")
        self.cfg = cfg
        n = len(cfg.feature_names)
        keep = [0.0 if f in cfg.disabled_features else 1.0 for f in cfg.feature_names]
        std = np.maximum(np.asarray(cfg.feature_std, np.float32), 1e-6)
        self.register_buffer("mean", torch.tensor(cfg.feature_mean, dtype=torch.float32))
        self.register_buffer("inv_std", torch.tensor(1.0 / std, dtype=torch.float32))
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.float32))
        self.cross = nn.ModuleList(nn.Linear(n, n) for _ in range(cfg.cross_layers))
        self.deep = nn.Sequential(
            nn.Linear(n, cfg.deep_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.deep_dim, cfg.deep_dim), nn.ReLU(),
        )  # fmt: skip
        d_in = n + cfg.deep_dim
        n_experts = cfg.experts if cfg.architecture == "mmoe" else 1
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, cfg.expert_dim), nn.ReLU()) for _ in range(n_experts)
        )
        self.gates = nn.ModuleList(
            nn.Linear(d_in, n_experts) for _ in (HEADS if cfg.architecture == "mmoe" else ())
        )
        self.towers = nn.ModuleList(_tower(cfg.expert_dim, cfg.tower_dim) for _ in HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = (x - self.mean) * self.inv_std * self.keep
        xl = x0
        for layer in self.cross:
            xl = x0 * layer(xl) + xl
        h = torch.cat([xl, self.deep(x0)], dim=1)
        expert_out = torch.stack([e(h) for e in self.experts], dim=1)  # (B, E, d)
        logits = []
        for i, tower in enumerate(self.towers):
            if self.gates:
                g = torch.softmax(self.gates[i](h), dim=1)  # (B, E)
                mixed = (g.unsqueeze(2) * expert_out).sum(1)
            else:
                mixed = expert_out[:, 0]
            logits.append(tower(mixed))
        return torch.cat(logits, dim=1)


@dataclass
class Labels:
    """Per-pair training targets (B,) each, as tensors.

    ``played``: 1 if the candidate was played in the label period; ``watch_weight``:
    the watch head's example weight (see the module doc); ``like``, ``dislike``,
    ``skip``: 1 if that happened.
    """

    played: torch.Tensor
    watch_weight: torch.Tensor
    like: torch.Tensor
    dislike: torch.Tensor
    skip: torch.Tensor


def head_losses(logits: torch.Tensor, y: Labels) -> dict[str, torch.Tensor]:
    """Mean loss of each head over the batch: ``logits`` (B, 4) in :data:`HEADS` order.

    watch: mean of ``watch_weight · BCE(logit, played)``; like, dislike, skip: mean BCE.
    """
    bce = F.binary_cross_entropy_with_logits
    return {
        "watch": (y.watch_weight * bce(logits[:, 0], y.played, reduction="none")).mean(),
        "like": bce(logits[:, 1], y.like),
        "dislike": bce(logits[:, 2], y.dislike),
        "skip": bce(logits[:, 3], y.skip),
    }


def export_weights(model: RankerModel) -> dict[str, np.ndarray]:
    """The state dict as float32 numpy arrays (what the numpy runtime loads)."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
