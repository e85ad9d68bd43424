"""What solo-tf prints for people: one line of progress or report, to stderr.

The tasks' default ``log`` and the CLI's messages go through :func:`log_line` (stdout is
kept for the CLI's JSON results)."""

from __future__ import annotations

import sys


def log_line(msg) -> None:
    """One line to stderr, flushed (so it interleaves with Keras' own progress in order)."""
    print(msg, file=sys.stderr, flush=True)
