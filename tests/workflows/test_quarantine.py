"""QuarantiningDataset: images a chain rejects (no breast found) are listed and left out, other errors stop."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Lambdad, RandFlipd
from PIL import Image

from breastseg.transforms.chains import connected_unets
from breastseg.workflows.engine.quarantine import QuarantiningDataset, data_error

torch.set_num_threads(1)


def breast_png(path, rows=96, cols=72, seed=0, lesion=(40, 20, 6)):
    """A uint16 PNG breast (half ellipse on the left) with one bright lesion, and its mask PNG."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:rows, 0:cols]
    breast = ((rr - rows / 2) / (rows * 0.42)) ** 2 + (cc / (cols * 0.6)) ** 2 <= 1
    image = rng.normal(300, 40, (rows, cols))
    image[breast] = 9000 + rng.normal(0, 300, breast.sum())
    r, c, radius = lesion
    mask = (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
    image[mask] += 12000
    Image.fromarray(np.clip(image, 0, 65535).astype(np.uint16)).save(path)
    mask_path = path.with_name(path.stem + "_mask.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    return {"image": str(path), "label": str(mask_path), "label_format": "png", "case_id": path.stem}


def blank_png(path):
    Image.fromarray(np.zeros((80, 60), np.uint16)).save(path)
    return {"image": str(path), "label": None, "label_format": "none", "case_id": path.stem}


def digest(paths):
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def test_no_breast_image_is_quarantined_and_listed(tmp_path, caplog):
    records = [breast_png(tmp_path / "P_00001_LEFT_CC.png"), blank_png(tmp_path / "P_00002_LEFT_CC.png"), breast_png(tmp_path / "P_00003_RIGHT_CC.png", seed=1)]
    before = digest([r["image"] for r in records])
    listing = tmp_path / "out" / "quarantine" / "training.json"
    with caplog.at_level(logging.WARNING, logger="breastseg.quarantine"):
        dataset = QuarantiningDataset(records, connected_unets(image_size=32, dataset="cbis-ddsm"), quarantine_file=listing)
    assert len(dataset) == 2
    assert sorted(str(dataset[i]["case_id"]) for i in range(2)) == ["P_00001_LEFT_CC", "P_00003_RIGHT_CC"]
    assert tuple(dataset[0]["image"].shape) == (1, 32, 32) and tuple(dataset[0]["label"].shape) == (1, 32, 32)
    (entry,) = json.loads(listing.read_text())
    assert entry["case_id"] == "P_00002_LEFT_CC" and entry["path"] == records[1]["image"]
    assert "no breast found" in entry["reason"] and "P_00002_LEFT_CC.png" in entry["reason"]
    assert dataset.quarantine == [entry]
    # the log says how many and where, never the file name (CBIS-DDSM names embed the patient id)
    assert "1 record(s)" in caplog.text and str(listing) in caplog.text and "P_00002" not in caplog.text
    assert digest([r["image"] for r in records]) == before  # reading never modifies the files


def test_random_transforms_still_run_per_sample(tmp_path):
    records = [breast_png(tmp_path / "a.png"), blank_png(tmp_path / "b.png")]
    chain = Compose([*connected_unets(image_size=32, dataset="inbreast").transforms, RandFlipd(["image", "label"], prob=1.0, spatial_axis=1)])
    dataset = QuarantiningDataset(records, chain, quarantine_file=tmp_path / "q.json", cache="none")
    plain = QuarantiningDataset(records[:1], connected_unets(image_size=32, dataset="inbreast"), quarantine_file=tmp_path / "p.json")
    assert len(dataset) == 1
    torch.testing.assert_close(dataset[0]["image"].as_tensor(), plain[0]["image"].as_tensor().flip(-1))
    assert not (tmp_path / "p.json").exists()  # nothing rejected: no listing written


def test_every_record_rejected_is_an_error(tmp_path):
    records = [blank_png(tmp_path / "x.png"), blank_png(tmp_path / "y.png")]
    with pytest.raises(ValueError, match=r"every one of the 2 records .*q\.json"):
        QuarantiningDataset(records, connected_unets(image_size=32), quarantine_file=tmp_path / "q.json")


def test_errors_other_than_bad_data_still_stop(tmp_path):
    def broken(_):
        raise TypeError("a bug, not bad data")

    records = [breast_png(tmp_path / "a.png")]
    chain = Compose([*connected_unets(image_size=32).transforms, Lambdad("image", broken)])
    with pytest.raises(RuntimeError) as raised:
        QuarantiningDataset(records, chain, quarantine_file=tmp_path / "q.json")
    assert data_error(raised.value) is None


def test_data_error_finds_the_value_error_behind_a_wrapper():
    try:
        try:
            raise ValueError("file.dcm: no breast found")
        except ValueError as inner:
            raise RuntimeError("applying transform") from inner
    except RuntimeError as outer:
        assert str(data_error(outer)) == "file.dcm: no breast found"
    assert data_error(RuntimeError("plain")) is None
