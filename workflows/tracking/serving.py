"""The served model: images as users have them in, masks at the image's own size out.

:class:`ImageBundleModel` is the MLflow ``pyfunc`` model registered by every training of a bundle (for the two-stage
bundle, its whole pipeline: detector, multi-scale fusion and segmenter). Each input row holds one image:

- ``image``: the bytes of a DICOM or PNG file: base64 text (JSON requests), or raw bytes (Parquet requests and
  DataFrames in Python: no JSON or base64 to decode); or, only where the operator allows a folder
  (:class:`ServingPolicy`), the path of such a file inside that folder;
- ``array``: or the pixels themselves, a 2-D integer array at native size (``uint8`` or values up to 255: 8-bit,
  else up to 65535: 16-bit, as the bundle's chain scales a file of that bit depth);
- ``roi``: lesion boxes ``[[row_start, row_end, col_start, col_end], ...]`` in pixels of the image, for the bundles
  that segment a region of interest around a known lesion (``unetplusplus_mammo``'s ``--roi_file``); without it the
  whole image is the box.

``load_context`` builds the bundle's own ``inference.json`` ``predictor`` once
(:class:`~breastseg.workflows.evaluation.inference.ImagePredictor`: network and weights, reader and preprocessing,
inferer, sigmoid and the mapping back to the original grid, as ``python -m monai.bundle run inference`` runs them);
``predict`` checks every row, writes it as a file in a temporary folder and segments it. One row out per input:
``mask`` (a base64 PNG, 0/255, the bytes of the ``<stem>_pred.png`` the command line writes), ``rows``, ``columns``,
``lesion_pixels``; ``boxes`` (``[x0, y0, x1, y1, score]`` per box a model found itself: the two-stage pipeline);
with the parameter ``return_probabilities``, ``probabilities`` (a base64 ``.npy`` of float32, same size); with
``return_lesion_masks`` (models that take ``roi``), ``lesion_masks`` (one base64 PNG per box, in box order; their
union is ``mask``). :func:`decode_png` and :func:`decode_npy` turn them back into arrays.

A bad row is refused with :class:`ServingInputError`: one line naming the row, what is wrong and what to send,
which MLflow's scoring server answers with HTTP 400 and nothing else (no stack trace, no server path, no echo of
the request); any other failure is logged with its traceback on the server and answered with a one-line 500.

:class:`NetworkModel` is the base of the models that serve one network on tensors (the two-stage detector).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from breastseg.workflows.engine.quarantine import data_error
from breastseg.workflows.errors import UserError, UserValueError

__all__ = [
    "TRAINED_WITH",
    "INPUT_COLUMNS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "ServingInputError",
    "ServingError",
    "ServingPolicy",
    "NetworkModel",
    "ImageBundleModel",
    "stage_row",
    "bundle_parser",
    "signature",
    "input_example",
    "encode_png",
    "decode_png",
    "decode_npy",
]

logger = logging.getLogger("breastseg.serving")

#: overrides of ``inference.json`` recording how the registered weights were trained
TRAINED_WITH = "trained_with.json"
#: default pixel limit per image: a full-field mammogram (4084 x 3328 = 13.6 million pixels) and a scanned film of
#: up to 25 million pixels fit
DEFAULT_MAX_PIXELS = 25_000_000
#: default byte limit per image file: the same 25 million pixels as an uncompressed 16-bit DICOM (50 MB) fit
DEFAULT_MAX_BYTES = 64 * 2**20
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DICOM_MAGIC_OFFSET = 128
_HEAD = _DICOM_MAGIC_OFFSET + 4
_PATH_MAX = 4096  # longer text is no path (Linux PATH_MAX): never resolved, however it is made
#: the columns of a request
INPUT_COLUMNS = ("image", "array", "roi")


class ServingInputError(UserValueError, MlflowException):
    """A request's input is wrong: one line naming the row, what is wrong and what to send.

    MLflow's scoring server answers an ``MlflowException`` with its error code (here HTTP 400) and its message, but
    first prefixes the message with the request's data ("Failed to predict data '...'"): that would echo the
    client's images and break the one line, so the message given here cannot be replaced.
    """

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        MlflowException.__init__(self, message, error_code=error_code)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @message.setter
    def message(self, value: str) -> None:
        pass  # see the class docstring: MLflow's prefix is dropped


class ServingError(ServingInputError):
    """The model failed on a request for another reason than its input (HTTP 500): the traceback is in the
    server's log, not in the answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INTERNAL_ERROR)


