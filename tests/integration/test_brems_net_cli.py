"""The BReMS-Net bundle (paper 000) through the real ``python -m monai.bundle`` CLI and a real MLflow server.

One module-scoped training (2 epochs on a tiny synthetic CBIS-DDSM copy, 64x64 whole images) feeds the
registry, evaluation (Table 2 layout, pixel ROC), inference, cross-dataset and model-zoo checks; the
ablation command trains two of the Table 3 variants for one epoch.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from breastseg.workflows.data.synthetic import cbis_ddsm, inbreast
from breastseg.workflows.engine.model_context import load_weights
from bundle_cli import (
    ROOT, assert_ok, breastseg_cli, bundle_cli, client, export_checkpoint, export_onnx, find_runs, native_shape, onnx_max_difference, served_prediction, train, workspace_overrides,
)
from mlflow_server import running_mlflow_server

BUNDLE = ROOT / "bundles" / "brems_net"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
INFERENCE = str(BUNDLE / "configs" / "inference.json")
EXPERIMENT = "breastseg-brems_net"
SMALL = ["--image_size", "64", "--batch_size", "4", "--val_fraction", "0.2", "--test_fraction", "0.2"]
SMALL_OVERRIDES = ["image_size=64", "batch_size=4", "val_fraction=0.2", "test_fraction=0.2"]
HEADS = ("refined", "coarse", "side_1_4", "side_1_8", "side_1_16")


@pytest.fixture(scope="module")
def workspace(module_dir):
    root = module_dir
    cbis_ddsm.generate(root / "cbis", cases=6, seed=0, full_size=False, rows=256)
    inbreast.generate(root / "inbreast", cases=2, seed=0, rows=256)
    with running_mlflow_server(root / "mlflow") as (uri, server):
        yield {"root": root, "data": root / "cbis", "inbreast": root / "inbreast", "uri": uri}


def common(ws) -> list[str]:
    return workspace_overrides(ws, SMALL)


@pytest.fixture(scope="module")
def trained(workspace):
    return train(TRAIN, common(workspace), workspace)


def runs(ws, workflow: str):
    return find_runs(ws["uri"], EXPERIMENT, workflow)


def test_training_logs_paper_settings_and_aw_weights_per_epoch(workspace, trained):
    assert (workspace["root"] / "models" / "model.pt").is_file()
    (run,) = runs(workspace, "train")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["learning_rate"], params["lr_schedule"], params["lr_gamma"]) == ("0.0001", "exponential", "0.9")
    assert params["network"] == "brems_net" and params["variant"] == "brems_net" and run.data.tags["paper"] == "000"
    history = {head: client(workspace).get_metric_history(run.info.run_id, f"aw_weight_{head}") for head in HEADS}
    assert all([m.step for m in values] == [1, 2] for values in history.values())
    for epoch in range(2):
        assert sum(values[epoch].value for values in history.values()) == pytest.approx(1.0, abs=1e-4)
    assert [m.step for m in client(workspace).get_metric_history(run.info.run_id, "val_mean_dice")] == [1, 2]


def test_registered_model_serves_the_best_weights(workspace, trained, monkeypatch):
    version = client(workspace).get_model_version_by_alias("brems_net", "candidate")
    assert version.run_id == runs(workspace, "train")[0].info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace["uri"])
    model = mlflow.pyfunc.load_model("models:/brems_net@candidate")
    served = model.unwrap_python_model().bundle / "models" / "model.pt"
    assert served.read_bytes() == (workspace["root"] / "models" / "model.pt").read_bytes()
    image = sorted(workspace["data"].glob("**/*full mammogram images*/1-1.dcm"))[0]
    mask, probabilities = served_prediction(model, image)
    assert mask.shape == probabilities.shape == native_shape(image)
    assert 0.0 <= probabilities.min() <= probabilities.max() <= 1.0 and np.array_equal(mask > 0, probabilities >= 0.5)


def test_evaluation_writes_table_2_and_the_pixel_roc(workspace, trained):
    result = bundle_cli("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *common(workspace), tracking_uri=workspace["uri"])
    assert_ok(result)
    (run,) = runs(workspace, "evaluate")
    assert run.info.status == "FINISHED"
    eval_dir = workspace["root"] / "out" / "eval" / run.info.run_name
    table = (eval_dir / "table.md").read_text().splitlines()
    assert table[0] == "| Model | Sens. (%) | Spec. (%) | DSC (%) | HD95 (px) | AUC | n |"
    assert table[2].startswith("| Proposed Model |")
    roc = json.loads((eval_dir / "roc_curve.json").read_text())
    assert 0.0 <= roc["auc"] <= 1.0 and roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    row = json.loads((eval_dir / "table.json").read_text())
    assert row["AUC"] == pytest.approx(roc["auc"])
    artifacts = {a.path for a in client(workspace).list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/roc_curve.json", "evaluation/roc.png", "evaluation/cases.csv"} <= artifacts


def test_inference_writes_whole_image_masks(workspace, trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = next(workspace["data"].rglob("*full mammogram images*/1-1.dcm"))
    (images / "mammogram.dcm").write_bytes(source.read_bytes())
    result = bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / "masks"),
        "--ckpt_dir", str(workspace["root"] / "models"), "--image_size", "64",
    )
    assert_ok(result)
    import pydicom
    from PIL import Image

    header = pydicom.dcmread(source, stop_before_pixels=True)
    mask = np.asarray(Image.open(tmp_path / "masks" / "mammogram_pred.png"))
    assert mask.shape == (header.Rows, header.Columns) and set(np.unique(mask)) <= {0, 255}


def test_checkpoint_of_another_variant_is_refused(workspace, trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "mammogram.dcm").write_bytes(next(workspace["data"].rglob("*full mammogram images*/1-1.dcm")).read_bytes())
    result = bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / "masks"),
        "--ckpt_dir", str(workspace["root"] / "models"), "--image_size", "64", "--variant", "resnet_bfa",
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]  # refused from model.pt's context, before any weight is loaded
    assert last.startswith("error: ") and "variant='brems_net'" in last and "variant='resnet_bfa'" in last


def test_cross_dataset_evaluates_all_of_inbreast_without_training(workspace, trained, tmp_path):
    result = breastseg_cli(
        "cross-dataset", "--no-train", "--ckpt-dir", str(workspace["root"] / "models"), "--test-dir", str(workspace["inbreast"]),
        "--output-dir", str(tmp_path / "cross"), "--override", "image_size=64", tracking_uri=f"sqlite:///{tmp_path / 'cross.db'}",
    )
    assert_ok(result)
    datalist = json.loads((tmp_path / "cross" / "inbreast" / "datalist.json").read_text())
    lesion_images = [r for r in datalist["training"] if r["lesion_count"]]
    assert not datalist["validation"] and not datalist["test"] and lesion_images
    (eval_dir,) = (tmp_path / "cross" / "inbreast" / "eval").iterdir()
    assert json.loads((eval_dir / "summary.json").read_text())["n_cases"] == len(lesion_images)
    assert "trained on cbis-ddsm, tested on inbreast" in (tmp_path / "cross" / "cross_dataset_table.md").read_text()


def test_ablation_command_trains_variants_on_one_split(workspace, tmp_path):
    out = tmp_path / "ablation"
    overrides = [item for pair in zip(["--override"] * 5, ["max_epochs=1", *SMALL_OVERRIDES]) for item in pair]
    result = breastseg_cli(
        "ablation", "--dataset-dir", str(workspace["data"]), "--output-dir", str(out), "--variants", "resnet", "resnet_mhd_bfa",
        *overrides, tracking_uri=f"sqlite:///{tmp_path / 'ablation.db'}",
    )
    assert_ok(result)
    report = json.loads((out / "ablation.json").read_text())
    assert [row["model"] for row in report["rows"]] == ["ResNet", "ResNet + MHD + BFA"]
    assert [row["parameters"] for row in report["rows"]] == [27_281_764, 28_482_244]
    assert (out / "resnet" / "models" / "model.pt").is_file() and (out / "resnet_mhd_bfa" / "models" / "model.pt").is_file()
    assert len(list((out / "eval").iterdir())) == 2 and (out / "datalist.json").is_file()
    assert (out / "ablation_table.md").read_text().startswith("| Model | Sens. (%) |")


def test_checkpoint_exports_to_torchscript(workspace, trained, tmp_path):
    target = tmp_path / "model.ts"
    result = export_checkpoint("brems_net", workspace["root"] / "models" / "model.pt", target)
    assert_ok(result)
    scripted = torch.jit.load(str(target))
    assert scripted(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_checkpoint_exports_to_onnx(workspace, trained, tmp_path):
    checkpoint = workspace["root"] / "models" / "model.pt"
    assert_ok(export_onnx("brems_net", checkpoint, tmp_path / "model.onnx", (1, 1, 64, 64)))
    assert onnx_max_difference("brems_net", checkpoint, tmp_path / "model.onnx", (1, 1, 64, 64)) < 1e-4  # the trained weights


def test_crop_training_with_hard_negatives_recalibrates_on_a_subset(workspace, tmp_path):
    paths = ["--dataset_dir", str(workspace["data"]), "--output_dir", str(tmp_path / "out")]
    paths += ["--ckpt_dir", str(tmp_path / "models")]
    extra = ["--train_crop", "32", "--crop_negative_threshold", "0.8"]
    extra += ["--bn_recalibration", "True", "--bn_recalibration_images", "2"]
    result = train(TRAIN, [*paths, *SMALL, *extra], workspace, epochs=1)
    assert "batch norm recalibrated on 2 whole training images" in result.stdout + result.stderr
    state = load_weights(tmp_path / "models" / "model.pt")
    assert all(torch.isfinite(value).all() for key, value in state.items() if key.endswith("running_var"))
