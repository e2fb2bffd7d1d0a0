"""Groups on datasets with patient ids: a near duplicate filed under another patient joins the two patients
(the same film under two ids), whatever the file format; the group is the split unit."""

from __future__ import annotations

import unittest
from pathlib import Path
from tempfile import TemporaryDirectory

import cv2
import numpy as np
import torch

from breastseg.workflows.data.grouping import group_by_acquisition
from breastseg.workflows.data.splits import split_groups
from breastseg.workflows.data.synthetic._dicom import DicomFields, derive_uid, write_dicom
from breastseg.workflows.data.synthetic.mammogram import render_mammogram

torch.set_num_threads(1)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_mammogram(path: Path, pixels: np.ndarray, patient: str) -> str:
    uid = lambda key: derive_uid("1.2.826.0.1.3680043.8.498.", 0, f"{path.name}:{key}")  # noqa: E731
    write_dicom(path, pixels, DicomFields(SECONDARY_CAPTURE, uid("study"), uid("series"), uid("sop"), patient,
                                          patient, "20200101"))
    return str(path)


def to_16_bit(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)


class TestGroupsAcrossPatients(unittest.TestCase):
    def test_same_film_under_two_patient_ids_joins_them(self):
        films = [to_16_bit(render_mammogram(np.random.default_rng(seed), (640, 520), "MLO", seed % 2 == 0,
                                            masses=("oval",), film=True).image) for seed in range(4)]
        with TemporaryDirectory() as folder:
            folder = Path(folder)
            # P_2 holds a rescaled, cropped 8-bit re-export of P_1's film: the same acquisition under another id
            copy = cv2.resize(films[0][40:600, 30:500], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
            copy = (copy.astype(np.float32) / 257).astype(np.uint8)
            files = [
                ("P_1", "P_1_LEFT_MLO", films[0]), ("P_1", "P_1_RIGHT_MLO", films[1]),
                ("P_2", "P_2_LEFT_MLO", copy), ("P_3", "P_3_LEFT_MLO", films[2]), ("P_4", "P_4_LEFT_MLO", films[3]),
            ]
            records = [{"image": write_mammogram(folder / f"{case}.dcm", pixels, patient),
                        "case_id": case, "patient_id": patient, "pathology": "benign"} for patient, case, pixels in files]
            grouping = group_by_acquisition(records)
        group_of = {r["case_id"]: r["group_id"] for r in grouping.records}
        self.assertEqual(group_of, {"P_1_LEFT_MLO": "P_1", "P_1_RIGHT_MLO": "P_1", "P_2_LEFT_MLO": "P_1",
                                    "P_3_LEFT_MLO": "P_3", "P_4_LEFT_MLO": "P_4"})
        (group,) = grouping.groups
        self.assertEqual([m["case_id"] for m in group["members"]], ["P_1_LEFT_MLO", "P_2_LEFT_MLO"])
        (pair,) = group["pairs"]
        np.testing.assert_allclose(pair["scale"], (1 / 0.7, 1 / 0.7), rtol=0.03)  # the copy maps back onto the film
        np.testing.assert_allclose(pair["offset"], (40, 30), atol=4)
        for seed in range(5):
            splits = split_groups(grouping.records, seed, 0.2, 0.2, group_key="group_id")
            where = {r["case_id"]: name for name, members in splits.items() for r in members}
            self.assertEqual(len({where[c] for c in ("P_1_LEFT_MLO", "P_1_RIGHT_MLO", "P_2_LEFT_MLO")}), 1)

    def test_unreadable_pixels_are_quarantined_not_dropped(self):
        with TemporaryDirectory() as folder:
            broken = Path(folder) / "broken.dcm"
            good = write_mammogram(Path(folder) / "good.dcm", to_16_bit(render_mammogram(
                np.random.default_rng(0), (256, 200), "CC", True).image), "P_1")
            broken.write_bytes(Path(good).read_bytes()[:-5000])  # pixel data cut short
            records = [{"image": good, "case_id": "good", "patient_id": "P_1"},
                       {"image": str(broken), "case_id": "broken", "patient_id": "P_2"}]
            grouping = group_by_acquisition(records)
        self.assertEqual([r["case_id"] for r in grouping.records], ["good"])
        (entry,) = grouping.quarantine
        self.assertEqual(entry["case_id"], "broken")
        self.assertTrue(entry["reason"].startswith("pixels unreadable:"), entry["reason"])


if __name__ == "__main__":
    unittest.main()
