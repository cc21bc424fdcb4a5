"""The host side of the datapath: a private network namespace holding a Linux
bridge (with the host's address) and the TAP device(s) QEMU's virtio-net uses.

Nothing is created in, or addressed in, the root namespace. QEMU itself stays
in the root namespace: the TAP queues are opened inside the namespace and
their file descriptors are handed to QEMU (`-netdev tap,fds=...`), as libvirt
does. Counters are read through netlink (pyroute2), not by parsing `ip`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import logging
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns

from harness import ethtool, leases
from harness.command import CommandResult
from harness.deadline import Deadline
from harness.errors import ConfigError, HarnessError, PhaseTimeout, PreconditionError

log = logging.getLogger(__name__)
T = TypeVar("T")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
CLONE_NEWNET = 0x40000000
BR_STATE_FORWARDING = 3  # include/uapi/linux/if_bridge.h
IFNAMSIZ = 16

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a short-lived thread that has entered namespace `name`.

    setns() moves only the calling thread, so the rest of the process stays
    where it is. File descriptors opened there (TAP queues, sockets) keep
    belonging to that namespace after the thread ends.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def netlink_in(netns_name: str) -> IPRoute:
    """An rtnetlink handle in namespace `netns_name`, its socket opened there by
    a thread (pyroute2's own IPRoute(netns=...) forks a helper process)."""
    sock = in_netns(netns_name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0))
    return IPRoute(use_socket=sock)


