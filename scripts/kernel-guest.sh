#!/usr/bin/env bash
# Runs inside one kernel-matrix VM (started by scripts/test-kernels.sh): the real-kernel suite against this
# checkout (or IPFTRACE_MATRIX_COMMAND instead), results into DIR (the VM's only writable host directory).
set -u
dir=$1
exec > "$dir/guest.log" 2>&1
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "$dir/env"
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing
uname -r > "$dir/release"
export IPFTRACE_CACHE_DIR="$dir/cache" PYTHONDONTWRITEBYTECODE=1 IPFTRACE_TEST_READY_TIMEOUT=900 \
  IPFTRACE_MATRIX_RECORD="$dir/measurements.jsonl"
ulimit -n 1024  # an ordinary default: the tool raises its own limit where it needs more
if [ -n "${IPFTRACE_MATRIX_COMMAND:-}" ]; then  # a command in place of the suite (a bench), run from the checkout
  bash -c "$IPFTRACE_MATRIX_COMMAND"
  echo $? > "$dir/command-exit"
  exit 0
fi
args=(-p no:cacheprovider -q -rs --basetemp="$dir/pytest" --junitxml="$dir/junit.xml" -o junit_family=xunit1
      tests/kernel/test_real_kernels.py)
[ -n "${IPFTRACE_MATRIX_TESTS:-}" ] && args+=(-k "$IPFTRACE_MATRIX_TESTS")
.venv/bin/python -m pytest "${args[@]}"
echo $? > "$dir/pytest-exit"
