"""Inference never writes into its input folder, never replaces a file unless ``--overwrite True``, and names
its masks ``<stem>_pred.png`` (BUSI's own ground truth is ``<stem>_mask.png``). Real CLI, real (untrained)
weights of the hybrid-attention bundle on a synthetic BUSI class folder."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from breastseg.networks import build_network
from breastseg.workflows.data.synthetic import busi
from bundle_cli import ROOT, assert_ok, bundle_cli

sys.path.insert(0, str(ROOT / "tests" / "transforms"))
from mammo_factory import write_dicom  # noqa: E402

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


def test_two_images_with_one_stem_are_refused_before_anything_is_written(setup, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = next(setup["images"].glob("malignant (1).png"))
    (images / "a_first.png").write_bytes(source.read_bytes())  # sorted first: the old code wrote its mask, then failed
    (images / "case.png").write_bytes(source.read_bytes())
    write_dicom(images / "case.dcm", np.asarray(Image.open(source).convert("L")).astype(np.uint16))  # pydicom
    result = bundle_cli(
        "run", "inference", "--config_file", INFERENCE, "--dataset_dir", str(images), "--output_dir", str(tmp_path / "out"),
        "--ckpt_dir", str(setup["models"]), "--image_size", "32",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: case.dcm and case.png in ") and "share the stem 'case'" in last and "case_pred.png" in last
    assert not (tmp_path / "out").exists()