def open_tap_queue(ifname: str) -> int:
    """Open (creating on first use) one queue of multiqueue TAP `ifname` in the
    calling thread's namespace; the device lives while a queue fd is open."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class Counters:
    """Interface counters at one instant (netlink IFLA_STATS64 names)."""

    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    tx_errors: int = 0

    def __sub__(self, earlier: Counters) -> Counters:
        return Counters(**{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                           for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_host() -> None:
    """Fail with one clear error when this host cannot make a test network."""
    if os.geteuid() != 0:
        raise PreconditionError(
            "the harness must run as root (it creates network namespaces, bridges and TAPs)",
            hint="run it with sudo, or as root in CI")
    if not os.path.exists("/dev/net/tun"):
        raise PreconditionError(
            "/dev/net/tun is missing, so no TAP device can be made",
            hint="load the tun module (modprobe tun) or give the container /dev/net/tun")
    if shutil.which("ip") is None:
        raise PreconditionError("the 'ip' command (iproute2) is missing",
                                hint="apt-get install iproute2")


class HostNetwork:
    """Namespace + bridge + TAP(s) for one run. A context manager; close() is
    idempotent and removes everything it made."""

    def __init__(self, run_id: str, *, taps: int = 1, queues: int = 1,
                 bridge_cidr: str = "10.0.0.2/24") -> None:
        if not isinstance(queues, int) or queues < 1:
            raise ConfigError(f"queues must be a whole number of at least 1, not {queues!r}",
                              hint="use --queues 1 for a single queue pair")
        if not isinstance(taps, int) or not 1 <= taps <= 99:
            raise ConfigError(f"taps must be between 1 and 99, not {taps!r}")
        if not run_id.isalnum() or len(run_id) > 10:
            raise ConfigError(f"run id must be at most 10 letters or digits, not {run_id!r}")
        self.run_id = run_id
        self.queues = queues
        self.bridge_cidr = bridge_cidr
        self.netns = f"{leases.NETNS_PREFIX}{run_id}"
        self.bridge = f"hb{run_id}"
        self.taps = [f"ht{run_id}.{i}" for i in range(taps)]
        self._fds: dict[str, list[int]] = {}
        self._ipr: IPRoute | None = None
        # pyroute2 sockets belong to the thread that made them; other threads
        # (a watcher reading counters) get their own.
        self._thread_iprs: dict[int, IPRoute] = {}
        self._lock = threading.Lock()
        self._lease: leases.Lease | None = None

    @property
    def bridge_ip(self) -> str:
        return self.bridge_cidr.split("/")[0]

    # -- lifetime ---------------------------------------------------------
    def __enter__(self) -> HostNetwork:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        check_host()
        leases.sweep()
        self._lease = leases.take("netns", self.netns, run_id=self.run_id)
        try:
            # iproute2 makes the namespace (it handles the shared /run/netns
            # mount race); pyroute2's own netns.create forks a child it kills
            # after a short timeout, which a loaded host can exceed.
            subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True, timeout=30)
            in_netns(self.netns, self._quiet_namespace)
            # The netlink socket is opened inside the namespace by a thread.
            self._ipr = self._open_netlink()
            ipr = self._ipr
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname=self.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0)
            bridge_index = ipr.link_lookup(ifname=self.bridge)[0]
            address, prefix = self.bridge_cidr.split("/")
            ipr.addr("add", index=bridge_index, address=address, prefixlen=int(prefix))
            ipr.link("set", index=bridge_index, state="up")
            for tap in self.taps:
                self._fds[tap] = in_netns(self.netns, functools.partial(self._open_queues, tap))
                index = ipr.link_lookup(ifname=tap)[0]
                ipr.link("set", index=index, master=bridge_index, state="up")
            log.info("host network up: netns %s, bridge %s (%s), taps %s x %d queues",
                     self.netns, self.bridge, self.bridge_cidr, ",".join(self.taps), self.queues)
        except BaseException:
            self.close()
            raise

    def _open_queues(self, tap: str) -> list[int]:
        return [open_tap_queue(tap) for _ in range(self.queues)]

    @staticmethod
    def _quiet_namespace() -> None:
        # No IPv6 autoconfiguration chatter (RS, MLD, DAD) on the test links:
        # every packet on them should be one the scenario sent.
        for conf in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                f.write("1")

    def close(self) -> None:
        for fds in self._fds.values():
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds.clear()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        with self._lock:
            for ipr in self._thread_iprs.values():
                with contextlib.suppress(Exception):
                    ipr.close()
            self._thread_iprs.clear()
        if self._lease is not None:
            if self.netns in netns.listnetns():
                netns.remove(self.netns)
            self._lease.release()
            self._lease = None

    # -- use ------------------------------------------------------------
    def tap_fds(self, index: int = 0) -> list[int]:
        """The queue fds of TAP `index`, to pass to QEMU."""
        return list(self._fds[self.taps[index]])

    def _open_netlink(self) -> IPRoute:
        return netlink_in(self.netns)

    def _require_open(self) -> IPRoute:
        if self._ipr is None:
            raise HarnessError(f"host network {self.netns} is not open")
        if threading.current_thread() is threading.main_thread():
            return self._ipr
        with self._lock:
            ident = threading.get_ident()
            if ident not in self._thread_iprs:
                self._thread_iprs[ident] = self._open_netlink()
            return self._thread_iprs[ident]

    def counters(self, ifname: str) -> Counters:
        ipr = self._require_open()
        links = ipr.link("get", ifname=ifname)
        stats = links[0].get("IFLA_STATS64")
        return Counters(**{f.name: int(stats.get(f.name, 0)) for f in fields(Counters)})

    def link_state(self, ifname: str, up: bool, timeout: float = 10.0) -> None:
        """Set `ifname` down or up. Up returns only once the bridge forwards on
        the port: the kernel enables a bridge port when the link's operstate
        turns up, which linkwatch does asynchronously, and until then frames
        to the port are dropped."""
        ipr = self._require_open()
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="up" if up else "down")
        if up:
            Deadline(timeout, f"link {ifname} up").wait_for(
                lambda: self.port_forwarding(ifname), f"{ifname} to forward in bridge {self.bridge}")

    def port_forwarding(self, ifname: str) -> bool:
        """True when `ifname` is up and, if it is a bridge port, forwarding."""
        link = self._require_open().link("get", ifname=ifname)[0]
        if link.get("IFLA_OPERSTATE") not in ("UP", "UNKNOWN"):
            return False
        info = link.get("IFLA_LINKINFO")
        slave = info.get("IFLA_INFO_SLAVE_DATA") if info is not None else None
        if slave is None:
            return True
        return slave.get("IFLA_BRPORT_STATE") == BR_STATE_FORWARDING

    def command(self, argv: list[str]) -> list[str]:
        """`argv` made to run inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], *, timeout: float, check: bool = True,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True,
                              timeout=timeout, check=check, **kwargs)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.command(argv), **kwargs)

    def spawn(self, argv: list[str], log_path: Path) -> HostProcess:
        """Start `argv` in the namespace in a session of its own, output to
        `log_path` (never an unread pipe)."""
        return HostProcess(self.command(argv), log_path)

    @property
    def shell(self) -> HostShell:
        """A Runner for shell commands inside the namespace."""
        return HostShell(self)

    def set_offloads(self, ifname: str, **features: bool) -> dict[str, bool]:
        """Switch ethtool features of `ifname` (tx, sg, tso, gso, gro...) and
        return what the device reports afterwards for those features."""
        args: list[str] = []
        for name, on in features.items():
            args += [name, "on" if on else "off"]
        self.run(["ethtool", "-K", ifname, *args], timeout=10)
        return self.offloads(ifname)

    def offloads(self, ifname: str) -> dict[str, bool]:
        """The main offloads of `ifname` (rx, tx, sg, tso, gso, gro, lro) as
        `ethtool -k` reports them."""
        return ethtool.offload_states(self.run(["ethtool", "-k", ifname], timeout=10).stdout)


class HostShell:
    """Runs shell commands inside the host network's namespace; the same
    Runner interface as the guest's console and SSH."""

    def __init__(self, network: HostNetwork) -> None:
        self.network = network

    def run(self, command: str, timeout: float = 30.0, *, check: bool = False) -> CommandResult:
        start = time.monotonic()
        try:
            proc = self.network.run(["sh", "-c", command], timeout=timeout, check=False,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PhaseTimeout(f"host command: {command[:60]}", timeout) from None
        result = CommandResult(command, proc.returncode, proc.stdout + proc.stderr,
                               f"host netns {self.network.netns}", time.monotonic() - start)
        return result.check() if check else result


class HostProcess:
    """A background program in the host namespace (pkt-gen, trafgen, nc):
    interrupt() sends SIGINT to its whole process group, close() kills it."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def done(self) -> bool:
        return self.proc.poll() is not None

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def wait(self, deadline: Deadline) -> CommandResult:
        start = time.monotonic()
        deadline.wait_for(lambda: self.done, f"host process {shlex.join(self.argv[4:])[:60]!r} to exit")
        return CommandResult(shlex.join(self.argv), self.proc.returncode, self.output, "host",
                             time.monotonic() - start)

    def close(self) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait()
