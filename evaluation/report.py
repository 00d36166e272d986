"""Writing an evaluation: Markdown report, JSON with every number, PNG plots, MLflow.

The JSON (``metrics.json``) is the source of truth; the Markdown and the plots are
rendered from the same numbers. Plots use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from videorec.evaluation.harness import EvaluationResult

REPORT_MD = "report.md"
METRICS_JSON = "metrics.json"
RECALL_PNG = "recall_at_k.png"
POPULARITY_PNG = "popularity.png"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a JSON report (``EvaluationResult.to_dict`` plus extras)."""
    proto, split, models = report["protocol"], report["split"], report["models"]
    ks, lk = proto["ks"], proto["list_k"]
    names = list(models)
    out = [
        "# Offline evaluation",
        "",
        f"Created {report.get('created_at', '')}; data `{proto.get('source')}` "
        f"({proto.get('dataset')}); split `{proto.get('split')}` with hold-out fraction "
        f"{proto.get('holdout_fraction')}; interactions: {proto.get('interactions')}.",
        f"Ranking: {proto['ranking']}; metrics are the {proto['averaging']}. "
        f"Hyper-parameters: `{proto['params_mode']}`; whatever was tuned was tuned on a "
        f"validation split carved from training the same way, by {proto['tune_metric']} "
        "(see the source column below), never on the test split.",
        "",
        "## Split",
        "",
        _table(["count", "value"], [[k, v] for k, v in split.items()]),
        "",
        "## Headline",
        "",
        _table(
            ["model", "params", "recall@20", "ndcg@20", "recall@200", "mrr", "coverage@200"],
            [
                [
                    n,
                    ", ".join(f"{k}={v}" for k, v in report["params"][n].items()) or "-",
                    models[n].get("recall@20"),
                    models[n].get("ndcg@20"),
                    models[n].get("recall@200"),
                    models[n].get("mrr"),
                    models[n].get("coverage@200"),
                ]
                for n in names
            ],
        ),
        "",
        "## Ranking metrics at every K",
        "",
    ]
    for metric in ("recall", "ndcg", "hitrate", "coverage"):
        out += [
            _table(
                [metric, *[f"@{k}" for k in ks]],
                [[n, *[models[n].get(f"{metric}@{k}") for k in ks]] for n in names],
            ),
            "",
        ]
    ba = [
        "top_channel_share",
        "top_category_share",
        "lists_over_channel_cap",
        "lists_over_category_cap",
        "lists_breaking_caps",
        "mean_log_popularity",
        "novelty_bits",
        "fresh_video_share",
        "not_yet_published_share",
        "new_creator_share",
    ]
    out += [
        f"## Beyond accuracy (top {lk} lists)",
        "",
        "Caps: at most 3 videos per channel, at most 30% per category. `n/a`: the data has "
        "no such field (not invented).",
        "",
        _table(["model", *ba], [[n, *[models[n].get(f"{b}@{lk}") for b in ba]] for n in names]),
        "",
        f"![recall@K]({RECALL_PNG})",
        "",
        f"![popularity of recommended videos]({POPULARITY_PNG})",
        "",
        "## Hyper-parameters and time",
        "",
        _table(
            ["model", "params", "source", "grid points", "tune s", "fit s", "eval s"],
            [
                [
                    n,
                    json.dumps(report["params"][n], sort_keys=True),
                    report["params_source"][n],
                    len(report.get("tuning", {}).get(n, [])),
                    report["seconds"][n].get("tune"),
                    report["seconds"][n].get("fit"),
                    report["seconds"][n].get("eval"),
                ]
                for n in names
            ],
        ),
        "",
        f"Total: {report.get('seconds_total')} s. Every number is in `{METRICS_JSON}`.",
        "",
    ]
    return "\n".join(out)


def plot_recall(report: dict[str, Any], path: Path) -> None:
    """Recall@K against K (log scale) for every model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["protocol"]["ks"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, m in report["models"].items():
        ax.plot(ks, [m.get(f"recall@{k}") for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (list length)")
    ax.set_ylabel("Recall@K (per-user mean)")
    ax.set_title("Recall@K, full-catalogue ranking")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_popularity(report: dict[str, Any], path: Path) -> None:
    """Share of top-K impressions per popularity bin, per model, against the catalogue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pop = report["popularity"]
    edges = np.asarray(pop["bin_edges"])
    centers = np.sqrt(edges[:-1] * edges[1:])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.bar(
        edges[:-1],
        pop["catalogue_share"],
        width=np.diff(edges),
        align="edge",
        color="0.85",
        label="catalogue (share of videos)",
    )
    for name, share in pop["impression_share"].items():
        ax.plot(centers, share, marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("popularity (distinct training users of the video)")
    ax.set_ylabel("share")
    ax.set_title(f"Popularity of recommended videos (top {report['protocol']['list_k']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(result: EvaluationResult, report: dict[str, Any], folder: Path) -> Path:
    """Write ``report.md``, ``metrics.json`` and the two PNG plots into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_JSON).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    plot_recall(report, folder / RECALL_PNG)
    plot_popularity(report, folder / POPULARITY_PNG)
    (folder / REPORT_MD).write_text(render_markdown(report))
    return folder


def mlflow_key(model: str, metric: str) -> str:
    """An MLflow-legal metric key (``@`` is not allowed): ``eval/EASE/ndcg_at_20``."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", f"eval/{model}/{metric.replace('@', '_at_')}")


def log_to_mlflow(result: EvaluationResult, report: dict[str, Any], run: Any) -> str:
    """Log every numeric metric, the chosen parameters and the report files to ``run``.

    ``run``: an active ``mlflow.ActiveRun`` (or anything with ``.info.run_id``).
    Returns the run id.
    """
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [
        Metric(mlflow_key(model, name), float(v), now, 0)
        for model, values in report["models"].items()
        for name, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    ]
    params = [
        Param(f"eval/{model}/{k}", str(v))
        for model, p in report["params"].items()
        for k, v in p.items()
    ]
    client = MlflowClient()
    # log_batch takes at most 1000 metrics and 100 params per call.
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        write_report(result, report, Path(tmp))
        client.log_artifacts(run_id, tmp, artifact_path="evaluation")
    return run_id
