"""Geometry: border crop, artefact removal, canonical side, breast-centred square pad, lesion ROI crops,
paste-back and the MSF detector views (array + dictionary forms, invertible where geometry changes)."""

from .array import (
    MSF_SCALES_WH,
    BorderCrop,
    BreastCentredSquarePad,
    CanonicalSide,
    LesionRoiCrop,
    RemoveArtefacts,
    detector_views,
    lesion_boxes,
    paste_back,
    square_box,
)
from .breast import NoBreastFoundError, breast_box, breast_region
from .dictionary import BorderCropd, BreastCentredSquarePadd, CanonicalSided, LesionRoiCropd, RemoveArtefactsd

__all__ = [
    "MSF_SCALES_WH",
    "BorderCrop",
    "BorderCropd",
    "BreastCentredSquarePad",
    "BreastCentredSquarePadd",
    "CanonicalSide",
    "CanonicalSided",
    "LesionRoiCrop",
    "LesionRoiCropd",
    "NoBreastFoundError",
    "RemoveArtefacts",
    "RemoveArtefactsd",
    "breast_box",
    "breast_region",
    "detector_views",
    "lesion_boxes",
    "paste_back",
    "square_box",
]
