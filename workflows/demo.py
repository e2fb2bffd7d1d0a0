"""The main job: train, evaluate and register a bundle through the real ``monai.bundle`` CLI.

``breastseg demo`` runs exactly the commands a research team would type (printed before each step),
on the synthetic default generated on first use, and ends with the test metrics, the MLflow runs and
the registered model.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from breastseg.workflows.tracking import PROJECT_ROOT

__all__ = ["DEMO_OVERRIDES", "bundle_command", "format_stats", "latest_summary", "run_demo", "run_step"]

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


def _display(part: str) -> str:
    return part if re.fullmatch(r"[\w@%+=:,./-]+", part) else '"' + part + '"'


def bundle_command(run_id: str, config_files: Sequence[Path], overrides: dict[str, str]) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file ... --key value ...``."""
    files = [os.path.relpath(f, PROJECT_ROOT) for f in config_files]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(repr(f) for f in files) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_arg]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    return command


def run_step(command: list[str], cwd: Path) -> None:
    print("\n$ python " + " ".join(_display(part) for part in command[1:]), flush=True)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", ORT_DISABLE_TELEMETRY="1")
    completed = subprocess.run(command, cwd=cwd, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"step failed with exit code {completed.returncode}: {' '.join(command)}")


def latest_summary(eval_root: Path) -> Path | None:
    """The newest ``summary.json`` of the evaluations under ``eval_root``."""
    summaries = sorted(eval_root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    return summaries[-1] if summaries else None


def run_demo(bundle: str = "unetplusplus_mammo", max_epochs: int | None = None, dataset: str = "cbis-ddsm") -> int:
    """Train, evaluate and register ``bundle`` on the synthetic ``dataset``; print where everything is."""
    root = PROJECT_ROOT
    bundle_root = root / "bundles" / bundle
    configs = bundle_root / "configs"
    if not configs.is_dir():
        raise FileNotFoundError(f"no bundle {bundle!r} in {root / 'bundles'}")
    overrides = dict(DEMO_OVERRIDES.get(bundle, {}), dataset=dataset)
    if max_epochs is not None:
        overrides["max_epochs"] = str(max_epochs)
    run_step(bundle_command("training", [configs / "train.json"], overrides), root)
    eval_overrides = {k: v for k, v in overrides.items() if k != "max_epochs"}
    run_step(bundle_command("evaluating", [configs / "train.json", configs / "evaluate.json"], eval_overrides), root)
    summary_file = latest_summary(bundle_root / "runs" / dataset / "eval")
    if summary_file is None:
        raise SystemExit(f"evaluation wrote no summary under {bundle_root / 'runs' / dataset / 'eval'}")
    summary = json.loads(summary_file.read_text())
    print("\n=== test metrics (" + bundle + ", synthetic " + dataset + ") ===")
    for name, stats in summary.get("metrics", {}).items():
        print(f"  {name:<12} {format_stats(stats)}")
    print(f"\nper-case CSV, summary and plots: {summary_file.parent}")
    print(f"best model: {bundle_root / 'models' / 'model.pt'}")
    print(f"MLflow store: {os.environ.get('MLFLOW_TRACKING_URI') or root / 'mlflow' / 'mlruns.db'}"
          f" (experiment breastseg-{bundle}); registered model: models:/{bundle}@candidate")
    print("open the MLflow UI: bash mlflow/start_server.sh  ->  http://127.0.0.1:5000")
    return 0
