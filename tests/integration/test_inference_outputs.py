"""Inference never writes into its input folder, never replaces a file unless ``--overwrite True``, and names
its masks ``<stem>_pred.png`` (BUSI's own ground truth is ``<stem>_mask.png``). Real CLI, real (untrained)
weights of the hybrid-attention bundle on a synthetic BUSI class folder."""

from __future__ import annotations

import hashlib

import pytest
import torch

from breastseg.networks import build_network
from breastseg.workflows.data.synthetic import busi
from bundle_cli import ROOT, assert_ok, bundle_cli

INFERENCE = str(ROOT / "bundles" / "hybrid_attention_us" / "configs" / "inference.json")


def _digests(folder) -> dict[str, str]:
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def setup(module_dir):
    busi.generate(module_dir / "busi", cases=6, seed=0, full_size=False)
    images = next((module_dir / "busi").rglob("malignant (1).png")).parent
    models = module_dir / "models"
    models.mkdir()
    network = build_network("hybrid_attention", spatial_dims=2, in_channels=1, out_channels=1)
    torch.save(network.state_dict(), models / "model.pt")
    return {"images": images, "models": models}


def _infer(setup, output_dir, *extra: str):
    return bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(setup["images"]), "--output_dir", str(output_dir),
        "--ckpt_dir", str(setup["models"]), "--image_size", "32", *extra,
    )


def test_inference_into_its_own_input_folder_is_refused_and_changes_nothing(setup):
    before = _digests(setup["images"])
    assert "malignant (1)_mask.png" in before
    result = _infer(setup, setup["images"])
    assert result.returncode != 0
    assert "is inside the input folder" in result.stdout + result.stderr
    assert _digests(setup["images"]) == before


def test_predictions_are_named_pred_and_never_replace_a_file_unless_asked(setup, tmp_path):
    output = tmp_path / "predictions"
    assert_ok(_infer(setup, output))
    images = sorted(p.stem for p in setup["images"].glob("*.png") if "_mask" not in p.stem)
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [f"{stem}_pred.png" for stem in images] + [f"{stem}_pred.nii.gz" for stem in images]
    )
    (output / f"{images[0]}_pred.png").write_bytes(b"kept")
    again = _infer(setup, output)
    assert again.returncode != 0
    assert "pass --overwrite True" in again.stdout + again.stderr
    assert (output / f"{images[0]}_pred.png").read_bytes() == b"kept"
    assert_ok(_infer(setup, output, "--overwrite", "True"))
    assert (output / f"{images[0]}_pred.png").read_bytes() != b"kept"
