"""The run options, declared once for both the `harness` CLI and pytest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.accel import ACCELS, VHOST_MODES
from harness.config import RunConfig
from harness.errors import ConfigError


@dataclass(frozen=True)
class Option:
    flag: str
    dest: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"dest": self.dest, "help": self.help, "default": None}
        if self.action:
            kw["action"] = self.action
        else:
            kw["type"] = self.type or str
            if self.choices:
                kw["choices"] = self.choices
        return kw


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigError(f"not a whole number: {text!r}") from None


OPTIONS = (
    Option("--guest", "guest", "guest OS profile: linux (Debian image) or freebsd (default: linux)"),
    Option("--image", "image", "guest image directory (default: images/out/<guest default>)", type=Path),
    Option("--accel", "accel", "accelerator: auto uses KVM only when a probe guest really runs on it "
           "(default: auto)", choices=ACCELS),
    Option("--vhost", "vhost", "vhost-net: on fails when /dev/vhost-net is unusable (default: auto)",
           choices=VHOST_MODES),
    Option("--queues", "queues", "virtio-net queue pairs, one TAP queue each (default: 1)", type=_int),
    Option("--vcpus", "vcpus", "guest vCPUs (default: 2)", type=_int),
    Option("--memory-mb", "memory_mb", "guest memory in MiB (default: 1024)", type=_int),
    Option("--run-dir", "run_dir", "where logs, records and results go (default: ./runs)", type=Path),
    Option("--testbed", "testbed", "name of this machine in result records (default: hostname or "
           "$HARNESS_TESTBED)"),
    Option("--config", "config", "TOML file whose [run] table sets any of these options", type=Path),
    Option("--keep-vm", "keep_vm", "after the run, keep the guest up until Enter is pressed "
           "(interactive terminals only)", action="store_true"),
    Option("--show-qemu", "show_qemu", "print the exact QEMU command line of every guest started",
           action="store_true"),
    Option("--guest-netmap", "guest_netmap", "directory with a netmap build for the Linux guest (netmap.ko, "
           "optionally virtio_net.ko, pkt-gen, bridge), installed after boot", type=Path),
    Option("--frame-sizes", "frame_sizes", "traffic scenarios: frame sizes in bytes, comma separated "
           "(default: 60)"),
    Option("--trials", "trials", "traffic scenarios: measured trials per frame size (default: 3)", type=_int),
    Option("--trial-seconds", "trial_seconds", "traffic scenarios: seconds per trial (default: 4)", type=float),
    Option("--warmup-seconds", "warmup_seconds", "traffic scenarios: warm-up before the trials (default: 1)",
           type=float),
    Option("--profile", "profile", "threshold profile from the thresholds file, or auto: the first that "
           "matches the run (default: auto)"),
    Option("--thresholds", "thresholds", "thresholds file (default: profiles/thresholds.toml)", type=Path),
    Option("--mpps-min", "mpps_min", "floor in Mpps received, overriding any profile", type=float),
    Option("--share-cpus", "share_cpus", "let perf trials run while another perf run measures (by default a "
           "second perf run waits)", action="store_true"),
)


def config_from(values: dict[str, Any]) -> RunConfig:
    """A RunConfig from parsed option values (None = not given); --config
    supplies defaults that explicit options override."""
    given = {o.dest: values.get(o.dest) for o in OPTIONS if o.dest != "config"}
    given = {k: v for k, v in given.items() if v is not None and v is not False}
    config_file = values.get("config")
    if config_file:
        return RunConfig.from_toml(Path(config_file), given)
    return RunConfig.from_mapping(given, source="options")
