"""Compare segmentation methods on one test split: Friedman test, Nemenyi post-hoc, critical-difference plot.

Reads the per-case ``cases.csv`` that any bundle's evaluation writes (``runs/<dataset>/eval/<run>/``), matches
the cases by ``case_id`` (and ``lesion_index`` for bundles that score one ROI per lesion), and compares a
per-case metric (Dice by default) as paper 003 does (Demšar, JMLR 7:1-30, 2006):

- Friedman test over the methods' per-case ranks (rank 1 = best; ties share their mean rank);
- Nemenyi post-hoc: methods ``i`` and ``j`` differ when ``|R_i - R_j| >= CD = q_alpha sqrt(k(k+1)/(6N))``,
  ``q_alpha`` the studentized range quantile at ``k`` groups and infinite degrees of freedom over sqrt(2); the
  pairwise p-value is ``P(Q >= sqrt(2) |R_i - R_j| / sqrt(k(k+1)/(6N)))``.

Writes ``nemenyi_pvalues.csv`` (methods x methods), ``comparison.json`` (Friedman statistic and p-value, mean
ranks, mean metric, CD) and ``critical_difference.png``, and logs them to an MLflow run of the experiment
``breastseg-compare``. Case ids never leave the machine: only counts and aggregates are logged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "load_case_scores",
    "find_cases_csv",
    "friedman_nemenyi",
    "plot_critical_difference",
    "compare_methods",
    "train_and_evaluate_network",
]

logger = logging.getLogger("breastseg.compare")


def find_cases_csv(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``cases.csv`` in it or in its newest evaluation sub-folder.

    Raises:
        FileNotFoundError: nothing named ``cases.csv`` there.
    """
    path = Path(path)
    if path.is_file():
        return path
    candidates = [path / "cases.csv"] + sorted(path.glob("*/cases.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no cases.csv at {path} (expected an evaluation folder or the CSV itself)")


def load_case_scores(path: str | Path, metric: str = "dice") -> dict[tuple[str, str], float]:
    """``{(case_id, lesion_index): value}`` of ``metric`` from an evaluation's ``cases.csv``.

    Raises:
        ValueError: no ``case_id`` or ``metric`` column, a repeated case, or a value that is not a finite number
            (the message names the file and the case).
    """
    path = find_cases_csv(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for needed in ("case_id", metric):
            if needed not in columns:
                raise ValueError(f"{path}: no {needed!r} column (columns: {columns})")
        scores: dict[tuple[str, str], float] = {}
        for line, row in enumerate(reader, start=2):
            key = (row["case_id"], row.get("lesion_index") or "0")
            if key in scores:
                raise ValueError(f"{path} line {line}: case {key[0]} lesion {key[1]} appears twice")
            try:
                value = float(row[metric])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"{path} line {line}: {metric} of case {key[0]} is {row[metric]!r}, not a finite number")
            scores[key] = value
    if not scores:
        raise ValueError(f"{path}: no case rows")
    return scores


def _matched_table(scores: Mapping[str, Mapping[tuple[str, str], float]]) -> tuple[list[str], np.ndarray]:
    names = list(scores)
    reference = set(scores[names[0]])
    for name in names[1:]:
        cases = set(scores[name])
        if cases != reference:
            missing, extra = sorted(reference - cases), sorted(cases - reference)
            raise ValueError(
                f"methods {names[0]!r} and {name!r} were not evaluated on the same cases: {len(missing)} case(s) only in "
                f"{names[0]!r} (e.g. {[c for c, _ in missing[:3]]}), {len(extra)} only in {name!r} "
                f"(e.g. {[c for c, _ in extra[:3]]}); evaluate every method on the same split"
            )
    keys = sorted(reference)
    return keys, np.array([[scores[name][key] for name in names] for key in keys], dtype=np.float64)


def friedman_nemenyi(table: np.ndarray, alpha: float = 0.05, higher_is_better: bool = True) -> dict[str, Any]:
    """Friedman test and Nemenyi post-hoc on an ``(N cases, k methods)`` table.

    Returns:
        ``statistic``, ``p_value`` (Friedman), ``mean_ranks`` (k), ``cd`` (critical difference at ``alpha``),
        ``p_values`` (k x k Nemenyi, 1 on the diagonal), ``n`` and ``k``.

    Raises:
        ValueError: fewer than 3 methods or 2 cases, or ``alpha`` outside (0, 1).
    """
    from scipy.stats import friedmanchisquare, rankdata, studentized_range

    n, k = table.shape
    if k < 3:
        raise ValueError(f"the Friedman test needs at least 3 methods, got {k} (for two, use a paired Wilcoxon test)")
    if n < 2:
        raise ValueError(f"the Friedman test needs at least 2 matched cases, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    ranks = rankdata(-table if higher_is_better else table, axis=1)
    mean_ranks = ranks.mean(axis=0)
    if np.all(table == table[:, :1]):  # every method scores every case alike: no difference to test
        statistic, p_value = 0.0, 1.0
    else:
        statistic, p_value = (float(v) for v in friedmanchisquare(*table.T))
    scale = math.sqrt(k * (k + 1) / (6.0 * n))
    cd = float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2) * scale)
    difference = np.abs(mean_ranks[:, None] - mean_ranks[None, :])
    p_values = studentized_range.sf(difference / scale * math.sqrt(2), k, np.inf)
    np.fill_diagonal(p_values, 1.0)
    return {
        "statistic": statistic,
        "p_value": p_value,
        "mean_ranks": mean_ranks.tolist(),
        "cd": cd,
        "p_values": np.clip(p_values, 0.0, 1.0).tolist(),
        "n": int(n),
        "k": int(k),
        "alpha": alpha,
    }


