"""Running the real command-line tools from the integration tests, and reading what they tracked."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
from forked_cli import BREASTSEG, forkable, run_forked

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tests" / "schemas"


def _environment(tracking_uri: str | None) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", OMP_NUM_THREADS="1")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def run_command(command: list[str], tracking_uri: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root (one OpenMP thread, no MLflow retries); the project's command lines
    in a process forked from preloaded imports (:mod:`forked_cli`)."""
    if forkable(command):
        return run_forked(command, ROOT, _environment(tracking_uri), timeout)
    return subprocess.run(command, cwd=ROOT, env=_environment(tracking_uri), capture_output=True, text=True, timeout=timeout)


def bundle_cli(*args: str, tracking_uri: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>``."""
    return run_command([sys.executable, "-m", "monai.bundle", *args], tracking_uri, timeout)


def breastseg_cli(*args: str, tracking_uri: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The ``breastseg`` console script."""
    return run_command([BREASTSEG, *args], tracking_uri, timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def find_runs(tracking_uri: str, experiment: str, workflow: str | None = None) -> list:
    """Runs of ``experiment`` oldest first; ``workflow`` ("train", "evaluate") filters by run name."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time ASC"])
    return [run for run in found if workflow is None or f"-{workflow}-" in run.info.run_name]


def export_checkpoint(bundle: str, checkpoint: Path, target: Path) -> subprocess.CompletedProcess:
    """``ckpt_export`` of ``bundle``'s ``network_def`` (inference.json) with ``checkpoint`` to TorchScript ``target``.

    ``--ckpt_dir`` makes ``network_def`` take the settings ``checkpoint`` was trained with; ``--key_in_ckpt model``
    picks its weights from the checkpoint (without it the load fails on the "context" entry).
    """
    configs = ROOT / "bundles" / bundle / "configs"
    return bundle_cli(
        "ckpt_export", "network_def", "--filepath", str(target), "--ckpt_file", str(checkpoint),
        "--key_in_ckpt", "model", "--ckpt_dir", str(checkpoint.parent), "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json"),
    )


def export_onnx(bundle: str, checkpoint: Path, target: Path, input_shape: tuple[int, ...]) -> subprocess.CompletedProcess:
    """``onnx_export`` of ``bundle``'s ``network_def`` with ``checkpoint`` to ONNX ``target`` for inputs of ``input_shape``
    (the flags of :func:`export_checkpoint`; traced, through torch's TorchScript-based exporter)."""
    configs = ROOT / "bundles" / bundle / "configs"
    return bundle_cli(
        "onnx_export", "network_def", "--filepath", str(target), "--ckpt_file", str(checkpoint),
        "--key_in_ckpt", "model", "--ckpt_dir", str(checkpoint.parent), "--meta_file", str(configs / "metadata.json"),
        "--config_file", str(configs / "inference.json"), "--use_trace", "True", "--input_shape", str(list(input_shape)),
        "--converter_kwargs", "{'dynamo': False}",
    )


_ONNX_RUNTIME_OUTPUT = """
import sys
import numpy as np
import onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})[0])
"""


def onnx_max_difference(bundle: str, checkpoint: Path, onnx_file: Path, input_shape: tuple[int, ...]) -> float:
    """max |ONNX Runtime - PyTorch| on a seeded random input: the bundle's ``network_def`` built with ``checkpoint``'s
    settings and weights against the exported file (printed, as the bundle docs quote it). ONNX Runtime runs in its
    own process, as a user runs it: loaded into the test process beside torch, it can crash that process at exit."""
    import torch
    from monai.bundle import ConfigParser

    from breastseg.workflows.engine.model_context import load_weights

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser["ckpt_dir"] = str(checkpoint.parent)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_weights(checkpoint))
    image = torch.rand(input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network.eval()(image).numpy()
    image_file, output_file = onnx_file.with_suffix(".input.npy"), onnx_file.with_suffix(".output.npy")
    np.save(image_file, image.numpy())
    result = subprocess.run([sys.executable, "-c", _ONNX_RUNTIME_OUTPUT, str(onnx_file), str(image_file), str(output_file)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = np.load(output_file)
    assert exported.shape == expected.shape
    difference = float(np.abs(exported - expected).max())
    print(f"{bundle}: ONNX vs PyTorch max difference {difference:.3g}")
    return difference


def client(workspace: dict) -> mlflow.MlflowClient:
    """A client of the test's MLflow server (``workspace["uri"]``)."""
    return mlflow.MlflowClient(tracking_uri=workspace["uri"])


def workspace_overrides(workspace: dict, small: list[str]) -> list[str]:
    """Data, outputs and checkpoints of a test's workspace, plus its small-run overrides."""
    root = workspace["root"]
    return ["--dataset_dir", str(workspace["data"]), "--output_dir", str(root / "out"), "--ckpt_dir", str(root / "models"), *small]


def train(train_config: str, overrides: list[str], workspace: dict, epochs: int = 2) -> subprocess.CompletedProcess:
    """``run training`` of ``train_config`` for ``epochs`` against the workspace's MLflow server; must succeed."""
    result = bundle_cli(
        "run", "training", "--config_file", train_config, "--max_epochs", str(epochs), *overrides, tracking_uri=workspace["uri"]
    )
    assert_ok(result)
    return result


def native_shape(image: Path) -> tuple[int, int]:
    """``(rows, columns)`` of a DICOM or PNG file as its header states them."""
    if image.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(image) as picture:
            return picture.height, picture.width
    import pydicom

    header = pydicom.dcmread(image, stop_before_pixels=True)
    return int(header.Rows), int(header.Columns)


def served_prediction(model, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """The mask (0/255) and probabilities a loaded registered model returns for ``image`` sent as base64 bytes."""
    import pandas as pd

    from breastseg.workflows.tracking.serving import decode_npy, decode_png

    frame = pd.DataFrame({"image": [base64.b64encode(image.read_bytes()).decode("ascii")]})
    (row,) = model.predict(frame, params={"return_probabilities": True}).to_dict("records")
    return decode_png(row["mask"]), decode_npy(row["probabilities"])
