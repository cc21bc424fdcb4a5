"""`harness ci`: what a CI job on a KVM runner does, in order, in one command.

    harness ci [SCENARIO...] [--config ci/harness-ci.toml] [--out DIR] [--matrix] [--skip-download]
               [--image-cache DIR] [--guest linux|freebsd] [--kernel stock|src|PATH] [--patch FILE]
               [--src DIR] [--profile NAME] [other `harness run` options...]
    harness ci cache-key [same options]          print the guest image's cache key (and $GITHUB_OUTPUT)
    harness ci report --out DIR --history FILE.sqlite [--source SOURCE...]
                                                 nightly: add the run's records to the history, report
    harness ci history-add HISTORY.sqlite SOURCE...   add records (stores or JSON directories) to a store

The job, each step printed with its name, start time and duration:
  host-check  `harness doctor`'s checks; fails fast, with the reason, when KVM (--accel kvm) or
              vhost-net (--vhost on) is demanded and missing
  image       the guest image's cache key (guest OS, version, inputs hash, kernel under test and
              patch hash) written to OUT/cache-key.txt and $GITHUB_OUTPUT, then the image built or
              found up to date (make -C images linux, or harness image build freebsd)
  scenarios   `harness run` per leg (the config's [run], and with --matrix each [[matrix]] leg), into
              OUT/run/<leg>/: JUnit XML, JSON records, results store, console and QEMU logs, repro
              bundles; a markdown summary to OUT/summary.md and $GITHUB_STEP_SUMMARY
`harness ci report` is the nightly's last step: history and report over it.

Exit status: 0 all passed (and nothing regressed); 1 a scenario failed, or (report) a confirmed
regression that is not acknowledged; 2 bad input, or a step before the scenarios failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from harness.config import RunConfig
from harness.errors import ConfigError, HarnessError, run_command
from harness.image import REPO_ROOT, GuestImage, default_image, images_dir
from harness.options import OPTIONS

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
DEFAULT_CONFIG = REPO_ROOT / "ci" / "harness-ci.toml"
ACK_FILE = REPO_ROOT / "reports" / "acknowledged.toml"
DEBIAN_INPUTS = REPO_ROOT / "images" / "debian"
FREEBSD_PROVISION_CODE = REPO_ROOT / "harness" / "freebsd_provision.py"
MAIN_LEG = "main"

# `harness run` options that `harness ci` passes through (the run directory is OUT/run/<leg>;
# --config here is the CI config, whose [run] table plays the part of harness's --config).
RUN_OPTIONS = tuple(o for o in OPTIONS if o.dest not in ("run_dir", "config", "keep_vm"))
PATH_KEYS = ("image", "thresholds", "guest_netmap")
IMAGE_KEYS = ("version", "arch", "flavour", "kernel", "patch", "src", "kernconf", "tunables")
TOP_KEYS = ("scenarios", "image", "run", "matrix")
LEG_FIXED = ("guest", "image")   # one image per job: a matrix leg cannot change these


class StepFailed(Exception):
    """A step failed; the message is printed, `status` is the exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


# -- the CI config --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSpec:
    """The guest image a job needs, and for FreeBSD the kernel under test."""

    guest: str
    directory: Path
    given: bool = False                 # the run names its image (--image): not built here
    version: str = "14.3"
    arch: str = "amd64"
    flavour: str = "basic-ci"
    kernel: str = "stock"               # stock | src | a kernel directory | a kernel.txz
    patch: Path | None = None
    src: Path | None = None
    kernconf: str = "GENERIC"
    tunables: tuple[str, ...] = ()

    @property
    def kernel_kind(self) -> str:
        if self.patch is not None and self.kernel == "stock":
            return "src"
        return self.kernel if self.kernel in ("stock", "src") else "prebuilt"

    def build_request(self) -> Any:
        """The validated harness.freebsd_image.BuildRequest (FreeBSD only)."""
        from harness.freebsd_image import BuildRequest, parse_tunable, validate

        kernel = "src" if self.patch is not None and self.kernel == "stock" else self.kernel
        return validate(BuildRequest(version=self.version, arch=self.arch, flavour=self.flavour, kernel=kernel,
                                     src=self.src, patch=self.patch, kernconf=self.kernconf,
                                     tunables=tuple(parse_tunable(t) for t in self.tunables),
                                     out=self.directory))

    def describe(self) -> str:
        if self.given:
            return f"the given image {self.directory}"
        if self.guest == "linux":
            return "Debian 12 (stock Debian cloud kernel), built from Debian packages"
        from harness.freebsd_image import kernel_description

        return f"FreeBSD {self.version}-RELEASE {self.flavour}, kernel: {kernel_description(self.build_request())}"


