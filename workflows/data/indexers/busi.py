"""Index BUSI (``Dataset_BUSI_with_GT/{benign,malignant,normal}/``) into datalist records.

One record per image ``<class> (<n>).png``; its ``label`` lists every mask of the image
(``_mask.png``, ``_mask_1.png``, ...) in natural order, to be OR-merged at load time. The mask's base
stem is ``re.sub(r"_mask.*$", "", stem)``, so extra lesion masks are never missed.

Quarantined (listed, never dropped silently): an image without any mask, a mask without its image, an
unreadable PNG, a mask whose size differs from its image, and a benign/malignant image whose masks are all
empty. Exact duplicate images (identical decoded pixels) keep the first in natural order; the others are
listed in ``duplicates``. BUSI has no patient ids: ``patient_id`` is the image's case id.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from breastseg.workflows.data.records import IndexResult
from breastseg.workflows.data.splits import natural_key, remove_exact_duplicates

__all__ = ["CLASSES", "FOLDER", "mask_base_stem", "find_busi_root", "index"]

CLASSES = ("benign", "malignant", "normal")
FOLDER = "Dataset_BUSI_with_GT"
_MASK_INDEX = re.compile(r"_mask(?:_(\d+))?$")


def mask_base_stem(stem: str) -> str:
    """``benign (4)_mask_1`` -> ``benign (4)``."""
    return re.sub(r"_mask.*$", "", stem)


def find_busi_root(root: Path) -> Path:
    """Accept ``Dataset_BUSI_with_GT`` itself or the folder holding it.

    Raises:
        FileNotFoundError: neither ``root`` nor ``root/Dataset_BUSI_with_GT`` holds a class folder.
    """
    for candidate in (root, root / FOLDER):
        if any((candidate / name).is_dir() for name in CLASSES):
            return candidate
    raise FileNotFoundError(
        f"{str(root)!r} is not a BUSI folder: expected {'/'.join(CLASSES)} sub-folders in it or in {FOLDER}/"
    )


def _mask_order(path: Path) -> tuple:
    match = _MASK_INDEX.search(path.stem)
    return (int(match.group(1)) if match and match.group(1) else 0, natural_key(path.name))


def _png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the PNG header, after checking chunk integrity without keeping pixels."""
    with Image.open(path) as image:
        size = image.size
        image.verify()
    return size


def _inspect_mask(path: Path) -> tuple[tuple[int, int], str, bool]:
    """``(size, mode, has_lesion)``; decoding the pixels also proves the file is complete."""
    with Image.open(path) as image:
        # same reduction as the load-time mask reader: grey, then > 127
        return image.size, image.mode, bool((np.asarray(image.convert("L")) > 127).any())


def _index_image(
    pathology: str, image: Path, masks: list[Path], result: IndexResult
) -> dict[str, Any] | None:
    case_id = image.stem
    if not masks:
        result.quarantine_record(case_id, str(image), "no mask file (expected '<stem>_mask.png')")
        return None
    try:
        width, height = _png_size(image)
    except (OSError, SyntaxError) as error:
        result.quarantine_record(case_id, str(image), f"unreadable PNG: {error}")
        return None
    lesion_masks = 0
    flags = ["normal"] if pathology == "normal" else []
    for mask in masks:
        try:
            mask_size, mode, has_lesion = _inspect_mask(mask)
        except (OSError, SyntaxError) as error:
            result.quarantine_record(case_id, str(mask), f"unreadable mask PNG: {error}")
            return None
        if mask_size != (width, height):
            result.quarantine_record(
                case_id, str(mask), f"mask size {mask_size[0]}x{mask_size[1]} differs from image {width}x{height}"
            )
            return None
        lesion_masks += has_lesion
        flags += [f"mask-{mode.lower()}"] if mode in ("RGB", "RGBA", "LA", "P") else []
    if pathology != "normal" and lesion_masks == 0:
        result.quarantine_record(case_id, str(masks[0]), f"{pathology} image but every mask is empty")
        return None
    return {
        "image": str(image),
        "label": [str(mask) for mask in masks],
        "label_format": "png",
        "case_id": case_id,
        "patient_id": case_id,
        "dataset": "busi",
        "modality": "US",
        "laterality": None,
        "view": None,
        "birads": None,
        "acr": None,
        "pathology": pathology,
        "subtlety": None,
        "lesion_count": 0 if pathology == "normal" else lesion_masks,
        "spacing": None,
        "rows": height,
        "columns": width,
        "flags": sorted(set(flags)),
    }


def index(root: Path, deduplicate: bool = True) -> IndexResult:
    """Index a BUSI download.

    Args:
        root: ``Dataset_BUSI_with_GT`` or its parent folder.
        deduplicate: drop exact duplicate images (listed in ``duplicates``).
    """
    base = find_busi_root(Path(root).absolute())
    result = IndexResult()
    records: list[dict[str, Any]] = []
    for pathology in CLASSES:
        folder = base / pathology
        if not folder.is_dir():
            continue
        images: list[Path] = []
        masks: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if not path.is_file() or path.suffix.lower() != ".png":
                continue
            if "_mask" in path.stem:
                masks[mask_base_stem(path.stem)].append(path)
            else:
                images.append(path)
        image_stems = {image.stem for image in images}
        for stem in sorted(set(masks) - image_stems, key=natural_key):
            for mask in masks[stem]:
                result.quarantine_record(stem, str(mask), "mask without an image")
        for image in images:
            record = _index_image(pathology, image, sorted(masks.get(image.stem, []), key=_mask_order), result)
            if record is not None:
                records.append(record)
    if deduplicate:
        records, result.duplicates = remove_exact_duplicates(records)
    result.records = records
    return result
