"""Console and SSH against the real Debian guest."""

from __future__ import annotations

import pytest

from harness.deadline import Deadline
from harness.errors import HarnessError, PhaseTimeout
from harness.ssh import SSHSession, parse_host_key

pytestmark = pytest.mark.vm


def test_console_output_and_status_are_exact_with_kernel_messages_interleaved(guest):
    result = guest.console.run("echo first; echo '<2>harness: a kernel message' > /dev/kmsg; "
                               "sleep 0.2; printf 'no newline'; exit 7")
    assert result.status == 7
    assert result.output == "first\nno newline"
    # The kernel message did reach the console (so it really was interleaved).
    assert "harness: a kernel message" in guest.vm.console_tail(20)


def test_console_returns_large_output_byte_for_byte(guest):
    result = guest.console.run("seq 1 3000", check=True)
    assert result.output == "".join(f"{i}\n" for i in range(1, 3001))


def test_console_command_timeout_names_the_phase(guest):
    with pytest.raises(PhaseTimeout) as info:
        guest.console.run("sleep 5", timeout=1)
    assert "console command: sleep 5" in str(info.value)
    assert "console_tail" in info.value.diagnosis
    # The console works again once the command is interrupted.
    guest.console.recover()
    assert guest.console.run("echo back", timeout=10).output == "back\n"


def test_ssh_runs_commands_and_copies_files(guest, tmp_path):
    assert guest.ssh.run("exit 3").status == 3
    assert guest.ssh.run("echo err >&2; echo out", check=True).output.count("out") == 1
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 40)
    guest.ssh.put(src, "/tmp/blob", mode=0o600)
    assert guest.ssh.run("sha256sum /tmp/blob", check=True).output.split()[0] == \
        __import__("hashlib").sha256(src.read_bytes()).hexdigest()
    back = tmp_path / "back"
    guest.ssh.get("/tmp/blob", back)
    assert back.read_bytes() == src.read_bytes()


def test_ssh_background_with_a_pty_delivers_output_and_takes_ctrl_c(guest):
    bg = guest.ssh.run_background("echo started; trap 'echo caught; exit 5' INT; "
                                  "while true; do sleep 0.1; done")
    Deadline(10, "start").wait_for(lambda: "started" in bg.output, "the command to start")
    bg.interrupt()
    result = bg.wait(Deadline(10, "stop"))
    assert "caught" in result.output


def test_ssh_refuses_a_host_key_other_than_the_one_the_console_reported(guest):
    wrong = parse_host_key(guest.console.run(
        "ssh-keygen -q -t ed25519 -N '' -f /tmp/other && cat /tmp/other.pub && rm -f /tmp/other*",
        check=True).output)
    session = SSHSession("127.0.0.1", guest.vm.ssh_port, guest.ssh.key, wrong)
    with pytest.raises(HarnessError, match="host key does not match"):
        session.connect(Deadline(10, "SSH ready"))
    session.close()
