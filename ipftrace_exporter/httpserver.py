"""The daemon's one HTTP server: /metrics (Prometheus), /healthz (main loop alive), /readyz (probes attached).

A ThreadingHTTPServer in a daemon thread, with a listen backlog of LISTEN_BACKLOG (the standard library's 5 made
1,000 concurrent scrapes time out). With a web config (webconfig.py, `--web.config.file`) connections are TLS (the
handshake runs in the connection's own thread, bounded by REQUEST_TIMEOUT_S, so a slow client never stalls the
accept loop) and /metrics asks for basic auth. Checks are callables returning (ok, reason); one that raises
counts as failing, with a one-line reason (never a traceback in a response).
"""

from __future__ import annotations

import errno
import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from .config import parse_address
from .errors import ConfigError
from .webconfig import WebConfig

__all__ = ["Check", "Heartbeat", "HttpServer", "parse_address", "render_metrics"]

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""A health or readiness check: (ok, one-line reason)."""

REQUEST_TIMEOUT_S = 30.0
LISTEN_BACKLOG = 1024  # pending connections the kernel queues (further capped by net.core.somaxconn)


class Heartbeat:
    """The main loop calls beat() every iteration; as a Check it fails once no beat came for `max_age_s`."""

    def __init__(self, max_age_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        """Record that the main loop is alive."""
        self._last = self._clock()

    def __call__(self) -> tuple[bool, str]:
        age = self._clock() - self._last
        if age <= self.max_age_s:
            return True, "ok"
        return False, f"main loop stalled: no heartbeat for {age:.1f}s (limit {self.max_age_s:g}s)"


def render_metrics(
    registry: CollectorRegistry,
    accept: str | None = None,
    accept_encoding: str | None = None,
    names: list[str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The registry as the Accept header asks (Prometheus text or OpenMetrics), gzipped if accepted."""
    encoder, content_type = choose_encoder(accept or "")
    source = registry.restricted_registry(names) if names else registry
    body = encoder(source)
    headers = {"Content-Type": content_type}
    if gzip_accepted(accept_encoding or ""):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return body, headers


class HttpServer:
    """Serves /metrics, /healthz and /readyz on one address; start() binds, close() stops."""

    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        health: Check | None = None,
        ready: Check | None = None,
        web: WebConfig | None = None,
    ) -> None:
        self.address = address
        self.web = web
        self.host, self.requested_port = parse_address(address, "metrics address")
        self.registry = registry
        self.health = health
        self.ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when the address asked for port 0); 0 before start()."""
        return self._server.server_address[1] if self._server is not None else 0

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. http://127.0.0.1:9436."""
        host = self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1"
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        scheme = "https" if self.web is not None and self.web.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> int:
        """Bind, serve in a daemon thread, return the bound port; ConfigError names the address."""
        if self._server is not None:
            return self.port
        family = _family(self.host, self.requested_port, self.address)
        server_class = type("_Server", (_Server,), {"address_family": family})
        try:
            server = server_class((self.host, self.requested_port), _Handler)
        except OSError as err:
            reason = "address already in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
            raise ConfigError(f"metrics address {self.address}: cannot listen: {reason}") from None
        server.app = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="ipftrace-http", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s (port %d; e.g. %s/metrics)", self.address, self.port,
                 self.url)
        return self.port

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_check(check: Check | None, name: str) -> tuple[bool, str]:
    if check is None:
        return True, "ok"
    try:
        ok, reason = check()
    except Exception as err:  # a check that breaks means "not ok", with one line of why
        log.debug("%s check raised", name, exc_info=True)
        return False, _one_line(f"{name} check failed: {type(err).__name__}: {err}")
    return bool(ok), _one_line(str(reason)) or ("ok" if ok else "not ok")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _family(host: str, port: int, address: str) -> socket.AddressFamily:
    if ":" in host:
        return socket.AF_INET6
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"metrics address {address}: cannot resolve {host!r}: {err.strerror}") from None
    families = [info[0] for info in infos]
    return socket.AF_INET if socket.AF_INET in families else families[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    app: HttpServer

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's thread: the TLS handshake first when configured, then the HTTP exchange."""
        tls = self.app.web.tls if self.app.web is not None else None
        if tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(REQUEST_TIMEOUT_S)
        try:
            conn = tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.debug("http %s: TLS handshake failed: %s", client_address[0], err)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] also serves IPv4
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        if url.path == "/metrics":
            auth = app.web.auth if app.web is not None else None
            if auth is not None and not auth.check(self.headers.get("Authorization")):
                self._send(401, b"unauthorized\n", {"Content-Type": "text/plain; charset=utf-8",
                                                     "WWW-Authenticate": 'Basic realm="ipftrace-exporter"'},
                           send_body)
                return
            try:
                names = parse_qs(url.query).get("name[]")
                body, headers = render_metrics(
                    app.registry, self.headers.get("Accept"), self.headers.get("Accept-Encoding"), names
                )
            except Exception as err:  # noqa: BLE001 - never a traceback to the scraper
                log.warning("metrics: scrape failed: %s: %s", type(err).__name__, err)
                reason = _one_line(f"scrape failed: {type(err).__name__}: {err}")
                self._send(500, f"{reason}\n".encode(), send_body=send_body)
                return
            self._send(200, body, headers, send_body)
        elif url.path == "/healthz":
            ok, reason = _run_check(app.health, "health")
            self._send(200 if ok else 503, f"{'ok' if ok else reason}\n".encode(), send_body=send_body)
        elif url.path == "/readyz":
            ok, reason = _run_check(app.ready, "readiness")
            self._send(200 if ok else 503, f"{'ok' if ok else reason}\n".encode(), send_body=send_body)
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", send_body=send_body)

    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, send_body: bool = True
    ) -> None:
        self.send_response(status)
        extra = self.server.app.web.headers if self.server.app.web is not None else {}
        for name, value in {**(headers or {"Content-Type": "text/plain; charset=utf-8"}), **extra}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s: " + format, self.address_string(), *args)
