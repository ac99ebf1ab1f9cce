from __future__ import annotations

import io
import json
import re

import pytest

from ipftrace_exporter.events import (
    FLAG_ADOPT,
    FLAG_CLONE,
    FLAG_ENCAP,
    FLAG_GAP,
    FLAG_REWRITE,
    FLAG_SEGMENT,
    FLAG_TUPLE,
    LOST_SHIFT,
)
from ipftrace_exporter.names import Names
from ipftrace_exporter.output import PathFormatter, TextStyle, use_colour
from ipftrace_exporter.paths import PathAssembler, PathLimits

from .helpers import CONSUME, DROP, EGRESS, IP_RCV, PROBES, RECEIVE, event

NAMES = Names(["default"], PROBES, {3: "NO_SOCKET"}, lambda address: "__udp4_lib_rcv")


def one_path(events):  # type: ignore[no-untyped-def]
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), NAMES, clock=lambda: 10**12)
    done = paths.add_many(events)
    return (done + paths.expire())[0]


def test_text_has_the_seed_shape() -> None:
    path = one_path([event(495406078818070, RECEIVE, first=True, src="10.0.1.10", dst="10.0.1.20", sport=8),
                     event(495406078929728, IP_RCV), event(495406078949359, CONSUME)])
    text = PathFormatter(NAMES).format(path, "text")
    assert text == (
        "ICMP\t10.0.1.10\t->\t10.0.1.20\techo-request (type 8 code 0)\n"
        "     Time Stamp  Function\n"
        "495406078818070  net:netif_receive_skb\n"
        "495406078929728  ip_rcv\n"
        "495406078949359  skb:consume_skb\n\n"
    )


def test_text_appends_ports_and_says_where_and_why_a_packet_was_dropped() -> None:
    path = one_path([event(1, RECEIVE, first=True, proto=17, sport=40000, dport=9), event(2, DROP, reason=3)])
    text = PathFormatter(NAMES).text(path)
    assert text.splitlines()[0] == "UDP\t10.0.0.1:40000\t->\t10.0.0.2:9"
    assert text.splitlines()[-1] == "DROPPED at __udp4_lib_rcv: NO_SOCKET (skb:kfree_skb)"


def test_custom_data_column_with_a_module() -> None:
    path = one_path([event(1, RECEIVE, first=True, data=b"\x05"), event(2, CONSUME, data=b"\x07")])
    text = PathFormatter(NAMES, data_text=lambda e: f"(x: {e.data[0]})").text(path)
    lines = text.splitlines()
    assert lines[1] == "     Time Stamp  Function               Custom Data"
    assert lines[2] == "              1  net:netif_receive_skb  (x: 5)"


def test_json_is_one_object_per_line() -> None:
    path = one_path([event(1, RECEIVE, first=True, proto=17, dport=9), event(2, DROP, reason=3)])
    line = PathFormatter(Names(["udp-flow"], PROBES)).format(path, "json")
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["flow"] == "udp-flow" and record["outcome"] == "dropped" and record["dport"] == 9
    assert record["drop"] == {"reason": "NO_SOCKET", "function": "__udp4_lib_rcv", "probe": "skb:kfree_skb"}
    assert [e["function"] for e in record["events"]] == ["net:netif_receive_skb", "skb:kfree_skb"]


def _three_steps():  # type: ignore[no-untyped-def]
    return one_path([event(1_000_000, RECEIVE, first=True, sport=3, dport=3), event(1_012_345, IP_RCV),
                     event(1_012_500, DROP, reason=3)])


def test_delta_column_says_microseconds_since_the_previous_step() -> None:
    lines = PathFormatter(NAMES, style=TextStyle(delta=True)).text(_three_steps()).splitlines()
    assert lines[0] == "ICMP\t10.0.0.1\t->\t10.0.0.2\tdest-unreachable (type 3 code 3)"
    assert lines[1] == "     Time Stamp        Δ µs  Function"
    assert lines[2] == "        1000000              net:netif_receive_skb"
    assert lines[3] == "        1012345     +12.345  ip_rcv"
    assert lines[4] == "        1012500      +0.155  skb:kfree_skb"


def test_verbose_rows_show_length_and_device() -> None:
    style = TextStyle(verbose=True, device=lambda event: f"{event.ifindex}:veth0")
    lines = PathFormatter(NAMES, style=style).text(_three_steps()).splitlines()
    assert lines[1] == "     Time Stamp  Function                 Len  Device"
    assert lines[2] == "        1000000  net:netif_receive_skb     84  2:veth0"


def test_wall_clock_time_of_day() -> None:
    from datetime import datetime

    offset = int(datetime(2026, 12, 1, 22, 30, 5).timestamp() * 1e9) - 1_000_000
    lines = PathFormatter(NAMES, style=TextStyle(wall_offset_ns=offset)).text(_three_steps())
    assert lines.splitlines()[2] == "22:30:05.000000  net:netif_receive_skb"
    assert lines.splitlines()[3] == "22:30:05.000012  ip_rcv"


