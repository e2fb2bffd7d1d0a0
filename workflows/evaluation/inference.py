"""Inference: a folder of DICOM/PNG images in, one mask per image out, aligned with the original image.

Patch-based bundles (001 segments a region of interest around a known lesion) predict one patch per
box; :class:`MaskWriter` pastes every patch of an image back at full resolution (maximum where boxes
overlap: the union of the lesion masks) and writes the mask as an 8-bit PNG (0/255, ``<stem>_pred.png``) and a
NIfTI file whose affine carries the pixel spacing when the DICOM header states it. Both have the original
image's rows and columns. With ``lesion_masks`` it also writes each box's own mask (``<stem>_pred_lesion<k>.png``,
``k`` in the order of the boxes).

Lesion boxes come from a CSV (``image,row_start,row_end,col_start,col_end``, pixels of the original
image, one row per lesion; several rows per image allowed). Without a CSV, or for an image it does
not list, the whole image is one box: the bundle then segments the full image at patch resolution.

Inference never writes inside its input folder, never replaces a file unless ``--overwrite True``, and refuses a
folder where two images share a stem (``x.dcm`` and ``x.png`` would both be ``x_pred.png``) before writing anything.

:class:`ImagePredictor` runs the same chain, network, inferer, post-processing and mapping back on one image in
memory (the served model): ``inference.json``'s ``predictor``.
"""

from __future__ import annotations

import copy
import csv
import logging
import threading
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from breastseg.workflows.errors import UserFileExistsError, UserFileNotFoundError, UserValueError

__all__ = [
    "IMAGE_SUFFIXES",
    "PRED_SUFFIX",
    "image_record",
    "image_folder_records",
    "check_output_dir",
    "ImagePrediction",
    "MaskWriter",
    "ImagePredictor",
]

logger = logging.getLogger("breastseg.inference")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png")
#: the stem suffix of every predicted mask (``<stem>_pred.png``): never a dataset's mask naming
PRED_SUFFIX = "_pred"
_BOX_COLUMNS = ("row_start", "row_end", "col_start", "col_end")


def _read_boxes(roi_file: str | Path) -> dict[str, list[list[int]]]:
    boxes: dict[str, list[list[int]]] = defaultdict(list)
    with open(roi_file, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"image", *_BOX_COLUMNS}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise UserValueError(f"{roi_file}: missing column(s) {sorted(missing)}; expected {sorted(needed)}")
        for line, row in enumerate(reader, start=2):
            try:
                box = [int(row[k]) for k in _BOX_COLUMNS]
            except ValueError as err:
                raise UserValueError(f"{roi_file} line {line}: box values must be integers ({err})") from err
            boxes[row["image"].strip()].append(box)
    return boxes


def image_record(path: str | Path, boxes: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """The inference record of one image: its lesion ``boxes`` (``[row_start, row_end, col_start, col_end]``, pixels),
    else the whole image as the one box.

    Raises:
        UserValueError: a box that is empty or reaches outside the image (the message names the image and its size).
    """
    from breastseg.transforms import read_image_size

    path = Path(path)
    rows, cols = read_image_size(path)
    for box in boxes or ():
        r0, r1, c0, c1 = box
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
            raise UserValueError(
                f"lesion box {list(box)} of {path.name} is empty or outside its {rows} rows and {cols} columns: give "
                f"[row_start, row_end, col_start, col_end] with 0 <= row_start < row_end <= {rows} and 0 <= col_start < col_end <= {cols}"
            )
    return {"image": str(path), "roi_boxes": [list(box) for box in boxes] if boxes else [[0, rows, 0, cols]], "case_id": path.stem}


def _refuse_shared_stems(folder: Path, paths: list[Path]) -> None:
    by_stem: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        by_stem[path.stem].append(path.name)
    shared = {stem: names for stem, names in by_stem.items() if len(names) > 1}
    if shared:
        stem, names = next(iter(shared.items()))
        raise UserValueError(
            f"{' and '.join(names)} in {folder} share the stem {stem!r}, so both masks would be {stem}{PRED_SUFFIX}.png "
            f"({len(shared)} such stem(s)): move or rename all but one of each before running inference"
        )


def image_folder_records(dataset_dir: str | Path, roi_file: str | Path | None = None) -> list[dict[str, Any]]:
    """One record (:func:`image_record`) per DICOM/PNG image directly in ``dataset_dir`` (masks named ``*_mask*``
    skipped); refused before any output is written when two images share a stem."""
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise UserFileNotFoundError(f"inference input folder {folder} does not exist: give --dataset_dir the folder of the images")
    boxes = _read_boxes(roi_file) if roi_file else {}
    paths = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem and p.is_file()
    )
    if not paths:
        raise UserFileNotFoundError(
            f"no {'/'.join(IMAGE_SUFFIXES)} image directly in {folder} (subfolders are not searched): give --dataset_dir "
            "the folder that holds the images"
        )
    _refuse_shared_stems(folder, paths)
    unknown = set(boxes) - {p.name for p in paths}
    if unknown:
        raise UserValueError(f"{roi_file} names image(s) not in {folder}: {sorted(unknown)[:5]}")
    return [image_record(path, boxes.get(path.name)) for path in paths]


