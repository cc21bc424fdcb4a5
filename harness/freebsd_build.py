"""Run a FreeBSD image build: the host steps of freebsd_image.host_steps(),
in order, with the guest provisioned in between.

Downloads land in the cache (verified, reused by later builds); the image is
assembled in a work directory next to the output and moved into place only
when every step passed, manifest last. On failure the logs are kept in
`<out>.failed/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from harness import __version__, diskimage, download
from harness.accel import resolve_accel
from harness.console import Console
from harness.deadline import Deadline
from harness.download import Digest, DownloadError
from harness.errors import ConfigError, HarnessError
from harness.fileserve import SLIRP_HOST, serve_files
from harness.freebsd_image import BuildRequest, host_steps, image_summary, kernel_description, planned_guest
from harness.freebsd_provision import BRIDGE_PATH, Provisioner, ProvisionResult, StepTimeouts
from harness.freebsd_release import PINNED_SHA256, ReleaseFile
from harness.guests.freebsd import FreeBSDProfile
from harness.image import GuestImage
from harness.vm import QemuVM, VMSpec

log = logging.getLogger(__name__)

DISK = "disk.qcow2"
PROVISION_LOG = "provision.log"
CONSOLE_LOG = "provision-console.log"
PROVISION_CODE = Path(__file__).with_name("freebsd_provision.py")


def sha256_file(path: Path) -> str:
    return download.file_digest(path, "sha256")


def release_checksums(rf: ReleaseFile) -> tuple[dict[str, Digest], str]:
    """The first checksum file of `rf` that exists, parsed, and its URL."""
    last: DownloadError | None = None
    for name, fmt in rf.checksum_files:
        url = rf.directory + name
        try:
            text = download.fetch_text(url)
        except DownloadError as exc:
            if exc.status == 404:
                log.info("%s does not exist; trying the next checksum file", url)
                last = exc
                continue
            raise
        parse = download.parse_dist_manifest if fmt == "manifest" else download.parse_checksum_file
        entries = parse(text, source=url)
        if not entries:
            raise DownloadError(f"{url} is not a checksum file (no entries found)")
        return entries, url
    raise DownloadError(f"no checksum file in {rf.directory} ({last})",
                        hint="check --version and --flavour; the release may not publish this image")


def check_pinned(path: Path, url: str) -> None:
    """Compare a verified download with a digest published elsewhere, if any."""
    pinned = PINNED_SHA256.get(path.name)
    if pinned is None:
        return
    actual = sha256_file(path)
    if actual != pinned:
        path.unlink()
        raise DownloadError(f"{url} matches its checksum file but has SHA-256 {actual}, while the harness "
                            f"pins {pinned} for it (harness.freebsd_release.PINNED_SHA256); the download "
                            "was deleted", hint="the mirror serves a different file than was published: use "
                                                "another --mirror, or check the release announcement")


def pack_tree(root: Path, dest: Path, *, arcname: str, subdir: str | None = None,
              exclude: tuple[str, ...] = (".git", ".svn")) -> Path:
    """tar `root` (or root/subdir) into dest with members under `arcname`."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if Path(info.name).name in exclude else info

    source = root / subdir if subdir else root
    name = f"{arcname}/{subdir}" if subdir else arcname
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        tar.add(source, arcname=name, filter=keep)
    tmp.replace(dest)
    return dest


def kernel_from_txz(txz: Path, dest: Path) -> Path:
    """Extract boot/kernel/kernel of a kernel.txz to `dest` (for its checksum)."""
    try:
        with tarfile.open(txz) as tar:
            member = next((m for m in tar.getmembers()
                           if m.isfile() and m.name.lstrip("./") == "boot/kernel/kernel"), None)
            if member is None:
                raise ConfigError(f"--kernel {txz} has no boot/kernel/kernel",
                                  hint="give a kernel.txz as `make packagekernel` or a release makes it")
            source = tar.extractfile(member)
            assert source is not None
            with source, open(dest, "wb") as out:
                shutil.copyfileobj(source, out)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"--kernel {txz} is not a readable tarball: {exc}") from None
    return dest


@contextmanager
def provision_log(path: Path) -> Iterator[None]:
    """Everything the harness logs during the build also goes to `path`."""
    logger = logging.getLogger("harness")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


