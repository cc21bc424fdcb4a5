"""SIGTERM gets Ctrl-C's orderly teardown, in the harness's own process only."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import os, signal, sys, time
from harness.errors import treat_sigterm_as_interrupt
treat_sigterm_as_interrupt()
ready_r, ready_w = os.pipe()
pid = os.fork()  # as pyroute2 does to open a socket in a namespace
if pid == 0:
    try:
        os.write(ready_w, b"x")
        time.sleep(30)
    finally:
        open(sys.argv[1], "w").write("the child ran the parent's teardown")
    os._exit(0)
os.read(ready_r, 1)  # a signal that lands before the child is set up is dropped by Python
os.kill(pid, signal.SIGTERM)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except KeyboardInterrupt as exc:
    print("parent interrupted:", exc)
"""


def test_sigterm_interrupts_the_owner_and_only_ends_a_forked_child(tmp_path):
    marker = tmp_path / "marker"
    out = subprocess.run([sys.executable, "-c", CODE, str(marker)], capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == ["143", "parent interrupted: signal 15"], out.stderr
    assert not marker.exists()