@dataclass(frozen=True)
class Leg:
    """One `harness run`: the [run] values (raw, as TOML would hold them) and the scenarios."""

    name: str
    run: dict[str, Any]
    config: RunConfig
    scenarios: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    image: ImageSpec
    legs: tuple[Leg, ...]
    config_file: Path | None
    skip_download: bool = False
    strict: bool = True
    notes: tuple[str, ...] = ()


def load_ci_config(path: Path) -> dict[str, Any]:
    """Read a CI config file (ci/harness-ci.toml) and check its shape; one error per bad key."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the CI config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the CI config {path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}", hint=f"known keys: {', '.join(TOP_KEYS)}")
    scenarios = data.get("scenarios", [])
    if not isinstance(scenarios, list) or not all(isinstance(s, str) and s for s in scenarios):
        raise ConfigError(f"{path}: scenarios must be a list of scenario names, not {scenarios!r}")
    for table in ("image", "run"):
        if not isinstance(data.get(table, {}), dict):
            raise ConfigError(f"{path}: {table} must be a table ([{table}])")
    for key in data.get("image", {}):
        if key not in IMAGE_KEYS:
            raise ConfigError(f"{path}: [image] has unknown key {key!r}", hint=f"known keys: {', '.join(IMAGE_KEYS)}")
    tunables = data.get("image", {}).get("tunables", [])
    if not isinstance(tunables, list) or not all(isinstance(t, str) for t in tunables):
        raise ConfigError(f"{path}: [image] tunables must be a list of \"key=value\" strings")
    matrix = data.get("matrix", [])
    if not isinstance(matrix, list) or not all(isinstance(leg, dict) for leg in matrix):
        raise ConfigError(f"{path}: matrix must be an array of tables ([[matrix]])")
    names = [MAIN_LEG]
    for number, leg in enumerate(matrix, 1):
        name = leg.get("name")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{path}: matrix leg {number} needs a name of letters, digits, - and _, "
                              f"not {name!r}")
        if name in names:
            raise ConfigError(f"{path}: matrix leg name {name!r} is used twice (or is {MAIN_LEG!r})")
        names.append(name)
        for key in LEG_FIXED:
            if key in leg:
                raise ConfigError(f"{path}: matrix leg {name!r} sets {key!r}, which cannot vary within one job "
                                  "(one image per job)", hint="use another CI config file (--config) for it")
        if "scenarios" in leg and (not isinstance(leg["scenarios"], list)
                                   or not all(isinstance(s, str) for s in leg["scenarios"])):
            raise ConfigError(f"{path}: matrix leg {name!r}: scenarios must be a list of names")
    return data


def _resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path-valued run keys absolute (harness run runs in the repository root)."""
    out = dict(values)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str | Path):
            out[key] = str((base / out[key]).resolve())
    return out


def _cli_run_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option in RUN_OPTIONS:
        value = getattr(args, option.dest, None)
        if value is None or value is False:
            continue
        values[option.dest] = str(value) if isinstance(value, Path) else value
    return _resolve_paths(values, Path.cwd())


def check_scenarios(names: Sequence[str]) -> None:
    """`harness run`'s own check: unknown scenario names are one clear error."""
    from harness.cli import scenario_paths

    scenario_paths(names)


def check_profile(config: RunConfig) -> None:
    from harness import thresholds

    profiles = thresholds.load(config.thresholds)
    if config.profile != "auto" and config.profile not in profiles:
        raise ConfigError(f"unknown threshold profile {config.profile!r}",
                          hint=f"profiles in {config.thresholds or thresholds.DEFAULT_FILE} are: "
                               f"{', '.join(profiles)}, auto")


def plan_from(args: argparse.Namespace) -> Plan:
    """The job from the CI config and the command line (which wins), every input checked."""
    from harness.guests import get_profile

    config_file: Path | None = args.config
    if config_file is None and DEFAULT_CONFIG.is_file():
        config_file = DEFAULT_CONFIG
    data = load_ci_config(config_file) if config_file is not None else {}
    source = str(config_file) if config_file else "options"

    cli_run = _cli_run_values(args)
    base_run = {**_resolve_paths(data.get("run", {}), REPO_ROOT)}
    scenarios = tuple(args.scenarios or data.get("scenarios", []))

    legs: list[Leg] = []
    leg_tables = [{"name": MAIN_LEG}] + (data.get("matrix", []) if args.matrix else [])
    for table in leg_tables:
        name = table["name"]
        changes = {k: v for k, v in table.items() if k not in ("name", "scenarios")}
        run = {**base_run, **_resolve_paths(changes, REPO_ROOT), **cli_run}
        where = source if name == MAIN_LEG else f"{source}: matrix leg {name!r}"
        config = RunConfig.from_mapping(run, source=where)
        get_profile(config.guest)
        check_profile(config)
        leg_scenarios = tuple(args.scenarios or table.get("scenarios", scenarios))
        check_scenarios(leg_scenarios)
        legs.append(Leg(name, run, config, leg_scenarios))

    main_config = legs[0].config
    image = image_spec(main_config, data.get("image", {}), args)
    notes = []
    if image.guest == "freebsd" and not image.given:
        image.build_request()   # validates kernel, patch, src, tunables
    elif image.guest != "freebsd" and data.get("image"):
        notes.append(f"the [image] table of {source} is for the FreeBSD guest: not used for the {image.guest} guest")
    if args.image_cache is not None and not image.given:
        # One directory per cache key, kept between jobs (a self-hosted runner's disk).
        key = cache_key(image).key
        image = replace(image, directory=args.image_cache.resolve() / key / image.directory.name)
        notes.append(f"image cache {args.image_cache}: this job's image is {image.directory}")
    return Plan(image, tuple(legs), config_file, skip_download=args.skip_download, strict=not args.no_strict,
                notes=tuple(notes))


