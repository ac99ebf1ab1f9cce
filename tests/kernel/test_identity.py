"""Packet identity: a traced packet stays one path when its headers are rewritten (NAT through a router namespace),
and IPv6 datagrams of one flow that reuse an skb are told apart (their payload is part of the fingerprint). Counts
are checked against the kernel's own counters (nstat in the receiving namespace)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import pytest

from tests.support.otlp_receiver import GrpcOtlpReceiver, attributes

from .netns import NetChain, NetPair
from .test_exporter import free_port, sample, scrape, wait_for

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
                   source_port: int = 0, connected: bool = False) -> None:
    """`count` datagrams 20 ms apart whose payloads differ only after a 17-byte prefix; `connected`: from a
    connected socket (whose IPv4 datagrams sent with DF every kernel numbers: some give an unconnected socket's
    identification 0), which sends again when a send reports the port unreachable error a closed port sent back
    (that send sent nothing)."""
    send = ("try:\n        s.send(payload)\n    except ConnectionRefusedError:\n        s.send(payload)" if connected
            else f"s.sendto(payload, ({address!r}, {port}))")
    code = (f"import socket, time\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\n"
            f"s.bind(('', {source_port}))\n"
            + (f"s.connect(({address!r}, {port}))\n" if connected else "")
            + f"for i in range({count}):\n"
            f"    payload = b'ipftrace-test-dg %08d' % i\n"
            f"    {send}\n"
            f"    time.sleep(0.02)\n")
    run(ns, ["python3", "-c", code], timeout=60)


@contextmanager
def udp_server(netpair: NetPair, family: str, address: str) -> Iterator[None]:
    """A server in namespace b reading every datagram to SERVER_PORT at `address`, while the block runs."""
    server = netpair.popen_in(netpair.ns_b, ["python3", "-c", (
        f"import socket\ns = socket.socket(socket.{family}, socket.SOCK_DGRAM)\n"
        f"s.bind(('{address}', {SERVER_PORT}))\nprint('listening', flush=True)\n"
        "while True: s.recv(65536)\n")], stdout=-1)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        yield
    finally:
        server.kill()
        server.wait()


CONDENSED_PORT, CONDENSED_DATAGRAMS = 7002, 30


def pulled_into_linear_data(netpair: NetPair, port: int = CONDENSED_PORT, count: int = CONDENSED_DATAGRAMS) -> int:
    """`count` IPv6 datagrams of 32 bytes to a socket in b that reads them only once all have arrived, then one
    more; returns how many it read. The sender puts each payload in a page fragment (sendfile: MSG_SPLICE_PAGES,
    since Linux 6.5 for UDP over IPv6), and the socket's receive buffer is small: past half of it, the kernel
    pulls each new datagram's payload into the skb's linear data (skb_condense in __udp_enqueue_schedule_skb), so
    its first payload bytes, unreadable when the packet was first matched, are there after. The socket reads on
    one CPU and the sender sends on another, so each read datagram's free is deferred to the sender's
    (skb_attempt_defer_free, seen at skb:consume_skb): the last datagram, sent from there after the reads, runs the
    softirq that frees them, and a ping on a's loopback the one that frees it. (With one CPU, nothing is pinned
    and nothing deferred.)"""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    on_cpu = [["taskset", "-c", str(cpu)] if len(cpus) == 2 else [] for cpu in cpus]
    receiver = netpair.popen_in(netpair.ns_b, [*on_cpu[-1], sys.executable, "-c", (
        "import socket, sys\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)\n"
        f"s.bind(('{netpair.addr_b6}', {port}))\nprint('listening', flush=True)\nsys.stdin.readline()\n"
        "s.setblocking(False)\nread = 0\ntry:\n    while True:\n        s.recv(65536)\n        read += 1\n"
        "except BlockingIOError:\n    pass\nprint(read, flush=True)\ns.settimeout(20)\ns.recv(65536)\n"
        "print(read + 1, flush=True)\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    send = (f"import os, socket, tempfile\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            f"s.connect(('{netpair.addr_b6}', {port}))\n")
    try:
        assert receiver.stdin is not None and receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "listening"
        netpair.exec_in(netpair.ns_a, [*on_cpu[0], sys.executable, "-c", send + (
            f"f = tempfile.TemporaryFile()\nf.write(b''.join(b'ipftrace-condensed %013d' % i for i in range({count})))\n"
            f"f.flush()\nfor i in range({count}):\n    assert os.sendfile(s.fileno(), f.fileno(), 32 * i, 32) == 32\n")],
            timeout=60)
        receiver.stdin.write("read\n")
        receiver.stdin.flush()
        queued = int(receiver.stdout.readline())
        netpair.exec_in(netpair.ns_a, [*on_cpu[0], sys.executable, "-c", send + "s.send(b'the last one')\n"])
        read = int(receiver.stdout.readline())
        receiver.wait(timeout=30)
        assert read == queued + 1
        # and a ping on a's loopback from the sender's CPU runs the softirq that frees the last one
        netpair.exec_in(netpair.ns_a, [*on_cpu[0], "ping", "-6", "-c", "1", "-W", "2", "::1"])
        return read
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


@contextmanager
def tcpdump(ns: str, device: str) -> Iterator[None]:
    """tcpdump capturing on `device` in namespace `ns` while the block runs. (Its packet ring takes a copy of each
    packet there at once: no clone outlives the capture's receive.)"""
    capture = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-n", "-i", device, "-w", "/dev/null"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert capture.stderr is not None and "listening on" in capture.stderr.readline()
        yield
    finally:
        capture.terminate()
        capture.wait(timeout=10)


@contextmanager
def packet_socket(ns: str, device: str) -> Iterator[None]:
    """A packet socket on `device` in namespace `ns` that reads nothing while the block runs (and closes after it):
    each packet there leaves it a clone that shares the packet's data, as libpcap without a packet ring or any
    AF_PACKET reader does. A kernel writing headers into a packet so shared (NAT, a tunnel's skb_cow_head) first
    moves the packet to a new data buffer (pskb_expand_head)."""
    holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", (
        "import socket, time\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL\n"
        "s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE, past rmem_max: room for every clone\n"
        f"s.bind(({device!r}, 0))\nprint('bound', flush=True)\ntime.sleep(3600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        yield
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_an_ipv6_datagram_whose_payload_is_pulled_into_the_linear_data_stays_one_packet(  # type: ignore[no-untyped-def]
        start_tool, netpair: NetPair) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: the frees this test looks for are deferred to the sender's CPU")
    for _ in range(5):  # neighbours resolved (in a pair just made, the first neighbour solicitation may be lost)
        resolved = netpair.exec_in(netpair.ns_a, ["ping", "-6", "-c", "1", "-W", "2", netpair.addr_b6], check=False)
        if resolved.returncode == 0:
            break
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-d6", netpair.addr_b6,
                      "-dp", str(CONDENSED_PORT))
    before = nstat(netpair.exec_in, netpair.ns_b)
    read = pulled_into_linear_data(netpair)
    time.sleep(0.5)
    after = nstat(netpair.exec_in, netpair.ns_b)
    code, out, err = tool.stop()
    assert code == 130, err
    assert read == CONDENSED_DATAGRAMS + 1, after  # none dropped for a full receive buffer
    assert after["Udp6InDatagrams"] - before.get("Udp6InDatagrams", 0) == read
    summary = re.search(r"INFO: ([\d,]+) paths? printed(?: \([^)]*\))?; the kernel matched ([\d,]+) packets", err)
    assert summary, err
    paths = [json.loads(line) for line in out.splitlines()]
    shapes = [(p["outcome"], p["freed_unseen"], " ".join(e["function"].split(":")[-1] for e in p["events"]))
              for p in paths]
    # One packet each: the free of one whose payload was pulled (a fingerprint with payload bytes) is not taken
    # for a new packet in its skb, and its path does not end "freed unseen" at the pull
    assert int(summary[2]) == read and len(paths) == read, shapes
    odd = [shape for shape in shapes if shape[:2] != ("delivered", False) or not shape[2].endswith(" consume_skb")]
    assert not odd, odd
    # The pull happened: a linear datagram is read without skb_copy_datagram_iovec (copy_linear_skb)
    pulled = [p for p in paths if "skb:skb_copy_datagram_iovec" not in [e["function"] for e in p["events"]]]
    assert pulled, shapes


