"""Hand host files to a guest over HTTP during image provisioning.

The server listens on 127.0.0.1 only and serves exactly the files it was
given, by name. A guest on QEMU user-mode networking without `restrict`
reaches it as 10.0.2.2 (slirp maps that address to the host's loopback), so
the guest fetches with its own `fetch(1)` and verifies the SHA-256 itself.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

SLIRP_HOST = "10.0.2.2"


class FileServer:
    def __init__(self, files: Mapping[str, Path], port: int) -> None:
        self.files = dict(files)
        self.port = port
        self.requests: list[str] = []

    def url(self, name: str, host: str = SLIRP_HOST) -> str:
        if name not in self.files:
            raise KeyError(f"{name} is not served")
        return f"http://{host}:{self.port}/{name}"


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, *, body: bool) -> None:
            name = self.path.lstrip("/")
            server.requests.append(name)
            path = server.files.get(name)
            if path is None or not path.is_file():
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            if body:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
            log.info("file server: " + format, *args)

    return Handler


@contextmanager
def serve_files(files: Mapping[str, Path]) -> Iterator[FileServer]:
    """Serve `files` ({url name: path}) on 127.0.0.1 until the block ends."""
    state = FileServer(files, 0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="harness-fileserve", daemon=True)
    thread.start()
    log.info("serving %s on 127.0.0.1:%d", ", ".join(sorted(files)) or "nothing", state.port)
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
