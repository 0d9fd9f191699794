"""The ``otel-batchmon`` command.

Exit codes: 0 success; 1 metrics could not be exported; 2 bad
configuration or usage; 3 the database could not be read; 4 ``stuck
resolve`` left the batch unchanged (no longer stuck); 130 interrupted.
Errors are one line on stderr; ``--debug`` adds tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from otel_batchmon._cli_stuck import add_stuck_commands, list_stuck, resolve
from otel_batchmon._engine import mask_text
from otel_batchmon.config import MonitorConfig, load_config, parse_config
from otel_batchmon.errors import ConfigError, ExportError, StoreError
from otel_batchmon.health import HealthServer
from otel_batchmon.monitor import BatchMonitor
from otel_batchmon.refresher import RefreshOutcome
from otel_batchmon.telemetry import Telemetry, build_telemetry
from otel_batchmon.version import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_EXPORT = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3
EXIT_INTERRUPTED = 130

_log = logging.getLogger("otel_batchmon")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    args = _parser().parse_args(argv)
    if not args.debug:
        # gRPC's C core logs every failed TLS handshake or connection on
        # its own; the monitor reports failed exports itself, once.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    _configure_logging(args.debug)
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, str(exc), args.debug)
    except StoreError as exc:
        return _fail(EXIT_DATABASE, str(exc), args.debug)
    except ExportError as exc:
        return _fail(EXIT_EXPORT, str(exc), args.debug)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) went away: nothing left to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _fail(code: int, message: str, debug: bool) -> int:
    if debug:
        _log.exception("otel-batchmon failed")
    print(f"otel-batchmon: error: {mask_text(message)}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-batchmon",
        description="Report batch jobs kept in a SQL table as "
        "OpenTelemetry metrics.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="TOML settings file (default: $OTEL_BATCHMON_CONFIG)",
    )
    common.add_argument(
        "--debug", action="store_true", help="log details and tracebacks"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", parents=[common], help="refresh and export until stopped"
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="refresh once, export once, print a summary and exit",
    )
    run.set_defaults(handler=_run)
    demo = commands.add_parser(
        "demo", parents=[common], help="monitor a generated SQLite table"
    )
    demo.add_argument(
        "--database",
        metavar="PATH",
        default="batchmon-demo.db",
        help="SQLite file to create (default: %(default)s)",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep refreshing and exporting until interrupted",
    )
    demo.set_defaults(handler=_demo)
    init = commands.add_parser(
        "init-db", parents=[common], help="create the default batch table"
    )
    init.set_defaults(handler=_init_db)
    check = commands.add_parser(
        "check",
        parents=[common],
        help="validate settings, mapping, status values and indexes",
    )
    check.set_defaults(handler=_check)
    add_stuck_commands(commands, common, _stuck)
    return parser


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not debug:
        # The monitor says itself when an export failed, in one line.
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    logging.getLogger("otel_batchmon").setLevel(
        logging.DEBUG if debug else logging.INFO
    )


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.once:
        telemetry = build_telemetry("otlp", periodic=False)
        return _once(config, telemetry, sys.stdout)
    return _serve(config, build_telemetry("otlp"))


def _once(config: MonitorConfig, telemetry: Telemetry, out: TextIO) -> int:
    # A failed refresh is reported once, in the error line below.
    logging.getLogger("otel_batchmon.refresher").setLevel(logging.ERROR)
    monitor = BatchMonitor(config, telemetry.provider)
    export_failure: ExportError | None = None
    try:
        outcomes = monitor.refresh_now()
        try:
            _flush(telemetry, config)
        except ExportError as exc:
            export_failure = exc
    finally:
        monitor.stop()
        telemetry.shutdown()
    _print_summary(outcomes, out)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        # Both failures in the one line: fixing only the first would hide
        # the second until the next run.
        also = f"; also {export_failure}" if export_failure else ""
        raise StoreError(_refresh_failure_line(failed) + also)
    if export_failure is not None:
        raise export_failure
    return EXIT_OK


def _flush(telemetry: Telemetry, config: MonitorConfig) -> None:
    if telemetry.provider is None:
        return
    telemetry.provider.force_flush()
    if telemetry.failed_exports():
        raise ExportError(
            "could not export metrics to "
            + " and ".join(telemetry.targets)
            + "; check that a collector listens there and speaks that "
            "protocol (OTEL_EXPORTER_OTLP_PROTOCOL)"
        )


def _refresh_failure_line(failed: list[RefreshOutcome]) -> str:
    parts = []
    for outcome in failed:
        assert outcome.failure is not None
        parts.append(
            f"store {outcome.store}: refresh failed "
            f"({outcome.failure.error_type}): {outcome.failure.message}"
        )
    return "; ".join(parts)


def _print_summary(outcomes: list[RefreshOutcome], out: TextIO) -> None:
    for outcome in outcomes:
        if outcome.snapshot is not None:
            print("\n".join(outcome.snapshot.summary_lines()), file=out)


def _serve(config: MonitorConfig, telemetry: Telemetry) -> int:
    if config.leader_election is None:
        # A long-running monitor is often one of several replicas.
        config = dataclasses.replace(config, leader_election=True)
    monitor = BatchMonitor(config, telemetry.provider)
    failures = monitor.refresher.check_mapping()
    # A wrong mapping will not fix itself; an unreachable database might,
    # so the monitor starts and retries (reporting refresh errors).
    problems = [
        p
        for e in failures.values()
        if isinstance(e, ConfigError)
        for p in e.problems
    ]
    if problems:
        raise StoreError("; ".join(problems))
    stop = threading.Event()
    _on_signals(stop)
    health = _health_server(monitor, config)
    monitor.start()
    _log.info(
        "monitoring %s; exporting to %s",
        ", ".join(s.qualified_table for s in config.stores),
        " and ".join(telemetry.targets) or "nowhere (exporter none)",
    )
    try:
        stop.wait()
    finally:
        if health is not None:
            health.stop()
        # One budget for the whole shutdown, not one per step.
        deadline = time.monotonic() + config.shutdown_timeout_seconds
        monitor.stop(config.shutdown_timeout_seconds)
        _shutdown_within(telemetry, max(0.0, deadline - time.monotonic()))
    return EXIT_OK


def _health_server(
    monitor: BatchMonitor, config: MonitorConfig
) -> HealthServer | None:
    # Bound before the monitor starts, so a taken port fails fast (exit 2).
    if config.health_address is None:
        return None
    server = HealthServer(monitor, config.health_address)
    server.start()
    return server


def _on_signals(stop: threading.Event) -> None:
    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _shutdown_within(telemetry: Telemetry, seconds: float) -> None:
    # A collector that never answers must not hold the process past the
    # shutdown timeout: flush in a daemon thread and stop waiting for it.
    worker = threading.Thread(target=telemetry.shutdown, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        _log.warning("shutdown timed out after %gs; exiting", seconds)


def _demo(args: argparse.Namespace) -> int:
    from otel_batchmon.tables import create_demo_database

    path = Path(args.database)
    url = create_demo_database(path)
    config = parse_config(
        {
            "database_url": url,
            "table": "batches",
            "name": "demo",
            "refresh_interval": "5s",
        }
    )
    print(f"demo database: {path} (300+ batches over the last 48 hours)")
    default = "otlp" if _otlp_endpoint_set() else "summary"
    if args.keep_running:
        return _serve(config, build_telemetry(default))
    return _once(config, build_telemetry(default, periodic=False), sys.stdout)


def _otlp_endpoint_set() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


def _init_db(args: argparse.Namespace) -> int:
    from otel_batchmon.tables import create_tables

    config = load_config(args.config)
    for line in create_tables(config):
        print(line)
    return EXIT_OK


def _stuck(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.stuck_command == "list":
        return list_stuck(config, args.json, sys.stdout)
    return resolve(config, args, sys.stdout)


def _check(args: argparse.Namespace) -> int:
    from otel_batchmon.inspection import check_stores

    config = load_config(args.config)
    # Settings problems were raised above (exit 2); what check finds is in
    # the database: a missing table or column, or no connection (exit 3,
    # as `run` reports the same).
    quiet = logging.getLogger("otel_batchmon.status")
    quiet.setLevel(logging.ERROR)  # check lists unmapped values itself
    return EXIT_OK if check_stores(config, sys.stdout) else EXIT_DATABASE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
