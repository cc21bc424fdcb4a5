"""The pytest plugin: options, session fixtures for the host network and a
booted guest, and a failure hook that attaches the guest's logs.

Missing preconditions (not root, no image) skip with the reason; a demanded
one (--accel kvm, --vhost on, an explicit --image) is an error. With
HARNESS_STRICT=1 (CI) every such skip is an error too, so CI cannot pass by
skipping.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from harness.config import RunConfig
from harness.errors import HarnessError, ImageError, PreconditionError, treat_sigterm_as_interrupt
from harness.guest import Guest, boot_guest, new_run_id
from harness.host_tap import HostNetwork
from harness.options import OPTIONS, config_from
from harness.repro import bundle_name, snapshot_guest, write_bundle
from harness.results import Record, ResultStore, write_json

_ACTIVE: list[Guest] = []
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_BUNDLE = pytest.StashKey[tuple[Path, list[Path]]]()


def pytest_configure(config: pytest.Config) -> None:
    # On SIGTERM pytest finalizes every fixture, as on Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        treat_sigterm_as_interrupt()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "virtio-net / netmap test harness")
    for option in OPTIONS:
        group.addoption(option.flag, **option.kwargs())


def strict_mode() -> bool:
    """HARNESS_STRICT set (CI): a missing precondition fails rather than skips."""
    return os.environ.get("HARNESS_STRICT", "") not in ("", "0")


@pytest.fixture(scope="session")
def run_config(pytestconfig: pytest.Config) -> RunConfig:
    values = {o.dest: pytestconfig.getoption(o.dest) for o in OPTIONS}
    return config_from(values)


@pytest.fixture(scope="session")
def session_dir(run_config: RunConfig, worker_id: str = "master") -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = run_config.run_dir / f"{stamp}-{new_run_id()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _demanded(config: RunConfig, exc: HarnessError) -> bool:
    if isinstance(exc, ImageError):
        return config.image is not None
    text = str(exc)
    return "--accel kvm" in text or "--vhost on" in text


@contextmanager
def _booted(config: RunConfig, run_dir: Path, request: pytest.FixtureRequest,
            nic_props: dict[str, str] | None = None) -> Iterator[Guest]:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    announce = None
    if config.show_qemu and reporter is not None:
        def announce(argv: str) -> None:
            reporter.write_line(f"QEMU: {argv}")
    try:
        cm = boot_guest(config, run_dir, nic_props=nic_props, announce=announce)
        guest = cm.__enter__()
    except (PreconditionError, ImageError) as exc:
        if _demanded(config, exc) or strict_mode():
            raise
        pytest.skip(f"cannot boot a guest here: {exc}")
    _ACTIVE.append(guest)
    try:
        yield guest
    finally:
        _ACTIVE.remove(guest)
        try:
            cm.__exit__(*sys.exc_info())
        finally:
            # Every phase's seconds, teardown included (benchmarks/soak.py reads these).
            (run_dir / "phases.json").write_text(json.dumps(guest.timings, indent=2) + "\n")


@pytest.fixture(scope="session")
def guest(run_config: RunConfig, session_dir: Path, request: pytest.FixtureRequest) -> Iterator[Guest]:
    """The default guest, booted once per session (per xdist worker)."""
    with _booted(run_config, session_dir / "guest-default", request) as booted:
        yield booted
        _keep_vm_pause(run_config, booted)


@pytest.fixture(scope="session")
def host_network(guest: Guest) -> HostNetwork:
    """The default guest's host side: namespace, bridge, TAP."""
    return guest.net


@pytest.fixture
def boot(run_config: RunConfig, session_dir: Path, request: pytest.FixtureRequest
         ) -> Iterator[Callable[..., AbstractContextManager[Guest]]]:
    """Boot a further guest for one test, e.g. with other NIC properties:
    `with boot(nic_props={"csum": "off"}) as g: ...`."""
    stack = ExitStack()
    count = 0

    def factory(*, nic_props: dict[str, str] | None = None, **changes: Any) -> AbstractContextManager[Guest]:
        nonlocal count
        count += 1
        config = run_config.with_changes(**changes)
        run_dir = session_dir / f"{request.node.name}-{count}".replace("/", "_")
        return _booted(config, run_dir, request, nic_props)

    with stack:
        yield factory


