"""The project's two command lines (``python -m monai.bundle ...`` and ``breastseg ...``) run in a new process forked
from one that has already imported torch, MONAI and MLflow.

Importing MONAI imports nearly every optional package it knows (MLflow, SciPy, scikit-learn, matplotlib...): about
ten seconds of CPU per command on a CI core, and the suite runs over a hundred commands. Here the imports are paid once
per test worker (:mod:`multiprocessing`'s fork server, with those modules preloaded). Everything else is the command's
own: a new process, its working folder and environment, its ``__main__`` code and argument parsing, its stdout,
stderr and exit status (an uncaught exception goes through ``sys.excepthook``, ``sys.exit("text")`` prints the text
and exits 1), its exit handlers, and the processes it starts (started afresh, as they would be).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["BREASTSEG", "forkable", "run_breastseg", "run_forked"]

BREASTSEG = str(Path(sys.executable).with_name("breastseg"))
#: what every command imports anyway; the fork server imports them once
PRELOAD = ["torch", "monai", "monai.bundle.scripts", "mlflow", "breastseg.workflows.commands.cli"]
_MONAI_BUNDLE = [sys.executable, "-m", "monai.bundle"]
_context = None


def forkable(command: list[str]) -> bool:
    """Whether ``command`` is one of the two command lines this module runs forked."""
    return command[:3] == _MONAI_BUNDLE or command[:1] == [BREASTSEG]


def _fork_server():
    global _context
    if _context is None:
        # read by the OpenMP runtime when torch loads, so it must be set before the server imports torch
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_status(code: object) -> int:
    """What the interpreter makes of ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_command(command: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> None:
    """In the forked process: become ``command`` run in ``cwd`` with ``env``, its output in the two files."""
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    status = 0
    try:
        if command[:3] == _MONAI_BUNDLE:
            sys.argv = ["-m", *command[3:]]  # as `python -m` leaves it (run_module puts the module's path first)
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
        else:
            from breastseg.workflows.commands.cli import main

            sys.argv = command
            status = main(command[1:])
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException:  # as the interpreter does with an uncaught exception (the CLI installs its own hook)
        sys.excepthook(*sys.exc_info())
        status = 1
    threading._shutdown()  # the interpreter's exit: non-daemon threads, then exit handlers, then the streams
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def run_forked(command: list[str], cwd: str | Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` of ``command`` (see :func:`forkable`) with captured text output; raises
    :class:`subprocess.TimeoutExpired` (the process killed) as it does."""
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as folder:
        stdout, stderr = Path(folder, "stdout"), Path(folder, "stderr")
        stdout.touch()
        stderr.touch()
        process = _fork_server().Process(target=_run_command, args=(command, str(cwd), dict(env), str(stdout), str(stderr)))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, stdout.read_bytes(), stderr.read_bytes())
        return subprocess.CompletedProcess(
            command, process.exitcode, stdout.read_text(errors="replace"), stderr.read_text(errors="replace")
        )


def run_breastseg(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``breastseg *args`` in the current folder and environment (see :func:`run_forked`)."""
    return run_forked([BREASTSEG, *args], os.getcwd(), dict(os.environ), timeout)