def check_output_dir(output_dir: str | Path, input_dir: str | Path | None) -> None:
    """Refuse an output folder inside the input folder: inference never writes into a dataset."""
    if input_dir is None:
        return
    output, source = Path(output_dir).resolve(), Path(input_dir).resolve()
    if output == source or source in output.parents:
        raise UserValueError(
            f"--output_dir {output_dir} is inside the input folder {input_dir}: inference never writes into its "
            "input (a dataset's own masks could be replaced). Give an --output_dir outside it"
        )


@dataclass
class ImagePrediction:
    """One image's prediction on its original grid: what inference writes and the served model returns.

    Attributes:
        source: the image file.
        shape: its ``(rows, columns)``.
        affine: its original affine (the pixel spacing).
        threshold: probabilities at or above it are lesion.
        lesion_patches: ``(patch probabilities, box)`` of each lesion box in box order (patch bundles: the patches
            are resized into their boxes when asked for, never onto a whole canvas unless the probabilities are).
        pasted: ``(rows, columns)`` probabilities already on the grid (whole-image and two-stage bundles).
        detections: ``(K, 5)`` ``(x0, y0, x1, y1, score)`` of the boxes a detector found (two-stage bundle).
    """

    source: Path
    shape: tuple[int, int]
    affine: np.ndarray
    threshold: float = 0.5
    lesion_patches: list[tuple[torch.Tensor, list[int]]] = field(default_factory=list)
    pasted: np.ndarray | None = None
    detections: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """``(rows, columns)`` float32 (patches pasted back: the maximum where boxes overlap)."""
        if self.pasted is not None:
            return self.pasted
        from breastseg.transforms import paste_back

        return paste_back([patch for patch, _ in self.lesion_patches], [box for _, box in self.lesion_patches], self.shape)[0].numpy()

    def _box_masks(self) -> Iterator[tuple[np.ndarray, list[int]]]:
        from breastseg.transforms import paste_back

        for patch, (r0, r1, c0, c1) in self.lesion_patches:
            size = (r1 - r0, c1 - c0)
            yield paste_back([patch], [[0, size[0], 0, size[1]]], size)[0].numpy() >= self.threshold, [r0, r1, c0, c1]

    @cached_property
    def mask(self) -> np.ndarray:
        """``uint8`` 0/1 mask: the probabilities at or above the threshold, which is the union of the lesion masks (the
        maximum of overlapping patches reaches the threshold where one of them does)."""
        if self.pasted is not None:
            return (self.pasted >= self.threshold).astype(np.uint8)
        mask = np.zeros(self.shape, dtype=np.uint8)
        for inside, (r0, r1, c0, c1) in self._box_masks():
            mask[r0:r1, c0:c1] |= inside
        return mask

    def lesion_masks(self) -> Iterator[np.ndarray]:
        """Each box's own ``uint8`` 0/1 mask on the original grid, in box order (one at a time: a mammogram's
        canvas is large)."""
        for inside, (r0, r1, c0, c1) in self._box_masks():
            mask = np.zeros(self.shape, dtype=np.uint8)
            mask[r0:r1, c0:c1] = inside
            yield mask


