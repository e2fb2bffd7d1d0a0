"""The served model: images as users have them in, masks at the image's own size out.

:class:`ImageBundleModel` is the MLflow ``pyfunc`` model registered by every training of a single-network bundle.
Each input row holds one image:

- ``image``: the bytes of a DICOM or PNG file in base64, or the path of such a file on the serving machine;
- ``array``: or the pixels themselves, a 2-D integer array at native size (``uint8`` or values up to 255: 8-bit,
  else up to 65535: 16-bit, as the bundle's chain scales a file of that bit depth);
- ``roi``: optional lesion boxes ``[[row_start, row_end, col_start, col_end], ...]`` in pixels of the image, for
  the bundles that segment a region of interest (``unetplusplus_mammo``'s ``--roi_file``); without it the whole
  image is the box.

``predict`` writes the rows into a temporary folder and runs the bundle's own ``inference.json`` on it with MONAI's
``ConfigWorkflow`` (what ``python -m monai.bundle run`` runs): the same reader, preprocessing, network, sigmoid and
mapping back to the original grid as the command line. It returns one row per input: ``mask`` (a base64 PNG, 0/255,
the bytes of the ``<stem>_pred.png`` the command line writes), ``rows``, ``columns``, ``lesion_pixels`` and, with the
parameter ``return_probabilities``, ``probabilities`` (a base64 ``.npy`` of float32 probabilities, same size).
:func:`decode_png` and :func:`decode_npy` turn them back into arrays.

:class:`BundleModel` serves a network on tensors already preprocessed (the two-stage bundle's segmenter, whose chain
needs its detector too); :class:`NetworkModel` is the base of every served model, the detector's included.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import torch

from breastseg.workflows.engine.model_context import load_weights
from breastseg.workflows.errors import UserValueError

__all__ = [
    "TRAINED_WITH",
    "NetworkModel",
    "BundleModel",
    "ImageBundleModel",
    "signature",
    "input_example",
    "stage_inputs",
    "run_bundle_inference",
    "encode_png",
    "decode_png",
    "decode_npy",
]

#: overrides of ``inference.json`` recording how the registered weights were trained
TRAINED_WITH = "trained_with.json"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DICOM_MAGIC_OFFSET = 128


def signature() -> Any:
    """Input columns ``image`` (string), ``array`` (2-D integers), ``roi`` (boxes), all optional per row;
    parameter ``return_probabilities``; output columns ``mask``, ``rows``, ``columns``, ``lesion_pixels``,
    ``probabilities`` (only when asked for)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "image", required=False),
        ColSpec(Array(Array("long")), "array", required=False),
        ColSpec(Array(Array("long")), "roi", required=False),
    ])
    outputs = Schema([
        ColSpec("string", "mask"),
        ColSpec("long", "rows"),
        ColSpec("long", "columns"),
        ColSpec("long", "lesion_pixels"),
        ColSpec("string", "probabilities", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("return_probabilities", "boolean", False)]))


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


