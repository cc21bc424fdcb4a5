"""HTTP downloads that resume, and checksum files to verify them against.

`fetch()` downloads into `<dest>.part`, resumes an interrupted transfer with
an HTTP Range request (from where the partial file stops), verifies the
result against a published digest, and only then renames it to `dest`. A
digest mismatch deletes the download and raises ChecksumMismatch; nothing
unverified is ever left under the final name.

Checksum sources understood:
  * BSD `sha512`/`sha256` output, as in FreeBSD's CHECKSUM.SHA512 files:
    `SHA512 (FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz) = <hex>`
    (GNU `<hex>  name` lines are accepted too);
  * FreeBSD's distribution MANIFEST (release/scripts/make-manifest.sh), tab
    separated: `name  sha256  files  dist  "description"  on|off`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import __version__
from harness.errors import HarnessError

log = logging.getLogger(__name__)

ALGORITHMS = {"sha512": 128, "sha256": 64}
USER_AGENT = f"harness/{__version__} (virtio-net netmap test harness)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_BSD_LINE = re.compile(r"^(SHA512|SHA256) \((?P<name>.+)\) = (?P<hex>[0-9a-fA-F]+)$")
_GNU_LINE = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](?P<name>\S.*)$")


class DownloadError(HarnessError):
    """A download failed (HTTP error, too many interruptions, no checksum)."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status  # the HTTP status, when the server answered one


class ChecksumMismatch(DownloadError):
    """The downloaded bytes are not the ones the checksum file names."""

    def __init__(self, url: str, path: Path, expected: Digest, actual: str, source: str) -> None:
        super().__init__(
            f"checksum mismatch for {url}: {source} says {expected.algorithm} {expected.hexdigest}, "
            f"the download has {actual}; the download ({path}) was deleted",
            hint="retry; if it fails again the mirror or the cache is corrupt, or the file was "
                 "replaced upstream (check the checksum file by hand)")
        self.url = url
        self.path = path
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Digest:
    algorithm: str   # sha512 | sha256
    hexdigest: str
    source: str = ""  # where the digest came from (a checksum file URL)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported digest algorithm {self.algorithm!r}")
        if len(self.hexdigest) != ALGORITHMS[self.algorithm] or not re.fullmatch(r"[0-9a-f]+", self.hexdigest):
            raise ValueError(f"not a {self.algorithm} hex digest: {self.hexdigest!r}")


def parse_checksum_file(text: str, *, source: str = "") -> dict[str, Digest]:
    """{file name: Digest} from BSD (`SHA512 (name) = hex`) or GNU lines."""
    entries: dict[str, Digest] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _BSD_LINE.match(line):
            algorithm = match.group(1).lower()
        elif match := _GNU_LINE.match(line):
            algorithm = "sha256" if len(match["hex"]) == 64 else "sha512"
        else:
            continue
        try:
            entries[match["name"]] = Digest(algorithm, match["hex"].lower(), source)
        except ValueError:
            continue  # a wrong-length hex is not an entry
    return entries


def parse_dist_manifest(text: str, *, source: str = "") -> dict[str, Digest]:
    """{dist file: sha256 Digest} from a FreeBSD release MANIFEST."""
    entries: dict[str, Digest] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and re.fullmatch(r"[0-9a-fA-F]{64}", fields[1].strip()):
            entries[fields[0].strip()] = Digest("sha256", fields[1].strip().lower(), source)
    return entries


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch_text(url: str, *, timeout: float = 60.0) -> str:
    """A small text file (a checksum file), whole, in memory."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read()).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}", status=exc.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"cannot fetch {url}: {_reason(exc)}",
                            hint="check the network, or pass --mirror with a reachable mirror") from None


def lookup_digest(entries: dict[str, Digest], names: list[str], source: str) -> tuple[str, Digest]:
    """The first of `names` the checksum file lists, with its digest."""
    for name in names:
        if name in entries:
            return name, entries[name]
    listed = ", ".join(sorted(entries)) or "nothing"
    raise DownloadError(f"{source} has no checksum for {' or '.join(names)} (it lists: {listed})",
                        hint="check the release version, architecture and image flavour")


ProgressFn = Callable[[int, int | None], None]


def fetch(url: str, dest: Path, *, digest: Digest | None, attempts: int = 5, timeout: float = 60.0,
          chunk: int = 1 << 20, retry_delay: float = 1.0, progress: ProgressFn | None = None) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part`, verified against `digest`.

    A complete `dest` that verifies is reused as is (the cache). Returns dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        if digest is None:
            return dest
        actual = file_digest(dest, digest.algorithm)
        if actual == digest.hexdigest:
            log.info("%s: cached copy verifies (%s)", dest.name, digest.algorithm)
            return dest
        log.warning("%s: cached copy does not match %s; downloading it again", dest, digest.source or "the digest")
        dest.unlink()
    last_error = ""
    for attempt in range(1, attempts + 1):
        try:
            if _transfer(url, part, timeout=timeout, chunk=chunk, progress=progress):
                break
            last_error = "the connection closed before the whole file arrived"
        except _Retryable as exc:
            last_error = str(exc)
        have = part.stat().st_size if part.exists() else 0
        log.warning("%s: attempt %d/%d stopped at %d bytes (%s)%s", url, attempt, attempts, have,
                    last_error, "; resuming" if attempt < attempts else "")
        if attempt < attempts:
            time.sleep(retry_delay)
    else:
        raise DownloadError(f"download of {url} did not complete after {attempts} attempts: {last_error}",
                            hint=f"run the build again: it resumes from {part}")
    if digest is not None:
        actual = file_digest(part, digest.algorithm)
        if actual != digest.hexdigest:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(url, part, digest, actual, digest.source or "the expected digest")
        log.info("%s: %s verified against %s", dest.name, digest.algorithm, digest.source or "the digest")
    part.replace(dest)
    return dest


class _Retryable(Exception):
    pass


def _transfer(url: str, part: Path, *, timeout: float, chunk: int, progress: ProgressFn | None) -> bool:
    """One request; appends to `part`. True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return _range_not_satisfiable(exc, part, offset)
        if 500 <= exc.code < 600:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}", status=exc.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(_reason(exc)) from None
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                log.warning("%s: the server answered a different range (%s); starting over", url,
                            response.headers.get("Content-Range"))
                part.unlink(missing_ok=True)
                return False
            total: int | None = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
            log.info("%s: resuming at byte %d", url, offset)
        else:
            if offset:
                log.info("%s: the server ignored the range request; starting over", url)
            offset = 0
            total = int(length) if length is not None and length.isdigit() else None
            mode = "wb"
        written = offset
        try:
            with open(part, mode) as out:
                while True:
                    block = response.read(chunk)
                    if not block:
                        break
                    out.write(block)
                    written += len(block)
                    if progress:
                        progress(written, total)
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(_reason(exc)) from None
    if total is None:
        return True  # no length given: a clean end of stream is the end
    return written >= total


def _range_not_satisfiable(exc: urllib.error.HTTPError, part: Path, offset: int) -> bool:
    """416 for `bytes=offset-`: complete if the partial file already has every byte."""
    match = re.fullmatch(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") if exc.headers else "")
    if match and int(match.group(1)) == offset:
        return True
    part.unlink(missing_ok=True)
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
