"""The HTTP server: routing to the three services, Express-like responses, faults, admin endpoints.

Bodies go out through one path: optional gzip (the `compression()` middleware), then the fault
shaper (bandwidth, stall, truncate), then chunked framing when there is no length. A plain file
body with no fault uses sendfile, which is what makes multi-GB/s loopback downloads possible.
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from . import amaretti, authsvc, warehouse
from .context import App
from .faults import KnobError, Knobs, ShapedWriter, Truncated
from .generate import COLLECTIONS
from .store import Store
from .tokens import Signer
from .web import NOCACHE, ApiError, Hang, Request, Response, Route, json_response

SERVICES = {"auth": authsvc.routes, "warehouse": warehouse.routes, "amaretti": amaretti.routes}
HEALTH = {"status": "ok", "messages": [], "reports": {}}
FILE_CHUNK = 1 << 20
GZIP_THRESHOLD = 1024


class ChunkedWriter:
    """HTTP/1.1 chunked framing; `close` writes the last chunk (a cut body never gets it)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: bytes | memoryview) -> int:
        if len(data):
            self._out.write(b"%x\r\n" % len(data) + bytes(data) + b"\r\n")
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._out.write(b"0\r\n\r\n")


class RequestLog:
    """What was asked and answered, for tests to assert on (admin requests excluded).

    A request is entered when it arrives, its `status` when the answer is chosen (before any
    body byte is sent) and its `bytes` and `end` when the body is done: a client that has seen
    an answer finds its request in the log even while the server is still sending the tail of
    the body. `t` and `end` tell how many requests were in flight at once (`in_flight_peak`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict] = []

    def add(self, entry: dict) -> dict:
        with self._lock:
            self._entries.append(entry)
        return entry

    def update(self, entry: dict, **values: object) -> None:
        with self._lock:
            entry.update(values)

    def entries(self) -> list[dict]:
        with self._lock:
            return [dict(entry) for entry in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App, tls: ssl.SSLContext | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.app = app
        self.tls = tls
        self.log = RequestLog()
        self.routes: dict[str, list[Route]] = {name: make(app) for name, make in SERVICES.items()}

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up mid-answer are routine here (fault tests, cancelled reads)."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)

    def finish_request(self, request, client_address) -> None:
        """TLS handshakes happen here, in the connection's own thread, not in the accept loop."""
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle on, a keep-alive client's delayed
    # ACK holds the second one back (tens of milliseconds per small response).
    disable_nagle_algorithm = True
    server: EmulatorServer

    def version_string(self) -> str:
        return "brainlife-emulator"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the request log is kept in memory and served at /_admin/log."""

    def do_GET(self) -> None:
        self.dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def dispatch(self) -> None:
        started = time.time()
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        scheme = "https" if self.server.tls else "http"
        request = Request(self.command, path, query, self.headers, body, scheme=scheme)
        if path.startswith("/_admin/"):
            self.send(request, self.admin(request), admin=True)
            return
        log = self.server.log
        entry = log.add(
            {
                "t": started,
                "method": self.command,
                "path": path,
                "query": {k: v[0] for k, v in query.items()},
                "status": None,
                "bytes": 0,
            }
        )
        knobs = self.server.app.knobs
        api = path.startswith("/api/")
        if api and knobs["latency"]:
            time.sleep(knobs["latency"])
        failure = knobs.failure(path, api)
        if failure:
            response = json_response({"message": failure[1]}, failure[0])
        else:
            response = self.route(request)
        if response is not None:
            log.update(entry, status=response.status)
            _, sent = self.send(request, response)
            log.update(entry, bytes=sent, end=time.time())

    def route(self, request: Request) -> Response | None:
        """The handler's response; None after a reproduced hang (the connection is dropped)."""
        parts = request.path.split("/", 3)
        if request.path.rstrip("/") in ("/health", "/api/health"):
            return json_response(HEALTH)
        if len(parts) < 3 or parts[1] != "api" or parts[2] not in self.server.routes:
            return self.not_found(request)
        rest = "/" + (parts[3] if len(parts) > 3 else "")
        if rest.rstrip("/") == "/health":
            return json_response(HEALTH)
        method = "GET" if request.method == "HEAD" else request.method
        for candidate in self.server.routes[parts[2]]:
            match = candidate.pattern.match(rest)
            if match and candidate.method == method:
                request.params = {k: v for k, v in match.groupdict().items() if v is not None}
                return self.call(candidate, request, parts[2])
        return self.not_found(request)

    def call(self, candidate: Route, request: Request, service: str) -> Response | None:
        try:
            response = candidate.handler(request)
        except ApiError as exc:
            response = json_response(exc.body, exc.status)
        except Hang:
            time.sleep(self.server.app.knobs["hang_seconds"])
            self.close_connection = True
            return None
        except Exception as exc:  # Express's error handler: any throw is a 500 with its text
            response = json_response({"message": f"{type(exc).__name__}: {exc}"}, 500)
        response.headers.append(("Access-Control-Allow-Origin", "*"))
        if service == "warehouse":
            response.headers.extend(NOCACHE)
        return response

    @staticmethod
    def not_found(request: Request) -> Response:
        text = f"Cannot {request.method} {request.path}"
        return Response(404, [("Content-Type", "text/html; charset=utf-8")], text.encode())

    def admin(self, request: Request) -> Response:
        """The knobs, the request log and test-data injection; loopback clients only."""
        if not ipaddress.ip_address(self.client_address[0].split("%")[0]).is_loopback:
            return json_response({"message": "admin endpoints answer loopback clients only"}, 403)
        server, method = self.server, request.method
        parts = request.path.split("/")[2:]
        try:
            if parts == ["knobs"]:
                knobs = server.app.knobs
                if method == "PUT":
                    return json_response(knobs.merge(json.loads(request.body or b"{}")))
                if method == "DELETE":
                    return json_response(knobs.reset())
                return json_response(knobs.snapshot())
            if parts == ["log"]:
                if method == "DELETE":
                    server.log.clear()
                return json_response(server.log.entries())
            if (
                len(parts) == 2
                and parts[0] == "db"
                and parts[1] in COLLECTIONS
                and method == "POST"
            ):
                records = json.loads(request.body)
                server.app.store.upsert(parts[1], records)
                return json_response({"upserted": len(records)})
            if len(parts) == 2 and parts[0] == "archive" and method == "PUT":
                server.app.store.replace_archive(parts[1], request.body)
                return json_response({"size": len(request.body)})
        except (KnobError, ValueError, TypeError, KeyError) as exc:
            return json_response({"message": f"{type(exc).__name__}: {exc}"}, 400)
        return self.not_found(request)

    def send(self, request: Request, response: Response, admin: bool = False) -> tuple[int, int]:
        """Writes the response; returns (status, body bytes sent)."""
        accepts_gzip = "gzip" in (self.headers.get("Accept-Encoding") or "")
        length = response.length
        compress = (
            not admin
            and accepts_gzip
            and response.compressible
            and (length is None or length > GZIP_THRESHOLD)
        )
        chunked = compress or length is None
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if compress:
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if request.method == "HEAD":
            return response.status, 0
        plan = self.server.app.knobs.body_plan(request.path) if not admin else None
        raw = ChunkedWriter(self.wfile) if chunked else self.wfile
        shaped = ShapedWriter(raw, plan) if plan and not plan.plain else None
        sink = shaped or _Counter(raw)
        try:
            if (
                shaped is None
                and not compress
                and response.file is not None
                and not self.server.tls
            ):
                self.sendfile(response.file, response.file_size, sink)
            else:
                target: BinaryIO = (
                    gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0)
                    if compress
                    else sink
                )
                self.write_body(response, target)
                if compress:
                    target.close()
                if shaped:
                    shaped.finish()
                if chunked:
                    raw.close()
        except Truncated:
            self.drop_connection()
        except OSError:
            self.close_connection = True
        return response.status, sink.sent

    def sendfile(self, path: Path, size: int, counter: _Counter) -> None:
        """Kernel-to-socket copy; a file shorter than announced ends the connection early."""
        with path.open("rb") as source:
            while counter.sent < size:
                sent = os.sendfile(
                    self.connection.fileno(), source.fileno(), counter.sent, size - counter.sent
                )
                if not sent:
                    raise OSError("file shrank while being sent")
                counter.sent += sent

    @staticmethod
    def write_body(response: Response, target: BinaryIO) -> None:
        if response.producer is not None:
            response.producer(target)
        elif response.file is not None:
            with response.file.open("rb") as source:
                while chunk := source.read(FILE_CHUNK):
                    target.write(chunk)
        else:
            target.write(response.body)

    def drop_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Counter:
    """A pass-through writer that counts body bytes (the unshaped case)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.sent = 0

    def write(self, data: bytes | memoryview) -> int:
        self._out.write(data)
        self.sent += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    knobs: dict | None = None,
) -> None:
    """Serves `root` until SIGTERM/SIGINT; prints the base URL as the first stdout line."""
    app = App(Store(root), Signer(root / "keys"), Knobs(knobs))
    server = EmulatorServer((host, port), app, tls)
    scheme = "https" if tls else "http"
    shown_host = f"[{host}]" if ":" in host else host
    print(f"{scheme}://{shown_host}:{server.server_port}/api", flush=True)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
