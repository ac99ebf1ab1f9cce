"""Command lines: `ipftrace` (the seed-compatible tracer) and `ipftrace-exporter` (the daemon).
Argument parsing and wiring only; errors become one line on stderr and an exit code here and nowhere else."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import AttachError, IpftraceError, KernelError, UsageError
from .flows import (
    FlowSpec,
    parse_filter,
    parse_ifname,
    parse_ipversion,
    parse_l4proto,
    parse_netns,
    parse_network,
    parse_port,
)
from .fsutil import write_file_atomic
from .kernel.view import KernelView
from .lossreport import KernelCounts, LossReport
from .output import PathFormatter, TextStyle, device_text, use_colour
from .paths import OUTCOME_TRUNCATED, SkbPath
from .plan import function_specs
from .probes import BACKENDS
from .program import ProgramOptions
from .progress import ProgressLine, run_interruptibly
from .survey import survey_lines, take_survey
from .tracer import Tracer, TraceRequest

EXIT_OK, EXIT_USAGE, EXIT_ATTACH, EXIT_INTERRUPTED = 0, 2, 3, 130
log = logging.getLogger("ipftrace_exporter")


class StopSignal:
    """Remembers the first SIGINT/SIGTERM; main loops poll it, so a signal never interrupts a half-done step
    (records read but not yet assembled, probes half attached)."""

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_stop = on_stop

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            if self._on_stop is not None:
                self._on_stop()

    @property
    def stopped(self) -> bool:
        return self.signum is not None


def install_stop_handlers(on_stop: Callable[[], None] | None = None) -> StopSignal:
    """SIGINT and SIGTERM set the returned flag (and call on_stop once)."""
    stop = StopSignal(on_stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return stop


def setup_logging(level: str, prog: str) -> None:
    """One-line log records on stderr."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"{prog}: %(levelname)s: %(message)s")


def write_ready_file(path: Path | None) -> None:
    """Write the ready file once probes are attached: atomically, never through a symlink (fsutil)."""
    if path is not None:
        write_file_atomic(path, b"ready\n")


def check_ready_file(path: Path | None) -> None:
    """Before anything is compiled: the ready file's directory exists and is writable, and it is no directory."""
    if path is None:
        return
    import os

    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"--ready-file {str(path)!r}: is a directory")
    if not directory.is_dir():
        raise UsageError(f"--ready-file {str(path)!r}: directory {str(directory)!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--ready-file {str(path)!r}: directory {str(directory)!r} is not writable")


def remove_ready_file(path: Path | None) -> None:
    """At exit: the ready file says probes are attached, so it goes when they do."""
    if path is not None:
        path.unlink(missing_ok=True)


