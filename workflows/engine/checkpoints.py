"""Checkpoints of the shared harness: best model, last epoch, resume.

Two files in ``ckpt_dir``:

- ``model.pt``: the network's weights at the best key validation metric (the model zoo's name), with the
  training context when one is given: ``{"model": state_dict, "context": {...}}``
  (:mod:`breastseg.workflows.engine.model_context`; ``ckpt_export --key_in_ckpt model``, evaluation and inference
  load it);
- ``checkpoint_last.pt``: network, optimizer, LR scheduler and trainer state after the last completed
  epoch, plus the evaluator's best metric and the MLflow run the training logs into, so ``--resume`` continues
  exactly there, in the same run.

Beside them, ``last_epoch.json`` names the last epoch that completed, written at once (``checkpoint_last.pt`` is
written in the background, and every ``interval`` epochs): ``--resume`` compares the two and says which epochs,
if any, completed after the checkpoint it resumes from and are trained again.

Both are written atomically (temporary file + rename) on a background thread
(:mod:`breastseg.workflows.engine.checkpoint_writer`): the trainer is held only while the tensors are copied. A run
killed while saving keeps the previous good file, and the next run removes the killed writer's temporary
file. Nothing is saved once the loss is not finite (see :class:`NonFiniteLossGuard`), and a snapshot whose
weights or optimizer state hold NaN or inf (NaN gradients with a finite loss) is not written and stops the
run, so a failed run keeps its last good checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from breastseg.workflows.engine.checkpoint_writer import (
    CheckpointWriter,
    NonFiniteStateError,
    atomic_torch_save,
    remove_stale_temporaries,
)
from breastseg.workflows.engine.model_context import CONTEXT_KEY, WEIGHTS_KEY, load_weights_only

__all__ = [
    "BEST_MODEL_FILE",
    "LAST_CHECKPOINT_FILE",
    "LAST_EPOCH_FILE",
    "TRACKING_RUN_KEY",
    "atomic_torch_save",
    "NonFiniteLossGuard",
    "EpochCheckpointer",
    "ResumeFromCheckpoint",
]

BEST_MODEL_FILE = "model.pt"
LAST_CHECKPOINT_FILE = "checkpoint_last.pt"
LAST_EPOCH_FILE = "last_epoch.json"
#: the trainer state's attribute (and the checkpoint's key) naming the MLflow run the training logs into,
#: ``{"tracking_uri", "run_id"}``: the tracker sets it when it opens the run, the checkpoint carries it, and
#: ``--resume`` gives it back to the tracker, which reopens that run
TRACKING_RUN_KEY = "tracking_run"
logger = logging.getLogger("breastseg.checkpoints")


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``state_dict`` keys carry no ``module.`` prefix (DDP / DataParallel)."""
    return network.module if hasattr(network, "module") else network


class NonFiniteLossGuard:
    """Stop training with a clear error when the loss was NaN or infinite during the epoch.

    Each step only adds to flags on the loss's device (no host read, so a GPU never waits for the check); the
    flags are read once at ``EPOCH_COMPLETED``. The guard is the trainer's first handler, so it raises before
    the epoch's checkpoint is written and the last good checkpoint on disk is kept.
    """

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.update, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def reset(self, engine: Engine) -> None:
        self.first_bad: Any = None  # the epoch's first iteration whose loss was not finite, -1 for none
        self.bad_value: Any = None

    def update(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, dict) else None
        if loss is None:
            return
        loss = torch.as_tensor(loss).detach().float().reshape(())
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.bad_value = torch.zeros((), device=loss.device)
        new = ~torch.isfinite(loss) & (self.first_bad < 0)
        # a Python number in torch.where travels as a kernel argument: no copy to the device, no sync
        self.first_bad = torch.where(new, engine.state.iteration, self.first_bad)
        self.bad_value = torch.where(new, loss, self.bad_value)

    def check(self, engine: Engine) -> None:
        if self.first_bad is None or int(self.first_bad) < 0:
            return
        raise FloatingPointError(
            f"training loss is {float(self.bad_value)} at epoch {engine.state.epoch}, iteration {int(self.first_bad)}; "
            "stopping. The last good checkpoint is kept (lower the learning rate or check the data)."
        )


