"""INbreast lesion annotations: the OsiriX plist XML (``AllXML/<FileName>.xml``) read and rasterised.

The file is an Apple plist: ``Images[0].ROIs[*]`` holds one dict per ROI with ``Name``, ``Type``
(15 = polygon, 19 = single point), ``NumberOfPoints`` and ``Point_px`` (strings ``"(x, y)"`` with
x = column and y = row, in float pixels). The image size is not in the file: callers pass the
``(rows, columns)`` of the matching DICOM, since INbreast has two image sizes (4084x3328 and 3328x2560).

Points outside the image are clipped when rasterising (as every public parser does);
:func:`points_outside` lists them so that an indexer can report the file.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.parsers.expat import ExpatError

import numpy as np
from skimage.draw import polygon as fill_polygon

__all__ = [
    "ROI_KINDS",
    "ROI_NAME_KINDS",
    "InbreastRoi",
    "OutsidePoint",
    "roi_kind",
    "read_inbreast_rois",
    "rasterize_inbreast_rois",
    "points_outside",
]

#: The lesion kinds an ROI name maps to.
ROI_KINDS = ("mass", "calcification", "distortion", "asymmetry", "unknown")

#: Normalised ROI name (lower case, single spaces) -> kind; names seen in the release, typos included.
ROI_NAME_KINDS = {
    "mass": "mass",
    "spiculated region": "mass",
    "espiculated region": "mass",
    "calcification": "calcification",
    "calcifications": "calcification",
    "cluster": "calcification",
    "distortion": "distortion",
    "asymmetry": "asymmetry",
    "assymetry": "asymmetry",
}

POLYGON_TYPE = 15
POINT_TYPE = 19

_POINT_PATTERN = re.compile(r"^\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?:,\s*[-+0-9.eE]+\s*)?\)$")


@dataclass(frozen=True)
class InbreastRoi:
    """One ROI of an INbreast XML.

    Attributes:
        name: the ``Name`` as written in the file (``"Espiculated Region"``, ``"Calcification"``...).
        kind: one of :data:`ROI_KINDS`, from the normalised name.
        roi_type: the OsiriX ``Type`` (15 polygon, 19 point).
        points: float array ``(N, 2)`` of ``(x, y)`` = (column, row) pixel coordinates.
    """

    name: str
    kind: str
    roi_type: int
    points: np.ndarray


@dataclass(frozen=True)
class OutsidePoint:
    """A point of ROI ``roi_index`` that falls outside the image once rounded to a pixel."""

    roi_index: int
    name: str
    x: float
    y: float


def roi_kind(name: str) -> str:
    """Map an ROI ``Name`` to its kind, ignoring case and runs of whitespace; ``"unknown"`` otherwise."""
    return ROI_NAME_KINDS.get(" ".join(str(name).split()).lower(), "unknown")


def _parse_point(text: object, path: Path, roi_index: int) -> tuple[float, float]:
    match = _POINT_PATTERN.match(str(text).strip())
    if match is None:
        raise ValueError(f"{path}: ROI {roi_index} has a Point_px entry {text!r}, expected '(x, y)'")
    return float(match.group(1)), float(match.group(2))


def _require(mapping: object, key: str, path: Path, where: str) -> object:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{path}: {where} has no {key!r} key; not an INbreast annotation plist")
    return mapping[key]


def read_inbreast_rois(path: str | Path) -> list[InbreastRoi]:
    """Read every ROI of one INbreast XML file.

    Args:
        path: the ``<FileName>.xml`` file.

    Returns:
        The ROIs in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a well-formed plist, lacks ``Images[0].ROIs``, or a ROI's
            ``NumberOfPoints`` differs from its number of ``Point_px`` entries; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"INbreast XML {str(path)!r} does not exist")
    try:
        with path.open("rb") as stream:
            document = plistlib.load(stream, fmt=plistlib.FMT_XML)
    except (ExpatError, plistlib.InvalidFileException, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a readable plist XML ({error})") from error

    images = _require(document, "Images", path, "the top-level dict")
    if not isinstance(images, list) or not images:
        raise ValueError(f"{path}: 'Images' is empty or not an array")
    roi_dicts = _require(images[0], "ROIs", path, "Images[0]")
    if not isinstance(roi_dicts, list):
        raise ValueError(f"{path}: Images[0].ROIs is not an array")
    declared = images[0].get("NumberOfROIs") if isinstance(images[0], dict) else None
    if declared is not None and int(declared) != len(roi_dicts):
        raise ValueError(f"{path}: NumberOfROIs is {declared} but Images[0].ROIs holds {len(roi_dicts)} ROIs")

    rois = []
    for index, roi in enumerate(roi_dicts):
        where = f"ROI {index}"
        name = str(_require(roi, "Name", path, where))
        raw_points = _require(roi, "Point_px", path, where)
        if not isinstance(raw_points, list):
            raise ValueError(f"{path}: {where} Point_px is not an array")
        declared_points = roi.get("NumberOfPoints")
        if declared_points is not None and int(declared_points) != len(raw_points):
            raise ValueError(
                f"{path}: {where} ({name!r}) declares NumberOfPoints={declared_points} "
                f"but lists {len(raw_points)} Point_px entries"
            )
        if not raw_points:
            raise ValueError(f"{path}: {where} ({name!r}) has no points")
        points = np.array([_parse_point(text, path, index) for text in raw_points], dtype=np.float64)
        roi_type = int(roi.get("Type", POLYGON_TYPE if len(points) >= 3 else POINT_TYPE))
        rois.append(InbreastRoi(name=name, kind=roi_kind(name), roi_type=roi_type, points=points))
    return rois


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(size) <= 0 for size in shape):
        raise ValueError(f"shape must be (rows, columns) of positive sizes, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def rasterize_inbreast_rois(
    rois: Iterable[InbreastRoi], shape: Sequence[int], kinds: Iterable[str] = ("mass",)
) -> np.ndarray:
    """Draw the ROIs of the chosen kinds into one boolean mask of ``shape``.

    Polygons (three points or more) are filled (pixel centres inside the outline); ROIs of one or two
    points set those pixels. Parts outside the image are clipped.

    Args:
        rois: ROIs from :func:`read_inbreast_rois`.
        shape: ``(rows, columns)`` of the image, read from its DICOM.
        kinds: which kinds to draw (see :data:`ROI_KINDS`).

    Raises:
        ValueError: ``shape`` is not two positive sizes, or ``kinds`` names an unknown kind.
    """
    rows, columns = _check_shape(shape)
    kinds = set(kinds)
    unknown = kinds - set(ROI_KINDS)
    if unknown:
        raise ValueError(f"unknown ROI kind(s) {sorted(unknown)}; choose from {ROI_KINDS}")
    mask = np.zeros((rows, columns), dtype=bool)
    for roi in rois:
        if roi.kind not in kinds:
            continue
        x, y = roi.points[:, 0], roi.points[:, 1]
        if len(roi.points) >= 3:
            rr, cc = fill_polygon(y, x, shape=(rows, columns))
            mask[rr, cc] = True
        else:
            rr, cc = np.rint(y).astype(int), np.rint(x).astype(int)
            inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < columns)
            mask[rr[inside], cc[inside]] = True
    return mask


def points_outside(rois: Sequence[InbreastRoi], shape: Sequence[int]) -> list[OutsidePoint]:
    """List the points that round to a pixel outside ``shape`` (these are clipped when rasterising)."""
    rows, columns = _check_shape(shape)
    outside = []
    for index, roi in enumerate(rois):
        rounded = np.rint(roi.points).astype(int)
        off = (rounded[:, 0] < 0) | (rounded[:, 0] >= columns) | (rounded[:, 1] < 0) | (rounded[:, 1] >= rows)
        outside.extend(OutsidePoint(index, roi.name, float(x), float(y)) for x, y in roi.points[off])
    return outside
