"""The `-l` survey: what each backend can do with each planned probe on this kernel (every probe compiled into one
program and loaded through the verifier, the tracepoints trial-attached), and the table or JSON `ipftrace -l`
prints from it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from .collector import ATTACHED, LOADED, REFUSED, Collector
from .kernel.headers import HeaderTree
from .kernel.view import kprobes_unavailable
from .plan import ProbePlan, choose_backend, function_backend_unavailable, plan_probes
from .probes import ProbeKind
from .program import ProbeSource, render
from .tracer import Tracer

ATTACHABLE, VERIFIED, UNTESTED = "attachable", "verified", "untested"


@dataclass
class Survey:
    """What each backend can do with each planned probe on this kernel (what `ipftrace -l` prints).

    States: "attachable" (loaded through the verifier, and this kernel has the attach interface; tracepoints:
    a trial attach worked), "verified" (loaded through the verifier, but this kernel cannot attach it),
    "refused" (compiled; the kernel refuses the program type), "rejected" (the verifier rejected it),
    "untested" (not checked)."""

    chosen: str  # the backend the request resolves to
    reasons: dict[str, str]  # backends passed over, and why
    functions: list[ProbeSource]  # kernel-function probes, in plan order (as kprobes)
    tracepoints: list[ProbeSource]
    missing: list[str]  # manifest functions this kernel lacks
    states: dict[str, dict[str, str]]  # backend -> probe name -> state
    notes: dict[str, str]  # backend -> one line on what was checked and what the kernel said


def take_survey(tracer: Tracer, headers: HeaderTree | None = None, with_functions: bool = True) -> Survey:
    """Compile one program holding every planned function probe (as kprobe and as kfunc) and the skb
    tracepoints, load each entry point through the verifier, trial-attach the tracepoints, and tell per probe
    and backend what this kernel allows (`with_functions=False`: tracepoints only). Raises KernelError if it
    does not compile."""
    chosen, reasons = choose_backend(tracer.request.backend, tracer.view)
    manifest = tracer.request.manifest
    function_plan = plan_probes(tracer.view, "kprobe", manifest) if with_functions else ProbePlan("kprobe", [])
    functions = [source for source in function_plan.sources if source.is_function]
    tracepoints = plan_probes(tracer.view, "tracepoint", manifest).sources
    sources: list[ProbeSource] = []

    def add(source: ProbeSource, kind: ProbeKind | None = None) -> None:
        probe = replace(source.probe, id=len(sources), kind=kind or source.probe.kind)
        sources.append(replace(source, probe=probe))

    for source in functions:
        add(source)
    for source in functions:
        add(source, ProbeKind.KFUNC)
    for source in tracepoints:
        add(source)
    program = render(sources, tracer.request.flows, tracer.program_options(), tracer.request.modules)
    # kfunc entry points load as a function's fentry program, bound to its BTF id (kernels before 5.15 need the id
    # to load their own copy at all)
    btf_ids = tracer.view.function_btf_ids([source.target for source in functions])
    with Collector(program, headers or tracer.headers(), btf_ids=btf_ids) as collector:
        report = collector.verify(try_tracepoints=True)
    kprobes_missing = kprobes_unavailable()
    refusal = function_backend_unavailable("kfunc", tracer.view)
    states: dict[str, dict[str, str]] = {"kprobe": {}, "kfunc": {}, "tracepoint": {}}
    for source in program.sources:
        check = report.for_source(source)
        status = check.status if check is not None else ""
        kind = source.probe.kind
        if kind is ProbeKind.TRACEPOINT:
            state = {ATTACHED: ATTACHABLE, LOADED: VERIFIED}.get(status, status or UNTESTED)
        elif kind is ProbeKind.KPROBE:
            state = {LOADED: VERIFIED if kprobes_missing else ATTACHABLE}.get(status, status or UNTESTED)
        else:
            state = {LOADED: ATTACHABLE}.get(status, status or UNTESTED)
        states[kind.value][source.probe.name] = state
    notes: dict[str, str] = {}
    if functions:
        kfunc_states = set(states["kfunc"].values())
        kprobe_ok = sum(1 for state in states["kprobe"].values() if state in (VERIFIED, ATTACHABLE))
        notes["kfunc"] = ("compiled"
                          + (f"; not attachable: {refusal}" if refusal and REFUSED in kfunc_states
                             else "; the kernel loads kfunc programs" if ATTACHABLE in kfunc_states else ""))
        notes["kprobe"] = (f"{kprobe_ok} of {len(functions)} loaded through the verifier; "
                           + (f"not attachable: {kprobes_missing}" if kprobes_missing else "kprobes are available"))
    notes["tracepoint"] = (f"{sum(1 for state in states['tracepoint'].values() if state == ATTACHABLE)} of "
                           f"{len(tracepoints)} raw tracepoints attached in a trial")
    rejected = report.rejected
    if rejected:
        notes["rejected"] = f"{rejected[0].entry}: {rejected[0].reason}"
    return Survey(chosen, reasons, functions, list(tracepoints), function_plan.missing, states, notes)


BACKEND_KINDS = ("kfunc", "kprobe", "tracepoint")


def survey_rows(survey: Survey, with_functions: bool) -> list[dict[str, Any]]:
    """One row per probe of a survey: name, skb position, role and each backend's state here ('-': n/a)."""
    states = survey.states
    rows: list[dict[str, Any]] = []
    functions = survey.functions if with_functions else []
    for source in [*functions, *survey.tracepoints]:
        name = source.probe.name
        tracepoint = source.probe.kind.value == "tracepoint"
        rows.append({"name": name, "skb_pos": source.skb_arg + 1, "role": source.probe.role.value,
                     "kfunc": "-" if tracepoint else states["kfunc"].get(name, "-"),
                     "kprobe": "-" if tracepoint else states["kprobe"].get(name, "-"),
                     "tracepoint": states["tracepoint"].get(name, "-") if tracepoint else "-"})
    return rows


