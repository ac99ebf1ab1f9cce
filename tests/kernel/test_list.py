"""`ipftrace -l`: first how many probes each backend can trace here, then only those (unless --all); JSON too."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
MANIFEST = str(Path(__file__).resolve().parents[2] / "manifests" / "default.yaml")


def run_ipftrace(*args: str, cache_dir: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IPFTRACE_CACHE_DIR=cache_dir)
    return subprocess.run([str(BIN / "ipftrace"), *args], capture_output=True, text=True, env=env, timeout=180,
                          check=False)


def _rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines()
            if line and not line.startswith(("#", "Name"))}


def test_list_counts_first_and_lists_only_what_can_be_traced_here(cache_dir: str) -> None:
    short = run_ipftrace("-l", MANIFEST, cache_dir=cache_dir)
    full = run_ipftrace("-l", "--all", MANIFEST, cache_dir=cache_dir)
    assert short.returncode == 0 and full.returncode == 0, short.stderr + full.stderr
    lines = short.stdout.splitlines()
    counts = next(line for line in lines if line.startswith("# traceable here: "))
    assert lines.index(counts) == 1  # right after the backend line
    listed, every = _rows(short.stdout), _rows(full.stdout)
    attachable = {name for name, row in every.items() if "attachable" in row[2:5]}
    assert set(listed) == attachable and attachable  # the skb tracepoints attach on any kernel with tracefs
    for backend, column in (("kfunc", 2), ("kprobe", 3), ("tracepoint", 4)):
        traceable = sum(1 for row in every.values() if row[column] == "attachable")
        total = sum(1 for row in every.values() if row[column] not in ("-", "missing"))
        assert f"{backend} {traceable} of {total}" in counts, (counts, backend)
    hidden = len(every) - len(listed)
    assert (f"# {hidden} probes no backend can attach here are not listed (--all lists them)" in short.stdout) \
        == (hidden > 0)


def test_list_json_is_one_json_document(cache_dir: str) -> None:
    result = run_ipftrace("-l", "-o", "json", "-b", "tracepoint", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["chosen"] == "tracepoint"
    names = {probe["name"] for probe in document["probes"]}
    assert "skb:kfree_skb" in names
    assert document["traceable"]["tracepoint"]["traceable"] == len(document["probes"])
    assert all(probe["tracepoint"] == "attachable" for probe in document["probes"])
