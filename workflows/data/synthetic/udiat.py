"""Synthetic UDIAT Dataset B (Yap et al., 2018) in its distributed layout.

Written under ``out/Dataset_B/``: ``original/NNNNNN.png`` (grey), ``GT/NNNNNN.png`` (one lesion each) and
``DatasetB.xlsx`` (first sheet, header row ``Image``/``Type``/diagnosis, written with openpyxl). Traps at
fixed image numbers, so tests can expect exact counts:

- GT of images with ``n % 4 == 0`` has anti-aliased margins (values other than 0 and 255);
- the sheet's headers carry stray spaces and an unnamed fourth column holds a free-text note;
- ``Image`` is an integer cell (``1``), not the zero-padded file stem;
- near duplicates: the last 18 % of the images are re-exports of earlier ones (the BUSI writer's kinds, in turn,
  one source exported three times), with the source's label, but the second copy is labelled the other way
  (a label conflict); ``near_duplicates`` in the summary lists every planted pair.

Benign/malignant proportions follow the real 110/53 split; sizes follow the real median 501x400.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from openpyxl import Workbook
from PIL import Image
from scipy import ndimage

from breastseg.workflows.data.synthetic._progress import tracked
from breastseg.workflows.data.synthetic._us_common import case_rng, frame_size, prepare_output_folder
from breastseg.workflows.data.synthetic._us_reexport import REEXPORT_KINDS, copy_plan, reexport
from breastseg.workflows.data.synthetic.ultrasound import render_ultrasound, sample_lesion_styles

__all__ = ["DEFAULT_CASES", "MIN_CASES", "FOLDER", "XLSX_NAME", "pathology_of", "generate"]

DEFAULT_CASES = 40
MIN_CASES = 3
FOLDER = "Dataset_B"
XLSX_NAME = "DatasetB.xlsx"
_REAL_BENIGN_FRACTION = 110 / 163
_DIAGNOSES = {
    "benign": ("CYST", "FIBROADENOMA", "FAT NECROSIS", "PAPILLOMA", "FIBROSIS"),
    "malignant": ("IDC", "DCIS", "ILC", "MUCINOUS CARCINOMA"),
}


def pathology_of(number: int, cases: int) -> str:
    """``benign`` or ``malignant`` for image ``number`` of ``cases``: malignant images are spread evenly."""
    malignant = max(1, round(cases * (1 - _REAL_BENIGN_FRACTION)))
    return "malignant" if (number * malignant) // cases != ((number - 1) * malignant) // cases else "benign"


def _write_sheet(path: Path, rows: list[tuple[int, str, str]]) -> None:
    book = Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append([" Image", "Type ", " Diagnosis", None])
    for index, row in enumerate(rows):
        sheet.append([*row, "re-measured" if index == 0 else None])
    book.save(path)


def generate(out: Path, cases: int | None = None, seed: int = 0, full_size: bool = False) -> dict[str, Any]:
    """Write a synthetic UDIAT Dataset B into ``out/Dataset_B`` and return a summary.

    Args:
        out: folder to create (must be empty or absent).
        cases: number of images, near duplicates included (default :data:`DEFAULT_CASES`).
        seed: fixes every pixel and label.
        full_size: real-like sizes (median 501x400) instead of the halved default.
    """
    cases = DEFAULT_CASES if cases is None else cases
    if cases < MIN_CASES:
        raise ValueError(f"UDIAT layout needs at least {MIN_CASES} images, got {cases}")
    root = prepare_output_folder(Path(out)) / FOLDER
    (root / "original").mkdir(parents=True)
    (root / "GT").mkdir()
    rows: list[tuple[int, str, str]] = []
    soft_masks = 0
    copies = copy_plan(cases)
    conflicting = sorted(copies)[1] if len(copies) >= 3 else None  # one copy labelled unlike its source
    frames: dict[int, tuple[np.ndarray, list[np.ndarray], str, str]] = {}
    near_duplicates: list[dict[str, str]] = []
    for number in tracked(range(1, cases + 1), "udiat: images"):
        rng = case_rng(seed, 3, number)
        if number in copies:
            source = copies[number]
            image, masks, pathology, diagnosis = frames[source]
            kind = REEXPORT_KINDS[len(near_duplicates) % len(REEXPORT_KINDS)]
            copy = reexport(image, masks, kind, rng)
            image, lesion_mask = copy.image, copy.masks[0]
            if number == conflicting:
                pathology = "malignant" if pathology == "benign" else "benign"
                diagnosis = str(rng.choice(_DIAGNOSES[pathology]))
            near_duplicates.append({"source": f"original/{source:06d}.png", "copy": f"original/{number:06d}.png",
                                    "transform": kind})
        else:
            pathology = pathology_of(number, cases)
            height, width = frame_size(rng, (501, 400), (90, 80), (344, 233), (753, 617), full_size)
            frame = render_ultrasound(rng, height, width, sample_lesion_styles(rng, pathology, 1), annotations=False)
            image, lesion_mask = frame.image, frame.lesion_masks[0]
            diagnosis = str(rng.choice(_DIAGNOSES[pathology]))
            if number in copies.values():
                frames[number] = (image, [lesion_mask], pathology, diagnosis)
        mask = lesion_mask.astype(np.float64) * 255
        if number % 4 == 0:
            # anti-aliased margins, as in GTs that loaders re-threshold at 127
            mask = ndimage.gaussian_filter(mask, 0.8)
            soft_masks += 1
        stem = f"{number:06d}"
        Image.fromarray(image).save(root / "original" / f"{stem}.png")
        Image.fromarray(np.round(mask).astype(np.uint8), mode="L").save(root / "GT" / f"{stem}.png")
        rows.append((number, pathology.capitalize(), diagnosis))
    _write_sheet(root / XLSX_NAME, rows)
    malignant = sum(row[1] == "Malignant" for row in rows)
    return {
        "layout": "udiat",
        "root": str(root),
        "images": cases,
        "benign": cases - malignant,
        "malignant": malignant,
        "lesions": cases,
        "gt_with_grey_margins": soft_masks,
        "xlsx": str(root / XLSX_NAME),
        "near_duplicates": near_duplicates,
        "label_conflicts": [pair for pair in near_duplicates if pair["copy"] == f"original/{conflicting or 0:06d}.png"],
    }