@pytest.mark.parametrize("tap", ["alone", "with-tcpdump", "with-a-packet-socket"])
def test_a_nat_rewritten_packet_is_one_path_to_its_drop_with_the_new_headers(start_tool, netchain: NetChain,  # type: ignore[no-untyped-def]
                                                                            tap: str) -> None:
    # with a packet socket on the router's ingress that has not read its clone of a packet, NAT writing the
    # packet's headers first moves it to a new data buffer (pskb_expand_head): the same skb and packet elsewhere
    run = netchain.exec_in
    run(netchain.ns_router, ["nft", "-f", "-"], input=nat_rules(netchain))
    with ExitStack() as held:  # (the clones held stay unread until the tool has stopped)
        if tap == "with-a-packet-socket":
            held.enter_context(packet_socket(netchain.ns_router, netchain.router_client_dev))
        tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-d4",
                          netchain.router_client_side4, "-dp", str(FRONT_PORT))
        before = nstat(run, netchain.ns_server)
        with tcpdump(netchain.ns_router, netchain.router_client_dev) if tap == "with-tcpdump" else nullcontext():
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
    with udp_server(netpair, "AF_INET6", netpair.addr_b6):
        netpair.ping_b(count=1, v6=True)  # neighbours resolved: no copy of a datagram held for neighbour discovery
        tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-d6", netpair.addr_b6,
                          "-dp", str(SERVER_PORT))
        before = nstat(run, netpair.ns_b)
        send_datagrams(run, netpair.ns_a, netpair.addr_b6, SERVER_PORT, 200, family="AF_INET6")
        time.sleep(2.5)  # the last datagram's path ends by idle timeout (its free has no tracepoint)
        received = nstat(run, netpair.ns_b)["Udp6InDatagrams"] - before.get("Udp6InDatagrams", 0)
        code, out, err = tool.stop()
    assert code == 130, err
    assert received == 200
    summary = re.search(r"INFO: ([\d,]+) paths? printed(?: \([^)]*\))?; the kernel matched ([\d,]+) packets", err)
    assert summary, err
    paths = [json.loads(line) for line in out.splitlines()]
    # One path per datagram (the kernel matched each once: none was taken for the one before, whose skb it reuses);
    # a datagram whose path went idle past the timeout may end in a continuation that holds only its free.
    firsts = [path for path in paths if not path["continued"]]
    odd = [(p["outcome"], p["continued"], p["protocol"], " ".join(e["function"].split(":")[-1] for e in p["events"]))
           for p in paths if len(p["events"]) not in (5, 6) or p["events"][0]["function"] != "net:net_dev_queue"]
    assert int(summary[2].replace(",", "")) == 200, err
    assert len(firsts) == 200, odd[:20]
    assert all(path["events"][0]["function"] == "net:net_dev_queue" for path in firsts), odd[:20]
    assert all(event["function"].startswith("skb:") for path in paths if path["continued"] for event in path["events"])