def _keep_vm_pause(config: RunConfig, guest: Guest) -> None:
    if not config.keep_vm:
        return
    if not sys.stdin.isatty():
        print("--keep-vm ignored: no terminal to wait on", file=sys.stderr)
        return
    print(f"\nguest {guest.run_id} kept up:\n"
          f"  ssh -i {guest.ssh.key.path} -p {guest.vm.ssh_port} root@127.0.0.1\n"
          f"  console: socat -,raw,echo=0 UNIX-CONNECT:{guest.vm.console_socket}\n"
          f"  host side: ip netns exec {guest.net.netns} bash\n"
          "press Enter to tear it down", file=sys.stderr)
    with suppress(EOFError):
        input()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Traffic scenarios take `frame_bytes`: one test per --frame-sizes value
    (ids are the sizes, so `-k 60` picks one)."""
    if "frame_bytes" in metafunc.fixturenames:
        values = {o.dest: metafunc.config.getoption(o.dest) for o in OPTIONS}
        sizes = config_from(values).frame_sizes
        metafunc.parametrize("frame_bytes", sizes, ids=[str(s) for s in sizes])


@pytest.fixture
def record(request: pytest.FixtureRequest, run_config: RunConfig, session_dir: Path) -> Iterator[Record]:
    """The scenario's result record. Fill it while the scenario runs; it is
    stamped with the test's verdict and written (JSON in the session
    directory, and the run directory's SQLite store) however the test ends."""
    scenario = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    callspec = getattr(request.node, "callspec", None)
    run_id = f"{session_dir.name}-{scenario}" + (f"-{callspec.id}" if callspec else "")
    rec = Record(run_id=run_id, scenario=scenario, testbed=run_config.testbed, session_id=session_dir.name)
    yield rec
    verdict, reason = _verdict(request.node.stash.get(_REPORTS, {}))
    rec.finish(verdict, reason)
    path = write_json(rec, session_dir / "records")
    with ResultStore(run_config.run_dir / "results.sqlite") as store:
        store.add(rec)
    request.node.user_properties.append(("result_record", str(path)))
    if verdict == "fail" and _BUNDLE in request.node.stash:
        bundle, guest_dirs = request.node.stash[_BUNDLE]
        write_bundle(bundle, nodeid=request.node.nodeid, config=run_config, record=rec.to_dict(),
                     guest_dirs=guest_dirs)


def _verdict(reports: dict[str, pytest.TestReport]) -> tuple[str, str | None]:
    for when in ("setup", "call"):
        report = reports.get(when)
        if report is None:
            continue
        if report.skipped:
            longrepr = report.longrepr
            return "skip", str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        if report.failed:
            return "fail", (report.longreprtext.strip().splitlines() or ["failed"])[-1][:500]
    return ("pass", None) if "call" in reports else ("fail", "the scenario did not run")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if not report.failed:
        return
    session_dir = getattr(item, "funcargs", {}).get("session_dir")
    if "record" in getattr(item, "fixturenames", ()) and session_dir is not None and _BUNDLE not in item.stash:
        bundle = session_dir / bundle_name(item.nodeid)
        guest_dirs = []
        for guest in _ACTIVE:
            guest_dirs.append(bundle / f"guest-{guest.run_id}")
            snapshot_guest(guest, guest_dirs[-1])
        item.stash[_BUNDLE] = (bundle, guest_dirs)
        report.sections.append(("repro bundle", f"{bundle}\nrerun exactly this scenario: harness rerun {bundle}"))
    for guest in list(_ACTIVE):
        report.sections.append((f"guest {guest.run_id} console log (tail of {guest.vm.console_log})",
                                guest.vm.console_tail(80)))
        report.sections.append((f"guest {guest.run_id} QEMU log (tail of {guest.vm.qemu_log})",
                                guest.vm.log_tail(30) or "(empty)"))


@pytest.hookimpl(trylast=True)  # after pytest's own sessionfinish has torn the fixtures down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing the harness made may outlive the session that made it."""
    from harness.leases import held_by

    left = held_by(os.getpid())
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "harness resources left behind by this session: " + ", ".join(left)
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
