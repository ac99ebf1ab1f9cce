"""`ipftrace` against the real kernel: traffic between the test's namespaces, asserted on what BPF saw."""

from __future__ import annotations

import itertools
import json
import re
import socket

import pytest

from .netns import NetPair

TRACEPOINT = ["-b", "tracepoint"]


def json_paths(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def functions(path: dict) -> list[str]:
    return [event["function"] for event in path["events"]]


def test_ping_is_traced_with_addresses_ordered_times_and_receive_and_consume(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "-d4", netpair.addr_b4, "--count", "3", "-o", "json",
                      "--timeout", "60")
    netpair.ping_b(count=5)
    code, out, err = tool.finish()
    assert code == 0, err
    paths = json_paths(out)
    assert len(paths) == 3
    for path in paths:
        assert path["protocol"] == "ICMP"
        assert path["saddr"] == netpair.addr_a4
        assert path["daddr"] == netpair.addr_b4
        stamps = [event["timestamp_ns"] for event in path["events"]]
        assert stamps == sorted(stamps)
    steps = set().union(*(functions(path) for path in paths))
    assert "net:netif_receive_skb" in steps or "net:netif_rx" in steps
    assert any(path["outcome"] == "delivered" and functions(path)[-1] == "skb:consume_skb" for path in paths)
    # The request crosses the veth: transmitted in a, received in b, in one skb path.
    full = [p for p in paths if "net:net_dev_start_xmit" in functions(p) and "net:netif_receive_skb" in functions(p)]
    assert full, [functions(p) for p in paths]


def test_text_output_has_the_seed_shape(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "-d4", netpair.addr_b4, "--count", "1",
                      "--timeout", "60")
    netpair.ping_b(count=3)
    code, out, err = tool.finish()
    assert code == 0, err
    lines = out.rstrip("\n").splitlines()
    assert lines[0] == f"ICMP\t{netpair.addr_a4}\t->\t{netpair.addr_b4}\techo-request (type 8 code 0)"
    assert lines[1] == "     Time Stamp        Δ µs  Function"
    rows = [re.fullmatch(r"\s*(\d+)\s+(?:\+(\d+\.\d{3}))?  \S+", line) for line in lines[2:]]
    rows = [row for row in rows if row]
    assert len(rows) >= 3
    assert rows[0].group(2) is None  # the first step has no previous one
    for before, after in itertools.pairwise(rows):  # Δ is the gap between the two timestamps, in µs
        assert abs(float(after.group(2)) - (int(after.group(1)) - int(before.group(1))) / 1000) < 0.002
    assert out.endswith("\n\n")


def test_udp_to_a_closed_port_is_a_drop_with_reason_and_location(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "UDP", "-d4", netpair.addr_b4, "-dp", "9999", "--count", "1",
                      "-o", "json", "--timeout", "60")
    netpair.python_in(netpair.ns_a, "import socket\n"
                      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      f"[s.sendto(b'x', ('{netpair.addr_b4}', 9999)) for _ in range(3)]\n")
    code, out, err = tool.finish()
    assert code == 0, err
    (path,) = json_paths(out)
    assert path["outcome"] == "dropped"
    assert path["dport"] == 9999
    assert path["drop"]["reason"] == "NO_SOCKET"
    assert path["drop"]["function"] in ("__udp4_lib_rcv", "udp_rcv", "__udp_lib_rcv")
    assert functions(path)[-1] == "skb:kfree_skb"
    assert "DROPPED" not in out  # JSON, not text


@pytest.mark.parametrize("l4proto", ["UDP", "TCP"])
def test_a_whole_ipv6_five_tuple_filter_loads_and_matches(netpair: NetPair, start_tool, l4proto: str) -> None:
    """Both IPv6 addresses and both ports: the largest header filter (its program once went past the BPF stack
    limit, and the compiler ended the tool without a word)."""
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", l4proto, "-s6", netpair.addr_a6, "-d6", netpair.addr_b6,
                      "-sp", "40123", "-dp", "9999", "--count", "1", "-o", "json", "--timeout", "60")
    kind = "SOCK_DGRAM" if l4proto == "UDP" else "SOCK_STREAM"
    netpair.python_in(netpair.ns_a, "import socket\n"
                      f"s = socket.socket(socket.AF_INET6, socket.{kind})\n"
                      "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                      f"s.bind(('{netpair.addr_a6}', 40123))\ns.settimeout(2)\n"
                      f"try: s.sendto(b'x', ('{netpair.addr_b6}', 9999)) if {kind == 'SOCK_DGRAM'} "
                      f"else s.connect(('{netpair.addr_b6}', 9999))\nexcept OSError: pass\n")
    code, out, err = tool.finish()
    assert code == 0, err
    (path,) = json_paths(out)
    assert (path["saddr"], path["sport"], path["daddr"], path["dport"]) == (netpair.addr_a6, 40123, netpair.addr_b6,
                                                                          9999)
    assert path["outcome"] == "dropped", path  # a closed port: NO_SOCKET, or TCP's reset of the SYN


