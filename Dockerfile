# ipftrace-exporter container image.
#
# Base: Debian bookworm, whose BCC 0.26 packages (python3-bpfcc, libbpfcc) the project is built and tested on.
# Install: scripts/setup.sh, the same script the README's set-up runs, so the image and a host install cannot drift:
#   IPFTRACE_VENV=/opt/ipftrace   the venv (the package, its PyPI dependencies, Debian's bcc linked in)
#   IPFTRACE_EXTRAS=              empty: runtime dependencies only, no test tools
# setup.sh also tries to mount tracefs; a build has no CAP_SYS_ADMIN, so it only warns. At run time the host's
# /sys/kernel/tracing is bind-mounted instead (see deploy/kubernetes/daemonset.yaml, deploy/examples/docker-compose.yaml).
#
#   docker build -t ipftrace-exporter:0.1.0 .
#
# Runs as root (uid 0): Kubernetes and Docker grant added capabilities (CAP_BPF, CAP_PERFMON, ...) to a non-root
# process only through ambient or file capabilities, which neither a Python interpreter nor a pod spec provides.
FROM debian:bookworm-slim

WORKDIR /opt/ipftrace-exporter

# Dependencies first, sources after: the layer with the Debian packages and the venv is rebuilt only when
# pyproject.toml or setup.sh change, not on every source edit. setup.sh installs the package in editable mode, so a
# one-line stand-in package is enough here; the real sources are copied over it below.
# One RUN: setup.sh runs `apt-get update` itself when packages are missing; the lists and pip's cache are removed
# in the same layer.
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/
RUN mkdir -p ipftrace_exporter && echo '__version__ = "0"' > ipftrace_exporter/__init__.py
RUN IPFTRACE_VENV=/opt/ipftrace IPFTRACE_EXTRAS= scripts/setup.sh \
    && rm -rf /var/lib/apt/lists/* /root/.cache

# The sources; then check that the entry point imports and precompile the package, so a read-only root
# filesystem costs nothing at start-up.
COPY . .
RUN /opt/ipftrace/bin/ipftrace-exporter --help >/dev/null \
    && /opt/ipftrace/bin/python -m compileall -q /opt/ipftrace-exporter/ipftrace_exporter

ENV PATH=/opt/ipftrace/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IPFTRACE_CACHE_DIR=/var/cache/ipftrace-exporter

# The BTF-derived kernel header tree BCC compiles against is built at start-up and cached here per kernel release.
# With a read-only root filesystem this must be a writable volume (emptyDir / hostPath / a named volume).
VOLUME ["/var/cache/ipftrace-exporter"]

# /metrics, /healthz, /readyz
EXPOSE 9436

LABEL org.opencontainers.image.title="ipftrace-exporter" \
      org.opencontainers.image.description="Follow packets through the Linux kernel with eBPF; export paths as OpenTelemetry traces and per-function counts as Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

ENTRYPOINT ["ipftrace-exporter"]
