"""Detector data (paper 002): mask -> one box per mass, the 2048x1024 frame (stretch / pad), clipping, resizing,
padded batches, and the chain on a synthetic CBIS-DDSM record (masses only; a normal image gives no box)."""

from __future__ import annotations

import unittest

import numpy as np
import torch
from parameterized import parameterized

from breastseg.transforms.spatial.boxes import MaskToBoxes, MaskToBoxesd, RandFlipBoxesd, clip_boxes, scale_boxes
from breastseg.workflows.two_stage.detection import (
    FrameGeometry,
    ResizeWithBoxesd,
    ToDetectorFramed,
    collate_boxes,
    detector_chain,
    resize_batch,
    unpad_boxes,
)

torch.set_num_threads(1)


class TestMaskToBoxes(unittest.TestCase):
    def test_one_half_open_box_per_connected_mass(self):
        mask = torch.zeros(1, 40, 60)
        mask[0, 5:9, 10:21] = 1  # rows 5-8, columns 10-20
        mask[0, 30:40, 50:60] = 1  # touches the bottom-right corner
        mask[0, 9, 21] = 1  # diagonal neighbour of the first mass: 8-connected, same box
        boxes = MaskToBoxes()(mask)
        self.assertEqual(boxes.dtype, torch.float32)
        np.testing.assert_array_equal(boxes.numpy(), [[10, 5, 22, 10], [50, 30, 60, 40]])

    def test_empty_mask_gives_no_box(self):
        self.assertEqual(tuple(MaskToBoxes()(np.zeros((1, 8, 8))).shape), (0, 4))

    def test_dictionary_version_and_bad_shape(self):
        mask = np.zeros((1, 8, 8), dtype=np.uint8)
        mask[0, 2:4, 1:3] = 255
        sample = MaskToBoxesd("label", box_key="boxes")({"label": mask})
        np.testing.assert_array_equal(sample["boxes"].numpy(), [[1, 2, 3, 4]])
        with self.assertRaisesRegex(ValueError, r"\(1, H, W\)"):
            MaskToBoxes()(np.zeros((2, 8, 8)))


class TestBoxGeometry(unittest.TestCase):
    def test_boxes_outside_the_image_are_clipped_and_empty_ones_dropped(self):
        boxes = torch.tensor([[-5.0, 2, 10, 20], [90, 90, 120, 130], [200, 200, 210, 210]])
        clipped = clip_boxes(boxes, (100, 95))  # H = 100, W = 95: x is clipped to 95, y to 100
        np.testing.assert_allclose(clipped.numpy(), [[0, 2, 10, 20], [90, 90, 95, 100]])

    def test_resize_scales_x_by_width_and_y_by_height(self):
        scaled = scale_boxes(torch.tensor([[10.0, 20, 30, 60]]), (200, 100), (100, 25))
        np.testing.assert_allclose(scaled.numpy(), [[2.5, 10, 7.5, 30]])

    def test_stretch_maps_each_axis_on_its_own(self):
        geometry = FrameGeometry.of((1000, 600), (2048, 1024), "stretch")
        self.assertEqual(geometry.pad, ((0, 0), (0, 0)))
        frame = geometry.to_frame(torch.tensor([[60.0, 100, 120, 300]]))
        np.testing.assert_allclose(frame.numpy(), [[102.4, 204.8, 204.8, 614.4]], rtol=1e-5)

    @parameterized.expand([((1000, 600), ((100, 100), (0, 0))), ((1000, 400), ((0, 0), (50, 50))), ((1001, 600), ((99, 100), (0, 0)))])
    def test_pad_reaches_two_to_one_evenly(self, size, pad):
        geometry = FrameGeometry.of(size, (2048, 1024), "pad")
        self.assertEqual(geometry.pad, pad)
        rows, cols = geometry.padded_size
        self.assertEqual(rows, 2 * cols)

    @parameterized.expand([("stretch",), ("pad",)])
    def test_frame_and_back_is_the_identity_with_scores_kept(self, fit):
        geometry = FrameGeometry.of((937, 611), (2048, 1024), fit)
        boxes = torch.tensor([[12.0, 40, 300, 511], [500, 800, 611, 937]])
        back = geometry.to_original(torch.cat([geometry.to_frame(boxes), torch.tensor([[0.9], [0.4]])], dim=1))
        np.testing.assert_allclose(back.numpy(), np.c_[boxes.numpy(), [0.9, 0.4]], rtol=1e-5, atol=1e-3)

    def test_unknown_fit_is_refused(self):
        with self.assertRaisesRegex(ValueError, "fit must be one of"):
            FrameGeometry.of((10, 10), fit="crop")


