"""Compare segmentation methods on one test split: a paired test for two, Friedman + Nemenyi for more.

Reads the per-case ``cases.csv`` that any bundle's evaluation writes (``runs/<dataset>/eval/<run>/``), matches
the cases by ``case_id`` (and ``lesion_index`` for bundles that score one ROI per lesion), refuses evaluations of
different splits, and lists the cases left out (:mod:`breastseg.workflows.commands.compare_cases`). A per-case metric
(Dice by default, any column of :data:`~breastseg.workflows.commands.paired_stats.HIGHER_IS_BETTER`) is compared:

- two methods: Wilcoxon signed-rank test, median and mean paired difference with bootstrap intervals, cases won
  (:mod:`breastseg.workflows.commands.paired_stats`); ``paired_plot.png`` draws one line per case;
- three or more, as paper 003 does (Demšar, JMLR 7:1-30, 2006): Friedman test over the methods' per-case ranks
  (rank 1 = best; ties share their mean rank); Nemenyi post-hoc: methods ``i`` and ``j`` differ when
  ``|R_i - R_j| >= CD = q_alpha sqrt(k(k+1)/(6N))``, ``q_alpha`` the studentized range quantile at ``k`` groups and
  infinite degrees of freedom over sqrt(2); the pairwise p-value is ``P(Q >= sqrt(2) |R_i - R_j| / sqrt(k(k+1)/(6N)))``;
  and every pairwise Wilcoxon test with Holm's correction (``wilcoxon_holm.csv``).

Both write ``comparison.json``, ``matched_cases.csv`` (the compared values, one line per case) and
``left_out_cases.csv``, and log the summary and figures to an MLflow run of the experiment ``breastseg-compare``.
Case ids never leave the machine: MLflow gets counts, aggregates and the per-case values keyed by a pseudonym.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from breastseg.workflows.commands.compare_cases import (
    MatchedCases,
    check_same_split,
    find_cases_csv,
    load_case_scores,
    load_evaluation,
    match_cases,
    write_left_out,
)
from breastseg.workflows.commands.paired_stats import higher_is_better, paired_comparison, pairwise_wilcoxon, plot_paired
from breastseg.workflows.errors import UserValueError
from breastseg.workflows.tracking.runs import check_tracking_server

__all__ = [
    "load_case_scores",
    "find_cases_csv",
    "friedman_nemenyi",
    "plot_critical_difference",
    "compare_methods",
    "train_and_evaluate_network",
]

logger = logging.getLogger("breastseg.compare")


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
        raise UserValueError(f"the Friedman test needs at least 3 methods, got {k} (for two, use a paired Wilcoxon test)")
    if n < 2:
        raise UserValueError(f"the Friedman test needs at least 2 matched cases, got {n}")
    if not 0 < alpha < 1:
        raise UserValueError(f"alpha must be in (0, 1), got {alpha}")
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


def _write_matched(matched: MatchedCases, names: Sequence[str], path: Path, pseudonymise: bool = False) -> Path:
    """One line per compared case: its id (or, for MLflow, its pseudonym) and each method's value."""
    from breastseg.workflows.evaluation.evaluate import case_key

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_key" if pseudonymise else "case_id", "lesion_index", *names])
        for (case, lesion), values in zip(matched.keys, matched.table):
            writer.writerow([case_key(case) if pseudonymise else case, lesion, *(f"{v:.6g}" for v in values)])
    return path


