"""``breastseg nnunet-predict``: what ``nnUNetv2_predict`` does, through nnU-Net's Python API, so that it works after
the project's documented nnU-Net install.

nnU-Net 2.8.1's console scripts find a trainer by name by importing every trainer module it ships, and its Primus
trainer needs ``timm``, hence ``torchvision``, which the documented install leaves out (its PyPI build does not load
with the pinned CPU torch): ``nnUNetv2_predict`` then stops with ``ModuleNotFoundError: No module named 'timm'``. Here
each trainer module is imported on its own and one that cannot be is skipped; the network is built by the trained
trainer's class from the model folder's plans, its weights are read weights-only, and nnU-Net's own
``nnUNetPredictor`` predicts, writing the files (and ``predict_from_raw_data_args.json``, which ``breastseg compare``
reads) as ``nnUNetv2_predict`` does. The model folder is nnU-Net's: ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from pathlib import Path
from typing import Any, Sequence

from breastseg.workflows.errors import UserFileNotFoundError, UserValueError

__all__ = ["NNUNET_INSTALL", "trainer_class", "predict"]

#: the project's nnU-Net install (README, "nnU-Net side by side")
NNUNET_INSTALL = ('pip install -e ".[nnunet]" then pip install --no-deps nnunetv2==2.8.1 '
                  "dynamic-network-architectures==0.4.4 (README, nnU-Net side by side)")


def _require_nnunet() -> None:
    if importlib.util.find_spec("nnunetv2") is None:
        raise UserValueError(f"nnunetv2 is not installed: {NNUNET_INSTALL}")


def _extension_modules() -> list[Any]:
    """The modules of the ``nnUNet_extTrainer`` folders (``os.pathsep``-separated), as nnU-Net searches them."""
    modules = []
    for folder in filter(None, os.environ.get("nnUNet_extTrainer", "").split(os.pathsep)):
        for path in sorted(Path(folder).rglob("*.py")):
            spec = importlib.util.spec_from_file_location(f"breastseg_nnunet_ext.{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except ImportError:
                continue
            modules.append(module)
    return modules


def trainer_class(name: str) -> type:
    """nnU-Net's trainer class ``name``, from nnU-Net's trainer modules, then the ``nnUNet_extTrainer`` folders'.

    Raises:
        UserValueError: no importable module defines it.
    """
    import nnunetv2.training.nnUNetTrainer as trainers
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    skipped = []
    for info in pkgutil.walk_packages(trainers.__path__, f"{trainers.__name__}.", onerror=skipped.append):
        try:
            found = getattr(importlib.import_module(info.name), name, None)
        except ImportError:  # needs a package not installed here (the Primus trainer needs timm): not this trainer
            skipped.append(info.name)
            continue
        if isinstance(found, type) and issubclass(found, nnUNetTrainer):
            return found
    for module in _extension_modules():
        found = getattr(module, name, None)
        if isinstance(found, type) and issubclass(found, nnUNetTrainer):
            return found
    raise UserValueError(f"no nnU-Net trainer {name!r} in nnU-Net's trainers or the nnUNet_extTrainer folders "
                         f"({os.environ.get('nnUNet_extTrainer', 'not set')}); {len(skipped)} module(s) could not be imported")


def predict(
    images: str | Path,
    output: str | Path,
    dataset: str,
    configuration: str = "2d",
    folds: Sequence[str | int] = (0,),
    trainer: str = "nnUNetTrainer",
    plans: str = "nnUNetPlans",
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
) -> Path:
    """Predict every image of ``images`` (``<case>_0000.nii.gz``...) into ``output`` with the trained nnU-Net model of
    ``dataset`` (id or name), as ``nnUNetv2_predict -i images -o output -d dataset -c configuration -f folds -tr trainer
    -p plans -chk checkpoint -device device``; returns the model folder.

    Raises:
        UserValueError: nnunetv2 not installed, or the trainer cannot be found.
        UserFileNotFoundError: no trained model folder, fold or checkpoint.
    """
    _require_nnunet()
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from breastseg.workflows.engine.model_context import NUMERIC_NUMPY_GLOBALS, load_weights_only

    try:
        folder = Path(get_output_folder(dataset, trainer, plans, configuration))
    except (RuntimeError, TypeError) as error:  # no such dataset under the nnUNet_* folders, or they are not set
        raise UserFileNotFoundError(f"nnU-Net dataset {dataset!r} not found ({error}); set nnUNet_raw, nnUNet_preprocessed "
                                    "and nnUNet_results as for training") from None
    files = [folder / "dataset.json", folder / "plans.json", *(folder / f"fold_{fold}" / checkpoint for fold in folds)]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise UserFileNotFoundError(f"no trained nnU-Net model: {missing[0]} does not exist (nnUNet_results="
                                    f"{os.environ.get('nnUNet_results')}); train -tr {trainer} -p {plans} -c {configuration} "
                                    "for these folds first, or give the ones it was trained with")
    # nnU-Net's checkpoints are plain values and tensors, plus numpy numbers in their training log
    states = [load_weights_only(path, allowed=NUMERIC_NUMPY_GLOBALS) for path in files[2:]]
    dataset_json = load_json(str(files[0]))
    plans_manager = PlansManager(load_json(str(files[1])))
    configuration_manager = plans_manager.get_configuration(configuration)
    trained = trainer_class(states[0]["trainer_name"])
    network = trained.build_network_architecture(
        plans_manager, configuration_manager, determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False,
    )
    predictor = nnUNetPredictor(device=torch.device(device), perform_everything_on_device=device.startswith("cuda"), allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, [state["network_weights"] for state in states],
                                    dataset_json, trained.__name__, states[0].get("inference_allowed_mirroring_axes"))
    predictor.predict_from_files(str(images), str(output), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return folder
