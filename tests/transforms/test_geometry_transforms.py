"""Geometry transforms: artefact removal, canonical side, breast-centred padding, lesion ROI crops,
paste-back and detector views; every geometry change inverts back to the original image."""

import unittest

import numpy as np
import torch
from mammo_factory import phantom_mammogram
from monai.data import MetaTensor

from breastseg.transforms import (
    MSF_SCALES_WH,
    BorderCropd,
    BreastCentredSquarePadd,
    CanonicalSided,
    LesionRoiCropd,
    NoBreastFoundError,
    RemoveArtefacts,
    RemoveArtefactsd,
    detector_views,
    lesion_boxes,
    paste_back,
)

torch.set_num_threads(1)
SPACING = torch.diag(torch.tensor([0.07, 0.05, 1.0, 1.0], dtype=torch.float64))


def _sample(side="left", artefacts=True):
    image, mask = phantom_mammogram(side=side, artefacts=artefacts)
    meta = {"filename_or_obj": f"/data/{side}.dcm"}
    return {
        "image": MetaTensor(torch.as_tensor(image.astype(np.float32))[None], affine=SPACING.clone(), meta=dict(meta)),
        "label": MetaTensor(torch.as_tensor(mask.astype(np.float32))[None], affine=SPACING.clone(), meta=dict(meta)),
    }, image, mask


class TestArtefactsAndSide(unittest.TestCase):
    def test_label_and_border_line_removed_breast_kept(self):
        d, image, mask = _sample()
        out = RemoveArtefactsd("image")(d)["image"][0].numpy()
        self.assertTrue(np.all(out[-14:-6, -30:-8] == image.min()))  # film label gone
        self.assertTrue(np.all(out[:, -2:] == image.min()))  # border line gone
        np.testing.assert_array_equal(out[mask], image[mask].astype(np.float32))  # lesions untouched
        self.assertEqual(out[80, 30], image[80, 30])  # breast tissue kept
        torch.testing.assert_close(d["label"], RemoveArtefactsd("image")(d)["label"])  # labels as annotated

    def test_no_breast_is_an_error_naming_the_file(self):
        blank = MetaTensor(torch.zeros(1, 64, 48), meta={"filename_or_obj": "/data/blank.dcm"})
        with self.assertRaisesRegex(NoBreastFoundError, "blank.dcm"):
            RemoveArtefacts()(blank)
        self.assertTrue(issubclass(NoBreastFoundError, ValueError))

    def test_right_breast_flipped_left_and_back(self):
        d, image, mask = _sample(side="right")
        flipper = CanonicalSided(["image", "label"])
        out = flipper(d)
        np.testing.assert_array_equal(out["image"][0].numpy(), image[:, ::-1])
        np.testing.assert_array_equal(out["label"][0].numpy(), mask[:, ::-1].astype(np.float32))
        back = flipper.inverse(out)
        np.testing.assert_array_equal(back["image"][0].numpy(), image)
        left, _, _ = _sample(side="left")
        kept = flipper(left)
        np.testing.assert_array_equal(kept["image"].numpy(), left["image"].numpy())  # already canonical
        self.assertEqual(len(kept["image"].applied_operations), 1)  # recorded anyway, inverse is valid
        torch.testing.assert_close(flipper.inverse(kept)["image"].as_tensor(), left["image"].as_tensor())


