"""A stage (``run_stage``: its own ``python -m monai.bundle run`` process) never outlives the command that
started it: it runs in the caller's process group and stops when the caller is terminated or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: a stage that records its process id, then works for a long time
_STAGE = {
    "imports": ["$import os", "$import time"],
    "marker": "",
    "run": ["$open(@marker, 'w').write(str(os.getpid()))", "$time.sleep(600)"],
    "training": "%run",
}

_CALLER = """
import sys
from breastseg.workflows.engine.stages import run_stage
run_stage(sys.argv[1], "training", {"marker": sys.argv[2]})
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as stopped
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize("caller_signal", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_caller_stops_its_stage(tmp_path, caller_signal):
    config, marker = tmp_path / "stage.json", tmp_path / "stage.pid"
    config.write_text(json.dumps(_STAGE))
    caller = subprocess.Popen(
        [sys.executable, "-c", _CALLER, str(config), str(marker)], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    stage_pid = None
    try:
        deadline = time.monotonic() + 120
        while not (marker.is_file() and marker.read_text()) and caller.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        stage_pid = int(marker.read_text())
        assert os.getpgid(stage_pid) == os.getpgid(caller.pid)  # the caller's process group
        os.kill(caller.pid, caller_signal)  # the caller only, as `kill PID` does
        caller.wait(timeout=60)
        assert _gone_within(stage_pid, 60), "the stage outlived its caller"
    finally:
        if caller.poll() is None:
            caller.kill()
        if stage_pid and _alive(stage_pid):
            os.kill(stage_pid, signal.SIGKILL)
