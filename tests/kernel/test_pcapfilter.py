"""pcap-filter expressions in the kernel: real traffic between the test's namespaces, traced only where the
translated filter (ANDed with the flags) says so."""

from __future__ import annotations

import json

import pytest

from .netns import NetPair

TRACEPOINT = ["-b", "tracepoint"]


def json_paths(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_icmp_type_filter_traces_echo_requests_and_never_the_replies(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-o", "json", "--timeout", "6", "--",
                      f"icmp[icmptype] == icmp-echo and host {netpair.addr_b4}")
    netpair.ping_b(count=4)
    code, out, err = tool.finish()
    assert code == 0, err
    paths = json_paths(out)
    assert len(paths) >= 4, err  # one per request (at least: a request may also be seen in both namespaces)
    assert {(p["saddr"], p["daddr"]) for p in paths} == {(netpair.addr_a4, netpair.addr_b4)}  # no reply b -> a


def test_filter_is_anded_with_the_flags(netpair: NetPair, start_tool) -> None:
    # The flags ask for UDP, the filter for ICMP: nothing can match both.
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "UDP", "-o", "json", "--timeout", "5", "--",
                      f"icmp and host {netpair.addr_b4}")
    netpair.ping_b(count=3)
    code, out, err = tool.finish()
    assert code == 0, err
    assert json_paths(out) == []


def test_ipv6_udp_port_filter_traces_only_that_port(netpair: NetPair, start_tool) -> None:
    wanted, other = 19999, 19998
    tool = start_tool("ipftrace", *TRACEPOINT, "-o", "json", "--timeout", "6", "--",
                      f"ip6 and udp and dst port {wanted} and dst host {netpair.addr_b6}")
    netpair.python_in(netpair.ns_a, "import socket\n"
                      "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
                      f"[s.sendto(b'x' * 40, ('{netpair.addr_b6}', port)) for port in ({other}, {wanted}) * 3]\n")
    code, out, err = tool.finish()
    assert code == 0, err
    paths = json_paths(out)
    assert len(paths) >= 3, err
    assert {(p["ipversion"], p["protocol"], p["dport"]) for p in paths} == {(6, "UDP", wanted)}


def test_tcp_flags_and_length_filter_sees_only_syns(netpair: NetPair, start_tool) -> None:
    port = 18443
    server = netpair.popen_in(netpair.ns_b, ["python3", "-c", (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{netpair.addr_b4}', {port})); s.listen(); print('listening', flush=True)\n"
        "for _ in range(2):\n"
        "    c, _ = s.accept(); c.recv(100); c.close()\n"
    )], stdout=__import__("subprocess").PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        tool = start_tool("ipftrace", *TRACEPOINT, "-o", "json", "--timeout", "6", "--",
                          f"tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0 and dst port {port}"
                          " and greater 40")
        netpair.python_in(netpair.ns_a, "import socket, time\n"
                          "for _ in range(2):\n"
                          f"    c = socket.create_connection(('{netpair.addr_b4}', {port}), timeout=5)\n"
                          "    c.sendall(b'hello' * 20); time.sleep(0.2); c.close()\n")
        code, out, err = tool.finish()
        assert code == 0, err
        paths = json_paths(out)
        # two connections: two SYNs (each may be traced once per namespace it crosses), no data, no ACK
        assert paths and all(p["dport"] == port and p["saddr"] == netpair.addr_a4 for p in paths), paths
        assert len({p["sport"] for p in paths}) == 2
        assert all(e["len"] <= 80 for p in paths for e in p["events"])  # a SYN, never the 100-byte data segment
    finally:
        server.kill()


@pytest.mark.parametrize("backend", ["tracepoint", "kprobe"])
def test_every_translated_expression_passes_the_kernel_verifier(cache_dir: str, backend: str) -> None:
    """All the expressions compared with tcpdump, one flow each, in one program: every entry point loads through
    this kernel's verifier (kprobe: verifier-loaded though this kernel cannot attach kprobes). The kprobe entry
    points at skb positions 4 and 5 went past the verifier's million instructions until the tuple was copied
    onto itself past the early exit (bpf/ipftrace.bpf.c), which makes the parse's outcomes one state."""
    from ipftrace_exporter.collector import LOADED
    from ipftrace_exporter.flows import FlowSpec
    from ipftrace_exporter.kernel.view import KernelView
    from ipftrace_exporter.pcapfilter import compile_filter
    from ipftrace_exporter.tracer import Tracer, TraceRequest

    from ..unit.test_pcapfilter import EXPRESSIONS

    flows = tuple(FlowSpec(name=f"f{i}", pcap=compile_filter(e)) for i, e in enumerate(EXPRESSIONS))
    tracer = Tracer(TraceRequest(flows=flows, backend=backend), KernelView(), cache_dir)
    _, report = tracer.verify(backend)
    assert report.checks and all(check.status == LOADED for check in report.checks), report.rejected
