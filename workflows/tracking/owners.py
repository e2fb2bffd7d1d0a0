"""Which process a RUNNING MLflow run belongs to, and ending the runs whose process is gone.

Every run the project opens carries its process: the tags ``breastseg.host``, ``breastseg.pid`` and
``breastseg.process_start`` (when the process started, so a later process reusing the id is not taken for it). A
training killed with SIGKILL or by the out-of-memory killer cannot end its run; the next command that opens the
store on the same host ends every RUNNING run whose process is gone as KILLED, with the reason in its
``killed_reason`` tag. A run whose process ended while the store could not be reached left its end in
``<unsent_dir>/<run name>.jsonl`` (:class:`~breastseg.workflows.tracking.runs.ResilientMLFlowHandler`): it is ended
with the status written there, and the file is named in its ``unsent_metrics`` tag.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterable

from mlflow.entities import RunStatus

from breastseg.workflows.engine.processes import process_alive, process_start_ticks

__all__ = ["HOST_TAG", "PID_TAG", "START_TAG", "owner_tags", "end_orphaned_runs"]

logger = logging.getLogger("breastseg.tracking")

HOST_TAG, PID_TAG, START_TAG = "breastseg.host", "breastseg.pid", "breastseg.process_start"
_KILLED = RunStatus.to_string(RunStatus.KILLED)


def owner_tags() -> dict[str, str]:
    """The tags naming this process (``breastseg.process_start`` only where the system tells it)."""
    started = process_start_ticks()
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    return tags if started is None else {**tags, START_TAG: str(started)}


def _gone(tags: dict[str, str]) -> bool:
    pid, started = tags.get(PID_TAG, ""), tags.get(START_TAG)
    if not pid.isdigit():
        return False
    return not process_alive(int(pid), int(started) if started and started.isdigit() else None)


def _unsent_status(unsent_dir: Path, run_name: str) -> tuple[str, Path] | None:
    """The status a run's process wrote in its unsent file when it ended offline, with the file."""
    path = unsent_dir / f"{run_name}.jsonl"
    try:
        with path.open(encoding="utf-8") as stream:
            return json.loads(stream.readline())["status"], path
    except (OSError, ValueError, KeyError):
        return None


def end_orphaned_runs(client: Any, unsent_dir: str | Path, keep: Iterable[str] = ()) -> list[str]:
    """End the store's RUNNING runs whose process on this host is gone (all experiments; ``keep``: run ids left as
    they are, such as the run a ``--resume`` reopens); returns their ids. Runs of other hosts are never touched."""
    host, kept = socket.gethostname(), set(keep)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiments:
        return []
    running = client.search_runs(experiments, filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    ended = []
    for run in running:
        if run.info.run_id in kept or not _gone(run.data.tags):
            continue
        unsent = _unsent_status(Path(unsent_dir), run.info.run_name)
        if unsent is not None:
            status, path = unsent
            client.set_tag(run.info.run_id, "unsent_metrics", str(path))
        else:
            status = _KILLED
            client.set_tag(run.info.run_id, "killed_reason", f"process {run.data.tags[PID_TAG]} on {host} ended without "
                           "ending the run (killed: SIGKILL, the out-of-memory killer, a power loss)")
        client.set_terminated(run.info.run_id, status)
        logger.warning("MLflow run %s (%s) was left RUNNING by process %s, which is gone: ended %s",
                       run.info.run_name, run.info.run_id, run.data.tags[PID_TAG], status)
        ended.append(run.info.run_id)
    return ended
