"""A ``model.pt`` in torch's legacy (non-zip) format, as older tools write it, loads weights-only through the
configs and the real ``monai.bundle`` CLI; a checkpoint whose pickle would run code is refused in one line and
never run, in either format."""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from breastseg.networks import build_network
from breastseg.workflows.engine.checkpoints import ResumeFromCheckpoint
from breastseg.workflows.engine.model_context import load_checkpoint, trained_setting
from breastseg.workflows.errors import UserValueError
from bundle_cli import ROOT, bundle_cli

CONFIGS = ROOT / "bundles" / "hybrid_attention_us" / "configs"
SETTINGS = {"network": "basic_unet", "network_kwargs": {}, "in_channels": 1, "image_size": 32}


class RunsCode:
    """Unpickling this runs a shell command (what a hostile checkpoint does): it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _model_pt(folder, legacy: bool):
    folder.mkdir(parents=True, exist_ok=True)
    network = build_network("basic_unet", spatial_dims=2, in_channels=1, out_channels=1)
    state = {"model": network.state_dict(), "context": {"bundle": "hybrid_attention_us", "settings": SETTINGS, "dataset": "busi"}}
    torch.save(state, folder / "model.pt", _use_new_zipfile_serialization=not legacy)
    return folder


def _hostile_pt(folder, legacy: bool):
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "code-ran"
    torch.save({"model": RunsCode(marker), "context": {}}, folder / "model.pt", _use_new_zipfile_serialization=not legacy)
    return folder, marker


def test_a_legacy_model_pt_gives_its_trained_settings_and_weights(tmp_path):
    folder = _model_pt(tmp_path / "legacy", legacy=True)
    with open(folder / "model.pt", "rb") as stream:
        assert stream.read(2) != b"PK"  # really the legacy format
    assert trained_setting(folder, "image_size", 256) == 32
    evaluation = ConfigParser()
    evaluation.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    evaluation["ckpt_dir"] = str(folder)
    assert evaluation.get_parsed_content("trained_settings") == SETTINGS
    weights, context = load_checkpoint(folder / "model.pt")
    assert context["settings"] == SETTINGS and all(isinstance(value, torch.Tensor) for value in weights.values())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path, legacy):
    folder, marker = _hostile_pt(tmp_path / "hostile", legacy)
    for read in (lambda: trained_setting(folder, "image_size", 256), lambda: load_checkpoint(folder / "model.pt"),
                 lambda: ResumeFromCheckpoint(folder / "model.pt", torch.nn.Linear(1, 1), None)(None)):
        with pytest.raises(UserValueError) as refused:
            read()
        message = str(refused.value)
        assert "\n" not in message and str(folder / "model.pt") in message and "could run code" in message
    assert not marker.exists()


def _images(folder):
    folder.mkdir()
    for index in range(2):
        Image.fromarray((torch.rand(40, 48) * 255).byte().numpy()).save(folder / f"frame{index}.png")
    return folder


def test_inference_cli_reads_a_legacy_model_and_refuses_a_hostile_one(tmp_path):
    images = _images(tmp_path / "images")
    legacy = _model_pt(tmp_path / "legacy", legacy=True)
    result = bundle_cli("run", "inference", "--config_file", str(CONFIGS / "inference.json"), "--dataset_dir", str(images),
                        "--output_dir", str(tmp_path / "masks"), "--ckpt_dir", str(legacy))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "masks").glob("*_pred.png")) == ["frame0_pred.png", "frame1_pred.png"]

    hostile, marker = _hostile_pt(tmp_path / "hostile", legacy=True)
    result = bundle_cli("run", "inference", "--config_file", str(CONFIGS / "inference.json"), "--dataset_dir", str(images),
                        "--output_dir", str(tmp_path / "masks_hostile"), "--ckpt_dir", str(hostile))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and str(hostile / "model.pt") in last and "could run code" in last
    assert not marker.exists()
