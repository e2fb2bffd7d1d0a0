"""The hybrid attention ultrasound bundle (paper 003) through the real ``python -m monai.bundle`` CLI.

One module-scoped training (2 epochs on a tiny synthetic BUSI copy, 32x32 frames) tracked by a real MLflow
server feeds the registry, evaluation, inference, model-zoo checks and the Friedman/Nemenyi comparison
command, which also trains and evaluates two MONAI baselines on the same split.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from breastseg.workflows.data.synthetic import busi, udiat
from bundle_cli import (
    ROOT, assert_ok, breastseg_cli, bundle_cli, client, export_checkpoint, export_onnx, find_runs, native_shape, onnx_max_difference, served_prediction, train, workspace_overrides,
)
from mlflow_server import running_mlflow_server

BUNDLE = ROOT / "bundles" / "hybrid_attention_us"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
INFERENCE = str(BUNDLE / "configs" / "inference.json")
EXPERIMENT = "breastseg-hybrid_attention_us"
SMALL = ["--image_size", "32", "--batch_size", "4", "--val_fraction", "0.2", "--test_fraction", "0.2"]


@pytest.fixture(scope="module")
def workspace(module_dir):
    root = module_dir
    busi.generate(root / "busi", cases=14, seed=0, full_size=False)
    with running_mlflow_server(root / "mlflow") as (uri, server):
        yield {"root": root, "data": root / "busi", "uri": uri}


def common(ws) -> list[str]:
    return workspace_overrides(ws, SMALL)


@pytest.fixture(scope="module")
def trained(workspace):
    return train(TRAIN, common(workspace), workspace)


def runs(ws, workflow: str):
    return find_runs(ws["uri"], EXPERIMENT, workflow)


def test_training_tracks_validation_loss_and_registers_the_model(workspace, trained, monkeypatch):
    (run,) = runs(workspace, "train")
    assert run.info.status == "FINISHED"
    assert run.data.tags["paper"] == "003" and run.data.tags["dataset"] == "busi"
    assert run.data.params["network"] == "hybrid_attention" and run.data.params["lr_schedule"] == "plateau"
    for metric in ("val_mean_dice", "val_loss", "train_epoch_loss"):
        assert [m.step for m in client(workspace).get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    datalist = json.loads((workspace["root"] / "out" / "datalist.json").read_text())
    assert datalist["duplicates"]  # the synthetic copy plants an exact duplicate image: listed, not trained on twice
    # the split's audit is logged with the run: leak counts and the contact sheet of the near-duplicate groups
    assert datalist["near_duplicates"] and "near-duplicates=group leaked-test-images=0" in run.data.tags["split"]
    logged = {a.path for a in client(workspace).list_artifacts(run.info.run_id, "split_audit")}
    assert logged == {"split_audit/summary.json", "split_audit/contact_sheet.png"}
    summary = json.loads(open(client(workspace).download_artifacts(run.info.run_id, "split_audit/summary.json")).read())
    assert summary["near_duplicate_groups"] == len(datalist["near_duplicates"]) and summary["leaked_test_images"] == 0
    version = client(workspace).get_model_version_by_alias("hybrid_attention_us", "candidate")
    assert version.run_id == run.info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace["uri"])
    model = mlflow.pyfunc.load_model("models:/hybrid_attention_us@candidate")
    image = sorted(p for p in workspace["data"].glob("**/*.png") if "_mask" not in p.stem)[0]
    mask, probabilities = served_prediction(model, image)  # a BUSI PNG as sent, its mask at its own size
    assert mask.shape == probabilities.shape == native_shape(image)
    assert 0.0 <= probabilities.min() <= probabilities.max() <= 1.0 and np.array_equal(mask > 0, probabilities >= 0.5)


def test_evaluation_reports_the_papers_metrics(workspace, trained):
    result = bundle_cli("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *common(workspace), tracking_uri=workspace["uri"])
    assert_ok(result)
    (run,) = runs(workspace, "evaluate")
    eval_dir = workspace["root"] / "out" / "eval" / run.info.run_name
    header = (eval_dir / "cases.csv").read_text().splitlines()[0].split(",")
    assert {"case_id", "pathology", "dice", "iou", "sensitivity", "accuracy", "precision", "specificity"} <= set(header)
    rows = (eval_dir / "cases.csv").read_text().splitlines()[1:]
    assert rows and not any(",normal," in row for row in rows)  # benign + malignant only by default
    artifacts = {a.path for a in client(workspace).list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/cases.csv" in artifacts and "evaluation/confusion_matrix.png" in artifacts
    workspace["eval_dir"] = eval_dir


def test_compare_command_trains_baselines_on_the_same_split(workspace, trained):
    if "eval_dir" not in workspace:
        pytest.skip("needs the evaluation of test_evaluation_reports_the_papers_metrics")
    out = workspace["root"] / "compare"
    result = breastseg_cli(
        "compare", "--bundle", "hybrid_attention_us",
        "--networks", "basic_unet,attention_unet", "--cases", f"hybrid_attention={workspace['eval_dir']}",
        "--dataset-dir", str(workspace["data"]), "--out", str(out), "--override", "max_epochs=1",
        *[f"--override={key[2:]}={value}" for key, value in zip(SMALL[::2], SMALL[1::2])],
        tracking_uri=workspace["uri"],
    )
    assert_ok(result)
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["methods"] == ["hybrid_attention", "basic_unet", "attention_unet"] and summary["n"] >= 2
    assert (out / "critical_difference.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "nemenyi_pvalues.csv").read_text().startswith("method,hybrid_attention,basic_unet,attention_unet")
    run = client(workspace).get_run(summary["mlflow_run_id"])
    assert run.data.params["methods"] == "hybrid_attention,basic_unet,attention_unet"
    assert "Friedman chi2" in result.stdout and "Holm p =" in result.stdout
    paired = breastseg_cli(
        "compare", "--cases", f"hybrid_attention={workspace['eval_dir']}", "--cases", f"basic_unet={out / 'basic_unet' / 'eval'}",
        "--out", str(out / "paired"), tracking_uri=workspace["uri"],
    )
    assert_ok(paired)
    summary = json.loads((out / "paired" / "comparison.json").read_text())
    assert summary["test"] == "wilcoxon" and summary["n"] + summary["n_left_out"] >= 2
    splits = {split.split(" of ")[0] for split in summary["splits"].values()}  # the same split, from two datalists
    assert len(splits) == 1 and splits.pop().startswith("busi test split")
    assert (out / "paired" / "paired_plot.png").read_bytes()[:4] == b"\x89PNG" and "Wilcoxon signed-rank" in paired.stdout


def test_udiat_layout_trains(workspace, tmp_path):
    udiat.generate(tmp_path / "udiat", cases=10, seed=0, full_size=False)
    result = bundle_cli(
        "run", "training", "--config_file", TRAIN, "--dataset", "udiat", "--dataset_dir", str(tmp_path / "udiat"),
        "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "1", *SMALL,
        tracking_uri=workspace["uri"],
    )
    assert_ok(result)
    assert (tmp_path / "models" / "model.pt").is_file()


def test_inference_writes_masks_the_size_of_the_images(workspace, trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = next((workspace["data"]).rglob("malignant (1).png"))
    (images / "frame.png").write_bytes(source.read_bytes())
    result = bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / "masks"),
        "--ckpt_dir", str(workspace["root"] / "models"), "--image_size", "32",
    )
    assert_ok(result)
    mask = np.asarray(Image.open(tmp_path / "masks" / "frame_pred.png"))
    assert mask.shape == np.asarray(Image.open(source)).shape[:2]
    assert set(np.unique(mask)) <= {0, 255}


def test_checkpoint_exports_to_torchscript(workspace, trained, tmp_path):
    target = tmp_path / "model.ts"
    result = export_checkpoint("hybrid_attention_us", workspace["root"] / "models" / "model.pt", target)
    assert_ok(result)
    assert torch.jit.load(str(target))(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_checkpoint_exports_to_onnx(workspace, trained, tmp_path):
    checkpoint = workspace["root"] / "models" / "model.pt"
    assert_ok(export_onnx("hybrid_attention_us", checkpoint, tmp_path / "model.onnx", (1, 1, 64, 64)))
    assert onnx_max_difference("hybrid_attention_us", checkpoint, tmp_path / "model.onnx", (1, 1, 64, 64)) < 1e-4  # the trained weights
