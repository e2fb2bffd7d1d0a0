"""The two-stage bundle (paper 002) through the real ``python -m monai.bundle`` CLI and a real MLflow server.

One module-scoped ``run training`` of ``train.json`` trains the detector (``detector.json``, as its own stage) and
then the segmenter, one epoch each on a tiny synthetic CBIS-DDSM (256-row mammograms, 64x64 patches, a narrow
YOLOv3); evaluation (Tables 1-2 of the detector stage, 4 and 5), inference (mask, overlay, boxes), the served pipeline, the
anchors check and the TorchScript export of the segmenter use it.
"""

from __future__ import annotations

import base64
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from breastseg.workflows.data.synthetic import cbis_ddsm
from breastseg.workflows.tracking.serving import decode_npy, decode_png
from bundle_cli import ROOT, assert_ok, bundle_cli, client, export_checkpoint, find_runs, train, workspace_overrides
from mlflow_server import breastseg_serve, post, running_mlflow_server

BUNDLE = ROOT / "bundles" / "two_stage_msf"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
INFERENCE = str(BUNDLE / "configs" / "inference.json")
EXPERIMENT = "breastseg-two_stage_msf"
DETECTOR = {"detector#base_channels": 4, "detector#batch_size": 4, "detector#frame_size": [256, 128]}
DETECTOR_TRAINING = {
    **DETECTOR,
    "detector#max_epochs": 1,
    "detector#input_size": [128, 64],
    "detector#min_width": 64,
    "detector#max_width": 96,
}
PIPELINE = ["--pipeline#view_sizes", "[[64, 32], [96, 64], [128, 64]]", "--pipeline#conf_threshold", "0.01"]
# every score and lambda 0: the one-epoch detector's boxes (its scores are all low) reach the registered pipeline's answer
SERVED_PIPELINE = [*PIPELINE[:2], "--pipeline#conf_threshold", "0.0", "--pipeline#fusion_threshold", "0.0"]
SMALL = ["--patch_size", "64", "--val_fraction", "0.2", "--test_fraction", "0.2"]


@pytest.fixture(scope="module")
def workspace(module_dir):
    root = module_dir
    cbis_ddsm.generate(root / "cbis", cases=12, seed=0, full_size=False, rows=256)  # enough masses for 9 anchors
    with running_mlflow_server(root / "mlflow") as (uri, server):
        yield {"root": root, "data": root / "cbis", "uri": uri}


@pytest.fixture(scope="module")
def trained(workspace):
    # the pipeline settings travel with the registered model: the served pipeline runs as SERVED_PIPELINE inference does
    overrides = [*workspace_overrides(workspace, SMALL), "--detector_stage#overrides", repr(DETECTOR_TRAINING), *SERVED_PIPELINE]
    return train(TRAIN, overrides, workspace, epochs=1)


def evaluation_overrides(workspace) -> list[str]:
    return [*workspace_overrides(workspace, SMALL), "--detector_stage#overrides", repr(DETECTOR), *PIPELINE]


def test_one_training_run_trains_the_detector_then_the_segmenter(workspace, trained):
    models = workspace["root"] / "models"
    assert (models / "detector" / "model.pt").is_file() and (models / "model.pt").is_file()
    anchors = json.loads((workspace["root"] / "out" / "detector" / "anchors.json").read_text())["anchors"]
    assert len(anchors) == 9
    runs = {run.data.tags["stage"]: run for run in find_runs(workspace["uri"], EXPERIMENT, "train")}
    assert set(runs) == {"detector", "segmenter"} and all(run.info.status == "FINISHED" for run in runs.values())
    assert runs["detector"].info.start_time < runs["segmenter"].info.start_time
    assert runs["segmenter"].data.params["network"] == "v19unetplusplus" and runs["segmenter"].data.params["batch_size"] == "4"
    assert runs["segmenter"].data.params["detector_stage.overrides.detector::max_epochs"] == "1"
    for name, stage in (("two_stage_msf_detector", "detector"), ("two_stage_msf", "segmenter")):  # the whole pipeline
        assert client(workspace).get_model_version_by_alias(name, "candidate").run_id == runs[stage].info.run_id


