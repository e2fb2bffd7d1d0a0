"""Whether a process that left something behind (a temporary checkpoint file, a RUNNING MLflow run) is still there.

A process id alone is not enough: ids are reused (in a container, a restarted training often gets the id of the
killed one), so where Linux tells a process's start time (``/proc/<pid>/stat``) the pair identifies the process.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_start_ticks", "process_alive"]


def process_start_ticks(pid: int | str = "self") -> int | None:
    """When process ``pid`` started, in clock ticks after boot (Linux); ``None`` where that is not known."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Process ``pid`` runs on this machine (and, given its ``start_ticks``, is the same process, not a later one with
    the reused id)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive all the same
        pass
    return start_ticks is None or process_start_ticks(pid) in (None, start_ticks)