class TestFrameTransforms(unittest.TestCase):
    def test_image_and_mask_framed_and_boxes_follow_the_mask(self):
        image = torch.rand(1, 60, 40)
        mask = torch.zeros(1, 60, 40)
        mask[0, 10:30, 4:20] = 1
        sample = {"image": image, "label": mask, "boxes": MaskToBoxes()(mask)}
        framed = ToDetectorFramed(("image", "label"), frame_size=(128, 64), fit="pad", modes=("bilinear", "nearest"))(sample)
        self.assertEqual(tuple(framed["image"].shape), (1, 128, 64))
        self.assertEqual(tuple(framed["label"].shape), (1, 128, 64))
        np.testing.assert_allclose(framed["boxes"].numpy(), MaskToBoxes()(framed["label"]).numpy(), atol=1.0)
        self.assertEqual(len(framed["image"].applied_operations), 2)  # pad + resize, invertible by MONAI

    def test_resize_with_boxes_for_the_validation_input(self):
        sample = {"image": torch.rand(1, 256, 128), "boxes": torch.tensor([[64.0, 128, 96, 192]])}
        resized = ResizeWithBoxesd("image", box_key="boxes", spatial_size=(64, 32))(sample)
        self.assertEqual(tuple(resized["image"].shape), (1, 64, 32))
        np.testing.assert_allclose(resized["boxes"].numpy(), [[16, 32, 24, 48]])


class TestRandFlipBoxes(unittest.TestCase):
    def test_flipped_boxes_still_frame_the_flipped_mask(self):
        mask = torch.zeros(1, 32, 20)
        mask[0, 4:9, 2:7] = 1
        flipper = RandFlipBoxesd(("image", "label"), box_key="boxes", prob=0.5).set_random_state(seed=0)
        flips = 0
        for _ in range(12):
            sample = flipper({"image": mask.clone(), "label": mask.clone(), "boxes": MaskToBoxes()(mask)})
            np.testing.assert_array_equal(sample["boxes"].numpy(), MaskToBoxes()(sample["label"]).numpy())
            flips += int(sample["boxes"][0, 0] == 13)
        self.assertTrue(0 < flips < 12)  # some flipped (x 2..7 -> 13..18), some not


class TestBatches(unittest.TestCase):
    def samples(self):
        return [
            {"image": torch.rand(1, 64, 32), "boxes": torch.tensor([[1.0, 2, 5, 9], [10, 10, 20, 30]]), "case_id": "a"},
            {"image": torch.rand(1, 64, 32), "boxes": torch.zeros(0, 4), "case_id": "b"},
        ]

    def test_collate_pads_boxes_and_unpad_restores_them(self):
        batch = collate_boxes(self.samples())
        self.assertEqual(tuple(batch["image"].shape), (2, 1, 64, 32))
        self.assertEqual(tuple(batch["label"].shape), (2, 2, 5))
        self.assertEqual(batch["label"][1, :, 4].tolist(), [-1.0, -1.0])
        self.assertEqual(batch["case_id"], ["a", "b"])
        restored = unpad_boxes(batch["label"])
        np.testing.assert_array_equal(restored[0].numpy(), self.samples()[0]["boxes"].numpy())
        self.assertEqual(tuple(restored[1].shape), (0, 4))

    def test_batch_resize_scales_boxes_with_the_images(self):
        resized = resize_batch(collate_boxes(self.samples()), (128, 64))
        self.assertEqual(tuple(resized["image"].shape), (2, 1, 128, 64))
        np.testing.assert_allclose(unpad_boxes(resized["label"])[0].numpy(), [[2, 4, 10, 18], [20, 20, 40, 60]])
        self.assertEqual(resized["label"][1, :, 4].tolist(), [-1.0, -1.0])

    def test_unpad_refuses_a_wrong_layout(self):
        with self.assertRaisesRegex(ValueError, r"\(B, M, 5\)"):
            unpad_boxes(torch.zeros(2, 4))


class TestChainOnSyntheticRecords(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile
        from pathlib import Path

        from breastseg.workflows.data.indexers import inbreast as index_inbreast
        from breastseg.workflows.data.synthetic import inbreast

        cls.tmp = tempfile.TemporaryDirectory()
        root = Path(cls.tmp.name) / "inbreast"
        inbreast.generate(root, cases=2, seed=0, rows=192)
        cls.records = index_inbreast.index(root).records

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_masses_become_boxes_in_the_frame_and_normals_have_none(self):
        chain = detector_chain(frame_size=(256, 128))
        counts = {"with": 0, "without": 0}
        for record in self.records:
            sample = chain({k: record[k] for k in ("image", "label", "label_format", "case_id", "default_spacing")})
            self.assertEqual(tuple(sample["image"].shape), (1, 256, 128))
            self.assertAlmostEqual(float(sample["image"].min()), 0.0, places=5)
            self.assertAlmostEqual(float(sample["image"].max()), 1.0, places=5)
            self.assertNotIn("label", sample)
            boxes = sample["boxes"]
            self.assertEqual(len(boxes), record["lesion_count"], record["case_id"])
            counts["with" if len(boxes) else "without"] += 1
            if len(boxes):
                self.assertTrue(bool((boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 256).all() and (boxes >= 0).all()))
        self.assertGreater(counts["with"], 0)
        self.assertGreater(counts["without"], 0)
