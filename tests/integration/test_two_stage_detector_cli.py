"""The detector stage of the two-stage MSF bundle (paper 002) through ``python -m monai.bundle run training`` with
``configs/detector.json`` on a tiny synthetic CBIS-DDSM and a real MLflow server: checkpoints, the k-means anchors
(file, weights, logged parameters), the validation AP per epoch, and the registered detector."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from breastseg.workflows.data.synthetic import cbis_ddsm
from breastseg.workflows.two_stage.detection import load_detector, read_anchors
from bundle_cli import ROOT, assert_ok, bundle_cli, client, find_runs, workspace_overrides
from mlflow_server import running_mlflow_server

BUNDLE = ROOT / "bundles" / "two_stage_msf"
DETECTOR = str(BUNDLE / "configs" / "detector.json")
EXPERIMENT = "breastseg-two_stage_msf"
SMALL = [
    "--bundle_root", str(BUNDLE), "--val_fraction", "0.2", "--test_fraction", "0.1",
    "--detector#frame_size", "[256,128]", "--detector#input_size", "[128,64]",
    "--detector#min_width", "32", "--detector#max_width", "64", "--detector#scale_interval", "2",
    "--detector#base_channels", "2", "--detector#batch_size", "4",
]


@pytest.fixture(scope="module")
def workspace(module_dir):
    root = module_dir
    cbis_ddsm.generate(root / "cbis", cases=9, seed=0, full_size=False, rows=256)
    with running_mlflow_server(root / "mlflow") as (uri, _):
        yield {"root": root, "data": root / "cbis", "uri": uri}


@pytest.fixture(scope="module")
def trained(workspace):
    result = bundle_cli(
        "run", "training", "--config_file", DETECTOR, "--detector#max_epochs", "2", *workspace_overrides(workspace, SMALL),
        tracking_uri=workspace["uri"],
    )
    assert_ok(result)
    return result


def test_training_writes_checkpoints_and_anchors_that_travel_with_the_weights(workspace, trained):
    models = workspace["root"] / "models" / "detector"
    assert (models / "model.pt").is_file() and (models / "checkpoint_last.pt").is_file()
    record = json.loads((workspace["root"] / "out" / "detector" / "anchors.json").read_text())
    anchors = record["anchors"]
    assert np.shape(anchors) == (9, 2) and np.all(np.diff(np.prod(anchors, axis=1)) >= 0)
    assert record["input_size"] == [128, 64] and record["frame_size"] == [256, 128] and record["boxes"] >= 9
    weights = torch.load(models / "model.pt", weights_only=True)
    torch.testing.assert_close(weights["anchors"], torch.tensor(anchors, dtype=torch.float32))
    last = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["max_epochs"] == 2 and "best_metric" in last
    detector = load_detector(models / "model.pt", read_anchors(workspace["root"] / "out" / "detector" / "anchors.json"), base_channels=2)
    assert detector(torch.rand(1, 1, 128, 64)).shape[-1] == 6
    with pytest.raises(ValueError, match="differ from the configured anchors"):
        load_detector(models / "model.pt", [[w * 2, h] for w, h in anchors], base_channels=2)


def test_run_logs_anchors_losses_and_validation_ap_per_epoch(workspace, trained):
    (run,) = find_runs(workspace["uri"], EXPERIMENT, "train")
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "detector" and run.data.tags["paper"] == "002"
    anchors = json.loads((workspace["root"] / "out" / "detector" / "anchors.json").read_text())["anchors"]
    assert run.data.params["detector_anchors"] == str(anchors)
    assert run.data.params["detector.learning_rate"] == "0.001"
    history = client(workspace).get_metric_history(run.info.run_id, "val_ap50")
    assert [m.step for m in history] == [1, 2] and all(0.0 <= m.value <= 1.0 for m in history)
    for term in ("loss_box", "loss_objectness", "train_epoch_loss"):
        assert [m.step for m in client(workspace).get_metric_history(run.info.run_id, term)] == [1, 2]


def test_registered_detector_serves_the_best_weights(workspace, trained, monkeypatch):
    version = client(workspace).get_model_version_by_alias("two_stage_msf_detector", "candidate")
    assert version.run_id == find_runs(workspace["uri"], EXPERIMENT, "train")[0].info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace["uri"])
    model = mlflow.pyfunc.load_model("models:/two_stage_msf_detector@candidate")
    predictions = model.predict(np.random.rand(2, 1, 128, 64).astype(np.float32))
    assert predictions.shape == (2, 3 * (16 * 8 + 8 * 4 + 4 * 2), 6)
    weights = torch.load(workspace["root"] / "models" / "detector" / "model.pt", weights_only=True)
    served = model.unwrap_python_model().network.state_dict()
    assert all(torch.equal(served[key], value) for key, value in weights.items())


def test_unknown_detector_override_is_refused(workspace):
    result = bundle_cli("run", "training", "--config_file", DETECTOR, "--detector#max_epoch", "2", *workspace_overrides(workspace, SMALL))
    assert result.returncode != 0
    assert "unknown override --detector#max_epoch" in result.stderr + result.stdout
