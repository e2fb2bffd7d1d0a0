"""Readers: DICOM (pydicom or ITK, one convention), PNG, and lesion masks from datalist records."""

from .array import PIL_SUFFIXES, LoadBreastImage, LoadLesionMask, read_image_size, to_metatensor
from .dicom import (
    DECODER_PACKAGES,
    DicomImage,
    MissingDecoderError,
    dicom_spacing,
    missing_decoder,
    read_dicom,
    read_dicom_header,
    read_dicom_itk,
)
from .dictionary import LoadBreastImaged, LoadLesionMaskd
from .masks import LABEL_FORMATS, load_lesion_mask
from .png import mask_png, read_png, read_png_mask

__all__ = [
    "DECODER_PACKAGES",
    "DicomImage",
    "LABEL_FORMATS",
    "LoadBreastImage",
    "LoadBreastImaged",
    "LoadLesionMask",
    "LoadLesionMaskd",
    "MissingDecoderError",
    "PIL_SUFFIXES",
    "dicom_spacing",
    "load_lesion_mask",
    "mask_png",
    "missing_decoder",
    "read_dicom",
    "read_dicom_header",
    "read_dicom_itk",
    "read_image_size",
    "read_png",
    "read_png_mask",
    "to_metatensor",
]
