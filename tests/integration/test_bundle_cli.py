"""The UNet++ bundle through the real ``python -m monai.bundle`` CLI, tracked by a real MLflow server.

One module-scoped training (2 epochs on a tiny synthetic CBIS-DDSM copy, 32x32 ROIs) feeds the checks
of the registry, evaluation, resume, inference and the model-zoo bundle checks.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from breastseg.networks import build_network
from breastseg.transforms import square_box
from breastseg.workflows.data.synthetic import cbis_ddsm
from breastseg.workflows.engine.model_context import load_weights
from breastseg.workflows.errors import UserValueError
from breastseg.workflows.tracking.registry import load_model
from breastseg.workflows.tracking.serving import decode_npy, decode_png
from bundle_cli import ROOT, assert_ok, breastseg_cli, bundle_cli, client, export_checkpoint, export_onnx, find_runs, onnx_max_difference, run_command, train, workspace_overrides
from mlflow_server import breastseg_serve, free_port, post, running_mlflow_server

BUNDLE = ROOT / "bundles" / "unetplusplus_mammo"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
INFERENCE = str(BUNDLE / "configs" / "inference.json")
EXPERIMENT = "breastseg-unetplusplus_mammo"
SMALL = ["--image_size", "32", "--batch_size", "4", "--val_fraction", "0.2", "--test_fraction", "0.2"]


@pytest.fixture(scope="module")
def workspace(module_dir):
    root = module_dir
    data = root / "cbis"
    cbis_ddsm.generate(data, cases=6, seed=0, full_size=False, rows=256)
    with running_mlflow_server(root / "mlflow") as (uri, server):
        yield {"root": root, "data": data, "uri": uri, "server": server}


def common(ws) -> list[str]:
    return workspace_overrides(ws, SMALL)


@pytest.fixture(scope="module")
def trained(workspace):
    return train(TRAIN, common(workspace), workspace)


def runs(ws, workflow: str | None = None):
    return find_runs(ws["uri"], EXPERIMENT, workflow)


def test_training_writes_checkpoints_and_a_finished_run(workspace, trained):
    models = workspace["root"] / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_last.pt").is_file()
    last = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["max_epochs"] == 2
    (run,) = runs(workspace, "train")
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == "2"
    assert run.data.params["network"] == "unetplusplus"
    assert run.data.tags["paper"] == "001" and run.data.tags["dataset"] == "cbis-ddsm"
    assert run.data.tags["workflow"] == "train"  # as evaluation runs carry 'evaluate'
    history = client(workspace).get_metric_history(run.info.run_id, "val_mean_dice")
    assert [m.step for m in history] == [1, 2]
    assert [m.step for m in client(workspace).get_metric_history(run.info.run_id, "train_epoch_loss")] == [1, 2]


def test_no_patient_identifier_reaches_mlflow(workspace, trained):
    for run in runs(workspace):
        values = list(run.data.params.values()) + list(run.data.tags.values())
        assert not any("P_0" in value for value in values), run.info.run_name
        assert not any("patient" in key.lower() for key in run.data.params)


def test_best_model_is_registered_with_candidate_alias_pinned_requirements_and_its_code(workspace, trained, monkeypatch):
    version = client(workspace).get_model_version_by_alias("unetplusplus_mammo", "candidate")
    (run,) = runs(workspace, "train")
    assert version.run_id == run.info.run_id
    assert client(workspace).get_model_version_by_alias("unetplusplus_mammo", "candidate-cbis-ddsm").version == version.version
    assert version.tags["dataset"] == "cbis-ddsm" and version.tags["paper"] == "001" and version.tags["image_size"] == "32"
    assert len(version.tags["split_hash"]) == 12 and 0.0 <= float(version.tags["val_mean_dice"]) <= 1.0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace["uri"])  # not mlflow.set_tracking_uri: it would outlive this test
    stored = client(workspace).get_model_version_download_uri("unetplusplus_mammo", version.version)
    artifacts = Path(mlflow.artifacts.download_artifacts(stored, dst_path=str(workspace["root"] / "registered")))
    # the registered bundle holds the trained model.pt itself (weights stored once, not pickled again with the model)
    assert (artifacts / "artifacts" / "unetplusplus_mammo" / "models" / "model.pt").read_bytes() == (workspace["root"] / "models" / "model.pt").read_bytes()
    assert (artifacts / "python_model.pkl").stat().st_size < (workspace["root"] / "models" / "model.pt").stat().st_size / 10
    # requirements pinned to the versions that trained it; breastseg (not on PyPI) travels as code
    requirements = (artifacts / "requirements.txt").read_text().split()
    for name in ("torch", "monai", "mlflow", "numpy", "pydicom", "pillow", "pytorch-ignite"):
        (pin,) = [line for line in requirements if line.split("==")[0] == name]
        assert pin == f"{name}=={importlib.metadata.version(name).split('+')[0]}"
    assert all("==" in line for line in requirements) and not any(line.startswith("breastseg") for line in requirements)
    assert (artifacts / "code" / "breastseg" / "workflows" / "tracking" / "serving.py").is_file()
    signature = mlflow.models.get_model_info(stored).signature
    assert signature.inputs.input_names() == ["image", "array", "roi"] and signature.params.to_dict()[0]["name"] == "return_probabilities"


def _full_mammogram(workspace) -> Path:
    return sorted(workspace["data"].glob("**/*full mammogram images*/1-1.dcm"))[0]


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def cli_masks(workspace, trained):
    """A synthetic DICOM (pydicom), the same pixels as a 16-bit PNG and the DICOM again with two overlapping lesion
    boxes, with the masks ``inference.json`` writes for them through the real CLI (``--roi_file`` boxes for the
    DICOMs, the PNG as a whole image; ``--lesion_masks True``)."""
    images = workspace["root"] / "serve_images"
    images.mkdir()
    dicom, two_lesions = images / "mammogram.dcm", images / "two_lesions.dcm"
    shutil.copy2(_full_mammogram(workspace), dicom)
    shutil.copy2(dicom, two_lesions)
    pixels = pydicom.dcmread(dicom).pixel_array
    png = images / "mammogram_png.png"
    Image.fromarray(pixels.astype(np.uint16)).save(png)
    rows, cols = pixels.shape
    box = [rows // 4, 3 * rows // 4, cols // 5, 4 * cols // 5]
    boxes = [[rows // 5, rows // 2, cols // 6, cols // 2], [rows // 3, 4 * rows // 5, cols // 3, 5 * cols // 6]]  # overlapping
    roi_file = workspace["root"] / "serve_roi.csv"
    lines = [[dicom.name, *box]] + [[two_lesions.name, *b] for b in boxes]
    roi_file.write_text("image,row_start,row_end,col_start,col_end\n" + "".join(",".join(map(str, line)) + "\n" for line in lines))
    out = workspace["root"] / "serve_cli"
    assert_ok(bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--roi_file", str(roi_file),
        "--output_dir", str(out), "--ckpt_dir", str(workspace["root"] / "models"), "--lesion_masks", "True",
    ))
    masks = {path.stem: np.asarray(Image.open(out / f"{path.stem}_pred.png")) for path in (dicom, png, two_lesions)}
    lesions = [np.asarray(Image.open(out / f"two_lesions_pred_lesion{k}.png")) for k in (1, 2)]
    return {"dicom": dicom, "png": png, "two_lesions": two_lesions, "pixels": pixels, "box": box, "boxes": boxes, "masks": masks, "lesions": lesions}


@pytest.fixture(scope="class")
def served(workspace, cli_masks):
    """``breastseg serve`` of the candidate (the trained model.pt), with an image folder and small limits."""
    allowed = workspace["root"] / "allowed"
    allowed.mkdir(exist_ok=True)
    shutil.copy2(cli_masks["png"], allowed / "mammogram_png.png")
    (allowed / "outside.dcm").symlink_to(cli_masks["dicom"])  # a link leading out of the folder
    limits = ["--max-pixels", str(MAX_PIXELS), "--max-bytes", str(MAX_BYTES)]
    with breastseg_serve("unetplusplus_mammo@candidate", workspace["uri"], workspace["root"] / "serve", "--image-folder", str(allowed), *limits) as url:
        yield {"url": url, "folder": allowed}


MAX_PIXELS, MAX_BYTES = 100_000, 300_000  # the test images: 256 rows, 43,000 pixels, 87 kB


def _answer_is_one_line(status: int, answer: dict, workspace) -> str:
    """The refusal's message, checked to be one line of 400 with no stack trace and no server path."""
    assert status == 400 and "stack_trace" not in answer, answer
    message = answer["message"]
    assert "\n" not in message and "Traceback" not in message and "/tmp" not in message and str(workspace["root"]) not in message
    return message


