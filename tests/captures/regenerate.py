"""Regenerate the shipped captures deterministically: ``python tests/captures/regenerate.py``.

``meters_day.cap``: one simulated day (local calendar day, Asia/Ho_Chi_Minh) of a small city
from ``simulators.meters`` as the ``meter.readings`` topic carries it: one ``MeterBatch``
per gateway upload, keyed by ``gateway_id``, Kafka timestamp = the batch's ``sent_at``.  The
default fault mix is on (outages, stuck meters, spikes, duplicates, late readings, ...).

``meters_day.truth.jsonl`` (one JSON object per line, ``kind`` says which):

* ``meta``: seed, city config, day, counts;
* ``district`` (its own kind as ``district_kind``) / ``feeder`` / ``gateway`` / ``meter``:
  the topology (reference tables);
* ``fault``: every injected fault (``simulators.meters.TruthEvent``);
* ``window``: per feeder and district and 15-minute window (``window_start`` = interval start,
  as ``streams.energy.windows`` assigns them): ``true_net_kwh`` (clean physics, every meter),
  ``reported_net_kwh`` / ``reported_readings`` / ``meters_reporting`` over the distinct
  ``(meter_id, ts)`` readings in the capture (what a pipeline that accepts every reading
  exactly once computes), and ``late_readings`` among them that arrived more than one window
  after their window ended.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citystream.capture import read_capture, write_capture
from schemas.topics import TOPICS

HERE = Path(__file__).resolve().parent
DAY = datetime(2026, 2, 2, 12, tzinfo=UTC)  # a Monday in Ho Chi Minh City
SEED = 7
N_METERS = 300


def meters_day(out: Path, *, n_meters: int = N_METERS, seed: int = SEED) -> dict[str, Any]:
    from simulators.meters import CityConfig, MeterSimulator, build_city, day_range, gateway_batches

    city = build_city(
        CityConfig(
            n_meters=n_meters, n_districts=4, meters_per_feeder=50, meters_per_gateway=25, seed=seed
        )
    )
    sim = MeterSimulator(city, seed=seed)
    start, end = day_range(DAY)
    codec = TOPICS["meter.readings"].codec
    seq: dict[int, int] = {}
    feeder_of = city.feeder_idx
    iv = sim.interval_s
    seen: set[tuple[int, int]] = set()
    # (scope, id, window_start) -> [net, readings, meters set, late]
    reported: dict[tuple[str, str, int], list[Any]] = defaultdict(lambda: [0.0, 0, set(), 0])
    counts = {"records": 0, "readings": 0}

    def scopes(m: int) -> list[tuple[str, str]]:
        f = city.feeders[int(feeder_of[m])]
        return [("feeder", f.feeder_id), ("district", f.district_id)]

    def records() -> Iterator[tuple[str, bytes, bytes, datetime]]:
        for block in sim.run(start, end):
            batches = gateway_batches(block, city.gateway_idx, seq)
            for b in sorted(batches, key=lambda b: (b.sent_at, b.gateway_id)):
                counts["records"] += 1
                counts["readings"] += len(b.readings)
                for r in b.readings:
                    m, ts = city.meter_index(r.meter_id), int(r.ts.timestamp())
                    if (m, ts) in seen:
                        continue
                    seen.add((m, ts))
                    w = (ts - r.interval_s) // iv * iv
                    late = b.sent_at.timestamp() > w + 2 * iv
                    for scope, sid in scopes(m):
                        acc = reported[(scope, sid, w)]
                        acc[0] += r.import_kwh - r.export_kwh
                        acc[1] += 1
                        acc[2].add(m)
                        acc[3] += int(late)
                yield ("meter.readings", b.gateway_id.encode(), codec.encode(b), b.sent_at)

    def truth() -> Iterator[dict[str, Any]]:
        plain = city.to_plain()
        yield {
            "kind": "meta",
            "seed": seed,
            "day": start.isoformat(),
            "end": end.isoformat(),
            "n_meters": city.n_meters,
            "n_gateways": city.n_gateways,
            "n_feeders": len(city.feeders),
            "n_districts": len(city.districts),
            "records": counts["records"],
            "readings": counts["readings"],
            "distinct_readings": len(seen),
            "faults": len(sim.truth),
        }
        for kind in ("district", "feeder", "gateway", "meter"):
            for obj in plain[kind + "s"]:
                row = dict(obj)
                if "kind" in row:  # districts have a kind of their own
                    row[f"{kind}_kind"] = row.pop("kind")
                yield {"kind": kind, **row}
        for ev in sim.truth:
            yield {
                "kind": "fault",
                "fault": str(ev.kind),
                "meter_id": ev.meter_id,
                "start": ev.start,
                "end": ev.end,
                "details": ev.details,
            }
        true: dict[tuple[str, str, int], float] = defaultdict(float)
        t = int(start.timestamp()) + iv
        while t <= int(end.timestamp()):
            imp, exp = sim.true_energy(t)
            net = imp - exp
            for fi, f in enumerate(city.feeders):
                v = float(net[feeder_of == fi].sum())
                true[("feeder", f.feeder_id, t - iv)] += v
                true[("district", f.district_id, t - iv)] += v
            t += iv
        for key in sorted(set(true) | set(reported)):
            scope, sid, w = key
            acc = reported.get(key, [0.0, 0, set(), 0])
            yield {
                "kind": "window",
                "scope": scope,
                "scope_id": sid,
                "window_start": datetime.fromtimestamp(w, UTC),
                "window_s": iv,
                "true_net_kwh": round(true.get(key, 0.0), 3),
                "reported_net_kwh": round(acc[0], 3),
                "reported_readings": acc[1],
                "meters_reporting": len(acc[2]),
                "late_readings": acc[3],
            }

    n = write_capture(
        out,
        records(),
        truth=truth(),
        metadata={
            "simulator": "simulators.meters",
            "seed": seed,
            "n_meters": n_meters,
            "day": start.isoformat(),
            "topic": "meter.readings",
            "regenerate": "python tests/captures/regenerate.py",
            "created_ms": int(start.timestamp() * 1000),  # fixed: byte-identical output
        },
    )
    assert n == counts["records"]
    return {"file": str(out), "records": n, "bytes": out.stat().st_size, **counts}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--check", action="store_true", help="regenerate to a temp dir and compare")
    args = p.parse_args()
    if args.check:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            info = meters_day(Path(tmp) / "meters_day.cap")
            same = read_capture(Path(tmp) / "meters_day.cap") == read_capture(
                HERE / "meters_day.cap"
            )
            print(info, "identical records" if same else "DIFFERENT records")
            raise SystemExit(0 if same else 1)
    print(meters_day(args.out_dir / "meters_day.cap"))


if __name__ == "__main__":
    main()
