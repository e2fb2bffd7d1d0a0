"""Detector training pieces: the multi-scale schedule and handler on a real Ignite engine, the padded-box loss,
anchors fitted / written / read, and checkpoints refusing other anchors or class counts."""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine

from breastseg.networks import YOLOv3, YOLOv3Loss
from breastseg.workflows.two_stage.detection import (
    DetectorLoss,
    MultiScaleResize,
    MultiScaleSchedule,
    collate_boxes,
    fit_anchors,
    load_detector,
    read_anchors,
    training_boxes,
    unpad_boxes,
)

torch.set_num_threads(1)

ANCHORS = [[4, 6], [6, 8], [8, 10], [10, 14], [14, 18], [18, 24], [24, 30], [30, 40], [40, 52]]


class TestMultiScaleSchedule(unittest.TestCase):
    def test_size_changes_only_every_ten_batches(self):
        schedule = MultiScaleSchedule(min_width=64, max_width=256, aspect=2.0, interval=10, seed=3)
        sizes = [schedule.size_at(i) for i in range(1, 201)]
        blocks = [sizes[k : k + 10] for k in range(0, 200, 10)]
        self.assertTrue(all(len(set(block)) == 1 for block in blocks))
        self.assertGreater(len({block[0] for block in blocks}), 3)  # it does change between blocks

    def test_sizes_are_multiples_of_32_at_the_aspect_ratio(self):
        schedule = MultiScaleSchedule(min_width=64, max_width=256, aspect=2.0)
        self.assertEqual([w for _, w in schedule.sizes], [64, 96, 128, 160, 192, 224, 256])
        for iteration in range(1, 300, 7):
            height, width = schedule.size_at(iteration)
            self.assertEqual((height % 32, width % 32), (0, 0))
            self.assertEqual(height, 2 * width)
            self.assertTrue(64 <= width <= 256)
        self.assertEqual(MultiScaleSchedule(96, 96, aspect=1.7).sizes, [(160, 96)])  # 163.2 -> nearest multiple of 32

    def test_the_seed_fixes_the_draws(self):
        def draws(seed):
            return [MultiScaleSchedule(64, 480, seed=seed).size_at(i) for i in range(1, 400, 10)]

        self.assertEqual(draws(0), draws(0))
        self.assertNotEqual(draws(0), draws(1))

    def test_bad_ranges_are_refused(self):
        for kwargs in ({"min_width": 48, "max_width": 96}, {"min_width": 128, "max_width": 64}, {"min_width": 64, "max_width": 96, "interval": 0}):
            with self.assertRaises(ValueError):
                MultiScaleSchedule(**kwargs)

    def test_handler_resizes_each_batch_before_the_step(self):
        schedule = MultiScaleSchedule(min_width=32, max_width=96, interval=2, seed=0)
        batch = collate_boxes([{"image": torch.rand(1, 256, 128), "boxes": torch.tensor([[16.0, 32, 48, 96]])}])
        seen = []

        def step(engine, batch):
            seen.append((tuple(batch["image"].shape[2:]), unpad_boxes(batch["label"])[0].tolist()))

        engine = Engine(step)
        MultiScaleResize(schedule).attach(engine)
        engine.run([batch] * 6, max_epochs=1)
        for iteration, (size, boxes) in enumerate(seen, start=1):
            self.assertEqual(size, schedule.size_at(iteration))
            scale_x, scale_y = size[1] / 128, size[0] / 256
            np.testing.assert_allclose(boxes, [[16 * scale_x, 32 * scale_y, 48 * scale_x, 96 * scale_y]], rtol=1e-5)


    def test_crops_keep_the_scale_and_frame_the_masses(self):
        schedule = MultiScaleSchedule(min_width=64, max_width=96, interval=3, seed=1)
        batch = collate_boxes(
            [
                {"image": torch.arange(256 * 128.0).reshape(1, 256, 128), "boxes": torch.tensor([[40.0, 100, 60, 120]])},
                {"image": torch.rand(1, 256, 128), "boxes": torch.zeros(0, 4)},
            ]
        )
        seen = []
        engine = Engine(lambda engine, batch: seen.append(batch))
        MultiScaleResize(schedule, crop_size=(64, 64), positive_fraction=1.0).attach(engine)
        engine.run([batch] * 6, max_epochs=1)
        for iteration, cropped in enumerate(seen, start=1):
            self.assertEqual(tuple(cropped["image"].shape), (2, 1, 64, 64))
            mass, normal = unpad_boxes(cropped["label"])
            self.assertEqual((len(mass), len(normal)), (1, 0))
            height, width = schedule.size_at(iteration)
            size = mass[0, 2:] - mass[0, :2]
            self.assertTrue(bool((size > 0).all()))  # a window holding the mass centre keeps part of it
            self.assertLessEqual(float(size[0]), 20 * width / 128 + 1e-4)  # never larger than the resized mass
            self.assertLessEqual(float(size[1]), 20 * height / 256 + 1e-4)
            self.assertTrue(bool((mass[0] >= 0).all() and (mass[0] <= 64).all()))
        with self.assertRaisesRegex(ValueError, "exceeds the smallest multi-scale size"):
            MultiScaleResize(schedule, crop_size=(256, 64))


