"""A datalist exported as an nnU-Net v2 raw dataset, so nnU-Net trains on exactly a bundle's split.

``DatasetNNN_<name>/`` gets what nnU-Net v2's ``dataset_format.md`` asks for: ``imagesTr/<case>_0000.nii.gz``
(one file per channel), ``labelsTr/<case>.nii.gz`` (0 background, 1 lesion), ``imagesTs/`` (the datalist's test
split) and ``dataset.json`` (``channel_names``, ``labels``, ``numTraining``, ``file_ending``). Images are 2D NIfTI
files (nnU-Net reads them as 2D, pixel spacing kept where the file states it), written from the bundle's own
chain up to, not including, its resize: what the bundle sees before it changes the grid (BReMS-Net: square pad and
histogram equalisation; ConnectedUNets: border crop, scaling, artefact removal, CLAHE, square pad; the ultrasound
chain: the file as read). Multi-lesion masks are OR-ed by the chain's mask loader, as the bundle trains on them.

The export holds what the bundle trains and evaluates on: with the bundle's ``lesions_only`` (every bundle's
default), images without a lesion are listed as not exported, not given to nnU-Net. The grid ``breastseg compare``
scores nnU-Net's predictions on is the image size of the bundle's trained ``model.pt`` (its ``--ckpt_dir``), else
its ``train.json``'s.

``splits_final.json`` (beside ``dataset.json``; nnU-Net reads it from ``nnUNet_preprocessed/DatasetNNN_<name>/``)
holds the datalist's split: one fold (training / validation) or, with folds in the datalist, one per fold.
Test images are never in ``imagesTr``. Case files are named ``<name>_<NNNN>``, not by case id (CBIS-DDSM ids
carry the PatientID and nnU-Net writes its case names into logs); ``breastseg_export.json`` maps each back to
its case id, split and fold, and lists the records that could not be exported, with the reason.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "WHOLE_IMAGE_BUNDLES",
    "DEFAULT_BUNDLE",
    "MANIFEST",
    "FILE_ENDING",
    "pre_resize_chain",
    "resize_step",
    "bundle_image_size",
    "trained_image_size",
    "nnunet_splits",
    "export_nnunet",
    "load_manifest",
]

logger = logging.getLogger("breastseg.nnunet")

#: bundles whose chain sees the whole image (the ROI chains of 001 and 002 crop around the known lesion)
WHOLE_IMAGE_BUNDLES = ("brems_net", "connected_unets", "hybrid_attention_us")
#: the bundle whose chain an export uses when none is named
DEFAULT_BUNDLE = {"cbis-ddsm": "connected_unets", "inbreast": "connected_unets", "busi": "hybrid_attention_us",
                  "udiat": "hybrid_attention_us"}
MANIFEST = "breastseg_export.json"
FILE_ENDING = ".nii.gz"
_MODALITY = {"MG": "mammography", "US": "ultrasound"}


def _chain(bundle: str, dataset: str, image_size: int | None = None):
    from breastseg.transforms import chains

    if bundle not in WHOLE_IMAGE_BUNDLES:
        raise ValueError(f"bundle {bundle!r} cannot be exported to nnU-Net: its chain crops around the known lesion; "
                         f"use one of {', '.join(WHOLE_IMAGE_BUNDLES)}")
    kwargs: dict[str, Any] = {"train": False}
    if image_size is not None:
        kwargs["image_size"] = image_size
    if bundle == "connected_unets":
        kwargs["dataset"] = dataset
    return getattr(chains, bundle)(**kwargs)


def _resize_index(chain) -> int:
    from monai.transforms import Resized

    for index, step in enumerate(chain.transforms):
        if isinstance(step, Resized):
            return index
    raise ValueError("the chain has no resize step")  # every whole-image chain has one


def pre_resize_chain(bundle: str, dataset: str):
    """The deterministic head of ``bundle``'s evaluation chain, up to (not including) its resize."""
    from monai.transforms import Compose

    chain = _chain(bundle, dataset)
    return Compose(chain.transforms[: _resize_index(chain)])


def resize_step(bundle: str, dataset: str, image_size: int):
    """The chain's resize at ``image_size`` (the grid its evaluation is scored on)."""
    chain = _chain(bundle, dataset, image_size)
    return chain.transforms[_resize_index(chain)]


def _train_config(bundle: str) -> dict[str, Any]:
    from breastseg.workflows.commands.bundle import locate_bundle

    return json.loads((Path(locate_bundle(bundle)) / "configs" / "train.json").read_text())