def one_line(text: str) -> str:
    """The message with unprintable characters (line breaks included) escaped, so it stays one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def exit_code_for(err: Exception) -> int:
    """2 for bad usage, config or input files; 3 when the kernel side could not be set up."""
    if isinstance(err, (click.ClickException, UsageError, OSError, ValueError)):
        return EXIT_USAGE
    return EXIT_ATTACH


def run_command(prog: str, command: click.Command, args: Sequence[str] | None) -> int:
    """Run a click command; usage errors and our own errors become one line on stderr and an exit code."""
    try:
        result = command.main(args=list(args) if args is not None else None, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED
    except (click.ClickException, IpftraceError, OSError, ValueError) as err:
        message = err.format_message() if isinstance(err, click.ClickException) else str(err)
        click.echo(f"{prog}: error: {one_line(message)}", err=True)
        return exit_code_for(err)
    return int(result or 0)


# ---- ipftrace -------------------------------------------------------------------------------------

FLAG_NAMES = ("--l4proto", "--saddr4", "--daddr4", "--saddr6", "--daddr6", "--sport", "--dport", "--ifname",
              "--netns")


def _flow_from_flags(ipversion: str, l4proto: str, saddr4: str | None, daddr4: str | None, saddr6: str | None,
                     daddr6: str | None, sport: str | None, dport: str | None,
                     pcap_filter: str | None = None, ifname: str | None = None, netns: str | None = None) -> FlowSpec:
    values = (l4proto, saddr4, daddr4, saddr6, daddr6, sport, dport, ifname, netns)
    for name, value in zip(FLAG_NAMES, values, strict=True):
        if value is not None and not value.strip():
            raise UsageError(f"{name} is empty: give a value, or leave the option out")
    if saddr4 and saddr6:
        raise UsageError("give either --saddr4 or --saddr6, not both")
    if daddr4 and daddr6:
        raise UsageError("give either --daddr4 or --daddr6, not both")
    saddr = parse_network(saddr4, "--saddr4", 4) or parse_network(saddr6, "--saddr6", 6)
    daddr = parse_network(daddr4, "--daddr4", 4) or parse_network(daddr6, "--daddr6", 6)
    return FlowSpec(
        name="default",
        ipversion=parse_ipversion(ipversion),
        l4proto=parse_l4proto(l4proto),
        saddr=saddr,
        daddr=daddr,
        sport=parse_port(sport, "--sport"),
        dport=parse_port(dport, "--dport"),
        pcap=parse_filter(pcap_filter, "pcap filter"),
        ifname=parse_ifname(ifname, "--ifname"),
        netns=parse_netns(netns, "--netns"),
    )


class _FilterCommand(click.Command):
    """A command whose words after the first `--` are one pcap-filter expression (joined by spaces, as tcpdump
    joins its arguments)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["pcap_filter"] = " ".join(args[at + 1:])
            args = args[:at]
        return super().parse_args(ctx, args)


FILTER_EPILOG = """\b
A pcap-filter expression after `--` (as tcpdump takes it) is ANDed with the flags, e.g.
  ipftrace -b tracepoint -- 'tcp and dst port 443'
It sees each packet from its IP header: link-layer words (ether, vlan, arp) do not apply.
--dport / --sport without --l4proto match any protocol with ports (TCP, UDP, SCTP, UDP-Lite), like tcpdump's port."""


@click.command(cls=_FilterCommand, context_settings={"help_option_names": ["-h", "--help"]}, epilog=FILTER_EPILOG)
@click.version_option(__version__, "--version", prog_name="ipftrace", message="%(prog)s %(version)s")
@click.option("-iv", "--ipversion", type=click.Choice(["any", "4", "6"]), default="any", show_default=True,
              help="Specify IP version")
@click.option("-l4", "--l4proto", default="any", show_default=True, help="Specify L4 protocol (name or number)")
@click.option("-s4", "--saddr4", help="Specify IPv4 source address or CIDR")
@click.option("-d4", "--daddr4", help="Specify IPv4 destination address or CIDR")
@click.option("-s6", "--saddr6", help="Specify IPv6 source address or CIDR")
@click.option("-d6", "--daddr6", help="Specify IPv6 destination address or CIDR")
@click.option("-sp", "--sport", help="Specify source port number")
@click.option("-dp", "--dport", help="Specify destination port number")
@click.option("--ifname", metavar="NAME", help="Only packets first seen on this device")
@click.option("--netns", metavar="PATH|INODE|PID",
              help="Only packets first seen on a device of this network namespace")
@click.option("-m", "--module", "modules", multiple=True, help="Specify custom match module name (repeatable)")
@click.option("--module-dir", "module_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of module files: -m NAME loads NAME.py from it (repeatable; root-owned only)")
@click.option("-l", "--list", "list_only", is_flag=True, help="List available functions")
@click.option("--print-program", is_flag=True,
              help="Print the BPF program (C) these options would load, and exit without loading it")
@click.option("--all", "show_all", is_flag=True, help="With --list: also the probes no backend can attach here")
@click.option("-b", "--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Probe backend")
@click.option("-n", "--count", type=click.IntRange(min=1), help="Exit after N paths")
@click.option("-t", "--timeout", type=click.FloatRange(min=0), help="Exit after SECONDS")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True,
              help="Output format (yaml: only with --list, writes a manifest)")
