from __future__ import annotations

import json

from ipftrace_exporter.output import PathFormatter
from ipftrace_exporter.paths import PathAssembler, PathLimits

from .helpers import CONSUME, DROP, IP_RCV, PROBES, RECEIVE, event


class Names:
    def reason_name(self, reason: int) -> str:
        return "NO_SOCKET"

    def function_name(self, address: int) -> str:
        return "__udp4_lib_rcv"


def one_path(events):  # type: ignore[no-untyped-def]
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), Names(), clock=lambda: 10**12)
    done = paths.add_many(events)
    return (done + paths.expire())[0]


def test_text_has_the_seed_shape() -> None:
    path = one_path([event(495406078818070, RECEIVE, first=True, src="10.0.1.10", dst="10.0.1.20"),
                     event(495406078929728, IP_RCV), event(495406078949359, CONSUME)])
    text = PathFormatter(PROBES, ["default"]).format(path, "text")
    assert text == (
        "ICMP\t10.0.1.10\t->\t10.0.1.20\n"
        "     Time Stamp  Function\n"
        "495406078818070  net:netif_receive_skb\n"
        "495406078929728  ip_rcv\n"
        "495406078949359  skb:consume_skb\n\n"
    )


def test_text_appends_ports_and_says_where_and_why_a_packet_was_dropped() -> None:
    path = one_path([event(1, RECEIVE, first=True, proto=17, sport=40000, dport=9), event(2, DROP, reason=3)])
    text = PathFormatter(PROBES, ["default"]).text(path)
    assert text.splitlines()[0] == "UDP\t10.0.0.1:40000\t->\t10.0.0.2:9"
    assert text.splitlines()[-1] == "DROPPED at __udp4_lib_rcv: NO_SOCKET (skb:kfree_skb)"


def test_custom_data_column_with_a_module() -> None:
    path = one_path([event(1, RECEIVE, first=True, data=b"\x05"), event(2, CONSUME, data=b"\x07")])
    text = PathFormatter(PROBES, ["default"], data_text=lambda e: f"(x: {e.data[0]})").text(path)
    lines = text.splitlines()
    assert lines[1] == "     Time Stamp  Function               Custom Data"
    assert lines[2] == "              1  net:netif_receive_skb  (x: 5)"


def test_json_is_one_object_per_line() -> None:
    path = one_path([event(1, RECEIVE, first=True, proto=17, dport=9), event(2, DROP, reason=3)])
    line = PathFormatter(PROBES, ["udp-flow"]).format(path, "json")
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["flow"] == "udp-flow" and record["outcome"] == "dropped" and record["dport"] == 9
    assert record["drop"] == {"reason": "NO_SOCKET", "function": "__udp4_lib_rcv", "probe": "skb:kfree_skb"}
    assert [e["function"] for e in record["events"]] == ["net:netif_receive_skb", "skb:kfree_skb"]
