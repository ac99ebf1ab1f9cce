"""Packet identity: a traced packet stays one path when its headers are rewritten (NAT through a router namespace),
and IPv6 datagrams of one flow that reuse an skb are told apart (their payload is part of the fingerprint). Counts
are checked against the kernel's own counters (nstat in the receiving namespace)."""

from __future__ import annotations

import json
import re
import time

from .netns import NetChain, NetPair

FRONT_PORT, SERVER_PORT, CLIENT_PORT = 7000, 7001, 40123
DATAGRAMS = 20


def nat_rules(chain: NetChain) -> str:
    """DNAT the router's client-side address:FRONT_PORT to the server's SERVER_PORT, masquerade towards the server."""
    return (f"table ip ipft_nat {{\n"
            f"  chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n"
            f"    ip daddr {chain.router_client_side4} udp dport {FRONT_PORT} dnat to {chain.server4}:{SERVER_PORT}\n  }}\n"
            f"  chain post {{ type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip daddr {chain.server4} masquerade\n  }}\n"
            f"}}\n")


def nstat(run, ns: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The namespace's SNMP counters (absolute values)."""
    out = run(ns, ["nstat", "-a", "-z", "-j"]).stdout
    return {name: int(value) for table in json.loads(out).values() for name, value in table.items()}


def send_datagrams(run, ns: str, address: str, port: int, count: int, family: str = "AF_INET",  # type: ignore[no-untyped-def]
                   source_port: int = 0) -> None:
    """`count` datagrams 20 ms apart whose payloads differ only after a 17-byte prefix."""
    code = (f"import socket, time\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\n"
            f"s.bind(('', {source_port}))\n"
            f"for i in range({count}):\n"
            f"    s.sendto(b'ipftrace-test-dg %08d' % i, ({address!r}, {port}))\n"
            f"    time.sleep(0.02)\n")
    run(ns, ["python3", "-c", code], timeout=60)


def test_a_nat_rewritten_packet_is_one_path_to_its_drop_with_the_new_headers(start_tool, netchain: NetChain) -> None:  # type: ignore[no-untyped-def]
    run = netchain.exec_in
    run(netchain.ns_router, ["nft", "-f", "-"], input=nat_rules(netchain))
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-d4",
                      netchain.router_client_side4, "-dp", str(FRONT_PORT))
    before = nstat(run, netchain.ns_server)
    send_datagrams(run, netchain.ns_client, netchain.router_client_side4, FRONT_PORT, DATAGRAMS,
                   source_port=CLIENT_PORT)
    time.sleep(1.0)
    no_ports = nstat(run, netchain.ns_server)["UdpNoPorts"] - before.get("UdpNoPorts", 0)
    code, out, err = tool.stop()
    assert code == 130, err
    assert no_ports == DATAGRAMS  # the kernel's count: every datagram reached the server's closed port
    paths = [json.loads(line) for line in out.splitlines()]
    assert len(paths) == DATAGRAMS, [(p["outcome"], [e["function"] for e in p["events"]]) for p in paths]
    for path in paths:
        assert path["outcome"] == "dropped", path
        assert path["drop"]["reason"] == "NO_SOCKET" and path["drop"]["probe"] == "skb:kfree_skb", path
        assert (path["daddr"], path["dport"], path["sport"]) == (netchain.router_client_side4, FRONT_PORT, CLIENT_PORT)
        rewrites = [event for event in path["events"] if "rewrite" in event]
        assert len(rewrites) == 1, path
        at = path["events"].index(rewrites[0])
        assert rewrites[0]["rewrite"]["daddr"] == netchain.server4 and rewrites[0]["rewrite"]["dport"] == SERVER_PORT
        assert rewrites[0]["rewrite"]["saddr"] == netchain.router_server_side4  # masqueraded
        seen = [event["function"] for event in path["events"]]
        # the router's receive (before NAT), its transmit towards the server (after), the server's receive
        assert seen.count("net:netif_receive_skb") == 2 and seen.count("net:net_dev_xmit") == 2, seen
        assert seen.index("net:netif_receive_skb") < at < len(seen) - seen[::-1].index("net:netif_receive_skb") - 1, seen
        assert seen[at] == "net:net_dev_queue", seen  # the first probe after the router's netfilter hooks


def test_nat_text_output_names_the_new_headers(start_tool, netchain: NetChain) -> None:  # type: ignore[no-untyped-def]
    run = netchain.exec_in
    run(netchain.ns_router, ["nft", "-f", "-"], input=nat_rules(netchain))
    tool = start_tool("ipftrace", "-b", "tracepoint", "-l4", "UDP", "-d4", netchain.router_client_side4,
                      "-dp", str(FRONT_PORT), "--count", "1")
    send_datagrams(run, netchain.ns_client, netchain.router_client_side4, FRONT_PORT, 1, source_port=CLIENT_PORT)
    code, out, err = tool.finish()
    assert code == 0, err
    assert re.search(rf"headers rewritten \(NAT\): now UDP {re.escape(netchain.router_server_side4)}:\d+ -> "
                     rf"{re.escape(netchain.server4)}:{SERVER_PORT}", out), out
    assert "DROPPED at" in out and "NO_SOCKET" in out, out


def test_ipv6_datagrams_that_reuse_an_skb_are_one_path_each(start_tool, netpair: NetPair) -> None:  # type: ignore[no-untyped-def]
    run = netpair.exec_in
    server = netpair.popen_in(netpair.ns_b, ["python3", "-c", (
        "import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"s.bind(('{netpair.addr_b6}', {SERVER_PORT}))\nprint('listening', flush=True)\n"
        "while True: s.recv(2048)\n")], stdout=-1)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        netpair.ping_b(count=1, v6=True)  # neighbours resolved: no copy of a datagram held for neighbour discovery
        tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-d6", netpair.addr_b6,
                          "-dp", str(SERVER_PORT))
        before = nstat(run, netpair.ns_b)
        send_datagrams(run, netpair.ns_a, netpair.addr_b6, SERVER_PORT, 200, family="AF_INET6")
        time.sleep(2.5)  # the last datagram's path ends by idle timeout (its free has no tracepoint)
        received = nstat(run, netpair.ns_b)["Udp6InDatagrams"] - before.get("Udp6InDatagrams", 0)
        code, out, err = tool.stop()
    finally:
        server.kill()
        server.wait()
    assert code == 130, err
    assert received == 200
    summary = re.search(r"INFO: ([\d,]+) paths? printed; the kernel matched ([\d,]+) packets", err)
    assert summary, err
    paths = [json.loads(line) for line in out.splitlines()]
    # One path per datagram (the kernel matched each once: none was taken for the one before, whose skb it reuses).
    odd = [(p["outcome"], p["continued"], p["protocol"], " ".join(e["function"].split(":")[-1] for e in p["events"]))
           for p in paths if len(p["events"]) not in (5, 6) or p["events"][0]["function"] != "net:net_dev_queue"]
    assert int(summary[2].replace(",", "")) == 200, err
    assert len(paths) == 200, odd[:20]
    assert all(path["events"][0]["function"] == "net:net_dev_queue" for path in paths)
