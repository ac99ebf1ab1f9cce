"""Hostile configs: each is refused by `ipftrace-exporter --config F --check` with exit 2 and one line on stderr,
within seconds and in bounded memory (the child's peak RSS is read from wait4, not guessed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipftrace_exporter.config import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_NODES

RSS_LIMIT_MB = 80  # measured: ~33 MB for each of these (the interpreter and the package's imports)
TIME_LIMIT_S = 10.0
ADDRESS_SPACE_LIMIT = 2 << 30  # a regression fails with MemoryError instead of eating the machine


def _billion_laughs() -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):  # 10**9 values when expanded
        prev, name = chr(96 + level), chr(97 + level)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    lines.append("flows: *i")
    return "\n".join(lines) + "\n"


HOSTILE = {
    "billion_laughs": (_billion_laughs(), f"expands to more than {MAX_NODES} values"),
    "deep_flow_nesting": ("flows: " + "[" * 200_000 + "]" * 200_000 + "\n", f"deeper than {MAX_DEPTH} levels"),
    "deep_block_nesting": ("".join("  " * i + f"k{i}:\n" for i in range(500)), f"deeper than {MAX_DEPTH}"),
    "recursive_alias": ("flows: &a [*a]\n", "an alias refers to a node that contains it"),
    "max_inflight_1e11": ("paths: {max_inflight: 1e11}\n", "paths.max_inflight"),
    "max_inflight_huge": ("paths: {max_inflight: 100000000000}\n", "paths.max_inflight"),
    "max_events_1e22": ("paths: {max_events: 10000000000000000000000}\n", "paths.max_events"),
    "int_of_5000_digits": ("paths: {max_events: " + "9" * 5000 + "}\n", "invalid YAML"),
    "idle_timeout_a_century": ("paths: {idle_timeout: 876000h}\n", "paths.idle_timeout"),
    "otlp_timeout_zero": ("traces: {otlp: {timeout: 0.0000000001}}\n", "traces.otlp.timeout"),
    "ring_buffer_huge": ("collector: {ring_buffer_pages: 1073741824}\n", "collector.ring_buffer_pages"),
}


def _run_check(config: Path) -> tuple[int, str, float, float]:
    """(exit code, stderr, seconds, peak RSS in MB) of `ipftrace-exporter --config config --check`.

    The peak is the child's own VmHWM, written at exit (wait4's ru_maxrss would include the forking pytest
    process's pages)."""
    peak_file = config.with_name("peak-rss-kb")
    main = (f"import atexit, resource; resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_LIMIT},) * 2)\n"
            "def peak():\n"
            "    status = open('/proc/self/status').read()\n"
            f"    open({str(peak_file)!r}, 'w').write(status.split('VmHWM:')[1].split()[0])\n"
            "atexit.register(peak)\n"
            "from ipftrace_exporter.cli import exporter_main; exporter_main()")
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", main, "--config", str(config), "--check"],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    seconds = time.monotonic() - started
    return child.returncode, child.stderr.decode(errors="replace"), seconds, int(peak_file.read_text()) / 1024


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_config_is_one_line_exit_2_fast_and_small(tmp_path: Path, name: str) -> None:
    text, message = HOSTILE[name]
    config = tmp_path / "config.yaml"
    config.write_text(text)
    code, err, seconds, rss_mb = _run_check(config)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("ipftrace-exporter: error: "), err
    assert message in err
    assert seconds < TIME_LIMIT_S
    assert rss_mb < RSS_LIMIT_MB, f"{name}: peak RSS {rss_mb:.0f} MB"


def test_40_megabyte_config_is_refused_without_reading_it(tmp_path: Path) -> None:
    config = tmp_path / "big.yaml"
    with config.open("w") as handle:
        handle.write("flows:\n")
        line = "  - {name: x, l4proto: tcp, dport: 80}\n"
        handle.write(line * (40_000_000 // len(line)))
    assert config.stat().st_size > 39_000_000
    code, err, seconds, rss_mb = _run_check(config)
    assert code == 2, err
    assert err.count("\n") == 1 and f"larger than {MAX_CONFIG_BYTES // 1024} KiB" in err, err
    assert seconds < TIME_LIMIT_S
    assert rss_mb < RSS_LIMIT_MB, f"peak RSS {rss_mb:.0f} MB"


def test_a_config_just_under_the_size_bound_still_parses(tmp_path: Path) -> None:
    """The bound is on bytes, not a reason to refuse an ordinary (comment-heavy) config."""
    from ipftrace_exporter.config import load_config

    config = tmp_path / "config.yaml"
    body = "paths: {max_events: 512}\n"
    config.write_text("#" * (MAX_CONFIG_BYTES - len(body) - 1) + "\n" + body)
    assert config.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(config).paths.max_events == 512


@pytest.mark.parametrize("name", ["billion_laughs", "deep_flow_nesting", "recursive_alias"])
def test_hostile_manifests_are_refused_the_same_way(tmp_path: Path, name: str) -> None:
    """Manifests (`manifest:` in a config, or ipftrace's MANIFEST_FILE) go through the same bounded loader."""
    from ipftrace_exporter.errors import UsageError
    from ipftrace_exporter.manifest import load_manifest

    text, message = HOSTILE[name]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text.replace("flows:", "functions:"))
    started = time.monotonic()
    with pytest.raises(UsageError, match=rf"^manifest {manifest}: not valid YAML: .*{message}"):
        load_manifest(manifest)
    assert time.monotonic() - started < TIME_LIMIT_S
    big = tmp_path / "big.yaml"
    big.write_text("functions:\n" + "  - {name: ip_rcv, skb_pos: 1}\n" * 40_000)
    with pytest.raises(UsageError, match=f"larger than {MAX_CONFIG_BYTES // 1024} KiB"):
        load_manifest(big)
