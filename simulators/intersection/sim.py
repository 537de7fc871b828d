"""The intersection simulator: SUMO (libsumo) traffic, signal program, injected violators.

One :class:`IntersectionSim` per process at a time (libsumo is a process-wide singleton).
Deterministic by ``seed``: SUMO's RNG drives the demand, numpy's (same seed) the injections.

Ground truth is *observed* in the simulation, independent of the camera pipeline:

* ``red_light``: a vehicle entered the junction from the south approach on a red link;
* ``speeding``: SUMO speed above limit + tolerance on the south arm;
* ``illegal_stop``: stationary in the no-stopping zone for longer than its limit;
* ``bus_lane``: a non-bus travelled ``bus_lane_min_m`` on the bus lane;
* ``wrong_way``: a scripted rider went ``wrong_way_min_m`` against the exit lane.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from schemas.messages import SignalPhaseChange, SignalPlan, SignalState, VehicleClass
from simulators.intersection.network import NetworkSpec, build_network
from simulators.intersection.plan import Link, default_plan, group_states, read_links, sumo_phases
from streams.traffic.counts import PCU, QUEUE_SPEED_KMH

TLS = "C"
#: a speeder departs only while the north-south green has this much time left (s): late
#: enough for the red's queue to have cleared, early enough to cross on green (150 m of
#: arm at its speed take about 7 s)
SPEEDER_GREEN_LEFT_S = (12.0, 20.0)
HEIGHT_M = {"motorbike": 1.6, "car": 1.5, "bus": 3.2, "truck": 3.0, "bicycle": 1.6}
# turn: arm -> movement -> exit arm
TURNS = {
    "S": {"through": "N", "right": "E", "left": "W"},
    "N": {"through": "S", "right": "W", "left": "E"},
    "E": {"through": "W", "right": "N", "left": "S"},
    "W": {"through": "E", "right": "S", "left": "N"},
}


@dataclass(frozen=True)
class ViolatorRates:
    """Injected violators per hour (all on the south arm, which the camera watches)."""

    red_light: float = 20.0
    speeding: float = 20.0
    wrong_way: float = 6.0
    illegal_stop: float = 6.0
    bus_lane: float = 10.0


@dataclass(frozen=True)
class ScenarioConfig:
    intersection_id: str = "int-1"
    seed: int = 1
    step_s: float = 0.1
    start: datetime = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # 07:00 in Hanoi
    demand_veh_h: tuple[tuple[str, float], ...] = (("N", 800), ("S", 900), ("E", 400), ("W", 350))
    turn_shares: tuple[float, float, float] = (0.7, 0.15, 0.15)  # through, left, right
    mix: tuple[tuple[str, float], ...] = (
        ("motorbike", 0.70),
        ("car", 0.22),
        ("bus", 0.03),
        ("truck", 0.05),
    )
    ns_green_s: float = 30.0
    ew_green_s: float = 30.0
    amber_s: float = 3.0
    all_red_s: float = 2.0
    network: NetworkSpec = field(default_factory=NetworkSpec)
    violators: ViolatorRates = field(default_factory=ViolatorRates)
    speed_tolerance_kmh: float = 5.0
    # the enforcement section: the south arm from the stop line back this far (m), which the
    # camera sees whole; speeding is labelled (and measured by the rule) only inside it
    speed_zone_m: tuple[float, float] = (0.0, 38.0)
    no_stop_zone_m: tuple[float, float] = (15.0, 40.0)  # along S_out from the junction
    no_stop_max_dwell_s: float = 20.0
    bus_lane_min_m: float = 15.0
    wrong_way_min_m: float = 8.0
    workdir: Path | None = None
    #: arms whose incoming traffic comes from a neighbouring junction of a corridor
    #: (:meth:`IntersectionSim.admit`) instead of this junction's own demand
    fed_arms: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Crossing:
    vehicle_id: str
    vehicle_class: VehicleClass
    lane_id: str  # the approach lane


@dataclass
class StopLineDetector:
    """A loop detector at one approach lane's stop line (PCU): all that crossed, and the
    queue discharge as :class:`~streams.traffic.counts.LaneCounter` measures it from a
    camera (crossings while a vehicle slower than ``QUEUE_SPEED_KMH`` stood in the lane on
    green, and the seconds of that)."""

    signal_groups: tuple[str, ...]
    pcu: float = 0.0
    discharged_pcu: float = 0.0
    discharge_s: float = 0.0


@dataclass(frozen=True)
class VehicleState:
    vehicle_id: str
    track_id: int
    vehicle_class: VehicleClass
    x: float  # front bumper centre, as SUMO reports
    y: float
    angle_deg: float  # SUMO: 0 = north, clockwise
    speed_mps: float
    length_m: float
    width_m: float
    height_m: float
    lane_id: str
    violator: str | None = None

    @property
    def heading(self) -> tuple[float, float]:
        a = np.radians(self.angle_deg)
        return float(np.sin(a)), float(np.cos(a))

    @property
    def center(self) -> tuple[float, float]:
        hx, hy = self.heading
        return self.x - hx * self.length_m / 2, self.y - hy * self.length_m / 2


@dataclass(frozen=True)
class Exit:
    """A vehicle that left the network at the far end of ``arm``'s outgoing edge."""

    vehicle_id: str
    arm: str
    vehicle_class: VehicleClass
    speed_mps: float


