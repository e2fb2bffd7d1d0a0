"""Train and evaluate a bundle through the real ``monai.bundle`` CLI, as a research team would type it.

``breastseg demo``, ``cv``, ``ablation``, ``cross-dataset`` and ``compare`` all drive bundles this way:
each step is printed, then run as ``python -m monai.bundle run ...`` in the project root, and a failed
step stops the command with its exit code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from breastseg.workflows.tracking.runs import PROJECT_ROOT

__all__ = ["bundle_command", "bundle_configs", "evaluate", "latest_summary", "run_step", "train", "train_and_evaluate"]


def bundle_configs(bundle: str) -> Path:
    """``bundles/<bundle>/configs`` of the project.

    Raises:
        FileNotFoundError: naming the bundle and the folder searched.
    """
    configs = PROJECT_ROOT / "bundles" / bundle / "configs"
    if not configs.is_dir():
        raise FileNotFoundError(f"no bundle {bundle!r} in {PROJECT_ROOT / 'bundles'}")
    return configs


def _display(part: str) -> str:
    return part if re.fullmatch(r"[\w@%+=:,./-]+", part) else '"' + part + '"'


def bundle_command(run_id: str, config_files: Sequence[Path], overrides: Mapping[str, str]) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file ... --key value ...``."""
    files = [os.path.relpath(f, PROJECT_ROOT) for f in config_files]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(repr(f) for f in files) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_arg]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    return command


def run_step(command: list[str], cwd: Path = PROJECT_ROOT) -> None:
    """Print ``command`` as a user would type it, run it, and stop with its exit code if it fails."""
    print("\n$ python " + " ".join(_display(part) for part in command[1:]), flush=True)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", ORT_DISABLE_TELEMETRY="1")
    completed = subprocess.run(command, cwd=cwd, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"step failed with exit code {completed.returncode}: {' '.join(command)}")


def latest_summary(eval_root: Path, since: float = 0.0) -> Path | None:
    """The newest ``summary.json`` of the evaluations under ``eval_root`` written at or after ``since``."""
    summaries = [p for p in Path(eval_root).glob("*/summary.json") if p.stat().st_mtime >= since]
    return max(summaries, key=lambda p: p.stat().st_mtime) if summaries else None


def train(bundle: str, overrides: Mapping[str, str]) -> None:
    """``monai.bundle run training`` of the bundle's ``train.json`` with ``overrides``."""
    run_step(bundle_command("training", [bundle_configs(bundle) / "train.json"], overrides))


def evaluate(bundle: str, overrides: Mapping[str, str], eval_root: Path) -> Path:
    """``monai.bundle run evaluating`` (``train.json`` + ``evaluate.json``); the ``summary.json`` it wrote.

    ``max_epochs`` is dropped from ``overrides`` (a training setting the evaluation does not take);
    ``eval_root`` is the ``<output_dir>/eval`` folder the evaluation writes its run folder into.

    Raises:
        RuntimeError: when the evaluation wrote no new summary under ``eval_root``.
    """
    configs = bundle_configs(bundle)
    settings = {key: value for key, value in overrides.items() if key != "max_epochs"}
    started = time.time() - 1.0  # file times may be rounded to the second
    run_step(bundle_command("evaluating", [configs / "train.json", configs / "evaluate.json"], settings))
    summary = latest_summary(eval_root, since=started)
    if summary is None:
        raise RuntimeError(f"the evaluation of {bundle!r} wrote no summary under {eval_root}")
    return summary


def train_and_evaluate(bundle: str, overrides: Mapping[str, str], eval_root: Path) -> Path:
    """Train then evaluate ``bundle`` with the same ``overrides``; the evaluation's ``summary.json``."""
    train(bundle, overrides)
    return evaluate(bundle, overrides, eval_root)
