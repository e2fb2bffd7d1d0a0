"""The shared training harness: every bundle's trainer and evaluator are built here.

A bundle only supplies values and components (network, loss, optimizer, LR schedule, chains,
hyper-parameters) in its ``train.json``; :func:`build_trainer` and :func:`build_evaluator` turn them into
MONAI :class:`~monai.engines.SupervisedTrainer` / :class:`~monai.engines.SupervisedEvaluator` with the
project's conventions:

- ``decollate=False`` and no train-time post-transforms or metrics: the trainer only steps (metrics are
  for validation), which keeps it within a few per cent of a plain PyTorch loop
  (``benchmarks/harness_overhead.py``);
- deep-supervision networks return a list of heads in ``train()`` mode; the loss takes the list; the
  evaluator runs the network in ``eval()`` mode, where it returns the final head only;
- mixed precision: MONAI's AMP on CUDA by default, bfloat16 autocast on CPU when asked (``amp=True``,
  :mod:`breastseg.workflows.engine.precision`);
- the loop reads nothing back from the device per step: the epoch loss, the loss terms and the
  non-finite-loss check accumulate on the device and are read once per epoch (log lines and the progress
  bar every ``log_every`` steps), so a GPU is never left waiting for the host;
- the network sees plain tensors (``MetaTensor`` costs a Python dispatch per operation), copied to the
  device without blocking;
- a non-finite loss stops the run before the epoch's checkpoint is written;
- a progress bar on a terminal, plain log lines otherwise.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer, default_prepare_batch
from monai.handlers import LrScheduleHandler, StatsHandler
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Compose

from breastseg.workflows.engine.checkpoint_writer import wait_for_pending_writes
from breastseg.workflows.engine.checkpoints import NonFiniteLossGuard
from breastseg.workflows.engine.datasets import plain_tensors
from breastseg.workflows.engine.handler_lists import every, unique_trackers
from breastseg.workflows.engine.loss_terms import loss_value
from breastseg.workflows.engine.precision import resolve_precision
from breastseg.workflows.engine.processes import process_start_ticks

__all__ = [
    "build_trainer",
    "build_evaluator",
    "build_lr_scheduler",
    "EarlyStopping",
    "AttachToEvaluator",
    "lr_schedule_handler",
    "progress_handlers",
    "metric_name_for_split",
    "seed_everything",
    "plain_batch",
    "plain_input_batch",
]

logger = logging.getLogger("breastseg.harness")

LR_SCHEDULES = ("exponential", "plateau", "step", "none")
#: training steps between two log lines (or progress-bar updates); each reads the loss back from the device
LOG_EVERY = 10


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch. Only ``deterministic=True`` turns ``cudnn.benchmark`` off.

    MONAI's ``set_determinism`` always disables ``cudnn.benchmark`` (slower convolutions); a seed alone
    should not cost speed, so it is only called when determinism is asked for.
    """
    if deterministic:
        from monai.utils import set_determinism

        set_determinism(seed=seed)
        return
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
    """``exponential`` (``gamma`` per epoch), ``plateau`` (on the validation key metric), ``step``
    (``step_size``, ``gamma``) or ``none``."""
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=kwargs.get("gamma", 0.9))
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=kwargs.get("mode", "max"),
            factor=kwargs.get("factor", 0.1),
            patience=kwargs.get("patience", 10),
            min_lr=kwargs.get("min_lr", 0.0),
        )
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=kwargs.get("step_size", 30), gamma=kwargs.get("gamma", 0.1))
    if name == "none":
        return None
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {name!r}")


def lr_schedule_handler(lr_scheduler: Any, evaluator: Any = None, key_metric: str | None = None) -> Any:
    """The trainer-list handler stepping ``lr_scheduler`` once per epoch (``None`` for no scheduler).

    ``ReduceLROnPlateau`` steps on the validation key metric, so its handler is attached to the
    evaluator (through :class:`AttachToEvaluator`).
    """
    if lr_scheduler is None:
        return None
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if evaluator is None or key_metric is None:
            raise ValueError("a plateau LR schedule needs the evaluator and its key metric")
        handler = LrScheduleHandler(
            lr_scheduler, print_lr=False, epoch_level=True, step_transform=lambda engine: engine.state.metrics[key_metric]
        )
        return AttachToEvaluator(handler, evaluator)
    return LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=True)