def image_spec(config: RunConfig, table: dict[str, Any], args: argparse.Namespace) -> ImageSpec:
    """The image from the config's [image] table, with --kernel/--patch/--src/--freebsd-version on top."""
    guest = config.guest
    cli_kernel = {k: v for k, v in (("kernel", args.kernel), ("patch", args.patch), ("src", args.src),
                                    ("freebsd_version", args.freebsd_version)) if v is not None}
    if guest != "freebsd":
        if cli_kernel:
            flags = "/".join(f"--{k.replace('_', '-')}" for k in cli_kernel)
            raise ConfigError(f"{flags} {'applies' if len(cli_kernel) == 1 else 'apply'} to the FreeBSD guest's "
                              f"image; the {guest} guest runs its image's own kernel",
                              hint="use --guest freebsd, or --guest-netmap DIR for a netmap build in a Linux guest")
        directory = config.image or default_image(guest)
        return ImageSpec(guest, Path(directory), given=config.image is not None)
    values: dict[str, Any] = {k: v for k, v in table.items() if v not in ("", None)}
    for key in ("patch", "src"):
        if key in values:
            values[key] = (REPO_ROOT / values[key]).resolve()
    kernel = values.get("kernel", "stock")
    if kernel not in ("stock", "src"):
        values["kernel"] = str((REPO_ROOT / kernel).resolve())
    for key, value in cli_kernel.items():
        if key in ("patch", "src"):
            values[key] = Path(value).resolve()
        elif key == "kernel" and value not in ("stock", "src"):
            values[key] = str(Path(value).resolve())
        elif key == "freebsd_version":
            values["version"] = value
        else:
            values[key] = value
    if "kernel" in cli_kernel and "patch" not in cli_kernel and cli_kernel["kernel"] != "src":
        values.pop("patch", None)     # --kernel stock|PATH on the command line drops the config's patch
    if "tunables" in values:
        values["tunables"] = tuple(values["tunables"])
    from harness.freebsd_image import DEFAULT_VERSION

    version = str(values.get("version", DEFAULT_VERSION))
    values["version"] = version
    directory = Path(config.image) if config.image else images_dir() / f"freebsd-{version}"
    return ImageSpec(guest, directory, given=config.image is not None, **values)


