"""Smoke: the default guest boots on a TAP in a private bridge, answers ping
from the host namespace, takes commands over console and SSH, and its
interface counters agree with the host TAP's for the ping traffic. The
record keeps the boot's phase times."""

from harness.ping import parse_ping
from harness.results import Metric

PINGS = 20


def test_smoke(guest, record):
    record.guest_os, record.accel, record.vhost = guest.profile.name, guest.facts["accel"], guest.facts["vhost"]
    record.engines = {"sender": "ping", "receiver": "guest-stack"}
    record.threshold = {"applied": False, "reason": "smoke has no rate floor"}
    record.provenance = guest.provenance()
    record.details["boot_phases"] = dict(guest.timings)
    record.details["since_qemu_start"] = dict(guest.since_start)
    record.metrics = [Metric("console_ready_s", "s", "lower", guest.since_start["console_ready"]),
                      Metric("ssh_ready_s", "s", "lower", guest.since_start["ssh_ready"])]
    guest.configure_dut()
    host_before, guest_before = guest.host_counters(), guest.dut_counters()

    out = guest.net.run(["ping", "-c", str(PINGS), "-i", "0.2", "-W", "2", guest.ip], timeout=60, check=False)
    ping = parse_ping(out.stdout)
    record.details["ping"] = ping.__dict__
    assert ping.received == PINGS and ping.loss_percent == 0.0, out.stdout

    host = guest.host_counters() - host_before
    dut = guest.dut_counters() - guest_before
    record.details["counters"] = {"host_tap": host.as_dict(), "guest": dut.as_dict()}
    # What the host sent into the TAP is what the guest's NIC received, and back.
    assert dut.rx_packets == host.tx_packets >= PINGS
    assert host.rx_packets == dut.tx_packets >= PINGS
    assert dut.rx_bytes == host.tx_bytes and host.rx_bytes == dut.tx_bytes

    console = guest.console.run("uname -s; echo $((6 * 7))", check=True)
    assert console.output == "Linux\n42\n" if guest.profile.name == "linux" else console.output.endswith("42\n")
    ssh = guest.ssh.run(f"ifconfig {guest.dut_ifname} 2>/dev/null || cat /sys/class/net/{guest.dut_ifname}/address",
                        check=True)
    assert "52:54:00:12:34:01" in ssh.output
