"""What reaches the console from Ray: the project's own lines always; Ray's INFO lines with --verbose."""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "UNLEARN_VERBOSE"  # set by the jobs' --verbose before Ray starts, so every Ray process sees it


def verbose() -> bool:
    """Whether Ray's own INFO lines (worker groups, checkpoints, reports, Tune's tables) go to the console; its
    warnings and errors always do, and every line is in Ray's log files either way."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_worker_reports() -> None:
    """In a Train worker: Ray Train logs every report through a logger named after its source file, outside
    `ray.train`, so RunConfig's log level misses it (a line per epoch and worker). Raised unless --verbose."""
    if verbose():
        return
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def log(message: str) -> None:
    """A line of the project's own progress output (flushed: it interleaves with Ray's)."""
    print(message, flush=True)