class EpochCheckpointer:
    """Write ``checkpoint_last.pt`` after every trainer epoch and ``model.pt`` when validation improves.

    Args:
        ckpt_dir: folder of both files.
        network: the trained network.
        optimizer: its optimizer.
        lr_scheduler: the LR scheduler (or ``None``).
        evaluator: the validation engine whose ``state.best_metric`` decides ``model.pt``; ``None`` saves
            ``model.pt`` with the last checkpoint (no validation).
        interval: write the last checkpoint every ``interval`` epochs and when the run ends (its last epoch or
            an early stop); 1 (every epoch) by default. A larger interval saves the write (three times the
            weights with Adam) on short epochs; a crash then loses up to ``interval`` epochs.
        context: how the model is trained (plain values, :func:`~breastseg.workflows.engine.model_context.training_context`),
            saved in ``model.pt`` beside the weights with the epoch and the key metric's value; ``None`` writes a
            bare state dict.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        evaluator: Engine | None = None,
        interval: int = 1,
        context: dict[str, Any] | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"checkpoint interval must be at least 1 epoch, got {interval}")
        self.interval = int(interval)
        self.ckpt_dir = Path(ckpt_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.context = context
        self.writer = CheckpointWriter(check_finite=True)
        self._trainer: Engine | None = None

    def attach(self, trainer: Engine) -> None:
        self._trainer = trainer
        if not trainer.has_event_handler(self.save_at_end, Events.COMPLETED):
            remove_stale_temporaries(self.ckpt_dir, (LAST_CHECKPOINT_FILE, BEST_MODEL_FILE, LAST_EPOCH_FILE))
            trainer.add_event_handler(Events.ITERATION_COMPLETED, self.stop_on_failed_write)
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save_last)
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self.record_epoch)
            trainer.add_event_handler(Events.COMPLETED, self.save_at_end)
        if self.evaluator is not None and not self.evaluator.has_event_handler(self.save_best, Events.EPOCH_COMPLETED):
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)

    def state(self, trainer: Engine) -> dict[str, Any]:
        state = {
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": trainer.state_dict(),
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        if getattr(trainer.state, TRACKING_RUN_KEY, None):
            state[TRACKING_RUN_KEY] = dict(getattr(trainer.state, TRACKING_RUN_KEY))
        return state

    def record_epoch(self, trainer: Engine) -> None:
        """Write ``last_epoch.json`` now (a few bytes, atomically): the epoch completed, whatever the background
        writer has written yet."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        partial = self.ckpt_dir / f".{LAST_EPOCH_FILE}.{os.getpid()}"
        partial.write_text(json.dumps({"epoch": int(trainer.state.epoch), "checkpoint_interval": self.interval}))
        os.replace(partial, self.ckpt_dir / LAST_EPOCH_FILE)

    def save_at_end(self, trainer: Engine) -> None:
        """The run's last epoch, when the interval skipped it (not reached after a raised error); then wait
        for every write, so the files are complete when the run returns."""
        if trainer.state.epoch % self.interval != 0:
            self.save_last(trainer)
        try:
            self.writer.wait()
        except Exception as error:
            self._stop(error)

    def stop_on_failed_write(self, trainer: Engine) -> None:
        """Stop the run as soon as a background write failed (never waits)."""
        error = self.writer.failed()
        if error is not None:
            self._stop(error)

    def _save(self, state: dict[str, Any], name: str) -> None:
        try:
            self.writer.save(state, self.ckpt_dir / name)
        except Exception as error:  # the previous write of this file failed
            self._stop(error)

    def _stop(self, error: BaseException) -> None:
        if isinstance(error, NonFiniteStateError):
            epoch = self._trainer.state.epoch if self._trainer is not None else "?"
            raise FloatingPointError(
                f"training state is not finite at epoch {epoch} (NaN or inf weights or optimizer "
                "state, e.g. NaN gradients); stopping. The last good checkpoint is kept (lower the learning rate "
                "or check the data)."
            ) from error
        raise error

    def save_last(self, trainer: Engine) -> None:
        self._save(self.state(trainer), LAST_CHECKPOINT_FILE)
        if self.evaluator is None:
            self._save(self.best_model(trainer.state.epoch, None), BEST_MODEL_FILE)

    def best_model(self, epoch: int, metric: float | None) -> dict[str, Any]:
        """What ``model.pt`` holds: the weights, with the context of this epoch when there is one."""
        weights = _unwrap(self.network).state_dict()
        if self.context is None:
            return weights
        return {WEIGHTS_KEY: weights, CONTEXT_KEY: {**self.context, "epoch": int(epoch), "key_metric_value": metric}}

    def save_best(self, evaluator: Engine) -> None:
        if evaluator.state.best_metric_epoch == evaluator.state.epoch:
            self._save(self.best_model(evaluator.state.best_metric_epoch, float(evaluator.state.best_metric)), BEST_MODEL_FILE)
            logger.info(
                "saved %s (key metric %.4f at epoch %d)",
                self.ckpt_dir / BEST_MODEL_FILE,
                evaluator.state.best_metric,
                evaluator.state.epoch,
            )


