"""Regenerate the shipped captures deterministically: ``python tests/captures/regenerate.py``
(``--only NAME`` for one; ``--check`` regenerates into a temporary directory and compares the
records and truth with the shipped files).

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

``intersection_60s.cap``: one minute of the simulated junction's south camera
(``citystream sim intersection``, SUMO + the virtual camera) as the pipeline receives it:
``camera.frames`` (JPEG frames, 640x360 — the size the shipped detector is trained at — 5 fps,
JPEG quality 60, keyed by camera) and ``signal.phases`` (keyed by intersection), Kafka
timestamp = event time.  Intersection ``int-cap60``, camera ``int-cap60-cam-s``, weekday
morning from 2026-01-05 07:00 (Ho Chi Minh City), four times the default violator rates,
seed 57 (chosen for four true violations on the watched south arm, one each of red light,
illegal stop, bus lane and wrong way, all between 13 s and 40 s, so a pipeline sees each
vehicle before and after; no seed up to 119 also has a speeder inside the camera's speed
section in that span: the speeding rule is exercised by the unit and stage tests).  90 simulated
seconds of traffic run first (``--warmup``), so the junction is busy from the first frame on.

``intersection_60s.truth.jsonl``: the simulator's ground truth (see
``simulators.intersection.truth``): ``meta`` (with the camera's calibration: register it in
``cameras`` before replaying), one ``frame`` per frame (same ``seq``), ``phase`` (the first
frame's signal states, then every change), ``violation``, ``lane_count`` (stop-line
crossings per lane and minute), ``delay``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citystream.capture import read_capture, read_truth, write_capture
from schemas.topics import TOPICS

HERE = Path(__file__).resolve().parent
DAY = datetime(2026, 2, 2, 12, tzinfo=UTC)  # a Monday in Ho Chi Minh City
SEED = 7
N_METERS = 300
TRAFFIC_SEED = 57
#: the simulator command line of ``intersection_60s.cap`` (``--capture FILE`` is appended)
TRAFFIC_ARGS = (
    *("sim", "intersection", "--no-publish", "--no-register"),
    *("--intersection-id", "int-cap60", "--start", "2026-01-05T07:00:00+07:00"),
    *("--warmup", "90", "--duration", "60", "--speed", "0", "--fps", "5"),
    *("--width", "640", "--quality", "60", "--violators", "4", "--seed", str(TRAFFIC_SEED)),
    *("--log-level", "WARNING"),
)


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


def intersection_60s(out: Path) -> dict[str, Any]:
    """``citystream sim intersection`` (:data:`TRAFFIC_ARGS`) in a child process (libsumo runs
    one simulation per process), writing ``out`` and its truth sidecar."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "citystream.cli", *TRAFFIC_ARGS, "--capture", str(out)]
    done = subprocess.run(cmd, cwd=HERE.parents[1], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])} failed ({done.returncode}):\n{done.stderr}")
    records = read_capture(out)
    truth = read_truth(out)
    violations = [t for t in truth if t["kind"] == "violation"]
    if len(violations) < 3:
        raise SystemExit(f"{out.name}: only {len(violations)} true violations, want >= 3")
    return {
        "file": str(out),
        "records": len(records),
        "frames": sum(r.topic == "camera.frames" for r in records),
        "phases": sum(r.topic == "signal.phases" for r in records),
        "violations": len(violations),
        "bytes": out.stat().st_size,
    }


#: capture name -> the function that writes it
CAPTURES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "meters_day": meters_day,
    "intersection_60s": intersection_60s,
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--check", action="store_true", help="regenerate to a temp dir and compare")
    p.add_argument("--only", choices=sorted(CAPTURES), help="just this capture (default: all)")
    args = p.parse_args()
    makers = {k: v for k, v in CAPTURES.items() if args.only in (None, k)}
    if args.check:
        import tempfile

        ok = True
        with tempfile.TemporaryDirectory() as tmp:
            for name, make in makers.items():
                new = Path(tmp) / f"{name}.cap"
                info = make(new)
                shipped = HERE / f"{name}.cap"
                same = read_capture(new) == read_capture(shipped) and read_truth(new) == read_truth(
                    shipped
                )
                ok = ok and same
                print(info, "identical records and truth" if same else "DIFFERENT")
        raise SystemExit(0 if ok else 1)
    for name, make in makers.items():
        print(make(args.out_dir / f"{name}.cap"))


if __name__ == "__main__":
    main()
