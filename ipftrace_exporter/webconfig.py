"""`--web.config.file`: TLS and basic authentication for /metrics, in the Prometheus exporter-toolkit format (the file
node_exporter, ebpf_exporter and every exporter built on the toolkit read), validated once at start.

```yaml
tls_server_config:
  cert_file: server.crt          # relative paths are relative to this file's directory
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default) | VerifyClientCertIfGiven | ...
  client_ca_file: ca.crt
  min_version: TLS12             # TLS10 ... TLS13 (default TLS12)
basic_auth_users:
  prometheus: $2b$12$...         # bcrypt hashes (htpasswd -nBC 12 "" | tr -d ':\\n')
http_server_config:
  headers: {Strict-Transport-Security: max-age=31536000}
```

What Python's ssl module cannot do is refused with a one-line error rather than approximated: the client auth
types that accept a certificate without verifying it (`RequestClientCert`, `RequireAnyClientCert`), and
`cipher_suites` / `curve_preferences` / `client_allowed_sans` (Go names). Basic auth protects /metrics; /healthz
and /readyz answer without credentials (kubelet probes; they tell only ok or not), but TLS and client
certificates apply to every connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import bcrypt

from .cache import BoundedCache
from .config import load_yaml_file
from .errors import ConfigError

TOP_KEYS = ("tls_server_config", "basic_auth_users", "http_server_config")
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
            "cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans")
TLS_UNSUPPORTED = ("cipher_suites", "curve_preferences", "client_allowed_sans")
HTTP_KEYS = ("headers", "http2")
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# The response headers exporter-toolkit lets a web config set.
ALLOWED_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "X-XSS-Protection",
                   "Content-Security-Policy")
_BCRYPT_HASH = re.compile(r"\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}")
_DUMMY_HASH = bcrypt.hashpw(b"ipftrace-exporter: no such user", bcrypt.gensalt(rounds=10))
_CACHE_LIMIT = 1024  # remembered good (user, password) pairs: bcrypt costs ~50-100 ms a check by design


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes; remembers successes (a keyed digest of the
    pair, never the password) so that a scrape every 15 s does not cost a bcrypt check each time. An unknown user
    costs the same bcrypt check as a known one (no user enumeration by timing)."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = dict(users)
        self._key = hashlib.sha256(b"".join(sorted(self.users.values()))).digest()
        self._good: BoundedCache[bytes, bool] = BoundedCache(_CACHE_LIMIT)
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        """True when the header holds a configured user and its password."""
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        digest = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if digest in self._good:
                return True
        hashed = self.users.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH) and hashed is not None
        if ok:
            with self._lock:
                self._good[digest] = True
        return ok


@dataclass(frozen=True)
class WebConfig:
    """The parsed web config: a server TLS context (None = plain HTTP), basic auth (None = none), extra headers."""

    source: str
    tls: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the start-up log and --check."""
        parts = [f"web config {self.source}: {'TLS' if self.tls else 'plain HTTP'}"]
        if self.tls is not None and self.tls.verify_mode != ssl.CERT_NONE:
            parts.append("client certificates " + ("required" if self.tls.verify_mode == ssl.CERT_REQUIRED
                                                   else "verified if given"))
        parts.append(f"basic auth for {len(self.auth.users)} users" if self.auth else "no basic auth")
        return ", ".join(parts)


def load_web_config(path: str | PathLike[str]) -> WebConfig:
    """Read and validate a web config file; ConfigError naming the file and key otherwise."""
    source = str(path)
    data = load_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: must be a mapping with keys {', '.join(TOP_KEYS)}")
    _known(data, TOP_KEYS, source, "")
    base = Path(path).parent
    tls = _tls(data.get("tls_server_config"), base, source)
    auth = _users(data.get("basic_auth_users"), source)
    headers = _http(data.get("http_server_config"), source)
    return WebConfig(source, tls, auth, headers)


def _known(section: Mapping[Any, Any], keys: tuple[str, ...], source: str, where: str) -> None:
    for key in section:
        if key not in keys:
            raise ConfigError(f"{source}: {where}{key}: unknown key (known: {', '.join(keys)})")


def _string(section: Mapping[str, Any], key: str, source: str, where: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: {where}{key}: must be a non-empty string")
    return value.strip()


def _tls(raw: Any, base: Path, source: str) -> ssl.SSLContext | None:
    where = "tls_server_config."
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: tls_server_config: must be a mapping")
    _known(raw, TLS_KEYS, source, where)
    for key in TLS_UNSUPPORTED:
        if raw.get(key):
            raise ConfigError(f"{source}: {where}{key}: not supported by ipftrace-exporter (Python's ssl module "
                              "chooses them); remove it")
    cert, key = _string(raw, "cert_file", source, where), _string(raw, "key_file", source, where)
    if not cert or not key:
        raise ConfigError(f"{source}: {where}cert_file and key_file are both required")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name, bound in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        version = _string(raw, name, source, where)
        if version is None:
            continue
        if version not in TLS_VERSIONS:
            raise ConfigError(f"{source}: {where}{name}: {version!r}: must be one of {', '.join(TLS_VERSIONS)}")
        setattr(context, bound, TLS_VERSIONS[version])
    if raw.get("min_version") is None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # exporter-toolkit's default
    try:
        context.load_cert_chain(base / cert, base / key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"{source}: {where}cert_file/key_file: cannot load {cert!r} / {key!r}: "
                          f"{getattr(err, 'strerror', None) or err}") from None
    auth_type = _string(raw, "client_auth_type", source, where) or "NoClientCert"
    if auth_type in CLIENT_AUTH_UNSUPPORTED:
        raise ConfigError(f"{source}: {where}client_auth_type: {auth_type}: not supported (Python's ssl verifies "
                          "any certificate it asks for): use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth_type not in CLIENT_AUTH:
        raise ConfigError(f"{source}: {where}client_auth_type: {auth_type!r}: must be one of "
                          f"{', '.join((*CLIENT_AUTH, *CLIENT_AUTH_UNSUPPORTED))}")
    context.verify_mode = CLIENT_AUTH[auth_type]
    ca = _string(raw, "client_ca_file", source, where)
    if auth_type != "NoClientCert" and ca is None:
        raise ConfigError(f"{source}: {where}client_ca_file: required with client_auth_type {auth_type}")
    if ca is not None:
        try:
            context.load_verify_locations(cafile=base / ca)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"{source}: {where}client_ca_file: cannot load {ca!r}: "
                              f"{getattr(err, 'strerror', None) or err}") from None
    return context


def _users(raw: Any, source: str) -> BasicAuth | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: basic_auth_users: must be a mapping of user name to bcrypt hash")
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{source}: basic_auth_users: {user!r}: not a user name")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed.strip()):
            raise ConfigError(f"{source}: basic_auth_users.{user}: not a bcrypt hash ($2y$..., e.g. from "
                              "htpasswd -nBC 12)")
        users[user] = hashed.strip().encode()
    return BasicAuth(users) if users else None


def _http(raw: Any, source: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: http_server_config: must be a mapping")
    _known(raw, HTTP_KEYS, source, "http_server_config.")
    headers = raw.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ConfigError(f"{source}: http_server_config.headers: must be a mapping of header to value")
    out: dict[str, str] = {}
    for name, value in headers.items():
        canonical = next((known for known in ALLOWED_HEADERS if known.lower() == str(name).lower()), None)
        if canonical is None:
            raise ConfigError(f"{source}: http_server_config.headers.{name}: not one of {', '.join(ALLOWED_HEADERS)}")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ConfigError(f"{source}: http_server_config.headers.{name}: must be a one-line string")
        out[canonical] = value
    return out
