"""Where a tracepoint's skb, free location and drop reason sit in its TP_PROTO (from BTF)."""

from __future__ import annotations

from ipftrace_exporter.tracepoints import TracepointArgs, locate_args


def test_named_parameters_are_found_by_name() -> None:
    params = [("skb", "struct sk_buff *"), ("location", "void *"), ("reason", "enum skb_drop_reason"),
              ("rx_sk", "struct sock *")]
    assert locate_args(params) == TracepointArgs(0, 1, 2)


def test_unnamed_parameters_of_older_kernels_are_found_by_type() -> None:
    # Debian's 5.10: btf_trace_kfree_skb without names, and no drop reason yet
    assert locate_args([("arg1", "struct sk_buff *"), ("arg2", "void *")]) == TracepointArgs(0, 1, None)
    assert locate_args([("arg1", "struct sk_buff *"), ("arg2", "void *"), ("arg3", "enum skb_drop_reason")]) == \
        TracepointArgs(0, 1, 2)


def test_a_named_void_pointer_that_is_not_the_location_is_left_alone() -> None:
    assert locate_args([("skb", "struct sk_buff *"), ("data", "void *")]) == TracepointArgs(0, None, None)


def test_no_skb_no_arguments() -> None:
    assert locate_args([("arg1", "void *")]) is None


def test_a_device_argument_is_found_by_type() -> None:
    # net_dev_xmit(skb, rc, dev, skb_len): the event's device, which skb->dev no longer is on a veth
    params = [("skb", "struct sk_buff *"), ("rc", "int"), ("dev", "struct net_device *"), ("skb_len", "unsigned int")]
    assert locate_args(params) == TracepointArgs(0, None, None, 2)
    assert locate_args([("arg1", "struct sk_buff *"), ("arg2", "const struct net_device *")]) == \
        TracepointArgs(0, None, None, 1)
