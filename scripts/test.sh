#!/usr/bin/env bash
# Set up (idempotent) and run every test: the unit and kernel tests on this machine's kernel, then the kernel
# matrix (scripts/test-kernels.sh: the function backends on Debian's 5.10, 6.1 and 6.12 kernels under QEMU).
# Extra arguments go to pytest; naming tests (a path or -k) runs only those, without the matrix, and
# IPFTRACE_KERNELS=none skips the matrix too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check --quiet ipftrace_exporter tests bench scripts
matrix=yes
for arg in "$@"; do
  case "$arg" in -k|-k*|[!-]*) matrix=no ;; esac
done
.venv/bin/python -m pytest "$@"
if [ "$matrix" = yes ] && [ "${IPFTRACE_KERNELS:-}" != none ]; then
  scripts/test-kernels.sh
fi
