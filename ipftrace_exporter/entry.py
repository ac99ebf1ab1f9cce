"""Console entry points. Ctrl-C is a clean exit 130 from the first instant: the handler is set before the heavy
imports (click, BCC, OpenTelemetry), when nothing can be attached yet; cli.py replaces it with its own."""

from __future__ import annotations

import os
import signal


def _interrupted_early(_signum: int, _frame: object) -> None:
    os._exit(130)


def _stopped_early(_signum: int, _frame: object) -> None:
    os._exit(0)  # the daemon's contract: SIGINT / SIGTERM exit 0


def ipftrace_main() -> None:
    """`ipftrace`."""
    signal.signal(signal.SIGINT, _interrupted_early)
    from .cli import ipftrace_main as main

    main()


def exporter_main() -> None:
    """`ipftrace-exporter`."""
    signal.signal(signal.SIGINT, _stopped_early)
    signal.signal(signal.SIGTERM, _stopped_early)
    from .cli import exporter_main as main

    main()