def decode_npy(text: str) -> np.ndarray:
    """The array of a base64 ``.npy`` (served ``probabilities``)."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def input_example() -> Any:
    """One row: a small synthetic 16-bit PNG in base64 (a bright disc on a dark background)."""
    import pandas as pd

    rows, cols = np.mgrid[:48, :40]
    picture = np.where((rows - 24) ** 2 + (cols - 18) ** 2 < 100, 40000, 8000).astype(np.uint16)
    return pd.DataFrame({"image": [encode_png(picture)]})


def _kind(head: bytes) -> str | None:
    if head.startswith(_PNG_MAGIC):
        return ".png"
    if head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return ".dcm"
    return None


def _pixels_to_png(row: int, array: Any) -> bytes:
    from PIL import Image

    pixels = np.asarray(array)
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise UserValueError(f"row {row}: 'array' must be a 2-D image (rows, columns), got shape {pixels.shape}")
    if pixels.dtype.kind not in "biu":
        raise UserValueError(f"row {row}: 'array' must hold integer pixel values (8- or 16-bit), got {pixels.dtype}; send the DICOM or PNG file instead")
    if pixels.min() < 0 or pixels.max() > 65535:
        raise UserValueError(
            f"row {row}: 'array' values must lie from 0 to 65535 (8- or 16-bit), got {pixels.min()} to {pixels.max()}; "
            "send the DICOM or PNG file instead"
        )
    eight_bit = pixels.dtype in (np.uint8, np.bool_) or pixels.max() <= 255
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8 if eight_bit else np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _existing_file(value: str) -> Path | None:
    try:
        return Path(value) if Path(value).is_file() else None
    except (OSError, ValueError):  # base64 text is no file name (too long for one, or holding a NUL)
        return None


def _image_file(row: int, value: str, folder: Path) -> Path:
    """``value`` (a path, or base64 bytes) as a file in ``folder`` named after the row, with the suffix of its format."""
    stem = folder / f"row{row:05d}"
    source = _existing_file(value)
    if source is not None:
        with open(source, "rb") as handle:
            suffix = _kind(handle.read(_DICOM_MAGIC_OFFSET + 4))
        if suffix is None:
            raise UserValueError(f"row {row}: {value} is neither a PNG nor a DICOM file (no 'DICM' at byte 128)")
        target = stem.with_suffix(suffix)
        target.symlink_to(source.resolve())  # read in place: nothing is copied or changed
        return target
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UserValueError(
            f"row {row}: 'image' is neither an existing file on the server nor base64 (send the file's bytes with "
            "base64 -w0, or a path the server can read)"
        ) from None
    suffix = _kind(data[: _DICOM_MAGIC_OFFSET + 4])
    if suffix is None:
        raise UserValueError(f"row {row}: the base64 'image' decodes to neither a PNG nor a DICOM file (no 'DICM' at byte 128)")
    target = stem.with_suffix(suffix)
    target.write_bytes(data)
    return target


def _boxes(row: int, value: Any) -> list[list[int]]:
    boxes = [[int(v) for v in box] for box in value]
    if not boxes or any(len(box) != 4 for box in boxes):
        raise UserValueError(f"row {row}: 'roi' must be a list of boxes [row_start, row_end, col_start, col_end], got {value!r}")
    return boxes


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return not np.isnan(value)
    return not (isinstance(value, str) and not value)


def stage_inputs(frame: Any, folder: Path) -> tuple[list[Path], Path | None]:
    """Write each row of ``frame`` as an image file in ``folder``; its ``roi`` boxes, if any, into a CSV in the
    format of ``--roi_file`` (``folder/roi.csv``, returned). One clear error per bad row."""
    columns = set(frame.columns)
    unknown = columns - {"image", "array", "roi"}
    if unknown:
        raise UserValueError(f"unknown input column(s) {sorted(unknown)}: send 'image' (base64 or path) or 'array', and optionally 'roi'")
    images = folder / "images"
    images.mkdir()
    files, boxes = [], []
    for row, record in enumerate(frame.to_dict("records")):
        image, array = record.get("image"), record.get("array")
        if _present(image) == _present(array):
            raise UserValueError(f"row {row}: give exactly one of 'image' (base64 DICOM/PNG bytes or a path) and 'array'")
        if _present(image):
            path = _image_file(row, str(image), images)
        else:
            path = images / f"row{row:05d}.png"
            path.write_bytes(_pixels_to_png(row, array))
        files.append(path)
        if _present(record.get("roi")):
            boxes += [[path.name, *box] for box in _boxes(row, record["roi"])]
    if not boxes:
        return files, None
    roi_file = folder / "roi.csv"
    with open(roi_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "row_start", "row_end", "col_start", "col_end"])
        writer.writerows(boxes)
    return files, roi_file


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _writer_index(handlers: list[Any]) -> int:
    for index, handler in enumerate(handlers):
        if isinstance(handler, dict) and str(handler.get("_target_", "")).endswith("MaskWriter"):
            return index
    raise ValueError("the bundle's inference.json has no MaskWriter handler: it cannot be served on images")


def run_bundle_inference(
    bundle: str | Path, input_dir: str | Path, output_dir: str | Path, roi_file: str | Path | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run ``bundle``'s ``inference.json`` (its ``models/model.pt``) on the images of ``input_dir`` with MONAI's
    ``ConfigWorkflow``; returns ``{image path: (mask, probabilities)}`` on each image's own grid. The masks are also
    written to ``output_dir`` as the command line writes them."""
    from monai.bundle import ConfigWorkflow

    bundle, configs = Path(bundle), Path(bundle) / "configs"
    overrides: dict[str, Any] = {}
    if (configs / TRAINED_WITH).is_file():  # the network settings, for weights without a context
        overrides.update(json.loads((configs / TRAINED_WITH).read_text()))
    overrides.update(bundle_root=str(bundle), ckpt_dir=str(bundle / "models"), dataset_dir=str(input_dir), output_dir=str(output_dir))
    with _quiet("monai.bundle.workflows"):  # its warning that logging_file=False keeps the server's logging as it is
        workflow = ConfigWorkflow(
            config_file=str(configs / "inference.json"), meta_file=str(configs / "metadata.json"), logging_file=False, workflow_type="infer"
        )
    if roi_file is not None:
        if "roi_file" not in workflow.parser:
            raise UserValueError(f"'roi' was given, but bundle {bundle.name} segments whole images: send the images without 'roi'")
        overrides["roi_file"] = str(roi_file)
    writer = f"handlers#{_writer_index(workflow.parser['handlers'])}"
    overrides[f"{writer}#keep_probabilities"] = True
    workflow.parser.update(overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow.parser.get_parsed_content(writer).kept


def _quarantine_reason(output_dir: Path, name: str) -> str:
    """``": <reason>"`` of the quarantined image ``name`` (bundles whose dataset quarantines unreadable images)."""
    quarantine = output_dir / "quarantine.json"
    entries = json.loads(quarantine.read_text()) if quarantine.is_file() else []
    reasons = [entry.get("reason", "") for entry in entries if isinstance(entry, dict) and name in str(entry.get("path", ""))]
    return f": {reasons[0]}" if reasons else ""


class NetworkModel(mlflow.pyfunc.PythonModel):
    """An MLflow model whose ``load_context`` builds ``self.network`` from the logged bundle's weights.

    The network is never pickled: ``log_model`` loads the model once to check the input example and
    pickles the instance afterwards, which would store a second copy of the weights beside ``model.pt``.
    ``predict`` has no type hints on purpose (MLflow would read them as a schema), so MLflow's type-hint
    validation, and its advice to add hints on every run, are turned off.
    """

    _skip_type_hint_validation = True  # read by mlflow.pyfunc.PythonModel.__init_subclass__

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "network"}

    def log_arguments(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """``log_model`` arguments describing the input: an all-zero float32 batch of one ``input_shape`` tensor."""
        return {"input_example": np.zeros((1, *input_shape), dtype=np.float32)}


class BundleModel(NetworkModel):
    """A MONAI bundle's network served through MLflow on tensors already preprocessed by the bundle's chain:
    ``predict`` returns sigmoid probabilities. The two-stage bundle's segmenter (whose chain needs the detector)
    is served this way; single-network bundles serve images (:class:`ImageBundleModel`)."""

    def load_context(self, context: Any) -> None:
        from monai.bundle import ConfigParser

        bundle = Path(context.artifacts["bundle"])
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(bundle)
        trained_with = bundle / "configs" / TRAINED_WITH
        if trained_with.is_file():  # the network settings the weights were trained with
            parser.update(json.loads(trained_with.read_text()))
        self.network = parser.get_parsed_content("network_def")
        self.network.load_state_dict(load_weights(bundle / "models" / "model.pt"))
        self.network.eval()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them as a schema
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            logits = self.network(images)
        return torch.sigmoid(logits).numpy()


class ImageBundleModel(NetworkModel):
    """A single-network MONAI bundle served through MLflow on DICOM/PNG images or pixel arrays (module docstring)."""

    def log_arguments(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """The signature and a one-image input example (``input_shape`` is not needed: images come at any size)."""
        return {"signature": signature(), "input_example": input_example()}

    def load_context(self, context: Any) -> None:
        self.bundle = Path(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them as a schema
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if frame.empty:
            raise UserValueError("no input row: send one row per image ('image' or 'array')")
        with_probabilities = bool((params or {}).get("return_probabilities", False))
        with tempfile.TemporaryDirectory(prefix="breastseg-serve-") as scratch:
            files, roi_file = stage_inputs(frame, Path(scratch))
            kept = run_bundle_inference(self.bundle, files[0].parent, Path(scratch) / "out", roi_file)
            by_stem = {Path(source).stem: value for source, value in kept.items()}
            results = []
            for row, path in enumerate(files):
                if path.stem not in by_stem:
                    reason = _quarantine_reason(Path(scratch) / "out", path.name)
                    raise UserValueError(f"row {row}: the bundle's chain could not read the image{reason}")
                mask, probabilities = by_stem[path.stem]
                result = {"mask": encode_png(mask * np.uint8(255)), "rows": mask.shape[0], "columns": mask.shape[1], "lesion_pixels": int(mask.sum())}
                if with_probabilities:
                    buffer = io.BytesIO()
                    np.save(buffer, probabilities.astype(np.float32), allow_pickle=False)
                    result["probabilities"] = base64.b64encode(buffer.getvalue()).decode("ascii")
                results.append(result)
        return pd.DataFrame(results)

