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
    (["-b", "ebpf"], "'ebpf' is not one of"),
    (["-n", "0"], "0 is not in the range"),
    (["-m", "nosuchmodule"], "nosuchmodule"),
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
