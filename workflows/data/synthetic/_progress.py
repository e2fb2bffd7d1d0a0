"""Progress of a long generation (``--full-size`` takes minutes): a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Sequence, TypeVar

__all__ = ["Progress", "tracked"]

logger = logging.getLogger("breastseg.synthetic")
Item = TypeVar("Item")


class Progress:
    """``total`` steps of ``what``: a tqdm bar when stderr is a terminal, else an INFO line about every 10 %."""

    def __init__(self, total: int, what: str, terminal: bool | None = None) -> None:
        self.total, self.what, self.done = total, what, 0
        self.every = max(1, total // 10)
        self.start = time.monotonic()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None
        if terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="image")

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.done >= self.total:
                self.bar.close()
        elif self.done % self.every == 0 or self.done == self.total:
            logger.info("%s: %d/%d (%.0f s)", self.what, self.done, self.total, time.monotonic() - self.start)

    def over(self, items: Iterable[Item]) -> Iterator[Item]:
        """Yield ``items``, one step after each."""
        for item in items:
            yield item
            self.step()


def tracked(items: Sequence[Item], what: str) -> Iterator[Item]:
    """Yield ``items`` with a :class:`Progress` of ``len(items)`` steps."""
    return Progress(len(items), what).over(items)