def test_a_ping_reply_read_through_a_raw_socket_clone_is_one_delivered_packet(start_tool, netpair: NetPair) -> None:  # type: ignore[no-untyped-def]
    netpair.ping_b(count=1)  # neighbours resolved
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "ICMP", "-d4", netpair.addr_a4)
    done = netpair.exec_in(netpair.ns_a, ["ping", "-4", "-c", "5", "-i", "0.2", netpair.addr_b4])
    assert " 0% packet loss" in done.stdout
    time.sleep(0.5)
    code, out, err = tool.stop()
    assert code == 130, err
    summary = re.search(r"INFO: ([\d,]+) paths? printed(?: \([^)]*\))?; the kernel matched ([\d,]+) packets", err)
    assert summary and summary[1] == summary[2] == "5", err  # a clone is part of its packet, not another match
    replies = [json.loads(line) for line in out.splitlines()]
    for reply in replies:
        assert reply["icmp"]["name"] == "echo-reply"
        # ping's raw socket got a clone (read by recvmsg); the original went on to ping_rcv, which had no socket
        assert reply["skb_outcome"] == "dropped" and reply["drop"]["reason"] == "NO_SOCKET", reply
        assert reply["outcome"] == "delivered", reply
        assert len(reply["children"]) == 1, reply
        clone = reply["children"][0]
        assert clone["relation"] == "clone" and clone["outcome"] == "delivered" and clone["skb"] != reply["skb"]
        assert [event["function"] for event in clone["events"]] == ["skb:skb_copy_datagram_iovec", "skb:consume_skb"]
        assert clone["events"][0]["timestamp_ns"] > reply["events"][0]["timestamp_ns"]


