"""ipftrace-exporter: follow packets through the Linux kernel with eBPF."""

__version__ = "0.1.0"
