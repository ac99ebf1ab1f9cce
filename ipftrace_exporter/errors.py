"""The package's own exception types; cli.py turns them into one-line messages and exit codes."""


class IpftraceError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(IpftraceError):
    """Bad flags, config, manifest or flow values (exit code 2)."""


class ConfigError(UsageError):
    """A config value is invalid; the message names the key and the reason."""


class KernelError(IpftraceError):
    """The kernel lacks something the tool needs (BTF, headers, tracefs)."""


class AttachError(IpftraceError):
    """No probe of any backend could be attached (exit code 3)."""
