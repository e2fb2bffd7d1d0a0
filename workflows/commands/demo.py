"""The main job: train, evaluate and register a bundle through the real ``monai.bundle`` CLI.

``breastseg demo`` runs exactly the commands a research team would type (printed before each step),
on the synthetic default generated on first use, and ends with the test metrics, the MLflow runs and
the registered model.
"""

from __future__ import annotations

import json
import math
import os

from breastseg.workflows.commands import bundle_runs
from breastseg.workflows.tracking.runs import PROJECT_ROOT

__all__ = ["DEMO_OVERRIDES", "format_stats", "run_demo"]

#: overrides that fit the main job into a few minutes on 2 CPU cores (see the bundle docs); the
#: bundle's own defaults are the paper's
DEMO_OVERRIDES: dict[str, dict[str, str]] = {
    "unetplusplus_mammo": {"max_epochs": "12", "batch_size": "8", "image_size": "64"},
}


def format_stats(stats: dict) -> str:
    """``mean ± sd (n=...)``, or why there is no value (e.g. mm distances without a known spacing)."""
    count = stats.get("n", stats.get("n_folds"))
    mean, sd = stats.get("mean"), stats.get("sd")
    if mean is None or math.isnan(mean):
        return f"undefined (no case with a value: pixel spacing unknown or no eligible case; n={count or 0})"
    if sd is None or math.isnan(sd):
        return f"{mean:.4f} (n={count})"
    return f"{mean:.4f} ± {sd:.4f} (n={count})"


def run_demo(bundle: str = "unetplusplus_mammo", max_epochs: int | None = None, dataset: str = "cbis-ddsm") -> int:
    """Train, evaluate and register ``bundle`` on the synthetic ``dataset``; print where everything is."""
    bundle_root = bundle_runs.bundle_configs(bundle).parent
    overrides = dict(DEMO_OVERRIDES.get(bundle, {}), dataset=dataset)
    if max_epochs is not None:
        overrides["max_epochs"] = str(max_epochs)
    summary_file = bundle_runs.train_and_evaluate(bundle, overrides, bundle_root / "runs" / dataset / "eval")
    summary = json.loads(summary_file.read_text())
    print("\n=== test metrics (" + bundle + ", synthetic " + dataset + ") ===")
    for name, stats in summary.get("metrics", {}).items():
        print(f"  {name:<12} {format_stats(stats)}")
    print(f"\nper-case CSV, summary and plots: {summary_file.parent}")
    print(f"best model: {bundle_root / 'models' / 'model.pt'}")
    print(f"MLflow store: {os.environ.get('MLFLOW_TRACKING_URI') or PROJECT_ROOT / 'mlflow' / 'mlruns.db'}"
          f" (experiment breastseg-{bundle}); registered model: models:/{bundle}@candidate")
    print("open the MLflow UI: bash mlflow/start_server.sh [PORT]  ->  http://127.0.0.1:PORT (default 5000)")
    return 0