def plain_batch(batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """MONAI's ``default_prepare_batch`` with the image and the label as plain tensors (training); a label
    cached as ``uint8`` (:class:`~breastseg.workflows.engine.datasets.SampleCacheDataset`) becomes float32 on the device."""
    inputs, targets = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    targets = plain_tensors(targets)
    if isinstance(targets, torch.Tensor) and targets.dtype == torch.uint8:
        targets = targets.float()
    return plain_tensors(inputs), targets


def plain_input_batch(batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """The image as a plain tensor, the label as it is (validation: metrics read the label's pixel spacing)."""
    inputs, targets = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return plain_tensors(inputs), targets


class EpochLossAverage:
    """The mean training loss of each epoch as ``engine.state.metrics["train_epoch_loss"]``.

    The trainer computes no metric (for speed), so this is what epoch-level logs and MLflow show. The sum
    stays on the loss's device and is read once, at the end of the epoch.
    """

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Any) -> None:
        self.total: Any = 0.0
        self.count = 0

    def update(self, engine: Any) -> None:
        output = engine.state.output
        loss = output["loss"] if isinstance(output, dict) else output
        self.total = self.total + (loss.detach().float() if isinstance(loss, torch.Tensor) else float(loss))
        self.count += 1

    def complete(self, engine: Any) -> None:
        if self.count:
            engine.state.metrics["train_epoch_loss"] = float(self.total) / self.count


def _on_terminal() -> bool:
    return sys.stderr.isatty()


class _ProgressBar:
    """Ignite's tqdm progress bar on a terminal (training loss shown, read every ``log_every`` steps)."""

    def __init__(self, log_every: int = LOG_EVERY) -> None:
        from ignite.contrib.handlers import ProgressBar

        self.bar = ProgressBar(persist=False)
        self.log_every = log_every

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        self.bar.attach(
            engine,
            output_transform=lambda output: {"loss": loss_value(output)},
            event_name=Events.ITERATION_COMPLETED(every=self.log_every),
        )


#: the prefix of the validation metrics every bundle's evaluator computes (``val_mean_dice``, ``val_dice``...)
VALIDATION_PREFIX = "val_"


def metric_name_for_split(name: str, split: str | None) -> str:
    """How a metric of an evaluation of ``split`` is shown and logged: ``val_dice`` -> ``test_dice`` (the evaluator
    is the validation one, with its names); ``split`` ``None`` or ``validation`` keeps the name."""
    if split in (None, "validation") or not name.startswith(VALIDATION_PREFIX):
        return name
    return f"{split}_{name[len(VALIDATION_PREFIX):]}"


class _SplitScores:
    """An evaluation's epoch line: its metrics named by the split (``test_dice``), without MONAI's "best value at
    epoch" line, which means nothing for an evaluation that scores once."""

    def __init__(self, logger: logging.Logger, split: str) -> None:
        self.logger = logger  # the StatsHandler's: MONAI gives it its own stdout handler
        self.split = split

    def __call__(self, engine: Any) -> None:
        from monai.utils import is_scalar

        scores = {metric_name_for_split(name, self.split): value for name, value in engine.state.metrics.items()}
        self.logger.info("%s scores -- %s", self.split, " ".join(
            f"{name}: {value:.4f}" for name, value in sorted(scores.items()) if is_scalar(value)))


def progress_handlers(role: str, terminal: bool | None = None, log_every: int = LOG_EVERY, split: str | None = None) -> list[Any]:
    """Log handlers for ``role`` ("trainer" or "evaluator"): a progress bar on a terminal, lines otherwise.

    Epoch summaries are logged in both cases (they are what remains in a log file). The training loss of a
    step is shown every ``log_every`` steps: each read waits for the device. An evaluator of ``split`` (an
    evaluation of the test split) shows its metrics under that split's name (:func:`metric_name_for_split`).
    """
    terminal = _on_terminal() if terminal is None else terminal
    name = f"breastseg.{role}"
    if role == "trainer":
        handlers: list[Any] = [
            StatsHandler(
                name=name,
                tag_name="train_loss",
                output_transform=loss_value,
                iteration_log=False if terminal else every(log_every),
                epoch_log=True,
            )
        ]
        if terminal:
            handlers.append(_ProgressBar(log_every))
        return handlers
    stats = StatsHandler(name=name, iteration_log=False, output_transform=lambda x: None)
    if split not in (None, "validation"):
        stats.epoch_print_logger = _SplitScores(stats.logger, split)
    return [stats]


class _FinishWritesOnError:
    """First ``EXCEPTION_RAISED`` handler: wait for the background checkpoint writes, so the files on disk are
    complete when the run's error reaches the caller. It does not raise; :class:`_ReRaise` (last) does."""

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, lambda engine, error: wait_for_pending_writes())


class _ReRaise:
    """Last ``EXCEPTION_RAISED`` handler: Ignite hands an error to the handlers instead of raising it, so one
    of them must re-raise (MONAI's ``StatsHandler`` does when it is there; this one does otherwise)."""

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Any, error: BaseException) -> None:
        raise error


def seconds_since_process_start() -> float | None:
    """Seconds since this process started (Linux ``/proc``); ``None`` where that is not known."""
    started = process_start_ticks()
    try:
        return None if started is None else float(Path("/proc/uptime").read_text().split()[0]) - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


