"""What `ipftrace -l` prints from a survey (survey.py), with no kernel: a hand-made Survey."""

from __future__ import annotations

import json

from ipftrace_exporter.probes import Probe, ProbeKind, ProbeRole
from ipftrace_exporter.program import ProbeSource
from ipftrace_exporter.survey import ATTACHABLE, VERIFIED, Survey, survey_lines, survey_rows


def _source(index: int, name: str, kind: ProbeKind, role: ProbeRole = ProbeRole.STEP, skb_arg: int = 0) -> ProbeSource:
    return ProbeSource(Probe(index, name, kind, skb_arg + 1, role), name, skb_arg)


def _survey() -> Survey:
    functions = [_source(0, "ip_rcv", ProbeKind.KPROBE), _source(1, "notrace_fn", ProbeKind.KPROBE, skb_arg=1)]
    tracepoints = [_source(2, "skb:kfree_skb", ProbeKind.TRACEPOINT, ProbeRole.DROP)]
    states = {"kprobe": {"ip_rcv": ATTACHABLE, "notrace_fn": "rejected"},
              "kfunc": {"ip_rcv": VERIFIED, "notrace_fn": "rejected"},
              "tracepoint": {"skb:kfree_skb": ATTACHABLE}}
    return Survey("kprobe", {"kfunc": "EPERM"}, functions, tracepoints, ["gone_fn"], states,
                  {"tracepoint": "1 of 1 raw tracepoints attached in a trial"})


def test_rows_give_each_backend_its_state_and_dash_where_it_does_not_apply() -> None:
    rows = survey_rows(_survey(), with_functions=True)
    assert rows[0] == {"name": "ip_rcv", "skb_pos": 1, "role": "step", "kfunc": VERIFIED, "kprobe": ATTACHABLE,
                       "tracepoint": "-"}
    assert rows[2] == {"name": "skb:kfree_skb", "skb_pos": 1, "role": "drop", "kfunc": "-", "kprobe": "-",
                       "tracepoint": ATTACHABLE}
    assert [row["name"] for row in survey_rows(_survey(), with_functions=False)] == ["skb:kfree_skb"]


def test_the_text_table_leaves_out_what_nothing_can_attach_unless_asked() -> None:
    lines = survey_lines(_survey(), "auto", "text")
    assert lines[:4] == ["# backend auto -> kprobe (kfunc refused: EPERM)",
                         "# traceable here: kfunc 0 of 2, kprobe 1 of 2, tracepoint 1 of 1",
                         "# tracepoint: 1 of 1 raw tracepoints attached in a trial",
                         "# 1 probes no backend can attach here are not listed (--all lists them)"]
    assert lines[4].split() == ["Name", "skb_pos", "kfunc", "kprobe", "tracepoint", "Role"]
    assert [line.split()[0] for line in lines[5:]] == ["ip_rcv", "skb:kfree_skb", "gone_fn"]
    assert lines[-1].split() == ["gone_fn", "-", "missing", "(not", "in", "this", "kernel)"]
    assert "notrace_fn" in "\n".join(survey_lines(_survey(), "auto", "text", show_all=True))


def test_a_refused_request_says_so_and_json_is_one_line() -> None:
    assert survey_lines(_survey(), "kfunc", "text")[0] == "# backend kfunc cannot attach here: EPERM"
    (line,) = survey_lines(_survey(), "auto", "json")
    data = json.loads(line)
    assert data["chosen"] == "kprobe" and data["refused"] == {"kfunc": "EPERM"} and data["missing"] == ["gone_fn"]
    assert data["traceable"] == {"kfunc": {"traceable": 0, "total": 2}, "kprobe": {"traceable": 1, "total": 2},
                                 "tracepoint": {"traceable": 1, "total": 1}}
    assert [probe["name"] for probe in data["probes"]] == ["ip_rcv", "skb:kfree_skb"]
