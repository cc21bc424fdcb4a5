"""The pytest plugin, run for real with pytester: a failing scenario's report
carries the guest's console and QEMU logs."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)
pytestmark = pytest.mark.vm


def test_failure_report_attaches_console_and_qemu_logs(root_only, pytester, tmp_path):
    pytester.makepyfile(test_fails="""
def test_guest_says_wrong_thing(guest):
    assert guest.console.run("echo guest-output-marker").output == "something else"
""")
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "--run-dir", str(tmp_path),
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "console log (tail of" in text and "QEMU log (tail of" in text
    assert "login:" in text  # the console tail really is the guest's console
    assert "harness resources left behind" not in text