def survey_lines(survey: Survey, requested: str, output: str, show_all: bool = False) -> list[str]:
    """What `ipftrace -l` prints for a survey of backend `requested`: one JSON object (`output="json"`) or a
    commented table, one line each; probes no backend can attach are left out unless `show_all`."""
    rows = survey_rows(survey, requested != "tracepoint")
    counts = {backend: (sum(1 for row in rows if row[backend] == ATTACHABLE),
                        sum(1 for row in rows if row[backend] != "-")) for backend in BACKEND_KINDS}
    shown = rows if show_all else [row for row in rows if ATTACHABLE in (row[b] for b in BACKEND_KINDS)]
    if output == "json":
        return [json.dumps({
            "backend": requested, "chosen": survey.chosen, "refused": survey.reasons, "notes": survey.notes,
            "traceable": {backend: {"traceable": n, "total": total} for backend, (n, total) in counts.items()},
            "probes": shown, "missing": survey.missing}, separators=(",", ":"))]
    lines: list[str] = []
    passed = "; ".join(f"{name} refused: {why}" for name, why in survey.reasons.items())
    if requested in survey.reasons:
        lines.append(f"# backend {requested} cannot attach here: {survey.reasons[requested]}")
    else:
        lines.append(f"# backend {requested} -> {survey.chosen}{' (' + passed + ')' if passed else ''}")
    lines.append("# traceable here: " + ", ".join(f"{backend} {n} of {total}"
                                                  for backend, (n, total) in counts.items() if total))
    for backend, note in survey.notes.items():
        lines.append(f"# {backend}: {note}")
    if len(shown) < len(rows):
        lines.append(f"# {len(rows) - len(shown)} probes no backend can attach here are not listed (--all lists them)")
    width = max([40, *(len(str(row["name"])) for row in shown)])
    lines.append(f"{'Name':<{width}} {'skb_pos':>7}  {'kfunc':<10} {'kprobe':<10} {'tracepoint':<10} Role")
    for row in shown:
        lines.append(f"{row['name']:<{width}} {row['skb_pos']:>7}  {row['kfunc']:<10} {row['kprobe']:<10} "
                     f"{row['tracepoint']:<10} {row['role']}")
    for name in survey.missing:
        lines.append(f"{name:<{width}} {'-':>7}  missing (not in this kernel)")
    return lines
