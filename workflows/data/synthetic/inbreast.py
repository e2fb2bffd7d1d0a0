"""Synthetic INbreast in the release's on-disk form (``shared/notes/datasets.md`` (beside the repository) section 2).

Writes ``INbreast Release 1.0/`` with:

* ``AllDICOMs/<FileName>_<16-hex case token>_MG_<L|R>_<CC|ML>_ANON.dcm``: 14-bit full-field digital
  mammograms (Digital Mammography For Presentation), both plate sizes 4084x3328 and 3328x2560 (scaled
  by ``rows / 4084`` unless ``full_size``), MONOCHROME2 or MONOCHROME1, with ``PixelSpacing``, only
  ``ImagerPixelSpacing``, or no spacing;
* ``AllXML/<FileName>.xml``: OsiriX plists (``Images[0].ROIs``) for annotated images only, masses as
  Type 15 polygons under the name variants of the release, calcifications as Type 19 points and
  ``Cluster`` polygons;
* ``PectoralMuscle/Pectoral Muscle XML/<FileName>.xml``: pectoral outlines that readers must skip;
* ``INbreast.csv``: ``;``-separated, CRLF, ``Patient ID``/``Patient age`` always ``removed``, view ``MLO``
  where the file name says ``ML``, and one ``ACR`` cell that is a run of spaces.

Cases are laid out by fixed rules on the case index ``c`` (so tests can count exactly): even ``c``
uses the large plate, odd ``c`` the small one; ``c % 3 == 2`` has one side (CC + ML), others both
sides; the affected side (left for even ``c``) has one mass per view (two on the CC of ``c % 4 == 1``)
unless ``c % 5 == 4`` (calcifications only); the other side has a calcification-only XML for even
``c`` and no XML (a normal image) for odd ``c``. Planted traps: case 1's CC mass touches the chest
wall of a small-plate image, so its outline runs past the edge; case 0's calcification XML also holds
an ``Unnamed`` point and an ``Assymetry`` polygon; case 1's first row has the blank ACR.
"""

from __future__ import annotations

import hashlib
import plistlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from breastseg.workflows.data.synthetic._dicom import MAMMO_FOR_PRESENTATION, DicomFields, derive_uid, write_dicom
from breastseg.workflows.data.synthetic._progress import tracked
from breastseg.workflows.data.synthetic.mammogram import MASS_STYLES, Lesion, render_mammogram

__all__ = ["TABLE_HEADER", "PLATE_SIZES", "DEFAULT_CASES", "MIN_CASES", "MASS_NAMES", "generate"]

TABLE_HEADER = "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"
PLATE_SIZES = ((4084, 3328), (3328, 2560))
DEFAULT_CASES = 12
MIN_CASES = 2  # cases 0 and 1 carry the planted traps
DEFAULT_ROWS = 1024
#: the mass ROI names of the release (and one case/whitespace variant)
MASS_NAMES = ("Mass", "Spiculated Region", "Espiculated Region", "Spiculated region", " mass ")
NOMINAL_SPACING_MM = 0.07
UID_PREFIX = "1.2.826.0.1.3680043.10.1."
_MASS_BIRADS = ("4c", "5", "4a", "6", "4b", "3")
_ZERO_POINT = "(0.000000, 0.000000, 0.000000)"


@dataclass
class _Image:
    case: int
    token: str
    side: str
    view: str  # as in the file name: CC or ML
    plate: tuple[int, int]
    masses: tuple[str, ...]
    clusters: int
    annotated: bool
    traps: bool  # case 0 calcification XML: unknown and asymmetry ROIs
    mass_at_chest_wall: bool


def _hex_token(seed: int, case: int) -> str:
    return hashlib.sha256(f"{seed}:inbreast-case:{case}".encode()).hexdigest()[:16]


def _file_name(seed: int, index: int) -> str:
    number = int.from_bytes(hashlib.sha256(f"{seed}:inbreast-file:{index}".encode()).digest()[:8], "big")
    return str(20000000 + number % 80000000)


