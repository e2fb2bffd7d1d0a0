"""K-fold cross-validation of a bundle as one command (``breastseg cv``).

Every fold is trained and evaluated through the real ``monai.bundle`` CLI with the same datalist
(``--folds K --fold k``: the folds are grouped by patient and fixed by the seed); each fold's
checkpoints go to ``fold_<k>/models`` of the output folder. The held-out fold is the evaluation split. The mean ± sd over
folds is printed and written to ``crossval_<K>fold.json`` in the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from breastseg.workflows.commands import bundle_runs
from breastseg.workflows.commands.demo import format_stats

__all__ = ["run_cross_validation"]


def run_cross_validation(
    bundle: str,
    folds: int,
    dataset: str,
    dataset_dir: str | None = None,
    overrides: dict[str, str] | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``folds`` folds of ``bundle``; return the mean ± sd summary.

    Everything goes under ``output_dir`` (default ``bundles/<bundle>/runs/<dataset>``): the datalist,
    ``fold_<k>/models``, the evaluations and ``crossval_<K>fold.json``.
    """
    from breastseg.workflows.evaluation.reports import mean_sd_over_folds

    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    bundle_root = bundle_runs.bundle_configs(bundle).parent
    out_root = Path(output_dir).resolve() if output_dir else bundle_root / "runs" / dataset
    base = dict(overrides or {}, dataset=dataset, folds=str(folds), output_dir=str(out_root))
    if dataset_dir:
        base["dataset_dir"] = str(Path(dataset_dir).resolve())
    summaries = []
    for fold in range(folds):
        fold_overrides = dict(base, fold=str(fold), ckpt_dir=str(out_root / f"fold_{fold}" / "models"))
        bundle_runs.train(bundle, fold_overrides)
        summary_file = bundle_runs.evaluate(bundle, dict(fold_overrides, eval_split="validation"), out_root / "eval")
        summaries.append(json.loads(summary_file.read_text()))
    result = mean_sd_over_folds(summaries)
    out = out_root / f"crossval_{folds}fold.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=4))
    print(f"\n=== {folds}-fold cross-validation of {bundle} on {dataset} ===")
    for name, stats in result.get("metrics", result).items():
        if isinstance(stats, dict) and "mean" in stats:
            print(f"  {name:<12} {format_stats(stats)}")
    print(f"written to {out}")
    return result
