"""The real-data path as a new user walks it: a dataset folder of one's own (a BUSI copy outside the project) trained
with ``--dataset_dir``, then the README's evaluation and nnU-Net export commands as written, through the real
``monai.bundle`` and ``breastseg`` command lines."""

from __future__ import annotations

import csv
import json

import pytest

from breastseg.workflows.data.synthetic import busi
from bundle_cli import ROOT, assert_ok, breastseg_cli, bundle_cli, client, find_runs

CONFIGS = ROOT / "bundles" / "hybrid_attention_us" / "configs"
TRAIN, EVALUATE = str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")
EXPERIMENT = "breastseg-hybrid_attention_us"
SMALL = ["--network", "basic_unet", "--image_size", "32", "--batch_size", "4"]  # the bundle's own split settings


@pytest.fixture(scope="module")
def trained(module_dir):
    data = module_dir / "my_busi"
    busi.generate(data, cases=30, seed=0, full_size=False)
    work = {"data": data, "out": module_dir / "out", "models": module_dir / "models",
            "uri": f"sqlite:///{module_dir / 'mlflow' / 'mlruns.db'}"}
    (module_dir / "mlflow").mkdir()
    assert_ok(bundle_cli("run", "training", "--config_file", TRAIN, "--dataset_dir", str(data), "--output_dir", str(work["out"]),
                         "--ckpt_dir", str(work["models"]), "--max_epochs", "1", *SMALL, tracking_uri=work["uri"]))
    return work


def _evaluate(work, *extra: str):
    # the README's command: the trained model and the output folder, no --dataset_dir
    return bundle_cli("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", "--output_dir", str(work["out"]),
                      "--ckpt_dir", str(work["models"]), *extra, tracking_uri=work["uri"])


def test_evaluation_takes_the_trained_folder_and_says_test_everywhere(trained):
    datalist = trained["out"] / "datalist.json"
    written = datalist.read_bytes()
    result = _evaluate(trained)
    assert_ok(result)
    assert datalist.read_bytes() == written  # the training run's split, from its own folder
    (run,) = find_runs(trained["uri"], EXPERIMENT, "evaluate")
    assert run.info.status == "FINISHED"
    metrics = set(run.data.metrics)
    assert {"test_mean_dice", "test_dice", "test_iou", "test_hd95_px"} <= metrics
    assert not [name for name in metrics if name.startswith("val_")], metrics
    history = client({"uri": trained["uri"]}).get_metric_history(run.info.run_id, "test_mean_dice")
    assert len(history) == 1  # logged once
    printed = result.stdout + result.stderr
    assert "test scores -- " in printed and "test_mean_dice" in printed
    assert "val_mean_dice" not in printed and "best value" not in printed and "best metric" not in printed
    test_cases = {r["case_id"] for r in json.loads(written)["test"] if r["lesion_count"]}
    with open(trained["out"] / "eval" / run.info.run_name / "cases.csv", newline="") as stream:
        assert {row["case_id"] for row in csv.DictReader(stream)} == test_cases


def test_an_evaluation_asking_for_another_split_is_told_what_differs(trained):
    result = _evaluate(trained, "--seed", "7", "--dataset_dir", str(trained["data"].parent / "elsewhere"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "holds the training run's split, made with folder " in last
    assert f"(this run: {trained['data'].parent / 'elsewhere'})" in last and "seed 0 (this run: 7)" in last
    assert "another run" not in last


def test_export_nnunet_takes_the_trained_image_size_and_exports_what_the_bundle_trained_on(trained, tmp_path):
    result = breastseg_cli("export-nnunet", "--datalist", str(trained["out"] / "datalist.json"), "--dataset-id", "501",
                           "--out", str(tmp_path / "nnUNet_raw"), "--bundle", "hybrid_attention_us", "--ckpt-dir", str(trained["models"]))
    assert_ok(result)
    manifest = json.loads((tmp_path / "nnUNet_raw" / "Dataset501_BUSI" / "breastseg_export.json").read_text())
    assert manifest["image_size"] == 32  # the model's, not train.json's 256
    assert "at image size 32: the model it was trained at" in result.stdout
    datalist = json.loads((trained["out"] / "datalist.json").read_text())
    records = [r for split in ("training", "validation", "test") for r in datalist[split]]
    assert sorted(case["case_id"] for case in manifest["cases"]) == sorted(r["case_id"] for r in records if r["lesion_count"])
    assert sorted(e["case_id"] for e in manifest["not_exported"]) == sorted(r["case_id"] for r in records if not r["lesion_count"])
    assert "trains and evaluates on lesion images only" in result.stdout
