"""End to end: a real Prometheus (Debian's `prometheus`) scrapes the running exporter with
deploy/examples/prometheus.yml, and every query of the Grafana dashboard returns data through its HTTP API.

The exporter runs as deployed: with only the capabilities deploy/kubernetes/daemonset.yaml adds (setpriv
empties the bounding set but for them, the equivalent of `drop: [ALL]` + `add`) and no_new_privs
(`allowPrivilegeEscalation: false`), so this also proves that capability set is enough.

The exporter runs its embedded default config (no --config) and binds to loopback; the only traffic is sent to
127.0.0.1: pings, an ICMP echo with a bad checksum and an unsolicited echo reply (dropped by the kernel as
ICMP_CSUM and NO_SOCKET), and a UDP datagram to a closed port (NO_SOCKET), each sent only where a default flow
matches it. Every process started here is ended by its PID in a `finally`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_deploy import (
    PROMETHEUS_CONFIG,
    dashboard_queries,
    dashboard_variables,
    exporter_container,
    load_dashboard,
    parse_label_values,
    promql_metric_names,
    regex_alternation,
    substitute,
    variable_query,
)

pytestmark = pytest.mark.kernel

PROMETHEUS = Path("/usr/bin/prometheus")
EXPORTER = Path(sys.executable).with_name("ipftrace-exporter")
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval would be at most, given a 1 s scrape interval
READY_TIMEOUT_S = 120.0  # header tree + compile + attach on a loaded machine
QUERY_TIMEOUT_S = 30.0
# Metrics whose series exist only after an event this test cannot cause, with the reason.
MAY_BE_EMPTY = {
    "ipftrace_spans_dropped_total": "a series per drop reason, made by the first dropped span (no OTLP here)",
}
DROP_METRIC = "ipftrace_skb_drops_total"
EXPECTED_DROP_REASONS = {"ICMP_CSUM", "NO_SOCKET"}

_T = TypeVar("_T")


# ---- processes, ports, HTTP --------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process with stdout and stderr going to a log file; `env` is added to this process's environment,
    less OTEL_* (no span may leave loopback because of the caller's environment)."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**base, **(env or {})})


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM this process (by its PID), then SIGKILL it if it has not exited in time."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def tail(log: Path, lines: int = 40) -> str:
    """The end of a log file, for failure messages."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(check: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.25,
             log: Path | None = None) -> _T:
    """Poll `check` until it returns something other than None (or False); fail naming `what` (and the end
    of `log`)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            detail = f":\n{tail(log)}" if log else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def http_get(url: str, params: Iterable[tuple[str, str]] = (), timeout: float = 5.0) -> bytes:
    """GET a URL (query parameters encoded)."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(list(params))}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def prom_api(base: str, path: str, params: Iterable[tuple[str, str]] = ()) -> Any:
    """`data` of a Prometheus HTTP API answer; fails the test on an API error."""
    body = json.loads(http_get(f"{base}{path}", params))
    assert body["status"] == "success", body
    return body["data"]


def as_deployed(argv: list[str]) -> list[str]:
    """argv run under setpriv with the DaemonSet's capabilities only, and no_new_privs."""
    context = exporter_container()["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"] and context["allowPrivilegeEscalation"] is False
    caps = ",".join(f"+{cap.lower()}" for cap in context["capabilities"]["add"])
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is missing"
    return [setpriv, f"--bounding-set=-all,{caps}", "--inh-caps=-all", "--no-new-privs", "--", *argv]


def start_exporter_as_deployed(args: list[str], ready_file: Path, log: Path,
                               cache_dir: str) -> subprocess.Popen[bytes]:
    """The exporter with `args` under the DaemonSet's capabilities, once its --ready-file exists (fails the test
    with the end of its log if it exits first)."""
    exporter = start(as_deployed([str(EXPORTER), *args, "--ready-file", str(ready_file)]), log,
                     env={"IPFTRACE_CACHE_DIR": cache_dir, "PYTHONUNBUFFERED": "1"})

    def exporter_ready() -> bool:
        if exporter.poll() is not None:
            pytest.fail(f"the exporter exited with {exporter.returncode}:\n{tail(log)}")
        return ready_file.exists()

    try:
        wait_for(exporter_ready, READY_TIMEOUT_S, "the exporter's --ready-file", log=log)
    except BaseException:
        stop(exporter)
        raise
    return exporter


