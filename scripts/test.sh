#!/usr/bin/env bash
# Set up (idempotent) and run every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check --quiet ipftrace_exporter tests bench
exec .venv/bin/python -m pytest "$@"
