"""The synthetic ultrasound renderer and the BUSI / UDIAT layout writers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import unittest
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from openpyxl import load_workbook
from parameterized import parameterized
from PIL import Image
from scipy import ndimage

from breastseg.workflows.data.synthetic import generate
from breastseg.workflows.data.synthetic.ultrasound import LesionStyle, render_ultrasound, sample_lesion_styles

torch.set_num_threads(1)
# the console script installed beside the interpreter that runs the tests (any venv, any machine)
BREASTSEG = str(Path(sys.executable).with_name("breastseg"))


def render(seed: int, posterior: str = "none", shape: str = "oval", **kwargs):
    return render_ultrasound(np.random.default_rng(seed), 150, 170, [LesionStyle(shape, posterior, 0.15)], **kwargs)


def posterior_ratio(seed: int, posterior: str) -> float:
    """Mean brightness just below the lesion over the same rows beside it."""
    frame = render(seed, posterior, annotations=False)
    mask, image = frame.lesion_masks[0], frame.image.astype(float)
    cols = np.flatnonzero(mask.any(axis=0))
    left, right, width = cols.min(), cols.max(), cols.max() - cols.min()
    band = slice(np.flatnonzero(mask.any(axis=1)).max() + 3, None)
    below = image[band, left + width // 4:right - width // 4].mean()
    beside = np.concatenate([image[band, max(0, left - width):left - width // 4].ravel(),
                             image[band, right + width // 4:right + width].ravel()]).mean()
    return below / beside


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class TestRenderer(unittest.TestCase):
    def test_deterministic_by_seed(self):
        first, again, other = render(5), render(5), render(6)
        np.testing.assert_array_equal(first.image, again.image)
        np.testing.assert_array_equal(first.lesion_masks[0], again.lesion_masks[0])
        self.assertFalse(np.array_equal(first.image, other.image))

    @parameterized.expand([(shape,) for shape in ("oval", "lobulated", "irregular")])
    def test_lesion_is_hypoechoic_and_inside_field_of_view(self, shape):
        for seed in range(3):
            frame = render(seed, shape=shape)
            mask, image = frame.lesion_masks[0], frame.image.astype(float)
            self.assertEqual((frame.image.dtype, mask.dtype, mask.shape), (np.uint8, np.bool_, (150, 170)))
            self.assertGreater(mask.sum(), 100)
            ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=2)
            self.assertLess(image[mask].mean(), 0.9 * image[ring].mean())
            self.assertFalse(mask[: int(0.07 * 150)].any())  # never under the text band

    def test_posterior_shadow_darkens_and_enhancement_brightens(self):
        seeds = range(6)
        shadow = np.mean([posterior_ratio(s, "shadow") for s in seeds])
        none = np.mean([posterior_ratio(s, "none") for s in seeds])
        enhancement = np.mean([posterior_ratio(s, "enhancement") for s in seeds])
        self.assertLess(shadow, none - 0.08)
        self.assertGreater(enhancement, none + 0.08)

    def test_several_lesions_do_not_overlap_and_speckle_is_rough(self):
        rng = np.random.default_rng(1)
        frame = render_ultrasound(rng, 200, 220, sample_lesion_styles(rng, "benign", 3))
        self.assertEqual(len(frame.lesion_masks), 3)
        self.assertEqual(int(np.sum(frame.lesion_masks, axis=0).max()), 1)
        normal = render_ultrasound(np.random.default_rng(2), 200, 220, [], annotations=False)
        tissue = normal.image[40:180, 20:200].astype(float)
        # multiplicative speckle: strong pixel-to-pixel variation relative to the local mean
        local = ndimage.uniform_filter(tissue, 9)
        self.assertGreater(np.std(tissue - local) / tissue.mean(), 0.2)

    def test_calipers_and_text_are_burned_in_but_not_in_mask(self):
        plain = render(3, annotations=False)
        marked = render(3, calipers=True, annotations=True)
        np.testing.assert_array_equal(plain.lesion_masks[0], marked.lesion_masks[0])
        changed = plain.image != marked.image
        self.assertTrue(changed[: int(0.07 * 150)].any())  # label in the top band
        self.assertTrue(changed[int(0.07 * 150):].any())  # calipers in the field

    def test_dark_lesion_interior_never_makes_nan_pixels(self):
        """Case 95 of the full-size malignant draw: its noisy lesion interior went below zero, and the log
        compression turned those pixels into NaN (cast to arbitrary bytes)."""
        from breastseg.workflows.data.synthetic._us_common import case_rng, frame_size

        rng = case_rng(0, 0, 95)
        height, width = frame_size(rng, (500, 450), (60, 50), (300, 250), (720, 620), True)
        with np.errstate(invalid="raise"):
            frame = render_ultrasound(rng, height, width, sample_lesion_styles(rng, "malignant", 1))
        self.assertGreater(frame.image[frame.lesion_masks[0]].max(), 0)

    def test_invalid_parameters_raise(self):
        with self.assertRaisesRegex(ValueError, "lesion shape"):
            LesionStyle("star")
        with self.assertRaisesRegex(ValueError, "posterior"):
            LesionStyle("oval", "glow")
        with self.assertRaisesRegex(ValueError, "scale"):
            LesionStyle("oval", "none", 0.9)
        with self.assertRaisesRegex(ValueError, "at least 64x64"):
            render_ultrasound(np.random.default_rng(0), 40, 200)
        with self.assertRaisesRegex(ValueError, "pathology"):
            sample_lesion_styles(np.random.default_rng(0), "normal", 1)


class TestLayouts(unittest.TestCase):
    def setUp(self):
        self._tmp = TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.tmp = Path(self._tmp.name)

    def test_busi_files_modes_and_traps(self):
        summary = generate("busi", self.tmp / "a", cases=12, seed=0)
        base = self.tmp / "a" / "Dataset_BUSI_with_GT"
        names = {p.relative_to(base).as_posix() for p in base.rglob("*.png")}
        expected = {f"benign/benign ({n}).png" for n in range(1, 8)} | {f"benign/benign ({n})_mask.png" for n in range(1, 8)}
        expected |= {"benign/benign (4)_mask_1.png", "benign/benign (4)_mask_2.png", "malignant/malignant (3)_mask_1.png"}
        expected |= {f"malignant/malignant ({n}){s}.png" for n in (1, 2, 3) for s in ("", "_mask")}
        expected |= {f"normal/normal ({n}){s}.png" for n in (1, 2) for s in ("", "_mask")}
        self.assertEqual(names, expected)
        self.assertEqual((summary["images"], summary["lesions"], summary["mask_files"]), (12, 13, 15))
        modes = {name: Image.open(base / name).mode for name in names}
        self.assertEqual(modes["malignant/malignant (2)_mask.png"], "RGBA")
        self.assertEqual(modes["benign/benign (5)_mask.png"], "RGB")
        self.assertEqual(modes["benign/benign (1).png"], "RGB")
        self.assertEqual(modes["benign/benign (7).png"], "L")
        rgb = np.asarray(Image.open(base / "benign/benign (1).png"))
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # grey content stored as RGB
        for n in (1, 2):
            self.assertFalse(np.asarray(Image.open(base / f"normal/normal ({n})_mask.png")).any())
        duplicate = np.asarray(Image.open(base / "benign/benign (7).png"))
        np.testing.assert_array_equal(duplicate, np.asarray(Image.open(base / "benign/benign (2).png"))[..., 0])
        for name in names - {n for n in names if "_mask" in n}:
            with Image.open(base / name) as image, Image.open(base / name.replace(".png", "_mask.png")) as mask:
                self.assertEqual(image.size, mask.size)
                self.assertTrue(100 <= image.width <= 360, image.size)

    def test_busi_full_size_and_determinism(self):
        generate("busi", self.tmp / "full", cases=6, seed=1, full_size=True)
        with Image.open(self.tmp / "full/Dataset_BUSI_with_GT/benign/benign (1).png") as image:
            self.assertTrue(300 <= image.width <= 720 and 250 <= image.height <= 620, image.size)
        generate("busi", self.tmp / "b1", cases=6, seed=1)
        generate("busi", self.tmp / "b2", cases=6, seed=1)
        generate("busi", self.tmp / "b3", cases=6, seed=2)
        self.assertEqual(tree_digest(self.tmp / "b1"), tree_digest(self.tmp / "b2"))
        self.assertNotEqual(tree_digest(self.tmp / "b1"), tree_digest(self.tmp / "b3"))

    def test_udiat_files_xlsx_and_grey_gt(self):
        summary = generate("udiat", self.tmp / "u", cases=8, seed=0, full_size=True)
        base = self.tmp / "u" / "Dataset_B"
        stems = [f"{n:06d}.png" for n in range(1, 9)]
        self.assertEqual(sorted(p.name for p in (base / "original").iterdir()), stems)
        self.assertEqual(sorted(p.name for p in (base / "GT").iterdir()), stems)
        self.assertEqual((summary["benign"], summary["malignant"], summary["gt_with_grey_margins"]), (6, 2, 2))
        self.assertEqual(summary["near_duplicates"], [{"source": "original/000001.png", "copy": "original/000008.png",
                                                       "transform": "rescaled"}])
        rows = list(load_workbook(base / "DatasetB.xlsx").worksheets[0].iter_rows(values_only=True))
        self.assertEqual([str(h).strip() for h in rows[0][:3]], ["Image", "Type", "Diagnosis"])
        self.assertEqual([r[0] for r in rows[1:]], list(range(1, 9)))
        self.assertEqual({r[0] for r in rows[1:] if r[1] == "Malignant"}, {3, 6})  # 8 copies benign 1
        for stem in stems:
            with Image.open(base / "original" / stem) as image, Image.open(base / "GT" / stem) as gt:
                self.assertEqual((image.mode, image.size), ("L", gt.size))
                self.assertTrue(344 <= image.width <= 753 and 233 <= image.height <= 617, image.size)
                values = set(np.unique(np.asarray(gt)).tolist())
                self.assertEqual(values <= {0, 255}, stem not in ("000004.png", "000008.png"))

    def test_refuses_non_empty_folder_and_too_few_cases(self):
        (self.tmp / "used").mkdir()
        (self.tmp / "used" / "keep.txt").write_text("user data")
        with self.assertRaisesRegex(FileExistsError, "not empty"):
            generate("busi", self.tmp / "used", cases=6)
        with self.assertRaisesRegex(ValueError, "at least 6"):
            generate("busi", self.tmp / "few", cases=5)
        with self.assertRaisesRegex(ValueError, "at least 3"):
            generate("udiat", self.tmp / "few", cases=2)

    def test_synth_console_script(self):
        done = subprocess.run([BREASTSEG, "synth", "--layout", "udiat", "--out", str(self.tmp / "cli"), "--cases", "4",
                               "--seed", "3"], capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("images: 4", done.stdout)
        busi = subprocess.run([BREASTSEG, "synth", "--layout", "busi", "--out", str(self.tmp / "cli_busi"), "--cases", "12"],
                              capture_output=True, text=True, timeout=120)
        self.assertIn("near_duplicates: 1\n  benign/benign (6).png re-exports benign/benign (1).png (rescaled)\n", busi.stdout)
        self.assertEqual(len(list((self.tmp / "cli" / "Dataset_B" / "GT").glob("*.png"))), 4)


if __name__ == "__main__":
    unittest.main()