class MaskWriter:
    """Paste patch predictions back into their image and write ``<stem>_pred.png`` and ``<stem>_pred.nii.gz``.

    The ``_pred`` names cannot be taken for a dataset's masks (BUSI names its ground truth ``<stem>_mask.png``).
    ``output_dir`` must lie outside ``input_dir``; a file already there is never replaced unless ``overwrite``
    (checked for every planned output when the run starts, before any prediction). ``lesion_masks`` also writes
    ``<stem>_pred_lesion<k>.png`` per box.

    Expects an engine output whose ``pred`` holds probabilities, one patch per item of the batch (every patch of
    an image in the same batch: the chain returns them as one list); each item carries ``roi_box`` and
    ``lesion_count`` (the whole image and 1 when the chain sets none) and the image metadata
    (``filename_or_obj``, ``spatial_shape``, ``original_affine``).
    """

    #: suffixes of the files written per image
    output_suffixes: tuple[str, ...] = (PRED_SUFFIX + ".png", PRED_SUFFIX + ".nii.gz")

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float = 0.5,
        input_dir: str | Path | None = None,
        overwrite: bool = False,
        lesion_masks: bool = False,
    ) -> None:
        check_output_dir(output_dir, input_dir)
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.overwrite = overwrite
        self.lesion_masks = lesion_masks
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self.refuse_existing_outputs, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.refuse_existing_outputs)

    def planned_outputs(self, engine: Engine) -> list[Path]:
        """The files this run will write (from the records of the engine's dataset)."""
        loader = getattr(engine.state, "dataloader", None) or getattr(engine, "data_loader", None)
        records = getattr(getattr(loader, "dataset", None), "data", None) or []
        records = [record for record in records if isinstance(record, dict) and "image" in record]
        planned = [self.output_dir / f"{Path(str(r['image'])).stem}{suffix}" for r in records for suffix in self.output_suffixes]
        if self.lesion_masks:
            planned += [self._lesion_name(Path(str(r["image"])), k) for r in records for k in range(1, len(r.get("roi_boxes") or [0]) + 1)]
        return sorted(planned)

    def refuse_existing_outputs(self, engine: Engine) -> None:
        existing = [path for path in self.planned_outputs(engine) if path.exists()]
        if existing and not self.overwrite:
            raise UserFileExistsError(
                f"{len(existing)} output file(s) already in {self.output_dir} (first: {existing[0].name}); "
                "pass --overwrite True to replace them, or give another --output_dir"
            )

    def _target(self, name: str) -> Path:
        """``output_dir / name``, refused when it exists and ``overwrite`` is off."""
        path = self.output_dir / name
        if path.exists() and not self.overwrite:
            raise UserFileExistsError(f"{path} already exists; pass --overwrite True to replace it, or give another --output_dir")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return path

    def _lesion_name(self, source: Path, index: int) -> Path:
        return self.output_dir / f"{source.stem}{PRED_SUFFIX}_lesion{index}.png"

    def restore(self, batch: dict[str, Any], pred: torch.Tensor) -> list[ImagePrediction]:
        """Each image of ``batch`` on its original grid: its patches' probabilities ``pred`` pasted back."""
        from monai.data import decollate_batch

        samples = decollate_batch({key: batch[key] for key in ("image", "roi_box", "lesion_count") if key in batch})
        patches: dict[str, list[tuple[torch.Tensor, list[int]]]] = defaultdict(list)
        first: dict[str, dict[str, Any]] = {}
        for sample, probabilities in zip(samples, pred):
            meta = sample["image"].meta
            source = str(meta["filename_or_obj"])
            rows, cols = (int(v) for v in meta["spatial_shape"])
            box = [int(v) for v in sample["roi_box"]] if "roi_box" in sample else [0, rows, 0, cols]
            patches[source].append((probabilities.detach().cpu().float(), box))
            first.setdefault(source, sample)
        predictions = []
        for source, image_patches in patches.items():
            sample = first[source]
            count = int(sample.get("lesion_count", 1))
            if len(image_patches) != count:  # the chain returns an image's patches as one list: never split
                raise RuntimeError(f"{source}: {len(image_patches)} of its {count} lesion patches in one batch")
            meta = sample["image"].meta
            shape = tuple(int(v) for v in meta["spatial_shape"])
            affine = torch.as_tensor(meta["original_affine"], dtype=torch.float64).numpy()
            predictions.append(ImagePrediction(Path(source), shape, affine, self.threshold, image_patches))
        return predictions

    def __call__(self, engine: Engine) -> None:
        for prediction in self.restore(engine.state.batch, engine.state.output["pred"]):
            self.write(prediction)

    def write(self, prediction: ImagePrediction) -> None:
        """Write the mask of ``prediction`` (and each lesion's, with ``lesion_masks``)."""
        self.written += self._write(prediction.source, prediction.mask, prediction.affine)
        if self.lesion_masks:
            for index, mask in enumerate(prediction.lesion_masks(), start=1):
                path = self._target(self._lesion_name(prediction.source, index).name)
                self._save_png(mask, path)
                self.written.append(path)

    @staticmethod
    def _save_png(mask: np.ndarray, path: Path) -> None:
        from breastseg.transforms import mask_png

        path.write_bytes(mask_png(mask))

    def _write(self, source: Path, mask: np.ndarray, affine: np.ndarray) -> list[Path]:
        import nibabel as nib

        png = self._target(f"{source.stem}{PRED_SUFFIX}.png")
        self._save_png(mask, png)
        nifti = self._target(f"{source.stem}{PRED_SUFFIX}.nii.gz")
        # NIfTI is x-first: store (columns, rows) with the spacing on the matching axes
        nifti_affine = np.diag([float(affine[1, 1]), float(affine[0, 0]), 1.0, 1.0])
        nib.save(nib.Nifti1Image(mask.T.copy(), nifti_affine), nifti)
        logger.info("%s -> %s (%d lesion pixels)", source.name, png.name, int(mask.sum()))
        return [png, nifti]


