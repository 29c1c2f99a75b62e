"""Where the workers of ``python -m serving --workers N`` keep their metrics.

With several worker processes, ``/metrics`` adds up all of theirs (``app.metrics``,
prometheus-client's multiprocess mode): each writes its values to files in the directory
``PROMETHEUS_MULTIPROC_DIR`` names, which must exist before the workers start and must not
hold another run's files. ``metrics_directory`` makes one for the run and removes it after;
one named by the operator is used, emptied of earlier runs' files first. A single process
needs none: its metrics stay in its memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.metrics import MULTIPROCESS_DIRECTORY
from app.settings import Settings

# The files prometheus-client writes there: <type>[_<gauge mode>]_<pid>.db.
_FILE_PATTERNS = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


@contextlib.contextmanager
def metrics_directory(settings: Settings, workers: int) -> Iterator[Path | None]:
    """Sets ``PROMETHEUS_MULTIPROC_DIR`` for worker processes to inherit while uvicorn runs
    ``workers`` of them, when they are several and metrics are on; yields the directory
    (None when there is none)."""
    given = os.environ.get(MULTIPROCESS_DIRECTORY)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for pattern in _FILE_PATTERNS:
            for stale in directory.glob(pattern):
                stale.unlink()
        yield directory
        return
    if workers <= 1 or not settings.metrics:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="order-events-metrics-"))
    os.environ[MULTIPROCESS_DIRECTORY] = str(directory)
    try:
        yield directory
    finally:
        del os.environ[MULTIPROCESS_DIRECTORY]
        shutil.rmtree(directory, ignore_errors=True)