def test_colour_marks_the_flow_line_and_the_drop_only_when_asked() -> None:
    plain = PathFormatter(NAMES).text(_three_steps())
    coloured = PathFormatter(NAMES, style=TextStyle(colour=True)).text(_three_steps())
    assert "\x1b[" not in plain
    assert coloured.splitlines()[0].startswith("\x1b[1mICMP") and "\x1b[31mDROPPED" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_colour_is_off_when_piped_or_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())


def test_json_adds_icmp_type_and_code_and_keeps_ports_null() -> None:
    record = json.loads(PathFormatter(NAMES).json(_three_steps()))
    assert record["icmp"] == {"type": 3, "code": 3, "name": "dest-unreachable"}
    assert record["sport"] is None and record["dport"] is None
    udp = one_path([event(1, RECEIVE, first=True, proto=17, sport=5, dport=9), event(2, CONSUME)])
    assert json.loads(PathFormatter(NAMES).json(udp))["icmp"] is None


def rewritten_path():  # type: ignore[no-untyped-def]
    """A UDP datagram DNAT-ed (and masqueraded) between its receive and its drop."""
    rewrite = event(2, IP_RCV, first=True, proto=17, src="10.0.1.1", dst="10.0.2.2", sport=61000, dport=7001,
                    flags=FLAG_REWRITE)
    rewrite = rewrite._replace(flags=rewrite.flags & ~FLAG_TUPLE)  # the kernel: new headers, not a first event
    return one_path([event(1, RECEIVE, first=True, proto=17, sport=40000, dport=7000), rewrite,
                     event(3, DROP, reason=3)])


def test_text_says_where_the_headers_were_rewritten_and_to_what() -> None:
    lines = PathFormatter(NAMES).text(rewritten_path()).splitlines()
    assert lines[0] == "UDP\t10.0.0.1:40000\t->\t10.0.0.2:7000"  # the flow as first matched
    assert lines[3:5] == ["              2  ip_rcv",
                          "                 headers rewritten (NAT): now UDP 10.0.1.1:61000 -> 10.0.2.2:7001"]
    assert lines[-1] == "DROPPED at __udp4_lib_rcv: NO_SOCKET (skb:kfree_skb)"


def test_json_gives_the_rewritten_headers_on_their_event() -> None:
    record = json.loads(PathFormatter(NAMES).json(rewritten_path()))
    assert (record["daddr"], record["dport"]) == ("10.0.0.2", 7000)
    assert [event.get("rewrite") for event in record["events"]] == [
        None, {"protocol": "UDP", "saddr": "10.0.1.1", "sport": 61000, "daddr": "10.0.2.2", "dport": 7001}, None]


def reply_with_clone():  # type: ignore[no-untyped-def]
    """A ping reply dropped at ping_rcv whose raw-socket clone was read."""
    clone = event(3, RECEIVE, skb=0xFFFF888000002000, first=True, flags=FLAG_CLONE)._replace(
        parent=0xFFFF888000001000)
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), NAMES, clock=lambda: 10**12)
    done = paths.add_many([event(1, RECEIVE, first=True, sport=0), event(2, DROP, reason=3), clone,
                           event(4, CONSUME, skb=0xFFFF888000002000)])
    (packet,) = done + paths.expire()
    return packet


def test_text_shows_a_clone_under_its_packet_and_how_the_packet_ended() -> None:
    lines = PathFormatter(NAMES).text(reply_with_clone()).splitlines()
    assert lines[4:] == [
        "DROPPED at __udp4_lib_rcv: NO_SOCKET (skb:kfree_skb)",
        "  clone 0xffff888000002000 (shares the packet's data buffer):",
        "       Time Stamp  Function",
        "                3  net:netif_receive_skb",
        "                4  skb:consume_skb",
        "(packet delivered: through a clone)",
    ]


def test_json_gives_the_packet_outcome_and_each_clone() -> None:
    record = json.loads(PathFormatter(NAMES).json(reply_with_clone()))
    assert (record["outcome"], record["skb_outcome"], record["drop"]["reason"]) == ("delivered", "dropped", "NO_SOCKET")
    (clone,) = record["children"]
    assert clone["relation"] == "clone" and clone["skb"] == "0xffff888000002000" and clone["outcome"] == "delivered"
    assert [e["function"] for e in clone["events"]] == ["net:netif_receive_skb", "skb:consume_skb"]


def test_text_says_how_many_events_a_truncated_path_lost() -> None:
    path = one_path([event(1, RECEIVE, first=True), event(2, CONSUME, flags=FLAG_GAP | 2 << LOST_SHIFT)])
    assert PathFormatter(NAMES).text(path).splitlines()[-1] == "(truncated: 2 events of this skb lost)"
    assert json.loads(PathFormatter(NAMES).json(path))["lost_events"] == 2