class ImagePredictor:
    """One image in, its :class:`ImagePrediction` out, in memory: what ``inference.json``'s evaluator and writer do
    for each image of a folder, with everything built once (the served model keeps one).

    Args:
        loader: the config's :class:`~breastseg.workflows.engine.model_context.TrainedModelLoader`, called once: the
            weights (``weights_only``), checked against the settings as the command line checks them.
        network: the network it loads (on ``device``).
        preprocessing: the inference chain (a record in, a sample or a list of lesion samples out).
        writer: the config's writer: its ``restore`` maps a batch's predictions back to the original grid.
        inferer, postprocessing, device, amp: as the config's evaluator has them (``amp`` as
            :func:`~breastseg.workflows.engine.harness.build_evaluator` takes it).

    Calls may come from several threads (MLflow's scoring server runs each request on its own): each thread
    preprocesses with its own copy of the chain and writer (transforms keep per-call state, e.g. the side a
    mammogram was flipped to, and a chain is inverted only by the very transforms that ran), and the network,
    inferer and mapping back run under one lock (the two-stage inferer keeps the boxes of its last call for its
    writer).
    """

    def __init__(
        self,
        loader: Any,
        network: torch.nn.Module,
        preprocessing: Any,
        writer: MaskWriter,
        inferer: Any = None,
        postprocessing: Any = None,
        device: str | torch.device = "cpu",
        amp: bool | None = None,
    ) -> None:
        from monai.inferers import SimpleInferer

        from breastseg.workflows.engine.precision import resolve_precision

        loader()
        self.device = torch.device(device)
        self.network = network.eval()  # once: switching modes per call would walk every module on every request
        inferer = inferer or SimpleInferer()
        self.amp, self.inferer = resolve_precision(self.device, amp, inferer, network)
        self.preprocessing = preprocessing
        self.postprocessing = postprocessing
        self.writer = writer
        self._shared = {id(network): network, id(inferer): inferer}  # never copied per thread
        self._lock = threading.Lock()
        self._local = threading.local()

    def _thread_parts(self) -> tuple[Any, MaskWriter]:
        """This thread's chain and writer (copied together: the writer of whole-image bundles inverts that chain)."""
        parts = getattr(self._local, "parts", None)
        if parts is None:
            parts = self._local.parts = copy.deepcopy((self.preprocessing, self.writer), dict(self._shared))
        return parts

    def __call__(self, image: str | Path, boxes: Sequence[Sequence[int]] | None = None) -> ImagePrediction:
        """Segment ``image`` (a DICOM/PNG file) at its lesion ``boxes`` (none: the whole image is the box)."""
        from monai.data import list_data_collate
        from monai.engines.utils import engine_apply_transform

        from breastseg.workflows.engine.harness import plain_input_batch

        chain, writer = self._thread_parts()
        samples = chain(image_record(image, boxes))
        batch = list_data_collate(samples if isinstance(samples, list) else [samples])
        inputs, _ = plain_input_batch(batch, self.device)
        precision = torch.autocast("cuda") if self.amp else nullcontext()  # MONAI's evaluator: amp is CUDA's
        with self._lock, torch.no_grad(), precision:
            output = {"pred": self.inferer(inputs, self.network)}
            if self.postprocessing is not None:
                batch, output = engine_apply_transform(batch, output, self.postprocessing)
            (prediction,) = writer.restore(batch, output["pred"])
        return prediction
