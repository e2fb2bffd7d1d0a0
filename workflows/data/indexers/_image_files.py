"""The image files of the ultrasound datasets' folders, in any format PIL reads, and what is not one."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from breastseg.transforms.io import PIL_SUFFIXES
from breastseg.transforms.io.png import pil_bit_depth
from breastseg.workflows.data.near_duplicates import FingerprintStore
from breastseg.workflows.data.records import IndexResult
from breastseg.workflows.data.splits import image_digest, natural_key

__all__ = ["UNREADABLE", "image_files_by_stem", "inspect_image", "quarantine_shared_stem", "check_bit_depth"]

#: what PIL raises for a file it cannot read (a decompression bomb is not an OSError)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_files_by_stem(folder: Path, result: IndexResult) -> dict[str, list[Path]]:
    """The files of ``folder`` in a format PIL reads, by stem (natural order); every other entry (sub-folders,
    which are not searched, ``.DS_Store``, notes) is listed in ``result.ignored`` with the reason."""
    files: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.is_dir():
            result.ignore(str(path), f"sub-folder of {folder.name}/; not searched")
        elif not path.is_file():
            result.ignore(str(path), "not a regular file")
        elif path.suffix.lower() not in PIL_SUFFIXES:
            result.ignore(str(path), f"not an image format PIL reads ({path.suffix or 'no file ending'})")
        else:
            files[path.stem].append(path)
    return files


def quarantine_shared_stem(stem: str, images: list[Path], masks: list[Path], result: IndexResult) -> None:
    """Quarantine the image and mask files of a stem that names two or more images or masks (``5.png`` and
    ``5.jpg``): which mask goes with which image cannot be told."""
    names = ", ".join(f"{path.parent.name}/{path.name}" for path in images + masks)
    reason = f"several files share the stem {stem!r} ({names}); cannot tell which image and mask belong together"
    for path in images + masks:
        result.quarantine_record(stem, str(path), reason)


def _grey_values(image: Image.Image) -> np.ndarray:
    """The grey values of an opened image: 16-bit and integer modes as they are, colour as luma."""
    return np.asarray(image if image.mode.startswith(("I", "F")) else image.convert("L"))


def inspect_image(path: Path, fingerprints: FingerprintStore | None = None) -> tuple[tuple[int, int], str, str]:
    """``(size, mode, pixel digest)``; decoding the pixels proves the file is complete whatever its format, and
    the digest (:func:`~breastseg.workflows.data.splits.image_digest`) and, with ``fingerprints``, the image's
    near-duplicate fingerprint (unless cached) come from the same decode."""
    with Image.open(path) as image:
        image.load()
        if fingerprints is not None and pil_bit_depth(image.mode) is not None:
            fingerprints.fingerprint(path, pixels=lambda: _grey_values(image))
        return image.size, image.mode, image_digest(image)


def check_bit_depth(mode: str) -> tuple[list[str], str]:
    """``(flags, reason)`` for an image of PIL ``mode``: ``image-16-bit`` for 16-bit grey; a reason to
    quarantine for modes that state no bit depth (32-bit integer, float), which cannot be scaled by it."""
    bit_depth = pil_bit_depth(mode)
    if bit_depth is None:
        return [], f"image mode {mode} (32-bit integer or float) states no bit depth to scale by; convert it to 8 or 16 bits"
    return (["image-16-bit"] if bit_depth == 16 else []), ""


def usable_image(
    path: Path, case_id: str, result: IndexResult, digests: dict[str, str], fingerprints: FingerprintStore | None = None
) -> tuple[tuple[int, int], list[str]] | None:
    """``(size, flags)`` of an image file, or ``None`` once it is quarantined (unreadable, or a mode that states
    no bit depth). The pixel digest of a usable image goes into ``digests`` (by path) for
    :func:`~breastseg.workflows.data.splits.remove_exact_duplicates`, and its fingerprint into ``fingerprints``,
    so no image is decoded twice."""
    try:
        size, mode, digest = inspect_image(path, fingerprints)
    except UNREADABLE as error:
        result.quarantine_record(case_id, str(path), f"unreadable image: {error}")
        return None
    flags, reason = check_bit_depth(mode)
    if reason:
        result.quarantine_record(case_id, str(path), reason)
        return None
    digests[str(path)] = digest
    return size, flags