def test_evaluation_writes_tables_4_and_5_and_scores_misses(workspace, trained):
    assert_ok(bundle_cli("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *evaluation_overrides(workspace), tracking_uri=workspace["uri"]))
    (run,) = find_runs(workspace["uri"], EXPERIMENT, "evaluate")
    eval_dir = workspace["root"] / "out" / "eval" / run.info.run_name
    assert (eval_dir / "table4.md").read_text().splitlines()[2].startswith("| v19unetplusplus | ")
    table5 = (eval_dir / "table5.md").read_text().splitlines()
    assert [row.split(" | ")[1] for row in table5[2:]] == ["one-stage", "two-stage w/o MSF", "two-stage with MSF"]
    tables = json.loads((eval_dir / "tables.json").read_text())
    for setup in ("one_stage", "two_stage_single_scale", "two_stage_msf"):
        with open(eval_dir / setup / "cases.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == tables["table5"][setup]["n"] > 0
        for row in rows:  # nothing detected: an empty mask, scored as a miss
            assert (row["detected"] == "False") == (row["boxes"] == "[]")
            if row["detected"] == "False":
                assert row["status"] == "missed" and float(row["dice"]) == 0.0
        if setup == "one_stage":  # the whole image is always its one box
            assert all(row["detected"] == "True" for row in rows)
    detection = json.loads((eval_dir / "detection_tables.json").read_text())  # Tables 1-2 of the detector stage
    assert [row["lambda"] for row in detection["msf"]] == [0.0, 0.5, 0.6, 0.7] and len(detection["single_scale"]) == 3
    metrics = run.data.metrics
    assert "table2_msf_lambda_0.6_tpr" in metrics and "table1_ap50_view_128x64" in metrics
    assert {"table4_patch_dice", "table5_one_stage_dice", "table5_two_stage_single_scale_dice", "table5_two_stage_msf_dice"} <= set(metrics)
    assert metrics["table5_two_stage_msf_dice"] == pytest.approx(tables["table5"]["two_stage_msf"]["dice"])
    artifacts = {a.path for a in client(workspace).list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/table5.md", "evaluation/detection_tables.md", "evaluation/two_stage_msf", "evaluation/cases.csv"} <= artifacts
    assert "case_id" not in (eval_dir / "two_stage_msf" / "mlflow" / "cases.csv").read_text().splitlines()[0].split(",")


def _one_mammogram(workspace, folder):
    folder.mkdir()
    source = next(workspace["data"].rglob("*full mammogram images*/1-1.dcm"))
    (folder / "mammogram.dcm").write_bytes(source.read_bytes())
    return source


def inference(workspace, images, output, detector=DETECTOR, pipeline=PIPELINE):
    return bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(output),
        "--ckpt_dir", str(workspace["root"] / "models"), "--train_output_dir", str(workspace["root"] / "out"),
        "--patch_size", "64", "--detector_stage#overrides", repr(detector), *pipeline,
    )


def test_inference_writes_the_full_resolution_mask_an_overlay_and_the_boxes(workspace, trained, tmp_path):
    source = _one_mammogram(workspace, tmp_path / "images")
    assert_ok(inference(workspace, tmp_path / "images", tmp_path / "masks"))
    import pydicom
    from PIL import Image

    header = pydicom.dcmread(source, stop_before_pixels=True)
    mask = np.asarray(Image.open(tmp_path / "masks" / "mammogram_pred.png"))
    assert mask.shape == (header.Rows, header.Columns) and set(np.unique(mask)) <= {0, 255}
    picture = np.asarray(Image.open(tmp_path / "masks" / "mammogram_overlay.png"))
    assert picture.shape == (header.Rows, header.Columns, 3)
    with open(tmp_path / "masks" / "boxes.csv", newline="") as handle:
        boxes = list(csv.DictReader(handle))
    assert all(row["image"] == "mammogram.dcm" for row in boxes)
    assert (mask.max() == 0) == (not boxes)  # no box, no mask


def test_the_served_pipeline_segments_a_raw_dicom_as_inference_does(workspace, trained, tmp_path):
    """``breastseg serve`` of the registered pipeline (detector, fusion, segmenter in one MLflow model): a raw DICOM
    in, the full-resolution mask and the boxes with their scores out, as ``inference.json`` writes them."""
    _one_mammogram(workspace, tmp_path / "images")
    assert_ok(inference(workspace, tmp_path / "images", tmp_path / "masks", pipeline=SERVED_PIPELINE))
    dicom = tmp_path / "images" / "mammogram.dcm"
    body = {"dataframe_records": [{"image": base64.b64encode(dicom.read_bytes()).decode("ascii")}], "params": {"return_probabilities": True}}
    with breastseg_serve("two_stage_msf@candidate", workspace["uri"], tmp_path / "serve") as url:
        status, answer = post(url, body)
        refused, message = post(url, {"dataframe_records": [{"image": body["dataframe_records"][0]["image"], "roi": [[0, 8, 0, 8]]}]})
    assert status == 200, answer
    (prediction,) = answer["predictions"]
    mask = decode_png(prediction["mask"])
    np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "masks" / "mammogram_pred.png")))
    with open(tmp_path / "masks" / "boxes.csv", newline="") as handle:
        written = [[float(row[key]) for key in ("x0", "y0", "x1", "y1", "score")] for row in csv.DictReader(handle)]
    np.testing.assert_allclose(np.reshape(prediction["boxes"], (-1, 5)), np.reshape(written, (-1, 5)), rtol=1e-6)
    probabilities = decode_npy(prediction["probabilities"])
    # boxes found and their patches segmented (the one-epoch segmenter may leave the thresholded mask empty)
    assert written and probabilities.max() > 0 and np.array_equal(probabilities >= 0.5, mask > 0)
    assert refused == 400 and message["message"].startswith("row 0: 'roi' was given, but this model segments whole images")


def test_a_detector_checkpoint_with_other_anchors_is_refused(workspace, trained, tmp_path):
    _one_mammogram(workspace, tmp_path / "images")
    other = tmp_path / "anchors.json"
    other.write_text(json.dumps({"anchors": [[float(k + 1), float(k + 1)] for k in range(9)]}))
    result = inference(workspace, tmp_path / "images", tmp_path / "masks", {**DETECTOR, "detector#anchors_file": str(other)})
    assert result.returncode != 0
    assert "anchors" in result.stderr and "differ from the configured anchors" in result.stderr
    assert not (tmp_path / "masks").exists()


def test_segmenter_checkpoint_exports_to_torchscript(workspace, trained, tmp_path):
    target = tmp_path / "segmenter.ts"
    assert_ok(export_checkpoint("two_stage_msf", workspace["root"] / "models" / "model.pt", target))
    assert torch.jit.load(str(target))(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
