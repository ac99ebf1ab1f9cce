#!/usr/bin/env bash
# Idempotent set-up for ipftrace-exporter on Debian bookworm (run as root):
# Debian packages, tracefs, a venv holding the package, and Debian's BCC linked into it.
# Environment: IPFTRACE_VENV (default ./.venv), IPFTRACE_EXTRAS (default "test"; empty for a runtime-only install).
set -euo pipefail
cd "$(dirname "$0")/.."
project=$(pwd)
venv=${IPFTRACE_VENV:-$project/.venv}
extras=${IPFTRACE_EXTRAS-test}

packages=(python3-bpfcc libbpfcc bpftool iproute2 iputils-ping python3-venv python3-pip libpcap0.8)
# The end-to-end scrape test runs a real Prometheus; the pcap-filter tests compare with tcpdump's verdicts and
# compile the translated C with gcc; the privilege test drops root with setpriv (util-linux); the packet-identity
# tests NAT through a router namespace with nftables; bench/bench_peers.py compares with bpftrace; strace shows
# that --print-program makes no bpf() call that loads a program.
case ",$extras," in *,test,*) packages+=(prometheus tcpdump gcc libc6-dev util-linux nftables bpftrace strace ethtool) ;; esac
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    || echo "setup: warning: could not mount tracefs at /sys/kernel/tracing; tracepoints will be unavailable" >&2
fi

if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"

spec="$project"
[ -n "$extras" ] && spec="$project[$extras]"
stamp="$venv/.ipftrace-installed"
want="$(sha256sum "$project/pyproject.toml" | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the package into $venv" >&2
  if ! "$venv/bin/pip" install -q --disable-pip-version-check -e "$spec" > "$venv/pip.log" 2>&1; then
    grep -v "^WARNING: Location" "$venv/pip.log" >&2
    echo "setup: pip install failed (log: $venv/pip.log)" >&2
    exit 1
  fi
  "$venv/bin/python" -P -c 'import ipftrace_exporter' || { echo "setup: package install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
