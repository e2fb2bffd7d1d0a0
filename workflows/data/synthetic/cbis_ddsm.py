"""Synthetic CBIS-DDSM in the collection's on-disk form: four description CSVs and a DICOM tree.

What is reproduced (see ``shared/notes/datasets.md`` (beside the repository) section 1):

* the four ``{mass,calc}_case_description_{train,test}_set.csv`` with their exact headers
  (``breast_density`` vs ``breast density``), CRLF records, the quoted path field ending in a bare LF
  (ROI column in mass files, crop column in calc files) and ``NA`` missing values (``missing_token``
  writes the older ``N/A`` form);
* the DICOM tree: ``tree="tcia"`` (default) is what NBIA Data Retriever writes today,
  ``CBIS-DDSM/<Subject>/<date>-DDSM-<n>/1.000000-<series description>-<n>/1-<k>.dcm`` plus
  ``metadata.csv``, where the CSV paths do not exist; ``tree="classic"`` is the old
  ``<Subject>/<StudyUID>/<SeriesUID>/00000N.dcm`` tree the CSV paths name;
* full mammograms (16-bit, Secondary Capture of digitised film, MONOCHROME2, no pixel spacing, film
  border and burned-in label), one 8-bit 0/255 ROI mask and one small 16-bit crop per abnormality row.

Cases are laid out by fixed rules on the patient index ``p`` (so tests can count exactly):
``p % 5 == 4`` has a CC view only, else CC and MLO of one side (LEFT for even ``p``);
``p % 5 == 2`` is in the test split; the CC view of ``p % 3 == 1`` has two masses.
Planted traps: ``p=0`` subtlety 0 with ``NA`` shape and margins (P_00710); ``p=1`` ROI masks in another
series than their crops; ``p=2`` CC row with the crop and ROI columns swapped; ``p=3`` MLO mask of
another size than its image; the CC films of ``p=4`` and ``p=5`` also listed as ``Calc-`` series (the
duplicated mammograms; ``p=5``'s in the other split). ``max(2, cases // 10)`` calcification-only
patients follow; the first is in the test split with density 0 on its two views (P_01743).
Mass rows number crop ``000000`` / ROI ``000001``; calc rows the opposite.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from breastseg.workflows.data.synthetic._dicom import SECONDARY_CAPTURE, DicomFields, derive_uid, write_dicom
from breastseg.workflows.data.synthetic._progress import tracked
from breastseg.workflows.data.synthetic.mammogram import MASS_STYLES, Mammogram, render_mammogram

__all__ = ["MASS_HEADER", "CALC_HEADER", "DEFAULT_CASES", "MIN_CASES", "generate"]

MASS_HEADER = (
    "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
    "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path"
)
CALC_HEADER = (
    "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,calc type,"
    "calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path"
)
DEFAULT_CASES = 40
MIN_CASES = 6  # patients 0-5 carry the planted traps
UID_PREFIX = "1.3.6.1.4.1.9590.100.1.2."
STUDY_DATE = "20160720"
FULL_SIZE_ROWS = 5000
DEFAULT_ROWS = 1024

_PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
_ASSESSMENT = {"MALIGNANT": ("4", "5"), "BENIGN": ("3", "4"), "BENIGN_WITHOUT_CALLBACK": ("2", "0")}
_CALC_TYPES = ("PLEOMORPHIC", "LUCENT_CENTERED", "AMORPHOUS", "PUNCTATE-PLEOMORPHIC")
_CALC_DISTRIBUTIONS = ("CLUSTERED", "SEGMENTAL", None, "REGIONAL")
_METADATA_HEADER = (
    "Series UID,Collection,3rd Party Analysis,Data Description URI,Subject ID,Study UID,Study Description,"
    "Study Date,Series Description,Manufacturer,Modality,SOP Class Name,SOP Class UID,Number of Images,"
    "File Size,File Location,Download Timestamp"
).split(",")


@dataclass
class _Row:
    """One abnormality row of a description CSV."""

    abnormality_id: int
    lesion_index: int  # into the film's rendered lesions
    descriptors: tuple[str | None, str | None]  # mass shape/margins or calc type/distribution
    pathology: str
    assessment: str
    subtlety: str
    other_series: bool = False
    columns_swapped: bool = False
    size_mismatch: bool = False


@dataclass
class _Image:
    """One full mammogram as listed in one table (a duplicated film is two of these)."""

    table: str  # "Mass" or "Calc"
    split: str  # "Training" or "Test"
    patient: str
    side: str
    view: str
    density: str
    film: int  # index of the rendered film (duplicates share it)
    rows: list[_Row] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return f"{self.table}-{self.split}_{self.patient}_{self.side}_{self.view}"


@dataclass
class _Film:
    view: str
    side: str
    density: int
    masses: tuple[str, ...]
    clusters: int


def _digits(seed: int, key: str, count: int) -> str:
    return str(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big"))[-count:].zfill(count)


def _plan(cases: int) -> tuple[list[_Film], list[_Image]]:
    films: list[_Film] = []
    images: list[_Image] = []

    def add_film(film: _Film) -> int:
        films.append(film)
        return len(films) - 1

    for p in range(cases):
        patient = f"P_{1 + 7 * p:05d}"
        side = "LEFT" if p % 2 == 0 else "RIGHT"
        split = "Test" if p % 5 == 2 else "Training"
        density = 1 + p % 4
        pathology = _PATHOLOGIES[p % 3]
        for view_index, view in enumerate(("CC",) if p % 5 == 4 else ("CC", "MLO")):
            count = 2 if (p % 3 == 1 and view == "CC") else 1
            styles = tuple(list(MASS_STYLES)[(2 * p + view_index + k) % len(MASS_STYLES)] for k in range(count))
            duplicated = p in (4, 5) and view == "CC"
            film = add_film(_Film(view, side, density, styles, clusters=1 if duplicated else 0))
            image = _Image("Mass", split, patient, side, view, str(density), film)
            for k, style in enumerate(styles):
                shape, margins = MASS_STYLES[style]
                subtlety = str(1 + (p + k) % 5)
                if p == 0:  # P_00710: subtlety 0 with NA shape and margins
                    shape, margins, subtlety = None, None, "0"
                image.rows.append(
                    _Row(
                        abnormality_id=k + 1,
                        lesion_index=k,
                        descriptors=(shape, margins),
                        pathology=pathology,
                        assessment=_ASSESSMENT[pathology][k % 2],
                        subtlety=subtlety,
                        other_series=p == 1,
                        columns_swapped=p == 2 and view == "CC",
                        size_mismatch=p == 3 and view == "MLO",
                    )
                )
            images.append(image)
            if duplicated:  # the same film again as a Calc- series; p=5's in the other split
                calc_split = split if p == 4 else ("Test" if split == "Training" else "Training")
                calc = _Image("Calc", calc_split, patient, side, view, str(density), film)
                calc.rows.append(_Row(1, count, (_CALC_TYPES[p % 4], "CLUSTERED"), "BENIGN", "3", "3"))
                images.append(calc)

    for c in range(max(2, cases // 10)):
        patient = f"P_{1 + 7 * (cases + c):05d}"
        side = "LEFT" if c % 2 == 0 else "RIGHT"
        split = "Test" if c == 0 else "Training"
        density = "0" if c == 0 else str(1 + c % 4)  # P_01743: density 0 on both views
        for view in ("CC", "MLO") if c == 0 else ("CC",):
            film = add_film(_Film(view, side, 2, (), clusters=1))
            image = _Image("Calc", split, patient, side, view, density, film)
            pathology = _PATHOLOGIES[c % 3]
            descriptors = (_CALC_TYPES[c % 4], _CALC_DISTRIBUTIONS[c % 4])
            image.rows.append(_Row(1, 0, descriptors, pathology, _ASSESSMENT[pathology][0], str(2 + c % 4)))
            images.append(image)
    return films, images


def _render(films: list[_Film], seed: int, base_rows: int) -> list[Mammogram]:
    rendered = []
    for index, film in enumerate(tracked(films, "cbis-ddsm: rendering mammograms")):
        rng = np.random.default_rng([seed, index])
        rows = int(round(base_rows * rng.uniform(0.94, 1.06)))
        shape = (rows, int(round(rows * rng.uniform(0.55, 0.65))))
        rendered.append(
            render_mammogram(
                rng, shape, film.view, film.side == "LEFT", film.density, film.masses, film.clusters, film=True
            )
        )
    return rendered


def _to_uint16(image: np.ndarray) -> np.ndarray:
    return np.round(image * 65535.0).astype(np.uint16)


def _crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rr, cc = np.nonzero(mask)
    margin = max(8, (rr.max() - rr.min()) // 4)
    top, left = max(0, rr.min() - margin), max(0, cc.min() - margin)
    bottom, right = min(mask.shape[0], rr.max() + margin + 1), min(mask.shape[1], cc.max() + margin + 1)
    return image[top:bottom, left:right]


class _Writer:
    """Writes DICOM files to either tree and remembers the CSV path of each."""

    def __init__(self, out: Path, seed: int, tree: str) -> None:
        self.out, self.seed, self.tree = out, seed, tree
        self.metadata: list[list[str]] = []
        self.files = 0

    def uid(self, key: str) -> str:
        return derive_uid(UID_PREFIX, self.seed, key)

    def series(self, subject: str, series_key: str, description: str, files: list[tuple[np.ndarray, str]]) -> list[str]:
        """Write one series of ``(pixels, 00000N.dcm name)`` files; return their CSV paths."""
        study_uid, series_uid = self.uid(f"study:{subject}"), self.uid(f"series:{series_key}")
        if self.tree == "classic":
            folder = self.out / subject / study_uid / series_uid
        else:
            study_dir = f"07-20-2016-DDSM-{_digits(self.seed, 'study:' + subject, 5)}"
            series_dir = f"1.000000-{description}-{_digits(self.seed, 'series:' + series_key, 5)}"
            folder = self.out / "CBIS-DDSM" / subject / study_dir / series_dir
        paths = []
        for pixels, name in files:
            instance = int(name[:6]) + 1
            fields = DicomFields(
                sop_class_uid=SECONDARY_CAPTURE,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid=self.uid(f"sop:{series_key}:{name}"),
                patient_id=subject,
                patient_name=subject,
                study_date=STUDY_DATE,
                series_description=description,
                instance_number=instance,
                bits_stored=8 if pixels.dtype == np.uint8 else 16,
            )
            write_dicom(folder / (name if self.tree == "classic" else f"1-{instance}.dcm"), pixels, fields)
            paths.append(f"{subject}/{study_uid}/{series_uid}/{name}")
        self.files += len(files)
        if self.tree == "tcia":
            size_mb = sum(pixels.nbytes for pixels, _ in files) / 1e6
            location = ".\\" + str(folder.relative_to(self.out)).replace("/", "\\")
            self.metadata.append(
                [series_uid, "CBIS-DDSM", "NO", "https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY", subject, study_uid,
                 "DDSM", "07-20-2016", description, "", "MG", "Secondary Capture Image Storage", SECONDARY_CAPTURE,
                 str(len(files)), f"{size_mb:.2f} MB", location, "2024-01-01T00:00:00.000"]
            )
        return paths


def _write_abnormality(
    writer: _Writer, image: _Image, row: _Row, film: Mammogram, pixels: np.ndarray
) -> tuple[str, str]:
    """Write the crop and ROI mask of one row; return their CSV paths as (crop column, ROI column)."""
    subject = f"{image.folder}_{row.abnormality_id}"
    lesion_mask = film.lesions[row.lesion_index].mask
    mask = lesion_mask.astype(np.uint8) * 255
    if row.size_mismatch:  # as Mass-Test_P_00145: the mask was drawn at another scale
        size = (int(round(mask.shape[1] * 0.86)), int(round(mask.shape[0] * 0.87)))
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    crop = _crop(pixels, lesion_mask)
    if row.other_series:
        crop_path = writer.series(subject, f"{subject}:crop", "cropped images", [(crop, "000000.dcm")])[0]
        roi_path = writer.series(subject, f"{subject}:roi", "ROI mask images", [(mask, "000000.dcm")])[0]
    elif image.table == "Mass":
        crop_path, roi_path = writer.series(subject, subject, "ROI mask images", [(crop, "000000.dcm"), (mask, "000001.dcm")])
    else:
        roi_path, crop_path = writer.series(subject, subject, "ROI mask images", [(mask, "000000.dcm"), (crop, "000001.dcm")])
    return (roi_path, crop_path) if row.columns_swapped else (crop_path, roi_path)


def _csv_line(image: _Image, row: _Row, paths: tuple[str, str, str], missing_token: str) -> str:
    kind = "mass" if image.table == "Mass" else "calcification"
    full, crop, roi = paths
    # the bare LF inside the quoted field is in every row of the real files
    crop, roi = (crop, f'"{roi}\n"') if kind == "mass" else (f'"{crop}\n"', roi)
    cells = [
        image.patient, image.density, image.side, image.view, str(row.abnormality_id), kind,
        *(value if value is not None else missing_token for value in row.descriptors),
        row.assessment, row.pathology, row.subtlety, full, crop, roi,
    ]
    return ",".join(cells) + "\r\n"


def generate(
    out: Path,
    cases: int | None = None,
    seed: int = 0,
    full_size: bool = False,
    *,
    rows: int | None = None,
    tree: str = "tcia",
    missing_token: str = "NA",
) -> dict[str, Any]:
    """Write a synthetic CBIS-DDSM into ``out``.

    Args:
        out: folder to write (created; must be empty or absent).
        cases: number of mass patients (default 40: 72 mass mammograms with 85 masses, plus
            4 calcification-only patients and 2 duplicated films); at least 6.
        seed: fixes every pixel and UID (same seed, same bytes).
        full_size: mammograms of about 5000 rows, as the real scans, instead of about 1024.
        rows: approximate mammogram height in pixels, overriding ``full_size`` (tests use small images).
        tree: ``"tcia"`` (NBIA Data Retriever layout with ``metadata.csv``) or ``"classic"``.
        missing_token: how missing descriptors are written: ``"NA"`` (current CSVs) or ``"N/A"`` (older ones).

    Returns:
        The summary printed by ``breastseg synth``.

    Raises:
        ValueError: ``out`` is not empty, ``cases`` is under 6, or ``rows``/``tree`` is invalid.
    """
    out = Path(out)
    cases = DEFAULT_CASES if cases is None else int(cases)
    if cases < MIN_CASES:
        raise ValueError(f"cbis-ddsm needs cases >= {MIN_CASES} (patients 0-5 carry the planted traps), got {cases}")
    if tree not in ("tcia", "classic"):
        raise ValueError(f"tree must be 'tcia' or 'classic', got {tree!r}")
    base_rows = rows if rows is not None else (FULL_SIZE_ROWS if full_size else DEFAULT_ROWS)
    if base_rows < 96:
        raise ValueError(f"rows must be at least 96, got {base_rows}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output folder {str(out)!r} is not empty")
    out.mkdir(parents=True, exist_ok=True)

    films, images = _plan(cases)
    rendered = _render(films, seed, base_rows)
    writer = _Writer(out, seed, tree)
    lines: dict[tuple[str, str], list[tuple[tuple, str]]] = {}
    for image in tracked(images, "cbis-ddsm: writing images"):
        film = rendered[image.film]
        pixels = _to_uint16(film.image)
        full_path = writer.series(image.folder, image.folder, "full mammogram images", [(pixels, "000000.dcm")])[0]
        for row in image.rows:
            crop_path, roi_path = _write_abnormality(writer, image, row, film, pixels)
            order = (image.patient, image.side, image.view, row.abnormality_id)
            line = _csv_line(image, row, (full_path, crop_path, roi_path), missing_token)
            lines.setdefault((image.table, image.split), []).append((order, line))

    for table, header in (("Mass", MASS_HEADER), ("Calc", CALC_HEADER)):
        for split, suffix in (("Training", "train"), ("Test", "test")):
            body = "".join(line for _, line in sorted(lines.get((table, split), [])))
            path = out / f"{table.lower()}_case_description_{suffix}_set.csv"
            path.write_bytes((header + "\r\n" + body).encode("ascii"))
    if tree == "tcia":
        with (out / "metadata.csv").open("w", newline="") as stream:
            csv.writer(stream).writerows([_METADATA_HEADER, *writer.metadata])

    mass_images = [image for image in images if image.table == "Mass"]
    calc_images = [image for image in images if image.table == "Calc"]
    return {
        "layout": "cbis-ddsm",
        "tree": tree,
        "root": str(out),
        "images": len(images),
        "mass_images": len(mass_images),
        "calc_images": len(calc_images),
        "lesions": sum(len(image.rows) for image in images),
        "mass_lesions": sum(len(image.rows) for image in mass_images),
        "calc_lesions": sum(len(image.rows) for image in calc_images),
        "patients": len({image.patient for image in images}),
        "dicom_files": writer.files,
        "traps": (
            "CRLF records with a bare LF in a quoted path field; breast_density vs breast density headers; "
            f"{missing_token!r} descriptors with subtlety 0 (P_00001); ROI masks in another series (P_00008); "
            "crop/ROI columns swapped (P_00015 CC); size-mismatched mask (P_00022 MLO); mass/calc file numbering "
            "opposite; two-mass images; density 0 (first calc-only patient); films duplicated as Mass- and Calc- "
            "series (P_00029 CC, P_00036 CC, the latter across splits)"
        ),
    }