class ResumeFromCheckpoint:
    """Restore ``checkpoint_last.pt`` when the trainer starts (``--resume``).

    The trainer continues at the epoch after the saved one; a larger ``max_epochs`` given now wins over
    the saved one. Loading uses ``weights_only=True``. The MLflow run the checkpoint names goes back on the
    trainer's state (:data:`TRACKING_RUN_KEY`) for the tracker to reopen, and a warning names the epochs that
    completed after the checkpoint (``last_epoch.json``), which are trained again.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        evaluator: Engine | None = None,
        map_location: str | torch.device = "cpu",
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.map_location = map_location

    def attach(self, trainer: Engine) -> None:
        if not trainer.has_event_handler(self, Events.STARTED):
            trainer.add_event_handler(Events.STARTED, self)

    def __call__(self, trainer: Engine) -> None:
        if not self.checkpoint.is_file():
            raise FileNotFoundError(
                f"--resume: no checkpoint at {self.checkpoint}; train once without --resume first"
            )
        state = load_weights_only(self.checkpoint, self.map_location)
        missing = [k for k in ("network", "optimizer", "trainer") if k not in state]
        if missing:
            raise KeyError(f"{self.checkpoint} is not a breastseg training checkpoint: missing {missing}")
        _unwrap(self.network).load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        max_epochs = trainer.state.max_epochs
        trainer.load_state_dict(state["trainer"])
        trainer.state.max_epochs = max(max_epochs, trainer.state.max_epochs)
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        setattr(trainer.state, TRACKING_RUN_KEY, state.get(TRACKING_RUN_KEY))
        logger.info("resumed from %s after epoch %d", self.checkpoint, trainer.state.epoch)
        self._report_lost_epochs(trainer.state.epoch)

    def _report_lost_epochs(self, resumed: int) -> None:
        try:
            recorded = json.loads((self.checkpoint.parent / LAST_EPOCH_FILE).read_text())
            completed, interval = int(recorded["epoch"]), int(recorded.get("checkpoint_interval", 1))
        except (OSError, ValueError, KeyError, TypeError):  # written before the file existed, or by hand
            logger.info("--resume: continuing after epoch %d (which epoch the stopped run had reached is not recorded)", resumed)
            return
        if completed <= resumed:
            logger.info("--resume: continuing after epoch %d, the last one completed: no epoch is lost", resumed)
            return
        lost = f"epoch {completed}" if completed == resumed + 1 else f"epochs {resumed + 1}-{completed}"
        logger.warning(
            "--resume: %s completed after the checkpoint of epoch %d and %s lost (checkpoints are written every %d "
            "epoch(s), in the background: the run stopped before the next one was on disk); training again from epoch %d",
            lost, resumed, "is" if completed == resumed + 1 else "are", interval, resumed + 1,
        )