def test_the_daemon_sends_a_delivered_ping_reply_as_one_trace_with_its_clone(start_tool, netpair: NetPair,  # type: ignore[no-untyped-def]
                                                                             tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"backend: tracepoint\nflows:\n  - {{name: replies, l4proto: ICMP, daddr: {netpair.addr_a4}}}\n")
    port = free_port()
    netpair.ping_b(count=1)
    with GrpcOtlpReceiver() as receiver:
        daemon = start_tool("ipftrace-exporter", "--config", str(config), "--metrics-address", f"127.0.0.1:{port}",
                            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        netpair.ping_b(count=3)
        assert wait_for(lambda: sample(scrape(port), "ipftrace_paths_total", flow="replies", outcome="delivered") >= 3)
        metrics = scrape(port)
        code, _, err = daemon.stop(sig=15)
        assert code == 0, err
        spans = receiver.spans()
    assert sample(metrics, "ipftrace_paths_total", flow="replies", outcome="delivered") == 3
    assert sample(metrics, "ipftrace_paths_total", flow="replies", outcome="dropped") == 0
    assert sample(metrics, "ipftrace_skb_drops_total", flow="replies", function="ping_rcv", reason="NO_SOCKET") == 3
    roots = [span for span in spans if not span.parent_span_id]
    assert len(roots) == 3
    for root in roots:
        attrs = attributes(root.attributes)
        assert attrs["ipftrace.outcome"] == "delivered" and root.status.code != 2  # not an ERROR trace
        under_root = [span for span in spans if span.trace_id == root.trace_id and span.parent_span_id == root.span_id]
        clones = [span for span in under_root if span.name == "clone"]
        assert len(clones) == 1 and attributes(clones[0].attributes)["ipftrace.relation"] == "clone"
        clone_events = sorted((span for span in spans if span.parent_span_id == clones[0].span_id),
                              key=lambda span: span.start_time_unix_nano)
        assert [span.name for span in clone_events] == ["skb:skb_copy_datagram_iovec", "skb:consume_skb"]
        dropping = [span for span in under_root if span.name == "skb:kfree_skb"]
        assert attributes(dropping[0].attributes)["ipftrace.drop.reason"] == "NO_SOCKET"
        assert dropping[0].status.code != 2


def test_bytes_that_look_like_an_ipv4_header_in_a_unix_socket_are_not_a_packet(start_tool, netpair: NetPair) -> None:  # type: ignore[no-untyped-def]
    # A unix socket's skb has no protocol and no network header: at consume_skb only its data could be read as IP,
    # and these messages begin with an IPv4 + UDP header from a to b (what a local IPC payload may well hold).
    fake = (bytes.fromhex("4500003c12344000401100") + bytes(1) + socket.inet_aton(netpair.addr_a4)
            + socket.inet_aton(netpair.addr_b4) + (40000).to_bytes(2, "big") + (9).to_bytes(2, "big")
            + bytes.fromhex("00280000") + b"x" * 32)
    netpair.ping_b(count=1)
    tool = start_tool("ipftrace", "-b", "tracepoint", "-o", "json", "-l4", "UDP", "-s4", netpair.addr_a4,
                      "-d4", netpair.addr_b4, "-dp", "9")
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        for _ in range(20):
            left.send(fake)
            assert right.recv(256) == fake
    send_datagrams(netpair.exec_in, netpair.ns_a, netpair.addr_b4, 9, 1)  # one real packet: to a closed port
    time.sleep(1.0)
    code, out, err = tool.stop()
    assert code == 130, err
    paths = [json.loads(line) for line in out.splitlines()]
    assert [(p["outcome"], p["events"][0]["function"]) for p in paths] == [("dropped", "net:net_dev_queue")], [
        [e["function"] for e in p["events"]] for p in paths]
