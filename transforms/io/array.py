"""Array-form loaders: a path in, a channel-first ``MetaTensor`` out.

The image is ``(1, rows, cols)`` float32 whose affine is ``diag(row_mm, col_mm, 1, 1)`` when the file
states a spacing (1 mm placeholders otherwise, with ``meta["spacing_known"] = False``), so MONAI's
resize/pad/crop keep the spacing right and metrics can report millimetres.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from .dicom import read_dicom, read_dicom_header, read_dicom_itk
from .masks import LABEL_FORMATS, load_lesion_mask
from .png import read_png_and_depth

__all__ = ["LoadBreastImage", "LoadLesionMask", "PIL_SUFFIXES", "read_image_size", "to_metatensor"]


def _pil_suffixes() -> tuple[str, ...]:
    from PIL import Image

    return tuple(sorted(suffix for suffix, format_id in Image.registered_extensions().items() if format_id in Image.OPEN))


#: file endings of the formats PIL reads (PNG, JPEG, BMP, TIFF...); everything else is read as DICOM
#: (CBIS/INbreast end ``.dcm``, some DICOM have none)
PIL_SUFFIXES = _pil_suffixes()
READERS = ("pydicom", "itk")


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(rows, columns)`` of an image :class:`LoadBreastImage` reads, from its header alone (no pixel is decoded)."""
    path = os.fspath(path)
    if path.lower().endswith(PIL_SUFFIXES):
        from PIL import Image

        with Image.open(path) as image:  # PIL reads the header; the pixels wait until they are asked for
            return image.height, image.width
    header = read_dicom_header(path)
    return header["rows"], header["columns"]


def to_metatensor(array: np.ndarray, spacing: Sequence[float] | None, meta: dict[str, Any]) -> MetaTensor:
    """Wrap a ``(rows, cols)`` array as a ``(1, rows, cols)`` float32 ``MetaTensor`` with a spacing affine."""
    row_mm, col_mm = (float(s) for s in spacing) if spacing is not None else (1.0, 1.0)
    affine = torch.diag(torch.tensor([row_mm, col_mm, 1.0, 1.0], dtype=torch.float64))
    # "" for a value the file does not state: None cannot be collated into a batch
    meta = {key: "" if value is None else value for key, value in meta.items()}
    meta.update(
        spacing_known=spacing is not None,
        original_channel_dim="no_channel",
        spatial_shape=tuple(int(v) for v in array.shape),
        original_affine=affine.clone(),
    )
    tensor = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None]
    return MetaTensor(tensor, affine=affine, meta=meta)


class LoadBreastImage(Transform):
    """Read a mammogram (DICOM) or an ultrasound/converted image (PNG, JPEG, BMP... any format PIL reads)
    as ``(1, rows, cols)``.

    ``meta["bit_depth"]`` is the bits per value the file holds (DICOM ``BitsStored``; 8 or 16 for PIL
    images, ``None`` for PIL's 32-bit integer and float modes): :class:`~breastseg.transforms.intensity.ScaleByBitDepth`
    scales by it.

    Args:
        reader: ``"pydicom"`` (default) or ``"itk"`` (MONAI ``ITKReader``) for DICOM; both give the
            same pixels and spacing (see :mod:`breastseg.transforms.io.dicom`).
        apply_voi: apply the DICOM VOI LUT / window (pydicom reader only). Off by default so the full
            16-bit range is kept.
        decoding_plugin: force a pydicom decoding plugin; empty lets pydicom choose.

    Raises:
        ValueError: bad parameters, or unreadable/corrupt input (the message names the file).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, reader: str = "pydicom", apply_voi: bool = False, decoding_plugin: str = "") -> None:
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        if reader == "itk" and apply_voi:
            raise ValueError("apply_voi=True needs reader='pydicom' (the ITK path never applies the VOI LUT)")
        self.reader = reader
        self.apply_voi = apply_voi
        self.decoding_plugin = decoding_plugin

    def __call__(self, path: str | os.PathLike, default_spacing: Sequence[float] | None = None) -> MetaTensor:
        """Read ``path``; ``default_spacing`` (row_mm, col_mm) applies only when the file states none
        (a dataset's nominal pixel size, e.g. INbreast's 0.07 mm); ``spacing_source`` then says
        ``"dataset default"``."""
        path = os.fspath(path)
        if path.lower().endswith(PIL_SUFFIXES):
            array, bit_depth = read_png_and_depth(path)
            meta = {"filename_or_obj": path, "modality": None, "spacing_source": None, "bit_depth": bit_depth}
            return to_metatensor(array, None, meta)
        if self.reader == "itk":
            image = read_dicom_itk(path)
        else:
            image = read_dicom(path, apply_voi=self.apply_voi, decoding_plugin=self.decoding_plugin)
        meta = {k: v for k, v in image.meta.items() if k != "spacing"}
        meta["bit_depth"] = image.meta.get("bits_stored")
        spacing = image.meta["spacing"]
        if spacing is None and default_spacing is not None:
            spacing = tuple(float(v) for v in default_spacing)
            meta["spacing_source"] = "dataset default"
        return to_metatensor(image.array, spacing, meta)


class LoadLesionMask(Transform):
    """Load the lesion mask matching an already-loaded image as ``(1, rows, cols)`` float32 in {0, 1}.

    The mask takes the image's affine and metadata (with its own ``filename_or_obj``), so every later
    geometric transform treats image and mask alike.

    Args:
        inbreast_kinds: INbreast ROI kinds that make the mask (``("mass",)`` by default).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, inbreast_kinds: Sequence[str] = ("mass",)) -> None:
        if isinstance(inbreast_kinds, str) or not inbreast_kinds:
            raise ValueError(f"inbreast_kinds must be a non-empty sequence of names, got {inbreast_kinds!r}")
        self.inbreast_kinds = tuple(inbreast_kinds)

    def __call__(self, label: Any, label_format: str, image: torch.Tensor) -> MetaTensor:
        if image.ndim != 3:
            raise ValueError(f"image must be channel-first (C, rows, cols), got shape {tuple(image.shape)}")
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"unknown label_format {label_format!r}; expected one of {LABEL_FORMATS}")
        image_meta = dict(getattr(image, "meta", {}))
        image_path = image_meta.get("filename_or_obj")
        mask = load_lesion_mask(label, label_format, tuple(image.shape[1:]), image_path, self.inbreast_kinds)
        affine = image.affine.clone() if isinstance(image, MetaTensor) else torch.eye(4, dtype=torch.float64)
        meta = {k: v for k, v in image_meta.items() if k not in ("affine",)}
        # one string whatever the number of mask files: lists of varying length cannot be collated
        meta["filename_or_obj"] = label if isinstance(label, str) else "" if label is None else os.pathsep.join(map(str, label))
        meta["label_format"] = label_format
        tensor = torch.from_numpy(mask.astype(np.float32))[None]
        return MetaTensor(tensor, affine=affine, meta=meta)