@click.option("-v", "--verbose", is_flag=True, help="Text rows: also the packet length and the device")
@click.option("--time", "clock", type=click.Choice(["kernel", "wall"]), default="kernel", show_default=True,
              help="Text rows: kernel monotonic nanoseconds, or wall-clock time of day")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write this file once probes are attached")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.argument("manifest_file", required=False, type=click.Path(dir_okay=False))
def ipftrace_cli(ipversion: str, l4proto: str, saddr4: str | None, daddr4: str | None, saddr6: str | None,
                 daddr6: str | None, sport: str | None, dport: str | None, ifname: str | None, netns: str | None,
                 modules: tuple[str, ...], module_dirs: tuple[Path, ...],
                 list_only: bool, print_program: bool, show_all: bool, backend: str, count: int | None, timeout: float | None, output: str,
                 verbose: bool, clock: str, ready_file: Path | None, log_level: str,
                 manifest_file: str | None) -> int:
    """Function tracer for Linux networking code with flow based filtering."""
    setup_logging(log_level, "ipftrace")
    pcap_filter = click.get_current_context().meta.get("pcap_filter")
    flow = _flow_from_flags(ipversion, l4proto, saddr4, daddr4, saddr6, daddr6, sport, dport, pcap_filter, ifname,
                            netns)
    check_ready_file(ready_file)
    if output == "yaml" and not list_only:
        raise UsageError("--output yaml writes a manifest and needs --list")
    if print_program and list_only:
        raise UsageError("give either --print-program or --list, not both")
    if manifest_file is not None and not _is_file(manifest_file):
        raise UsageError(f"manifest {manifest_file!r}: file not found")
    from .modules import ModuleContext, load_modules

    if not (list_only and output == "yaml"):  # a manifest from BTF needs no privileges; the rest does
        require_privileges()
    view = KernelView()
    if manifest_file is not None and not list_only:
        function_specs(view, manifest_file)  # one warning per function this kernel lacks, before the compile
    # -v names each row's device: the netdev module reads it in the kernel (an ifindex alone is ambiguous across
    # namespaces); added for that column only, unless asked for with -m.
    auto_netdev = verbose and not list_only and not any(spec.split("=", 1)[0] == "netdev" for spec in modules)
    specs = [*modules, "netdev"] if auto_netdev else list(modules)
    loaded = load_modules(specs, ModuleContext(btf=lambda: view.btf), module_dirs) if specs else []
    request = TraceRequest(flows=(flow,), backend=backend, manifest=manifest_file,
                           options=ProgramOptions(), modules=tuple(m.code for m in loaded))
    if list_only:
        return list_probes(request, output, view, show_all)
    if print_program:
        return echo_program(Tracer(request, view))
    style = _text_style(verbose, clock, next((m for m in loaded if m.name == "netdev"), None))
    return trace(request, output, count, timeout, ready_file, loaded, view, style,
                 loaded[:-1] if auto_netdev else None)


def require_privileges() -> None:
    """Before anything is compiled: raise KernelError naming what this process lacks to load BPF programs."""
    from .kernel.privileges import missing_privileges

    missing = missing_privileges()
    if missing is not None:
        raise KernelError(missing)


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # e.g. an embedded NUL byte
        return False


def list_probes(request: TraceRequest, output: str, view: KernelView | None = None, show_all: bool = False) -> int:
    """Print what would be traced on this kernel: per function its skb position and, per backend, whether it can
    attach here (checked by compiling and loading through the verifier). `-o yaml`: a manifest for this kernel."""
    from . import manifest as manifests

    view = view or KernelView()
    if output == "yaml":
        specs, _ = function_specs(view, request.manifest)
        click.echo(manifests.dump_manifest(specs, comment=f"ipftrace manifest for Linux {_kernel_release()}"),
                   nl=False)
        return EXIT_OK
    tracer = Tracer(request, view)
    stop = install_stop_handlers()
    survey = run_interruptibly(lambda: take_survey(tracer, with_functions=request.backend != "tracepoint"),
                               lambda: stop.stopped,
                               lambda elapsed: f"ipftrace: compiling every probe and loading it through the "
                                               f"verifier... {elapsed:.1f} s", ProgressLine())
    for line in survey_lines(survey, request.backend, output, show_all):
        click.echo(line)
    return EXIT_OK


