"""The code passes its own linters: ruff over everything, mypy over the package."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    proc = _run("ruff", "check", "harness", "tests", "scenarios", "benchmarks")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    proc = _run("mypy", "harness")
    assert proc.returncode == 0, proc.stdout + proc.stderr