@dataclass(frozen=True)
class SimStep:
    sim_time: float
    t: float  # epoch seconds
    vehicles: list[VehicleState]
    signals: dict[str, SignalState]
    phase_changes: list[SignalPhaseChange]
    exits: list[Exit] = field(default_factory=list)
    #: vehicles that left an approach lane over its stop line in this step
    crossings: list[Crossing] = field(default_factory=list)


@dataclass(frozen=True)
class TruthViolation:
    kind: str
    vehicle_id: str
    track_id: int
    vehicle_class: VehicleClass
    t: float
    injected: bool
    details: dict[str, float | str]


def _vtypes(step_s: float) -> str:
    common = 'sigma="0.4" speedFactor="normc(0.9,0.04,0.8,1.0)"'
    return f"""
  <vType id="motorbike" vClass="motorcycle" length="2.0" width="0.8" minGap="1.0"
         accel="3.0" decel="5.0" maxSpeed="16.7" {common}/>
  <vType id="car" vClass="passenger" length="4.5" width="1.8" minGap="2.0" {common}/>
  <vType id="bus" vClass="bus" length="11.0" width="2.5" minGap="2.5" accel="1.2" {common}/>
  <vType id="truck" vClass="truck" length="8.0" width="2.4" minGap="2.5" accel="1.3" {common}/>
  <vType id="motorbike_speeder" vClass="motorcycle" length="2.0" width="0.8" minGap="1.0"
         accel="3.5" decel="5.0" maxSpeed="25" speedFactor="1.5" sigma="0.2"
         lcSpeedGain="10" lcAssertive="5"/>
  <vType id="car_speeder" vClass="passenger" length="4.5" width="1.8" minGap="2.0"
         maxSpeed="30" speedFactor="1.45" sigma="0.2" lcSpeedGain="10" lcAssertive="5"/>
  <vType id="car_runner" vClass="passenger" length="4.5" width="1.8" speedFactor="0.9"
         speedDev="0" sigma="0"/>
  <vType id="motorbike_runner" vClass="motorcycle" length="2.0" width="0.8"
         speedFactor="0.9" speedDev="0" sigma="0"/>
  <vType id="car_buslane" vClass="bus" length="4.5" width="1.8" minGap="2.0" {common}/>
  <vType id="motorbike_buslane" vClass="bus" length="2.0" width="0.8" minGap="1.0" {common}/>
  <vType id="motorbike_wrongway" vClass="motorcycle" length="2.0" width="0.8"/>
"""