def echo_program(tracer: Tracer) -> int:
    """Print the C of the program the tracer would load first (`--print-program`): planned and rendered, neither
    compiled nor loaded. Which backend and why goes to the log."""
    plan, program = tracer.first_program()
    reasons = "; ".join(f"{name}: {why}" for name, why in tracer.fallback_reasons.items())
    log.info("the program of backend %s (%s requested%s): %d probes, %d entry points, not loaded", plan.backend,
             tracer.request.backend, f"; not used: {reasons}" if reasons else "", len(plan.sources),
             len(program.entries()))
    click.echo(program.text, nl=False)
    return EXIT_OK


def _kernel_release() -> str:
    import platform

    return platform.release()


def _text_style(verbose: bool, clock: str, netdev: Any = None) -> TextStyle:
    """The text table of the command line: Δ always; -v (device names from the netdev module), --time wall,
    colour on a terminal without NO_COLOR."""
    offset = None
    if clock == "wall":
        from .spans import WallClock

        offset = WallClock().offset_ns
    style = TextStyle(delta=True, verbose=verbose, wall_offset_ns=offset, colour=use_colour(sys.stdout))
    if netdev is None:
        return style

    def device(event: Any) -> str:
        fields = netdev.fields(event.data)
        return str(fields["name"]) if fields else device_text(event)

    return replace(style, device=device)


def trace(request: TraceRequest, output: str, count: int | None, timeout: float | None,
          ready_file: Path | None, loaded_modules: Sequence[Any] = (), view: KernelView | None = None,
          style: TextStyle | None = None, text_modules: Sequence[Any] | None = None) -> int:
    """Attach, print paths as they complete, detach. Exit 0 when done, 130 after Ctrl-C."""
    stop = install_stop_handlers()
    tracer = Tracer(request, view)
    printed = 0
    try:
        try:
            started = time.monotonic()
            report = run_interruptibly(tracer.start, lambda: stop.stopped, _start_progress(tracer), ProgressLine(),
                                       on_interrupt=lambda: remove_ready_file(ready_file))
            _progress_done(f"{len(report.attached)} probes ready in {time.monotonic() - started:.1f} s; "
                           "tracing, Ctrl-C to stop")
        except AttachError:
            _blame_modules(tracer, loaded_modules)  # a module whose C does not compile: say which
            raise
        text = _module_text(loaded_modules if text_modules is None else text_modules)
        formatter = PathFormatter(tracer.names, text, data_fields=_module_fields(loaded_modules), style=style)
        losses = LossReport(lambda: KernelCounts.read(tracer.collector.counters()))
        write_ready_file(ready_file)
        deadline = None if timeout is None else time.monotonic() + timeout
        out = sys.stdout
        truncated = others = 0

        def emit(paths: Iterable[SkbPath]) -> None:
            nonlocal printed, truncated, others
            for path in paths:
                out.write(formatter.format(path, "json" if output == "json" else "text"))
                printed += 1
                truncated += path.packet_outcome == OUTCOME_TRUNCATED
                others += not path.starts_packet
                if count is not None and printed >= count:
                    break
            out.flush()

        while (count is None or printed < count) and not stop.stopped:
            wait_ms = 100
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait_ms = max(1, min(wait_ms, int(remaining * 1000)))
            emit(tracer.poll(wait_ms))
            warning = losses.check()
            if warning:
                log.warning(warning)
        if count is None or printed < count:
            emit(tracer.flush())  # paths in flight at Ctrl-C or -t: as they stand (still open ones as timeout)
        log.info(losses.summary(printed, truncated, others))
    finally:
        tracer.close()
        remove_ready_file(ready_file)
    return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else EXIT_OK