class TestServedModel:
    """``breastseg serve`` (``mlflow models serve``) of the registered candidate on 127.0.0.1, real HTTP requests."""

    def test_a_posted_dicom_and_png_are_segmented_as_inference_json_does(self, served, cli_masks, workspace):
        """base64 DICOM (with its lesion box) and PNG in, masks at native size out, equal to what ``inference.json``
        writes for the same files; probabilities on request."""
        rows, cols = cli_masks["pixels"].shape
        assert rows != cols  # a transposed mask could not pass the shape check
        body = {
            "dataframe_records": [{"image": _base64(cli_masks["dicom"]), "roi": [cli_masks["box"]]}, {"image": _base64(cli_masks["png"]), "roi": None}],  # a field another row has: null
            "params": {"return_probabilities": True},
        }
        status, answer = post(served["url"], body)
        assert status == 200, answer
        for prediction, path in zip(answer["predictions"], (cli_masks["dicom"], cli_masks["png"])):
            mask = decode_png(prediction["mask"])
            assert mask.shape == (rows, cols) == (prediction["rows"], prediction["columns"])
            np.testing.assert_array_equal(mask, cli_masks["masks"][path.stem])
            assert prediction["lesion_pixels"] == int((mask > 0).sum())
            probabilities = decode_npy(prediction["probabilities"])
            assert probabilities.shape == (rows, cols) and probabilities.dtype == np.float32
            np.testing.assert_array_equal(probabilities >= 0.5, mask > 0)
        r0, r1, c0, c1 = square_box(cli_masks["box"], (rows, cols))  # the lesion's box with the training margin
        dicom_probabilities = decode_npy(answer["predictions"][0]["probabilities"])
        outside = dicom_probabilities.copy()
        outside[r0:r1, c0:c1] = 0
        assert not outside.any() and dicom_probabilities[r0:r1, c0:c1].std() > 0  # the box was segmented, nothing else

    def test_several_boxes_give_the_union_of_the_lesion_masks_as_the_command_line_does(self, served, cli_masks):
        body = {"dataframe_records": [{"image": _base64(cli_masks["two_lesions"]), "roi": cli_masks["boxes"]}], "params": {"return_lesion_masks": True}}
        status, answer = post(served["url"], body)
        assert status == 200, answer
        (prediction,) = answer["predictions"]
        mask, lesions = decode_png(prediction["mask"]), [decode_png(text) for text in prediction["lesion_masks"]]
        np.testing.assert_array_equal(mask, cli_masks["masks"]["two_lesions"])  # one native-size mask, as --roi_file gives it
        for lesion, written in zip(lesions, cli_masks["lesions"], strict=True):
            np.testing.assert_array_equal(lesion, written)
        np.testing.assert_array_equal(np.maximum(*lesions), mask)  # the mask is the union of the lesions' masks
        assert all(lesion.any() for lesion in lesions) and not np.array_equal(*lesions)

    def test_paths_are_read_only_inside_the_image_folder(self, served, cli_masks, workspace):
        status, answer = post(served["url"], {"dataframe_records": [{"image": "mammogram_png.png"}, {"image": str(served["folder"] / "mammogram_png.png")}]})
        assert status == 200, answer
        for prediction in answer["predictions"]:
            np.testing.assert_array_equal(decode_png(prediction["mask"]), cli_masks["masks"]["mammogram_png"])
        refused = (
            str(cli_masks["dicom"]),  # exists, outside the folder
            str(workspace["root"] / "no_such_image.dcm"),  # does not exist
            "../serve_images/mammogram.dcm",  # '..' out of the folder to an existing image
            "outside.dcm",  # a symbolic link in the folder to an image outside it
            "/etc/passwd",
        )
        messages = {_answer_is_one_line(*post(served["url"], {"dataframe_records": [{"image": value}]}), workspace) for value in refused}
        (message,) = messages  # the same answer whether or not the file exists
        assert message.startswith("row 0: 'image' is not base64") and "image folder" in message

    def test_bad_input_is_answered_in_one_line_without_a_trace(self, served, cli_masks, workspace):
        png, dicom_bytes = _base64(cli_masks["png"]), cli_masks["dicom"].read_bytes()
        truncated = base64.b64encode(dicom_bytes[: len(dicom_bytes) // 2]).decode("ascii")  # the header reads, the pixels do not
        rows, cols = cli_masks["pixels"].shape
        cases = [
            ({"image": "not an image"}, "row 0: 'image' is not base64"),
            ({"image": base64.b64encode(b"plain text").decode()}, "row 0: the base64 'image' is neither a PNG nor a DICOM file"),
            ({"array": [[0.5, 1.5]]}, "row 0: 'array' must hold integer pixel values"),
            ({"image": png, "array": [[1]]}, "row 0: give exactly one of 'image'"),
            ({"image": png, "roi": [[1, 2, 3]]}, "row 0: 'roi' must be a list of boxes"),
            ({"image": png, "roi": [[0, rows + 1, 0, cols]]}, f"row 0: lesion box [0, {rows + 1}, 0, {cols}] of row00000.png is empty or outside its {rows} rows"),
            ({"image": truncated}, "row 0: the bundle's chain could not read the image: The number of bytes of pixel data is less"),
            ({"images": png}, "no usable row: send one row per image"),
        ]
        for record, expected in cases:
            message = _answer_is_one_line(*post(served["url"], {"dataframe_records": [record]}), workspace)
            assert message.startswith(expected), message

    def test_requests_over_the_limits_are_refused_before_decoding(self, served, workspace):
        too_many = [[0] * 400] * 400  # 160,000 pixels
        message = _answer_is_one_line(*post(served["url"], {"dataframe_records": [{"array": too_many}]}), workspace)
        assert f"400 x 400 = 160,000 pixels, over this server's limit of {MAX_PIXELS:,} pixels (max_pixels)" in message
        too_long = "A" * (MAX_BYTES * 2)  # refused by its length: it is never decoded
        message = _answer_is_one_line(*post(served["url"], {"dataframe_records": [{"image": too_long}]}), workspace)
        assert f"the image file is {MAX_BYTES * 3 // 2:,} bytes, over this server's limit of {MAX_BYTES:,} bytes (max_bytes)" in message

    def test_twenty_concurrent_requests_are_all_answered_correctly(self, served, cli_masks):
        flipped = np.ascontiguousarray(cli_masks["pixels"][:, ::-1])
        bodies = [
            {"dataframe_records": [{"image": _base64(cli_masks["dicom"]), "roi": [cli_masks["box"]]}]},
            {"dataframe_records": [{"image": _base64(cli_masks["png"])}]},
            {"dataframe_records": [{"image": _base64(cli_masks["two_lesions"]), "roi": cli_masks["boxes"]}]},
            {"dataframe_records": [{"array": flipped.tolist()}]},  # another side: a whole-image chain's state per call
        ]
        expected = [decode_png(post(served["url"], body)[1]["predictions"][0]["mask"]) for body in bodies]  # one at a time
        np.testing.assert_array_equal(expected[0], cli_masks["masks"]["mammogram"])
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda index: (index % 4, post(served["url"], bodies[index % 4])), range(20)))
        for index, (status, answer) in answers:
            assert status == 200, answer
            np.testing.assert_array_equal(decode_png(answer["predictions"][0]["mask"]), expected[index])

    def test_the_readme_serving_example_runs_as_written(self, served, workspace, tmp_path, monkeypatch):
        """The README's client example, against this server (its port alone replaced) from a folder laid out as the
        demo leaves one (the training's datalist): the lesions' boxes are sent and the mask matches the truth, where
        the whole image sent to this lesion-crop model does not."""
        readme = (ROOT / "README.md").read_text()
        (snippet,) = [block.split("```")[0] for block in readme.split("```python\n")[1:] if "/invocations" in block.split("```")[0]]
        runs = tmp_path / "bundles" / "unetplusplus_mammo" / "runs"
        runs.mkdir(parents=True)
        (runs / "cbis-ddsm").symlink_to(workspace["root"] / "out")
        monkeypatch.chdir(tmp_path)
        assert "http://127.0.0.1:5001/invocations" in snippet and '"roi": roi' in snippet
        snippet = snippet.replace("http://127.0.0.1:5001", served["url"])
        with_boxes, whole_image = {}, {}
        exec(snippet, with_boxes)
        exec(snippet.replace('"roi": roi', '"roi": None'), whole_image)
        assert len(with_boxes["roi"]) == 2  # the first test image has two masses: two boxes, one mask
        assert with_boxes["dice"] > 0.4 and whole_image["dice"] < 0.2  # this model: 2 epochs at 32 x 32


