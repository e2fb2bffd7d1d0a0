"""Detector validation and evaluation with stub detectors whose boxes are known: AP@0.5 through the harness
evaluator (post-processing + Ignite metric over several batches), and the per-view / MSF tables (Table 1-2)."""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from torch import nn

from breastseg.workflows.engine.harness import build_evaluator
from breastseg.workflows.two_stage.detection import DecodeDetections, DetectionAP, collate_boxes, detection_tables

torch.set_num_threads(1)

HIT_A = [10.0, 10, 20, 30]
HIT_B = [40.0, 40, 50, 60]


class FixedBoxes(nn.Module):
    """Decoded YOLOv3 output (B, 2, 6) with the same two boxes for every image: A scored 0.9, B scored 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        rows = torch.tensor([[*HIT_A, 0.9, 1.0], [*HIT_B, 0.5, 1.0]])
        return rows.expand(x.shape[0], 2, 6) + 0 * self.dummy


class TestValidationAP(unittest.TestCase):
    def test_ap_over_batches_by_hand(self):
        samples = [
            {"image": torch.zeros(1, 64, 64), "boxes": torch.tensor([HIT_A])},  # A hit, B false
            {"image": torch.zeros(1, 64, 64), "boxes": torch.tensor([HIT_B])},  # A false, B hit
            {"image": torch.zeros(1, 64, 64), "boxes": torch.zeros(0, 4)},  # a normal: both false
        ]
        loader = [collate_boxes(samples[:2]), collate_boxes(samples[2:])]
        evaluator = build_evaluator(
            "cpu",
            loader,
            FixedBoxes(),
            key_val_metric={"val_ap50": DetectionAP()},
            postprocessing=DecodeDetections(conf_threshold=0.01),
        )
        evaluator.run()
        # ranked: 0.9 (hit, false, false), 0.5 (false, hit, false): P = 1/3 at R = 1/2, then 2/6 at R = 1
        self.assertAlmostEqual(evaluator.state.metrics["val_ap50"], 1 / 3, places=6)
        self.assertEqual(len(evaluator.state.output["pred"]), 1)  # the last batch: one image's (K, 5) boxes

    def test_decoding_drops_low_scores_and_clips_to_the_image(self):
        pred = torch.tensor([[[-5.0, 2, 30, 80, 0.9, 1.0], [1, 1, 4, 4, 0.2, 0.5]]])
        decoded = DecodeDetections(conf_threshold=0.15)({"pred": pred, "image": torch.zeros(1, 1, 64, 32)})["pred"]
        np.testing.assert_allclose(decoded[0].numpy(), [[0, 2, 30, 64, 0.9]])


FRAME = (256, 128)
VIEWS = [(64, 32), (128, 64)]
CASES = {  # image grey value -> (true boxes, detections (x0, y0, x1, y1, score)) in frame pixels
    0.2: ([[20.0, 40, 60, 100]], [[20.0, 40, 60, 100, 0.9], [80, 180, 120, 240, 0.3]]),
    0.4: ([[60.0, 120, 100, 200]], [[60.0, 120, 100, 200, 0.9]]),
    0.6: ([], [[8.0, 8, 40, 40, 0.3]]),  # a normal image whose only box is weak
    0.8: ([], []),  # a normal image where nothing is found
}


class ViewAwareStub(nn.Module):
    """Returns, at any view size, its case's detections mapped from the frame onto that view."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        value = min(CASES, key=lambda v: abs(v - float(x.mean())))
        scale = torch.tensor([x.shape[3] / FRAME[1], x.shape[2] / FRAME[0]] * 2)
        rows = [torch.cat([torch.tensor(d[:4]) * scale, torch.tensor([d[4], 1.0])]) for d in CASES[value][1]]
        return (torch.stack(rows) if rows else torch.zeros(0, 6))[None] + 0 * self.dummy


def stub_chain(record):
    truths, _ = CASES[record["grey"]]
    return {"image": torch.full((1, *FRAME), record["grey"]), "boxes": torch.tensor(truths).reshape(-1, 4)}


class TestDetectionTables(unittest.TestCase):
    def test_single_views_and_msf_by_hand(self):
        records = [{"grey": value} for value in CASES]
        with tempfile.TemporaryDirectory() as tmp:
            tables = detection_tables(
                ViewAwareStub(), records, stub_chain, lambdas=(0.0, 0.5), view_sizes=VIEWS, conf_thresholds=0.25, output_dir=tmp
            )
            written = json.loads((Path(tmp) / "detection_tables.json").read_text())
            markdown = (Path(tmp) / "detection_tables.md").read_text()
        self.assertEqual((tables["images"], tables["lesions"]), (4, 2))
        for row in tables["single_scale"]:
            # 0.9, 0.9 hits then 0.3, 0.3 false: AP 1; at 0.25 every box is kept: 2 false positives on 4 images
            self.assertAlmostEqual(row["ap50"], 1.0)
            self.assertAlmostEqual(row["tpr"], 1.0)
            self.assertAlmostEqual(row["fp_per_image"], 0.5)
        by_lambda = {row["lambda"]: row for row in tables["msf"]}
        self.assertAlmostEqual(by_lambda[0.0]["fp_per_image"], 0.5)
        self.assertEqual(by_lambda[0.0]["images_without_box"], 1)
        # eq. 1, N = 2 views, per image: hits reach 2 * 0.9 / (2 * 0.9) = 1, the weak box beside one 2 * 0.3 / 1.8 = 1/3
        # (dropped at lambda 0.5), the normal image's lone weak box 2 * 0.3 / (2 * 0.3) = 1 (kept)
        self.assertAlmostEqual(by_lambda[0.5]["tpr"], 1.0)
        self.assertAlmostEqual(by_lambda[0.5]["fp_per_image"], 0.25)
        self.assertEqual(by_lambda[0.5]["images_without_box"], 1)
        self.assertAlmostEqual(by_lambda[0.5]["ap50"], 2 / 3)  # the lone box ties with the hits at M_s = 1
        self.assertEqual(written, json.loads(json.dumps(tables)))
        self.assertIn("| 32 x 64 | 100.00 | 100.00 | 0.50 |", markdown)
        self.assertIn("| TPR (%) @ FPavg | 100.00@0.50 | 100.00@0.25 |", markdown)

    def test_a_threshold_above_the_view_threshold_floor_is_refused(self):
        with self.assertRaisesRegex(ValueError, "must not be below ap_conf_threshold"):
            detection_tables(ViewAwareStub(), [{"grey": 0.2}], stub_chain, view_sizes=VIEWS, conf_thresholds=0.001)
        with self.assertRaisesRegex(ValueError, "one value or one per view"):
            detection_tables(ViewAwareStub(), [{"grey": 0.2}], stub_chain, view_sizes=VIEWS, nms_thresholds=[0.4])