def _start_progress(tracer: Tracer) -> Callable[[float], str]:
    """What the progress line says while the tracer compiles and attaches: the backend being tried (the tracer
    tries them in order and records each refusal) and the time so far."""
    candidates = tracer.candidates()

    def describe(elapsed: float) -> str:
        current = min(len(tracer.fallback_reasons), len(candidates) - 1)
        tried = f", {current + 1} of {len(candidates)}" if len(candidates) > 1 else ""
        return f"ipftrace: compiling and attaching probes (backend {candidates[current]}{tried})... {elapsed:.1f} s"

    return describe


def _progress_done(text: str) -> None:
    """The last word of the progress line, on a terminal only (scripts read the log line instead)."""
    if ProgressLine().enabled:
        click.echo(f"ipftrace: {text}", err=True)


def _blame_modules(tracer: Tracer, loaded_modules: Sequence[Any]) -> None:
    """After a failed start: raise ModuleError naming the module whose C does not compile, if one does not."""
    if loaded_modules:
        from .modules import check_modules

        check_modules(loaded_modules, tracer.headers())


def _module_fields(loaded_modules: Sequence[Any]) -> Callable[[Any], Any] | None:
    """JSON's per-event `modules`: every loaded module (also one -v added for the device column)."""
    text = _module_text(loaded_modules)
    return getattr(text, "fields", None)


def _module_text(loaded_modules: Sequence[Any]) -> Callable[[Any], str] | None:
    if not loaded_modules:
        return None
    from .modules import data_text

    return data_text(loaded_modules)


def ipftrace_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of `ipftrace`."""
    sys.exit(run_command("ipftrace", ipftrace_cli, argv))


# ---- ipftrace-exporter ----------------------------------------------------------------------------

@click.command(context_settings={"help_option_names": ["--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML config (default: the embedded default)")
@click.option("--check", is_flag=True, help="Validate, compile and print the plan, then exit")
@click.option("--print-program", is_flag=True,
              help="Print the BPF program (C) the config would load, and exit without loading it")
@click.option("--metrics-address", metavar="HOST:PORT", help="Override metrics.address")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write this file once probes are attached")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="info", show_default=True)
@click.option("--module-dir", "module_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of module files: `modules: [NAME]` loads NAME.py from it (repeatable; root-owned only)")
@click.option("--web.config.file", "web_config_file", type=click.Path(dir_okay=False),
              help="TLS and basic auth for /metrics (Prometheus exporter-toolkit format, as node_exporter)")
def exporter_cli(config_file: str | None, check: bool, print_program: bool, metrics_address: str | None, ready_file: Path | None,
                 log_level: str, module_dirs: tuple[Path, ...], web_config_file: str | None) -> int:
    """Trace packets through the kernel; export paths as OTLP traces and per-function counts on /metrics."""
    from .config import apply_overrides, default_config, load_config
    from .daemon import Daemon, config_tracer
    from .daemon import check as check_config

    setup_logging(log_level, "ipftrace-exporter")
    config = load_config(config_file) if config_file else default_config()
    config = apply_overrides(config, metrics_address=metrics_address)
    web = None
    if web_config_file:
        from .webconfig import load_web_config

        web = load_web_config(web_config_file)
    check_ready_file(ready_file)
    if check and print_program:
        raise UsageError("give either --check or --print-program, not both")
    require_privileges()
    if print_program:
        return echo_program(config_tracer(config, module_dirs=module_dirs))
    if check:
        for line in check_config(config, module_dirs=module_dirs):
            click.echo(line)
        if web is not None:
            click.echo(web.describe())
        return EXIT_OK
    daemon = Daemon(config, ready_file=ready_file, module_dirs=module_dirs, web=web)
    stop = install_stop_handlers(daemon.stop)
    daemon.run()
    log.info("stopped by %s", signal.Signals(stop.signum).name if stop.signum else "request")
    return EXIT_OK


def exporter_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of `ipftrace-exporter`."""
    sys.exit(run_command("ipftrace-exporter", exporter_cli, argv))