class Builder:
    def __init__(self, req: BuildRequest) -> None:
        self.req = req
        self.out = req.out_dir
        self.cache = req.release_cache
        self.work = self.out.parent / f".{self.out.name}.build-{secrets.token_hex(3)}"
        self.served: dict[str, Path] = {}
        self.served_sha: dict[str, str] = {}
        self.image_name = ""
        self.image_digest: Digest | None = None
        self.image_xz: Path | None = None
        self.src_digest: Digest | None = None
        self.kernel_sha256: str | None = None
        self.kernel_file: Path | None = None
        self.result: ProvisionResult | None = None
        self.vm_facts: dict[str, Any] = {}
        self.timings: list[dict[str, object]] = []

    # -- driver ---------------------------------------------------------------
    def run(self) -> GuestImage:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.work.mkdir()
        try:
            with provision_log(self.work / PROVISION_LOG):
                log.info("building %s: %s", self.out, kernel_description(self.req))
                for name, what in host_steps(self.req):
                    if name == "check-up-to-date":
                        if self._up_to_date():
                            return GuestImage.load(self.out, expect_os="freebsd", check=False)
                        continue
                    self._step(name, what)
            return self._install()
        except BaseException as exc:
            kept = self._keep_logs()
            if isinstance(exc, HarnessError) and kept:
                exc.message += f" (build logs kept in {kept})"
            raise
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def _step(self, name: str, what: str) -> None:
        log.info("build step %s: %s", name, what)
        start = time.monotonic()
        method: Callable[[], None] = getattr(self, "step_" + name.replace("-", "_"))
        try:
            method()
        except HarnessError as exc:
            if not exc.message.startswith("provisioning step"):
                exc.message = f"build step '{name}': {exc.message}"
            raise
        seconds = round(time.monotonic() - start, 1)
        self.timings.append({"name": name, "seconds": seconds})
        log.info("build step %s done in %.1f s", name, seconds)

    # -- host steps -----------------------------------------------------------
    def step_fetch_image_checksums(self) -> None:
        image = self.req.image()
        entries, url = release_checksums(image)
        self.image_name, self.image_digest = download.lookup_digest(entries, list(image.names), url)

    def step_download_image(self) -> None:
        assert self.image_digest is not None
        url = self.req.image().url(self.image_name)
        self.image_xz = download.fetch(url, self.cache / self.image_name, digest=self.image_digest,
                                       progress=_progress_logger(url))
        check_pinned(self.image_xz, url)

    def step_fetch_src_checksums(self) -> None:
        rf = self.req.release_src()
        assert rf is not None
        entries, url = release_checksums(rf)
        _, self.src_digest = download.lookup_digest(entries, list(rf.names), url)

    def step_download_src(self) -> None:
        rf = self.req.release_src()
        assert rf is not None and self.src_digest is not None
        path = download.fetch(rf.url(), self.cache / "src.txz", digest=self.src_digest,
                              progress=_progress_logger(rf.url()))
        self._serve("src.txz", path, self.src_digest.hexdigest)

    def step_pack_src(self) -> None:
        assert self.req.src is not None
        subdir = None if self.req.kernel_kind == "src" else "tools/tools/netmap"
        path = pack_tree(self.req.src, self.work / "src.tar", arcname="usr/src", subdir=subdir)
        self._serve("src.tar", path)

    def step_prepare_kernel(self) -> None:
        source = self.req.kernel_path
        assert source is not None
        if source.is_dir():
            archive = pack_tree(source, self.work / "kernel.tar", arcname="boot/kernel")
            self.kernel_file = source / "kernel"
            self._serve("kernel.tar", archive)
        else:
            self.kernel_file = kernel_from_txz(source, self.work / "kernel-under-test")
            self._serve("kernel.txz", source)
        self.kernel_sha256 = sha256_file(self.kernel_file)

    def step_prepare_patch(self) -> None:
        assert self.req.patch is not None
        self._serve("kernel.patch", self.req.patch)

    def step_decompress_image(self) -> None:
        assert self.image_xz is not None
        name = self.image_name.removesuffix(".xz")
        diskimage.decompress_xz(self.image_xz, self.work / name)

    def step_convert_image(self) -> None:
        raw = self.work / self.image_name.removesuffix(".xz")
        diskimage.to_qcow2(raw, self.work / DISK)
        raw.unlink()

    def step_grow_disk(self) -> None:
        diskimage.grow(self.work / DISK, self.req.disk_bytes)

    def step_provision(self) -> None:
        req = self.req
        accel, reason = resolve_accel(req.accel, req.qemu)
        scale = req.timeout_scale or (1.0 if accel == "kvm" else 6.0)
        log.info("accelerator %s (%s); guest timeouts x%.1f", accel, reason, scale)
        image = GuestImage(self.work, {"guest_os": "freebsd", "disk": DISK, "disk_format": "qcow2",
                                       "boot": "disk"})
        profile = FreeBSDProfile()
        spec = VMSpec(image=image, name=f"fbsd-img-{secrets.token_hex(3)}", accel=accel,
                      memory_mb=req.memory, vcpus=req.vcpus, mgmt_model=profile.mgmt_nic_model,
                      mgmt_restrict=False, firmware=req.firmware, qemu=req.qemu)
        run_dir = self.work / "run"
        with ExitStack() as stack:
            server = stack.enter_context(serve_files(self.served))
            plan = planned_guest(req, served=self.served_sha, kernel_sha256=self.kernel_sha256,
                                 kernel_file=self.kernel_file, base_url=f"http://{SLIRP_HOST}:{server.port}/")
            vm = stack.enter_context(QemuVM(spec, None, run_dir, start_timeout=60, shutdown_timeout=30))
            console = stack.enter_context(Console(vm.console_socket, profile, log_path=vm.console_log))
            console.connect(Deadline(60, "console connect"))
            vm.resume()
            try:
                self.result = Provisioner(console, plan, StepTimeouts().scaled(scale),
                                          console_log=vm.console_log).run()
            finally:
                if vm.console_log.exists():
                    shutil.copyfile(vm.console_log, self.work / CONSOLE_LOG)
            assert vm.proc is not None
            try:
                vm.proc.wait(timeout=120 * scale)
            except subprocess.TimeoutExpired:
                raise HarnessError("the guest shut down but QEMU did not exit") from None
            console.close()
            diskimage.commit(vm.overlay)  # before the VM's cleanup deletes the overlay
            self.vm_facts = {**vm.facts, "accel_reason": reason, "timeout_scale": scale}

    def step_commit_disk(self) -> None:
        # Done inside step_provision (the overlay only lives as long as the VM);
        # here the result is checked.
        info = diskimage.info(self.work / DISK)
        if info.get("backing-filename"):
            raise HarnessError(f"{DISK} still has a backing file after the commit")

    def step_write_manifest(self) -> None:
        (self.work / "manifest.json").write_text(json.dumps(self.manifest(), indent=2) + "\n")

    # -- helpers ----------------------------------------------------------------
    def _serve(self, name: str, path: Path, sha256: str | None = None) -> None:
        self.served[name] = path
        self.served_sha[name] = sha256 or sha256_file(path)

    def inputs_hash(self) -> str:
        req = self.req
        assert self.image_digest is not None
        parts = {"version": req.version, "arch": req.arch, "flavour": req.flavour,
                 "image": self.image_digest.hexdigest, "kernel": req.kernel_kind, "kernconf": req.kernconf,
                 "tunables": list(req.tunables), "src": self.src_digest.hexdigest if self.src_digest else
                 str(req.src), "patch": sha256_file(req.patch) if req.patch else None,
                 "prebuilt": _fingerprint(req.kernel_path) if req.kernel_path else None,
                 "provisioning": sha256_file(PROVISION_CODE), "disk": req.disk_bytes}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def _up_to_date(self) -> bool:
        if self.req.force or self.req.src is not None or self.image_digest is None:
            return False  # a src tree can change without its path changing
        try:
            current = json.loads((self.out / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        if current.get("inputs_hash") == self.inputs_hash() and (self.out / DISK).is_file():
            log.info("the FreeBSD image in %s is up to date (inputs %s)", self.out, current["inputs_hash"])
            return True
        return False

    def manifest(self) -> dict[str, Any]:
        req, facts = self.req, (self.result.facts if self.result else {})
        assert self.image_digest is not None
        kernel: dict[str, Any] = {"kind": req.kernel_kind, "description": kernel_description(req),
                                  "kernconf": req.kernconf if req.kernel_kind == "src" else None}
        if req.patch is not None:
            kernel["patch"] = {"file": str(req.patch), "sha256": sha256_file(req.patch), "strip": req.patch_strip}
        if req.kernel_path is not None:
            kernel["prebuilt"] = {"path": str(req.kernel_path), "kernel_sha256": self.kernel_sha256}
        if req.kernel_kind != "stock":
            kernel["stock_kept_as"] = "/boot/kernel.stock"
        release_src = req.release_src()
        src: dict[str, str] = ({"url": release_src.url(), "sha256": self.src_digest.hexdigest}
                               if release_src is not None and self.src_digest else {"path": str(req.src)})
        return {
            "schema": 1, "guest_os": "freebsd", "distro": f"freebsd-{req.version}", "version": req.version,
            "arch": req.arch, "flavour": req.flavour, "firmware": req.firmware, "boot": "disk",
            "disk": DISK, "disk_format": "qcow2", "disk_sha256": sha256_file(self.work / DISK),
            "mgmt_nic_model": FreeBSDProfile.mgmt_nic_model,
            "source_image": {"url": req.image().url(self.image_name), "name": self.image_name,
                             self.image_digest.algorithm: self.image_digest.hexdigest,
                             "checksum_url": self.image_digest.source},
            "kernel": kernel,
            "kernel_release": facts.get("uname_r"), "kernel_version": facts.get("uname_v"),
            "kernel_version_line": facts.get("version_line"), "kernel_ident": facts.get("kern_ident"),
            "kernel_sha256": facts.get("running_kernel_sha256"), "kernel_bootfile": facts.get("bootfile"),
            "stock_kernel_sha256": facts.get("stock_kernel_sha256"),
            "netmap_tools": {
                "pkt-gen": {"path": facts.get("pkt_gen_path"), "package": "net/pkt-gen",
                            "package_version": facts.get("pkt_gen_version"), "sha256": facts.get("pkt_gen_sha256")},
                "bridge": {"path": BRIDGE_PATH, "source": f"tools/tools/netmap of {src.get('url') or src['path']}",
                           "sha256": facts.get("bridge_sha256")},
            },
            "src": src,
            "tunables": dict(req.tunables),
            "provisioning_log": PROVISION_LOG, "console_log": CONSOLE_LOG,
            "steps": self.timings + [{"name": f"guest:{s.name}", "seconds": s.seconds}
                                     for s in (self.result.steps if self.result else [])],
            "built_with": {"harness": __version__, **{k: v for k, v in self.vm_facts.items() if k != "argv"}},
            "inputs_hash": self.inputs_hash(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def _install(self) -> GuestImage:
        self.out.mkdir(parents=True, exist_ok=True)
        disk = self.work / DISK
        disk.chmod(0o444)
        (self.out / "manifest.json").unlink(missing_ok=True)
        for name in (DISK, PROVISION_LOG, CONSOLE_LOG):
            target = self.out / name
            if target.exists():
                target.chmod(0o644)
                target.unlink()
            if (self.work / name).exists():
                os.replace(self.work / name, target)
        os.replace(self.work / "manifest.json", self.out / "manifest.json")
        image = GuestImage.load(self.out, expect_os="freebsd")
        log.info("FreeBSD image built: %s", image_summary(image.manifest))
        return image

    def _keep_logs(self) -> Path | None:
        kept = self.out.parent / f"{self.out.name}.failed"
        found = [self.work / n for n in (PROVISION_LOG, CONSOLE_LOG, "run/console.log", "run/qemu.log")
                 if (self.work / n).exists()]
        if not found:
            return None
        kept.mkdir(parents=True, exist_ok=True)
        for path in found:
            shutil.copyfile(path, kept / path.name)
        return kept


def _fingerprint(path: Path) -> str:
    """A kernel.txz's SHA-256; for a kernel directory, its kernel's SHA-256
    plus every module's name, size and modification time."""
    if not path.is_dir():
        return sha256_file(path)
    modules = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())
    return sha256_file(path / "kernel") + hashlib.sha256(repr(modules).encode()).hexdigest()[:16]


def _progress_logger(url: str) -> Callable[[int, int | None], None]:
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= 10 or (total is not None and done >= total):
            last[0] = now
            share = f" of {total >> 20} MiB ({100 * done // total}%)" if total else ""
            log.info("%s: %d MiB%s", url.rsplit("/", 1)[-1], done >> 20, share)

    return report


def build(req: BuildRequest) -> GuestImage:
    """Build (or find up to date) the image `req` describes."""
    return Builder(req).run()
