"""DICOM greyscale image reading with pydicom, and the same result through ITK (MONAI ``ITKReader``).

Pixel pipeline (the project's single convention, stated in every bundle's docs):

1. stored values are decoded (row-major: rows first, exactly like ``pydicom``'s ``pixel_array``);
2. the Modality LUT is applied (Rescale Slope/Intercept or a Modality LUT Sequence), so values are in
   the modality's units and the full 16-bit range is kept;
3. the VOI LUT / window is **not** applied unless ``apply_voi=True`` (a window throws away the range
   that histogram equalisation and CLAHE later use);
4. ``MONOCHROME1`` is inverted so that bright always means dense: ``lo + hi - value`` where ``[lo, hi]``
   is the output range of steps 2-3 over the stored bit range (the same result ITK/GDCM gives).

Spacing comes from ``PixelSpacing``, else ``ImagerPixelSpacing``, else it is unknown (1 mm placeholder
and ``spacing_known=False``). Patient-identifying attributes never enter the returned metadata.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = [
    "MissingDecoderError",
    "DicomImage",
    "read_dicom",
    "read_dicom_itk",
    "read_dicom_header",
    "dicom_spacing",
    "DECODER_PACKAGES",
    "missing_decoder",
]

#: pip packages that decode each compressed transfer syntax (pydicom needs one of them installed).
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg (or pillow built with OpenJPEG)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg (or pillow built with OpenJPEG)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


class MissingDecoderError(RuntimeError):
    """The file's transfer syntax needs a decoder package that is not installed."""


def missing_decoder(transfer_syntax: str, decoding_plugin: str = "") -> str | None:
    """Why no installed pydicom decoder can read pixel data in ``transfer_syntax`` (with ``decoding_plugin``,
    when one is asked for); ``None`` when one can.

    Asks pydicom's decoder registry, so it costs no decoding (the indexers check every file this way).
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid} ({uid.name}) has no pixel data decoder in pydicom"
    packages = DECODER_PACKAGES.get(str(uid), "a pydicom pixel-data plugin (pylibjpeg, python-gdcm)")
    if not decoder.is_available:
        return f"no installed decoder for transfer syntax {uid} ({uid.name}); install: pip install {packages}"
    if decoding_plugin and decoding_plugin not in decoder.available_plugins:
        return (
            f"decoding plugin {decoding_plugin!r} cannot decode transfer syntax {uid} ({uid.name}) here; available: "
            f"{sorted(decoder.available_plugins)} (leave decoding_plugin empty to let pydicom choose, or pip install {packages})"
        )
    return None


class DicomImage:
    """A decoded greyscale image: ``array`` (rows, cols) float32 plus non-identifying ``meta``."""

    __slots__ = ("array", "meta")

    def __init__(self, array: np.ndarray, meta: dict[str, Any]) -> None:
        self.array = array
        self.meta = meta


def _dcmread(path: str | os.PathLike, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        # read-only open: reading never modifies the file
        with open(path, "rb") as fh:
            return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err


def dicom_spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    """``((row_mm, col_mm), source_tag)`` from PixelSpacing, else ImagerPixelSpacing, else ``(None, None)``."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is None:
            continue
        try:
            row_mm, col_mm = (float(v) for v in value)
        except (TypeError, ValueError):
            continue  # malformed value: fall through to the next source, then to "unknown"
        if row_mm > 0 and col_mm > 0:
            return (row_mm, col_mm), tag
    return None, None


def _header_meta(ds, path: str) -> dict[str, Any]:
    spacing, source = dicom_spacing(ds)
    meta = {
        "filename_or_obj": path,
        "spacing": spacing,
        "spacing_known": spacing is not None,
        "spacing_source": source,
        "modality": str(ds.get("Modality", "")) or None,
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")) or None,
        "bits_stored": int(ds.get("BitsStored", 0)) or None,
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else None,
    }
    return meta


def read_dicom_header(path: str | os.PathLike) -> dict[str, Any]:
    """Non-identifying header facts (size, spacing, photometric) without decoding pixels."""
    path = os.fspath(path)
    ds = _dcmread(path, stop_before_pixels=True)
    meta = _header_meta(ds, path)
    meta["rows"], meta["columns"] = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    return meta