def test_loaded_model_takes_a_path_in_its_image_folder_or_an_array_at_native_size(workspace, cli_masks):
    model = load_model("unetplusplus_mammo@candidate", workspace["uri"], model_config={"image_folder": str(cli_masks["png"].parent)})
    frame = pd.DataFrame({"image": [cli_masks["png"].name, None], "array": [None, cli_masks["pixels"].astype(np.int64)]})
    predictions = model.predict(frame)
    for mask in predictions["mask"]:
        np.testing.assert_array_equal(decode_png(mask), cli_masks["masks"][cli_masks["png"].stem])
    assert "probabilities" not in predictions  # only on request
    with pytest.raises(UserValueError, match="row 0: give exactly one of 'image'"):
        model.predict(pd.DataFrame({"image": [str(cli_masks["png"])], "array": [cli_masks["pixels"].astype(np.int64)]}))
    assert sorted(p.name for p in cli_masks["png"].parent.iterdir()) == ["mammogram.dcm", "mammogram_png.png", "two_lesions.dcm"]  # nothing written beside the inputs


def test_registered_model_runs_where_breastseg_is_not_installed(workspace, cli_masks):
    """The logged code is enough: a Python without the project's editable install (site-packages on PYTHONPATH, so
    its .pth finder is never run) loads the registered model and segments the PNG."""
    script = (
        "import base64, sys, mlflow, pandas as pd\n"
        "try:\n    import breastseg.workflows\n    sys.exit('breastseg is importable before the model is loaded')\nexcept ImportError:\n    pass\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "image = base64.b64encode(open(sys.argv[2], 'rb').read()).decode()\n"
        "print(model.predict(pd.DataFrame({'image': [image]}))['mask'][0])\n"
    )
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "mlflow").is_dir())
    env = dict(os.environ, PYTHONPATH=site_packages, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=workspace["uri"])
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, "models:/unetplusplus_mammo@candidate", str(cli_masks["png"])], capture_output=True, text=True, timeout=600, env=env, cwd=workspace["root"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(decode_png(result.stdout.split()[-1]), cli_masks["masks"][cli_masks["png"].stem])


def test_evaluation_writes_reports_and_closes_its_run(workspace, trained):
    result = bundle_cli("run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", *common(workspace), tracking_uri=workspace["uri"])
    assert_ok(result)
    (run,) = runs(workspace, "evaluate")
    assert run.info.status == "FINISHED"
    eval_dir = workspace["root"] / "out" / "eval" / run.info.run_name
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["n_cases"] >= 1 and "dice" in summary["metrics"]
    header = (eval_dir / "cases.csv").read_text().splitlines()[0].split(",")
    assert {"case_id", "birads", "acr", "dice", "hd95_px", "hd95_mm", "status"} <= set(header)
    artifacts = {a.path for a in client(workspace).list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/cases.csv" in artifacts and "evaluation/confusion_matrix.png" in artifacts
    shared = client(workspace).download_artifacts(run.info.run_id, "evaluation/cases.csv", str(workspace["root"] / "dl"))
    version = client(workspace).get_model_version_by_alias("unetplusplus_mammo", "candidate")
    assert 0.0 <= float(version.tags["test_mean_dice"]) <= 1.0  # the evaluated registered version carries its test metric
    # the evaluation run's own record of the same metric, named by the split it scores
    assert float(version.tags["test_mean_dice"]) == pytest.approx(run.data.metrics["test_mean_dice"], rel=1e-4)
    assert not [name for name in run.data.metrics if name.startswith("val_")]
    shared_header = Path(shared).read_text().splitlines()[0].split(",")
    assert "case_id" not in shared_header and "patient_id" not in shared_header and "case_key" in shared_header


def test_resume_continues_from_the_last_checkpoint(workspace, trained):
    before = len(runs(workspace, "train"))
    result = bundle_cli("run", "training", "--config_file", TRAIN, "--max_epochs", "3", "--resume", *common(workspace), tracking_uri=workspace["uri"])
    assert_ok(result)
    assert "resumed from" in result.stdout + result.stderr
    last = torch.load(workspace["root"] / "models" / "checkpoint_last.pt", weights_only=True)
    first_run_iterations = 2 * last["trainer"]["epoch_length"]
    assert last["trainer"]["iteration"] == first_run_iterations + last["trainer"]["epoch_length"]
    # the same MLflow run goes on: one history of epochs 1-3, no second run
    assert len(runs(workspace, "train")) == before
    resumed = client(workspace).get_run(last["tracking_run"]["run_id"])
    assert resumed.info.status == "FINISHED"
    assert [m.step for m in client(workspace).get_metric_history(resumed.info.run_id, "val_mean_dice")] == [1, 2, 3]


def test_resume_and_evaluation_refuse_another_split(workspace, trained):
    datalist = workspace["root"] / "out" / "datalist.json"
    written = datalist.read_bytes()
    for workflow, configs, extra in (("training", TRAIN, ["--resume"]), ("evaluating", f"['{TRAIN}','{EVALUATE}']", [])):
        result = bundle_cli(
            "run", workflow, "--config_file", configs, *extra, *common(workspace), "--seed", "7", tracking_uri=workspace["uri"]
        )
        assert result.returncode != 0
        assert "holds the training run's split, made with seed 0 (this run: 7)" in result.stderr
    assert datalist.read_bytes() == written


def test_monai_tracking_flag_creates_no_second_run(workspace, trained):
    before = len(runs(workspace))
    result = bundle_cli(
        "run", "training", "--config_file", TRAIN, "--max_epochs", "1", "--tracking", "mlflow", *common(workspace),
        "--ckpt_dir", str(workspace["root"] / "models_tracking"), tracking_uri=workspace["uri"],
    )
    assert_ok(result)
    after = runs(workspace)
    assert len(after) == before + 1
    history = client(workspace).get_metric_history(after[-1].info.run_id, "val_mean_dice")
    assert len(history) == 1  # logged once, not once per handler


def test_unknown_override_key_is_refused(workspace):
    result = bundle_cli("run", "training", "--config_file", TRAIN, "--max_epoch", "2", *common(workspace))
    assert result.returncode != 0
    assert "unknown override --max_epoch" in result.stderr


def test_override_of_wrong_type_is_refused(workspace):
    result = bundle_cli("run", "training", "--config_file", TRAIN, "--max_epochs", "two", *common(workspace))
    assert result.returncode != 0
    assert "--max_epochs" in result.stderr and "int" in result.stderr


def test_unreachable_tracking_server_fails_with_a_clear_error(workspace):
    result = bundle_cli("run", "training", "--config_file", TRAIN, *common(workspace), tracking_uri=f"http://127.0.0.1:{free_port()}", timeout=120)
    assert result.returncode != 0
    assert "cannot be reached" in result.stderr


def test_inference_writes_masks_aligned_with_the_images(workspace, trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = next((workspace["data"]).rglob("*full mammogram images*/1-1.dcm"))
    (images / "mammogram.dcm").write_bytes(source.read_bytes())
    result = bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / "masks"),
        "--ckpt_dir", str(workspace["root"] / "models"),
    )
    assert_ok(result)
    import pydicom
    from PIL import Image

    rows, cols = pydicom.dcmread(source, stop_before_pixels=True)[0x00280010].value, pydicom.dcmread(source, stop_before_pixels=True)[0x00280011].value
    mask = np.asarray(Image.open(tmp_path / "masks" / "mammogram_pred.png"))
    assert mask.shape == (rows, cols)
    assert set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "masks" / "mammogram_pred.nii.gz").is_file()


