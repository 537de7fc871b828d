"""``citystream bridge`` / ``python -m edge.bridge``: run the MQTT -> Kafka bridge.

This module imports nothing heavy, so building the ``citystream`` parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from citystream.settings import MqttSettings, Settings, load_settings
from citystream.worker import add_worker_arguments, run_until_signalled, setup_logging

EXAMPLES = """examples:
  citystream bridge
  citystream bridge --metrics-port 9108 --progress-interval 5
  CITYSTREAM_MQTT__PORT=1883 CITYSTREAM_KAFKA__BOOTSTRAP_SERVERS=k1:9092 citystream bridge
  citystream bridge --client-id bridge-b   # a second instance with its own session
  citystream bridge --stall-timeout 10     # replace a producer that hangs after 10 s
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bridge's options, added to ``parser`` (endpoints come from the settings)."""
    parser.add_argument(
        "--client-id",
        default=None,
        help="MQTT client id, names the persistent session (default: settings "
        "mqtt.bridge_client_id)",
    )
    parser.add_argument(
        "--receive-maximum",
        type=int,
        default=1000,
        metavar="N",
        help="un-acked MQTT messages in flight to the bridge (default: %(default)s)",
    )
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=5,
        metavar="MS",
        help="Kafka producer linger for batching (default: %(default)s)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="replace the Kafka producer when records are outstanding and none was "
        "acknowledged for S seconds, 0 = never (default: %(default)s)",
    )
    add_worker_arguments(parser, progress=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully.  Returns the exit code."""
    from edge.bridge.app import BridgeConfig, create_bridge

    setup_logging(args.log_level)
    if args.client_id:
        mqtt = MqttSettings.model_validate(
            {**settings.mqtt.model_dump(), "bridge_client_id": args.client_id}
        )
        settings = settings.model_copy(update={"mqtt": mqtt})
    config = BridgeConfig(
        receive_maximum=args.receive_maximum,
        linger_ms=args.linger_ms,
        progress_interval_s=args.progress_interval,
        stall_timeout_s=args.stall_timeout,
    )
    bridge = create_bridge(settings, config, metrics_port=args.metrics_port)

    # the bridge serves its own /metrics (it starts the server once connected)
    return run_until_signalled("bridge", bridge.run, bridge.stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.bridge",
        description="MQTT -> Kafka bridge: subscribes to the registry's MQTT routes at QoS 1 "
        "and acknowledges a message to the broker only after Kafka acknowledged its records.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, load_settings())


if __name__ == "__main__":
    sys.exit(main())
