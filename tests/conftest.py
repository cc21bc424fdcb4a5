"""Shared helpers for the harness's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import leases
from harness.plugin import strict_mode

REPO = Path(__file__).resolve().parent.parent
HARNESS = [sys.executable, "-m", "harness.cli"]


@pytest.fixture
def root_only() -> None:
    """Integration tests make namespaces and TAPs: root only (an error in CI)."""
    if os.geteuid() != 0:
        if strict_mode():
            pytest.fail("integration tests need root (HARNESS_STRICT is set)")
        pytest.skip("needs root: it creates network namespaces and TAP devices")


def harness_netns() -> set[str]:
    from pyroute2 import netns

    return {n for n in netns.listnetns() if n.startswith(leases.NETNS_PREFIX)}


def qemu_processes(tag: str = "harness-") -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if tag in line]


def assert_nothing_left(run_id: str | None = None) -> None:
    """No namespace, QEMU process or lease of the harness remains (of `run_id`
    if given, else of any run)."""
    tag = run_id or ""
    netns_left = [n for n in harness_netns() if tag in n]
    qemu_left = qemu_processes(f"harness-{tag}")
    leases_left = [p.name for p in leases.state_dir().glob("*.json") if tag in p.name]
    assert not netns_left, f"namespaces left: {netns_left}"
    assert not qemu_left, f"QEMU left: {qemu_left}"
    assert not leases_left, f"leases left: {leases_left}"


def harness_state() -> set[str]:
    """Every namespace, QEMU process and lease of the harness on this host now."""
    return ({f"netns {n}" for n in harness_netns()} | {f"qemu {q}" for q in qemu_processes()}
            | {f"lease {p.name}" for p in leases.state_dir().glob("*.json")})


def own_state() -> set[str]:
    """What this process holds: its leases, and the namespaces and QEMU
    processes they name (other runs on the machine are not ours to judge)."""
    held = set(leases.held_by(os.getpid()))
    run_ids = {name.split(" ", 1)[1].split("-")[-1] for name in held}
    return held | {f"netns {n}" for n in harness_netns() if n.removeprefix(leases.NETNS_PREFIX) in run_ids} \
        | {f"qemu {q}" for q in qemu_processes() for r in run_ids if f"harness-{r}," in q}


@pytest.fixture
def no_new_leftovers():
    """Fails the test if it leaves any harness resource of this process that
    was not there before it (the session's own guest may legitimately be up)."""
    before = own_state()
    yield
    left = own_state() - before
    assert not left, f"left behind: {sorted(left)}"


def run_harness(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
                prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), *HARNESS, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})
