"""A real Prometheus (Debian's) scrapes the running exporter over TLS with a client certificate and basic auth
(`--web.config.file`, the exporter-toolkit format), as the DaemonSet runs it; a second job with a wrong password
is refused. Certificates are made by openssl in the test; only 127.0.0.1 is used; every process started here is
ended by its PID."""

from __future__ import annotations

import os
import subprocess
import urllib.error
from pathlib import Path

import pytest
import yaml

from tests.kernel.test_prometheus_e2e import (
    EXPORTER,
    PROMETHEUS,
    free_port,
    http_get,
    prom_api,
    start,
    start_exporter_as_deployed,
    stop,
    wait_for,
)
from tests.support.tls import bcrypt_hash, make_pki

pytestmark = pytest.mark.kernel
PASSWORD = "scrape-over-tls"


def test_prometheus_scrapes_over_tls_with_client_certificate_and_basic_auth(tmp_path: Path, cache_dir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the exporter loads BPF programs")
    assert PROMETHEUS.is_file() and EXPORTER.is_file()
    pki = make_pki(tmp_path / "pki")
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                              "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca)},
        "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD, rounds=10)},
    }))
    exporter_address = f"127.0.0.1:{free_port()}"
    prometheus_base = f"http://127.0.0.1:{free_port()}"
    ready_file = tmp_path / "ready"
    exporter_log, prometheus_log = tmp_path / "exporter.log", tmp_path / "prometheus.log"
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    jobs = [{"job_name": name, "scheme": "https", "tls_config": tls,
             "basic_auth": {"username": "prometheus", "password": password},
             "static_configs": [{"targets": [exporter_address]}]}
            for name, password in (("ipftrace-tls", PASSWORD), ("ipftrace-wrong-password", "guess"))]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                                           "scrape_configs": jobs}))
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(start_exporter_as_deployed(["--metrics-address", exporter_address, "--web.config.file",
                                                   str(web)], ready_file, exporter_log, cache_dir))
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets nothing
            http_get(f"http://{exporter_address}/metrics")
        prometheus = start([str(PROMETHEUS), f"--config.file={config_file}",
                            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                            f"--web.listen-address={prometheus_base.removeprefix('http://')}"], prometheus_log)
        started.append(prometheus)

        def health() -> dict[str, tuple[str, str]] | None:
            try:
                targets = prom_api(prometheus_base, "/api/v1/targets")["activeTargets"]
            except (urllib.error.URLError, ConnectionError):
                return None
            states = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
            return states if all(state != "unknown" for state, _ in states.values()) and len(states) == 2 else None

        states = wait_for(health, 60, "both targets scraped", log=prometheus_log)
        assert states["ipftrace-tls"] == ("up", ""), states
        assert states["ipftrace-wrong-password"][0] == "down" and "401" in states["ipftrace-wrong-password"][1]

        def build_info() -> list | None:
            result = prom_api(prometheus_base, "/api/v1/query", [("query", 'ipftrace_build_info{job="ipftrace-tls"}')])
            return result["result"] or None

        assert wait_for(build_info, 30, "ipftrace_build_info through Prometheus")[0]["metric"]["backend"]
        rss = prom_api(prometheus_base, "/api/v1/query",
                       [("query", 'process_resident_memory_bytes{job="ipftrace-tls"}')])["result"]
        assert rss and float(rss[0]["value"][1]) > 20e6
    finally:
        for proc in reversed(started):
            stop(proc)