def test_a_path_freed_unseen_says_so_in_text_and_json() -> None:
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), clock=lambda: 0)
    paths.add(event(1, RECEIVE, first=True))
    (old,) = paths.add(event(2, RECEIVE, first=True, dst="10.0.0.7"))
    formatter = PathFormatter(NAMES)
    assert "(delivered: freed where no probe sees it; the kernel reused its skb for another packet)" in formatter.text(old)
    record = json.loads(formatter.json(old))
    assert record["outcome"] == "delivered" and record["freed_unseen"] is True


def test_a_neighbour_probe_copy_is_labelled_under_the_packet_that_adopted_it() -> None:
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), clock=lambda: 0)
    copy = event(1, CONSUME, skb=0xFFFF888000002000, first=True, flags=FLAG_CLONE)
    adopting = event(5, RECEIVE, first=True, flags=FLAG_ADOPT)._replace(parent=0xFFFF888000002000, parent_ts=1)
    done = paths.add_many([copy, adopting, event(6, CONSUME)])
    (packet,) = done + paths.expire(now_ns=10**12)
    formatter = PathFormatter(NAMES)
    assert ("  clone 0xffff888000002000 (shares the packet's data buffer; ended before the packet was first seen: "
            "a neighbour probe's copy):") in formatter.text(packet).splitlines()
    (child,) = json.loads(formatter.json(packet))["children"]
    assert child["before_packet"] is True and child["neighbour_probe"] is True


def test_a_neighbour_probe_copy_seen_after_its_packet_is_labelled_as_one() -> None:
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), clock=lambda: 0)
    done = paths.add_many([event(1, RECEIVE, first=True), event(2, CONSUME, skb=0xFFFF888000002000, first=True,
                                                                flags=FLAG_CLONE)._replace(parent=0xFFFF888000001000),
                           event(6, CONSUME)])
    (packet,) = done + paths.expire(now_ns=10**12)
    packet.children[0].neighbour_probe = True  # (what the assembler decides: tests/unit/test_paths.py)
    formatter = PathFormatter(NAMES)
    assert ("  clone 0xffff888000002000 (shares the packet's data buffer; a neighbour probe's copy, freed once the "
            "ARP/ND probe was sent):") in formatter.text(packet).splitlines()
    (child,) = json.loads(formatter.json(packet))["children"]
    assert child["before_packet"] is False and child["neighbour_probe"] is True


def test_a_clone_of_a_packet_never_seen_says_so() -> None:
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), clock=lambda: 0)
    paths.add(event(1, CONSUME, skb=0xFFFF888000002000, first=True, flags=FLAG_CLONE))
    (alone,) = paths.expire(now_ns=10**12)
    formatter = PathFormatter(NAMES)
    assert "(clone of a packet not seen: e.g. a neighbour probe's copy of a packet that waited for ARP/ND)" in (
        formatter.text(alone))
    record = json.loads(formatter.json(alone))
    assert record["relation"] == "clone" and record["parent"] is None


def test_text_and_json_say_where_a_packet_was_encapsulated_and_in_what() -> None:
    outer = event(2, IP_RCV, first=True, proto=17, src="10.199.1.1", dst="10.199.1.2", sport=41456, dport=4789,
                  flags=FLAG_ENCAP)
    outer = outer._replace(flags=outer.flags & ~FLAG_TUPLE)
    path = one_path([event(1, RECEIVE, first=True), outer, event(3, CONSUME)])
    formatter = PathFormatter(NAMES)
    assert (f"{'':>15}  encapsulated (tunnel): now UDP 10.199.1.1:41456 -> 10.199.1.2:4789"
            in formatter.text(path).splitlines())
    (marked,) = [item for item in json.loads(formatter.json(path))["events"] if "encap" in item]
    assert (marked["encap"]["daddr"], marked["encap"]["dport"]) == ("10.199.1.2", 4789)


def test_text_says_a_gso_packet_was_dropped_by_its_segment() -> None:
    segment = event(3, EGRESS, skb=0xFFFF888000002000, first=True, proto=6, flags=FLAG_SEGMENT)._replace(
        parent=0xFFFF888000001000, parent_ts=1)
    paths = PathAssembler(PROBES, PathLimits(settle_ns=0), NAMES, clock=lambda: 10**12)
    done = paths.add_many([event(1, RECEIVE, first=True, proto=6), event(2, CONSUME), segment,
                           event(4, DROP, skb=0xFFFF888000002000, reason=3)])
    (packet,) = done + paths.expire()
    lines = PathFormatter(NAMES).text(packet).splitlines()
    assert "  segment 0xffff888000002000 (a GSO segment of the packet):" in lines
    assert lines[-1] == "(packet dropped: a segment of it was)"
