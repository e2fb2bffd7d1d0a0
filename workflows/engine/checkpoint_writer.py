"""Checkpoint files written beside training, not in its way.

A checkpoint is a snapshot of tensors that the next optimizer step changes in place, so the snapshot is
taken at once: each tensor is copied into a host buffer kept for that file (allocated on the first save,
pinned on CUDA, where the copy is queued on the device and the trainer goes on). Serialising the snapshot
and writing it (hundreds of MB for BReMS-Net with Adam) happens on one background thread. The trainer
only waits when it saves the same file again before the previous write of that file has finished, or when
the run ends.

Every write is atomic (a temporary file in the same folder, then a rename): a kill at any moment leaves the
previous good file. Temporary files carry the writing process's id, so a later run removes those whose
process is gone (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from breastseg.workflows.engine.processes import process_alive

__all__ = [
    "atomic_torch_save",
    "remove_stale_temporaries",
    "NonFiniteStateError",
    "CheckpointWriter",
    "wait_for_pending_writes",
]

logger = logging.getLogger("breastseg.checkpoints")
#: every writer of this process, so that code reading checkpoints after a failed run can wait for them
_WRITERS: "weakref.WeakSet[CheckpointWriter]" = weakref.WeakSet()


def wait_for_pending_writes() -> None:
    """Wait for the writes of every :class:`CheckpointWriter` of this process (errors are logged, not raised).

    A process that ends waits for them anyway (the writer threads are joined at exit); this is for code
    that reads a checkpoint in the same process right after a run stopped with an error.
    """
    for writer in list(_WRITERS):
        try:
            writer.wait()
        except Exception as error:  # the run already failed; its last good file stays
            logger.warning("a checkpoint write failed: %s", error)


class NonFiniteStateError(FloatingPointError):
    """A snapshot holds NaN or infinite values: it is not written (the previous file is kept)."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file (named with this process's id) in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the temporary files of ``names`` left in ``folder`` by killed writers; returns them.

    A temporary file is ``.<name>.<pid>.<random>``; it is stale when process ``pid`` is gone (or, for files of
    earlier versions without a pid, always).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for name in names:
        for candidate in folder.glob(f".{name}.*"):
            pid_text = candidate.name[len(name) + 2 :].split(".", 1)[0]
            if pid_text.isdigit() and (int(pid_text) == os.getpid() or process_alive(int(pid_text))):
                continue
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    if removed:
        logger.info("removed %d temporary checkpoint file(s) of killed runs in %s", len(removed), folder)
    return removed


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in _tensors(value)]
    return []


def _all_finite(obj: Any) -> bool:
    """Every floating-point tensor of ``obj`` finite (float64 sums: NaN and inf survive a sum, overflow does not)."""
    sums = [t.sum(dtype=torch.float64) for t in _tensors(obj) if t.is_floating_point() and t.numel()]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


class CheckpointWriter:
    """Snapshots taken on the caller's thread, written on one background thread, one job per file at a time.

    Args:
        check_finite: refuse (:class:`NonFiniteStateError`, file not written) snapshots with NaN or inf values;
            checked on the host copy, in the background.
    """

    def __init__(self, check_finite: bool = True) -> None:
        self.check_finite = check_finite
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[Path, Future] = {}
        self._buffers: dict[Path, dict[tuple, torch.Tensor]] = {}
        #: seconds the caller was held by each :meth:`save` (waiting for the file's previous write, copying)
        self.blocked_seconds: list[float] = []
        _WRITERS.add(self)

    def save(self, state: Any, path: str | Path) -> None:
        """Snapshot ``state`` now and write it to ``path`` in the background."""
        start = time.perf_counter()
        path = Path(path)
        previous = self._pending.pop(path, None)
        if previous is not None:
            previous.result()  # its buffers are reused below; raises the error of a failed write
        buffers = self._buffers.setdefault(path, {})
        snapshot = self._snapshot(state, buffers, ())
        copied = None
        if any(t.is_cuda for t in _tensors(state)):
            copied = torch.cuda.Event()
            copied.record()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending[path] = self._executor.submit(self._write, snapshot, path, copied)
        self.blocked_seconds.append(time.perf_counter() - start)

    def failed(self) -> BaseException | None:
        """The error of a finished write, if any (a cheap check: it never waits)."""
        for future in self._pending.values():
            if future.done() and future.exception() is not None:
                return future.exception()
        return None

    def wait(self) -> None:
        """Wait for every pending write; raise the first error."""
        pending, self._pending = self._pending, {}
        errors = [future.exception() for future in pending.values()]
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first

    def _snapshot(self, obj: Any, buffers: dict[tuple, torch.Tensor], key: tuple) -> Any:
        if isinstance(obj, torch.Tensor):
            buffer = buffers.get(key)
            if buffer is None or buffer.shape != obj.shape or buffer.dtype != obj.dtype:
                buffer = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=obj.is_cuda)
                buffers[key] = buffer
            return buffer.copy_(obj.detach(), non_blocking=obj.is_cuda)
        if isinstance(obj, dict):
            return {name: self._snapshot(value, buffers, (*key, name)) for name, value in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._snapshot(value, buffers, (*key, index)) for index, value in enumerate(obj))
        return obj

    def _write(self, snapshot: Any, path: Path, copied: Any) -> None:
        if copied is not None:
            copied.synchronize()
        if self.check_finite and not _all_finite(snapshot):
            raise NonFiniteStateError(f"{path.name} not written: the weights or optimizer state hold NaN or inf")
        atomic_torch_save(snapshot, path)
