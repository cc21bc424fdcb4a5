"""harness.download against a real HTTP server on 127.0.0.1 (tests/http_range_server.py).

No mocks of the network code: urllib talks to a real server over loopback,
which supports Range requests and can cut a transfer halfway. The checksum
file lines are in the BSD format `sha512(1)` writes (release/Makefile.vm
runs `sha512 FreeBSD-*` into CHECKSUM.SHA512); the MANIFEST line in the
tab-separated format of release/scripts/make-manifest.sh.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from harness import download
from harness.download import ChecksumMismatch, Digest, DownloadError
from harness.freebsd_build import release_checksums
from harness.freebsd_release import ReleaseFile
from tests.http_range_server import RangeServer

NAME = "FreeBSD-13.2-RELEASE-amd64-BASIC-CI.raw.xz"
DATA = os.urandom(300_000) + b"\0" * 20_000 + os.urandom(50_000)


def bsd_line(algorithm: str, name: str, data: bytes) -> str:
    return f"{algorithm.upper()} ({name}) = {hashlib.new(algorithm, data).hexdigest()}\n"


def checksum_file(data: bytes = DATA) -> bytes:
    other = bsd_line("sha512", "FreeBSD-13.2-RELEASE-amd64-BASIC-CI.raw", b"unpacked")
    return (other + bsd_line("sha512", NAME, data)).encode()


def digest_from(server: RangeServer, path: str = "/CHECKSUM.SHA512") -> Digest:
    url = server.url(path)
    entries = download.parse_checksum_file(download.fetch_text(url), source=url)
    return download.lookup_digest(entries, [NAME], url)[1]


def test_download_good_file_verifies_and_is_reused_from_the_cache(tmp_path: Path) -> None:
    with RangeServer({f"/{NAME}": DATA, "/CHECKSUM.SHA512": checksum_file()}) as server:
        digest = digest_from(server)
        assert digest.algorithm == "sha512" and digest.source == server.url("/CHECKSUM.SHA512")
        dest = download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=digest)
        assert dest.read_bytes() == DATA
        assert not (tmp_path / f"{NAME}.part").exists()
        download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=digest)
        assert server.gets(f"/{NAME}") == [None]  # the second call used the verified cache


def test_download_wrong_checksum_deletes_the_file_with_one_clear_error(tmp_path: Path) -> None:
    files = {f"/{NAME}": DATA, "/CHECKSUM.SHA512": checksum_file(b"what the mirror should have served")}
    with RangeServer(files) as server:
        digest = digest_from(server)
        with pytest.raises(ChecksumMismatch) as info:
            download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=digest)
    text = str(info.value)
    assert f"checksum mismatch for {server.url('/' + NAME)}" in text
    assert hashlib.sha512(DATA).hexdigest() in text and digest.hexdigest in text
    assert "was deleted" in text
    assert list(tmp_path.iterdir()) == []


def test_download_interrupted_halfway_resumes_where_it_stopped(tmp_path: Path) -> None:
    half = len(DATA) // 2
    files = {f"/{NAME}": DATA, "/CHECKSUM.SHA512": checksum_file()}
    with RangeServer(files, cut={f"/{NAME}": half}) as server:
        dest = download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=digest_from(server),
                              retry_delay=0)
        assert server.gets(f"/{NAME}") == [None, f"bytes={half}-"]
    assert dest.read_bytes() == DATA


def test_download_resumes_a_partial_file_left_by_an_earlier_run(tmp_path: Path) -> None:
    third = len(DATA) // 3
    (tmp_path / f"{NAME}.part").write_bytes(DATA[:third])
    with RangeServer({f"/{NAME}": DATA, "/CHECKSUM.SHA512": checksum_file()}) as server:
        download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=digest_from(server))
        assert server.gets(f"/{NAME}") == [f"bytes={third}-"]
    assert (tmp_path / NAME).read_bytes() == DATA


def test_download_starts_over_when_the_server_ignores_the_range(tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(b"stale bytes of some other file")
    with RangeServer({f"/{NAME}": DATA, "/CHECKSUM.SHA512": checksum_file()}, ignore_range=True) as server:
        download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=digest_from(server))
    assert (tmp_path / NAME).read_bytes() == DATA


def test_download_complete_partial_file_is_finished_by_a_416(tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(DATA)
    with RangeServer({f"/{NAME}": DATA, "/CHECKSUM.SHA512": checksum_file()}) as server:
        download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=digest_from(server))
        assert server.gets(f"/{NAME}") == [f"bytes={len(DATA)}-"]
    assert (tmp_path / NAME).read_bytes() == DATA


def test_download_gives_up_after_the_attempts_and_keeps_the_partial_file(tmp_path: Path) -> None:
    class EveryTime(dict[str, int]):  # cut every request of the image after 1000 bytes
        def pop(self, key: str, default: object = None) -> int:  # type: ignore[override]
            return 1000

    with RangeServer({f"/{NAME}": DATA}) as server:
        server.cut = EveryTime()
        with pytest.raises(DownloadError, match="did not complete after 3 attempts") as info:
            download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=None, attempts=3, retry_delay=0)
        assert server.gets(f"/{NAME}") == [None, "bytes=1000-", "bytes=2000-"]
    assert "it resumes from" in str(info.value)
    assert (tmp_path / f"{NAME}.part").stat().st_size == 3000
    assert not (tmp_path / NAME).exists()


def test_download_missing_checksum_entry_names_the_file_and_what_is_listed() -> None:
    with RangeServer({"/CHECKSUM.SHA512": checksum_file()}) as server:
        url = server.url("/CHECKSUM.SHA512")
        entries = download.parse_checksum_file(download.fetch_text(url), source=url)
        with pytest.raises(DownloadError) as info:
            download.lookup_digest(entries, ["FreeBSD-13.2-RELEASE-amd64-ufs.qcow2.xz"], url)
    assert str(info.value).startswith(f"{url} has no checksum for FreeBSD-13.2-RELEASE-amd64-ufs.qcow2.xz")
    assert NAME in str(info.value)


def test_download_http_404_fails_at_once_without_retries(tmp_path: Path) -> None:
    with RangeServer({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404") as info:
            download.fetch(server.url(f"/{NAME}"), tmp_path / NAME, digest=None, retry_delay=0)
        assert info.value.status == 404
        assert len(server.requests) == 1


def test_download_release_checksums_fall_back_to_sha256_when_sha512_is_missing() -> None:
    sha256 = bsd_line("sha256", NAME, DATA).encode()
    with RangeServer({"/Latest/CHECKSUM.SHA256": sha256}) as server:
        rf = ReleaseFile(server.url("/Latest/"), (NAME,), (("CHECKSUM.SHA512", "sha512"),
                                                           ("CHECKSUM.SHA256", "sha256")))
        entries, url = release_checksums(rf)
    assert url == server.url("/Latest/CHECKSUM.SHA256")
    assert entries[NAME] == Digest("sha256", hashlib.sha256(DATA).hexdigest(), url)


def test_download_release_src_checksum_from_the_dist_manifest() -> None:
    sha = hashlib.sha256(b"src").hexdigest()
    manifest = (f"base.txz\t{'1' * 64}\t12345\tbase\t\"Base system (MANDATORY)\"\ton\n"
                f"src.txz\t{sha}\t98765\tsrc\t\"System source code\"\toff\n").encode()
    with RangeServer({"/amd64/13.2-RELEASE/MANIFEST": manifest}) as server:
        rf = ReleaseFile(server.url("/amd64/13.2-RELEASE/"), ("src.txz",), (("MANIFEST", "manifest"),))
        entries, url = release_checksums(rf)
    assert entries["src.txz"] == Digest("sha256", sha, url)
    assert set(entries) == {"base.txz", "src.txz"}


def test_download_checksum_file_parsing_ignores_junk_and_reads_gnu_lines() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    text = ("-----BEGIN PGP SIGNED MESSAGE-----\n"
            f"SHA512 (a.xz) = {'ab' * 64}\n"
            f"SHA512 (short.xz) = {'ab' * 10}\n"
            f"{sha}  b.xz\n")
    entries = download.parse_checksum_file(text)
    assert entries == {"a.xz": Digest("sha512", "ab" * 64), "b.xz": Digest("sha256", sha)}
