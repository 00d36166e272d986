"""The training task: batches, the optimisation loop, early stopping, embeddings.

Kept apart from the model (``model.py``) and from the retrieval module
(``retrieval.py``): this file knows how to turn example arrays into gradient steps.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from videorec.config import TrainingConfig
from videorec.training.data import Examples, UserTable, VideoTable, query_inputs
from videorec.training.loss import in_batch_softmax_loss
from videorec.training.model import TwoTowerConfig, TwoTowerModel
from videorec.training.text import TEXT_DIM


def resolve_device(preference: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("training.device is 'cuda' but torch sees no GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def model_config(
    tcfg: TrainingConfig, history_len: int, vocab: dict[str, list[str]], text: bool
) -> TwoTowerConfig:
    """The model's config from the training section, the history length and vocabularies."""
    return TwoTowerConfig(
        embed_dim=tcfg.embed_dim,
        id_dim=tcfg.id_dim,
        hidden_dim=tcfg.hidden_dim,
        user_buckets=tcfg.user_buckets,
        video_buckets=tcfg.video_buckets,
        channel_buckets=tcfg.channel_buckets,
        history_len=history_len,
        text_dim=TEXT_DIM if text else 0,
        dropout=tcfg.dropout,
        temperature=tcfg.temperature,
        learn_temperature=tcfg.learn_temperature,
        use_user_id=tcfg.use_user_id,
        id_dropout=tcfg.id_dropout,
        channel_dropout=tcfg.channel_dropout,
        **vocab,
    )


@dataclass
class EpochLog:
    epoch: int
    loss: float
    examples_per_s: float
    seconds: float
    val: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Owns a model, its lookup tables on the device, and the optimiser."""

    def __init__(
        self,
        model: TwoTowerModel,
        videos: VideoTable,
        users: UserTable,
        tcfg: TrainingConfig,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.videos, self.users, self.tcfg, self.device = videos, users, tcfg, device
        self.video_t = videos.tensors(device)
        self.log_q = torch.as_tensor(videos.log_q, device=device)
        # Hashed id tables get sparse gradients and SparseAdam (only the batch's rows are
        # updated); everything else is dense with AdamW.
        sparse = {
            id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse
        }
        dense_p = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse]
        sparse_p = [p for p in model.parameters() if id(p) in sparse]
        self.opts: list[torch.optim.Optimizer] = [
            torch.optim.AdamW(dense_p, lr=tcfg.learning_rate, weight_decay=tcfg.weight_decay)
        ]
        if sparse_p:
            self.opts.append(torch.optim.SparseAdam(sparse_p, lr=tcfg.learning_rate))
        self.step = 0
        self.total_steps = 1
        amp_ok = device.type == "cuda" and tcfg.amp
        self.amp_dtype = (
            (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
            if amp_ok
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def _lr(self) -> float:
        warm = self.tcfg.warmup_steps
        if self.step < warm:
            return self.tcfg.learning_rate * (self.step + 1) / warm
        progress = (self.step - warm) / max(1, self.total_steps - warm)
        return self.tcfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _candidates(self, rows: torch.Tensor) -> torch.Tensor:
        return self.model.candidate({k: v[rows] for k, v in self.video_t.items()})

    def train_epoch(
        self, ex: Examples, rng: np.random.Generator, progress: Any = None
    ) -> tuple[float, float]:
        """One pass over ``ex`` in a seeded random order; (mean loss, examples/s)."""
        self.model.train()
        bs = self.tcfg.batch_size
        order = rng.permutation(len(ex))
        n_videos = len(self.videos.video_ids)
        t0, total, seen = time.perf_counter(), 0.0, 0
        # ``rate`` exists from the start: rich renders a task as soon as it is added,
        # before the first update could set it.
        task = progress.add_task("epoch", total=len(ex), rate=0.0) if progress is not None else None
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            if len(idx) < 2:
                continue
            b = ex.subset(idx)
            q_in = query_inputs(
                b.user_rows, b.history, self.users, self.device,
                device_idx=b.device, hour=b.hour, country=b.country, example_age=b.example_age,
            )  # fmt: skip
            labels = torch.as_tensor(b.label_rows, device=self.device)
            lr = self._lr()
            for opt in self.opts:
                for g in opt.param_groups:
                    g["lr"] = lr
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                q = self.model.query(q_in, self.video_t)
                c = self._candidates(labels)
                extra = extra_log_q = None
                if self.tcfg.uniform_negatives:
                    neg = torch.randint(
                        1, n_videos + 1, (self.tcfg.uniform_negatives,), device=self.device
                    )
                    extra = self._candidates(neg)
                    extra_log_q = torch.full_like(neg, -math.log(n_videos), dtype=torch.float32)
                loss = in_batch_softmax_loss(
                    q, c,
                    candidate_ids=labels,
                    log_q=self.log_q[labels] if self.tcfg.logq_correction else None,
                    weights=torch.as_tensor(b.weights, device=self.device),
                    temperature=self.model.temperature,
                    extra_candidates=extra, extra_log_q=extra_log_q,
                )  # fmt: skip
            for opt in self.opts:
                opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                for opt in self.opts:
                    self.scaler.step(opt)
                self.scaler.update()
            else:
                loss.backward()
                for opt in self.opts:
                    opt.step()
            self.step += 1
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if task is not None:
                progress.update(task, advance=len(idx), rate=seen / (time.perf_counter() - t0))
        if task is not None:
            progress.remove_task(task)
        return total / max(seen, 1), seen / max(time.perf_counter() - t0, 1e-9)

    @torch.no_grad()
    def query_embeddings(
        self,
        user_rows: np.ndarray,
        history: np.ndarray,
        batch: int = 4096,
        example_age: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n, embed_dim) float32 query vectors, no context. ``example_age`` (n,) days is
        the age the query is made at, relative to the training window's end (0 = now)."""
        self.model.eval()
        out = []
        for s in range(0, len(user_rows), batch):
            age = None if example_age is None else example_age[s : s + batch]
            q_in = query_inputs(
                user_rows[s : s + batch],
                history[s : s + batch],
                self.users,
                self.device,
                example_age=age,
            )
            out.append(self.model.query(q_in, self.video_t).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.embed_dim), np.float32)

    @torch.no_grad()
    def candidate_embeddings(
        self, video_rows: np.ndarray, batch: int = 8192, table: VideoTable | None = None
    ) -> np.ndarray:
        """(n, embed_dim) float32 candidate vectors for rows of ``table`` (default: the
        trainer's own video table; pass :meth:`VideoTable.content_mode`'s copy to
        embed untrained videos from their content)."""
        self.model.eval()
        video_t = self.video_t if table is None else table.tensors(self.device)
        out = []
        for s in range(0, len(video_rows), batch):
            rows = torch.as_tensor(video_rows[s : s + batch], device=self.device)
            out.append(
                self.model.candidate({k: v[rows] for k, v in video_t.items()}).float().cpu().numpy()
            )
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.embed_dim), np.float32)


