#!/usr/bin/env bash
# The kernel matrix: boot Debian's 5.10 (bullseye), 6.1 (bookworm) and 6.12 (bookworm-backports) kernels under
# QEMU with virtme-ng (this host's root filesystem, read-only over 9p) and run tests/kernel/test_real_kernels.py
# inside each against this checkout, where kprobes and fentry attach. Prints one table of results per kernel x
# test at the end; exits non-zero if a test failed or a kernel did not finish.
#
# Installs what it needs (as root): qemu-system-x86, busybox-static and the kernel images from Debian's packages
# (the other suites through copies of this machine's own apt source), virtme-ng from PyPI into .venv.
# Environment: IPFTRACE_KERNELS (space-separated series, default "5.10 6.1 6.12"; "none" skips the matrix),
# IPFTRACE_KERNEL_TIMEOUT (seconds per kernel, default 3600), IPFTRACE_MATRIX_OUT (results, default a temp dir),
# IPFTRACE_MATRIX_TESTS (pytest -k expression, default all), IPFTRACE_MATRIX_COMMAND (a command run in each VM
# from the checkout instead of the suite, e.g. a bench writing into $IPFTRACE_MATRIX_DIR; its output is that
# kernel's guest.log, its exit status command-exit), IPFTRACE_MATRIX_DEADLINE (epoch seconds by which the matrix
# must have ended, as CI's time limit requires: the first kernel is booted unless less than a minute is left, cut
# off at the deadline; each later one only if its estimated time fits in what is left (the first kernel's seconds
# scaled by the kernels' relative cost in an earlier CI run; without that estimate, when the first kernel left no
# results, it is cut off at the deadline too), else it is reported "not run (time budget)" and does not fail the
# run; a kernel cut off at the deadline does).
set -euo pipefail
cd "$(dirname "$0")/.."
project=$(pwd)
series=${IPFTRACE_KERNELS:-5.10 6.1 6.12}
[ "$series" = none ] && { echo "kernel matrix: skipped (IPFTRACE_KERNELS=none)"; exit 0; }
per_kernel=${IPFTRACE_KERNEL_TIMEOUT:-3600}  # 5.10 took over 2,400 s on 2026-12-08's slow machine
out=${IPFTRACE_MATRIX_OUT:-$(mktemp -d /tmp/ipftrace-matrix.XXXXXX)}
mkdir -p "$out"
if [ "$(id -u)" != 0 ]; then
  echo "kernel matrix: needs root (installs packages, boots VMs)" >&2
  exit 2
fi

scripts/setup.sh
export DEBIAN_FRONTEND=noninteractive INITRD=No  # virtme-ng builds its own initramfs: skip Debian's
sources=/etc/apt/sources.list.d/debian.sources
extra=/etc/apt/sources.list.d/ipftrace-kernels.sources
if [ ! -f "$extra" ] && [ -f "$sources" ]; then
  # this machine's own Debian source, once per extra suite
  { sed -E 's/^Suites:.*/Suites: bookworm-backports/' "$sources" | awk '/^Types:/{n++} n==1'
    echo
    sed -E 's/^Suites:.*/Suites: bullseye/' "$sources" | awk '/^Types:/{n++} n==1'; } > "$extra"
  apt-get update -qq
fi

# The newest image of each series that apt offers (generic -amd64 flavour: -cloud has no 9p).
image_for() {
  local pattern
  case "$1" in
    5.10) pattern='^linux-image-5\.10\.0-[0-9]+-amd64$' ;;
    6.1) pattern='^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
    6.12) pattern='^linux-image-6\.12\.[0-9]+\+deb12-amd64$' ;;
    *) echo "unknown kernel series $1" >&2; return 1 ;;
  esac
  apt-cache search --names-only "$pattern" 2>/dev/null | awk '{print $1}' | grep -E "$pattern" | sort -V | tail -n 1
}
packages=(qemu-system-x86 busybox-static)
declare -A release_of
for s in $series; do
  image=$(image_for "$s")
  [ -n "$image" ] || { apt-get update -qq; image=$(image_for "$s"); }
  [ -n "$image" ] || { echo "kernel matrix: no linux-image package for $s" >&2; exit 1; }
  release_of[$s]=${image#linux-image-}
  packages+=("$image")
done
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "kernel matrix: installing ${missing[*]}" >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > "$out/apt.log" 2>&1 \
    || { tail -n 20 "$out/apt.log" >&2; exit 1; }
fi
.venv/bin/pip install -q --disable-pip-version-check "$(grep -o 'virtme-ng==[0-9.]*' pyproject.toml)" \
  > "$out/pip.log" 2>&1 || { cat "$out/pip.log" >&2; exit 1; }

# KVM only with hardware virtualisation in the CPU flags (nested KVM here is far slower than TCG).
accel=(--disable-kvm)
grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ] && accel=()

