"""Usage errors of both commands: one line on stderr, exit 2, no traceback (no root or BPF needed)."""

from __future__ import annotations

import pytest

from ipftrace_exporter.cli import exporter_cli, ipftrace_cli, run_command


@pytest.mark.parametrize(("args", "message"), [
    (["-d4", "10.0.0.300"], "--daddr4 '10.0.0.300': not an IP address"),
    (["-l4", "bogus"], "unknown protocol 'bogus'"),
    (["-l4", "TCP", "-dp", "70000"], "--dport 70000: must be 1-65535"),
    (["-iv", "4", "-d6", "fd00::1"], "IPv6 address cannot match ipversion 4"),
    (["-d4", "fd00::1"], "not an IPv4 address"),
    (["-iv", "5"], "'5' is not one of"),
    (["/nonexistent/manifest.yaml"], "manifest '/nonexistent/manifest.yaml': file not found"),
    (["-o", "yaml"], "needs --list"),
    (["--print-program", "-l"], "give either --print-program or --list, not both"),
    (["-b", "ebpf"], "'ebpf' is not one of"),
    (["-n", "0"], "0 is not in the range"),
    (["-m", "nosuchmodule"], "nosuchmodule"),
    (["-iv", "4", "-l4", "icmpv6"], "l4proto ICMPv6 never matches IPv4 packets"),
    (["-iv", "6", "-l4", "icmp"], "l4proto ICMP never matches IPv6 packets"),
    (["-d6", "fd00::1", "-l4", "1"], "l4proto ICMP never matches IPv6 packets"),
    (["-d4", ""], "--daddr4 is empty"),
    (["-s6", " "], "--saddr6 is empty"),
    (["-l4", ""], "--l4proto is empty"),
    (["-dp", ""], "--dport is empty"),
    (["--ready-file", "/nonexistent-dir/ready"], "directory '/nonexistent-dir' does not exist"),
    (["--ready-file", "/"], "is a directory"),
    (["--", "ether host 01:02:03:04:05:06"], "link-layer"),
    (["--", "tcp and"], "pcap filter 'tcp and': can't parse filter expression: syntax error"),
    (["--"], "pcap filter is empty"),
    (["-l4", "tcp", "--", "vlan"], "no VLAN support for Raw IP"),
    (["--ifname", ""], "--ifname is empty"),
    (["--ifname", "a b"], "not a device name"),
    (["--netns", "/nonexistent"], "--netns '/nonexistent': cannot read /nonexistent"),
])
def test_ipftrace_bad_input_is_one_line_and_exit_2(args: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("ipftrace", ipftrace_cli, args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("ipftrace: error: ")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("config", "message"), [
    ("flows: [{name: a, dport: 99999, l4proto: tcp}]", "flows[0].dport"),
    ("trace: {}", 'unknown key "trace"'),
    ("backend: fast", "backend"),
])
def test_exporter_bad_config_is_one_line_and_exit_2(tmp_path, config: str, message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    assert run_command("ipftrace-exporter", exporter_cli, ["--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err


def test_exporter_print_program_and_check_are_one_or_the_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("ipftrace-exporter", exporter_cli, ["--print-program", "--check"]) == 2
    err = capsys.readouterr().err
    assert err == "ipftrace-exporter: error: give either --check or --print-program, not both\n"


def test_exporter_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("ipftrace-exporter", exporter_cli, ["--config", "/nonexistent.yaml"]) == 2
    assert "/nonexistent.yaml" in capsys.readouterr().err


def test_help_lists_the_seed_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("ipftrace", ipftrace_cli, ["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("-iv, --ipversion", "-l4, --l4proto", "-s4, --saddr4", "-d4, --daddr4", "-s6, --saddr6",
                 "-d6, --daddr6", "-sp, --sport", "-dp, --dport", "-m, --module", "-l, --list", "-b, --backend",
                 "-n, --count", "-t, --timeout", "-o, --output", "--ready-file"):
        assert flag in out


def test_short_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    from ipftrace_exporter import __version__

    assert run_command("ipftrace", ipftrace_cli, ["-h"]) == 0
    assert "pcap-filter expression after `--`" in capsys.readouterr().out
    assert run_command("ipftrace", ipftrace_cli, ["--version"]) == 0
    assert capsys.readouterr().out == f"ipftrace {__version__}\n"


def test_words_after_double_dash_are_one_pcap_filter_and_the_manifest_stays_positional() -> None:
    ctx = ipftrace_cli.make_context("ipftrace", ["-l4", "tcp", "m.yaml", "--", "dst", "port", "443"])
    assert ctx.meta["pcap_filter"] == "dst port 443"
    assert ctx.params["manifest_file"] == "m.yaml" and ctx.params["l4proto"] == "tcp"
    assert "pcap_filter" not in ipftrace_cli.make_context("ipftrace", ["-l4", "tcp"]).meta


def test_flags_and_filter_make_one_flow() -> None:
    from ipftrace_exporter.cli import _flow_from_flags

    flow = _flow_from_flags("4", "tcp", None, "10.0.0.0/8", None, None, None, "443", "tcp[tcpflags] & tcp-syn != 0")
    assert flow.pcap is not None and flow.pcap.expression == "tcp[tcpflags] & tcp-syn != 0"
    assert "filter 'tcp[tcpflags] & tcp-syn != 0'" in flow.describe()


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
     "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read '/nonexistent/ca.pem': No such file or directory"),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not supported"),
])
def test_exporter_bad_otel_environment_is_one_line_before_anything_compiles(
        env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.invalid:4317")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for args in (["--check"], ["--metrics-address", "127.0.0.1:0"]):  # the daemon's start, too: before attaching
        assert run_command("ipftrace-exporter", exporter_cli, args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