def _plan(cases: int, seed: int) -> list[_Image]:
    images = []
    for c in range(cases):
        token = _hex_token(seed, c)
        affected = "L" if c % 2 == 0 else "R"
        sides = (affected,) if c % 3 == 2 else ("L", "R")
        for side in sides:
            for view in ("CC", "ML"):
                masses: tuple[str, ...] = ()
                clusters, annotated = 0, False
                if side == affected:
                    annotated = True
                    if c % 5 == 4:
                        clusters = 1
                    else:
                        count = 2 if (c % 4 == 1 and view == "CC") else 1
                        masses = tuple(list(MASS_STYLES)[(3 * c + len(images) + k) % len(MASS_STYLES)] for k in range(count))
                elif c % 2 == 0:
                    clusters, annotated = 1, True
                images.append(
                    _Image(
                        case=c, token=token, side=side, view=view, plate=PLATE_SIZES[c % 2], masses=masses,
                        clusters=clusters, annotated=annotated, traps=c == 0 and side != affected and view == "CC",
                        mass_at_chest_wall=c == 1 and side == affected and view == "CC",
                    )
                )
    return images


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _roi(index: int, name: str, roi_type: int, points: np.ndarray, pixels: np.ndarray, mask: np.ndarray | None) -> dict:
    values = pixels[mask] if mask is not None and mask.any() else np.zeros(1)
    polygon = roi_type == 15
    return {
        "Area": _polygon_area(points) * NOMINAL_SPACING_MM**2 if polygon else 0.0,
        "Center": _ZERO_POINT,
        "Dev": float(values.std()) if polygon else 0.0,
        "IndexInImage": index,
        "Max": float(values.max()) if polygon else 0.0,
        "Mean": float(values.mean()) if polygon else 0.0,
        "Min": float(values.min()) if polygon else 0.0,
        "Name": name,
        "NumberOfPoints": len(points),
        "Point_mm": [_ZERO_POINT] * len(points),
        "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in points],
        "Total": float(values.sum()) if polygon else 0.0,
        "Type": roi_type,
    }


def _plist(rois: list[dict]) -> bytes:
    document = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}
    return plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=True)


def _annotation(image: _Image, lesions: list[Lesion], pixels: np.ndarray, mass_counter: int) -> list[dict]:
    rois: list[dict] = []
    for lesion in lesions:
        if lesion.kind == "mass":
            rois.append(_roi(len(rois), MASS_NAMES[mass_counter % len(MASS_NAMES)], 15, lesion.outline, pixels, lesion.mask))
            mass_counter += 1
        else:
            cluster_name = "Cluster" if image.case % 2 == 0 else "Calcifications"
            rois.append(_roi(len(rois), cluster_name, 15, lesion.outline, pixels, lesion.mask))
            for point in lesion.points[:3]:
                rois.append(_roi(len(rois), "Calcification", 19, point[None, :], pixels, None))
    if image.traps:
        rows, cols = pixels.shape
        rois.append(_roi(len(rois), "Unnamed", 19, np.array([[cols * 0.5, rows * 0.5]]), pixels, None))
        theta = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ring = np.stack([cols * 0.3 + 0.03 * rows * np.cos(theta), rows * 0.6 + 0.03 * rows * np.sin(theta)], axis=1)
        rois.append(_roi(len(rois), "Assymetry", 15, ring, pixels, None))
    return rois


def _pectoral_outline(shape: tuple[int, int], side: str) -> np.ndarray:
    rows, cols = shape
    x = np.array([0.0, cols * 0.35, 0.0])
    y = np.array([0.0, 0.0, rows * 0.4])
    if side == "R":
        x = cols - 1 - x
    return np.stack([x, y], axis=1)


