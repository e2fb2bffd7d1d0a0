"""What the served model accepts per row, written into the folder the bundle's inference.json reads: DICOM and PNG
files from base64 or a path (read in place), pixel arrays at their bit depth, lesion boxes as a ``--roi_file``; every
bad row refused in one line naming the row."""

from __future__ import annotations

import base64
import csv
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from breastseg.transforms.io.png import read_png_and_depth
from breastseg.workflows.errors import UserValueError
from breastseg.workflows.tracking.serving import decode_png, encode_png, stage_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transforms"))
from mammo_factory import write_dicom  # noqa: E402


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_base64_and_paths_become_dicom_and_png_files_and_boxes_a_roi_file(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    pixels = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 50
    dicom = Path(write_dicom(source / "no_suffix", pixels))  # DICOM without a suffix: recognised by its 'DICM'
    png = source / "image.png"
    Image.fromarray(pixels).save(png)
    before = {path.name: path.read_bytes() for path in source.iterdir()}
    frame = pd.DataFrame({"image": [_b64(dicom), str(png), str(dicom)], "roi": [[[1, 20, 2, 15], [3, 9, 4, 8]], None, None]})
    staging = tmp_path / "staging"
    staging.mkdir()
    files, roi_file = stage_inputs(frame, staging)
    assert [f.name for f in files] == ["row00000.dcm", "row00001.png", "row00002.dcm"]
    assert files[0].read_bytes() == dicom.read_bytes() and not files[0].is_symlink()
    assert files[1].is_symlink() and files[1].resolve() == png.resolve()  # read in place, never copied or changed
    assert {path.name: path.read_bytes() for path in source.iterdir()} == before
    with open(roi_file, newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["image", "row_start", "row_end", "col_start", "col_end"], ["row00000.dcm", "1", "20", "2", "15"], ["row00000.dcm", "3", "9", "4", "8"],
        ]


def test_arrays_are_written_at_their_bit_depth(tmp_path):
    eight = np.array([[0, 255], [7, 9]])
    sixteen = np.array([[0, 4095], [300, 9]])
    files, roi_file = stage_inputs(pd.DataFrame({"array": [eight, sixteen]}), tmp_path)
    assert roi_file is None
    for path, pixels, depth in zip(files, (eight, sixteen), (8, 16)):
        array, bit_depth = read_png_and_depth(path)
        assert bit_depth == depth and np.array_equal(array, pixels)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"image": "not base64!"}, "row 0: 'image' is neither an existing file on the server nor base64"),
        ({"image": base64.b64encode(b"plain text, no image").decode()}, "decodes to neither a PNG nor a DICOM"),
        ({"array": [[0.5, 1.5]]}, "row 0: 'array' must hold integer pixel values"),
        ({"array": [[-1, 3]]}, "values must lie from 0 to 65535"),
        ({"array": [1, 2, 3]}, "must be a 2-D image"),
        ({"image": None, "array": None}, "give exactly one of 'image'"),
        ({"image": encode_png(np.zeros((2, 2), np.uint8)), "array": [[1]]}, "give exactly one of 'image'"),
        ({"image": encode_png(np.zeros((2, 2), np.uint8)), "roi": [[1, 2, 3]]}, "'roi' must be a list of boxes"),
        ({"image": encode_png(np.zeros((2, 2), np.uint8)), "label": "x"}, "unknown input column(s) ['label']"),
    ],
)
def test_bad_rows_are_refused_in_one_line(tmp_path, row, message):
    with pytest.raises(UserValueError) as error:
        stage_inputs(pd.DataFrame([row]), tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_png_round_trip_keeps_the_mask():
    mask = (np.arange(12).reshape(3, 4) % 2 * 255).astype(np.uint8)
    assert np.array_equal(decode_png(encode_png(mask)), mask)
