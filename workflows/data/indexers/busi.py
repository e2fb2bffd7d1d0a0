"""Index BUSI (``Dataset_BUSI_with_GT/{benign,malignant,normal}/``) into datalist records.

One record per image ``<class> (<n>).png`` (or any other format PIL reads: ``.jpg``, ``.bmp``, ``.tif``...);
its ``label`` lists every mask of the image (``_mask.png``, ``_mask_1.png``, ...) in natural order, to be
OR-merged at load time. The mask's base stem is ``re.sub(r"_mask.*$", "", stem)``, so extra lesion masks
are never missed.

Every entry of a class folder is indexed, quarantined or ignored, by name. Quarantined (listed, never
dropped silently): an image without any mask, a mask without its image, two image files with one stem
(``benign (5).png`` and ``benign (5).jpg``: the masks could belong to either), an unreadable image or
mask, an image whose mode states no bit depth (32-bit integer or float), a mask whose size differs from
its image, and a benign/malignant image whose masks are all empty. Ignored (listed in ``ignored``): files
in no format PIL reads (``.DS_Store``, notes) and sub-folders, which are not searched. A 16-bit image is
kept with the flag ``image-16-bit`` (the readers scale it by its bit depth). Exact duplicate images
(identical decoded pixels) keep the first in natural order; the others are listed in ``duplicates``.
BUSI has no patient ids: ``patient_id`` is the image's case id.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from breastseg.workflows.data.indexers._image_files import (
    UNREADABLE,
    image_files_by_stem,
    quarantine_shared_stem,
    usable_image,
)
from breastseg.workflows.data.near_duplicates import FingerprintStore
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


def _inspect_mask(path: Path) -> tuple[tuple[int, int], str, bool]:
    """``(size, mode, has_lesion)``; decoding the pixels also proves the file is complete."""
    with Image.open(path) as image:
        # same reduction as the load-time mask reader: grey, then > 127
        return image.size, image.mode, bool((np.asarray(image.convert("L")) > 127).any())


def _index_image(
    pathology: str,
    image: Path,
    masks: list[Path],
    result: IndexResult,
    digests: dict[str, str],
    fingerprints: FingerprintStore | None,
) -> dict[str, Any] | None:
    case_id = image.stem
    if not masks:
        result.quarantine_record(case_id, str(image), "no mask file (expected '<stem>_mask.png')")
        return None
    checked = usable_image(image, case_id, result, digests, fingerprints)
    if checked is None:
        return None
    (width, height), depth_flags = checked
    lesion_masks = 0
    flags = (["normal"] if pathology == "normal" else []) + depth_flags
    for mask in masks:
        try:
            mask_size, mode, has_lesion = _inspect_mask(mask)
        except UNREADABLE as error:
            result.quarantine_record(case_id, str(mask), f"unreadable mask: {error}")
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


def _scan_class_folder(folder: Path, result: IndexResult) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Image files by stem and mask files by their image's stem; every other entry is listed as ignored."""
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = defaultdict(list)
    for stem, paths in image_files_by_stem(folder, result).items():
        if "_mask" in stem:
            masks[mask_base_stem(stem)].extend(paths)
        else:
            images[stem] = paths
    return images, masks


def index(root: Path, deduplicate: bool = True, fingerprints: FingerprintStore | None = None) -> IndexResult:
    """Index a BUSI download.

    Args:
        root: ``Dataset_BUSI_with_GT`` or its parent folder.
        deduplicate: drop exact duplicate images (listed in ``duplicates``); copies with different labels stay,
            for the label-conflict check.
        fingerprints: where to keep each image's near-duplicate fingerprint, from the indexer's own decode.
    """
    base = find_busi_root(Path(root).absolute())
    result = IndexResult()
    records: list[dict[str, Any]] = []
    digests: dict[str, str] = {}  # pixel digests of the usable images, from their one decode
    for pathology in CLASSES:
        folder = base / pathology
        if not folder.is_dir():
            continue
        images, masks = _scan_class_folder(folder, result)
        for stem in sorted(set(masks) - set(images), key=natural_key):
            for mask in masks[stem]:
                result.quarantine_record(stem, str(mask), "mask without an image")
        for stem, same_stem in images.items():
            if len(same_stem) > 1:
                quarantine_shared_stem(stem, same_stem, masks.get(stem, []), result)
                continue
            stem_masks = sorted(masks.get(stem, []), key=_mask_order)
            record = _index_image(pathology, same_stem[0], stem_masks, result, digests, fingerprints)
            if record is not None:
                records.append(record)
    if deduplicate:
        records, result.duplicates = remove_exact_duplicates(records, digest=lambda path: digests[str(path)])
    result.records = records
    return result
