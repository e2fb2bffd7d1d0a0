"""What the served model accepts per row, before anything is segmented: DICOM and PNG files from base64, paths only
inside the operator's image folder (a refused path answers the same whether or not it exists), pixel arrays at their
bit depth, lesion boxes; images over the byte or pixel limit refused before any pixel is decoded; every bad row refused
in one line naming the row. Real files written with pydicom and PIL."""

from __future__ import annotations

import base64
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastseg.transforms.io.png import read_png_and_depth
from breastseg.workflows.errors import UserValueError
from breastseg.workflows.tracking.serving import ServingInputError, ServingPolicy, decode_png, encode_png, stage_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transforms"))
from mammo_factory import write_dicom  # noqa: E402

PIXELS = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 50


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def files(tmp_path):
    """An allowed image folder with a DICOM (no suffix), a PNG and a text file; a DICOM outside it, a symbolic link
    inside it to that DICOM, and an empty staging folder."""
    allowed, outside, staging = tmp_path / "allowed", tmp_path / "outside", tmp_path / "staging"
    for folder in (allowed, outside, staging):
        folder.mkdir()
    dicom = Path(write_dicom(allowed / "no_suffix", PIXELS))  # recognised by its 'DICM', not its name
    Image.fromarray(PIXELS).save(allowed / "image.png")
    (allowed / "notes.txt").write_text("no image")
    secret = Path(write_dicom(outside / "secret.dcm", PIXELS))
    (allowed / "link.dcm").symlink_to(secret)
    return {"allowed": allowed, "dicom": dicom, "secret": secret, "staging": staging}


def _stage(record, files, policy=ServingPolicy(), takes_roi=True, row=0):
    return stage_row(row, record, files["staging"], policy, takes_roi)


def test_base64_and_raw_dicom_and_png_become_files_named_by_their_format(files):
    path, boxes = _stage({"image": _b64(files["dicom"].read_bytes()), "roi": [[1, 20, 2, 15], [3, 9, 4, 8]]}, files)
    assert path.name == "row00000.dcm" and path.read_bytes() == files["dicom"].read_bytes() and boxes == [[1, 20, 2, 15], [3, 9, 4, 8]]
    path, boxes = _stage({"image": _b64((files["allowed"] / "image.png").read_bytes())}, files, row=1)
    assert path.name == "row00001.png" and boxes is None
    path, _ = _stage({"image": files["dicom"].read_bytes()}, files, row=2)  # raw bytes: Parquet requests, DataFrames
    assert path.name == "row00002.dcm" and path.read_bytes() == files["dicom"].read_bytes()


def test_paths_are_refused_by_default_and_the_answer_never_says_whether_a_file_exists(files):
    answers = set()
    for value in (str(files["dicom"]), str(files["secret"]), "/etc/passwd", "/no/such/file.dcm", "image.png"):
        with pytest.raises(ServingInputError) as error:
            _stage({"image": value}, files)
        answers.add(str(error.value))
    (answer,) = answers  # the same line for existing and missing files alike
    assert answer.startswith("row 0: 'image' is not base64") and "reads no file paths" in answer


def test_an_allowed_folder_serves_its_files_and_nothing_outside_it(files):
    policy = ServingPolicy.from_model_config({"image_folder": str(files["allowed"])})
    for row, value in enumerate(("image.png", str(files["dicom"]), "sub/../image.png")):
        path, _ = _stage({"image": value}, files, policy, row=row)
        assert path.is_symlink() and path.resolve().parent == files["allowed"].resolve()  # read in place, never copied
    escapes = ("../outside/secret.dcm", str(files["secret"]), "link.dcm", "missing.dcm", "/etc/passwd", "../../../../etc/passwd")
    answers = set()
    for value in escapes:
        with pytest.raises(ServingInputError) as error:
            _stage({"image": value}, files, policy)
        answers.add(str(error.value))
    (answer,) = answers  # '..' and symbolic links lead nowhere outside; existing or not, one answer
    assert "nor" not in answer and "the path of a file in the server's image folder" in answer
    with pytest.raises(ServingInputError, match="row 0: the file is neither a PNG nor a DICOM file"):
        _stage({"image": "notes.txt"}, files, policy)


