"""Real test files for the transforms tests: DICOM written with pydicom, PNG with PIL, synthetic breasts."""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-SECRET"
PATIENT_BIRTH_DATE = "19600101"


def write_dicom(
    path,
    array: np.ndarray,
    photometric: str = "MONOCHROME2",
    pixel_spacing=None,
    imager_spacing=None,
    slope=None,
    intercept=None,
    bits_stored: int = 16,
    window=None,
) -> str:
    """Write a single-frame uint16 DICOM (with patient identifiers, to check they never leak)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixel_spacing is not None:
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = [f"{v:g}" for v in imager_spacing]
    if slope is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{v:g}" for v in window)
    ds.PixelData = np.ascontiguousarray(array, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def write_png(path, array: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(np.ascontiguousarray(array), mode=mode).save(path)
    return str(path)


def phantom_mammogram(
    rows: int = 160,
    cols: int = 128,
    side: str = "left",
    lesions=((60, 40, 8), (110, 55, 5)),
    artefacts: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 breast (half ellipse against the chest wall on ``side``) with bright round lesions,
    optionally a bright film label and a border line; returns ``(image, lesion_mask)``."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:rows, 0:cols]
    centre_r, radius_r, radius_c = rows / 2, rows * 0.42, cols * 0.6
    breast = ((rr - centre_r) / radius_r) ** 2 + (cc / radius_c) ** 2 <= 1
    image = rng.normal(300, 40, (rows, cols))
    image[breast] = 9000 + 3000 * np.sin(rr[breast] / 7.0) + rng.normal(0, 300, breast.sum())
    mask = np.zeros((rows, cols), bool)
    for r, c, radius in lesions:
        blob = (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
        mask |= blob
        image[blob] += 12000
    if artefacts:
        image[rows - 14 : rows - 6, cols - 30 : cols - 8] = 60000  # film label in the far corner
        image[:, cols - 2 :] = 50000  # bright border line along the far edge
    image = np.clip(image, 0, 65535).astype(np.uint16)
    if side == "right":
        return image[:, ::-1].copy(), mask[:, ::-1].copy()
    return image, mask
