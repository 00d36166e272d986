"""The training task: batches, the optimisation loop, early stopping, embeddings.

Kept apart from the model (``model.py``) and from the retrieval module
(``retrieval.py``): this file knows how to turn example arrays into gradient steps.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from videorec.config import ConfigError, TrainingConfig
from videorec.training.data import Examples, UserTable, VideoTable, query_inputs
from videorec.training.distributed import (
    Dist,
    all_sum,
    broadcast_object,
    gather,
    gather_with_grad,
    sparse_allreduce,
)
from videorec.training.loss import in_batch_softmax_loss
from videorec.training.model import TwoTowerConfig, TwoTowerModel
from videorec.training.stream import ExampleStream, MemoryShards, epoch_batches, epoch_rows
from videorec.training.text import TEXT_DIM


def resolve_device(preference: str, index: int | None = None) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU. ``index``: the GPU of
    this process (torchrun's ``LOCAL_RANK``); None is the current one."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():  # the config asks for what this host lacks
            raise ConfigError(
                f"training.device is 'cuda' but torch {torch.__version__} sees no GPU: set "
                "it to auto or cpu, or run on a GPU host with the CUDA stack (make setup GPU=1)"
            )
        return torch.device("cuda") if index is None else torch.device("cuda", index)
    return torch.device("cpu")


def autocast_dtype(
    device: torch.device, amp: bool, bf16_supported: bool | None = None
) -> torch.dtype | None:
    """The mixed-precision dtype of the forward pass: bf16 on CUDA with ``amp`` (fp16,
    with a gradient scaler, on a GPU without bf16), None (fp32) on the CPU or without
    ``amp``. ``bf16_supported`` defaults to asking torch about the current GPU."""
    if device.type != "cuda" or not amp:
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def shuffle_mode(shuffle: str, examples: Examples | ExampleStream) -> str:
    """``training.shuffle`` resolved for the examples: ``auto`` is ``permutation`` in
    memory and ``shards`` (the shard-and-buffer order) for a stream, the only order a
    stream has."""
    streamed = isinstance(examples, ExampleStream)
    mode = ("shards" if streamed else "permutation") if shuffle == "auto" else shuffle
    if streamed and mode != "shards":
        raise ValueError("streamed examples only have the shard-and-buffer order (shards)")
    return mode


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
        dist: Dist | None = None,
    ) -> None:
        """``dist``: this process's rank among the data-parallel processes training the
        model together (None: one process). With more than one, every process must
        build its Trainer at the same point: the model is wrapped in DDP, which
        broadcasts rank 0's weights."""
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
        self.amp_dtype = autocast_dtype(device, tcfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.dist = dist or Dist()
        self.ddp: nn.Module | None = None
        self._densified: list[torch.Tensor] = []
        if self.dist.world > 1:
            self._wrap_ddp()

    def _wrap_ddp(self) -> None:
        """DistributedDataParallel around the towers' forward (see ``distributed.py``)."""
        import torch.distributed as torch_dist
        from torch.nn.parallel import DistributedDataParallel

        world, rank = self.dist.world, self.dist.rank
        if self.tcfg.batch_size % world:
            raise ValueError(
                f"training.batch_size {self.tcfg.batch_size} is not a multiple of {world} processes"
            )
        tables = [m for m in self.model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
        if not sparse_allreduce(torch_dist.get_backend()):
            for m in tables:  # dense for the all-reduce, sparse again for SparseAdam
                m.sparse = False
            self._densified = [m.weight for m in tables]
        self.ddp = DistributedDataParallel(
            _TowerStep(self.model),
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=not self.model.cfg.use_user_id,
        )
        if rank:  # dropout draws of one's own; DDP gave every rank rank 0's weights
            torch.manual_seed(self.tcfg.seed + rank)
        # Uniform negatives: the same draws on every process, as one process's batch has.
        self.negatives_rng = torch.Generator(self.device).manual_seed(self.tcfg.seed)

    def _lr(self) -> float:
        warm = self.tcfg.warmup_steps
        if self.step < warm:
            return self.tcfg.learning_rate * (self.step + 1) / warm
        progress = (self.step - warm) / max(1, self.total_steps - warm)
        return self.tcfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _candidates(self, rows: torch.Tensor) -> torch.Tensor:
        return self.model.candidate({k: v[rows] for k, v in self.video_t.items()})

    def train_epoch(
        self, batches: Iterable[Examples], rows: int, progress: Any = None
    ) -> tuple[float, float]:
        """One pass over ``batches`` (this process's; ``rows`` examples of every process
        in all, for the progress bar): (mean loss over every process's examples,
        examples/s of every process together). Batches under 2 examples are skipped."""
        self.model.train()
        world = self.dist.world
        t0, total, seen = time.perf_counter(), 0.0, 0
        # ``rate`` exists from the start: rich renders a task as soon as it is added,
        # before the first update could set it.
        task = progress.add_task("epoch", total=rows, rate=0.0) if progress is not None else None
        for b in batches:
            if len(b) < 2:
                continue
            loss = self.train_step(b)
            n = len(b) * world
            total += loss * n
            seen += n
            if task is not None:
                progress.update(task, advance=n, rate=seen / (time.perf_counter() - t0))
        if task is not None:
            progress.remove_task(task)
        if world > 1:  # each process holds its share of every step's loss
            total = float(
                all_sum(torch.tensor(total, dtype=torch.float64, device=self.device), world)
            )
        return total / max(seen, 1), seen / max(time.perf_counter() - t0, 1e-9)

    def train_step(self, b: Examples) -> float:
        """One optimiser step on batch ``b`` (B examples, this process's part of the
        global batch); returns the loss, or with several processes this process's
        share of the global batch's loss (the shares add up to it)."""
        q_in = query_inputs(
            b.user_rows, b.history, self.users, self.device,
            device_idx=b.device, hour=b.hour, country=b.country, example_age=b.example_age,
        )  # fmt: skip
        labels = torch.as_tensor(b.label_rows, device=self.device)
        weights = torch.as_tensor(b.weights, device=self.device)
        lr = self._lr()
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = lr
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            if self.ddp is None:
                loss = self._loss(q_in, labels, weights)
            else:
                loss = self._ddp_loss(q_in, labels, weights)
        # DDP averages the processes' gradients: scale each share back to a sum.
        scaled = loss * self.dist.world if self.ddp is not None else loss
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
            self._sparsify_grads()
            for opt in self.opts:
                self.scaler.step(opt)
            self.scaler.update()
        else:
            scaled.backward()
            self._sparsify_grads()
            for opt in self.opts:
                opt.step()
        self.step += 1
        return float(loss.detach())

    def _loss(
        self, q_in: dict[str, torch.Tensor], labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """One process: the batch's in-batch softmax loss (a scalar)."""
        n_videos = len(self.videos.video_ids)
        q = self.model.query(q_in, self.video_t)
        c = self._candidates(labels)
        extra = extra_log_q = None
        if self.tcfg.uniform_negatives:
            neg = torch.randint(1, n_videos + 1, (self.tcfg.uniform_negatives,), device=self.device)
            extra = self._candidates(neg)
            extra_log_q = torch.full_like(neg, -math.log(n_videos), dtype=torch.float32)
        return in_batch_softmax_loss(
            q, c,
            candidate_ids=labels,
            log_q=self.log_q[labels] if self.tcfg.logq_correction else None,
            weights=weights,
            temperature=self.model.temperature,
            extra_candidates=extra, extra_log_q=extra_log_q,
        )  # fmt: skip

    def _ddp_loss(
        self, q_in: dict[str, torch.Tensor], labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Several processes: this process's queries (B) against every process's
        candidates (world * B, gathered with their gradient); the weighted sum of its
        cross-entropies over the weight of the whole global batch."""
        world, n_videos = self.dist.world, len(self.videos.video_ids)
        neg = None
        if self.tcfg.uniform_negatives:
            shape = (self.tcfg.uniform_negatives,)
            neg = torch.randint(
                1, n_videos + 1, shape, device=self.device, generator=self.negatives_rng
            )
        q, c, extra, temperature = self.ddp(q_in, self.video_t, labels, neg)
        all_labels = gather(labels, world)
        return in_batch_softmax_loss(
            q, gather_with_grad(c, world),
            candidate_ids=all_labels,
            log_q=self.log_q[all_labels] if self.tcfg.logq_correction else None,
            weights=weights, weight_total=all_sum(weights.sum(), world),
            temperature=temperature,
            extra_candidates=extra,
            extra_log_q=None if neg is None else torch.full_like(neg, -math.log(n_videos), dtype=torch.float32),
            positive_offset=self.dist.rank * len(labels),
        )  # fmt: skip

    def _sparsify_grads(self) -> None:
        """Id tables given dense gradients for an all-reduce without sparse support:
        back to sparse rows (those with a non-zero gradient) for SparseAdam."""
        for p in self._densified:
            if p.grad is not None:
                p.grad = p.grad.to_sparse(1)

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


class EpochPlan:
    """The batches each epoch of :func:`fit` trains on, on this process.

    ``permutation`` (in memory): a seeded permutation of all examples per epoch, drawn
    from one generator seeded once, so epoch e's order depends on the epochs before
    it; with several processes each takes its slice of every global batch of that
    permutation (and the last, partial global batch is left out). ``shards``: the
    shard-and-buffer order of ``training/stream.py`` (in memory or streamed).
    """

    def __init__(
        self, examples: Examples | ExampleStream, tcfg: TrainingConfig, *, seed: int, dist: Dist
    ) -> None:
        self.examples, self.seed, self.dist = examples, seed, dist
        self.batch_size, self.buffer = tcfg.batch_size, tcfg.shuffle_buffer
        self.mode = shuffle_mode(tcfg.shuffle, examples)
        self._rng = np.random.default_rng(seed)
        self._source = None
        if self.mode == "shards":
            streamed = isinstance(examples, ExampleStream)
            self._source = examples if streamed else MemoryShards(examples)

    def rows(self, epoch: int) -> int:
        """Examples of every process in epoch ``epoch``."""
        n, bs, world = len(self.examples), self.batch_size, self.dist.world
        if world == 1:
            return n
        if self._source is None:
            return n - n % bs
        kw = {"batch_size": bs, "seed": self.seed, "epoch": epoch, "world": world}
        return world * epoch_rows(self._source, rank=self.dist.rank, **kw)

    def batches(self, epoch: int) -> Iterator[Examples]:
        """This process's batches of epoch ``epoch`` (call once per epoch, in order)."""
        d = self.dist
        if self._source is not None:
            return epoch_batches(
                self._source, batch_size=self.batch_size, seed=self.seed, epoch=epoch,
                buffer_size=self.buffer, rank=d.rank, world=d.world,
            )  # fmt: skip
        order = self._rng.permutation(len(self.examples))
        return self._permutation_batches(order)

    def _permutation_batches(self, order: np.ndarray) -> Iterator[Examples]:
        ex, bs, d = self.examples, self.batch_size, self.dist
        if d.world == 1:
            for start in range(0, len(order), bs):
                yield ex.subset(order[start : start + bs])
            return
        local = bs // d.world
        for start in range(0, len(order) - bs + 1, bs):
            yield ex.subset(order[start + d.rank * local : start + (d.rank + 1) * local])


def fit(
    trainer: Trainer,
    examples: Examples | ExampleStream,
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
    better ``monitor`` and restore the best weights. Returns (epoch logs, best epoch).

    ``examples`` in memory or streamed (``training/stream.py``), in the order
    ``trainer.tcfg.shuffle`` names (:class:`EpochPlan`). With several processes
    (``trainer.dist``), every process calls ``fit`` with ``validate``, rank 0 alone runs
    it and every process gets its result, so all stop at the same epoch; the progress
    bar is rank 0's.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    d = trainer.dist
    plan = EpochPlan(examples, trainer.tcfg, seed=seed, dist=d)
    if d.world > 1 and len(examples) and not plan.rows(1):
        raise ValueError(
            f"{len(examples):,} examples give {d.world} processes no whole batch of "
            f"{trainer.tcfg.batch_size // d.world} each (streamed: each process needs shards "
            "of its own; write more, smaller row groups, or train with data: memory)"
        )
    trainer.total_steps = epochs * math.ceil(len(examples) / trainer.tcfg.batch_size)
    logs: list[EpochLog] = []
    best, best_epoch, best_state, bad = -math.inf, epochs, None, 0
    show = progress and d.main
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} examples"),
        _rate_column(), TimeElapsedColumn(), disable=not show, transient=True,
    )  # fmt: skip
    with bar:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            batches = plan.batches(epoch)
            loss, rate = trainer.train_epoch(batches, plan.rows(epoch), bar if show else None)
            log = EpochLog(epoch, loss, rate, time.perf_counter() - t0)
            if validate is not None:
                log.val = broadcast_object(validate(trainer) if d.main else None, d)
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
    if validate is not None and best_state is None:  # NaN every epoch: nothing to select
        scores = [log.val[monitor] for log in logs]
        raise ValueError(
            f"validation gave no finite {monitor} in {len(logs)} epochs ({scores}): the "
            "validation split evaluates no user, so no epoch can be selected"
        )
    if best_state is not None:
        trainer.model.load_state_dict(best_state)
    return logs, best_epoch


class _TowerStep(nn.Module):
    """Both towers' forward pass for a batch, as one module for DistributedDataParallel
    (which hooks a module's ``forward``): (queries (B, D), the labels' candidates (B, D),
    the uniform negatives' candidates (M, D) or None, the temperature)."""

    def __init__(self, model: TwoTowerModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        q_in: dict[str, torch.Tensor],
        videos: dict[str, torch.Tensor],
        labels: torch.Tensor,
        negatives: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        q = self.model.query(q_in, videos)
        c = self.model.candidate({k: v[labels] for k, v in videos.items()})
        extra = None
        if negatives is not None:
            extra = self.model.candidate({k: v[negatives] for k, v in videos.items()})
        return q, c, extra, self.model.temperature


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