def _log_to_mlflow(tracking_uri: str, result: dict[str, Any], artifacts: Sequence[Path]) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("breastseg-compare")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("breastseg-compare")
    metric = result["metric"]
    run = client.create_run(experiment_id, run_name=f"compare-{metric}-{'-'.join(result['methods'])}"[:250])
    run_id = run.info.run_id
    for key in ("metric", "test", "n", "n_left_out", "alpha"):
        client.log_param(run_id, "n_cases" if key == "n" else key, result[key])
    client.log_param(run_id, "methods", ",".join(result["methods"]))
    if result["test"] == "wilcoxon":
        for key in ("wilcoxon_statistic", "wilcoxon_p_value", "median_difference", "mean_difference"):
            client.log_metric(run_id, key, result[key])
        for key in ("median_difference_ci", "mean_difference_ci"):
            client.log_metric(run_id, f"{key}_low", result[key][0])
            client.log_metric(run_id, f"{key}_high", result[key][1])
        for name, wins in zip(result["methods"], result["wins"]):
            client.log_metric(run_id, f"wins_{name}", wins)
        client.log_param(run_id, "bootstrap", f"{result['bootstrap_method']}, {result['n_resamples']} resamples, seed {result['seed']}")
    else:
        client.log_metric(run_id, "friedman_statistic", result["statistic"])
        client.log_metric(run_id, "friedman_p_value", result["p_value"])
        client.log_metric(run_id, "critical_difference", result["cd"])
        for name, rank in zip(result["methods"], result["mean_ranks"]):
            client.log_metric(run_id, f"mean_rank_{name}", rank)
    for name, mean in zip(result["methods"], result["mean_metric"]):
        client.log_metric(run_id, f"mean_{metric}_{name}", mean)
    for artifact in artifacts:
        client.log_artifact(run_id, str(artifact), "comparison")
    client.set_terminated(run_id)
    return run_id


def _friedman_files(result: dict[str, Any], out: Path) -> list[Path]:
    names = result["methods"]
    with open(out / "nemenyi_pvalues.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *names])
        for name, row in zip(names, result["p_values"]):
            writer.writerow([name, *(f"{p:.6g}" for p in row)])
    with open(out / "wilcoxon_holm.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method_a", "method_b", "median_difference", "wins_a", "wins_b", "ties", "p_value", "p_holm"])
        for pair in result["pairwise_wilcoxon"]:
            writer.writerow([pair["a"], pair["b"], f"{pair['median_difference']:.6g}", *pair["wins"], pair["ties"],
                             f"{pair['p_value']:.6g}", f"{pair['p_holm']:.6g}"])
    title = f"{result['metric']}, N={result['n']}, Friedman p={result['p_value']:.3g}"
    plot_critical_difference(names, result["mean_ranks"], result["cd"], out / "critical_difference.png", title)
    return [out / "nemenyi_pvalues.csv", out / "wilcoxon_holm.csv", out / "critical_difference.png"]


def _load_method(name: str, path: str | Path, metric: str, out: Path, nnunet_export: str | Path | None) -> Any:
    """A method's evaluation; an nnU-Net prediction folder is scored into ``out/nnunet/<name>/cases.csv`` first."""
    from breastseg.workflows.commands.nnunet_cases import is_nnunet_predictions, score_nnunet_predictions

    if nnunet_export is None and not is_nnunet_predictions(path):
        return load_evaluation(path, metric)
    cases_csv, datalist = score_nnunet_predictions(path, out / "nnunet" / name, nnunet_export)
    logger.info("nnU-Net predictions %s of %s scored into %s", path, name, cases_csv)
    return load_evaluation(cases_csv, metric, datalist=datalist)


