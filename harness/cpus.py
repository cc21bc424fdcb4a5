"""Perf trials do not share the host's CPUs with another perf run: a second
one waits for the first (and says so), unless told to share."""

from __future__ import annotations

import fcntl
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from harness import leases
from harness.errors import HarnessError

log = logging.getLogger(__name__)


class HarnessWarning(UserWarning):
    """Something a user of the harness should see in the test summary."""


def _lock_path() -> str:
    return str(leases.state_dir().parent / "perf.lock")


@contextmanager
def reserved(share: bool, wait_seconds: float) -> Iterator[dict[str, object]]:
    """Hold the host's perf reservation while the block runs. Yields what the
    result should record: whether CPUs were shared and how long we waited."""
    if share:
        yield {"shared": True, "waited_s": 0.0}
        return
    os.makedirs(os.path.dirname(_lock_path()), exist_ok=True)
    with open(_lock_path(), "a+") as lock:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "?"
                if not announced:
                    message = (f"another perf run (pid {holder}) is using the CPUs: waiting for it to finish "
                               "rather than sharing them (pass --share-cpus to run alongside)")
                    log.warning(message)
                    warnings.warn(message, HarnessWarning, stacklevel=3)
                    announced = True
                if time.monotonic() - start > wait_seconds:
                    raise HarnessError(f"another perf run (pid {holder}) held the CPUs for {wait_seconds:.0f} s; "
                                       "not sharing them with it",
                                       hint="wait for it, or pass --share-cpus to measure alongside it") from None
                time.sleep(0.5)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield {"shared": False, "waited_s": round(time.monotonic() - start, 1)}
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)