def _cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs of methods (sorted by rank) whose rank spread is below ``cd``, as ``(first, last)``."""
    order = sorted(ranks)
    runs = []
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and order[end + 1] - order[start] < cd:
            end += 1
        if end > start and not any(s <= start and end <= e for s, e in runs):
            runs.append((start, end))
    return runs


def plot_critical_difference(names: Sequence[str], mean_ranks: Sequence[float], cd: float, path: str | Path, title: str = "") -> Path:
    """Demšar's critical-difference diagram: the rank axis, each method at its mean rank, a bar joining the
    methods that do not differ significantly, and the CD interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    order = np.argsort(mean_ranks)
    ranks = [float(mean_ranks[i]) for i in order]
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.35 * k))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(k + 2), 2.2)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black")
    for tick in range(1, k + 1):
        ax.vlines(tick, 0, 0.25, color="black")
        ax.text(tick, 0.4, str(tick), ha="center", va="bottom")
    for row, (index, rank) in enumerate(zip(order, ranks)):
        y = -(row + 1) * 0.8
        left = row < (k + 1) // 2
        x_text = 0.55 if left else k + 0.45
        ax.plot([rank, rank, x_text], [0, y, y], color="black", linewidth=0.8)
        ax.text(x_text, y, f"{names[index]} ({rank:.2f})", ha="left" if left else "right", va="bottom", fontsize=9)
    ax.plot([1, 1 + cd], [1.6, 1.6], color="black", linewidth=2)
    ax.text(1 + cd / 2, 1.7, f"CD = {cd:.2f}", ha="center", va="bottom")
    for depth, (start, end) in enumerate(_cliques(ranks, cd)):
        y = -0.25 - 0.2 * depth
        ax.plot([ranks[start] - 0.03, ranks[end] + 0.03], [y, y], color="tab:red", linewidth=3)
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _log_to_mlflow(tracking_uri: str, out: Path, result: dict[str, Any], metric: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("breastseg-compare")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("breastseg-compare")
    run = client.create_run(experiment_id, run_name=f"compare-{metric}-{'-'.join(result['methods'])}"[:250])
    run_id = run.info.run_id
    client.log_param(run_id, "metric", metric)
    client.log_param(run_id, "methods", ",".join(result["methods"]))
    client.log_param(run_id, "n_cases", result["n"])
    client.log_param(run_id, "alpha", result["alpha"])
    client.log_metric(run_id, "friedman_statistic", result["statistic"])
    client.log_metric(run_id, "friedman_p_value", result["p_value"])
    client.log_metric(run_id, "critical_difference", result["cd"])
    for name, rank, mean in zip(result["methods"], result["mean_ranks"], result["mean_metric"]):
        client.log_metric(run_id, f"mean_rank_{name}", rank)
        client.log_metric(run_id, f"mean_{metric}_{name}", mean)
    for artifact in ("nemenyi_pvalues.csv", "comparison.json", "critical_difference.png"):
        client.log_artifact(run_id, str(out / artifact), "comparison")
    client.set_terminated(run_id)
    return run_id


def compare_methods(
    cases: Mapping[str, str | Path],
    out: str | Path,
    metric: str = "dice",
    alpha: float = 0.05,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Friedman + Nemenyi on the per-case ``metric`` of several evaluations; files in ``out``; MLflow run.

    Args:
        cases: method name -> an evaluation folder or its ``cases.csv``.
        out: folder of ``nemenyi_pvalues.csv``, ``comparison.json`` and ``critical_difference.png``.
        metric: a ``cases.csv`` column where higher is better (``dice``, ``iou``...); HD columns rank lower first.
        alpha: significance level of the critical difference.
        tracking_uri: MLflow store (``None``: no logging).

    Raises:
        ValueError: fewer than 3 methods, cases that differ between methods, or unusable values.
    """
    if len(cases) < 3:
        raise ValueError(f"compare needs at least 3 methods, got {len(cases)}: {list(cases)}")
    scores = {name: load_case_scores(path, metric) for name, path in cases.items()}
    keys, table = _matched_table(scores)
    result = friedman_nemenyi(table, alpha=alpha, higher_is_better=not metric.startswith("hd"))
    names = list(cases)
    result.update({"methods": names, "metric": metric, "mean_metric": table.mean(axis=0).tolist(),
                   "sources": {name: str(find_cases_csv(path)) for name, path in cases.items()}})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "nemenyi_pvalues.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *names])
        for name, row in zip(names, result["p_values"]):
            writer.writerow([name, *(f"{p:.6g}" for p in row)])
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    title = f"{metric}, N={result['n']}, Friedman p={result['p_value']:.3g}"
    plot_critical_difference(names, result["mean_ranks"], result["cd"], out / "critical_difference.png", title)
    logger.info("Friedman chi2=%.4g p=%.4g over %d cases; CD=%.3f", result["statistic"], result["p_value"], result["n"], result["cd"])
    if tracking_uri:
        result["mlflow_run_id"] = _log_to_mlflow(tracking_uri, out, result, metric)
        (out / "comparison.json").write_text(json.dumps(result, indent=2))
    return result


def train_and_evaluate_network(
    bundle: str, network: str, out: str | Path, dataset: str | None = None, dataset_dir: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Path:
    """Train ``bundle`` with ``--network network`` and evaluate it on its test split, through the bundle CLI.

    Every network gets its own ``out/<network>`` (datalist, checkpoints, evaluation); the split depends only on
    the dataset, the seed and the fractions, so networks trained with the same ones share it (and
    :func:`compare_methods` refuses results that do not). Returns the evaluation folder.
    """
    from breastseg.workflows import bundle_runs

    folder = Path(out) / network
    settings = dict(overrides or {}, network=network, output_dir=str(folder), ckpt_dir=str(folder / "models"))
    if dataset:
        settings["dataset"] = dataset
    if dataset_dir:
        settings["dataset_dir"] = dataset_dir
    return bundle_runs.train_and_evaluate(bundle, settings, folder / "eval").parent
