"""What every long-running CityStream process shares: logging, signals, metrics."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
from collections.abc import Callable, Sequence

from citystream.metrics import MetricsServer, Registry, serve
from citystream.settings import Settings


def add_worker_arguments(parser: argparse.ArgumentParser, *, progress: bool = False) -> None:
    """``--metrics-port`` and ``--log-level`` (and ``--progress-interval``), shared by every
    worker command."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus text on PORT/metrics (default: settings metrics_port; 0: off)",
    )
    if progress:
        parser.add_argument(
            "--progress-interval",
            type=float,
            default=10.0,
            metavar="S",
            help="seconds between progress log lines, 0 for none (default: %(default)s)",
        )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: %(default)s",
    )


def metrics_port(args: argparse.Namespace, settings: Settings) -> int:
    """The port ``--metrics-port`` asks for, else the settings' (0: off)."""
    port: int | None = args.metrics_port
    return settings.metrics_port if port is None else port


def setup_logging(level: str = "INFO") -> None:
    """Timestamped log lines on stderr (once per process), ``citystream*`` at ``level``."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    # Client libraries narrate every connection at INFO; keep their warnings and errors.
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


#: Allocations (net) between young-generation collections; CPython's default is 700.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cyclic garbage rarely, and never scan what start-up built again.

    Stream workers allocate thousands of short-lived objects per record batch (decoded
    messages, row tuples) while holding large long-lived state (per-meter detectors, dedup
    keys, tracks).  With CPython's default thresholds every 700 allocations start a
    collection and the older generations are rescanned often: measured on the energy
    aggregator's decode + window + detector path, 33% of its CPU went to the collector; with
    these settings 2.4%.  Memory is unaffected except for cycles, which live a little longer.
    """
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def run_until_signalled(
    name: str,
    run: Callable[[], int | None],
    stop: Callable[[], None],
    registries: tuple[Registry, ...] = (),
    metrics_port: int = 0,
) -> int:
    """Run ``run()`` (blocking) until it returns its exit code (None: 0); SIGTERM/SIGINT
    call ``stop()`` for a graceful end.  With ``metrics_port`` > 0, ``/metrics`` serves
    ``registries``."""
    logger = logging.getLogger(f"citystream.{name}")
    tune_gc()
    server: MetricsServer | None = None
    if metrics_port > 0:
        server = serve(*registries, port=metrics_port, host="127.0.0.1")
        logger.info("metrics on http://127.0.0.1:%d/metrics", server.port)

    def on_signal(signum: int, frame: object) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run() or 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if server is not None:
            server.close()


def standalone_main(
    prog: str,
    description: str,
    examples: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, Settings], int],
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m <module>`` entry of a plugin command (same options as under ``citystream``)."""
    from citystream.settings import load_settings

    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), load_settings())
