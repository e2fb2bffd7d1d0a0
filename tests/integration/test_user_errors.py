"""User errors through the real command lines end with one line that says what is wrong and what to do;
``--debug`` (or ``BREASTSEG_DEBUG=1``) shows the traceback."""

from __future__ import annotations

import os

import pytest

from breastseg.workflows.commands.bundle import prepare_datalist
from breastseg.workflows.data.synthetic import busi
from bundle_cli import ROOT, bundle_cli

BUNDLE = ROOT / "bundles" / "hybrid_attention_us" / "configs"


def _last_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    last = _last_line(result)
    assert last.startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.delenv("BREASTSEG_DEBUG", raising=False)


def test_unknown_override_is_one_line_with_a_suggestion(local_store):
    result = bundle_cli("run", "training", "--config_file", str(BUNDLE / "train.json"), "--max_epoch", "2",
                        tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    _assert_one_line_error(result, "unknown override --max_epoch", "did you mean --max_epochs?")


def test_mistyped_value_lists_the_valid_values(local_store):
    result = bundle_cli("run", "training", "--config_file", str(BUNDLE / "train.json"), "--dataset", "cbis_ddsm",
                        tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    _assert_one_line_error(result, "--dataset 'cbis_ddsm' is not one of busi, cbis-ddsm, inbreast, udiat", "did you mean 'cbis-ddsm'?")


def test_debug_shows_the_traceback(local_store):
    result = bundle_cli("run", "training", "--config_file", str(BUNDLE / "train.json"), "--max_epoch", "2", "--debug",
                        tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "unknown override --max_epoch" in result.stderr


def test_folder_without_images_says_subfolders_are_not_searched(local_store, tmp_path):
    (tmp_path / "images" / "benign").mkdir(parents=True)
    result = bundle_cli("run", "inference", "--config_file", str(BUNDLE / "inference.json"), "--dataset_dir", str(tmp_path / "images"),
                        "--output_dir", str(tmp_path / "out"))
    _assert_one_line_error(result, "no .dcm/.dicom/.png image directly in", "subfolders are not searched")


def test_split_refusal_is_one_line(local_store, tmp_path):
    busi.generate(tmp_path / "busi", cases=6, seed=0, full_size=False)
    prepare_datalist("busi", str(tmp_path / "busi"), str(tmp_path / "out" / "datalist.json"), seed=0, val_fraction=0.18)
    result = bundle_cli(
        "run", "training", "--config_file", str(BUNDLE / "train.json"), "--dataset_dir", str(tmp_path / "busi"),
        "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "models"), "--resume", "True", "--seed", "7",
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
    )
    _assert_one_line_error(result, "holds the training run's split, made with seed 0 (this run: 7)", "--output_dir")
