"""Inference: a folder of DICOM/PNG images in, one mask per image out, aligned with the original image.

Patch-based bundles (001 segments a region of interest around a known lesion) predict one patch per
box; :class:`MaskWriter` pastes every patch of an image back at full resolution (maximum where boxes
overlap) and writes the mask as an 8-bit PNG (0/255) and a NIfTI file whose affine carries the pixel
spacing when the DICOM header states it. Both have the original image's rows and columns.

Lesion boxes come from a CSV (``image,row_start,row_end,col_start,col_end``, pixels of the original
image, one row per lesion; several rows per image allowed). Without a CSV, or for an image it does
not list, the whole image is one box: the bundle then segments the full image at patch resolution.
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

__all__ = ["IMAGE_SUFFIXES", "image_folder_records", "MaskWriter"]

logger = logging.getLogger("breastseg.inference")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png")


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
        raise FileNotFoundError(f"inference input folder {folder} does not exist")
    boxes = _read_boxes(roi_file) if roi_file else {}
    paths = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem and p.is_file()
    )
    if not paths:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} image in {folder}")
    unknown = set(boxes) - {p.name for p in paths}
    if unknown:
        raise ValueError(f"{roi_file} names image(s) not in {folder}: {sorted(unknown)[:5]}")
    records = []
    for path in paths:
        rows, cols = _image_size(path)
        image_boxes = boxes.get(path.name) or [[0, rows, 0, cols]]
        records.append({"image": str(path), "roi_boxes": image_boxes, "case_id": path.stem})
    return records


class MaskWriter:
    """Paste patch predictions back into their image and write ``<stem>_mask.png`` and ``.nii.gz``.

    Expects batch size 1 (one patch per iteration) and an engine output whose ``pred`` holds
    probabilities; the batch carries ``roi_box``, ``lesion_index``, ``lesion_count`` and the image
    metadata (``filename_or_obj``, ``spatial_shape``, ``original_affine``).
    """

    def __init__(self, output_dir: str | Path, threshold: float = 0.5) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self._patches: dict[str, list[tuple[torch.Tensor, list[int]]]] = defaultdict(list)
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

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
        mask = (canvas[0] >= self.threshold).numpy().astype(np.uint8)
        affine = torch.as_tensor(meta["original_affine"])[0].numpy()
        self.written += self._write(Path(source), mask, affine)

    def _write(self, source: Path, mask: np.ndarray, affine: np.ndarray) -> list[Path]:
        import nibabel as nib
        from PIL import Image

        self.output_dir.mkdir(parents=True, exist_ok=True)
        png = self.output_dir / f"{source.stem}_mask.png"
        Image.fromarray(mask * 255).save(png)
        nifti = self.output_dir / f"{source.stem}_mask.nii.gz"
        # NIfTI is x-first: store (columns, rows) with the spacing on the matching axes
        nifti_affine = np.diag([float(affine[1, 1]), float(affine[0, 0]), 1.0, 1.0])
        nib.save(nib.Nifti1Image(mask.T.copy(), nifti_affine), nifti)
        logger.info("%s -> %s (%d lesion pixels)", source.name, png.name, int(mask.sum()))
        return [png, nifti]
