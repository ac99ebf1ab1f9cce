"""Least privilege in code paths: files the root daemon writes are never written through a symlink; a header cache
or module directory that others can write is not trusted; a config cannot name module code to run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ipftrace_exporter.cli import exporter_cli, run_command, write_ready_file
from ipftrace_exporter.config import parse_config
from ipftrace_exporter.errors import ConfigError
from ipftrace_exporter.fsutil import untrusted_reason, write_file_atomic
from ipftrace_exporter.kernel.headers import HeaderTreeBuilder, trusted_cache_dir


def test_a_symlinked_ready_file_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    ready = tmp_path / "ready"
    ready.symlink_to(victim)
    (tmp_path / "ready.tmp").symlink_to(victim)  # the old predictable temporary name, planted too
    write_ready_file(ready)
    assert victim.read_text() == "precious\n"
    assert not ready.is_symlink() and ready.read_text() == "ready\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready", "ready.tmp", "victim"]  # no temporary left


def test_write_file_atomic_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    (target / "child").write_text("x")
    with pytest.raises(OSError):
        write_file_atomic(target, b"data")  # cannot rename a file over a non-empty directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]


@pytest.mark.parametrize(("mode", "reason"), [
    (0o755, None), (0o700, None), (0o775, "writable by group (mode 0775)"),
    (0o757, "writable by others (mode 0757)"), (0o1777, "writable by group and others (mode 1777)"),
])
def test_untrusted_reason_judges_owner_and_write_bits(tmp_path: Path, mode: int, reason: str | None) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(mode)
    assert untrusted_reason(directory) == reason
    if os.getuid() == 0:  # a root-owned directory is trusted whoever asks
        assert untrusted_reason(directory, uid=12345) == reason
    else:
        assert untrusted_reason(directory, uid=os.getuid() + 1) == f"owned by uid {os.getuid()}, not root"
    if os.getuid() == 0:
        os.chown(directory, 4242, 4242)
        assert untrusted_reason(directory) == "owned by uid 4242, not root"


def test_a_world_writable_header_cache_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "cache"
    shared.mkdir()
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING):
        private = trusted_cache_dir(shared)
    assert private != shared and untrusted_reason(private) is None
    assert (private.stat().st_mode & 0o777) == 0o700
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "is not used (writable by group and others" in caplog.records[0].getMessage()
    shared.chmod(0o755)
    assert trusted_cache_dir(shared) == shared
    assert trusted_cache_dir(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"  # created, ours


@pytest.mark.skipif(not (os.access("/sys/kernel/btf/vmlinux", os.R_OK) and os.path.exists("/usr/sbin/bpftool")),
                    reason="needs BTF and bpftool")
def test_a_header_tree_planted_in_a_shared_cache_is_never_compiled(tmp_path: Path) -> None:
    shared = tmp_path / "cache"
    shared.mkdir()
    shared.chmod(0o777)
    builder = HeaderTreeBuilder(cache_dir=str(shared))
    planted = builder.tree_path() / "include"
    planted.mkdir(parents=True)
    (planted / "vmlinux.h").write_text("#error planted\n")
    tree = builder.ensure()
    assert not tree.path.startswith(str(shared))
    assert "planted" not in (Path(tree.path) / "include" / "vmlinux.h").read_text(errors="replace")[:10000]


def test_a_config_naming_a_module_path_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config.yaml: modules\[0\]: \"/opt/x.py\": a path: module files load "
                                          r"only from a directory given with --module-dir"):
        parse_config("modules: [/opt/x.py]\n", "config.yaml")


def test_check_refuses_a_module_path_in_the_config_without_running_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"modules: [{evil}]\n")
    assert run_command("ipftrace-exporter", exporter_cli, ["--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "modules[0]" in err and "--module-dir" in err, err
    assert not marker.exists()