def _rate_column() -> Any:
    """A rich column showing the task's ``rate`` field (examples/s), blank while unset.

    A ``TextColumn("{task.fields[rate]}")`` raises KeyError for any task rendered
    before its first update; this column reads the field with a default instead.
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            rate = task.fields.get("rate")
            return Text("" if rate is None else f"{rate:,.0f} ex/s")

    return RateColumn()


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) so a training run is repeatable on one machine."""
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def fit(
    trainer: Trainer,
    examples: Examples,
    *,
    epochs: int,
    seed: int,
    validate: Callable[[Trainer], dict[str, float]] | None = None,
    monitor: str = "recall@200",
    patience: int = 3,
    progress: bool = True,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> tuple[list[EpochLog], int]:
    """Train up to ``epochs``; with ``validate``, stop after ``patience`` epochs without a
    better ``monitor`` and restore the best weights. Returns (epoch logs, best epoch)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    rng = np.random.default_rng(seed)
    trainer.total_steps = epochs * math.ceil(len(examples) / trainer.tcfg.batch_size)
    logs: list[EpochLog] = []
    best, best_epoch, best_state, bad = -math.inf, epochs, None, 0
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} examples"),
        _rate_column(), TimeElapsedColumn(), disable=not progress, transient=True,
    )  # fmt: skip
    with bar:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            loss, rate = trainer.train_epoch(examples, rng, bar if progress else None)
            log = EpochLog(epoch, loss, rate, time.perf_counter() - t0)
            if validate is not None:
                log.val = validate(trainer)
            logs.append(log)
            if on_epoch is not None:
                on_epoch(log)
            if validate is None:
                continue
            score = log.val[monitor]
            if score > best:
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy(trainer.model.state_dict())
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        trainer.model.load_state_dict(best_state)
    return logs, best_epoch


def sequence_histories(
    rows_sorted: np.ndarray, group: np.ndarray, ts: np.ndarray, width: int
) -> np.ndarray:
    """For events sorted by (group, ts, ...): each event's previous ``width`` items of its
    group with a strictly earlier ts, right-aligned (n, width), 0-padded.

    ``rows_sorted`` are the events' item rows (>= 1), ``group`` their user.
    """
    n = len(rows_sorted)
    out = np.zeros((n, width), dtype=np.int64)
    if n == 0:
        return out
    new_group = np.r_[True, group[1:] != group[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    new_ts = new_group | np.r_[True, ts[1:] != ts[:-1]]
    tie_start = np.maximum.accumulate(np.where(new_ts, np.arange(n), 0))
    for j in range(1, width + 1):  # column width - j holds the j-th previous event
        src = tie_start - j
        ok = src >= group_start
        out[ok, width - j] = rows_sorted[src[ok]]
    return out
