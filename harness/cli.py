"""The `harness` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import __version__, doctor
from harness.errors import ConfigError, run_command, treat_sigterm_as_interrupt
from harness.image import REPO_ROOT
from harness.options import OPTIONS, config_from

SCENARIOS_DIR = REPO_ROOT / "scenarios"
ACK_FILE = REPO_ROOT / "reports" / "acknowledged.toml"
# Subcommands that bring their own argument parser: name -> module with main(argv).
PASSTHROUGH = {"report": "harness.report", "pktgen-parse": "harness.pktgen_parse", "rerun": "harness.repro",
               "ci": "harness.ci"}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        parser.add_argument(option.flag, **option.kwargs())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("doctor", help="show what this host can do (root, TAP, KVM, vhost, QEMU, images)")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--guest-netmap", type=Path, help="also check a netmap build for the Linux guest")

    p = sub.add_parser("boot", help="boot a guest on a private TAP/bridge network, for a look or one command")
    _add_run_options(p)
    p.add_argument("--command", dest="guest_command", help="run this in the guest over SSH, print, tear down")
    p.add_argument("--console-command", help="run this on the guest's serial console, print, tear down")

    sub.add_parser("report", help="the nightly regression report over result stores and records "
                                  "(see `harness report --help`)")
    sub.add_parser("ci", help="the CI job: host check, image, scenarios, nightly report (see `harness ci --help`)")
    sub.add_parser("rerun", help="rerun a failed scenario from its repro bundle (`harness rerun BUNDLE`)")
    sub.add_parser("pktgen-parse", help="print a saved netmap pkt-gen log as JSON (`harness pktgen-parse FILE`)")

    p = sub.add_parser("image", help="build guest images: `harness image build linux|freebsd [options]`")
    p.add_argument("action", choices=["build"])
    p.add_argument("guest", choices=["linux", "freebsd"])
    p.add_argument("image_args", nargs=argparse.REMAINDER,
                   help="for freebsd: see `harness image build freebsd --help` (--dry-run, --kernel, --patch...)")

    p = sub.add_parser("run", help="the main job: run scenarios with pytest (default: all in scenarios/), "
                                   "then the report")
    _add_run_options(p)
    p.add_argument("scenarios", nargs="*", help="scenario names, e.g. smoke guest_tx (default: all)")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments, as one string")
    p.add_argument("--report", type=Path, help="where the report goes (default: <run dir>/report.html)")
    p.add_argument("--no-report", action="store_true", help="run the scenarios only")
    return parser


def scenario_paths(names: Sequence[str]) -> list[str]:
    available = sorted(p.stem.removeprefix("test_") for p in SCENARIOS_DIR.glob("test_*.py"))
    if not names:
        return [str(SCENARIOS_DIR)]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"unknown scenario {', '.join(map(repr, unknown))}",
                          hint=f"scenarios are: {', '.join(available)}")
    return [str(SCENARIOS_DIR / f"test_{n}.py") for n in names]


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.run_checks(args.qemu, guest_netmap=args.guest_netmap)
    print(doctor.format_table(checks))
    ok = doctor.tcg_path_ok(checks)
    print("\nthe TCG path can run here" if ok else "\nthe harness cannot run here: see the 'no' lines above")
    return 0 if ok else 1


def cmd_boot(args: argparse.Namespace) -> int:
    from harness.guest import boot_guest

    config = config_from(vars(args))
    run_dir = config.run_dir / "boot"
    announce = (lambda argv: print(f"QEMU: {argv}", flush=True)) if config.show_qemu else None
    with boot_guest(config, run_dir, announce=announce) as guest:
        print(f"guest up: console in {guest.since_start['console_ready']:.1f} s, "
              f"SSH in {guest.since_start['ssh_ready']:.1f} s, accelerator {guest.facts['accel']}", flush=True)
        if args.console_command:
            result = guest.console.run(args.console_command, timeout=config.timeouts.trial)
        elif args.guest_command:
            result = guest.ssh.run(args.guest_command, timeout=config.timeouts.trial)
        else:
            print(f"  ssh -i {guest.ssh.key.path} -p {guest.vm.ssh_port} root@127.0.0.1\n"
                  f"  host side: ip netns exec {guest.net.netns} bash\n"
                  f"  console log: {guest.vm.console_log}\nCtrl-C to tear down", flush=True)
            _wait_for_interrupt()
            return 0
        sys.stdout.write(result.output)
        return result.status




def _wait_for_interrupt() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()


def cmd_image(args: argparse.Namespace) -> int:
    if args.guest == "freebsd":
        from harness import freebsd_image

        return freebsd_image.main(args.image_args)
    import subprocess

    return subprocess.run(["make", "-C", str(REPO_ROOT / "images"), "linux", *args.image_args]).returncode


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the scenarios with pytest (JUnit XML in the run
    directory), then the report over the run directory's results store."""
    import shlex

    import pytest

    config = config_from(vars(args))  # validate before pytest starts
    from harness import thresholds

    profiles = thresholds.load(config.thresholds)
    if config.profile != "auto":
        thresholds.select(profiles, config.profile, {})
    config.run_dir.mkdir(parents=True, exist_ok=True)
    pytest_args = [*scenario_paths(args.scenarios), "--junitxml", str(config.run_dir / "junit.xml")]
    for option in OPTIONS:
        value = getattr(args, option.dest)
        if value is None or value is False:
            continue
        pytest_args += [option.flag] if value is True else [option.flag, str(value)]
    pytest_args += shlex.split(args.pytest_args)
    status = int(pytest.main(pytest_args))
    if args.no_report:
        return status
    store = config.run_dir / "results.sqlite"
    if not store.exists():
        print(f"harness: no results store at {store}: no report", file=sys.stderr)
        return status or 2
    from harness import report

    out = args.report or config.run_dir / "report.html"
    report_args = [str(store), "--out", str(out), "--markdown", str(out.with_suffix(".md"))]
    if ACK_FILE.exists():
        report_args += ["--ack", str(ACK_FILE)]
    report_status = report.main(report_args)
    print(f"report: {out} (markdown summary {out.with_suffix('.md')})")
    return status or report_status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    treat_sigterm_as_interrupt()
    if argv[:1] and argv[0] in PASSTHROUGH:  # commands with parsers of their own
        import importlib

        return int(importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handlers = {"doctor": cmd_doctor, "boot": cmd_boot, "image": cmd_image, "run": cmd_run}
    return run_command("harness", lambda: handlers[args.command](args))


if __name__ == "__main__":
    raise SystemExit(main())

