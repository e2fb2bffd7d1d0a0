"""Inference: a folder of DICOM/PNG images in, one mask per image out, aligned with the original image.

Patch-based bundles (001 segments a region of interest around a known lesion) predict one patch per
box; :class:`MaskWriter` pastes every patch of an image back at full resolution (maximum where boxes
overlap) and writes the mask as an 8-bit PNG (0/255, ``<stem>_pred.png``) and a NIfTI file whose affine carries the pixel
spacing when the DICOM header states it. Both have the original image's rows and columns.

Lesion boxes come from a CSV (``image,row_start,row_end,col_start,col_end``, pixels of the original
image, one row per lesion; several rows per image allowed). Without a CSV, or for an image it does
not list, the whole image is one box: the bundle then segments the full image at patch resolution.

Inference never writes inside its input folder and never replaces a file unless ``--overwrite True``.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from breastseg.workflows.errors import UserFileExistsError, UserFileNotFoundError, UserValueError

__all__ = ["IMAGE_SUFFIXES", "PRED_SUFFIX", "image_folder_records", "check_output_dir", "MaskWriter"]

logger = logging.getLogger("breastseg.inference")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png")
#: the stem suffix of every predicted mask (``<stem>_pred.png``): never a dataset's mask naming
PRED_SUFFIX = "_pred"


def _image_size(path: Path) -> tuple[int, int]:
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as image:
            return image.height, image.width
    from breastseg.transforms.io.dicom import read_dicom_header

    header = read_dicom_header(path)
    return header["rows"], header["columns"]


def _read_boxes(roi_file: str | Path) -> dict[str, list[list[int]]]:
    boxes: dict[str, list[list[int]]] = defaultdict(list)
    with open(roi_file, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"image", "row_start", "row_end", "col_start", "col_end"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{roi_file}: missing column(s) {sorted(missing)}; expected {sorted(needed)}")
        for line, row in enumerate(reader, start=2):
            try:
                box = [int(row[k]) for k in ("row_start", "row_end", "col_start", "col_end")]
            except ValueError as err:
                raise ValueError(f"{roi_file} line {line}: box values must be integers ({err})") from err
            boxes[row["image"].strip()].append(box)
    return boxes


def image_folder_records(dataset_dir: str | Path, roi_file: str | Path | None = None) -> list[dict[str, Any]]:
    """One record per DICOM/PNG image directly in ``dataset_dir`` (masks named ``*_mask*`` skipped)."""
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
    unknown = set(boxes) - {p.name for p in paths}
    if unknown:
        raise ValueError(f"{roi_file} names image(s) not in {folder}: {sorted(unknown)[:5]}")
    records = []
    for path in paths:
        rows, cols = _image_size(path)
        image_boxes = boxes.get(path.name) or [[0, rows, 0, cols]]
        records.append({"image": str(path), "roi_boxes": image_boxes, "case_id": path.stem})
    return records


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


class MaskWriter:
    """Paste patch predictions back into their image and write ``<stem>_pred.png`` and ``<stem>_pred.nii.gz``.

    The ``_pred`` names cannot be taken for a dataset's masks (BUSI names its ground truth ``<stem>_mask.png``).
    ``output_dir`` must lie outside ``input_dir``; a file already there is never replaced unless ``overwrite``
    (checked for every planned output when the run starts, before any prediction).

    ``keep_probabilities`` also keeps each image's mask and probabilities in :attr:`kept` (the served model
    returns them). Expects batch size 1 (one patch per iteration) and an engine output whose ``pred`` holds
    probabilities; the batch carries ``roi_box``, ``lesion_index``, ``lesion_count`` and the image
    metadata (``filename_or_obj``, ``spatial_shape``, ``original_affine``).
    """

    #: suffixes of the files written per image
    output_suffixes: tuple[str, ...] = (PRED_SUFFIX + ".png", PRED_SUFFIX + ".nii.gz")

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float = 0.5,
        input_dir: str | Path | None = None,
        overwrite: bool = False,
        keep_probabilities: bool = False,
    ) -> None:
        check_output_dir(output_dir, input_dir)
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.overwrite = overwrite
        self.keep_probabilities = keep_probabilities
        self._patches: dict[str, list[tuple[torch.Tensor, list[int]]]] = defaultdict(list)
        self.written: list[Path] = []
        #: ``{image path: (mask, probabilities)}`` on the original grid, when ``keep_probabilities`` (the served model)
        self.kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self.refuse_existing_outputs, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.refuse_existing_outputs)

    def planned_outputs(self, engine: Engine) -> list[Path]:
        """The files this run will write (from the records of the engine's dataset)."""
        loader = getattr(engine.state, "dataloader", None) or getattr(engine, "data_loader", None)
        records = getattr(getattr(loader, "dataset", None), "data", None) or []
        stems = {Path(str(record["image"])).stem for record in records if isinstance(record, dict) and "image" in record}
        return [self.output_dir / f"{stem}{suffix}" for stem in sorted(stems) for suffix in self.output_suffixes]

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

    def __call__(self, engine: Engine) -> None:
        from breastseg.transforms import paste_back

        batch, output = engine.state.batch, engine.state.output
        pred = output["pred"]
        meta = batch["image"].meta
        if pred.shape[0] != 1:
            raise ValueError(f"MaskWriter needs batch size 1, got {pred.shape[0]}")
        source = str(meta["filename_or_obj"][0])
        box = [int(torch.as_tensor(v).flatten()[0]) for v in batch["roi_box"]]
        count = int(torch.as_tensor(batch["lesion_count"]).flatten()[0])
        self._patches[source].append((pred[0].detach().cpu().float(), box))
        if len(self._patches[source]) < count:
            return
        shape = [int(torch.as_tensor(v).flatten()[0]) for v in meta["spatial_shape"]]
        patches, boxes = zip(*self._patches.pop(source))
        canvas = paste_back(list(patches), list(boxes), shape)
        self._finish(Path(source), canvas[0].numpy(), torch.as_tensor(meta["original_affine"])[0].numpy())

    def _finish(self, source: Path, probabilities: np.ndarray, affine: np.ndarray) -> None:
        """Threshold the probabilities of ``source`` on its original grid, write the mask (and keep both)."""
        mask = (probabilities >= self.threshold).astype(np.uint8)
        if self.keep_probabilities:
            self.kept[str(source)] = (mask, probabilities.astype(np.float32))
        self.written += self._write(source, mask, affine)

    def _write(self, source: Path, mask: np.ndarray, affine: np.ndarray) -> list[Path]:
        import nibabel as nib
        from PIL import Image

        png = self._target(f"{source.stem}{PRED_SUFFIX}.png")
        Image.fromarray(mask * 255).save(png)
        nifti = self._target(f"{source.stem}{PRED_SUFFIX}.nii.gz")
        # NIfTI is x-first: store (columns, rows) with the spacing on the matching axes
        nifti_affine = np.diag([float(affine[1, 1]), float(affine[0, 0]), 1.0, 1.0])
        nib.save(nib.Nifti1Image(mask.T.copy(), nifti_affine), nifti)
        logger.info("%s -> %s (%d lesion pixels)", source.name, png.name, int(mask.sum()))
        return [png, nifti]