def bundle_image_size(bundle: str) -> int:
    """``image_size`` of the bundle's ``configs/train.json``."""
    return int(_train_config(bundle)["image_size"])


def trained_image_size(bundle: str, ckpt_dir: str | Path | None = None) -> tuple[int, str]:
    """``(image size, where it comes from)``: that of the ``model.pt`` in ``ckpt_dir`` (default the bundle's
    ``models/``) when there is one with a context, else the bundle's ``train.json`` value.

    Raises:
        UserValueError: the model in ``ckpt_dir`` was trained by another bundle.
    """
    from breastseg.workflows.commands.bundle import locate_bundle
    from breastseg.workflows.engine.model_context import read_context
    from breastseg.workflows.errors import UserValueError

    model = Path(ckpt_dir or Path(locate_bundle(bundle)) / "models") / "model.pt"
    context = read_context(model)
    if context is None or context.get("settings", {}).get("image_size") is None:
        return bundle_image_size(bundle), f"{bundle}'s configs/train.json (no trained model.pt with a context at {model})"
    if context.get("bundle") != bundle:
        raise UserValueError(f"{model} was trained by bundle {context.get('bundle')!r}, not {bundle!r}: give --bundle "
                             f"{context.get('bundle')} or the --ckpt-dir of a {bundle} model")
    return int(context["settings"]["image_size"]), f"the model it was trained at ({model})"


def nnunet_splits(cases: list[dict[str, Any]], folds: int) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json``: ``[{"train": [...], "val": [...]}]``, one entry per datalist fold
    (one entry, training / validation, without folds)."""
    trained = [case for case in cases if case["split"] != "test"]
    if folds > 1:
        return [{"train": [c["identifier"] for c in trained if c["fold"] != fold],
                 "val": [c["identifier"] for c in trained if c["fold"] == fold]} for fold in range(folds)]
    return [{"train": [c["identifier"] for c in trained if c["split"] == "training"],
             "val": [c["identifier"] for c in trained if c["split"] == "validation"]}]


def _spacing(tensor: Any) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` from a MetaTensor's affine, ``None`` where the reader flagged it unknown."""
    import torch

    meta = getattr(tensor, "meta", {}) or {}
    if not bool(meta.get("spacing_known", True)):
        return None
    affine = torch.as_tensor(tensor.affine, dtype=torch.float64)
    return float(affine[:2, 0].norm()), float(affine[:2, 1].norm())


def _write_nifti(array: np.ndarray, spacing: tuple[float, float] | None, path: Path) -> None:
    """One 2D NIfTI file of a ``(H, W)`` array: voxel axis 0 = columns, 1 = rows, as SimpleITK (nnU-Net) reads
    it back into ``(H, W)``; spacing 1 where unknown."""
    import nibabel as nib

    rows_mm, cols_mm = spacing or (1.0, 1.0)
    image = nib.Nifti1Image(np.ascontiguousarray(array.T), np.diag([cols_mm, rows_mm, 1.0, 1.0]))
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def _dataset_folder(out: Path, dataset_id: int, name: str) -> Path:
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"--dataset-id must be in 1..999 (nnU-Net's three digits), got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9]+", name):
        raise ValueError(f"--name must be letters and digits (nnU-Net's DatasetNNN_<name>), got {name!r}")
    taken = sorted(out.glob(f"Dataset{dataset_id:03d}_*")) if out.is_dir() else []
    if taken:
        raise ValueError(f"{taken[0]} exists: nnU-Net needs one folder per dataset id; choose another --dataset-id "
                         "or remove it")
    return out / f"Dataset{dataset_id:03d}_{name}"


