"""Errors a user can act on: bad input or settings, reported in one line without a traceback.

Our code raises a :class:`UserError` subclass (also a ``ValueError``, ``KeyError``, ... so callers keep
catching what they caught before) whose message names the file or key, what is wrong and what to do.
:func:`install_excepthook` (installed by the bundle configs' first ``initialize`` step and by the
``breastseg`` command) prints such an error, found anywhere in the exception chain (MONAI wraps config
errors in a ``RuntimeError``), as one line ``error: ...`` on stderr and exits 1. ``--debug`` on the command
line or ``BREASTSEG_DEBUG=1`` prints the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

__all__ = [
    "UserError",
    "UserValueError",
    "UserKeyError",
    "UserTypeError",
    "UserFileNotFoundError",
    "UserFileExistsError",
    "find_user_error",
    "debug_requested",
    "install_excepthook",
]

DEBUG_ENV = "BREASTSEG_DEBUG"


class UserError(Exception):
    """Bad input or settings; the message says what is wrong and what to do."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UserValueError(UserError, ValueError):
    pass


class UserKeyError(UserError, KeyError):
    pass


class UserTypeError(UserError, TypeError):
    pass


class UserFileNotFoundError(UserError, FileNotFoundError):
    pass


class UserFileExistsError(UserError, FileExistsError):
    pass


def find_user_error(error: BaseException | None) -> UserError | None:
    """The first :class:`UserError` in ``error``'s chain (itself, its causes and contexts), else ``None``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """``--debug`` on the command line (``--debug True`` for the bundle CLI) or ``BREASTSEG_DEBUG`` set to 1/true."""
    argv = list(sys.argv[1:] if argv is None else argv)
    off = ("false", "0", "no")
    for index, arg in enumerate(argv):
        if arg.startswith("--debug="):
            return arg.split("=", 1)[1].lower() not in off
        if arg == "--debug":  # "--debug", "--debug True"; "--debug False" keeps it off
            following = argv[index + 1] if index + 1 < len(argv) else ""
            return following.lower() not in off
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def install_excepthook() -> None:
    """Print an uncaught :class:`UserError` as one line (see the module docstring); other errors as before."""
    if getattr(sys.excepthook, "breastseg", False):
        return
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        user_error = find_user_error(error)
        if user_error is None or debug_requested():
            previous(kind, error, traceback)
            return
        print(f"error: {user_error}", file=sys.stderr)

    hook.breastseg = True  # type: ignore[attr-defined]
    sys.excepthook = hook
