"""--ifname and --netns: packets first seen on that device / in that namespace, then followed wherever they go."""

from __future__ import annotations

import json
import subprocess

from .netns import NetChain, NetPair

TRACEPOINT = ["-b", "tracepoint"]


def json_paths(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def ifindex(ns: str, dev: str) -> int:
    shown = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True, text=True, check=True)
    return int(json.loads(shown.stdout)[0]["ifindex"])


def _check_first_seen_on_b_and_followed(paths: list[dict], netpair: NetPair) -> None:
    veth_b = ifindex(netpair.ns_b, netpair.veth_b)
    veth_a = ifindex(netpair.ns_a, netpair.veth_a)
    requests = [p for p in paths if p["saddr"] == netpair.addr_a4]
    replies = [p for p in paths if p["saddr"] == netpair.addr_b4]
    assert requests and replies, paths
    for path in paths:
        assert path["events"][0]["ifindex"] == veth_b, path  # first matched on b's device
    for path in requests:  # never its transmit in a: it was not yet on b's device there
        assert path["events"][0]["function"] != "net:net_dev_start_xmit", path
    # replies start on b's device and are followed into a (received there on a's device)
    assert any(event["function"] == "net:netif_receive_skb" and event["ifindex"] == veth_a
               for path in replies for event in path["events"]), replies


def test_ifname_traces_packets_first_seen_on_that_device_and_follows_them(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "--ifname", netpair.veth_b, "-o", "json",
                      "--timeout", "6")
    netpair.ping_b(count=3)
    code, out, err = tool.finish()
    assert code == 0, err
    _check_first_seen_on_b_and_followed(json_paths(out), netpair)


def test_netns_by_path_traces_packets_first_seen_in_that_namespace(netpair: NetPair, start_tool) -> None:
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "--netns", f"/run/netns/{netpair.ns_b}", "-o",
                      "json", "--timeout", "6")
    netpair.ping_b(count=3)
    code, out, err = tool.finish()
    assert code == 0, err
    _check_first_seen_on_b_and_followed(json_paths(out), netpair)


def test_a_device_name_in_another_namespace_does_not_match(netpair: NetPair, start_tool) -> None:
    # veth_b exists only in b: asked for in a's namespace, nothing can match
    inode = subprocess.run(["stat", "-L", "-c", "%i", f"/run/netns/{netpair.ns_a}"], capture_output=True, text=True,
                           check=True).stdout.strip()
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "--ifname", netpair.veth_b, "--netns", inode, "-o",
                      "json", "--timeout", "5")
    netpair.ping_b(count=3)
    code, out, err = tool.finish()
    assert code == 0, err
    assert json_paths(out) == []


def test_a_transmit_event_names_the_device_it_transmits_on_not_the_veth_peer(netchain: NetChain,  # type: ignore[no-untyped-def]
                                                                             start_tool) -> None:
    router_out = ifindex(netchain.ns_router, netchain.router_server_dev)
    server_in = ifindex(netchain.ns_server, netchain.server_dev)
    assert router_out != server_in  # (the router's second device; the server's first)
    tool = start_tool("ipftrace", *TRACEPOINT, "-l4", "ICMP", "-d4", netchain.server4, "-o", "json", "--count", "1")
    netchain.exec_in(netchain.ns_client, ["ping", "-c", "1", "-W", "2", netchain.server4])
    code, out, err = tool.finish()
    assert code == 0, err
    (path,) = json_paths(out)
    events = [(event["function"], event["ifindex"]) for event in path["events"]]
    receives = [index for index, (function, _) in enumerate(events) if function == "net:netif_receive_skb"]
    assert len(receives) == 2, events  # the router's, then the server's
    # between them the router forwards; net_dev_xmit fires after veth_xmit moved skb->dev to the server's end,
    # so the event's device is the tracepoint's own argument
    assert events[receives[0] + 1:receives[1]] == [
        ("net:net_dev_queue", router_out), ("net:net_dev_start_xmit", router_out), ("net:netif_rx", server_in),
        ("net:net_dev_xmit", router_out)], events
