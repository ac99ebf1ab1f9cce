"""`netdev`: the device the skb is on at each event: ifindex, name and its network namespace's inode number."""

from __future__ import annotations

import struct

from .base import Fields, Module

IFNAMSIZ = 16
_LAYOUT = struct.Struct(f"<II{IFNAMSIZ}s")  # struct ipft_netdev_data below


class NetdevModule(Module):
    """skb->dev: ifindex, name, and dev_net(dev)->ns.inum (the inode `ip netns identify` / /proc/PID/ns/net show)."""

    name = "netdev"
    data_size = _LAYOUT.size
    description = "device ifindex, name and netns inode"

    def configure(self, arg: str | None) -> None:
        super().configure(arg)
        # possible_net_t is empty without CONFIG_NET_NS; then there is no netns to show.
        members = self.context.typedef_struct_members("possible_net_t")
        self.has_netns = members is None or members > 0

    def c_declarations(self) -> str:
        return f"""\
struct ipft_netdev_data {{
    u32 ifindex;
    u32 netns;
    char name[{IFNAMSIZ}];
}};
"""

    def c_data(self) -> str:
        netns = """\
    struct net *net = 0;
    IPFT_MOD_MEMBER(net, dev, struct net_device, nd_net.net);
    if (net)
        IPFT_MOD_MEMBER(out.netns, net, struct net, ns.inum);
""" if self.has_netns else ""
        return f"""\
struct ipft_netdev_data out = {{}};
struct net_device *dev = 0;
IPFT_MOD_MEMBER(dev, skb, struct sk_buff, dev);
if (dev) {{
    IPFT_MOD_MEMBER(out.ifindex, dev, struct net_device, ifindex);
    IPFT_MOD_MEMBER(out.name, dev, struct net_device, name);
{netns}}}
__builtin_memcpy(data, &out, sizeof(out));
"""

    def decode(self, data: bytes) -> Fields:
        ifindex, netns, raw_name = _LAYOUT.unpack(data)
        if not ifindex and not raw_name.strip(b"\0"):
            return {}  # no device (yet): e.g. a socket-layer event
        name = raw_name.split(b"\0", 1)[0].decode("utf-8", "replace")
        return {"ifindex": ifindex, "name": name, "netns": netns}

    def text(self, fields: Fields) -> str:
        if not fields:
            return ""
        return f"(dev: {fields['name']} ifindex: {fields['ifindex']} netns: {fields['netns']})"
