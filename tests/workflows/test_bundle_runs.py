"""The CLI driver shared by ``breastseg demo``, ``cv``, ``ablation``, ``cross-dataset`` and ``compare``."""

from __future__ import annotations

import os
import sys
import time

import pytest

from breastseg.workflows.commands import bundle_runs
from breastseg.workflows.tracking.runs import PROJECT_ROOT


def test_bundle_configs_names_the_missing_bundle():
    assert bundle_runs.bundle_configs("brems_net") == PROJECT_ROOT / "bundles" / "brems_net" / "configs"
    with pytest.raises(FileNotFoundError, match="no bundle 'not_a_bundle'"):
        bundle_runs.bundle_configs("not_a_bundle")


def test_bundle_command_is_the_monai_bundle_cli_with_relative_configs():
    configs = bundle_runs.bundle_configs("brems_net")
    command = bundle_runs.bundle_command("evaluating", [configs / "train.json", configs / "evaluate.json"], {"max_epochs": "2"})
    assert command[:5] == [sys.executable, "-m", "monai.bundle", "run", "evaluating"]
    assert command[5:] == [
        "--config_file",
        "['bundles/brems_net/configs/train.json','bundles/brems_net/configs/evaluate.json']",
        "--max_epochs",
        "2",
    ]


def test_latest_summary_ignores_summaries_older_than_the_evaluation(tmp_path):
    old, new = tmp_path / "run_a" / "summary.json", tmp_path / "run_b" / "summary.json"
    for path in (old, new):
        path.parent.mkdir()
        path.write_text("{}")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now - 50, now - 50))
    assert bundle_runs.latest_summary(tmp_path) == new
    assert bundle_runs.latest_summary(tmp_path, since=now - 10) is None


def test_a_failing_step_stops_with_its_exit_code(tmp_path):
    with pytest.raises(SystemExit, match="exit code 3"):
        bundle_runs.run_step([sys.executable, "-c", "raise SystemExit(3)"], tmp_path)
