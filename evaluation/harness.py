"""The offline evaluation harness: tune on validation, fit, rank the full catalogue, report.

:func:`evaluate` runs every requested baseline (and any extra :class:`Recommender`, e.g.
a trained two-tower model) on one :class:`~videorec.evaluation.interactions.EvalSplit`:

1. hyper-parameters are chosen on a validation split carved out of the training set
   the same way the test split was made (never on the test split), or taken from
   :data:`~videorec.evaluation.recommenders.REFERENCE_PARAMS` with ``params="reference"``;
2. each model is fitted on the whole training set and scores the full catalogue for
   every evaluated user, in batches, with the user's training videos excluded;
3. ranking metrics at every K, full-rank MRR, coverage and the beyond-accuracy list
   properties are computed by :mod:`videorec.evaluation.metrics`.

:func:`run_evaluation` is the one call behind ``videorec evaluate``: load the split (from
a data set or a feature-stage version), evaluate, write the report (Markdown, JSON and
PNG plots) to a folder and/or a versioned artifact, and log to an MLflow run.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from videorec.artifact_names import EVALUATION
from videorec.evaluation.interactions import (
    DEFAULT_HOLDOUT_FRACTION,
    PER_USER_TEMPORAL,
    EvalSplit,
    split_from_dataset,
    split_from_features,
)
from videorec.evaluation.metrics import (
    DEFAULT_KS,
    beyond_accuracy,
    check_ks,
    coverage,
    first_relevant_rank,
    popularity_histogram,
    ranking_metrics,
    summarise,
)
from videorec.evaluation.recommenders import (
    DEFAULT_BATCH,
    EASE,
    MODEL_NAMES,
    MODELS,
    PARAM_GRIDS,
    REFERENCE_PARAMS,
    EASERecency,
    Recommender,
    batches,
    make_model,
    top_k,
)

if TYPE_CHECKING:
    from videorec.artifacts import ArtifactStore
    from videorec.config import ContractConfig

DEFAULT_LIST_K = 20
DEFAULT_TUNE_METRIC = "ndcg@20"
PARAM_MODES: tuple[str, ...] = ("tuned", "reference")
Log = Callable[[str], Any]
HEADLINE: tuple[str, ...] = ("recall@20", "ndcg@20", "recall@200")


def _fmt_metric(m: Mapping[str, Any], key: str) -> str:
    v = m.get(key)
    return f"{key}={v:.4f}" if isinstance(v, float) else f"{key}={v}"


@dataclass
class ModelReport:
    """One model's outcome: its parameters, where they came from, and every number.

    ``params_source``: ``validation`` (tuned), ``reference``, ``reference+validation``
    (EASE-recency in reference mode: EASE's reference lambda, decay tuned), ``given``
    or ``none`` (no hyper-parameters). ``tuning``: every grid point tried with its
    validation score. ``seconds``: wall time of tuning, fitting and evaluating (EASE
    and EASE-recency tune together, and each is charged half of that time). ``popularity_share``: share of the top-``list_k``
    impressions per popularity bin (see :attr:`EvaluationResult.popularity_edges`).
    """

    name: str
    params: dict[str, Any]
    params_source: str
    metrics: dict[str, float | int | None]
    tuning: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    popularity_share: list[float] = field(default_factory=list)


@dataclass
class EvaluationResult:
    """Everything one evaluation measured; :meth:`to_dict` is the JSON report."""

    protocol: dict[str, Any]
    stats: dict[str, Any]
    validation_stats: dict[str, Any] | None
    ks: tuple[int, ...]
    list_k: int
    tune_metric: str
    params_mode: str
    seed: int
    models: dict[str, ModelReport]
    popularity_edges: list[float]
    catalogue_popularity_share: list[float]

    def metrics(self) -> dict[str, dict[str, float | int | None]]:
        """Model name -> metric name (``recall@20``, ``ndcg@20``, ...) -> value."""
        return {name: dict(r.metrics) for name, r in self.models.items()}

    def to_dict(self) -> dict[str, Any]:
        """The whole result as plain JSON-able data."""
        from videorec.evaluation.metrics import jsonable

        return jsonable(
            {
                "protocol": {
                    **self.protocol,
                    "ks": list(self.ks),
                    "list_k": self.list_k,
                    "tune_metric": self.tune_metric,
                    "params_mode": self.params_mode,
                    "seed": self.seed,
                    "ranking": "full catalogue (videos seen in training), training videos "
                    "excluded, ties by item index",
                    "averaging": "per-user mean over evaluated users",
                },
                "split": self.stats,
                "validation_split": self.validation_stats,
                "models": self.metrics(),
                "params": {n: r.params for n, r in self.models.items()},
                "params_source": {n: r.params_source for n, r in self.models.items()},
                "tuning": {n: r.tuning for n, r in self.models.items() if r.tuning},
                "seconds": {n: r.seconds for n, r in self.models.items()},
                "popularity": {
                    "bin_edges": self.popularity_edges,
                    "catalogue_share": self.catalogue_popularity_share,
                    "impression_share": {n: r.popularity_share for n, r in self.models.items()},
                },
            }
        )


def parse_models(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` (every registered model), a comma-separated string or a sequence of
    names -> model names in order.

    ValueError names an unknown model and lists the known ones.
    """
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    known = ", ".join(["all", *MODELS])
    if not names:
        raise ValueError(f"no model given; known: {known}")
    out: list[str] = []
    for n in names:
        group = tuple(MODELS) if n == "all" else (n,)
        for g in group:
            if g not in MODELS:
                raise ValueError(f"unknown model {g!r}; known: {known}")
            if g not in out:
                out.append(g)
    return tuple(out)


def parse_ks(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``"10,20,200"`` or a sequence of ints -> sorted cut-offs; ValueError if any K ≤ 0."""
    if isinstance(spec, str):
        try:
            values = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"K must be positive integers like 10,20,200; got {spec!r}") from None
    else:
        values = [int(k) for k in spec]
    return check_ks(values)


def _metric_k(metric: str) -> int | None:
    name, _, k = metric.partition("@")
    if name not in ("recall", "ndcg", "hitrate", "mrr") or (name == "mrr") != (k == ""):
        raise ValueError(
            f"unknown tuning metric {metric!r}; use recall@K, ndcg@K, hitrate@K or mrr"
        )
    return int(k) if k else None


def evaluate_fitted(
    model: Recommender,
    split: EvalSplit,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    list_k: int = DEFAULT_LIST_K,
    batch_size: int = DEFAULT_BATCH,
    beyond: bool = True,
) -> tuple[dict[str, float | int | None], np.ndarray]:
    """Metrics of a fitted model on ``split.test``, and its (n_eval, max(ks, list_k)) lists.

    The model must have been fitted on ``split.train``. Every evaluated user is scored
    over the whole catalogue, ``batch_size`` users at a time, training videos excluded.
    """
    ks = check_ks(ks)
    if list_k <= 0:
        raise ValueError(f"list_k must be positive; got {list_k}")
    test = split.test
    width = max(ks[-1], list_k)
    tops = np.empty((test.n_users, width), dtype=np.int64)
    ranks = np.empty(test.n_users, dtype=np.float64)
    lo = 0
    for rows in batches(test.rows, batch_size):
        s = model.masked_scores(rows)
        tops[lo : lo + len(rows)] = top_k(s, width)[0]
        ranks[lo : lo + len(rows)] = first_relevant_rank(s, test.relevant[lo : lo + len(rows)])
        lo += len(rows)
    per_user = ranking_metrics(tops, test.relevant, test.n_relevant, ks)
    metrics: dict[str, float | int | None] = dict(summarise(per_user))
    metrics["mrr"] = float(np.mean(1.0 / ranks)) if len(ranks) else None
    for k in ks:
        metrics[f"coverage@{k}"] = coverage(tops[:, :k], split.train.n_items)
    if beyond:
        ba = beyond_accuracy(
            tops[:, :list_k],
            split.items,
            split.train.item_popularity,
            split.train.n_users,
            test.serve_ts,
        )
        metrics.update({f"{name}@{list_k}": v for name, v in ba.items()})
    metrics["users"] = test.n_users
    return metrics, tops


def _grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _pick(trials: list[dict[str, Any]]) -> dict[str, Any]:
    # Highest score; on a tie the earlier grid point (deterministic).
    best = max(range(len(trials)), key=lambda i: (trials[i]["score"], -i))
    return trials[best]["params"]


def tune(
    names: Sequence[str],
    validation: EvalSplit,
    *,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] = PARAM_GRIDS,
    metric: str = DEFAULT_TUNE_METRIC,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    log: Log | None = None,
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]], float]]:
    """Grid-search each model on ``validation``: name -> (best params, trials, seconds).

    A trial is {"params", "score"} with ``score`` the validation ``metric``. EASE and
    EASE-recency share one inverse per lambda (decay only changes the user rows).
    """
    k = _metric_k(metric)
    ks = (k,) if k is not None else (1,)

    def score(model: Recommender) -> float:
        m, _ = evaluate_fitted(model, validation, ks=ks, batch_size=batch_size, beyond=False)
        value = m[metric]
        return float(value) if value is not None else float("-inf")

    out: dict[str, tuple[dict[str, Any], list[dict[str, Any]], float]] = {}
    ease_family = [n for n in names if n in ("EASE", "EASE-recency")]
    for name in names:
        if name in ease_family:
            continue
        t0 = time.perf_counter()
        trials = []
        for params in _grid(grids.get(name, {})):
            model = make_model(name, params, seed=seed).fit(validation.train)
            trials.append({"params": params, "score": score(model)})
            if log:
                log(f"  tune {name} {params}: {metric}={trials[-1]['score']:.4f}")
        out[name] = (_pick(trials), trials, time.perf_counter() - t0)
    if ease_family:
        t0 = time.perf_counter()
        lams = sorted({lam for n in ease_family for lam in grids[n]["lam"]})
        trials_by: dict[str, list[dict[str, Any]]] = {n: [] for n in ease_family}
        for lam in lams:
            ease = EASE(lam).fit(validation.train)
            if "EASE" in ease_family and lam in grids["EASE"]["lam"]:
                trials_by["EASE"].append({"params": {"lam": lam}, "score": score(ease)})
            if "EASE-recency" in ease_family and lam in grids["EASE-recency"]["lam"]:
                for decay in grids["EASE-recency"]["decay"]:
                    s = score(EASERecency(lam, decay).reuse_weights(ease))
                    trials_by["EASE-recency"].append(
                        {"params": {"lam": lam, "decay": decay}, "score": s}
                    )
            if log:
                log(f"  tune EASE family lambda={lam}: done")
        seconds = time.perf_counter() - t0
        for n in ease_family:
            out[n] = (_pick(trials_by[n]), trials_by[n], seconds / len(ease_family))
    return out


def _popularity_edges(popularity: np.ndarray) -> np.ndarray:
    top = max(int(popularity.max()) if len(popularity) else 1, 1)
    edges = np.unique(np.round(np.logspace(0, np.log10(top + 1), 21)).astype(np.int64))
    edges[-1] = max(edges[-1], top + 1)
    return edges.astype(np.float64)


def evaluate(
    split: EvalSplit,
    *,
    models: Sequence[str] = MODEL_NAMES,
    params: str | Mapping[str, Mapping[str, Any]] = "tuned",
    ks: Sequence[int] = DEFAULT_KS,
    list_k: int = DEFAULT_LIST_K,
    tune_metric: str = DEFAULT_TUNE_METRIC,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] = PARAM_GRIDS,
    extra_models: Sequence[Recommender] = (),
    log: Log | None = None,
) -> EvaluationResult:
    """Tune (or not), fit and measure the baselines ``models`` and ``extra_models``.

    ``params``: ``"tuned"`` (grid search on a validation split carved from training),
    ``"reference"`` (the issue's reference hyper-parameters; EASE-recency keeps EASE's
    reference lambda and tunes its decay on validation), or a mapping name -> params
    used as given (models missing from it are tuned). ``extra_models`` are evaluated
    as they are (fitted on ``split.train`` first if not fitted yet), without tuning.
    ``ks``: cut-offs for recall/NDCG/hit rate/coverage; ``list_k``: the list length the
    beyond-accuracy metrics are measured on; ``tune_metric``: e.g. ``ndcg@20``.
    """
    names = parse_models(models)
    ks = check_ks(ks)
    _metric_k(tune_metric)
    if isinstance(params, str) and params not in PARAM_MODES:
        raise ValueError(f"params must be one of {', '.join(PARAM_MODES)} or a mapping")
    if list_k <= 0:
        raise ValueError(f"list_k must be positive; got {list_k}")
    given: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    to_tune: dict[str, dict[str, Sequence[Any]]] = {}
    for n in names:
        if params == "reference":
            given[n] = dict(REFERENCE_PARAMS.get(n, {}))
            sources[n] = "reference"
            if n == "EASE-recency":
                to_tune[n] = {"lam": [given[n]["lam"]], "decay": grids[n]["decay"]}
                sources[n] = "reference+validation"
        elif isinstance(params, Mapping) and n in params:
            given[n] = dict(params[n])
            sources[n] = "given"
        elif _grid(grids.get(n, {})) == [{}]:
            given[n], sources[n] = {}, "none"  # nothing to tune (MostPopular)
        else:
            to_tune[n] = dict(grids[n])
            sources[n] = "validation"

    validation_stats = None
    tuned: dict[str, tuple[dict[str, Any], list[dict[str, Any]], float]] = {}
    if to_tune:
        val = split.validation()
        validation_stats = val.stats
        if log:
            log(f"validation split: {val.stats['evaluated_users']:,} users")
        tuned = tune(
            list(to_tune),
            val,
            grids=to_tune,
            metric=tune_metric,
            seed=seed,
            batch_size=batch_size,
            log=log,
        )
    pop = split.train.item_popularity
    edges = _popularity_edges(pop)
    cat_counts, _ = np.histogram(pop, bins=edges)
    reports: dict[str, ModelReport] = {}
    ease_cache: dict[float, EASE] = {}
    for n in names:
        best, trials, tune_s = tuned.get(n, ({}, [], 0.0))
        p = {**given.get(n, {}), **best}
        t0 = time.perf_counter()
        model = make_model(n, p, seed=seed)
        if isinstance(model, EASE) and model.lam in ease_cache:
            # Same lambda, same training set: reuse B instead of a second n_items³ solve.
            model.reuse_weights(ease_cache[model.lam])
        else:
            model.fit(split.train)
            if isinstance(model, EASE):
                ease_cache[model.lam] = model
        reports[n] = _measure(model, split, ks, list_k, batch_size, edges, sources[n])
        reports[n].tuning, reports[n].seconds["tune"] = trials, round(tune_s, 3)
        reports[n].seconds["fit"] = round(
            max(time.perf_counter() - t0 - reports[n].seconds["eval"], 0.0), 3
        )
        if log:
            m = reports[n].metrics
            log(f"{n} {model.params()}: " + ", ".join(_fmt_metric(m, k) for k in HEADLINE))
    for model in extra_models:
        t0 = time.perf_counter()
        if model.train_ is None:
            model.fit(split.train)
        elif model.train_ is not split.train:
            raise ValueError(f"{model.name}: fitted on other interactions than this split's")
        rep = _measure(model, split, ks, list_k, batch_size, edges, "given")
        rep.seconds["fit"] = round(time.perf_counter() - t0 - rep.seconds["eval"], 3)
        reports[model.name] = rep
    return EvaluationResult(
        protocol=dict(split.protocol),
        stats=dict(split.stats),
        validation_stats=validation_stats,
        ks=ks,
        list_k=list_k,
        tune_metric=tune_metric,
        params_mode=params if isinstance(params, str) else "given",
        seed=seed,
        models=reports,
        popularity_edges=edges.tolist(),
        catalogue_popularity_share=(cat_counts / max(len(pop), 1)).tolist(),
    )


def _measure(
    model: Recommender,
    split: EvalSplit,
    ks: tuple[int, ...],
    list_k: int,
    batch_size: int,
    edges: np.ndarray,
    source: str,
) -> ModelReport:
    t0 = time.perf_counter()
    metrics, tops = evaluate_fitted(model, split, ks=ks, list_k=list_k, batch_size=batch_size)
    hist = popularity_histogram(tops[:, :list_k], split.train.item_popularity, edges)
    return ModelReport(
        name=model.name,
        params=model.params(),
        params_source=source,
        metrics=metrics,
        seconds={"eval": round(time.perf_counter() - t0, 3)},
        popularity_share=hist,
    )


def load_split(
    data: str | os.PathLike[str] | None = None,
    *,
    features_version_dir: str | os.PathLike[str] | None = None,
    split: str = PER_USER_TEMPORAL,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    max_invalid_share: float = 0.05,
    limits: ContractConfig | None = None,
) -> EvalSplit:
    """The split to evaluate on: a feature-stage version's examples/eval when
    ``features_version_dir`` is given (``data`` then only supplies catalogue metadata),
    else the temporal split built from the data set ``data``."""
    if features_version_dir is not None:
        return split_from_features(features_version_dir, data=data)
    if data is None:
        raise ValueError("give a data set directory or a feature-stage version folder")
    return split_from_dataset(
        data,
        split=split,
        holdout_fraction=holdout_fraction,
        max_invalid_share=max_invalid_share,
        limits=limits,
    )


def run_evaluation(
    data: str | os.PathLike[str] | None = None,
    *,
    features_version_dir: str | os.PathLike[str] | None = None,
    split: str = PER_USER_TEMPORAL,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    models: str | Sequence[str] = "all",
    params: str | Mapping[str, Mapping[str, Any]] = "tuned",
    ks: str | Sequence[int] = DEFAULT_KS,
    list_k: int = DEFAULT_LIST_K,
    tune_metric: str = DEFAULT_TUNE_METRIC,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    store: ArtifactStore | None = None,
    mlflow_run: Any | None = None,
    extra_models: Sequence[Recommender] = (),
    max_invalid_share: float = 0.05,
    limits: ContractConfig | None = None,
    config_digest: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Load the split, evaluate, and write the report; returns a JSON-able summary.

    The report (``report.md``, ``metrics.json``, ``recall_at_k.png``,
    ``popularity.png``) goes to the folder ``out`` when given, and to a new version of
    the ``evaluation`` artifact when ``store`` is given; with neither, nothing is
    written. ``mlflow_run`` (an active ``mlflow.ActiveRun``) receives the metrics as
    ``eval/<model>/<metric>`` and the report files as artifacts under ``evaluation/``.
    The summary has ``models`` (name -> metrics), ``params``, ``split`` (counts),
    ``protocol``, ``seconds`` and the paths written. Errors: DatasetError for a folder
    that is not a data set or feature version; ValueError for an unknown model or
    split, a K ≤ 0 or a bad ``params``.
    """
    from videorec.evaluation.report import log_to_mlflow, write_report

    t0 = time.perf_counter()
    names = parse_models(models)
    k_tuple = parse_ks(ks)
    sp_ = load_split(
        data,
        features_version_dir=features_version_dir,
        split=split,
        holdout_fraction=holdout_fraction,
        max_invalid_share=max_invalid_share,
        limits=limits,
    )
    if sp_.test.n_users == 0:
        raise ValueError("the hold-out has no user with a training history; nothing to evaluate")
    if log:
        log(
            f"split: {sp_.train.n_users:,} users × {sp_.train.n_items:,} videos, "
            f"{sp_.stats['evaluated_users']:,} evaluated users"
        )
    result = evaluate(
        sp_,
        models=names,
        params=params,
        ks=k_tuple,
        list_k=list_k,
        tune_metric=tune_metric,
        seed=seed,
        extra_models=extra_models,
        log=log,
    )
    report = result.to_dict()
    report["config_digest"] = config_digest
    report["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["seconds_total"] = round(time.perf_counter() - t0, 2)
    written: dict[str, Any] = {}
    if out is not None:
        written["out"] = str(write_report(result, report, Path(out)))
    if store is not None:
        from videorec.config import config_digest as digest_of

        version = (
            f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}_"
            f"{digest_of({'protocol': report['protocol'], 'models': list(names)})}"
        )
        with store.write_version(EVALUATION, version, {"protocol": report["protocol"]}) as folder:
            write_report(result, report, folder)
        written["artifact"] = {
            "name": EVALUATION,
            "version": version,
            "uri": store.uri(EVALUATION, version),
        }
    if mlflow_run is not None:
        written["mlflow_run_id"] = log_to_mlflow(result, report, mlflow_run)
    return {
        "ok": True,
        "models": report["models"],
        "params": report["params"],
        "params_source": report["params_source"],
        "protocol": report["protocol"],
        "split": report["split"],
        "seconds": report["seconds"],
        "seconds_total": report["seconds_total"],
        **written,
    }
