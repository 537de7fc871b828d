"""Violation rules: how soon a violation is reported, and what judging open tracks costs.

    citystream traffic evaluate --scenario violators --keep runs/violators
    python bench/rules.py --run runs/violators [--json bench/results/rules.json]

Replays a kept run's track batches (the detector's and tracker's real output) and signal
changes through one camera's :class:`~streams.traffic.camera_state.CameraState`, in one
process, with each frame arriving ``--frame-lead`` seconds before the tracks of its moment
(the vision worker's latency).  The baseline, in the same run, is judging tracks only once
they have ended (``traffic.judge_open=false``, open tracks looked at every 1 s for evidence
frames), as the worker did before; it is compared with judging open tracks on grids of
``--steps`` seconds.

For each configuration: CPU seconds per camera-second of video (the share of a core one
10 fps camera takes), the violations found, and the *report delay*: event time from the
violation's last evidence frame (``frames_each_side`` frames after it) to the batch after
which the worker sends it.  Kafka, the sink and the DB add their own (see ``traffic
evaluate``'s frame-to-row latency).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from citystream.table import format_table  # noqa: E402
from schemas.messages import SignalPhaseChange, TrackBatch  # noqa: E402
from streams.traffic.calibration import Calibration  # noqa: E402
from streams.traffic.camera_state import CameraState, StateConfig  # noqa: E402
from streams.traffic.signals import SignalTimeline  # noqa: E402


def load_run(run: Path) -> tuple[Calibration, SignalTimeline, list[TrackBatch]]:
    records = [json.loads(line) for line in (run / "truth.jsonl").read_text().splitlines()]
    meta = next(r for r in records if r["kind"] == "meta")
    phases = (
        SignalPhaseChange.model_validate({k: v for k, v in r.items() if k != "kind"})
        for r in records
        if r["kind"] == "phase"
    )
    lines = (run / "tracks.jsonl").read_text().splitlines()
    batches = sorted(
        (TrackBatch.model_validate_json(line) for line in lines), key=lambda b: b.captured_at
    )
    return Calibration.from_dict(meta["calibration"]), SignalTimeline.from_changes(phases), batches


def replay(
    cal: Calibration,
    signals: SignalTimeline,
    batches: list[TrackBatch],
    config: StateConfig,
    frame_lead_s: float,
    fps: float,
) -> dict[str, Any]:
    import cv2

    jpeg = bytes(cv2.imencode(".jpg", np.zeros((36, 64, 3), np.uint8))[1])
    times = [b.captured_at.timestamp() for b in batches]
    state = CameraState(cal, config)
    after_s = config.frames_each_side / fps
    delays: list[float] = []
    kinds: Counter[str] = Counter()
    nxt = 0
    cpu0 = time.process_time()
    for b, t in zip(batches, times, strict=True):
        while nxt < len(times) and times[nxt] <= t + frame_lead_s:
            state.add_frame(times[nxt], jpeg)
            nxt += 1
        state.add_batch(b)
        for j in state.expire(signals).judged:
            kinds[str(j.violation.kind)] += 1
            delays.append(max(t - (j.violation.t + after_s), 0.0))
    for j in state.expire(signals, flush=True).judged:  # the end of the run
        kinds[str(j.violation.kind)] += 1
        delays.append(max(times[-1] - (j.violation.t + after_s), 0.0))
    cpu = time.process_time() - cpu0
    video_s = times[-1] - times[0]
    d = np.asarray(delays) if delays else np.asarray([np.nan])
    return {
        "cpu_s": round(cpu, 2),
        "cpu_per_camera": round(cpu / video_s, 4),
        "violations": dict(sorted(kinds.items())),
        "report_delay_p50_s": round(float(np.percentile(d, 50)), 2),
        "report_delay_p99_s": round(float(np.percentile(d, 99)), 2),
        "report_delay_max_s": round(float(np.max(d)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
        "  python bench/rules.py --run runs/violators\n"
        "  python bench/rules.py --run runs/default --steps 0.1 0.2 0.5 --json rules.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="a `traffic evaluate --keep` dir")
    p.add_argument("--steps", type=float, nargs="+", default=[0.2, 0.5], metavar="S")
    p.add_argument("--frame-lead", type=float, default=0.2, metavar="S")
    p.add_argument("--fps", type=float, default=10.0, help="the run's camera fps (10)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "rules.json")
    a = p.parse_args(argv)
    for name in ("truth.jsonl", "tracks.jsonl"):
        if not (a.run / name).exists():
            p.error(f"{a.run / name} not found: run `citystream traffic evaluate --keep DIR`")
    cal, signals, batches = load_run(a.run)
    configs = [("ended tracks only (baseline)", StateConfig(judge_open=False, judge_every_s=1.0))]
    configs += [(f"open tracks every {s:g} s", StateConfig(judge_every_s=s)) for s in a.steps]
    rows, results = [], []
    for name, cfg in configs:
        r = {"config": name, **replay(cal, signals, batches, cfg, a.frame_lead, a.fps)}
        results.append(r)
        found = " ".join(f"{k} {n}" for k, n in r["violations"].items())
        rows.append(
            [
                name,
                r["cpu_per_camera"],
                r["report_delay_p50_s"],
                r["report_delay_p99_s"],
                r["report_delay_max_s"],
                found,
            ]
        )
        print(f"{name}: done in {r['cpu_s']} s CPU", file=sys.stderr)
    headers = ["judging", "CPU per camera", "delay p50 s", "p99 s", "max s", "violations"]
    print(format_table(headers, rows))
    out = {
        "run": str(a.run),
        "batches": len(batches),
        "video_s": round(batches[-1].captured_at.timestamp() - batches[0].captured_at.timestamp()),
        "frame_lead_s": a.frame_lead,
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