def test_inference_refuses_another_image_size_than_the_trained_one(workspace, trained, tmp_path):
    context = torch.load(workspace["root"] / "models" / "model.pt", weights_only=True)["context"]
    assert context["settings"]["image_size"] == 32 and context["dataset"] == "cbis-ddsm" and context["epoch"] >= 1  # 3 after the resume test
    images = tmp_path / "images"
    images.mkdir()
    source = next((workspace["data"]).rglob("*full mammogram images*/1-1.dcm"))
    (images / "mammogram.dcm").write_bytes(source.read_bytes())
    result = bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / "masks"),
        "--ckpt_dir", str(workspace["root"] / "models"), "--image_size", "64",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "image_size=32" in last and "image_size=64" in last
    assert not (tmp_path / "masks").exists() or not any((tmp_path / "masks").iterdir())


def test_inference_with_cpu_amp_writes_the_same_masks(workspace, trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index, source in enumerate(sorted(workspace["data"].rglob("*full mammogram images*/1-1.dcm"))[:2]):
        (images / f"mammogram{index}.dcm").write_bytes(source.read_bytes())
    masks = {}
    for amp in ("False", "True"):
        result = bundle_cli(
            "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / amp),
            "--ckpt_dir", str(workspace["root"] / "models"), "--image_size", "32", "--amp", amp,
        )
        assert_ok(result)
        masks[amp] = [np.asarray(Image.open(path)) for path in sorted((tmp_path / amp).glob("*_pred.png"))]
    assert len(masks["True"]) == 2
    for full, mixed in zip(masks["False"], masks["True"]):
        assert full.shape == mixed.shape and np.mean(full == mixed) > 0.99


def test_checkpoint_exports_to_torchscript(workspace, trained, tmp_path):
    target = tmp_path / "model.ts"
    result = export_checkpoint("unetplusplus_mammo", workspace["root"] / "models" / "model.pt", target)
    assert_ok(result)
    scripted = torch.jit.load(str(target))
    network = build_network("unetplusplus", spatial_dims=2, in_channels=1, out_channels=1, norm="batch", dropout=0.0)
    network.load_state_dict(load_weights(workspace["root"] / "models" / "model.pt"))
    image = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (scripted(image) - network.eval()(image)).abs().max().item()
    print(f"TorchScript vs PyTorch max difference: {difference:.3g}")
    assert difference < 1e-4  # the trained weights, not a fresh network


def test_checkpoint_exports_to_onnx(workspace, trained, tmp_path):
    checkpoint = workspace["root"] / "models" / "model.pt"
    assert_ok(export_onnx("unetplusplus_mammo", checkpoint, tmp_path / "model.onnx", (1, 1, 32, 32)))
    assert onnx_max_difference("unetplusplus_mammo", checkpoint, tmp_path / "model.onnx", (1, 1, 32, 32)) < 1e-4  # the trained weights


def test_multi_gpu_config_trains_with_gloo_on_cpu(workspace):
    out = workspace["root"] / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training",
        "--config_file", f"['{TRAIN}','{str(BUNDLE / 'configs' / 'multi_gpu_train.json')}']", "--max_epochs", "1",
        *common(workspace), "--output_dir", str(out), "--ckpt_dir", str(out / "models"),
    ]
    result = run_command(command, tracking_uri=workspace["uri"])
    assert_ok(result)
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "checkpoint_last.pt").is_file()
    state = load_weights(out / "models" / "model.pt")
    assert not any(key.startswith("module.") for key in state)  # saved without the DDP wrapper


def test_cross_validation_command_trains_every_fold_and_reports_mean_sd(workspace, tmp_path):
    out = tmp_path / "cv"
    result = breastseg_cli(
        "cv", "--folds", "2", "--dataset-dir", str(workspace["data"]), "--output-dir", str(out),
        "--override", "max_epochs=1", "--override", "image_size=32", "--override", "batch_size=4",
        tracking_uri=f"sqlite:///{tmp_path / 'cv.db'}",
    )
    assert_ok(result)
    report = json.loads((out / "crossval_2fold.json").read_text())
    assert report["n_folds"] == 2 and report["metrics"]["dice"]["n_folds"] == 2
    assert (out / "fold_0" / "models" / "model.pt").is_file() and (out / "fold_1" / "models" / "model.pt").is_file()
    assert "2-fold cross-validation" in result.stdout
