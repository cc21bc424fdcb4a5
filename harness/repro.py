"""Repro bundles: everything needed to see, and rerun, a failed scenario.

A bundle is a directory in the failed run's session directory:

  README.txt     what is here and the one-line rerun command
  bundle.json    the pytest node id, where the harness was, when, the verdict
  config.toml    the resolved configuration, as a --config file ([run] table)
  record.json    the scenario's result record
  guest-<id>/    per guest the test used: qemu.argv, image.json (image and
                 kernel identity), console.log, qemu.log

`harness rerun BUNDLE` runs exactly that scenario with that configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import RunConfig, Timeouts
from harness.errors import ConfigError
from harness.image import REPO_ROOT

if TYPE_CHECKING:
    from harness.guest import Guest


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def config_to_toml(config: RunConfig) -> str:
    """`config` as a --config file that RunConfig.from_toml reads back equal."""
    lines = ["[run]"]
    for f in fields(config):
        value = getattr(config, f.name)
        if value is None or isinstance(value, Timeouts):
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    lines.append("\n[run.timeouts]")
    lines += [f"{f.name} = {_toml_value(getattr(config.timeouts, f.name))}" for f in fields(Timeouts)]
    return "\n".join(lines) + "\n"


def snapshot_guest(guest: Guest, into: Path) -> None:
    """Copy what identifies and explains one guest's run (logs as they are now)."""
    into.mkdir(parents=True, exist_ok=True)
    for path in (guest.vm.console_log, guest.vm.qemu_log, guest.run_dir / "qemu.argv"):
        if path.exists():
            shutil.copyfile(path, into / path.name)
    identity = {"image": guest.image.identity, "guest_kernel": guest.facts.get("guest_kernel"),
                "accel": guest.facts.get("accel"), "vhost": guest.facts.get("vhost"),
                "qemu_version": guest.facts.get("qemu_version"), "nic_props": guest.vm.spec.nic_props,
                "run_id": guest.run_id, "timings": guest.timings, "since_start": guest.since_start}
    (into / "image.json").write_text(json.dumps(identity, indent=2, default=str) + "\n")


def write_bundle(bundle: Path, *, nodeid: str, config: RunConfig, record: dict[str, Any],
                 guest_dirs: list[Path]) -> Path:
    bundle.mkdir(parents=True, exist_ok=True)
    # Absolute paths, so the rerun works from anywhere.
    config = config.with_changes(run_dir=config.run_dir.resolve(),
                                 **{k: getattr(config, k).resolve() for k in ("image", "thresholds", "guest_netmap")
                                    if getattr(config, k) is not None})
    (bundle / "config.toml").write_text(config_to_toml(config))
    (bundle / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    meta = {"nodeid": nodeid, "rootdir": str(REPO_ROOT), "verdict": record.get("verdict"),
            "reason": record.get("reason"), "started_at": record.get("started_at"),
            "guests": [d.name for d in guest_dirs]}
    (bundle / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    command = f"harness rerun {bundle}"
    (bundle / "README.txt").write_text(
        f"Repro bundle of {nodeid}, which failed: {record.get('reason')}\n\n"
        f"Rerun exactly this scenario with this configuration:\n\n    {command}\n\n"
        "config.toml   the resolved configuration (a --config file)\n"
        "record.json   the scenario's result record\n"
        "guest-*/      per guest: qemu.argv (exact QEMU command), image.json (image, kernel, accel),\n"
        "              console.log and qemu.log as they were at the failure\n")
    return bundle


def bundle_name(nodeid: str) -> str:
    return "repro-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::")[-1])


def rerun_argv(bundle: Path) -> list[str]:
    """The pytest command that reruns the bundle's scenario."""
    try:
        meta = json.loads((bundle / "bundle.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{bundle} is not a repro bundle (bundle.json: {exc})",
                          hint="give the repro-* directory of a failed run") from None
    config = bundle / "config.toml"
    RunConfig.from_toml(config)  # one clear error now rather than inside pytest
    return [sys.executable, "-m", "pytest", meta["nodeid"], "--config", str(config), "-p", "no:cacheprovider"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness rerun", description="Rerun a failed scenario from its repro "
                                     "bundle, with the configuration it ran with.")
    parser.add_argument("bundle", type=Path, help="a repro-* directory from a failed run")
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args(argv)
    try:
        command = rerun_argv(args.bundle.resolve())
    except ConfigError as exc:
        print(f"harness rerun: error: {exc}", file=sys.stderr)
        return 2
    if args.print:
        print(" ".join(command))
        return 0
    meta = json.loads((args.bundle / "bundle.json").read_text())
    return subprocess.run(command, cwd=meta.get("rootdir") or REPO_ROOT).returncode
