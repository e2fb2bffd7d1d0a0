"""The ConnectedUNets bundle (paper 004) through the real ``python -m monai.bundle`` CLI and a real MLflow server.

One module-scoped training (2 epochs on a tiny synthetic CBIS-DDSM copy, 32x32 whole mammograms) feeds the
registry, evaluation (with the Table 4 threshold report), inference and model-zoo checks; a one-epoch run
on a tiny synthetic INbreast copy checks the other layout and the variant override.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from breastseg.workflows.data.synthetic import cbis_ddsm, inbreast
from breastseg.workflows.engine.model_context import load_weights
from bundle_cli import ROOT, assert_ok, bundle_cli, client, export_checkpoint, export_onnx, find_runs, native_shape, onnx_max_difference, served_prediction, train
from mlflow_server import running_mlflow_server

BUNDLE = ROOT / "bundles" / "connected_unets"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
INFERENCE = str(BUNDLE / "configs" / "inference.json")
EXPERIMENT = "breastseg-connected_unets"
SMALL = ["--image_size", "32", "--batch_size", "4"]


@pytest.fixture(scope="module")
def workspace(module_dir):
    root = module_dir
    cbis_ddsm.generate(root / "cbis", cases=6, seed=0, full_size=False, rows=256)
    inbreast.generate(root / "inbreast", cases=3, seed=0, rows=128)
    with running_mlflow_server(root / "mlflow") as (uri, _):
        yield {"root": root, "uri": uri}


def common(ws, dataset: str = "cbis") -> list[str]:
    out = ws["root"] / dataset
    return ["--dataset_dir", str(out), "--output_dir", str(out.with_name(dataset + "_out")), "--ckpt_dir", str(out.with_name(dataset + "_models")), *SMALL]


@pytest.fixture(scope="module")
def trained(workspace):
    return train(TRAIN, common(workspace), workspace)


def runs(ws, workflow: str):
    return find_runs(ws["uri"], EXPERIMENT, workflow)


def test_training_uses_the_papers_settings_and_is_tracked(workspace, trained):
    (run,) = [r for r in runs(workspace, "train") if r.data.tags["dataset"] == "cbis-ddsm"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["paper"] == "004" and run.data.tags["variant"] == "plusplus"
    assert run.data.params["learning_rate"] == "0.0001" and run.data.params["lr_schedule"] == "plateau"
    assert "BCEWithLogitsLoss" in run.data.params["loss._target_"]
    assert "official" in run.data.tags["split"]  # CBIS-DDSM's own test set
    assert [m.step for m in client(workspace).get_metric_history(run.info.run_id, "val_mean_dice")] == [1, 2]
    state = load_weights(workspace["root"] / "cbis_models" / "model.pt")
    assert any(key.startswith("encoder2.") for key in state) and any(".conv7." in key for key in state)  # ++ blocks


def test_best_model_is_registered_and_serves_a_mammogram_at_native_size(workspace, trained, monkeypatch):
    version = client(workspace).get_model_version_by_alias("connected_unets", "candidate")
    (run,) = [r for r in runs(workspace, "train") if r.data.tags["dataset"] == "cbis-ddsm"]
    assert version.run_id == run.info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace["uri"])
    model = mlflow.pyfunc.load_model("models:/connected_unets@candidate")
    image = sorted((workspace["root"] / "cbis").glob("**/*full mammogram images*/1-1.dcm"))[0]
    mask, probabilities = served_prediction(model, image)  # the whole-image chain's padding and resizing undone
    assert mask.shape == probabilities.shape == native_shape(image)
    assert 0.0 <= probabilities.min() <= probabilities.max() <= 1.0 and np.array_equal(mask > 0, probabilities >= 0.5)
    # requests in several threads at once (as MLflow's server runs them): each image gets the mask it gets alone
    mirrored = workspace["root"] / "mirrored.png"
    Image.fromarray(np.ascontiguousarray(pydicom.dcmread(image).pixel_array[:, ::-1]).astype(np.uint16)).save(mirrored)
    alone = {path: served_prediction(model, path)[0] for path in (image, mirrored)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda index: (index % 2, served_prediction(model, (image, mirrored)[index % 2])[0]), range(8)))
    for index, served in together:
        np.testing.assert_array_equal(served, alone[(image, mirrored)[index]])


def test_evaluation_reports_table_3_metrics_and_table_4_thresholds(workspace, trained):
    result = bundle_cli("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *common(workspace), tracking_uri=workspace["uri"])
    assert_ok(result)
    (run,) = runs(workspace, "evaluate")
    eval_dir = workspace["root"] / "cbis_out" / "eval" / run.info.run_name
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert {"dice", "iou", "accuracy", "hd_max_px", "hd95_px"} <= set(summary["metrics"])
    thresholds = json.loads((eval_dir / "thresholds.json").read_text())
    assert [t["label"] for t in thresholds["thresholds"]] == ["DS >= 0.45", "DS >= 0.65", "JI >= 0.35", "JI >= 0.55", "HD <= 2.75"]
    assert thresholds["n_cases"] == summary["n_cases"]
    assert thresholds["empty_predictions"]["count"] == summary["status_counts"]["missed"] + summary["status_counts"]["both_empty"]
    artifacts = {a.path for a in client(workspace).list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/cases.csv", "evaluation/thresholds.json", "evaluation/thresholds.csv"} <= artifacts
    metrics = client(workspace).get_run(run.info.run_id).data.metrics
    assert "test_cases_dice_ge_0.45" in metrics and "test_empty_predictions" in metrics
    assert "DS >= 0.45" in result.stdout + result.stderr


def test_inference_writes_masks_on_the_original_grid_and_quarantines_a_blank_image(workspace, trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = next((workspace["root"] / "cbis").rglob("*full mammogram images*/1-1.dcm"))
    (images / "mammogram.dcm").write_bytes(source.read_bytes())
    Image.fromarray(np.zeros((90, 60), np.uint8)).save(images / "blank.png")
    result = bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / "masks"),
        "--ckpt_dir", str(workspace["root"] / "cbis_models"), "--image_size", "32",
    )
    assert_ok(result)
    import pydicom

    header = pydicom.dcmread(source, stop_before_pixels=True)
    mask = np.asarray(Image.open(tmp_path / "masks" / "mammogram_pred.png"))
    assert mask.shape == (header.Rows, header.Columns) and set(np.unique(mask)) <= {0, 255}
    (entry,) = json.loads((tmp_path / "masks" / "quarantine.json").read_text())
    assert entry["case_id"] == "blank" and "no breast found" in entry["reason"]
    assert not (tmp_path / "masks" / "blank_pred.png").exists()


def test_inbreast_layout_trains_with_another_variant(workspace):
    result = bundle_cli(
        "run", "training", "--config_file", TRAIN, "--dataset", "inbreast", "--variant", "plus", "--max_epochs", "1",
        *common(workspace, "inbreast"), tracking_uri=workspace["uri"],
    )
    assert_ok(result)
    (run,) = [r for r in runs(workspace, "train") if r.data.tags["dataset"] == "inbreast"]
    assert run.data.tags["variant"] == "plus" and "grouped-random" in run.data.tags["split"]
    assert "val_mean_dice" in run.data.metrics
    state = load_weights(workspace["root"] / "inbreast_models" / "model.pt")
    assert not any(".conv7." in key for key in state)  # ConnectedUNets+ keeps the plain blocks


def test_checkpoint_exports_to_torchscript(workspace, trained, tmp_path):
    target = tmp_path / "model.ts"
    result = export_checkpoint("connected_unets", workspace["root"] / "cbis_models" / "model.pt", target)
    assert_ok(result)
    scripted = torch.jit.load(str(target))
    assert scripted(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_checkpoint_exports_to_onnx(workspace, trained, tmp_path):
    checkpoint = workspace["root"] / "cbis_models" / "model.pt"
    assert_ok(export_onnx("connected_unets", checkpoint, tmp_path / "model.onnx", (1, 1, 32, 32)))
    assert onnx_max_difference("connected_unets", checkpoint, tmp_path / "model.onnx", (1, 1, 32, 32)) < 1e-4  # the trained weights


def test_crop_training_recalibrates_batch_norm_on_the_cached_whole_images(workspace, tmp_path):
    out = workspace["root"] / "cbis"
    overrides = ["--dataset_dir", str(out), "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "models"), *SMALL]
    result = train(TRAIN, [*overrides, "--train_crop", "16", "--bn_recalibration", "True"], workspace, epochs=1)
    log = result.stdout + result.stderr
    assert "batch norm recalibrated on" in log and "whole training images" in log
    state = load_weights(tmp_path / "models" / "model.pt")
    assert all(torch.isfinite(value).all() for key, value in state.items() if key.endswith("running_var"))