class IntersectionSim:
    """Run with ``for step in sim.run(seconds)``; :meth:`apply_plan` switches programs."""

    _active = False

    def __init__(self, config: ScenarioConfig | None = None) -> None:
        self.config = cfg = config or ScenarioConfig()
        self._tmp = None
        if cfg.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="citystream-isim-")
            workdir = Path(self._tmp.name)
        else:
            workdir = cfg.workdir
        self.workdir = workdir
        self.net_file = build_network(cfg.network, workdir)
        self.links: list[Link] = read_links(str(self.net_file))
        self.rng = np.random.default_rng(cfg.seed)
        self.plan = default_plan(
            cfg.intersection_id,
            cfg.start,
            cfg.ns_green_s,
            cfg.ew_green_s,
            cfg.amber_s,
            cfg.all_red_s,
        )
        self.truth: list[TruthViolation] = []
        self.injected: dict[str, str] = {}  # vehicle id -> intended violation
        self.time_loss: dict[str, float] = {}  # arrived vehicle -> time loss (s)
        self.depart: dict[str, float] = {}
        self.arrived: set[str] = set()
        #: approach lane -> its stop-line detector
        groups_of: dict[str, set[str]] = {}
        for k in self.links:
            groups_of.setdefault(k.in_lane, set()).add(k.group)
        self.detectors = {
            lane: StopLineDetector(tuple(sorted(g))) for lane, g in sorted(groups_of.items())
        }
        self._discharging: set[str] = set()  # lanes on green with a queue at the last step
        self._crossings: list[Crossing] = []  # of the step running
        self._track_ids: dict[str, int] = {}
        self._next_track = itertools.count(1)
        self._groups: dict[str, SignalState] = {}
        self._last: dict[str, tuple[str, float, float, float]] = {}  # lane, x, y, speed
        self._classes: dict[str, VehicleClass] = {}  # vehicle id -> class, while in the net
        #: vehicles handed over by a neighbour: their own stream of turn choices, so the
        #: junction's demand and injections stay as they are without them
        self._admit_rng = np.random.default_rng([cfg.seed, 1])
        self.admitted: set[str] = set()
        self._vt: dict[str, tuple[float, float]] = {}
        self._flags: dict[str, dict[str, float]] = {}
        self._wrongway: dict[str, float] = {}  # id -> start y
        self._pending: list[tuple[float, str, dict[str, object]]] = []
        self._speeders: list[tuple[str, str]] = []  # (class, route) waiting for a green
        self._speeder_at = -math.inf  # when the last one left
        self._started = False
        self._runner_planned = False
        self._write_routes()

    # --- setup ---------------------------------------------------------------------------
    def _write_routes(self) -> None:
        cfg = self.config
        lines = ["<routes>", _vtypes(cfg.step_s)]
        lines.append('  <vTypeDistribution id="mix">')
        for name, p in cfg.mix:
            lines.append(
                f'    <vType id="mix_{name}" vClass="{_vclass(name)}" '
                f'probability="{p}" {_type_attrs(name)}/>'
            )
        lines.append("  </vTypeDistribution>")
        for arm, turns in TURNS.items():
            for mv, dest in turns.items():
                lines.append(f'  <route id="{arm}_{mv}" edges="{arm}_in {dest}_out"/>')
        shares = dict(zip(("through", "left", "right"), cfg.turn_shares, strict=True))
        for arm, vph in cfg.demand_veh_h:
            if arm in cfg.fed_arms:
                continue  # a neighbour's exits feed it
            for mv, share in shares.items():
                rate = vph * share / 3600.0
                if rate > 0:
                    lines.append(
                        f'  <flow id="f_{arm}_{mv}" route="{arm}_{mv}" type="mix" begin="0" '
                        f'end="86400" period="exp({rate:.6f})" departLane="best" '
                        f'departSpeed="desired"/>'
                    )
        lines.append("</routes>")
        (self.workdir / "demand.rou.xml").write_text("\n".join(lines))

    def start(self) -> None:
        import libsumo
        import sumo

        if IntersectionSim._active:
            raise RuntimeError("libsumo runs one simulation per process; close() the other")
        cfg = self.config
        binary = str(Path(sumo.SUMO_HOME) / "bin" / "sumo")
        libsumo.start(
            [
                binary,
                "-n",
                str(self.net_file),
                "-r",
                str(self.workdir / "demand.rou.xml"),
                "--step-length",
                str(cfg.step_s),
                "--seed",
                str(cfg.seed),
                "--no-step-log",
                "true",
                "--no-warnings",
                "true",
                "--collision.action",
                "none",
                "--time-to-teleport",
                "300",
                "--default.action-step-length",
                "0.5",
                "--lanechange.duration",
                "1.5",
            ]
        )
        IntersectionSim._active = True
        self._started = True
        libsumo.route.add("S_out_only", ["S_out"])
        self.apply_plan(self.plan)

    def close(self) -> None:
        import libsumo

        if self._started:
            libsumo.close()
            self._started = False
            IntersectionSim._active = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> IntersectionSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- signal plans --------------------------------------------------------------------
    def apply_plan(self, plan: SignalPlan) -> None:
        """Install ``plan`` as a fixed-time SUMO program, starting now at its first phase."""
        import libsumo

        phases = [libsumo.TraCIPhase(d, s) for d, s in sumo_phases(plan, self.links)]
        logic = libsumo.TraCILogic(plan.plan_id, 0, 0, phases)
        libsumo.trafficlight.setProgramLogic(TLS, logic)
        libsumo.trafficlight.setProgram(TLS, plan.plan_id)
        libsumo.trafficlight.setPhase(TLS, 0)
        self.plan = plan

    # --- running -------------------------------------------------------------------------
    @property
    def sim_time(self) -> float:
        import libsumo

        return float(libsumo.simulation.getTime())

    def epoch(self, sim_time: float) -> float:
        return self.config.start.timestamp() + sim_time

    def run(self, seconds: float) -> Iterator[SimStep]:
        if not self._started:
            self.start()
        n = round(seconds / self.config.step_s)
        for _ in range(n):
            yield self.step()

    def warm_up(self, seconds: float) -> None:
        """Run ``seconds`` of traffic that nobody observes (an empty junction fills up).

        The violations observed meanwhile are dropped from :attr:`truth`, and the next step
        reports every signal group's state as a change, as the first step of a run does."""
        for _ in self.run(seconds):
            pass
        self.truth.clear()
        self._groups = {}

    def step(self) -> SimStep:
        import libsumo
        from libsumo import constants as tc

        vars_ = [
            tc.VAR_POSITION,
            tc.VAR_ANGLE,
            tc.VAR_SPEED,
            tc.VAR_LANE_ID,
            tc.VAR_TYPE,
            tc.VAR_TIMELOSS,
        ]
        self._schedule_injections()
        libsumo.simulationStep()
        now = self.sim_time
        for vid in libsumo.simulation.getDepartedIDList():
            libsumo.vehicle.subscribe(vid, vars_)
            self.depart[vid] = now
        exits = [e for vid in libsumo.simulation.getArrivedIDList() if (e := self._finish(vid))]
        self._move_wrongway(now)
        state = libsumo.trafficlight.getRedYellowGreenState(TLS)
        groups = group_states(state, self.links)
        for lane in self._discharging:
            self.detectors[lane].discharge_s += self.config.step_s
        changes = [
            SignalPhaseChange(
                intersection_id=self.config.intersection_id,
                signal_group=g,
                state=s,
                changed_at=self.config.start + timedelta(seconds=now),
                program_id=self.plan.plan_id[:64],
            )
            for g, s in sorted(groups.items())
            if self._groups.get(g) is not s
        ]
        self._groups = groups
        results = libsumo.vehicle.getAllSubscriptionResults()
        vehicles = []
        self._crossings = []
        via_index = self._via_index()
        for vid, r in results.items():
            x, y = r[tc.VAR_POSITION]
            lane = r[tc.VAR_LANE_ID]
            speed = r[tc.VAR_SPEED]
            vtype = r[tc.VAR_TYPE]
            self.time_loss[vid] = r[tc.VAR_TIMELOSS]
            cls_name = vtype.removeprefix("mix_").split("_")[0]
            cls = self._classes[vid] = VehicleClass(cls_name)
            if vtype not in self._vt:
                self._vt[vtype] = (
                    libsumo.vehicletype.getLength(vtype),
                    libsumo.vehicletype.getWidth(vtype),
                )
            length, width = self._vt[vtype]
            tid = self._track_ids.get(vid) or self._track_ids.setdefault(
                vid, next(self._next_track)
            )
            self._observe_truth(vid, tid, cls, lane, x, y, speed, now, state, via_index)
            if vid in self._wrongway:
                speed = 5.0
            vehicles.append(
                VehicleState(
                    vid,
                    tid,
                    cls,
                    x,
                    y,
                    r[tc.VAR_ANGLE],
                    speed,
                    length,
                    width,
                    HEIGHT_M.get(cls_name, 1.5),
                    lane,
                    self.injected.get(vid),
                )
            )
        queued = {v.lane_id for v in vehicles if v.speed_mps * 3.6 < QUEUE_SPEED_KMH}
        self._discharging = {
            lane
            for lane, det in self.detectors.items()
            if lane in queued and any(groups.get(g) is SignalState.green for g in det.signal_groups)
        }
        return SimStep(
            now, self.epoch(now), vehicles, dict(groups), changes, exits, self._crossings
        )

    def _via_index(self) -> dict[str, int]:
        if not hasattr(self, "_via"):
            import libsumo

            self._via = {
                via: i
                for i, links in enumerate(libsumo.trafficlight.getControlledLinks(TLS))
                for _, _, via in links
            }
        return self._via

    def _finish(self, vid: str) -> Exit | None:
        """Forget an arrived vehicle; where it left by an outgoing edge, how."""
        self.arrived.add(vid)
        last = self._last.pop(vid, None)
        cls = self._classes.pop(vid, None)
        self._flags.pop(vid, None)
        if last is None or cls is None or vid in self._wrongway:
            return None
        edge = last[0].rsplit("_", 1)[0]
        if not edge.endswith("_out"):
            return None
        return Exit(vid, edge.removesuffix("_out"), cls, last[3])

    def admit(self, vehicle_id: str, arm: str, cls: VehicleClass, speed_mps: float) -> bool:
        """A vehicle from a neighbouring junction enters by ``arm`` now, on a movement drawn
        from the turn shares.  False when the id is already in use (a repeated handover)."""
        import libsumo

        if arm not in TURNS:
            raise ValueError(f"unknown arm {arm!r}; one of {sorted(TURNS)}")
        if vehicle_id in self.admitted:
            return False
        self.admitted.add(vehicle_id)
        movement = self._admit_rng.choice(["through", "left", "right"], p=self._shares())
        types = {name for name, _ in self.config.mix}
        vtype = f"mix_{cls}" if str(cls) in types else "mix"
        limit = self.config.network.speed_limit_kmh / 3.6
        libsumo.vehicle.add(
            vehicle_id,
            f"{arm}_{movement}",
            typeID=vtype,
            departLane="best",
            departSpeed=f"{min(max(speed_mps, 0.0), limit):.2f}",
        )
        return True

    def _shares(self) -> list[float]:
        shares = np.asarray(self.config.turn_shares, dtype=float)
        return list(shares / shares.sum())

    # --- ground truth --------------------------------------------------------------------
    def _emit(
        self, kind: str, vid: str, tid: int, cls: VehicleClass, now: float, **details: float | str
    ) -> None:
        self.truth.append(
            TruthViolation(
                kind, vid, tid, cls, self.epoch(now), self.injected.get(vid) == kind, details
            )
        )

    def _observe_truth(
        self,
        vid: str,
        tid: int,
        cls: VehicleClass,
        lane: str,
        x: float,
        y: float,
        speed: float,
        now: float,
        state: str,
        via_index: dict[str, int],
    ) -> None:
        cfg = self.config
        flags = self._flags.setdefault(vid, {})
        prev = self._last.get(vid)
        self._last[vid] = (lane, x, y, speed)
        det = self.detectors.get(prev[0]) if prev is not None else None
        if det is not None and lane.startswith(":"):  # crossed the stop line
            assert prev is not None
            self._crossings.append(Crossing(vid, cls, prev[0]))
            det.pcu += PCU.get(cls, 1.0)
            if prev[0] in self._discharging:
                det.discharged_pcu += PCU.get(cls, 1.0)
        if prev is not None and prev[0].startswith("S_in") and lane.startswith(":"):
            idx = via_index.get(lane)
            if idx is not None and state[idx] in "rR":
                self._emit("red_light", vid, tid, cls, now, lane_id=prev[0])
        s0, s1 = cfg.speed_zone_m
        on_south = lane.startswith(("S_in", "S_out")) and -s1 - 10.4 <= y <= -s0 - 10.4
        limit = cfg.network.speed_limit_kmh + cfg.speed_tolerance_kmh
        if (
            on_south
            and speed * 3.6 > limit
            and "speeding" not in flags
            and vid not in self._wrongway
        ):
            flags["speeding"] = now
            self._emit("speeding", vid, tid, cls, now, speed_kmh=round(speed * 3.6, 2))
        if lane == "S_in_0" and cls is not VehicleClass.bus and prev is not None:
            flags["bus_m"] = flags.get("bus_m", 0.0) + float(np.hypot(x - prev[1], y - prev[2]))
            if flags["bus_m"] >= cfg.bus_lane_min_m and "bus_lane" not in flags:
                flags["bus_lane"] = now
                self._emit("bus_lane", vid, tid, cls, now)
        z0, z1 = cfg.no_stop_zone_m
        in_zone = lane == "S_out_0" and -z1 - 10.4 <= y <= -z0 - 10.4
        if in_zone and speed < 0.1:
            flags.setdefault("stop_t", now)
            if now - flags["stop_t"] > cfg.no_stop_max_dwell_s and "illegal_stop" not in flags:
                flags["illegal_stop"] = now
                self._emit("illegal_stop", vid, tid, cls, now)
        else:
            flags.pop("stop_t", None)
        ww_start = self._wrongway.get(vid)
        went = y - ww_start if ww_start is not None else 0.0
        if went >= cfg.wrong_way_min_m and "wrong_way" not in flags:
            flags["wrong_way"] = now
            self._emit("wrong_way", vid, tid, cls, now)

    # --- violators -----------------------------------------------------------------------
    def _schedule_injections(self) -> None:
        import libsumo

        cfg = self.config
        now = self.sim_time
        dt = cfg.step_s
        rates = cfg.violators
        rng = self.rng
        n = len(self.injected)
        # red-light runners: timed to reach the stop line 1-6 s into the south red
        phase = libsumo.trafficlight.getPhase(TLS)
        if phase == 0 and not self._runner_planned:
            self._runner_planned = True
            p = rates.red_light * self.plan.cycle_s / 3600.0
            if rng.random() < p:
                red_at = libsumo.trafficlight.getNextSwitch(TLS) + self.plan.phases[0].amber_s
                travel = libsumo.lane.getLength("S_in_1") / 12.5
                t_ins = red_at + rng.uniform(0.8, 4.0) - travel
                if t_ins > now:
                    cls = "motorbike" if rng.random() < 0.7 else "car"
                    self._pending.append((t_ins, cls, {}))
        elif phase != 0:
            self._runner_planned = False
        for item in [x for x in self._pending if x[0] <= now]:
            self._pending.remove(item)
            counts = {k: libsumo.lane.getLastStepVehicleNumber(f"S_in_{k}") for k in (1, 2)}
            lane = min(counts, key=lambda k: (counts[k], k))
            vid = f"v_red_{len(self.injected)}"
            libsumo.vehicle.add(
                vid,
                "S_through",
                typeID=f"{item[1]}_runner",
                depart="now",
                departLane=str(lane),
                departSpeed="max",
            )
            libsumo.vehicle.setSpeedMode(vid, 7)  # ignore red lights and right of way
            self.injected[vid] = "red_light"
        # speeders leave when they will meet the north-south green (phase 0) with time to
        # spare, so that they pass the camera's speed zone at speed instead of queueing at red
        green_left = libsumo.trafficlight.getNextSwitch(TLS) - now if phase == 0 else 0.0
        lo, hi = SPEEDER_GREEN_LEFT_S
        if self._speeders and lo <= green_left <= hi and now - self._speeder_at >= hi - lo:
            self._speeder_at = now  # one per green: a platoon of speeders slows its own
            cls, route = self._speeders.pop(0)
            vid = f"v_speed_{n}"
            libsumo.vehicle.add(
                vid,
                route,
                typeID=f"{cls}_speeder",
                depart="now",
                departLane="free",
                departSpeed="max",
            )
            self.injected[vid] = "speeding"
            n += 1
        if rng.random() < rates.speeding * dt / 3600:
            cls = "motorbike" if rng.random() < 0.6 else "car"
            route = "S_through" if rng.random() < 0.5 else "N_through"
            self._speeders.append((cls, route))
        elif rng.random() < rates.bus_lane * dt / 3600:
            cls = "motorbike" if rng.random() < 0.5 else "car"
            vid = f"v_bus_{n}"
            libsumo.vehicle.add(
                vid,
                "S_through",
                typeID=f"{cls}_buslane",
                depart="now",
                departLane="0",
                departSpeed="desired",
            )
            self.injected[vid] = "bus_lane"
        elif rng.random() < rates.illegal_stop * dt / 3600:
            cls = "motorbike" if rng.random() < 0.5 else "car"
            vid = f"v_stop_{n}"
            libsumo.vehicle.add(
                vid,
                "N_through",
                typeID=f"mix_{cls}",
                depart="now",
                departLane="0",
                departSpeed="desired",
            )
            z0, z1 = cfg.no_stop_zone_m
            pos = float(rng.uniform(z0 + 3, z1 - 3))
            libsumo.vehicle.setStop(
                vid, "S_out", pos=pos, laneIndex=0, duration=cfg.no_stop_max_dwell_s + 25
            )
            self.injected[vid] = "illegal_stop"
        elif rng.random() < rates.wrong_way * dt / 3600:
            vid = f"v_wrong_{n}"
            libsumo.vehicle.add(
                vid,
                "S_out_only",
                typeID="motorbike_wrongway",
                depart="now",
                departPos="110",
                departLane="0",
                departSpeed="0",
            )
            self.injected[vid] = "wrong_way"
            self._wrongway[vid] = -125.0
            self._ww_y = getattr(self, "_ww_y", {})
            self._ww_y[vid] = -125.0

    def _move_wrongway(self, now: float) -> None:
        import libsumo

        ww = getattr(self, "_ww_y", {})
        live = set(libsumo.vehicle.getIDList())
        for vid in list(ww):
            if vid not in live:
                continue
            y = ww[vid] + 5.0 * self.config.step_s  # 18 km/h northbound, on the exit lane
            if y > -14:
                libsumo.vehicle.unsubscribe(vid)
                libsumo.vehicle.remove(vid)
                del ww[vid]
                continue
            ww[vid] = y
            libsumo.vehicle.setSpeed(vid, 0.0)  # we move it, SUMO does not
            libsumo.vehicle.moveToXY(vid, "S_out", 0, -4.8, y, angle=0.0, keepRoute=2)

    # --- measures ------------------------------------------------------------------------
    def average_delay_s(self, departed_after: float = 0.0) -> tuple[float, int]:
        """Mean time loss (s) of the (non-injected) vehicles that departed after
        ``departed_after`` (sim s) and have left the network."""
        vals = [
            loss
            for vid, loss in self.time_loss.items()
            if self.depart.get(vid, -1) >= departed_after
            and vid not in self.injected
            and vid in self.arrived
        ]
        return (float(np.mean(vals)) if vals else 0.0), len(vals)


def _vclass(name: str) -> str:
    return {"motorbike": "motorcycle", "car": "passenger"}.get(name, name)


def _type_attrs(name: str) -> str:
    sizes = {
        "motorbike": 'length="2.0" width="0.8" minGap="1.0" accel="3.0" maxSpeed="16.7"',
        "car": 'length="4.5" width="1.8" minGap="2.0"',
        "bus": 'length="11.0" width="2.5" minGap="2.5" accel="1.2"',
        "truck": 'length="8.0" width="2.4" minGap="2.5" accel="1.3"',
    }
    return sizes[name] + ' sigma="0.4" speedFactor="normc(0.9,0.04,0.8,1.0)"'
