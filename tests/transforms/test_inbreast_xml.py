"""INbreast plist reading and rasterising, on plists written in the release's exact form."""

from __future__ import annotations

import plistlib
import tempfile
import unittest
from pathlib import Path

import numpy as np
from parameterized import parameterized

from breastseg.transforms.io.inbreast_xml import (
    points_outside,
    rasterize_inbreast_rois,
    read_inbreast_rois,
    roi_kind,
)

PROLOG = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
    '<plist version="1.0">\n'
)


def roi_dict(name: str, roi_type: int, points: list[tuple[float, float]], declared: int | None = None) -> dict:
    return {
        "Area": 0.0, "Center": "(0.000000, 0.000000, 0.000000)", "Dev": 0.0, "IndexInImage": 0, "Max": 0.0,
        "Mean": 0.0, "Min": 0.0, "Name": name, "NumberOfPoints": len(points) if declared is None else declared,
        "Point_mm": ["(0.000000, 0.000000, 0.000000)"] * len(points),
        "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in points], "Total": 0.0, "Type": roi_type,
    }


def write_plist(path: Path, rois: list[dict]) -> Path:
    document = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}
    data = plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=True)
    assert data.decode().startswith(PROLOG)  # the release's prolog, byte for byte
    path.write_bytes(data)
    return path


SQUARE = [(2.0, 1.0), (5.0, 1.0), (5.0, 3.0), (2.0, 3.0)]  # columns 2-5, rows 1-3


class TestReadInbreastRois(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())

    def test_reads_names_kinds_types_and_xy_points(self):
        path = write_plist(
            self.dir / "20586908.xml",
            [
                roi_dict("Espiculated Region", 15, SQUARE),
                roi_dict("Calcification", 19, [(7.25, 8.5)]),
                roi_dict("Point 1", 19, [(1.0, 1.0)]),
            ],
        )
        rois = read_inbreast_rois(path)
        self.assertEqual([r.name for r in rois], ["Espiculated Region", "Calcification", "Point 1"])
        self.assertEqual([r.kind for r in rois], ["mass", "calcification", "unknown"])
        self.assertEqual([r.roi_type for r in rois], [15, 19, 19])
        np.testing.assert_array_equal(rois[0].points, np.array(SQUARE))
        np.testing.assert_array_equal(rois[1].points, [[7.25, 8.5]])  # (x, y), not (y, x)

    @parameterized.expand(
        [
            ("Mass", "mass"), ("Spiculated Region", "mass"), ("spiculated  region ", "mass"),
            ("Espiculated Region", "mass"), ("Calcifications", "calcification"), ("Cluster", "calcification"),
            ("Assymetry", "asymmetry"), ("Distortion", "distortion"), ("Unnamed", "unknown"), ("Point 3", "unknown"),
        ]
    )
    def test_name_variants(self, name, kind):
        self.assertEqual(roi_kind(name), kind)

    def test_number_of_points_mismatch_names_file(self):
        path = write_plist(self.dir / "bad.xml", [roi_dict("Mass", 15, SQUARE, declared=5)])
        with self.assertRaisesRegex(ValueError, r"bad\.xml.*NumberOfPoints=5.*4 Point_px"):
            read_inbreast_rois(path)

    def test_malformed_plist_names_file(self):
        path = self.dir / "broken.xml"
        path.write_text(PROLOG + "<dict><key>Images</key><array>")
        with self.assertRaisesRegex(ValueError, r"broken\.xml"):
            read_inbreast_rois(path)

    def test_plist_without_rois_names_file(self):
        path = self.dir / "other.xml"
        path.write_bytes(plistlib.dumps({"Something": 1}, fmt=plistlib.FMT_XML))
        with self.assertRaisesRegex(ValueError, r"other\.xml.*'Images'"):
            read_inbreast_rois(path)

    def test_bad_point_string_names_file(self):
        roi = roi_dict("Mass", 15, SQUARE)
        roi["Point_px"][1] = "(3.0; 4.0)"
        path = write_plist(self.dir / "point.xml", [roi])
        with self.assertRaisesRegex(ValueError, r"point\.xml.*ROI 0.*'\(3\.0; 4\.0\)'"):
            read_inbreast_rois(path)

    def test_missing_file(self):
        with self.assertRaises(FileNotFoundError):
            read_inbreast_rois(self.dir / "absent.xml")


class TestRasterize(unittest.TestCase):
    def setUp(self):
        path = write_plist(
            Path(tempfile.mkdtemp()) / "x.xml",
            [
                roi_dict("Mass", 15, SQUARE),
                roi_dict("Calcification", 19, [(7.4, 8.6)]),
                roi_dict("Spiculated region", 15, [(8.0, -2.0), (12.0, -2.0), (12.0, 1.0), (8.0, 1.0)]),
            ],
        )
        self.rois = read_inbreast_rois(path)

    def test_polygon_fill_and_clipping_for_masses(self):
        mask = rasterize_inbreast_rois(self.rois, (10, 10))
        expected = np.zeros((10, 10), dtype=bool)
        expected[1:4, 2:6] = True  # the square, edges included
        expected[0:2, 8:10] = True  # the second mass, clipped at the top and right edges
        self.assertEqual(mask.dtype, bool)
        np.testing.assert_array_equal(mask, expected)

    def test_points_set_single_pixels(self):
        mask = rasterize_inbreast_rois(self.rois, (10, 10), kinds=("calcification",))
        self.assertEqual(list(zip(*np.nonzero(mask))), [(9, 7)])

    def test_shape_is_taken_from_the_caller(self):
        self.assertEqual(rasterize_inbreast_rois(self.rois, (33, 27)).shape, (33, 27))

    def test_points_outside_lists_only_the_clipped_points(self):
        outside = points_outside(self.rois, (10, 10))
        self.assertEqual([(p.roi_index, p.x, p.y) for p in outside], [(2, 8.0, -2.0), (2, 12.0, -2.0), (2, 12.0, 1.0)])
        larger = points_outside(self.rois, (20, 20))
        self.assertEqual([(p.roi_index, p.name, p.x, p.y) for p in larger], [(2, "Spiculated region", 8.0, -2.0), (2, "Spiculated region", 12.0, -2.0)])

    @parameterized.expand([((10,),), ((0, 10),), ((10, -1),)])
    def test_bad_shape(self, shape):
        with self.assertRaisesRegex(ValueError, "shape"):
            rasterize_inbreast_rois(self.rois, shape)

    def test_unknown_kind(self):
        with self.assertRaisesRegex(ValueError, "tumour"):
            rasterize_inbreast_rois(self.rois, (10, 10), kinds=("tumour",))


if __name__ == "__main__":
    unittest.main()