# Each series' relative time in the VM (df94368's fresh-clone CI run: 769, 675 and 515 s), for estimates.
declare -A weight=([5.10]=149 [6.1]=131 [6.12]=100)
deadline=${IPFTRACE_MATRIX_DEADLINE:-}
per_unit=""  # milliseconds per weight unit, from the first kernel that finished in this run
not_run=()
status=0
for s in $series; do
  release=${release_of[$s]}
  limit=$per_kernel
  if [ -n "$deadline" ]; then
    left=$(( deadline - $(date +%s) ))
    if [ -n "$per_unit" ]; then
      need=$(( ${weight[$s]:-150} * per_unit * 115 / 100000 ))  # with 15 % to spare
      if [ "$left" -lt "$need" ]; then
        not_run+=("$release: not run (time budget: about ${need}s needed, ${left}s left before the deadline)")
        echo "kernel matrix: ${not_run[-1]}" >&2
        continue
      fi
    fi
    if [ "$left" -lt 60 ]; then  # (after a first kernel that took all the time: the run has failed already)
      not_run+=("$release: not run (time budget: the deadline has passed)")
      echo "kernel matrix: ${not_run[-1]}" >&2
      continue
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  dir="$out/$release"
  mkdir -p "$dir"
  { printf 'IPFTRACE_MATRIX_TESTS=%q\n' "${IPFTRACE_MATRIX_TESTS:-}"
    printf 'IPFTRACE_MATRIX_COMMAND=%q\nexport IPFTRACE_MATRIX_DIR=%q\n' "${IPFTRACE_MATRIX_COMMAND:-}" "$dir"; } \
    > "$dir/env"
  echo "kernel matrix: booting $release (timeout ${limit}s)" >&2
  started=$(date +%s)
  set +e
  PATH="$project/.venv/bin:$PATH" timeout --kill-after=30 "$limit" \
    vng --force-9p "${accel[@]}" --cpus 2 -m 3G --rwdir="$dir" -r "/boot/vmlinuz-$release" \
    -- "bash $project/scripts/kernel-guest.sh $dir" > "$dir/vng.log" 2>&1 < /dev/null
  code=$?
  set -e
  echo "$(( $(date +%s) - started ))" > "$dir/seconds"
  [ -z "$per_unit" ] && [ -f "$dir/junit.xml" ] && per_unit=$(( $(cat "$dir/seconds") * 1000 / ${weight[$s]:-150} ))
  if [ -n "${IPFTRACE_MATRIX_COMMAND:-}" ]; then
    result=$(cat "$dir/command-exit" 2>/dev/null || echo "none (vng exit $code)")
    echo "kernel matrix: $release: command exit $result; output in $dir/guest.log" >&2
    [ "$result" = 0 ] || status=1
  elif [ ! -f "$dir/junit.xml" ]; then
    echo "kernel matrix: $release: no results (vng exit $code); last lines:" >&2
    tail -n 15 "$dir/vng.log" "$dir/guest.log" 2>/dev/null >&2 || true
    status=1
  fi
done

[ -n "${IPFTRACE_MATRIX_COMMAND:-}" ] || .venv/bin/python scripts/matrix_table.py "$out" || status=1
for line in "${not_run[@]}"; do
  echo "kernel matrix: $line" >&2
done
echo "kernel matrix: results in $out" >&2
exit $status
