"""nnU-Net v2 predictions as a method of ``breastseg compare``: mapped back to the test cases and scored as a bundle.

A prediction folder (``nnUNetv2_predict -i DatasetNNN_<name>/imagesTs -o FOLDER``) holds ``<name>_<NNNN>.nii.gz``
masks on the grid of the export (:mod:`breastseg.workflows.commands.nnunet_export`). Each is mapped to its case id through the
export's ``breastseg_export.json`` (found from the ``predict_from_raw_data_args.json`` nnU-Net writes beside its
predictions, or given), resampled to the grid the bundle is scored on by the bundle's own resize (nearest for masks),
and scored against the label the bundle's chain gives for that case, by the project's metrics and empty-mask rule
(:func:`~breastseg.workflows.metrics.compute_case_table`). The result is a ``cases.csv`` in the columns of a bundle's
evaluation, read by the comparison like any other.

A test case without a prediction is absent from the CSV (the comparison lists it as missing from nnU-Net); a
prediction file of no test case of the export is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from breastseg.workflows.errors import UserFileNotFoundError, UserValueError

__all__ = ["PREDICT_ARGS", "is_nnunet_predictions", "find_export", "score_nnunet_predictions"]

logger = logging.getLogger("breastseg.compare")

#: what ``nnUNetv2_predict`` writes beside its predictions (its arguments, the input folder among them)
PREDICT_ARGS = "predict_from_raw_data_args.json"


def is_nnunet_predictions(path: str | Path) -> bool:
    """A folder without ``cases.csv`` (nor evaluation sub-folders) that holds ``.nii.gz`` masks."""
    path = Path(path)
    if not path.is_dir() or (path / "cases.csv").is_file() or any(path.glob("*/cases.csv")):
        return False
    return any(path.glob("*.nii.gz"))


def find_export(predictions: str | Path) -> Path:
    """The exported ``DatasetNNN_<name>`` folder whose ``imagesTs`` nnU-Net predicted (from ``PREDICT_ARGS``).

    Raises:
        FileNotFoundError: no ``PREDICT_ARGS`` there, or its input folder has no export beside it.
    """
    args_file = Path(predictions) / PREDICT_ARGS
    if not args_file.is_file():
        raise UserFileNotFoundError(f"{predictions}: no {PREDICT_ARGS} (nnUNetv2_predict writes it); give the exported "
                                "dataset folder with --nnunet-export DatasetNNN_<name>")
    source = json.loads(args_file.read_text()).get("list_of_lists_or_source_folder")
    if not isinstance(source, str):
        raise UserFileNotFoundError(f"{args_file}: the prediction input is not a folder; give --nnunet-export")
    return Path(source).parent


def _read_mask(path: Path) -> np.ndarray:
    """A ``(H, W)`` mask of a 2D NIfTI file (voxel axis 0 = columns; a trailing axis of 1 is dropped)."""
    import nibabel as nib

    data = np.asanyarray(nib.load(str(path)).dataobj)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise UserValueError(f"{path}: expected a 2D mask, got shape {data.shape}")
    return np.ascontiguousarray(data.T)


def score_nnunet_predictions(predictions: str | Path, out_dir: str | Path, export: str | Path | None = None) -> tuple[Path, Path]:
    """Score an nnU-Net prediction folder on its export's test cases; ``(cases.csv, datalist.json)``.

    Raises:
        ValueError: a prediction of no exported test case, or one whose grid differs from the exported image's.
        FileNotFoundError: the export cannot be found (see :func:`find_export`).
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Resized

    from breastseg.workflows.commands.bundle import PIPELINE_KEYS
    from breastseg.workflows.commands.nnunet_export import load_manifest, pre_resize_chain, resize_step
    from breastseg.workflows.data.datalist import load_datalist
    from breastseg.workflows.evaluation import reports
    from breastseg.workflows.evaluation.evaluate import case_key, pred_label_spacing
    from breastseg.workflows.metrics import compute_case_table

    predictions = Path(predictions)
    manifest = load_manifest(export if export is not None else find_export(predictions))
    datalist_path = Path(manifest["datalist"])
    records = {record["case_id"]: record for record in load_datalist(datalist_path)["test"]}
    tests = {case["identifier"]: case["case_id"] for case in manifest["cases"] if case["split"] == "test"}
    ending = manifest["file_ending"]
    files = sorted(predictions.glob(f"*{ending}"))
    unknown = [f.name for f in files if f.name[: -len(ending)] not in tests]
    if unknown:
        raise UserValueError(f"{predictions}: {unknown[0]} is no test case of the export {manifest['folder']} "
                         f"({len(unknown)} such file(s)); predict DatasetNNN_<name>/imagesTs of that export")
    chain = pre_resize_chain(manifest["bundle"], manifest["dataset"])
    # the bundle's resize, on both masks with the mode its chain gives the label (nearest)
    size = resize_step(manifest["bundle"], manifest["dataset"], manifest["image_size"]).resizer.spatial_size
    masks = Resized(("pred", "label"), spatial_size=size, mode="nearest")
    rows, metadata = [], []
    for path in files:
        case_id = tests[path.name[: -len(ending)]]
        record = records.get(case_id)
        if record is None:
            raise UserValueError(f"{datalist_path}: case of {path.name} is not in its test split any more (datalist "
                             "rewritten since the export?); export it again")
        sample = chain({key: record.get(key) for key in PIPELINE_KEYS})
        mask = _read_mask(path)
        label = sample["label"]
        if tuple(mask.shape) != tuple(label.shape[1:]):
            raise UserValueError(f"{path}: prediction of {tuple(mask.shape)} pixels, the exported image has "
                             f"{tuple(label.shape[1:])}; predict the images of this export")
        pred = MetaTensor(torch.as_tensor(mask > 0, dtype=torch.float32)[None], meta=dict(label.meta))  # the label's affine
        scored = masks({"pred": pred, "label": label})
        pred_b, label_b, spacing = pred_label_spacing({"pred": scored["pred"][None], "label": scored["label"][None]})
        rows.append(compute_case_table(pred_b, label_b, spacing))
        meta = {"case_id": case_id, "case_key": case_key(case_id), "lesion_index": 0, "split": "test"}
        meta.update({k: v for k, v in record.items() if not isinstance(v, (list, dict)) and k not in meta
                     and k not in ("image", "label", "label_format")})
        metadata.append(meta)
    if not rows:
        raise UserValueError(f"{predictions}: no {ending} prediction of a test case of {manifest['folder']}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases_csv = reports.write_case_csv(reports.case_rows(torch.cat(rows), metadata), out_dir / "cases.csv")
    missing = len(tests) - len(files)
    if missing:
        logger.warning("%s: %d test case(s) of the export have no prediction", predictions, missing)
    return Path(cases_csv), datalist_path

