"""In-batch sampled softmax with logQ correction (Yi et al., RecSys 2019).

Each query's positive is the candidate on the same row; the other candidates in the
batch serve as negatives. Popular videos turn up as in-batch negatives more often
than uniformly sampled ones would, which biases the softmax against them; subtracting
log Q(candidate) (its sampling probability) from every logit corrects that. Optional
uniformly sampled extra negatives ("mixed negative sampling", Yang et al. 2020) add
coverage of the long tail; their Q is uniform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_softmax_loss(
    query: torch.Tensor,
    candidate: torch.Tensor,
    *,
    candidate_ids: torch.Tensor,
    log_q: torch.Tensor | None,
    weights: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.05,
    extra_candidates: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
    positive_offset: int = 0,
    weight_total: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean softmax cross-entropy over the batch's candidates.

    Shapes: ``query`` (B, D) and ``candidate`` (C, D) (the towers' outputs,
    normalised), C >= B; query i's positive is candidate ``positive_offset + i`` (C = B
    and offset 0 on one process; under data parallelism ``candidate`` is every
    process's candidates gathered and the offset this process's first row among them).
    ``candidate_ids`` (C,) int64 item ids, so that a row's positive is not also counted
    as its negative where the same item appears twice in the batch; ``log_q`` (C,) log
    sampling probability of each in-batch candidate, or None for no correction;
    ``weights`` (B,) importance weights (watch-time based), or None for 1;
    ``extra_candidates`` (M, D) uniformly sampled negatives with ``extra_log_q`` (M,).
    Returns a scalar: sum(w_i * CE_i) / ``weight_total``, where ``weight_total``
    defaults to sum(w_i) (a scalar tensor: the sum over every process's batch makes
    the processes' results add up to one process's loss over the whole batch).
    """
    logits = query @ candidate.T / temperature  # (B, C)
    if log_q is not None:
        logits = logits - log_q[None, :]
    b = logits.shape[0]
    rows = torch.arange(b, device=logits.device)
    positives = rows + positive_offset
    # Duplicates of the positive elsewhere in the batch are not negatives.
    same = candidate_ids[None, :] == candidate_ids[positives][:, None]
    same[rows, positives] = False
    logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
    if extra_candidates is not None:
        extra = query @ extra_candidates.T / temperature  # (B, M)
        if extra_log_q is not None:
            extra = extra - extra_log_q[None, :]
        logits = torch.cat([logits, extra], dim=1)
    ce = F.cross_entropy(logits.float(), positives, reduction="none")
    if weights is None:
        return ce.mean() if weight_total is None else ce.sum() / weight_total
    w = weights.to(ce.dtype)
    total = w.sum() if weight_total is None else weight_total.to(ce.dtype)
    return (ce * w).sum() / total.clamp_min(1e-12)