# ---- traffic to 127.0.0.1 only -----------------------------------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def send_icmp_drops() -> None:
    """Two ICMP packets to 127.0.0.1 that the kernel drops: an echo request with a bad checksum (icmp_rcv,
    ICMP_CSUM) and an echo reply nobody waits for (ping_rcv, NO_SOCKET)."""
    payload = b"ipftrace-e2e"
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        request = struct.pack("!BBHHH", 8, 0, 0, 0x1CE, 1) + payload
        good = _checksum(request)
        bad = good ^ 0xFFFF or 1
        sock.sendto(request[:2] + struct.pack("!H", bad) + request[4:], ("127.0.0.1", 0))
        reply = struct.pack("!BBHHH", 0, 0, 0, 0x1CF, 1) + payload
        sock.sendto(reply[:2] + struct.pack("!H", _checksum(reply)) + reply[4:], ("127.0.0.1", 0))


def send_udp_to_closed_port() -> None:
    """A UDP datagram to a port of 127.0.0.1 nobody listens on (__udp4_lib_rcv, NO_SOCKET)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"ipftrace-e2e", ("127.0.0.1", port))


def ping_loopback(count: int = 3) -> None:
    """ping -c COUNT 127.0.0.1 (iputils-ping)."""
    ping = shutil.which("ping")
    assert ping, "ping (iputils-ping) is missing: scripts/setup.sh installs it"
    subprocess.run([ping, "-c", str(count), "-i", "0.2", "-W", "1", "127.0.0.1"], check=True,
                   capture_output=True, timeout=30)


def flow_matches(flow: Any, version: int, proto: int, address: str) -> bool:
    """Would this FlowSpec match a port-less packet of this IP version and protocol to/from `address`?"""
    import ipaddress

    ip = ipaddress.ip_address(address)
    if flow.effective_ipversion not in (0, version):
        return False
    if flow.l4proto is not None and flow.l4proto != proto:
        return False
    if flow.sport is not None or flow.dport is not None:
        return False
    return all(net is None or ip in net for net in (flow.saddr, flow.daddr))


def make_traffic(flows: Iterable[Any]) -> bool:
    """Send the loopback traffic the default flows see; True if some of it is dropped by the kernel."""
    flows = list(flows)
    ping_loopback()
    dropped = False
    if any(flow_matches(f, 4, socket.IPPROTO_ICMP, "127.0.0.1") for f in flows):
        send_icmp_drops()
        dropped = True
    if any(flow_matches(f, 4, socket.IPPROTO_UDP, "127.0.0.1") for f in flows):
        send_udp_to_closed_port()
        dropped = True
    return dropped


# ---- Prometheus and the dashboard --------------------------------------------------------------------------

def prometheus_config(exporter_address: str) -> dict[str, Any]:
    """deploy/examples/prometheus.yml with the `ipftrace` job's target rewritten and a 1 s scrape interval."""
    (config,) = [doc for doc in yaml.safe_load_all(PROMETHEUS_CONFIG.read_text(encoding="utf-8")) if doc]
    config.setdefault("global", {}).update(scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL,
                                           evaluation_interval=SCRAPE_INTERVAL)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ipftrace"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["localhost:9436"], "the example's target changed: update this test"
    job["static_configs"] = [{"targets": [exporter_address]}]
    for key in ("scrape_interval", "scrape_timeout"):
        job.pop(key, None)
    return config