class _FirstStepLog:
    """Log once how long the command took to reach its first training step (imports, data, cache, network,
    first batch), when that step starts."""

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED(once=1), self)

    def __call__(self, engine: Any) -> None:
        seconds = seconds_since_process_start()
        if seconds is not None:
            logger.info("first training step after %.1f s (from the command's start)", seconds)


def _handler_list(handlers: Sequence[Any] | None) -> list[Any]:
    """Flatten nested handler lists (helpers return several), drop ``None`` and repeated trackers."""
    flat: list[Any] = []
    for handler in handlers or []:
        if isinstance(handler, (list, tuple)):
            flat.extend(_handler_list(handler))
        elif handler is not None:
            flat.append(handler)
    return unique_trackers(flat)


class EarlyStopping:
    """Stop the trainer when the evaluator's key metric has not improved for ``patience`` validations.

    Listed among the *trainer's* handlers (it needs the trainer to stop) and attaches MONAI's
    :class:`~monai.handlers.EarlyStopHandler` to the evaluator, so the config has no
    trainer <-> evaluator reference cycle. ``patience`` 0 disables it.
    """

    def __init__(self, patience: int, evaluator: Any, key_metric: str, min_delta: float = 0.0) -> None:
        if patience < 0:
            raise ValueError(f"early-stopping patience must be >= 0, got {patience}")
        self.patience = patience
        self.evaluator = evaluator
        self.key_metric = key_metric
        self.min_delta = min_delta

    def attach(self, trainer: Any) -> None:
        if self.patience == 0:
            return
        from monai.handlers import EarlyStopHandler

        EarlyStopHandler(
            patience=self.patience,
            score_function=lambda engine: engine.state.metrics[self.key_metric],
            trainer=trainer,
            min_delta=self.min_delta,
            epoch_level=True,
        ).attach(self.evaluator)


class AttachToEvaluator:
    """Attach ``handler`` to ``evaluator`` from the trainer's handler list (e.g. a plateau LR schedule)."""

    def __init__(self, handler: Any, evaluator: Any) -> None:
        self.handler = handler
        self.evaluator = evaluator

    def attach(self, trainer: Any) -> None:
        if self.handler is not None:
            self.handler.attach(self.evaluator)


def build_trainer(
    device: str | torch.device,
    max_epochs: int,
    train_data_loader: Any,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: Any,
    train_handlers: Sequence[Any] | None = None,
    inferer: Inferer | None = None,
    amp: bool | None = None,
    epoch_length: int | None = None,
) -> SupervisedTrainer:
    """The harness trainer: ``SupervisedTrainer`` without decollation, post-transforms or metrics.

    ``amp``: ``None`` follows the device (MONAI's AMP on CUDA, float32 on CPU); ``True`` on CPU autocasts to
    bfloat16 (:func:`~breastseg.workflows.engine.precision.resolve_precision`). Batches reach the network as plain
    tensors (:func:`plain_batch`), copied to a GPU without blocking.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}")
    handlers = [
        _FinishWritesOnError(),
        NonFiniteLossGuard(),
        EpochLossAverage(),
        _FirstStepLog(),
        *_handler_list(train_handlers),
        _ReRaise(),
    ]
    amp, inferer = resolve_precision(device, amp, inferer or SimpleInferer(), network)
    return SupervisedTrainer(
        device=torch.device(device),
        max_epochs=int(max_epochs),
        train_data_loader=train_data_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=inferer,
        train_handlers=handlers,
        amp=amp,
        decollate=False,
        epoch_length=epoch_length,
        optim_set_to_none=True,
        prepare_batch=plain_batch,
        non_blocking=torch.device(device).type == "cuda",
    )


def build_evaluator(
    device: str | torch.device,
    val_data_loader: Any,
    network: torch.nn.Module,
    key_val_metric: dict[str, Any] | None = None,
    additional_metrics: dict[str, Any] | None = None,
    postprocessing: Compose | None = None,
    val_handlers: Sequence[Any] | None = None,
    inferer: Inferer | None = None,
    amp: bool | None = None,
) -> SupervisedEvaluator:
    """The harness evaluator: batched post-processing (``decollate=False``) and MONAI metric handlers
    (``key_val_metric`` None: inference, nothing scored).

    ``amp`` as in :func:`build_trainer`. The network gets the image as a plain tensor; ``engine.state.batch``
    keeps the metadata that writers and metrics read.
    """
    amp, inferer = resolve_precision(device, amp, inferer or SimpleInferer(), network)
    return SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=val_data_loader,
        network=network,
        inferer=inferer,
        postprocessing=postprocessing,
        key_val_metric=key_val_metric,
        additional_metrics=additional_metrics,
        val_handlers=_handler_list(val_handlers),
        amp=amp,
        decollate=False,
        prepare_batch=plain_input_batch,
        non_blocking=torch.device(device).type == "cuda",
    )
