"""The host-ring plan's netmap steps driven for real over the Debian guest's
serial console, with STAND-INS for netmap (test doubles: netmap cannot run
here): a mknod'd /dev/netmap and a `bridge` script that prints the lines
netmap's bridge prints for a single-port host-rings bridge (format strings of
bridge.c, as in tests/fixtures/bridge) and waits for SIGINT like bridge does.
What is tested is the harness's side: finding the program, starting it in the
background on the console, reading its ring layout, stopping it, the
open/close stress, and leaving nothing running."""

from __future__ import annotations

import pytest

from harness import host_rings
from harness.deadline import Deadline

pytestmark = pytest.mark.vm

# Perl, not sh: a program started in the background by a shell without job
# control has SIGINT ignored, and only a program (as the real C bridge does
# with signal(2)), not a shell script, can take it back.
STAND_IN_BRIDGE = r"""#!/usr/bin/perl
# STAND-IN for netmap's bridge (test double): prints bridge.c's startup lines
# for `bridge -w0 -i netmap:IF` and waits for SIGINT, then exits 0 like bridge.
$| = 1;
(my $port = $ARGV[2]) =~ s/^netmap://;
print STDERR "123.456789 main [ 269] same interface, endpoint 0 goes to host\n";
print STDERR "123.456790 main [ 291] ------- zerocopy supported\n";
print STDERR "123.456791 main [ 306] Wait 0 secs for link to come up...\n";
print STDERR "123.456792 main [ 312] Ready to go, $port 0x1/1 <-> $port 0x0/1.\n";
$SIG{INT} = sub { exit 0 };
sleep 1 while 1;
"""


@pytest.fixture
def netmap_stand_ins(guest):
    ssh = guest.ssh
    misc = ssh.run("cat /proc/misc", check=True).output.split()[::2]
    minor = next(m for m in range(250, 200, -1) if str(m) not in misc)
    ssh.run(f"mknod /dev/netmap c 10 {minor} && mkdir -p /root/netmap", check=True)
    ssh.run(f"cat > /root/netmap/bridge <<'EOF'\n{STAND_IN_BRIDGE}EOF\nchmod 755 /root/netmap/bridge", check=True)
    try:
        yield
    finally:
        ssh.run("rm -f /dev/netmap /root/netmap/bridge; pkill -f /root/netmap/bridge; true")


def test_bridge_starts_reports_host_rings_and_stops_cleanly(guest, netmap_stand_ins):
    assert host_rings.netmap_bridge_missing(guest) is None
    bridge = host_rings.NetmapBridge(guest)
    assert bridge.argv == ["/root/netmap/bridge", "-w0", "-i", f"netmap:{guest.dut_ifname}"]
    ready = bridge.start(Deadline(30, "bridge start"))
    assert (ready.a_port, ready.a_first_ring, ready.a_rings) == (guest.dut_ifname, 1, 1)
    assert (ready.b_port, ready.b_first_ring, ready.b_rings) == (guest.dut_ifname, 0, 1)
    assert ready.is_host_rings_layout and ready.same_interface
    assert bridge.running()
    bridge.stop(Deadline(10, "bridge stop"))
    assert not bridge.running()
    assert guest.ssh.run("pgrep -f /root/netmap/bridge").status != 0


def test_open_close_stress_runs_every_cycle_and_leaves_nothing(guest, netmap_stand_ins):
    guest.configure_dut()
    result = host_rings.stress_bridge(guest, 3, step_timeout=30)
    assert result == {"cycles": 3, "opened": 3, "guest_alive": True}
    assert guest.ssh.run("pgrep -f /root/netmap/bridge").status != 0


def test_a_bridge_that_dies_before_it_is_ready_is_one_clear_error(guest, netmap_stand_ins):
    guest.ssh.run("printf '#!/bin/sh\\necho \"cannot open $3\" >&2\\nexit 1\\n' > /root/netmap/bridge",
                  check=True)
    with pytest.raises(Exception, match="netmap bridge exited before it was ready") as info:
        host_rings.NetmapBridge(guest).start(Deadline(30, "bridge start"))
    assert f"cannot open netmap:{guest.dut_ifname}" in str(info.value)
