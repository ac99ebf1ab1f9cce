"""Test hosts: two network namespaces joined by a veth pair, with IPv4 and IPv6 addresses, removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

SUBNET4 = "10.199"  # 10.199.0.0/16
SUBNET6 = "fd00:199::"  # fd00:199::/64


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip` (iproute2)."""
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def nft_counter(ns: str, table: str) -> int:
    """Packets counted by the first `counter` of nftables table `ip <table>` in namespace `ns`."""
    ruleset = json.loads(exec_in(ns, ["nft", "-j", "list", "table", "ip", table]).stdout)["nftables"]
    return next(expr["counter"]["packets"] for item in ruleset if "rule" in item
                for expr in item["rule"]["expr"] if "counter" in expr)


def exec_in(ns: str, argv: Sequence[str], timeout: float = 30, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace `ns`."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check, capture_output=True, text=True,
                          timeout=timeout, input=input)


@dataclass
class NetPair:
    """Namespaces `a` and `b`, joined by veth `veth_a` (in a) <-> `veth_b` (in b)."""

    tag: str
    index: int
    ns_a: str
    ns_b: str
    veth_a: str
    veth_b: str

    @property
    def addr_a4(self) -> str:
        return f"{SUBNET4}.{self.index}.1"

    @property
    def addr_b4(self) -> str:
        return f"{SUBNET4}.{self.index}.2"

    @property
    def addr_a6(self) -> str:
        return f"{SUBNET6}{self.index:x}:1"

    @property
    def addr_b6(self) -> str:
        return f"{SUBNET6}{self.index:x}:2"

    def exec_in(self, ns: str, argv: Sequence[str], timeout: float = 30, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace `ns`."""
        return exec_in(ns, argv, timeout, check, input)

    def popen_in(self, ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start a command inside namespace `ns` (the caller ends it by PID)."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kwargs)  # type: ignore[call-overload]

    def python_in(self, ns: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run Python code inside namespace `ns` with this interpreter."""
        import sys

        return self.exec_in(ns, [sys.executable, "-c", code], timeout=timeout)

    def ping_b(self, count: int = 3, interval: float = 0.2, v6: bool = False) -> None:
        """Ping b's address from a."""
        target = self.addr_b6 if v6 else self.addr_b4
        self.exec_in(self.ns_a, ["ping", "-6" if v6 else "-4", "-c", str(count), "-i", str(interval), "-W", "2",
                                 target], timeout=30)


def create_pair(index: int) -> NetPair:
    """Create the namespaces, veth pair and addresses; deletes what it made if a step fails."""
    tag = f"ipft{os.getpid() % 100000}x{index}"
    pair = NetPair(tag, index, f"{tag}a", f"{tag}b", f"{tag}va"[:15], f"{tag}vb"[:15])
    try:
        ip("netns", "add", pair.ns_a)
        ip("netns", "add", pair.ns_b)
        ip("link", "add", pair.veth_a, "netns", pair.ns_a, "type", "veth", "peer", "name", pair.veth_b,
           "netns", pair.ns_b)
        for ns, dev, v4, v6 in ((pair.ns_a, pair.veth_a, pair.addr_a4, pair.addr_a6),
                                (pair.ns_b, pair.veth_b, pair.addr_b4, pair.addr_b6)):
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        _wait_reachable(pair)
    except BaseException:
        delete_pair(pair)
        raise
    return pair


def _wait_reachable(pair: NetPair, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(["ip", "netns", "exec", pair.ns_a, "ping", "-c", "1", "-W", "1", pair.addr_b4], check=False,
                              capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{pair.ns_a} cannot reach {pair.addr_b4}")


def delete_pair(pair: NetPair) -> None:
    """Remove both namespaces (the veth pair goes with them)."""
    for ns in (pair.ns_a, pair.ns_b):
        ip("netns", "del", ns, check=False)


@dataclass
class NetChain:
    """Namespaces client <-> router <-> server on two veth links: 10.199.N.1 (client) / .2 (router) and
    10.199.N+1.1 (router) / .2 (server); the router forwards and each end routes through it."""

    tag: str
    index: int
    ns_client: str
    ns_router: str
    ns_server: str

    @property
    def client4(self) -> str:
        return f"{SUBNET4}.{self.index}.1"

    @property
    def router_client_side4(self) -> str:
        return f"{SUBNET4}.{self.index}.2"

    @property
    def router_server_side4(self) -> str:
        return f"{SUBNET4}.{self.index + 1}.1"

    @property
    def server4(self) -> str:
        return f"{SUBNET4}.{self.index + 1}.2"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return self.ns_client, self.ns_router, self.ns_server

    @property
    def router_client_dev(self) -> str:
        """The router's device towards the client."""
        return f"{self.tag}r0"[:15]

    @property
    def router_server_dev(self) -> str:
        """The router's device towards the server."""
        return f"{self.tag}r1"[:15]

    @property
    def server_dev(self) -> str:
        return f"{self.tag}s0"[:15]

    def exec_in(self, ns: str, argv: Sequence[str], timeout: float = 30, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace `ns`."""
        return exec_in(ns, argv, timeout, check, input)


def create_chain(index: int) -> NetChain:
    """Create client, router and server namespaces (uses subnets `index` and `index + 1`); deletes what it made if a
    step fails."""
    tag = f"ipft{os.getpid() % 100000}c{index}"
    chain = NetChain(tag, index, f"{tag}c", f"{tag}r", f"{tag}s")
    try:
        for ns in chain.namespaces:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        links = ((chain.ns_client, f"{tag}c0"[:15], chain.client4, chain.ns_router, chain.router_client_dev,
                  chain.router_client_side4),
                 (chain.ns_router, chain.router_server_dev, chain.router_server_side4, chain.ns_server,
                  chain.server_dev, chain.server4))
        for ns_x, dev_x, addr_x, ns_y, dev_y, addr_y in links:
            ip("link", "add", dev_x, "netns", ns_x, "type", "veth", "peer", "name", dev_y, "netns", ns_y)
            for ns, dev, addr in ((ns_x, dev_x, addr_x), (ns_y, dev_y, addr_y)):
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                ip("-n", ns, "link", "set", dev, "up")
        chain.exec_in(chain.ns_router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        ip("-n", chain.ns_client, "route", "add", "default", "via", chain.router_client_side4)
        ip("-n", chain.ns_server, "route", "add", "default", "via", chain.router_server_side4)
        deadline = time.monotonic() + 10
        while chain.exec_in(chain.ns_client, ["ping", "-c", "1", "-W", "1", chain.server4], check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{chain.ns_client} cannot reach {chain.server4} through {chain.ns_router}")
            time.sleep(0.1)
    except BaseException:
        delete_chain(chain)
        raise
    return chain


def delete_chain(chain: NetChain) -> None:
    """Remove the three namespaces (their veth links go with them)."""
    for ns in chain.namespaces:
        ip("netns", "del", ns, check=False)
