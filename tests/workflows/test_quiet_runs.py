"""What a user should not see on every run: MLflow's type-hint advice, its pickle warning and download
bar when a bundle is registered, and MONAI's "Got new best metric" in a test evaluation."""

from __future__ import annotations

import logging
import subprocess
import sys

import torch
from monai.data import DataLoader, Dataset, MetaTensor

from breastseg.workflows.engine.harness import build_evaluator
from breastseg.workflows.engine.postprocessing import binary_postprocessing
from breastseg.workflows.evaluation.evaluate import CaseReportWriter, key_metric

_REGISTER = """
import sys, torch, mlflow
from breastseg.networks import build_network
from breastseg.workflows.tracking.registry import log_bundle_model
from breastseg.workflows.tracking.runs import PROJECT_ROOT
folder = sys.argv[1]
torch.save(build_network("hybrid_attention", spatial_dims=2, in_channels=1, out_channels=1).state_dict(), folder + "/model.pt")
uri = f"sqlite:///{folder}/mlruns.db"
client = mlflow.MlflowClient(uri)
run = client.create_run(client.create_experiment("quiet", artifact_location=f"file://{folder}/artifacts"))
result = log_bundle_model(run.info.run_id, PROJECT_ROOT / "bundles" / "hybrid_attention_us", folder + "/model.pt", "quiet", (1, 32, 32), uri)
print("registered", result["version"])
"""


def test_registering_a_bundle_shows_no_mlflow_advice_pickle_warning_or_download_bar(tmp_path):
    result = subprocess.run([sys.executable, "-c", _REGISTER, str(tmp_path)], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "registered 1" in result.stdout
    for noise in ("Add type hints", "CloudPickle", "Downloading artifacts"):
        assert noise not in output, noise


def _case(index: int) -> dict:
    label = torch.zeros(1, 8, 8)
    label[0, 2:5, 2:5] = 1
    return {"image": torch.rand(1, 8, 8), "label": MetaTensor(label, affine=torch.eye(4)), "case_id": f"case{index}"}


def test_a_test_evaluation_does_not_announce_a_new_best_metric(tmp_path, caplog):
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    writer = CaseReportWriter(tmp_path / "eval", {}, plots=())
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset([_case(i) for i in range(2)]), batch_size=2), network,
        key_val_metric=key_metric("val_mean_dice"), postprocessing=binary_postprocessing(), val_handlers=[writer],
    )
    with caplog.at_level(logging.INFO):
        evaluator.run()
    assert (tmp_path / "eval" / "cases.csv").is_file()
    assert "Got new best metric" not in caplog.text
