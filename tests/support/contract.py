"""The metric names of DESIGN.md's contract, as users and dashboards rely on them (kept in step with the doc by
tests/unit/test_deploy.py where the doc is present)."""

CONTRACT_METRICS = frozenset({
    "ipftrace_function_hits_total",
    "ipftrace_skb_drops_total",
    "ipftrace_paths_total",
    "ipftrace_packets_untraced_total",
    "ipftrace_events_total",
    "ipftrace_events_lost_total",
    "ipftrace_spans_exported_total",
    "ipftrace_spans_dropped_total",
    "ipftrace_probes",
    "ipftrace_build_info",
})