def generate(
    out: Path, cases: int | None = None, seed: int = 0, full_size: bool = False, *, rows: int | None = None
) -> dict[str, Any]:
    """Write a synthetic INbreast release into ``out``.

    Args:
        out: folder to write (created; must be empty or absent).
        cases: number of cases (16-hex tokens); default 12: 40 images, 20 with masses (22 masses),
            32 annotated, 8 normal; at least 2.
        seed: fixes every pixel, name and UID (same seed, same bytes).
        full_size: the real plate sizes (4084x3328 and 3328x2560) instead of 1024 rows for the large plate.
        rows: rows of the large-plate image, overriding ``full_size`` (tests use small images); the small
            plate keeps the real aspect ratios at the same scale.

    Returns:
        The summary printed by ``breastseg synth``.

    Raises:
        ValueError: ``out`` is not empty, ``cases`` is under 2, or ``rows`` is under 128.
    """
    out = Path(out)
    cases = DEFAULT_CASES if cases is None else int(cases)
    if cases < MIN_CASES:
        raise ValueError(f"inbreast needs cases >= {MIN_CASES} (cases 0 and 1 carry the planted traps), got {cases}")
    large_rows = rows if rows is not None else (PLATE_SIZES[0][0] if full_size else DEFAULT_ROWS)
    if large_rows < 128:
        raise ValueError(f"rows must be at least 128, got {large_rows}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output folder {str(out)!r} is not empty")
    release = out / "INbreast Release 1.0"
    for folder in ("AllDICOMs", "AllXML", "PectoralMuscle/Pectoral Muscle XML"):
        (release / folder).mkdir(parents=True, exist_ok=True)
    scale = large_rows / PLATE_SIZES[0][0]

    images = _plan(cases, seed)
    table_lines, mass_counter, masses = [], 0, 0
    for index, image in enumerate(tracked(images, "inbreast: images")):
        shape = (int(round(image.plate[0] * scale)), int(round(image.plate[1] * scale)))
        rng = np.random.default_rng([seed, index])
        density = 1 + image.case % 4
        mammogram = render_mammogram(
            rng, shape, "CC" if image.view == "CC" else "MLO", image.side == "L", density, image.masses,
            image.clusters, film=False, mass_at_chest_wall=image.mass_at_chest_wall,
        )
        stored = np.round(mammogram.image * 16383.0).astype(np.uint16)  # 14 bits stored in 16
        monochrome1 = image.case % 4 == 3
        spacing = NOMINAL_SPACING_MM / scale
        file_name = _file_name(seed, index)
        fields = DicomFields(
            sop_class_uid=MAMMO_FOR_PRESENTATION,
            study_uid=derive_uid(UID_PREFIX, seed, f"study:{image.token}"),
            series_uid=derive_uid(UID_PREFIX, seed, f"series:{file_name}"),
            sop_instance_uid=derive_uid(UID_PREFIX, seed, f"sop:{file_name}"),
            patient_id="ANON",
            patient_name="ANON",
            study_date="20080101",
            photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
            bits_stored=14,
            pixel_spacing=(spacing, spacing) if image.case % 3 == 0 else None,
            imager_pixel_spacing=(spacing, spacing) if image.case % 3 == 1 else None,
        )
        pixels = 16383 - stored if monochrome1 else stored
        dicom_name = f"{file_name}_{image.token}_MG_{image.side}_{image.view}_ANON.dcm"
        write_dicom(release / "AllDICOMs" / dicom_name, pixels, fields)
        if image.annotated:
            rois = _annotation(image, mammogram.lesions, stored, mass_counter)
            (release / "AllXML" / f"{file_name}.xml").write_bytes(_plist(rois))
        mass_counter += len(image.masses)
        masses += len(image.masses)
        if image.view == "ML" and image.case == 0:
            pectoral = _roi(0, "Pectoral Muscle", 15, _pectoral_outline(shape, image.side), stored, None)
            (release / "PectoralMuscle/Pectoral Muscle XML" / f"{file_name}.xml").write_bytes(_plist([pectoral]))

        acr = " " * 28 if (image.case == 1 and index == _first_index(images, 1)) else str(density)
        birads = _MASS_BIRADS[image.case % len(_MASS_BIRADS)] if image.masses else ("2" if image.annotated else "1")
        date = f"{2008 + image.case % 3}{1 + image.case % 12:02d}"
        view = "MLO" if image.view == "ML" else image.view
        table_lines.append(f"removed;removed;{image.side};{view};{date};{file_name};{acr};{birads}")
    (release / "INbreast.csv").write_bytes(("\r\n".join([TABLE_HEADER, *table_lines]) + "\r\n").encode("ascii"))

    return {
        "layout": "inbreast",
        "root": str(release),
        "images": len(images),
        "cases": cases,
        "annotated_images": sum(image.annotated for image in images),
        "mass_images": sum(bool(image.masses) for image in images),
        "lesions": masses,
        "normal_images": sum(not image.annotated for image in images),
        "small_plate_images": sum(image.plate == PLATE_SIZES[1] for image in images),
        "traps": (
            "ML in file names vs MLO in INbreast.csv; blank ACR (a run of spaces) on case 1's first row; "
            "mass ROI name variants; Type 19 calcification points; both plate sizes; MONOCHROME1 (cases 3, 7...) "
            "and spacing as PixelSpacing / ImagerPixelSpacing / none; case 1's CC mass runs past the chest-wall "
            "edge of a small-plate image (points outside the image); 'Unnamed' and 'Assymetry' ROIs in case 0; "
            "pectoral-muscle XMLs to skip; normal images without XML"
        ),
    }


def _first_index(images: list[_Image], case: int) -> int:
    return next(index for index, image in enumerate(images) if image.case == case)
