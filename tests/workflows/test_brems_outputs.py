"""Whole-image inference masks back on the original grid; paper-layout tables and the pixel ROC writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import list_data_collate
from PIL import Image

from breastseg.transforms.chains import brems_net
from breastseg.workflows.evaluation.paper_tables import PixelROCWriter, format_table, table_row, write_table
from breastseg.workflows.evaluation.whole_image import WholeImageMaskWriter

torch.set_num_threads(1)

COLUMNS = [["Sens. (%)", "sensitivity", 100], ["DSC (%)", "dice", 100], ["HD95 (px)", "hd95_px", 1], ["AUC", "auc", 1]]


def write_phantom(folder, rows=120, cols=80):
    """A PNG breast against the left edge with one bright lesion, its PNG mask, and the mask array."""
    rr, cc = np.mgrid[0:rows, 0:cols]
    breast = ((rr - rows / 2) / (rows * 0.45)) ** 2 + (cc / (cols * 0.7)) ** 2 <= 1
    lesion = (rr - 50) ** 2 + (cc - 25) ** 2 <= 10**2
    image = np.where(breast, 120, 5).astype(np.uint8)
    image[lesion] = 230
    Image.fromarray(image).save(folder / "mammo.png")
    Image.fromarray((lesion * 255).astype(np.uint8)).save(folder / "mammo_roi.png")
    return lesion


def test_mask_writer_undoes_padding_and_resizing(tmp_path):
    lesion = write_phantom(tmp_path)
    chain = brems_net(image_size=64, with_label=False)  # the inference chain
    batch = list_data_collate([chain({"image": str(tmp_path / "mammo.png")})])
    # a perfect prediction: the label preprocessed by the training chain, as probabilities
    record = {"image": str(tmp_path / "mammo.png"), "label": str(tmp_path / "mammo_roi.png"), "label_format": "png"}
    perfect = brems_net(image_size=64)(record)["label"].as_tensor()[None]
    engine = Engine(lambda engine, data: {"pred": perfect})
    writer = WholeImageMaskWriter(tmp_path / "masks", chain)
    writer.attach(engine)
    engine.run([batch], max_epochs=1)
    mask = np.asarray(Image.open(tmp_path / "masks" / "mammo_pred.png")) > 0
    assert mask.shape == lesion.shape
    # back on the original 120 x 80 grid (the padding alone is 20 px): same place and extent, up to the 64 px round trip
    assert np.allclose(np.argwhere(mask).mean(axis=0), np.argwhere(lesion).mean(axis=0), atol=1.5)
    assert (mask & lesion).sum() / (mask | lesion).sum() > 0.8
    assert (tmp_path / "masks" / "mammo_pred.nii.gz").is_file()


def write_eval(folder, auc=0.8):
    summary = {"n_cases": 3, "metrics": {"sensitivity": {"mean": 0.9}, "dice": {"mean": 0.75}, "hd95_px": {"mean": 3.5}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "roc_curve.json").write_text(json.dumps({"auc": auc}))
    return folder


def test_table_row_scales_each_column(tmp_path):
    row = table_row(write_eval(tmp_path / "a"), COLUMNS, "Proposed Model")
    assert row == {"model": "Proposed Model", "Sens. (%)": 90.0, "DSC (%)": 75.0, "HD95 (px)": 3.5, "AUC": 0.8, "n_cases": 3}
    lines = format_table([row, table_row(write_eval(tmp_path / "b"), COLUMNS, "ResNet")], COLUMNS).splitlines()
    assert lines[0] == "| Model | Sens. (%) | DSC (%) | HD95 (px) | AUC | n |"
    assert lines[2] == "| Proposed Model | 90.00 | 75.00 | 3.5000 | 0.8000 | 3 |"
    assert lines[3].startswith("| ResNet |")
    write_table(tmp_path / "a", COLUMNS, "Proposed Model")
    assert json.loads((tmp_path / "a" / "table.json").read_text())["DSC (%)"] == 75.0


def test_table_row_names_a_missing_metric(tmp_path):
    with pytest.raises(KeyError, match="'Spec.'.*no metric 'specificity'"):
        table_row(write_eval(tmp_path / "a"), [["Spec.", "specificity", 100]], "x")
    with pytest.raises(FileNotFoundError, match="summary.json"):
        table_row(tmp_path / "missing", COLUMNS, "x")


def test_roc_writer_sums_case_histograms(tmp_path):
    engine = Engine(lambda engine, data: None)
    # two cases, three score levels: lesion pixels score high, background low (one tie at the middle level)
    histograms = torch.tensor([[[4.0, 1.0, 0.0], [0.0, 1.0, 2.0]], [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    engine.state.metric_details = {"val_pixel_auc": histograms}
    PixelROCWriter(tmp_path, "val_pixel_auc")(engine)
    curve = json.loads((tmp_path / "roc_curve.json").read_text())
    # Mann-Whitney with ties counted half: 7 negatives x 4 positives, one tied pair
    assert math.isclose(curve["auc"], (28 - 1 + 0.5) / 28)
    assert (curve["positives"], curve["negatives"]) == (4, 7) and (tmp_path / "roc.png").is_file()
    engine.state.metric_details = {}
    with pytest.raises(KeyError, match="PixelAUC"):
        PixelROCWriter(tmp_path, "val_pixel_auc")(engine)
