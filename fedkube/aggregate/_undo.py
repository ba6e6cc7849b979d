"""The undo log of a pending update: the accumulator values it overwrote. Pure module
apart from its scratch file.

`WeightedMean` folds an update into its running sums chunk by chunk as the
bytes stream in, each chunk checked before it is folded; but a later chunk (a
NaN) or the digest at the very end can still reject the whole update. Floating
point addition cannot be undone by subtracting (``(a + w x) - w x`` is not
always ``a``), so before a range of the sums changes its old values are
written to this log, and `restore` puts them back bit for bit.

The log is an anonymous scratch file written with ``pwrite`` and read back
with ``preadv``: it holds at most one model's worth of sums (the folded part of
the update in flight), in the page cache rather than in the process (the
combiner's RSS stays one model's sums, whatever the model's size), and the
file is rewritten from its start by every update, so its pages stay warm and
little of it ever reaches the disk. Saving costs one copy of the chunk of sums
already in cache; restoring happens only for a rejected update.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

import numpy as np


class UndoLog:
    """Old values of accumulator ranges, in the order they were saved."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._file: IO[bytes] | None = None
        self._pos = 0
        self._saved: list[tuple[np.ndarray, int]] = []

    def save(self, view: np.ndarray) -> None:
        """Record the current values of `view` (a contiguous slice of a sum)."""
        if self._file is None:
            if self._directory is not None:
                self._directory.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                prefix="fedkube-undo-", dir=self._directory
            )
        data = view.data.cast("B")
        fd = self._file.fileno()
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], self._pos + done)
        self._saved.append((view, self._pos))
        self._pos += len(data)

    def restore(self) -> None:
        """Put every saved range back as it was, then forget them."""
        if self._file is not None:
            fd = self._file.fileno()
            for view, pos in reversed(self._saved):
                data = view.data.cast("B")
                done = 0
                while done < len(data):
                    n = os.preadv(fd, [data[done:]], pos + done)
                    if n <= 0:
                        raise OSError(f"undo log ended at byte {pos + done}")
                    done += n
        self.clear()

    def clear(self) -> None:
        """Forget the saved ranges (the update they belonged to was committed)."""
        self._saved.clear()
        self._pos = 0

    def close(self) -> None:
        self.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
