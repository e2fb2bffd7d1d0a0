"""Header-only DICOM reading for the mammography indexers: uncompressed pixel data are never decoded here (their
length is checked against the file), a file whose transfer syntax no installed decoder reads is refused, and
compressed pixel data (RLE, JPEG...) are decoded once, since only a decode shows a corrupt payload: such files are
quarantined before any split instead of stopping training at their first batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from breastseg.transforms.io.dicom import missing_decoder

__all__ = ["DicomHeader", "read_header", "read_mask_pixels"]

_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class DicomHeader:
    """The header values the indexers use (no patient identifiers are kept)."""

    path: Path
    rows: int
    columns: int
    study_uid: str | None
    series_uid: str | None
    instance_number: int | None
    spacing: list[float] | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.columns


def _spacing(ds: pydicom.Dataset) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            spacing = [float(item) for item in value]
            if all(item > 0 for item in spacing):
                return spacing
    return None


def read_header(path: Path) -> DicomHeader:
    """Read one file's header and check that its pixel data are all there and can be decoded here.

    Spacing is ``PixelSpacing``, else ``ImagerPixelSpacing``, else ``None``.

    Raises:
        ValueError: the file is not DICOM, has no Rows/Columns or pixel data, is truncated, its transfer syntax
            has no installed decoder (the message names the file, and the package to install), or its compressed
            pixel data do not decode.
    """
    try:
        # large values (pixel data) are deferred: their length and offset are read, their bytes are not
        ds = pydicom.dcmread(path, defer_size=4096)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable DICOM ({error})") from error
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError(f"{path}: DICOM header has no Rows/Columns")
    element = ds.get_item("PixelData", keep_deferred=True)
    if element is None:
        raise ValueError(f"{path}: DICOM file has no pixel data")
    transfer_syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    reason = missing_decoder(transfer_syntax) if transfer_syntax else None
    if reason:
        raise ValueError(f"{path}: {reason}")
    length = getattr(element, "length", None)
    offset = getattr(element, "value_tell", None)
    if length is not None and offset is not None and length != _UNDEFINED_LENGTH:
        size = path.stat().st_size
        if offset + length > size:
            raise ValueError(f"{path}: pixel data truncated ({size - offset} of {length} bytes present)")
    if transfer_syntax and UID(transfer_syntax).is_compressed:
        _check_decodes(path, UID(transfer_syntax))
    instance = ds.get("InstanceNumber")
    return DicomHeader(
        path=path,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        study_uid=str(ds.StudyInstanceUID) if "StudyInstanceUID" in ds else None,
        series_uid=str(ds.SeriesInstanceUID) if "SeriesInstanceUID" in ds else None,
        instance_number=int(instance) if instance not in (None, "") else None,
        spacing=_spacing(ds),
    )


def _check_decodes(path: Path, transfer_syntax: UID) -> None:
    """Decode the pixel data once with the decoder the loaders use (a 3000x2000 RLE frame takes about 0.3 s)."""
    try:
        pixel_array(path)
    except Exception as error:  # pydicom raises many types for a corrupt payload
        detail = " ".join(str(error).split())  # the decoder lists each plugin's failure on its own line
        raise ValueError(
            f"{path}: corrupt pixel data: {transfer_syntax.name} decoding failed ({type(error).__name__}: {detail}); "
            "export the file again from its source"
        ) from error


def read_mask_pixels(path: Path) -> np.ndarray:
    """Decode a mask file's pixels as a 2-D array.

    Raises:
        ValueError: the pixels cannot be decoded or are not a single 2-D frame (the message names the file).
    """
    try:
        pixels = pydicom.dcmread(path).pixel_array
    except Exception as error:  # pydicom raises many types for undecodable pixel data
        raise ValueError(f"{path}: cannot decode pixel data ({type(error).__name__}: {error})") from error
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one 2-D frame, got pixel array of shape {pixels.shape}")
    return pixels