@dataclass(frozen=True)
class ServingPolicy:
    """What a served model accepts, from its model config (the ``model_config`` of ``load_model``; ``breastseg serve``
    options, or MLflow's ``SERVING_MODEL_CONFIG`` variable for ``mlflow models serve``).

    Attributes:
        image_folder: the one folder whose files a row may name by path (relative paths start there; ``..`` and
            symbolic links are resolved first, so neither leads out). ``None`` (default): no path is read.
        max_pixels: largest image accepted (rows x columns), checked from the header before any pixel is decoded.
        max_bytes: largest image file accepted, checked before its base64 text is decoded.
    """

    image_folder: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    KEYS = ("image_folder", "max_pixels", "max_bytes")

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any] | None) -> ServingPolicy:
        """The policy of a model config (missing keys: the defaults); an unknown key or bad value in one line."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(cls.KEYS))
        if unknown:
            raise UserValueError(f"unknown model_config key(s) {unknown}: the served model takes {', '.join(cls.KEYS)}")
        folder = config.get("image_folder")
        if folder:
            folder = Path(folder).expanduser().resolve()
            if not folder.is_dir():
                raise UserValueError(f"model_config image_folder {config['image_folder']} is no folder on the server: give an existing folder, or none to take no paths")
        limits = {}
        for key in ("max_pixels", "max_bytes"):
            value = config.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserValueError(f"model_config {key} must be a positive integer, got {value!r}")
            limits[key] = value
        return cls(folder or None, **limits)

    def model_config(self) -> dict[str, Any]:
        """The policy as a model config (logged with the model: MLflow passes only the keys it was logged with)."""
        return {"image_folder": str(self.image_folder) if self.image_folder else None, "max_pixels": self.max_pixels, "max_bytes": self.max_bytes}

    def allowed_file(self, value: str) -> Path | None:
        """The file ``value`` names inside :attr:`image_folder`, resolved; ``None`` for anything else, whether it
        exists or not."""
        if self.image_folder is None or len(value) > _PATH_MAX:
            return None
        try:
            candidate = (self.image_folder / value).resolve()
            inside = candidate.is_relative_to(self.image_folder) and candidate.is_file()
        except (OSError, ValueError, RuntimeError):  # base64 text is no file name (a NUL, a symbolic-link loop)
            return None
        return candidate if inside else None


def signature() -> Any:
    """Input columns ``image`` (base64 text), ``array`` (2-D integers), ``roi`` (boxes), all optional per row;
    parameters ``return_probabilities`` and ``return_lesion_masks``; output columns ``mask``, ``rows``, ``columns``,
    ``lesion_pixels`` and, when given, ``boxes``, ``probabilities``, ``lesion_masks``.

    The input columns are of any type for MLflow: its own type check fails in a message that repeats the
    request, so the model checks each row itself (one line per bad row).
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(AnyType(), name, required=False) for name in INPUT_COLUMNS])
    outputs = Schema([
        ColSpec("string", "mask"),
        ColSpec("long", "rows"),
        ColSpec("long", "columns"),
        ColSpec("long", "lesion_pixels"),
        ColSpec(Array(Array("double")), "boxes", required=False),
        ColSpec("string", "probabilities", required=False),
        ColSpec(Array("string"), "lesion_masks", required=False),
    ])
    params = ParamSchema([ParamSpec("return_probabilities", "boolean", False), ParamSpec("return_lesion_masks", "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def encode_png(array: np.ndarray) -> str:
    """``array`` (2-D ``uint8`` or ``uint16``) as a base64 PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    """The array of a base64 PNG (a served ``mask``: 0/255)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image)


def _mask_text(mask: np.ndarray) -> str:
    """A 0/1 mask as the base64 of the very PNG inference writes for it."""
    from breastseg.transforms import mask_png

    return base64.b64encode(mask_png(mask)).decode("ascii")


def _encode_npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_npy(text: str) -> np.ndarray:
    """The array of a base64 ``.npy`` (served ``probabilities``)."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def input_example() -> Any:
    """One row: a small synthetic 16-bit PNG in base64 (a bright disc on a dark background)."""
    import pandas as pd

    rows, cols = np.mgrid[:48, :40]
    picture = np.where((rows - 24) ** 2 + (cols - 18) ** 2 < 100, 40000, 8000).astype(np.uint16)
    return pd.DataFrame({"image": [encode_png(picture)]})


def _suffix(row: int, head: bytes, what: str) -> str:
    if head.startswith(_PNG_MAGIC):
        return ".png"
    if head[_DICOM_MAGIC_OFFSET:_HEAD] == b"DICM":
        return ".dcm"
    raise ServingInputError(f"row {row}: {what} is neither a PNG nor a DICOM file (no PNG signature, no 'DICM' at byte 128): send one of those")


def _check_bytes(row: int, size: int, policy: ServingPolicy) -> None:
    if size > policy.max_bytes:
        raise ServingInputError(
            f"row {row}: the image file is {size:,} bytes, over this server's limit of {policy.max_bytes:,} bytes "
            "(max_bytes): send a smaller file"
        )


def _check_pixels(row: int, rows: int, columns: int, policy: ServingPolicy) -> None:
    if rows * columns > policy.max_pixels:
        raise ServingInputError(
            f"row {row}: the image has {rows} x {columns} = {rows * columns:,} pixels, over this server's limit of "
            f"{policy.max_pixels:,} pixels (max_pixels): send a smaller image"
        )


def _base64_bytes(row: int, value: str, policy: ServingPolicy) -> bytes:
    _check_bytes(row, len(value) * 3 // 4, policy)  # the decoded size, known before decoding
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        paths = "or the path of a file in the server's image folder" if policy.image_folder else "(this server reads no file paths)"
        raise ServingInputError(
            f"row {row}: 'image' is not base64: send the bytes of a DICOM or PNG file in base64 (base64 -w0 FILE) {paths}"
        ) from None


def _image_file(row: int, value: str | bytes, target: Path, policy: ServingPolicy) -> Path:
    """Row ``row``'s ``image`` as a file ``target.<png|dcm>``: an allowed file linked (read in place), bytes (raw, or
    base64 text) written; refused over the byte and pixel limits before any pixel is decoded."""
    source = policy.allowed_file(value) if isinstance(value, str) else None
    if source is not None:
        _check_bytes(row, source.stat().st_size, policy)
        with open(source, "rb") as handle:
            target = target.with_suffix(_suffix(row, handle.read(_HEAD), "the file"))
        target.symlink_to(source)
    else:
        if isinstance(value, str):
            data, what = _base64_bytes(row, value, policy), "the base64 'image'"
        else:
            _check_bytes(row, len(value), policy)
            data, what = bytes(value), "the raw 'image'"
        target = target.with_suffix(_suffix(row, data[:_HEAD], what))
        target.write_bytes(data)
    from breastseg.transforms import read_image_size

    try:
        size = read_image_size(target)
    except Exception as error:  # noqa: BLE001 - a header that cannot be read, whatever the reader raises
        raise ServingInputError(f"row {row}: the image's header cannot be read ({type(error).__name__}): send an intact DICOM or PNG file") from None
    _check_pixels(row, *size, policy)
    return target


def _array_file(row: int, value: Any, target: Path, policy: ServingPolicy) -> Path:
    """Row ``row``'s ``array`` as a PNG at its bit depth; refused over the pixel limit before the array is built."""
    from PIL import Image

    try:  # the shape of nested lists without building the array
        shape = tuple(np.shape(value)) if hasattr(value, "shape") else (len(value), len(value[0]))
    except (TypeError, IndexError, KeyError):
        shape = ()
    if len(shape) == 2:
        _check_pixels(row, *shape, policy)
    try:
        pixels = np.asarray(value)
    except ValueError:  # rows of different lengths
        pixels = np.asarray(value, dtype=object)
    if pixels.ndim != 2 or min(pixels.shape) < 1 or pixels.dtype == object and pixels.size and isinstance(pixels.flat[0], (list, np.ndarray)):
        raise ServingInputError(f"row {row}: 'array' must be a 2-D image (rows of equal length), got shape {np.shape(pixels)}")
    if pixels.dtype.kind not in "biu":
        raise ServingInputError(f"row {row}: 'array' must hold integer pixel values (8- or 16-bit), got {pixels.dtype}; send the DICOM or PNG file instead")
    if pixels.min() < 0 or pixels.max() > 65535:
        raise ServingInputError(
            f"row {row}: 'array' values must lie from 0 to 65535 (8- or 16-bit), got {pixels.min()} to {pixels.max()}; "
            "send the DICOM or PNG file instead"
        )
    eight_bit = pixels.dtype in (np.uint8, np.bool_) or pixels.max() <= 255
    target = target.with_suffix(".png")
    Image.fromarray(pixels.astype(np.uint8 if eight_bit else np.uint16)).save(target)
    return target


def _boxes(row: int, value: Any) -> list[list[int]]:
    try:
        boxes = [[int(v) for v in box] for box in value]
    except (TypeError, ValueError):
        boxes = []
    if not boxes or any(len(box) != 4 for box in boxes):
        raise ServingInputError(f"row {row}: 'roi' must be a list of boxes [row_start, row_end, col_start, col_end] of integer pixels")
    return boxes


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return not np.isnan(value)
    return not (isinstance(value, str) and not value)


def stage_row(row: int, record: Mapping[str, Any], folder: Path, policy: ServingPolicy, takes_roi: bool) -> tuple[Path, list[list[int]] | None]:
    """Row ``row`` of a request checked and written as an image file in ``folder`` (an allowed file is linked),
    with its lesion boxes; every refusal is one :class:`ServingInputError` line."""
    image, array, roi = record.get("image"), record.get("array"), record.get("roi")
    if _present(image) == _present(array):
        raise ServingInputError(f"row {row}: give exactly one of 'image' (base64 DICOM/PNG bytes) and 'array'")
    if _present(image) and not isinstance(image, (str, bytes)):
        raise ServingInputError(
            f"row {row}: 'image' must be the bytes of a DICOM or PNG file (base64 text in JSON, raw bytes in Parquet), got {type(image).__name__}"
        )
    boxes = _boxes(row, roi) if _present(roi) else None
    if boxes and not takes_roi:
        raise ServingInputError(f"row {row}: 'roi' was given, but this model segments whole images: send the image without 'roi'")
    target = folder / f"row{row:05d}"
    if _present(image):
        return _image_file(row, image, target, policy), boxes
    return _array_file(row, array, target, policy), boxes


def _rows(frame: Any) -> Any:
    """One row per image. MLflow turns a dict whose values are all lists of text into ONE row holding those lists
    (``{"image": [a, b]}``: a dict is a record to it); a dict of columns is meant, so such a row is spread back."""
    import pandas as pd

    if len(frame) == 1 and "image" in frame.columns:
        images = frame["image"].iloc[0]
        if isinstance(images, (list, np.ndarray)) and all(isinstance(value, str) for value in images):
            return pd.DataFrame({column: list(frame[column].iloc[0]) for column in frame.columns})
    return frame


def _client_text(error: BaseException, *folders: Path | None) -> str:
    """``error``'s message on one line, without the server's folders (the request's own file names stay)."""
    text = str(error)
    for folder in folders:
        if folder is not None:
            text = text.replace(str(folder) + os.sep, "").replace(str(folder), "")
    return " ".join(text.split())


def bundle_parser(bundle: str | Path) -> Any:
    """A MONAI ``ConfigParser`` of the registered bundle's ``inference.json`` as the served model runs it: its own
    folders and the settings its weights were trained with (``configs/trained_with.json``); no input folder (images
    come with each request) and an output folder the served model never writes to."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "ckpt_dir": str(bundle / "models"), "dataset_dir": None, "output_dir": str(bundle / "runs")})
    trained_with = bundle / "configs" / TRAINED_WITH
    if trained_with.is_file():
        parser.update(json.loads(trained_with.read_text()))
    return parser


class NetworkModel(mlflow.pyfunc.PythonModel):
    """An MLflow model that builds what it serves in ``load_context`` (the attributes named in ``_built``).

    Those are never pickled: ``log_model`` loads the model once to check the input example and pickles the
    instance afterwards, which would store a second copy of the weights beside ``model.pt``. ``predict`` has no
    type hints on purpose (MLflow would read them as a schema), so MLflow's type-hint validation, and its advice
    to add hints on every run, are turned off.
    """

    _skip_type_hint_validation = True  # read by mlflow.pyfunc.PythonModel.__init_subclass__
    _built: tuple[str, ...] = ("network",)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in self._built}

    def log_arguments(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """``log_model`` arguments describing the input: an all-zero float32 batch of one ``input_shape`` tensor."""
        return {"input_example": np.zeros((1, *input_shape), dtype=np.float32)}


class ImageBundleModel(NetworkModel):
    """A bundle served through MLflow on DICOM/PNG images or pixel arrays (see the module docstring)."""

    _built = ("bundle", "predictor", "policy", "takes_roi")

    def log_arguments(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """The signature, a one-image input example (``input_shape`` is not needed: images come at any size) and the
        default :class:`ServingPolicy` as the model config."""
        return {"signature": signature(), "input_example": input_example(), "model_config": ServingPolicy().model_config()}

    def load_context(self, context: Any) -> None:
        self.bundle = Path(context.artifacts["bundle"])  # the registered bundle as loaded (its weights: models/model.pt)
        self.policy = ServingPolicy.from_model_config(getattr(context, "model_config", None))
        parser = bundle_parser(self.bundle)
        self.takes_roi = "roi_file" in parser
        self.predictor = parser.get_parsed_content("predictor")

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them as a schema
        try:
            return self._predict(model_input, params or {})
        except ServingInputError as error:
            logger.warning("request refused: %s", error)
            raise
        except Exception as error:
            logger.exception("the served model failed on a request")  # the traceback stays in the server's log
            raise ServingError("the model failed on this request; the server's log has the details") from error

    def _predict(self, model_input: Any, params: Mapping[str, Any]) -> Any:
        import pandas as pd

        frame = _rows(model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input))
        if frame.empty:
            raise ServingInputError("no usable row: send one row per image with 'image' (base64 DICOM/PNG bytes) or 'array', and optionally 'roi' (other columns are dropped)")
        with_lesion_masks = bool(params.get("return_lesion_masks", False))
        if with_lesion_masks and not self.takes_roi:
            raise ServingInputError("'return_lesion_masks' needs lesion boxes, which this model does not take: it segments whole images")
        with tempfile.TemporaryDirectory(prefix="breastseg-serve-") as scratch:
            rows = [stage_row(row, record, Path(scratch), self.policy, self.takes_roi) for row, record in enumerate(frame.to_dict("records"))]
            return pd.DataFrame([
                self._segment(row, path, boxes, bool(params.get("return_probabilities", False)), with_lesion_masks, Path(scratch))
                for row, (path, boxes) in enumerate(rows)
            ])

    def _segment(self, row: int, path: Path, boxes: Any, with_probabilities: bool, with_lesion_masks: bool, folder: Path) -> dict[str, Any]:
        try:
            prediction = self.predictor(path, boxes)
        except UserError as error:
            raise ServingInputError(f"row {row}: {_client_text(error, folder, self.policy.image_folder)}") from error
        except Exception as error:
            cause = data_error(error)
            if cause is None:
                raise
            reason = _client_text(cause, folder, self.policy.image_folder)
            raise ServingInputError(f"row {row}: the bundle's chain could not read the image: {reason}") from error
        rows, columns = prediction.shape
        result: dict[str, Any] = {"mask": _mask_text(prediction.mask), "rows": rows, "columns": columns, "lesion_pixels": int(prediction.mask.sum())}
        if prediction.detections is not None:
            result["boxes"] = [[float(value) for value in box] for box in prediction.detections]
        if with_probabilities:
            result["probabilities"] = _encode_npy(prediction.probabilities.astype(np.float32))
        if with_lesion_masks:
            result["lesion_masks"] = [_mask_text(lesion) for lesion in prediction.lesion_masks()]
        return result
