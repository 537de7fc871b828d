"""``citystream sim meters-seed``: write a simulated city's topology to the reference tables."""

from __future__ import annotations

import argparse

from citystream.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meters", type=int, default=3000, help="meters (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="city seed (default: %(default)s)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from simulators.meters.seed import seed_reference
    from simulators.meters.topology import CityConfig, build_city

    city = build_city(CityConfig(n_meters=args.meters, seed=args.seed))
    with psycopg.connect(settings.db.dsn) as conn:
        counts = seed_reference(conn, city)
    print(", ".join(f"{n} {table}" for table, n in counts.items()) + " written")
    return 0