def test_ipv6_ping_is_traced(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-iv", "6", "-l4", "ICMPv6", "-d6", netpair.addr_b6, "--count", "2",
                      "-o", "json", "--timeout", "60")
    netpair.ping_b(count=4, v6=True)
    code, out, err = tool.finish()
    assert code == 0, err
    paths = json_paths(out)
    assert len(paths) == 2
    for path in paths:
        assert path["ipversion"] == 6
        assert path["protocol"] == "ICMPV6"
        assert path["saddr"] == netpair.addr_a6
        assert path["daddr"] == netpair.addr_b6


def test_tcp_filtered_by_destination_port_shows_only_that_port(netpair: NetPair, start_tool) -> None:
    wanted, other = 18080, 18081
    server = netpair.popen_in(netpair.ns_b, ["python3", "-c", (
        "import socket, select\n"
        "ls = []\n"
        f"for port in ({wanted}, {other}):\n"
        "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"    s.bind(('{netpair.addr_b4}', port)); s.listen(); ls.append(s)\n"
        "print('listening', flush=True)\n"
        "for _ in range(2):\n"
        "    ready, _, _ = select.select(ls, [], [], 30)\n"
        "    for s in ready:\n"
        "        c, _ = s.accept(); c.recv(100); c.close()\n"
    )], stdout=__import__("subprocess").PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "TCP", "-d4", netpair.addr_b4, "-dp", str(wanted), "-o", "json",
                          "--timeout", "6")
        netpair.python_in(netpair.ns_a, "import socket, time\n"
                          f"for port in ({other}, {wanted}):\n"
                          f"    c = socket.create_connection(('{netpair.addr_b4}', port), timeout=5)\n"
                          "    c.sendall(b'hello'); time.sleep(0.2); c.close()\n")
        code, out, err = tool.finish()
        assert code == 0, err
        paths = json_paths(out)
        assert len(paths) >= 3  # SYN, ACK, data, FIN ... towards the wanted port
        odd = {p["skb"] for p in paths if p["dport"] != wanted}
        assert not odd, [(p["outcome"], p["dport"], [(e["timestamp_ns"], e["function"], e["cpu"]) for e in p["events"]]) for p in paths if p["skb"] in odd]
        assert {path["daddr"] for path in paths} == {netpair.addr_b4}
    finally:
        server.kill()
        server.wait()


def test_traffic_that_does_not_match_the_filter_gives_no_path(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "-d4", "10.199.254.254", "-o", "json",
                      "--timeout", "3")
    netpair.ping_b(count=3)
    socket.getaddrinfo("localhost", None)  # unrelated local activity
    code, out, err = tool.finish()
    assert code == 0, err
    assert out == ""


def test_ctrl_c_detaches_and_exits_130(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "-d4", netpair.addr_b4)
    code, _, err = tool.stop()
    assert code == 130, err


def test_verbose_wall_clock_rows_show_length_and_device(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "-d4", netpair.addr_b4, "--count", "1", "-v",
                      "--time", "wall", "--timeout", "60", env={"NO_COLOR": ""})
    netpair.ping_b(count=3)
    code, out, err = tool.finish()
    assert code == 0, err
    lines = out.rstrip("\n").splitlines()
    assert lines[1].split() == ["Time", "Stamp", "Δ", "µs", "Function", "Len", "Device"]
    rows = [line.split() for line in lines[2:] if re.match(r"\d\d:\d\d:\d\d\.\d{6} ", line)]
    assert len(rows) >= 3 and "\x1b[" not in out  # piped: no colour
    assert all(row[-2].isdigit() and int(row[-2]) >= 28 for row in rows)  # an ICMP echo is at least 28 bytes
    devices = {row[-1] for row in rows}  # names read in the kernel (netdev module), not resolved here
    assert devices <= {netpair.veth_a, netpair.veth_b, "-"} and netpair.veth_b in devices, devices