def exported_metric_names(metrics_text: str) -> set[str]:
    """Names a scrape of /metrics offers: sample names, and `<family>_total` for every counter family."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names.update(sample.name for sample in family.samples)
    return names


def resolve_variables(base: str, dashboard: dict[str, Any]) -> dict[str, str]:
    """The dashboard's query variables as Grafana fills them by default ("All"), in order; each must have
    values. `<name>__values` holds the values found, comma-separated."""
    values: dict[str, str] = {"datasource": "prometheus"}
    for name, var in dashboard_variables(dashboard).items():
        if var["type"] != "query":
            continue
        selector, label = parse_label_values(variable_query(var))
        path = f"/api/v1/label/{label}/values"
        params = [("match[]", substitute(selector, values))] if selector else []
        found = sorted(wait_for(lambda p=path, q=params: prom_api(base, p, q) or None, QUERY_TIMEOUT_S,
                                f"values of dashboard variable {name} ({variable_query(var)})"))
        all_value = var.get("allValue") if var.get("includeAll") else None
        values[name] = all_value or regex_alternation(found)
        values[f"{name}__values"] = ",".join(found)
    return values


# ---- the test ----------------------------------------------------------------------------------------------

def test_prometheus_scrapes_the_exporter_and_every_dashboard_query_returns_data(tmp_path: Path,
                                                                                 cache_dir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the exporter loads BPF programs")
    if not PROMETHEUS.is_file():
        pytest.fail(f"{PROMETHEUS} is missing: install the Debian package prometheus "
                    "(one of scripts/setup.sh's test packages)")
    assert EXPORTER.is_file(), f"{EXPORTER} is missing: run scripts/setup.sh"
    from ipftrace_exporter.config import default_config

    flows = default_config().flows
    exporter_address = f"127.0.0.1:{free_port()}"
    prometheus_base = f"http://127.0.0.1:{free_port()}"
    ready_file = tmp_path / "ready"
    exporter_log, prometheus_log = tmp_path / "exporter.log", tmp_path / "prometheus.log"
    started: list[subprocess.Popen[bytes]] = []
    try:
        exporter = start_exporter_as_deployed(["--metrics-address", exporter_address, "--log-level", "info"],
                                              ready_file, exporter_log, cache_dir)
        started.append(exporter)
        drops_expected = make_traffic(flows)

        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(prometheus_config(exporter_address)), encoding="utf-8")
        prometheus = start([str(PROMETHEUS), f"--config.file={config_file}",
                            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                            f"--web.listen-address={prometheus_base.removeprefix('http://')}",
                            "--storage.tsdb.retention.time=1h"], prometheus_log)
        started.append(prometheus)

        def prometheus_ready() -> bool:
            if prometheus.poll() is not None:
                pytest.fail(f"prometheus exited with {prometheus.returncode}:\n{tail(prometheus_log)}")
            try:
                return http_get(f"{prometheus_base}/-/ready") is not None
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(prometheus_ready, 60, "prometheus /-/ready", log=prometheus_log)

        def target_up() -> bool:
            targets = prom_api(prometheus_base, "/api/v1/targets")["activeTargets"]
            wanted = {"job": "ipftrace", "instance": exporter_address}
            return any(wanted.items() <= t["labels"].items() and t["health"] == "up" for t in targets)

        wait_for(target_up, 60, f"prometheus target ipftrace/{exporter_address} up", log=prometheus_log)

        # Every metric name the dashboard uses is one the exporter really exports (a real scrape).
        dashboard = load_dashboard()
        queries = dashboard_queries(dashboard)
        used = set().union(*(promql_metric_names(expr) for _, expr in queries)) - {"up"}
        exported = exported_metric_names(http_get(f"http://{exporter_address}/metrics").decode())
        assert used <= exported, f"dashboard metrics not exported: {sorted(used - exported)}"

        values = resolve_variables(prometheus_base, dashboard)
        assert exporter_address in values["node__values"].split(","), values
        make_traffic(flows)  # again, now that Prometheus samples every second

        empty: list[str] = []
        for title, expr in queries:
            query = substitute(expr, values, RATE_INTERVAL)
            names = promql_metric_names(expr)
            optional = [MAY_BE_EMPTY[n] for n in names if n in MAY_BE_EMPTY]
            if DROP_METRIC in names and not drops_expected:
                optional.append("the default config traces no loopback traffic this test can get dropped")
            deadline = QUERY_TIMEOUT_S if not optional else 3 * float(SCRAPE_INTERVAL.rstrip("s"))
            try:
                wait_for(lambda q=query: prom_api(prometheus_base, "/api/v1/query", [("query", q)])["result"]
                         or None, deadline, f"data for {title!r}")
            except pytest.fail.Exception:
                if not optional:
                    empty.append(f"{title}: {query}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty) + "\n" + tail(exporter_log)

        if drops_expected:
            by_reason = prom_api(prometheus_base, "/api/v1/query",
                                 [("query", f"sum by (reason) ({DROP_METRIC})")])["result"]
            reasons = {sample["metric"].get("reason") for sample in by_reason}
            assert reasons & EXPECTED_DROP_REASONS, f"drop reasons seen: {reasons}"

        # SIGTERM: probes detached, spans flushed, exit 0 (the daemon contract).
        os.kill(exporter.pid, signal.SIGTERM)
        assert exporter.wait(timeout=45) == 0, tail(exporter_log)
    finally:
        for proc in reversed(started):
            stop(proc)
