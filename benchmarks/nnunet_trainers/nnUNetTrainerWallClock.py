"""nnU-Net v2's default trainer stopped by a wall-clock budget, for ``benchmarks/nnunet_side_by_side.py``.

The benchmark builds it directly; ``nnUNet_extTrainer=<this folder> nnUNetv2_train ... -tr nnUNetTrainerWallClock``
finds it by name where ``timm`` and ``torchvision`` are installed (nnU-Net imports all its trainers while searching).
Only the length of training changes: epochs of ``BREASTSEG_NNUNET_STEPS`` training steps (default 25; nnU-Net's
250 would outlast a CPU budget in one epoch) and 5 validation steps, stopped at the first epoch end after
``BREASTSEG_NNUNET_SECONDS`` of training; then nnU-Net's own end of training (``checkpoint_final.pth``) and its
validation run as usual. The poly learning-rate schedule still spans nnU-Net's 1000 epochs.
"""

import os
from time import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class _BudgetSpent(Exception):
    pass


class nnUNetTrainerWallClock(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = int(os.environ.get("BREASTSEG_NNUNET_STEPS", "25"))
        self.num_val_iterations_per_epoch = 5
        self.budget_s = float(os.environ.get("BREASTSEG_NNUNET_SECONDS", "inf"))
        self._started = None

    def on_train_start(self):
        super().on_train_start()
        self._started = time()

    def on_epoch_end(self):
        super().on_epoch_end()
        if time() - self._started >= self.budget_s:
            raise _BudgetSpent

    def run_training(self):
        try:
            super().run_training()
        except _BudgetSpent:
            self.print_to_log_file(f"wall-clock budget of {self.budget_s:.0f} s spent after {self.current_epoch} epoch(s)",
                                   also_print_to_console=True)
            self.on_train_end()
