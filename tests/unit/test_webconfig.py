"""--web.config.file (exporter-toolkit format): TLS, client certificates and basic auth on real HTTPS requests to
127.0.0.1 with certificates made by openssl in the test; validation errors are one line naming the key; the
listen backlog is what the kernel reports for the socket."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipftrace_exporter.cli import exporter_cli, run_command
from ipftrace_exporter.errors import ConfigError
from ipftrace_exporter.httpserver import LISTEN_BACKLOG, HttpServer
from ipftrace_exporter.metrics import ExporterMetrics
from ipftrace_exporter.webconfig import load_web_config
from tests.support.tls import Pki, bcrypt_hash, make_pki

PASSWORD = "s3cret-scrape"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def web_config(tmp_path: Path, pki: Pki, client_auth: str | None = None, users: bool = True) -> Path:
    lines = ["tls_server_config:", f"  cert_file: {pki.server_cert}", f"  key_file: {pki.server_key}"]
    if client_auth:
        lines += [f"  client_auth_type: {client_auth}", f"  client_ca_file: {pki.ca}"]
    if users:
        lines += ["basic_auth_users:", f"  prometheus: '{bcrypt_hash(PASSWORD)}'"]
    lines += ["http_server_config:", "  headers: {X-Content-Type-Options: nosniff}"]
    path = tmp_path / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(web: Path | None) -> Iterator[HttpServer]:
    server = HttpServer("127.0.0.1:0", ExporterMetrics(["f"]).registry,
                        web=load_web_config(web) if web is not None else None)
    server.start()
    try:
        yield server
    finally:
        server.close()


def https_get(port: int, path: str, pki: Pki, password: str | None = PASSWORD, client_cert: bool = False,
              user: str = "prometheus") -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {}
    if password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_tls_and_basic_auth_protect_metrics(tmp_path: Path, pki: Pki) -> None:
    for server in serve(web_config(tmp_path, pki)):
        assert server.url.startswith("https://127.0.0.1:")
        status, headers, body = https_get(server.port, "/metrics", pki)
        assert status == 200 and b"ipftrace_build_info" in body and b"process_resident_memory_bytes" in body
        assert headers["X-Content-Type-Options"] == "nosniff"
        for password in (None, "wrong"):
            status, headers, _ = https_get(server.port, "/metrics", pki, password=password)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert https_get(server.port, "/metrics", pki, user="nobody")[0] == 401
        assert https_get(server.port, "/metrics", pki)[0] == 200  # the remembered success still checks out
        assert https_get(server.port, "/healthz", pki, password=None)[0] == 200  # kubelet probes: no credentials
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:  # plain HTTP: no answer
            plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = plain.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert b"ipftrace" not in answer


def test_client_certificates_are_required_when_configured(tmp_path: Path, pki: Pki) -> None:
    for server in serve(web_config(tmp_path, pki, client_auth="RequireAndVerifyClientCert", users=False)):
        assert https_get(server.port, "/metrics", pki, password=None, client_cert=True)[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(server.port, "/metrics", pki, password=None, client_cert=False)
        assert https_get(server.port, "/metrics", pki, password=None, client_cert=True)[0] == 200  # still serving


def test_the_listen_backlog_is_large(tmp_path: Path) -> None:
    """For a listening socket `ss` reports the backlog as Send-Q (the standard library's default is 5)."""
    for server in serve(None):
        out = subprocess.run(["ss", "-Htln", f"sport = :{server.port}"], capture_output=True, text=True,
                             check=True).stdout.split()
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(out[2]) == min(LISTEN_BACKLOG, somaxconn) >= 128


@pytest.mark.parametrize(("text", "message"), [
    ("tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}",
     "tls_server_config.cert_file/key_file: cannot load '/nonexistent.crt' / '/nonexistent.key'"),
    ("tls_server_config: {cert_file: a.crt}", "tls_server_config.cert_file and key_file are both required"),
    ("basic_auth_users: {prometheus: plaintext}", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("tls_server_config: {cert_fil: x}", "tls_server_config.cert_fil: unknown key"),
    ("tls_cofig: {}", "tls_cofig: unknown key"),
    ("http_server_config: {headers: {Set-Cookie: a}}", "http_server_config.headers.Set-Cookie: not one of"),
    (("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"), "expands to more than"),
])
def test_web_config_errors_are_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("auth", "message"), [
    ("RequestClientCert", "client_auth_type: RequestClientCert: not supported"),
    ("VerifyClientCertIfGiven", None),
])
def test_client_auth_types(tmp_path: Path, pki: Pki, auth: str, message: str | None) -> None:
    path = web_config(tmp_path, pki, client_auth=auth)
    if message is None:
        assert load_web_config(path).tls.verify_mode == ssl.CERT_OPTIONAL  # type: ignore[union-attr]
    else:
        with pytest.raises(ConfigError, match=message):
            load_web_config(path)


def test_the_exporter_checks_the_web_config_before_starting(tmp_path: Path, pki: Pki,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("basic_auth_users: {prometheus: hunter2}\n")
    assert run_command("ipftrace-exporter", exporter_cli, ["--web.config.file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a bcrypt hash" in err
