"""``breastseg synth`` shows its progress (``--full-size`` takes minutes): log lines when its output is not a
terminal, a progress bar on a terminal. Small images: the progress does not depend on the size."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

BREASTSEG = str(Path(sys.executable).with_name("breastseg"))


def test_synth_logs_its_progress_when_not_on_a_terminal(tmp_path):
    result = subprocess.run(
        [BREASTSEG, "synth", "--layout", "udiat", "--out", str(tmp_path / "udiat"), "--cases", "10"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    progress = [line for line in result.stderr.splitlines() if "udiat: images:" in line]
    assert progress and progress[-1].split("udiat: images: ")[1].startswith("10/10")
    assert "images: 10" in result.stdout  # the summary is still printed


def test_synth_shows_a_progress_bar_on_a_terminal(tmp_path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    process = subprocess.Popen(
        [BREASTSEG, "synth", "--layout", "udiat", "--out", str(tmp_path / "udiat"), "--cases", "10"],
        stdout=subprocess.DEVNULL, stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.wait(timeout=300) == 0
    text = shown.decode(errors="replace")
    assert "udiat: images" in text and "10/10" in text and "%|" in text  # tqdm's bar
