"""Lesion masks from the datalist's ``label``/``label_format`` (the record contract in
``breastseg.workflows.data.records``): DICOM mask list, PNG mask list, INbreast XML, or none.

Merge rules: DICOM masks are binarised with ``> 0`` (whatever the dtype), PNG masks are reduced to one
channel and binarised with ``> 127``; several masks are OR-ed. INbreast XML is rasterised at the size
of the already-loaded image. A mask whose size differs from the image is an error: it is never resized
(CBIS-DDSM has such masks with a different aspect ratio).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["LABEL_FORMATS", "load_lesion_mask"]

LABEL_FORMATS = ("dicom", "png", "inbreast-xml", "none")


def _read_dicom_mask(path: str) -> np.ndarray:
    from .dicom import _check_greyscale_single_frame, _dcmread, _decode

    ds = _dcmread(path)
    _check_greyscale_single_frame(ds, path)
    return _decode(ds, path, "") > 0  # stored values: masks are 0/255 (or 0/1) whatever the LUTs say


def _as_paths(label: str | os.PathLike | Sequence[str | os.PathLike] | None, label_format: str) -> list[str]:
    if label is None or (isinstance(label, (list, tuple)) and not label):
        raise ValueError(f"label_format {label_format!r} needs a label path, got {label!r}")
    if isinstance(label, (str, os.PathLike)):
        return [os.fspath(label)]
    return [os.fspath(p) for p in label]


def load_lesion_mask(
    label: str | os.PathLike | Sequence[str | os.PathLike] | None,
    label_format: str,
    image_shape: tuple[int, int],
    image_path: str | None = None,
    inbreast_kinds: Sequence[str] = ("mass",),
) -> np.ndarray:
    """Build the bool lesion mask ``(rows, cols)`` of one image.

    Args:
        label: one path, a list of paths (OR-ed), an INbreast XML path, or ``None`` (format ``"none"``).
        label_format: ``"dicom"``, ``"png"``, ``"inbreast-xml"`` or ``"none"``.
        image_shape: ``(rows, cols)`` of the loaded image; masks must match it exactly.
        image_path: the image file, named in size-mismatch errors.
        inbreast_kinds: INbreast ROI kinds rasterised (masses by default).

    Raises:
        ValueError: unknown format, missing label, unreadable mask, or a mask of another size than the
            image (the message names both files and both sizes).
        FileNotFoundError: a mask file is missing.
    """
    rows, cols = (int(v) for v in image_shape)
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"unknown label_format {label_format!r}; expected one of {LABEL_FORMATS}")
    if label_format == "none":
        return np.zeros((rows, cols), dtype=bool)
    paths = _as_paths(label, label_format)
    if label_format == "inbreast-xml":
        if len(paths) != 1:
            raise ValueError(f"label_format 'inbreast-xml' takes one XML path, got {len(paths)}: {paths}")
        # lazy: the INbreast parser is a sibling module that may land later than this loader
        from .inbreast_xml import rasterize_inbreast_rois, read_inbreast_rois

        rois = read_inbreast_rois(paths[0])
        return np.asarray(rasterize_inbreast_rois(rois, shape=(rows, cols), kinds=tuple(inbreast_kinds)), dtype=bool)
    if label_format == "png":
        from .png import read_png_mask

        reader = read_png_mask
    else:
        reader = _read_dicom_mask
    merged = np.zeros((rows, cols), dtype=bool)
    for path in paths:
        mask = reader(path)
        if mask.shape != (rows, cols):
            raise ValueError(
                f"mask {path} has size {mask.shape[0]}x{mask.shape[1]} but image "
                f"{image_path or '<image>'} has size {rows}x{cols} (rows x cols); masks are never resized"
            )
        merged |= mask
    return merged