class TestPadCrop(unittest.TestCase):
    def test_square_pad_centres_the_breast_and_inverts(self):
        d, image, mask = _sample(artefacts=False)
        padder = BreastCentredSquarePadd(["image", "label"])
        out = padder(d)
        self.assertEqual(tuple(out["image"].shape), (1, 160, 160))
        # the breast (columns 0..76, centre ~38) wants 42 columns of padding on its chest-wall side;
        # all 32 available go there
        self.assertEqual(out["image"].applied_operations[-1]["extra_info"]["padded"][2], (32, 0))
        np.testing.assert_array_equal(out["image"][0, :, 32:].numpy(), image)
        np.testing.assert_allclose(out["image"].affine.diag().numpy(), SPACING.diag().numpy())  # spacing unchanged
        back = padder.inverse(out)
        np.testing.assert_array_equal(back["image"][0].numpy(), image)
        np.testing.assert_array_equal(back["label"][0].numpy(), mask.astype(np.float32))

    def test_border_crop_inverts_with_zero_border(self):
        d, image, _ = _sample()
        cropper = BorderCropd(["image", "label"], fraction=0.05)
        out = cropper(d)
        self.assertEqual(tuple(out["image"].shape), (1, 144, 116))
        back = cropper.inverse(out)["image"][0].numpy()
        self.assertEqual(back.shape, image.shape)
        np.testing.assert_array_equal(back[8:-8, 6:-6], image[8:-8, 6:-6])
        self.assertEqual(back[0].max(), 0)
        with self.assertRaises(ValueError):
            BorderCropd("image", fraction=0.5)

    def test_one_sample_per_lesion_with_box_and_inverse(self):
        d, image, mask = _sample()
        cropper = LesionRoiCropd(["image", "label"], margin=0.25, min_size=8)
        samples = cropper(d)
        self.assertEqual(len(samples), 2)
        self.assertEqual([s["lesion_index"] for s in samples], [0, 1])
        # radius-8 lesion at (60, 40): 17 px box, side round(17 * 1.5) = 26, centred on it
        self.assertEqual(samples[0]["roi_box"], [48, 74, 28, 54])
        for sample in samples:
            r0, r1, c0, c1 = sample["roi_box"]
            self.assertEqual(r1 - r0, c1 - c0)  # square
            np.testing.assert_array_equal(sample["image"][0].numpy(), image[r0:r1, c0:c1])
            self.assertGreater(float(sample["label"].sum()), 0)
            back = cropper.inverse(sample)
            self.assertEqual(tuple(back["image"].shape), (1, *image.shape))
            np.testing.assert_array_equal(back["label"][0, r0:r1, c0:c1].numpy(), mask[r0:r1, c0:c1])
            torch.testing.assert_close(back["image"].affine, SPACING)

    def test_no_lesion_is_an_error_and_boxes_can_be_given(self):
        d, image, _ = _sample()
        d["label"] = d["label"] * 0
        with self.assertRaisesRegex(ValueError, "left.dcm"):
            LesionRoiCropd(["image", "label"])(d)
        only_image = {"image": d["image"], "roi_boxes": [[0, 20, 0, 30]]}
        (sample,) = LesionRoiCropd("image")(only_image)
        self.assertEqual(tuple(sample["image"].shape), (1, 20, 30))

    def test_lesion_boxes_stay_inside_the_image(self):
        label = np.zeros((40, 30), bool)
        label[0:3, 27:30] = True  # corner lesion
        label[15:35, 5:9] = True  # tall thin lesion
        boxes = lesion_boxes(label, margin=0.5, min_size=10)
        self.assertEqual(boxes[0], (0, 10, 20, 30))  # min_size, shifted inside
        self.assertEqual(boxes[1], (0, 40, 0, 30))  # side 40: fits the rows, clipped to the 30 columns
        self.assertEqual(lesion_boxes(np.zeros((5, 5))), [])


class TestPasteBackAndViews(unittest.TestCase):
    def test_paste_back_resizes_into_the_box(self):
        patch = torch.ones(1, 8, 8)
        canvas = paste_back([patch, 0.5 * torch.ones(1, 4, 4)], [(2, 6, 3, 11), (4, 8, 8, 12)], (10, 14), mode="nearest")
        self.assertEqual(tuple(canvas.shape), (1, 10, 14))
        self.assertEqual(float(canvas[0, 2:6, 3:11].min()), 1.0)
        self.assertEqual(canvas[0, 6:8, 8:12].unique().tolist(), [0.5])
        self.assertEqual(float(canvas.sum()), 4 * 8 + 0.5 * (16 - 6))  # overlap keeps the maximum
        with self.assertRaises(ValueError):
            paste_back([patch], [(0, 20, 0, 5)], (10, 14))

    def test_detector_views_sizes_and_spacing(self):
        d, _, _ = _sample()
        views = detector_views(d["image"])
        self.assertEqual([tuple(v.shape[1:]) for v in views], [(h, w) for w, h in MSF_SCALES_WH])
        np.testing.assert_allclose(views[0].affine.diag()[:2].numpy(), [0.07 * 160 / 320, 0.05 * 128 / 160])


if __name__ == "__main__":
    unittest.main()