def test_arrays_are_written_at_their_bit_depth(files):
    eight = np.array([[0, 255], [7, 9]])
    sixteen = [[0, 4095], [300, 9]]  # as JSON gives it: nested lists
    for row, (pixels, depth) in enumerate(((eight, 8), (sixteen, 16))):
        path, _ = _stage({"array": pixels}, files, row=row)
        array, bit_depth = read_png_and_depth(path)
        assert bit_depth == depth and np.array_equal(array, np.asarray(pixels))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(rows: int, columns: int) -> bytes:
    """A PNG whose header claims ``rows`` x ``columns`` 16-bit grey pixels, with the data of one row behind it."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", columns, rows, 16, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(b"\0" * (1 + 2 * columns))) + _chunk(b"IEND", b"")


def test_over_the_limits_is_refused_before_decoding_with_the_limit_named(files):
    policy = ServingPolicy(max_pixels=10_000, max_bytes=1_000)
    # over the byte limit: refused from the text's length, before base64 is decoded (this text is not even base64)
    with pytest.raises(ServingInputError, match=r"row 0: the image file is 1,500 bytes, over this server's limit of 1,000 bytes \(max_bytes\)"):
        _stage({"image": "!" * 2000}, files, policy)
    with pytest.raises(ServingInputError, match=r"row 0: the image file is 2,000 bytes, over this server's limit of 1,000 bytes"):
        _stage({"image": b"!" * 2000}, files, policy)
    # a header claiming 200 x 100 pixels with one row of data behind it: refused by the header alone
    with pytest.raises(ServingInputError, match=r"200 x 100 = 20,000 pixels, over this server's limit of 10,000 pixels \(max_pixels\)"):
        _stage({"image": _b64(_png_header(200, 100))}, files, policy)
    # nested lists: refused by their lengths, before an array is built
    with pytest.raises(ServingInputError, match="over this server's limit of 10,000 pixels"):
        _stage({"array": [[0] * 200] * 100}, files, policy)
    big = ServingPolicy()  # the defaults fit a full-field mammogram: 4084 x 3328, 16-bit
    assert big.max_pixels >= 4084 * 3328 and big.max_bytes >= 4084 * 3328 * 2 + 4096


@pytest.mark.parametrize(
    "row, message",
    [
        ({"image": "not base64!"}, "row 0: 'image' is not base64"),
        ({"image": _b64(b"plain text, no image")}, "row 0: the base64 'image' is neither a PNG nor a DICOM file"),
        ({"image": 5}, "row 0: 'image' must be the bytes of a DICOM or PNG file (base64 text in JSON, raw bytes in Parquet), got int"),
        ({"image": b"raw, no image"}, "row 0: the raw 'image' is neither a PNG nor a DICOM file"),
        ({"image": _b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)}, "row 0: the image's header cannot be read"),
        ({"array": [[0.5, 1.5]]}, "row 0: 'array' must hold integer pixel values"),
        ({"array": [[-1, 3]]}, "values must lie from 0 to 65535"),
        ({"array": [1, 2, 3]}, "must be a 2-D image"),
        ({"array": [[1, 2], [3]]}, "must be a 2-D image (rows of equal length)"),
        ({"image": None, "array": None}, "give exactly one of 'image'"),
        ({"image": encode_png(np.zeros((2, 2), np.uint8)), "array": [[1]]}, "give exactly one of 'image'"),
        ({"image": encode_png(np.zeros((2, 2), np.uint8)), "roi": [[1, 2, 3]]}, "'roi' must be a list of boxes"),
        ({"image": encode_png(np.zeros((2, 2), np.uint8)), "roi": "box"}, "'roi' must be a list of boxes"),
    ],
)
def test_bad_rows_are_refused_in_one_line(files, row, message):
    with pytest.raises(ServingInputError) as error:
        _stage(row, files)
    assert message in str(error.value) and "\n" not in str(error.value) and str(files["staging"]) not in str(error.value)


def test_boxes_for_a_whole_image_model_are_refused(files):
    with pytest.raises(ServingInputError, match="row 0: 'roi' was given, but this model segments whole images"):
        _stage({"image": encode_png(np.zeros((2, 2), np.uint8)), "roi": [[0, 1, 0, 1]]}, files, takes_roi=False)


def test_model_config_is_checked_in_one_line(tmp_path):
    with pytest.raises(UserValueError, match=r"unknown model_config key\(s\) \['image_dir'\]"):
        ServingPolicy.from_model_config({"image_dir": str(tmp_path)})
    with pytest.raises(UserValueError, match="is no folder on the server"):
        ServingPolicy.from_model_config({"image_folder": str(tmp_path / "missing")})
    with pytest.raises(UserValueError, match="max_pixels must be a positive integer"):
        ServingPolicy.from_model_config({"max_pixels": 0})
    assert ServingPolicy.from_model_config({"image_folder": str(tmp_path), "max_bytes": 5}) == ServingPolicy(tmp_path.resolve(), max_bytes=5)


def test_png_round_trip_keeps_the_mask():
    mask = (np.arange(12).reshape(3, 4) % 2 * 255).astype(np.uint8)
    assert np.array_equal(decode_png(encode_png(mask)), mask)