class TestDetectorLoss(unittest.TestCase):
    def test_padded_batch_gives_the_yolo_loss_of_the_box_lists(self):
        torch.manual_seed(0)
        network = YOLOv3(in_channels=1, base_channels=2, anchors=ANCHORS).train()
        heads = network(torch.rand(2, 1, 64, 32))
        boxes = [torch.tensor([[2.0, 4, 12, 20], [10, 30, 30, 60]]), torch.zeros(0, 4)]
        padded = collate_boxes([{"image": torch.zeros(1, 64, 32), "boxes": b} for b in boxes])["label"]
        loss = DetectorLoss(anchors=ANCHORS)
        value = loss(heads, padded)
        reference = YOLOv3Loss(anchors=ANCHORS)(heads, boxes)
        self.assertAlmostEqual(float(value), float(reference), places=5)
        self.assertEqual(set(loss.terms), {"loss_box", "loss_objectness", "loss_class"})
        self.assertAlmostEqual(sum(loss.terms.values()), float(value), places=4)


class TestAnchors(unittest.TestCase):
    def boxes(self):
        rng = np.random.default_rng(0)
        corners = rng.uniform(0, 500, size=(40, 2))
        sizes = rng.uniform(20, 200, size=(40, 2))
        return np.c_[corners, corners + sizes]

    def test_fitted_anchors_are_nine_sorted_pairs_at_the_input_scale_written_to_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "detector" / "anchors.json"
            anchors = fit_anchors(self.boxes(), frame_size=(1024, 512), input_size=(256, 128), output_file=target, seed=0)
            self.assertEqual(np.shape(anchors), (9, 2))
            areas = np.prod(anchors, axis=1)
            self.assertTrue(np.all(np.diff(areas) >= 0))
            self.assertTrue(np.all(np.asarray(anchors) <= 200 / 4 + 1e-6))  # frame 1024 x 512 -> input / 4
            record = json.loads(target.read_text())
            self.assertEqual(record["anchors"], anchors)
            self.assertEqual((record["input_size"], record["frame_size"], record["boxes"]), ([256, 128], [1024, 512], 40))
            self.assertEqual(read_anchors(target), anchors)
            self.assertEqual(fit_anchors(self.boxes(), (1024, 512), (256, 128), seed=0), anchors)

    def test_boxes_measured_in_a_smaller_training_cache_give_the_same_anchors(self):
        in_frame = fit_anchors(self.boxes(), (1024, 512), (256, 128), seed=0)
        in_cache = fit_anchors(self.boxes() / 2, (1024, 512), (256, 128), seed=0, boxes_size=(512, 256))
        np.testing.assert_allclose(in_cache, in_frame, atol=0.011)  # rounded to 0.01 px

    def test_too_few_boxes_and_bad_files_are_refused(self):
        with self.assertRaisesRegex(ValueError, "5 training boxes"):
            fit_anchors(self.boxes()[:5], (1024, 512), (256, 128))
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(FileNotFoundError, "train the detector first"):
                read_anchors(Path(tmp) / "anchors.json")
            bad = Path(tmp) / "bad.json"
            bad.write_text(json.dumps({"anchors": [[1, 2]]}))
            with self.assertRaisesRegex(ValueError, "bad.json holds no valid detector anchors"):
                read_anchors(bad)

    def test_training_boxes_stack_every_sample(self):
        samples = [{"boxes": torch.tensor([[0.0, 0, 2, 3]])}, {"boxes": torch.zeros(0, 4)}, {"boxes": torch.ones(2, 4)}]
        self.assertEqual(training_boxes(samples).shape, (3, 4))


class TestCheckpointRefusal(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.checkpoint = Path(self.tmp.name) / "model.pt"
        torch.save(YOLOv3(in_channels=1, base_channels=2, anchors=ANCHORS).state_dict(), self.checkpoint)

    def tearDown(self):
        self.tmp.cleanup()

    def test_same_anchors_load_also_from_a_training_checkpoint(self):
        network = load_detector(self.checkpoint, ANCHORS, in_channels=1, base_channels=2)
        self.assertFalse(network.training)
        last = Path(self.tmp.name) / "checkpoint_last.pt"
        torch.save({"network": torch.load(self.checkpoint, weights_only=True), "optimizer": {}}, last)
        torch.testing.assert_close(load_detector(last, ANCHORS, base_channels=2).anchors, torch.tensor(ANCHORS, dtype=torch.float32))

    def test_other_anchors_are_refused_naming_both(self):
        other = [[w + 1, h] for w, h in ANCHORS]
        with self.assertRaisesRegex(ValueError, r"model\.pt does not fit.*anchors \[\[4\.0, 6\.0\].*configured anchors \[\[5\.0, 6\.0\]"):
            load_detector(self.checkpoint, other, base_channels=2)

    def test_other_class_count_is_refused(self):
        with self.assertRaisesRegex(ValueError, r"checkpoint has 1 classes, the configured network 2"):
            load_detector(self.checkpoint, ANCHORS, num_classes=2, base_channels=2)

    def test_missing_or_foreign_checkpoint(self):
        with self.assertRaisesRegex(FileNotFoundError, "no detector checkpoint"):
            load_detector(Path(self.tmp.name) / "none.pt", ANCHORS)
        foreign = Path(self.tmp.name) / "unet.pt"
        torch.save({"conv.weight": torch.zeros(1)}, foreign)
        with self.assertRaisesRegex(ValueError, "no YOLOv3 weights"):
            load_detector(foreign, ANCHORS)
