"""Paired statistics of methods scored on the same cases: Wilcoxon signed-rank, bootstrap interval, Holm.

- :func:`paired_comparison` (two methods): scipy's two-sided Wilcoxon signed-rank test of the per-case
  differences (zero differences are ties, left out of the ranks as in Wilcoxon's original test, scipy's default),
  the median and mean difference with a percentile bootstrap interval of the cases (fixed seed, 10,000 resamples
  by default), and the cases each method wins;
- :func:`pairwise_wilcoxon` (three or more): the same test on every pair, p-values Holm-corrected;
- :func:`plot_paired`: one line per case from one method's value to the other's.

The direction of every metric of the per-case CSV is :data:`HIGHER_IS_BETTER`.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from breastseg.workflows.errors import UserValueError
from breastseg.workflows.metrics import METRIC_NAMES

__all__ = ["HIGHER_IS_BETTER", "higher_is_better", "wilcoxon_p", "paired_comparison", "holm", "pairwise_wilcoxon",
           "plot_paired"]

#: Whether a larger value is better, for every metric column of ``cases.csv`` (distances: smaller is better).
HIGHER_IS_BETTER: dict[str, bool] = {name: not name.startswith("hd") for name in METRIC_NAMES}


def higher_is_better(metric: str) -> bool:
    """The direction of ``metric``.

    Raises:
        ValueError: a column with no known direction (naming the ones there are).
    """
    if metric not in HIGHER_IS_BETTER:
        raise UserValueError(f"metric {metric!r} has no known direction; compare one of {', '.join(HIGHER_IS_BETTER)}")
    return HIGHER_IS_BETTER[metric]


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(statistic, p)`` of scipy's two-sided Wilcoxon signed-rank test; ``(0, 1)`` when no case differs."""
    from scipy.stats import wilcoxon

    if np.all(a == b):
        return 0.0, 1.0
    result = wilcoxon(a, b)
    return float(result.statistic), float(result.pvalue)


def _wins(difference: np.ndarray, higher: bool) -> tuple[int, int, int]:
    first = int(np.sum(difference > 0 if higher else difference < 0))
    second = int(np.sum(difference < 0 if higher else difference > 0))
    return first, second, int(difference.size - first - second)


def paired_comparison(
    a: Sequence[float], b: Sequence[float], higher: bool = True, confidence: float = 0.95, n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Wilcoxon test, median and mean of ``a - b`` with bootstrap intervals, and wins, of two paired samples.

    Args:
        a, b: one value per case, in the same case order.
        higher: larger values are better (decides the wins, not the sign of the difference).
        confidence: level of the intervals.
        n_resamples: bootstrap resamples of the cases.
        seed: of the bootstrap generator (the same numbers give the same interval).

    Raises:
        ValueError: samples of different lengths or fewer than 2 cases.
    """
    from scipy.stats import bootstrap

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise UserValueError(f"paired samples must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise UserValueError(f"a paired comparison needs at least 2 matched cases, got {a.size}")
    difference = a - b
    statistic, p_value = wilcoxon_p(a, b)
    wins_a, wins_b, ties = _wins(difference, higher)
    result: dict[str, Any] = {"n": int(a.size), "wilcoxon_statistic": statistic, "wilcoxon_p_value": p_value,
                              "wins": [wins_a, wins_b], "ties": ties, "confidence": confidence,
                              "n_resamples": n_resamples, "seed": seed, "bootstrap_method": "percentile"}
    for name, estimator in (("median", np.median), ("mean", np.mean)):
        interval = bootstrap((difference,), estimator, n_resamples=n_resamples, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        result[f"{name}_difference"] = float(estimator(difference))
        result[f"{name}_difference_ci"] = [float(interval.low), float(interval.high)]
    return result


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    steps = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return adjusted.tolist()


def pairwise_wilcoxon(table: np.ndarray, names: Sequence[str], higher: bool = True) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank test of every pair of columns of an ``(N cases, k methods)`` table, Holm-corrected."""
    pairs = []
    for i, j in combinations(range(len(names)), 2):
        statistic, p_value = wilcoxon_p(table[:, i], table[:, j])
        wins = _wins(table[:, i] - table[:, j], higher)
        pairs.append({"a": names[i], "b": names[j], "median_difference": float(np.median(table[:, i] - table[:, j])),
                      "wins": list(wins[:2]), "ties": wins[2], "statistic": statistic, "p_value": p_value})
    for pair, adjusted in zip(pairs, holm([pair["p_value"] for pair in pairs])):
        pair["p_holm"] = adjusted
    return pairs


def plot_paired(names: Sequence[str], a: Sequence[float], b: Sequence[float], metric: str, path: str | Path,
                higher: bool = True, title: str = "") -> Path:
    """One line per case from its value under ``names[0]`` to its value under ``names[1]``, coloured by the
    winner (grey: tie), with each method's median as a black bar."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fig = Figure(figsize=(4.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    difference = a - b
    first_wins = difference > 0 if higher else difference < 0
    for left, right, won, tie in zip(a, b, first_wins, difference == 0):
        colour = "0.6" if tie else ("tab:blue" if won else "tab:orange")
        ax.plot([0, 1], [left, right], color=colour, alpha=0.6, linewidth=0.9, marker="o", markersize=3)
    for x, values in ((0, a), (1, b)):
        ax.hlines(np.median(values), x - 0.12, x + 0.12, color="black", linewidth=2.5)
    wins_a, wins_b, ties = _wins(difference, higher)
    ax.set_xticks([0, 1], [f"{names[0]}\nbetter on {wins_a}", f"{names[1]}\nbetter on {wins_b}"])
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(title or f"{len(a)} cases, {ties} tie(s)", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