# -- the image cache key ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheKey:
    key: str
    path: Path
    parts: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def debian_inputs_hash(directory: Path = DEBIAN_INPUTS) -> str:
    """images/debian/build.sh's inputs hash, computed the same way:
    `find . -type f ! -name '*~' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16`."""
    files = sorted((p for p in directory.rglob("*") if p.is_file() and not p.name.endswith("~")),
                   key=lambda p: ("./" + p.relative_to(directory).as_posix()).encode())
    listing = "".join(f"{_sha256(p)}  ./{p.relative_to(directory).as_posix()}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _kernel_fingerprint(path: Path) -> str:
    if path.is_dir():
        modules = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        return hashlib.sha256((_sha256(path / "kernel") + repr(modules)).encode()).hexdigest()
    return _sha256(path)


def cache_key(spec: ImageSpec) -> CacheKey:
    """The key a CI cache should keep the built image under: guest OS, version, the inputs hash
    the image build itself uses to decide it is up to date, and the kernel under test (with the
    patch's hash). A FreeBSD RELEASE image never changes, so its version stands for its checksum."""
    if spec.given:
        manifest = spec.directory / "manifest.json"
        digest = _sha256(manifest)[:16] if manifest.is_file() else hashlib.sha256(
            str(spec.directory).encode()).hexdigest()[:16]
        return CacheKey(f"harness-image-{spec.guest}-given-{digest}", spec.directory, {"given": str(spec.directory)})
    if spec.guest == "linux":
        inputs = debian_inputs_hash()
        return CacheKey(f"harness-image-linux-debian-12-kernel-stock-{inputs}", spec.directory,
                        {"guest_os": "linux", "distro": "debian-12", "kernel": "stock", "inputs_hash": inputs})
    req = spec.build_request()
    parts: dict[str, Any] = {
        "guest_os": "freebsd", "version": req.version, "arch": req.arch, "flavour": req.flavour,
        "kernel": req.kernel_kind, "kernconf": req.kernconf if req.kernel_kind == "src" else None,
        "tunables": [f"{k}={v}" for k, v in req.tunables], "disk_bytes": req.disk_bytes,
        "provisioning": _sha256(FREEBSD_PROVISION_CODE),
        "patch_sha256": _sha256(req.patch) if req.patch else None,
        "prebuilt_sha256": _kernel_fingerprint(req.kernel_path) if req.kernel_path else None,
        "src": str(req.src) if req.src else None,
    }
    inputs = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    kernel = req.kernel_kind
    if parts["patch_sha256"]:
        kernel += f"-patch-{parts['patch_sha256'][:12]}"
    if parts["prebuilt_sha256"]:
        kernel += f"-{parts['prebuilt_sha256'][:12]}"
    if req.src:
        kernel += "-srctree"
    key = f"harness-image-freebsd-{req.version}-{req.arch}-{req.flavour}-kernel-{kernel}-{inputs}"
    return CacheKey(key, spec.directory, {**parts, "inputs_hash": inputs})


def _cache_path_for_ci(path: Path) -> str:
    """The path as actions/cache wants it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _append(path: str | Path | None, text: str) -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


# -- printing the steps -----------------------------------------------------------------------------
@dataclass
class StepRecord:
    name: str
    status: str = "running"
    seconds: float = 0.0
    detail: str = ""
    started_at: str = ""


class Steps:
    """Prints each step with its name, start time and duration; keeps them for ci.json."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.records: list[StepRecord] = []

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def skip(self, what: str, reason: str) -> None:
        """A part of the job that does not run here, and why."""
        self.say(f"  skip: {what}: {reason}")

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[StepRecord]:
        now = datetime.now(UTC)
        record = StepRecord(name, started_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"))
        self.records.append(record)
        self.say(f"\n== harness ci: {name} ({what}), started {now:%H:%M:%S} UTC")
        start = time.monotonic()
        try:
            yield record
        except StepFailed as exc:
            record.status, record.detail = "failed", str(exc)
            raise
        except HarnessError as exc:
            record.status, record.detail = "failed", str(exc)
            raise StepFailed(str(exc)) from exc
        except BaseException as exc:
            record.status, record.detail = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record.seconds = round(time.monotonic() - start, 1)
            if record.status == "running":
                record.status = "ok"
            self.say(f"== harness ci: {name}: {record.status} in {record.seconds:.1f} s"
                     + (f": {record.detail}" if record.detail and record.status != "ok" else ""))


# -- step 1: the host ---------------------------------------------------------------------------------
def step_host_check(plan: Plan, steps: Steps, out: Path) -> None:
    from harness import doctor

    qemu = plan.legs[0].config.qemu
    checks = doctor.run_checks(qemu)
    table = doctor.format_table(checks)
    steps.say(table)
    (out / "doctor.txt").write_text(table + "\n")
    missing = [c for c in checks if c.needed_for_tcg and not c.ok]
    if missing:
        raise StepFailed("this host cannot run the harness: " + "; ".join(f"{c.name}: {c.detail}" for c in missing))
    by_name = {c.name: c for c in checks}
    kvm = by_name.get("KVM")
    kvm_detail = kvm.detail if kvm else "not probed"
    accels = sorted({leg.config.accel for leg in plan.legs})
    if "kvm" in accels:
        if kvm is None or not kvm.ok:
            raise StepFailed(f"KVM is demanded (--accel kvm) but not usable here: {kvm_detail}")
        steps.say(f"  KVM: demanded (--accel kvm) and usable: {kvm_detail}")
    elif accels == ["tcg"]:
        steps.skip("KVM", f"not demanded (--accel tcg): the guests run under TCG. This host: {kvm_detail}")
    elif kvm is not None and kvm.ok:
        steps.say(f"  KVM: usable, --accel auto will use it: {kvm_detail}")
    else:
        steps.skip("KVM", f"not usable here and not demanded (--accel auto falls back to TCG): {kvm_detail}")
    vhost = by_name["vhost-net"]
    modes = sorted({leg.config.vhost for leg in plan.legs})
    if "on" in modes:
        if not vhost.ok:
            raise StepFailed(f"vhost-net is demanded (--vhost on) but not usable here: {vhost.detail}")
        steps.say(f"  vhost-net: demanded (--vhost on) and usable: {vhost.detail}")
    elif vhost.ok:
        steps.say(f"  vhost-net: usable ({vhost.detail}); --vhost {'/'.join(modes)}")
    else:
        steps.skip("vhost-net", f"not demanded (--vhost {'/'.join(modes)}): {vhost.detail}")


# -- step 2: the image ----------------------------------------------------------------------------------
def _tee(argv: Sequence[str], log_path: Path, steps: Steps, env: dict[str, str] | None = None) -> int:
    """Run argv, its output both printed and written to log_path; its exit status."""
    steps.say(f"  $ {' '.join(argv)}  (output also in {log_path})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as logfile:
        proc = subprocess.Popen(list(argv), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                steps.stream.write(line)
                steps.stream.flush()
                logfile.write(line)
        except BaseException:       # Ctrl-C or a cancelled job: let the child clean up as on Ctrl-C
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        return proc.wait()


def write_cache_key(key: CacheKey, out: Path | None, github_output: str | None) -> None:
    if out is not None:
        (out / "cache-key.txt").write_text(key.key + "\n")
        (out / "cache-key.json").write_text(json.dumps({"key": key.key, "path": str(key.path),
                                                        "parts": key.parts}, indent=2, sort_keys=True) + "\n")
    _append(github_output, f"key={key.key}\npath={_cache_path_for_ci(key.path)}\n")


def step_image(plan: Plan, steps: Steps, out: Path, github_output: str | None) -> GuestImage:
    spec = plan.image
    steps.say(f"  guest: {spec.describe()}")
    key = cache_key(spec)
    steps.say(f"  cache key: {key.key}\n  cache path: {key.path}")
    write_cache_key(key, out, github_output)
    if spec.guest != "freebsd":
        steps.skip("FreeBSD download", f"the guest is {spec.guest}: its image is not the FreeBSD release image")
    if spec.given:
        steps.skip("image build", f"the run names its image ({spec.directory}): it is used as it is")
    elif plan.skip_download:
        steps.skip("FreeBSD download" if spec.guest == "freebsd" else "image build",
                   f"--skip-download: using the image at {spec.directory} as it is (e.g. restored from the cache)")
    elif spec.guest == "linux":
        status = _tee(["make", "-C", str(REPO_ROOT / "images"), "linux", f"OUT={spec.directory.parent}"],
                      out / "image-build.log", steps)
        if status != 0:
            raise StepFailed(f"the Debian image build failed (exit {status}): see {out / 'image-build.log'}")
    else:
        status = _tee(freebsd_build_argv(spec, plan.legs[0].config.accel), out / "image-build.log", steps)
        if status != 0:
            raise StepFailed(f"the FreeBSD image build failed (exit {status}): see {out / 'image-build.log'}")
    image = GuestImage.load(spec.directory, expect_os=spec.guest)
    ident = image.identity
    steps.say(f"  image: {image.root}, disk sha256 {str(ident.get('disk_sha256', '?'))[:16]}, kernel "
              f"{ident.get('kernel_release') or ident.get('kernel_ident') or '?'}")
    if spec.guest == "freebsd":
        from harness.freebsd_image import image_summary

        steps.say(f"  {image_summary(image.manifest)}")
    return image


def freebsd_build_argv(spec: ImageSpec, accel: str) -> list[str]:
    req = spec.build_request()
    argv = [sys.executable, "-m", "harness.freebsd_image", "--version", req.version, "--arch", req.arch,
            "--flavour", req.flavour, "--kernel", req.kernel, "--kernconf", req.kernconf,
            "--out", str(req.out_dir), "--accel", accel]
    if req.patch is not None:
        argv += ["--patch", str(req.patch)]
    if req.src is not None:
        argv += ["--src", str(req.src)]
    for key, value in req.tunables:
        argv += ["--tunable", f"{key}={value}"]
    return argv


# -- step 3: the scenarios ------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to a TOML config")


def run_config_toml(run: dict[str, Any]) -> str:
    """A [run] table for `harness run --config` (the [run.timeouts] subtable included)."""
    lines = ["# written by harness ci: the options this leg ran with", "[run]"]
    tables = {k: v for k, v in run.items() if isinstance(v, dict)}
    lines += [f"{key} = {toml_value(value)}" for key, value in run.items() if key not in tables]
    for name, table in tables.items():
        lines += ["", f"[run.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    leg: str
    name: str
    outcome: str            # passed | failed | error | skipped
    seconds: float
    message: str = ""


def junit_cases(path: Path, leg: str) -> list[Case]:
    """The test cases of a pytest JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return []
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = (child.get("message") or child.text or "").strip()
                message = text.splitlines()[0] if text else ""
                break
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        cases.append(Case(leg, f"{module}::{case.get('name')}", outcome, float(case.get("time") or 0), message))
    return cases


def run_leg(leg: Leg, plan: Plan, out: Path, steps: Steps) -> tuple[int, Path]:
    """`harness run` for one leg, into OUT/run/<leg>; its exit status and run directory."""
    run_dir = out / "run" / leg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "run-config.toml"
    run = dict(leg.run)
    if "image" not in run and plan.image.directory != default_image(plan.image.guest):
        run["image"] = str(plan.image.directory)
    config_path.write_text(run_config_toml(run))
    argv = [sys.executable, "-m", "harness.cli", "run", *leg.scenarios, "--config", str(config_path),
            "--run-dir", str(run_dir), "--no-report"]
    env = {"HARNESS_STRICT": "1"} if plan.strict else {}
    steps.say(f"  leg {leg.name}: scenarios {', '.join(leg.scenarios) or 'all in scenarios/'}; options "
              + ", ".join(f"{k}={v}" for k, v in run.items() if k not in PATH_KEYS or k == "image"))
    status = _tee(argv, run_dir / "harness-run.log", steps, env)
    return status, run_dir


def summary_markdown(plan: Plan, cases: Sequence[Case], statuses: dict[str, int], key: CacheKey | None,
                     bundles: Sequence[str] = ()) -> str:
    counts = {o: sum(c.outcome == o for c in cases) for o in ("passed", "failed", "error", "skipped")}
    main = plan.legs[0].config
    head = (f"## harness ci: {counts['passed']} passed, {counts['failed'] + counts['error']} failed, "
            f"{counts['skipped']} skipped")
    lines = [head, "", f"Guest: {plan.image.describe()}; profile `{main.profile}`, accel `{main.accel}`, "
             f"vhost `{main.vhost}`, testbed `{main.testbed}`."]
    if key is not None:
        lines.append(f"Image cache key: `{key.key}`.")
    broken = {leg: status for leg, status in statuses.items() if status != 0}
    for leg, status in broken.items():
        lines.append(f"**Leg `{leg}`: `harness run` exited {status}.**")
    lines += ["", "| leg | scenario | outcome | seconds | detail |", "| --- | --- | --- | ---: | --- |"]
    marks = {"passed": "pass", "failed": "**FAIL**", "error": "**ERROR**", "skipped": "skip"}
    for case in cases:
        detail = case.message.replace("|", "\\|")[:200]
        lines.append(f"| {case.leg} | `{case.name}` | {marks[case.outcome]} | {case.seconds:.1f} | {detail} |")
    if not cases:
        lines.append("| - | - | no test ran | - | - |")
    if bundles:
        lines += ["", "Repro bundles of the failed scenarios (`harness rerun DIR` reruns one exactly):", ""]
        lines += [f"- `{bundle}`" for bundle in bundles]
    lines += ["", "JUnit XML, JSON records, console and QEMU logs and repro bundles: the job's output directory "
              "(`run/<leg>/`)."]
    return "\n".join(lines) + "\n"


def step_scenarios(plan: Plan, steps: Steps, out: Path) -> tuple[int, list[Case], dict[str, int]]:
    cases: list[Case] = []
    statuses: dict[str, int] = {}
    for leg in plan.legs:
        status, run_dir = run_leg(leg, plan, out, steps)
        statuses[leg.name] = status
        junit = run_dir / "junit.xml"
        if junit.is_file():
            cases += junit_cases(junit, leg.name)
        else:
            steps.say(f"  leg {leg.name}: no JUnit XML at {junit}")
    failed = [c for c in cases if c.outcome in ("failed", "error")]
    bad = [name for name, status in statuses.items() if status != 0]
    if failed or bad:
        return EXIT_FAILED, cases, statuses
    return EXIT_OK, cases, statuses


# -- nightly: history and report -----------------------------------------------------------------------
def history_add(history: Path, sources: Sequence[Path]) -> int:
    """Add the records of `sources` (results stores or directories of JSON records) to the
    results store `history` (made if missing); the number of runs that were new."""
    from harness.report import read_source
    from harness.results import ResultStore, add_all

    records = [record for source in sources for record in read_source(source)]
    with ResultStore(history) as store:
        added = add_all(store, records)
    log.info("added %d new runs from %s to %s", added, ", ".join(map(str, sources)), history)
    return added


def history_count(history: Path) -> int:
    from harness.report import read_store

    return len(read_store(history)) if history.is_file() else 0


def run_stores(out: Path) -> list[Path]:
    """The results stores the scenarios step left, one per leg."""
    return sorted((out / "run").glob("*/results.sqlite"))


def nightly_report(out: Path, history: Path, sources: Sequence[Path], summary: str | None,
                   steps: Steps, ack: Path | None = None) -> int:
    """Add this run's records to the history, then `harness report` over it; the report's exit status."""
    from harness import report

    for source in sources:
        if not source.exists():
            raise ConfigError(f"report source {source} does not exist")
    with steps.step("history", f"add this run's records to {history}"):
        stores = run_stores(out)
        if not stores:
            steps.say(f"  no results store under {out / 'run'}: the scenarios step left no records")
        before = history_count(history)
        added = history_add(history, stores) if stores else 0
        if not history.exists():
            history_add(history, [])
        steps.say(f"  {added} new runs added; {history} held {before} runs and holds {history_count(history)}")
    report_dir = out / "report"
    with steps.step("report", "harness report over the history") as record:
        args = [str(history), *map(str, sources), "--out", str(report_dir / "index.html"),
                "--markdown", str(report_dir / "summary.md"), "--csv", str(report_dir / "series.csv"),
                "--json", str(report_dir / "series.json")]
        ack = ack if ack is not None else (ACK_FILE if ACK_FILE.is_file() else None)
        if ack is not None:
            args += ["--ack", str(ack)]
        steps.say(f"  $ harness report {' '.join(args)}")
        status = report.main(args)
        markdown = report_dir / "summary.md"
        if markdown.is_file():
            _append(summary, markdown.read_text(encoding="utf-8") + "\n")
            steps.say(f"  page: {report_dir / 'index.html'}; summary: {markdown}"
                      + (f" (appended to {summary})" if summary else ""))
        if status == 1:
            record.status, record.detail = "failed", "a confirmed regression that is not acknowledged"
        elif status != 0:
            record.status, record.detail = "failed", f"harness report exited {status} (bad input)"
    return status


# -- command line ----------------------------------------------------------------------------------------
def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="scenario names (default: the config's list, else all in scenarios/)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"the CI config (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)} when present)")
    parser.add_argument("--out", type=Path, default=Path("ci-out"), metavar="DIR",
                        help="the output directory: run/, logs, cache key, summary (default: %(default)s)")
    parser.add_argument("--matrix", action="store_true",
                        help="also run the config's [[matrix]] legs (the nightly), one after the other")
    parser.add_argument("--skip-download", action="store_true",
                        help="do not build or download the image: use the one there (e.g. restored from a cache)")
    parser.add_argument("--image-cache", type=Path, metavar="DIR",
                        help="keep images in DIR/<cache key>/ between jobs (a self-hosted runner's disk), "
                             "instead of images/out/")
    parser.add_argument("--kernel", help="FreeBSD kernel under test: stock, src, a kernel directory or a kernel.txz")
    parser.add_argument("--patch", help="a patch for the release's src (e.g. a review's diff); implies --kernel src")
    parser.add_argument("--src", help="a FreeBSD src tree instead of the release's src.txz")
    parser.add_argument("--freebsd-version", help="FreeBSD release (default: the config's, else 14.3)")
    parser.add_argument("--no-strict", action="store_true",
                        help="let scenarios skip when the host lacks something (default: HARNESS_STRICT=1)")
    parser.add_argument("--summary", default=os.environ.get("GITHUB_STEP_SUMMARY"), metavar="FILE",
                        help="append the markdown summary here (default: $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--github-output", default=os.environ.get("GITHUB_OUTPUT"), metavar="FILE",
                        help="append key=value outputs here (default: $GITHUB_OUTPUT)")
    group = parser.add_argument_group("harness run options (override the config's [run] table)")
    for option in RUN_OPTIONS:
        group.add_argument(option.flag, **option.kwargs())


def build_parser(command: str) -> argparse.ArgumentParser:
    if command == "report":
        p = argparse.ArgumentParser(prog="harness ci report",
                                    description="Nightly: add the run's records (OUT/run/*/results.sqlite) to the "
                                                "history store, then harness report over it.")
        p.add_argument("--out", type=Path, default=Path("ci-out"), metavar="DIR",
                       help="the output directory of `harness ci` (default: %(default)s); the page goes to "
                            "DIR/report/index.html")
        p.add_argument("--history", type=Path, required=True, metavar="FILE.sqlite",
                       help="the history results store (made if missing)")
        p.add_argument("--source", type=Path, action="append", default=[], metavar="SOURCE",
                       help="another store or JSON directory to report over (e.g. another runner's history)")
        p.add_argument("--ack", type=Path, help="acknowledged regressions (default: reports/acknowledged.toml)")
        p.add_argument("--summary", default=os.environ.get("GITHUB_STEP_SUMMARY"), metavar="FILE",
                       help="append the report's markdown here (default: $GITHUB_STEP_SUMMARY)")
        return p
    if command == "history-add":
        p = argparse.ArgumentParser(prog="harness ci history-add",
                                    description="Add result records to a history results store.")
        p.add_argument("history", type=Path, metavar="HISTORY.sqlite", help="the store (made if missing)")
        p.add_argument("sources", type=Path, nargs="+", metavar="SOURCE",
                       help="results stores or directories of JSON records")
        return p
    p = argparse.ArgumentParser(prog=f"harness ci{' cache-key' if command == 'cache-key' else ''}",
                                description=__doc__.split("\n\n")[0] if command == "run" else
                                "Print the guest image's cache key (and write key= and path= to $GITHUB_OUTPUT).",
                                epilog=None if command == "cache-key" else __doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_job_options(p)
    return p


def _write_ci_json(out: Path, steps: Steps, plan: Plan | None, status: int, key: CacheKey | None) -> None:
    data = {"exit": status, "steps": [vars(s) for s in steps.records],
            "cache_key": key.key if key else None,
            "config": str(plan.config_file) if plan and plan.config_file else None,
            "legs": [{"name": leg.name, "scenarios": list(leg.scenarios), "run_dir": str(out / "run" / leg.name)}
                     for leg in plan.legs] if plan else []}
    (out / "ci.json").write_text(json.dumps(data, indent=2) + "\n")


def cmd_job(args: argparse.Namespace) -> int:
    steps = Steps()
    out: Path = args.out.resolve()
    plan: Plan | None = None
    key: CacheKey | None = None
    status = EXIT_OK
    out.mkdir(parents=True, exist_ok=True)
    try:
        plan = plan_from(args)
        steps.say(f"harness ci: config {plan.config_file or '(none)'}, output {out}, legs "
                  + ", ".join(leg.name for leg in plan.legs))
        for note in plan.notes:
            steps.say(f"  note: {note}")
        with steps.step("host-check", "harness doctor"):
            step_host_check(plan, steps, out)
        with steps.step("image", "cache key, then build or restore the guest image"):
            key = cache_key(plan.image)
            step_image(plan, steps, out, args.github_output)
        with steps.step("scenarios", "harness run per leg") as record:
            status, cases, statuses = step_scenarios(plan, steps, out)
            if status != EXIT_OK:
                record.status = "failed"
                record.detail = ", ".join(f"{c.leg} {c.name}" for c in cases if c.outcome in ("failed", "error")) \
                    or "harness run failed: " + ", ".join(f"{k} exited {v}" for k, v in statuses.items() if v)
        bundles = [str(p.relative_to(out)) for p in sorted((out / "run").glob("*/*/repro-*")) if p.is_dir()]
        markdown = summary_markdown(plan, cases, statuses, key, bundles)
        (out / "summary.md").write_text(markdown)
        _append(args.summary, markdown)
    except StepFailed as exc:
        print(f"harness ci: error: {exc}", file=sys.stderr, flush=True)
        status = exc.status
        _append(args.summary, f"## harness ci: error\n\n{exc}\n")
    except ConfigError as exc:      # bad input, before any step
        print(f"harness ci: error: {exc}", file=sys.stderr)
        status = EXIT_ERROR
    _write_ci_json(out, steps, plan, status, key)
    if steps.records:
        steps.say("\nharness ci: " + ", ".join(f"{s.name} {s.status} ({s.seconds:.0f} s)" for s in steps.records)
                  + f"; exit {status}; everything is in {out}")
    return status


def cmd_cache_key(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    key = cache_key(plan.image)
    write_cache_key(key, None, args.github_output)
    print(key.key)
    print(f"path: {_cache_path_for_ci(key.path)}", file=sys.stderr)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    steps = Steps()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        status = nightly_report(out, args.history.resolve(), args.source, args.summary, steps, args.ack)
    except StepFailed as exc:
        print(f"harness ci report: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
    steps.say("\nharness ci report: " + ", ".join(f"{s.name} {s.status} ({s.seconds:.0f} s)" for s in steps.records)
              + f"; exit {status}")
    return status


def cmd_history_add(args: argparse.Namespace) -> int:
    for source in args.sources:
        if not source.exists():
            raise ConfigError(f"{source}: no such file or directory")
    added = history_add(args.history, args.sources)
    print(f"{added} new runs added to {args.history}; it holds {history_count(args.history)} runs")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv[:1] and argv[0] in ("cache-key", "report", "history-add") else "run"
    rest = argv[1:] if command != "run" else argv
    parser = build_parser(command)
    try:
        args = parser.parse_args(rest)
    except SystemExit as exc:       # --help (0) or a usage error (2), printed by argparse
        return int(exc.code or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="harness ci: %(levelname)s: %(message)s")
    handlers = {"run": cmd_job, "cache-key": cmd_cache_key, "report": cmd_report, "history-add": cmd_history_add}
    return run_command(f"harness ci{'' if command == 'run' else ' ' + command}", lambda: handlers[command](args))


if __name__ == "__main__":
    raise SystemExit(main())