def export_nnunet(
    datalist_path: str | Path,
    dataset_id: int,
    out: str | Path,
    bundle: str | None = None,
    name: str | None = None,
    image_size: int | None = None,
    preprocessed: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    ckpt_dir: str | Path | None = None,
    lesions_only: bool | None = None,
) -> dict[str, Any]:
    """Write the nnU-Net v2 raw dataset of a datalist (see the module docstring); returns the manifest.

    Args:
        datalist_path: a ``breastseg datalist`` JSON (or a bundle run's ``datalist.json``).
        dataset_id: nnU-Net dataset id (1..999).
        out: the ``nnUNet_raw`` folder; ``Dataset<id>_<name>`` is created in it and must not exist.
        bundle: whose chain prepares the images (default: the dataset's whole-image bundle, :data:`DEFAULT_BUNDLE`).
        name: the dataset name (letters and digits; default the dataset's, e.g. ``BUSI``).
        image_size: the grid ``breastseg compare`` scores nnU-Net's predictions on (default: the image size of the
            bundle's trained model in ``ckpt_dir``, else of its ``train.json``, :func:`trained_image_size`).
        preprocessed: an ``nnUNet_preprocessed`` folder to copy ``splits_final.json`` into as well.
        ckpt_dir: the bundle's trained model folder (default its ``models/``).
        lesions_only: export images with a lesion only (default: the bundle's ``lesions_only``, what it trains and
            evaluates on); the others are listed as not exported.

    Raises:
        ValueError: a dataset id, name or bundle that cannot be used, or an existing dataset folder.
    """
    from breastseg.workflows.commands.bundle import PIPELINE_KEYS
    from breastseg.workflows.data.datalist import load_datalist

    datalist_path = Path(datalist_path).absolute()
    datalist = load_datalist(datalist_path)
    dataset = datalist["dataset"]
    bundle = bundle or DEFAULT_BUNDLE[dataset]
    name = name or re.sub(r"[^A-Za-z0-9]", "", dataset).upper()
    chain = pre_resize_chain(bundle, dataset)
    image_size, size_from = (image_size, "--image-size") if image_size is not None else trained_image_size(bundle, ckpt_dir)
    if lesions_only is None:
        lesions_only = bool(_train_config(bundle).get("lesions_only", False))
    folder = _dataset_folder(Path(out), dataset_id, name)
    folds = int((datalist.get("split") or {}).get("folds") or 0)
    records = [(split, record) for split in ("training", "validation", "test") for record in datalist[split]]
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    cases, not_exported, channels, modalities = [], [], None, set()
    for position, (split, record) in enumerate(records):
        identifier = f"{name}_{position:04d}"
        if lesions_only and not record.get("lesion_count"):
            not_exported.append({"case_id": record["case_id"], "split": split, "path": str(record["image"]),
                                 "reason": f"no lesion: {bundle} trains and evaluates on lesion images only (lesions_only)"})
            continue
        try:
            sample = chain({key: record.get(key) for key in PIPELINE_KEYS})
        except Exception as error:  # a case the chain cannot read is listed, never dropped silently
            not_exported.append({"case_id": record["case_id"], "split": split, "path": str(record["image"]),
                                 "reason": f"{type(error).__name__}: {error}".splitlines()[0]})
            continue
        image, label = sample["image"], sample["label"]
        channels = channels or image.shape[0]
        spacing = _spacing(label)
        images = folder / ("imagesTs" if split == "test" else "imagesTr")
        for channel in range(image.shape[0]):
            _write_nifti(np.asarray(image[channel], dtype=np.float32), spacing, images / f"{identifier}_{channel:04d}{FILE_ENDING}")
        if split != "test":
            _write_nifti((np.asarray(label[0]) > 0.5).astype(np.uint8), spacing, folder / "labelsTr" / f"{identifier}{FILE_ENDING}")
        modalities.add(record.get("modality") or "")
        cases.append({"identifier": identifier, "case_id": record["case_id"], "split": split, "fold": record.get("fold")})
        if progress:
            progress(position + 1, len(records))
    modality = "/".join(sorted(_MODALITY.get(m, m or "image") for m in modalities)) or "image"
    dataset_json = {
        "name": name,
        "description": f"{dataset} exported by breastseg from {datalist_path.name} with the {bundle} chain before its resize",
        "channel_names": {str(c): modality if c == 0 else f"{modality} {c}" for c in range(channels or 1)},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": sum(case["split"] != "test" for case in cases),
        "file_ending": FILE_ENDING,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=4) + "\n")
    splits = nnunet_splits(cases, folds)
    (folder / "splits_final.json").write_text(json.dumps(splits, indent=4) + "\n")
    if preprocessed is not None:
        target = Path(preprocessed) / folder.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "splits_final.json").write_text(json.dumps(splits, indent=4) + "\n")
    manifest = {
        "datalist": str(datalist_path),
        "dataset": dataset,
        "bundle": bundle,
        "image_size": image_size,
        "image_size_from": size_from,
        "lesions_only": lesions_only,
        "folds": folds,
        "file_ending": FILE_ENDING,
        "cases": cases,
        "not_exported": not_exported,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=4) + "\n")
    manifest["folder"] = str(folder)
    return manifest


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``breastseg_export.json`` of an exported dataset folder.

    Raises:
        FileNotFoundError: naming the folder and the command that writes it.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: give the DatasetNNN_<name> folder written by "
                                "breastseg export-nnunet")
    manifest = json.loads(path.read_text())
    manifest["folder"] = str(Path(folder).absolute())
    return manifest
