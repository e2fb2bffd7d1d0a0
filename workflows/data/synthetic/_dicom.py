"""Deterministic DICOM writing for the synthetic mammography layouts (uncompressed explicit VR little endian)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

__all__ = ["MAMMO_FOR_PRESENTATION", "SECONDARY_CAPTURE", "DicomFields", "derive_uid", "write_dicom"]

MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def derive_uid(prefix: str, seed: int, key: str) -> str:
    """A UID under ``prefix`` fixed by ``(seed, key)``: same inputs, same UID (at most 64 characters)."""
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest(), "big")
    digits = str(digest)[: 64 - len(prefix)]
    return prefix + digits.lstrip("0")


@dataclass(frozen=True)
class DicomFields:
    """The header values that vary between the synthetic files."""

    sop_class_uid: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    series_description: str = ""
    series_number: int = 1
    instance_number: int = 1
    laterality: str | None = None
    view: str | None = None
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    pixel_spacing: tuple[float, float] | None = None
    imager_pixel_spacing: tuple[float, float] | None = None


def write_dicom(path: Path, pixels: np.ndarray, fields: DicomFields) -> None:
    """Write a single-frame grey image (``uint8`` or ``uint16``) as a Part-10 file with modality MG."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = fields.sop_class_uid
    meta.MediaStorageSOPInstanceUID = fields.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = fields.sop_class_uid
    ds.SOPInstanceUID = fields.sop_instance_uid
    ds.StudyDate = fields.study_date
    ds.SeriesDate = fields.study_date
    ds.Modality = "MG"
    if fields.sop_class_uid == SECONDARY_CAPTURE:
        ds.ConversionType = "DI"  # digitised film, as CBIS-DDSM's converted DDSM images
    ds.SeriesDescription = fields.series_description
    ds.PatientName = fields.patient_name
    ds.PatientID = fields.patient_id
    ds.PatientBirthDate = ""
    ds.StudyInstanceUID = fields.study_uid
    ds.SeriesInstanceUID = fields.series_uid
    ds.SeriesNumber = fields.series_number
    ds.InstanceNumber = fields.instance_number
    if fields.laterality:
        ds.ImageLaterality = fields.laterality
    if fields.view:
        ds.ViewPosition = fields.view
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = fields.photometric
    ds.Rows, ds.Columns = (int(size) for size in pixels.shape)
    if fields.pixel_spacing is not None:
        ds.PixelSpacing = [f"{value:.6g}" for value in fields.pixel_spacing]
    if fields.imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = [f"{value:.6g}" for value in fields.imager_pixel_spacing]
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = min(fields.bits_stored, bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