def compare_methods(
    cases: Mapping[str, str | Path],
    out: str | Path,
    metric: str = "dice",
    alpha: float = 0.05,
    tracking_uri: str | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    nnunet_exports: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Compare the per-case ``metric`` of several evaluations of one split; files in ``out``; MLflow run.

    Two methods get the paired test (Wilcoxon, bootstrap intervals at ``1 - alpha``, wins, ``paired_plot.png``),
    more get Friedman + Nemenyi (``nemenyi_pvalues.csv``, ``critical_difference.png``) and every pairwise
    Wilcoxon test Holm-corrected (``wilcoxon_holm.csv``). Always: ``comparison.json``, ``matched_cases.csv``,
    ``left_out_cases.csv``.

    Args:
        cases: method name -> an evaluation folder or its ``cases.csv``, or an nnU-Net v2 prediction folder of the
            test images of a ``breastseg export-nnunet`` dataset, scored first into ``out/nnunet/<name>/cases.csv``
            (:mod:`breastseg.workflows.commands.nnunet_cases`).
        out: folder of the outputs (created).
        metric: a ``cases.csv`` metric column; its direction is known (:data:`~breastseg.workflows.commands.paired_stats.HIGHER_IS_BETTER`).
        alpha: significance level of the critical difference; the bootstrap intervals are at ``1 - alpha``.
        tracking_uri: MLflow store (``None``: no logging).
        n_resamples: bootstrap resamples of the cases (two methods).
        seed: of the bootstrap (two methods).
        nnunet_exports: method name -> the exported ``DatasetNNN_<name>`` folder of an nnU-Net prediction folder
            (default: found from the ``predict_from_raw_data_args.json`` nnU-Net wrote there).

    Raises:
        ValueError: fewer than 2 methods, evaluations of different splits, a metric of unknown direction,
            unusable values, or fewer than 2 cases left to compare.
    """
    if len(cases) < 2:
        raise UserValueError(f"compare needs at least 2 methods, got {len(cases)}: {list(cases)}")
    higher = higher_is_better(metric)
    out = Path(out)
    evaluations = {name: _load_method(name, path, metric, out, (nnunet_exports or {}).get(name)) for name, path in cases.items()}
    splits = check_same_split(evaluations)
    matched = match_cases(evaluations, metric, higher)
    names, table = list(cases), matched.table
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "methods": names, "metric": metric, "higher_is_better": higher, "alpha": alpha, "n": len(matched.keys),
        "k": len(names), "mean_metric": table.mean(axis=0).tolist(), "median_metric": np.median(table, axis=0).tolist(),
        "n_left_out": len(matched.left_out), "left_out": matched.left_out_counts(),
        "both_empty_scored_best": matched.both_empty_scored_best,
        "sources": {name: str(e.path) for name, e in evaluations.items()}, "splits": splits,
    }
    write_left_out(matched, out / "left_out_cases.csv")
    _write_matched(matched, names, out / "matched_cases.csv")
    artifacts = [out / "comparison.json"]
    if tracking_uri:  # the tracking store gets case keys, never case ids
        artifacts.append(_write_matched(matched, names, out / "mlflow" / "matched_cases.csv", pseudonymise=True))
    if len(names) == 2:
        result["test"] = "wilcoxon"
        result.update(paired_comparison(table[:, 0], table[:, 1], higher, 1 - alpha, n_resamples, seed))
        title = f"{metric}, N={result['n']}, Wilcoxon p={result['wilcoxon_p_value']:.3g}"
        artifacts.append(plot_paired(names, table[:, 0], table[:, 1], metric, out / "paired_plot.png", higher, title))
        logger.info("Wilcoxon p=%.4g over %d cases; median difference %.4g", result["wilcoxon_p_value"], result["n"],
                    result["median_difference"])
    else:
        result["test"] = "friedman"
        result.update(friedman_nemenyi(table, alpha=alpha, higher_is_better=higher))
        result["pairwise_wilcoxon"] = pairwise_wilcoxon(table, names, higher)
        artifacts += _friedman_files(result, out)
        logger.info("Friedman chi2=%.4g p=%.4g over %d cases; CD=%.3f", result["statistic"], result["p_value"], result["n"], result["cd"])
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    if tracking_uri:
        try:
            result["mlflow_run_id"] = _log_to_mlflow(check_tracking_server(tracking_uri), result, artifacts)
        except Exception as error:  # noqa: BLE001 - an unreachable tracking store must not lose a finished comparison
            logger.warning("the comparison is in %s; logging it to MLflow (%s) failed: %s", out, tracking_uri, error)
        else:
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
    from breastseg.workflows.commands import bundle_runs

    folder = Path(out) / network
    settings = dict(overrides or {}, network=network, output_dir=str(folder), ckpt_dir=str(folder / "models"))
    if dataset:
        settings["dataset"] = dataset
    if dataset_dir:
        settings["dataset_dir"] = dataset_dir
    return bundle_runs.train_and_evaluate(bundle, settings, folder / "eval").parent
