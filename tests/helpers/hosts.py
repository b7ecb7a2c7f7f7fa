"""Hostile hosts for URL inputs, on 127.0.0.1: an https host trusted through a test certificate authority (give
its CA to a client as SSL_CERT_FILE), and a plain-HTTP host with the same routes (`conftest.hostile_hosts`)."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass
from pathlib import Path

STALL_SECONDS = 30


class HostileRoutes(http.server.BaseHTTPRequestHandler):
    """GET routes of the hostile test host; `files` maps a path to the bytes it serves."""

    files: dict[str, bytes] = {}
    redirects: dict[str, str] = {}  # path -> Location
    release = threading.Event()
    authorizations: list[tuple[str, str | None]] = []  # (path, Authorization header) of every GET

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        self.authorizations.append((path, self.headers.get("Authorization")))
        if path == "/stall":  # promises 100,000 bytes, sends 10, then goes silent
            self._head(200, {"Content-Length": "100000"})
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.release.wait(STALL_SECONDS)
        elif path == "/trickle":  # one byte a second
            self._head(200, {"Content-Length": "1000"})
            for _ in range(STALL_SECONDS):
                if self.release.wait(1.0):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path in self.redirects:
            self._head(302, {"Location": self.redirects[path]})
        elif path.startswith("/redirect-to/"):
            self._head(302, {"Location": path.removeprefix("/redirect-to/").replace("__", "://", 1)})
        elif path in self.files:
            self._head(200, {"Content-Length": str(len(self.files[path]))})
            self.wfile.write(self.files[path])
        else:
            self._head(404, {"Content-Length": "0"})

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(server: http.server.ThreadingHTTPServer) -> str:
    """Serve on a daemon thread; returns host:port."""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


@dataclass
class HostileHosts:
    secure: str  # host:port of the https host
    plain: str  # host:port of the plain-HTTP host
    ca_file: Path  # the test CA's certificate (PEM)