def _check_greyscale_single_frame(ds, path: str, require_pixels: bool = True) -> None:
    if require_pixels and "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM file has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{path}: expected a greyscale image, got SamplesPerPixel={ds.SamplesPerPixel}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ValueError(f"{path}: expected a single frame, got NumberOfFrames={ds.NumberOfFrames}")


def _decode(ds, path: str, decoding_plugin: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    syntax = ds.file_meta.get("TransferSyntaxUID")
    reason = missing_decoder(syntax, decoding_plugin) if syntax else None
    if reason:
        raise MissingDecoderError(f"{path}: {reason}")
    try:
        return pixel_array(ds, decoding_plugin=decoding_plugin)
    except (RuntimeError, NotImplementedError, ImportError) as err:
        raise ValueError(f"{path}: corrupt or unsupported pixel data ({err})") from err
    except (ValueError, EOFError) as err:
        raise ValueError(f"{path}: corrupt or truncated pixel data ({err})") from err


def _stored_range(ds) -> np.ndarray:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
    return np.array([0, 2**bits - 1])


def _to_presentation(stored: np.ndarray, ds, apply_voi: bool) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    def pipeline(values: np.ndarray) -> np.ndarray:
        out = apply_modality_lut(values, ds)
        if apply_voi:
            out = apply_voi_lut(out, ds, prefer_lut=True)
        return out

    values = np.asarray(pipeline(stored), dtype=np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        ends = np.asarray(pipeline(_stored_range(ds)), dtype=np.float64)
        values = np.float32(ends.min() + ends.max()) - values
    return values


def read_dicom(path: str | os.PathLike, apply_voi: bool = False, decoding_plugin: str = "") -> DicomImage:
    """Read one greyscale DICOM image with pydicom (see the module docstring for the pixel pipeline).

    Args:
        path: the DICOM file; it is opened read-only.
        apply_voi: apply the first VOI LUT / window of the file after the Modality LUT.
        decoding_plugin: force one pydicom decoding plugin (``"pylibjpeg"``, ``"gdcm"``, ``"pillow"``...);
            empty lets pydicom pick any installed one.

    Returns:
        :class:`DicomImage` with a float32 ``(rows, cols)`` array.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not DICOM, no pixel data, colour/multi-frame, corrupt pixel data (the message names the file).
        MissingDecoderError: a compressed transfer syntax without an installed decoder (names the package).
    """
    path = os.fspath(path)
    ds = _dcmread(path)
    _check_greyscale_single_frame(ds, path)
    stored = _decode(ds, path, decoding_plugin)
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise ValueError(f"{path}: decoded shape {stored.shape} differs from Rows/Columns {(ds.Rows, ds.Columns)}")
    meta = _header_meta(ds, path)
    meta["voi_applied"] = bool(apply_voi)
    return DicomImage(_to_presentation(stored, ds, apply_voi), meta)


def read_dicom_itk(path: str | os.PathLike) -> DicomImage:
    """Read one greyscale DICOM through MONAI ``LoadImage(reader="ITKReader")``, in the pydicom convention.

    ITK returns x-first (transposed) arrays with a trailing channel axis, applies the Modality LUT and
    inverts MONOCHROME1 like :func:`read_dicom`, but picks spacing by its own rules (it ignores
    ``ImagerPixelSpacing`` for some SOP classes) and copies patient tags into its metadata. This
    function transposes back to (rows, cols), takes the spacing from the header with the pydicom rule
    and keeps only non-identifying metadata, so both readers give the same pixels and spacing.
    The VOI LUT is never applied on this path.
    """
    from monai.transforms import LoadImage

    path = os.fspath(path)
    ds = _dcmread(path, stop_before_pixels=True)
    _check_greyscale_single_frame(ds, path, require_pixels=False)
    try:
        image = LoadImage(reader="ITKReader", image_only=True)(path)
    except RuntimeError as err:
        raise ValueError(f"{path}: ITK could not read this DICOM ({err})") from err
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2D greyscale image from ITK, got shape {array.shape}")
    meta = _header_meta(ds, path)
    meta["voi_applied"] = False
    return DicomImage(np.ascontiguousarray(array.T), meta)
