"""The intersection simulator as a running service (``citystream sim intersection``).

One process runs one SUMO intersection and its virtual camera::

    SimulatorSource (SUMO steps, rendered frames at --fps on simulated time)
      -> CameraAgent (the edge camera agent: JPEG, drop-oldest queue) -> Kafka camera.frames
      -> SignalController: every signal change -> MQTT city/{city}/signals/{id}/phase (QoS 1,
         as a field controller reports; the bridge forwards it to Kafka signal.phases)
    MQTT city/{city}/signals/{id}/plan (QoS 1, e.g. approved in the city map)
      -> checked -> installed in SUMO before the next step
      -> the plan now running -> MQTT city/{city}/signals/{id}/plan-applied (QoS 1, retained)
    --neighbour ARM=ID: vehicles leaving by ARM -> Kafka sim.handoffs -> that junction, and
                        its vehicles -> this one's ARM (see simulators.intersection.corridor)
    ground truth -> --truth FILE (JSON Lines, see simulators.intersection.truth)
    --capture FILE -> camera.frames + signal.phases records (event timestamps), the truth in
                      the capture's sidecar (``X.cap`` -> ``X.truth.jsonl``)

At start it registers the intersection and its camera in the reference tables, with the
calibration built from the same geometry (``calibration_version`` goes up by one whenever the
calibration changes).  Deterministic by seed: the same seed gives the same traffic, frames and
truth; only the event-time start (``--start``, default now) shifts the timestamps.

``--warmup S`` runs S simulated seconds before the first frame (an empty junction fills up):
nothing is rendered, published or written for them, and simulated second S maps to
``--start`` (the scenario's own clock starts S seconds earlier).  The truth starts with the
first frame; its first frame brings one ``SignalPhaseChange`` per signal group with the state
the group shows then (``changed_at`` = the first frame's time), so the signal states are known
downstream from the first frame on.  ``--duration`` counts after the warm-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from citystream.capture.format import CapturedRecord, CaptureWriter
from citystream.capture.simulated import truth_path
from citystream.metrics import Registry
from citystream.settings import Settings
from edge.camera.agent import CameraAgent, CameraConfig, EncodedFrame
from edge.camera.processing import Polygon
from edge.camera.publisher import KafkaFramePublisher
from edge.camera.sources import PlanSwitch, SimFrame, SimulatorSource
from schemas.codecs import JsonCodec, dead_letter
from schemas.messages import Alert, Severity, SignalPhaseChange, SignalPlan, VehicleHandoff
from schemas.topics import DEAD_LETTER_CODEC, TOPICS
from simulators.intersection.calibration import build_calibration
from simulators.intersection.camera import VirtualCamera
from simulators.intersection.controller import SignalController, check_plan
from simulators.intersection.corridor import HANDOFFS, HandoffFeed, handoff_for
from simulators.intersection.reference import Placement, register_reference
from simulators.intersection.render import RenderConfig, Renderer
from simulators.intersection.sim import (
    IntersectionSim,
    ScenarioConfig,
    StopLineDetector,
    ViolatorRates,
)
from simulators.intersection.truth import (
    TruthWriter,
    discharge_records,
    frame_record,
    phase_record,
)
from streams.traffic.calibration import Calibration

log = logging.getLogger("citystream.sim.intersection")
PHASE_CODEC = JsonCodec(SignalPhaseChange)

# --- the scene --------------------------------------------------------------------------------


@dataclass
class Scene:
    sim: IntersectionSim
    camera: VirtualCamera
    calibration: Calibration
    renderer: Renderer


def make_scene(
    scenario: ScenarioConfig,
    width: int,
    camera_id: str,
    render: RenderConfig | None = None,
    calibration_version: str = "1",
) -> Scene:
    """Simulation, a 16:9 camera ``width`` pixels wide, its calibration and the renderer.
    Frames come out at exactly the camera's size, so the agent never resizes them."""
    height = max(2, 2 * round(width * 9 / 16 / 2))
    camera = VirtualCamera(width=width, height=height)
    sim = IntersectionSim(scenario)
    cal = build_calibration(scenario, camera, str(sim.net_file), camera_id, calibration_version)
    renderer = Renderer(camera, str(sim.net_file), cal, render or RenderConfig(seed=scenario.seed))
    return Scene(sim, camera, cal, renderer)


def signal_groups(sim: IntersectionSim) -> set[str]:
    return {link.group for link in sim.links}


# --- captures -----------------------------------------------------------------------------------


class CaptureOutput:
    """camera.frames and signal.phases records, with their event timestamps, in a capture."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.writer = CaptureWriter(path, metadata={"source": "simulator", **metadata})
        self._frames = TOPICS["camera.frames"]
        self._phases = TOPICS["signal.phases"]
        self._n = 0

    def _add(self, topic: str, key: bytes, value: bytes, ts_ms: int) -> None:
        self.writer.add(CapturedRecord(topic, key, value, ts_ms, -1, self._n))
        self._n += 1

    def phase(self, change: SignalPhaseChange) -> None:
        ms = round(change.changed_at.timestamp() * 1000)
        self._add(self._phases.name, self._phases.key_of(change), PHASE_CODEC.encode(change), ms)

    def frame(self, frame: EncodedFrame) -> None:
        self._add(
            self._frames.name, frame.header.camera_id.encode(), frame.value, frame.timestamp_ms
        )

    def close(self) -> None:
        self.writer.close()


# --- the service ------------------------------------------------------------------------------


def now_start() -> datetime:
    """The event-time start of a live run: now, to the whole second."""
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class ServiceConfig:
    intersection_id: str = "int-1"
    camera_id: str = "int-1-cam-s"
    city: str = "hcm"
    seed: int = 1
    duration_s: float | None = None
    #: simulated seconds run before the first frame, unobserved (duration counts after them)
    warmup_s: float = 0.0
    speed: float = 1.0
    fps: float = 10.0
    width: int = 640
    jpeg_quality: int = 85
    start: datetime = field(default_factory=now_start)
    placement: Placement = field(default_factory=Placement)
    violators: ViolatorRates = field(default_factory=ViolatorRates)
    #: total demand over the four arms (veh/h), split like the default; None: the default
    demand_veh_h: float | None = None
    lighting: str = "day"
    blur: tuple[Polygon, ...] = ()
    publish: bool = True
    register: bool = True
    truth: Path | None = None
    capture: Path | None = None
    progress_interval_s: float = 10.0
    delay_report_s: float = 60.0  # simulated seconds between delay updates
    #: simulated seconds under a newly installed plan before its measured delay is reported
    outcome_after_s: float = 300.0
    workdir: Path | None = None
    #: arm -> neighbouring junction of a corridor (see :mod:`simulators.intersection.corridor`)
    neighbours: tuple[tuple[str, str], ...] = ()


class IntersectionService:
    """Composition root of ``citystream sim intersection``: :meth:`run` until the duration
    is over or :meth:`stop`."""

    def __init__(self, config: ServiceConfig, settings: Settings) -> None:
        self.config = cfg = config
        self.settings = settings
        self.registry = Registry("citystream_sim_intersection")
        self.camera_registry = Registry("citystream_edge_camera")
        if not 0 <= cfg.warmup_s <= 86_400:
            raise ValueError(f"warm-up must be within [0, 86400] s, got {cfg.warmup_s:g}")
        scenario = ScenarioConfig(
            intersection_id=cfg.intersection_id,
            seed=cfg.seed,
            # simulated second warmup_s is --start: the first frame's clock does not move
            start=cfg.start - timedelta(seconds=cfg.warmup_s),
            violators=cfg.violators,
            workdir=cfg.workdir,
            fed_arms=frozenset(arm for arm, _ in cfg.neighbours),
        )
        if cfg.demand_veh_h is not None:
            scenario = replace(scenario, demand_veh_h=scaled_demand(cfg.demand_veh_h))
        render = RenderConfig(lighting=cfg.lighting, jpeg_quality=cfg.jpeg_quality, seed=cfg.seed)
        self.scene = make_scene(scenario, cfg.width, cfg.camera_id, render)
        self.known_groups = signal_groups(self.scene.sim)
        self.source = SimulatorSource(
            self.scene.sim,
            self.scene.renderer,
            fps=cfg.fps,
            duration_s=cfg.duration_s,
            warmup_s=cfg.warmup_s,
        )
        r = self.registry
        self.plans_applied = r.counter("plans_applied_total", "Plans installed in SUMO")
        self.delay_current = r.gauge(
            "average_delay_seconds", "Average delay (time loss) under the plan in force"
        )
        self.delay_before = r.gauge(
            "average_delay_before_last_plan_seconds",
            "Average delay under the plan before the last switch",
        )
        self.sim_time = r.gauge("sim_time_seconds", "Simulated seconds so far")
        self.frames_rendered = r.counter("frames_rendered_total", "Frames rendered")
        self.plans_dead_lettered = r.counter(
            "plans_dead_lettered_total", "Refused plans written to signal.plans.dlq"
        )
        self.handoffs_sent = r.counter(
            "handoffs_sent_total", "Vehicles handed to a neighbouring junction", ("to",)
        )
        self.handoffs_failed = r.counter(
            "handoffs_failed_total", "Vehicles not handed over: Kafka refused them", ("to",)
        )
        self.handoffs_admitted = r.counter(
            "handoffs_admitted_total", "Vehicles from a neighbouring junction admitted", ("arm",)
        )
        self.handoffs_dead_lettered = r.counter(
            "handoffs_dead_lettered_total", "Refused handoffs written to sim.handoffs.dlq"
        )
        self.neighbours = dict(cfg.neighbours)
        self.handoff_feed: HandoffFeed | None = None
        self._run_id = uuid.uuid4().hex[:12]
        self.controller: SignalController | None = None
        self.publisher: KafkaFramePublisher | None = None
        self.truth: TruthWriter | None = None
        self.capture: CaptureOutput | None = None
        self.agent: CameraAgent | None = None
        self._announced = False
        self._detectors_at_start: dict[str, StopLineDetector] = {}
        self._outcome: tuple[PlanSwitch, float] | None = None  # switch, when to report
        self._next_delay = cfg.delay_report_s
        self._stopping = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        if self.agent is not None:
            self.agent.stop()

    def _meta(self) -> dict[str, Any]:
        cfg, cam = self.config, self.scene.camera
        return {
            "simulator": "simulators.intersection",
            "intersection_id": cfg.intersection_id,
            "camera_id": cfg.camera_id,
            "seed": cfg.seed,
            "start": cfg.start.isoformat(),
            "fps": cfg.fps,
            "width": cam.width,
            "height": cam.height,
            "duration_s": cfg.duration_s,
            "warmup_s": cfg.warmup_s,
        }

    def run(self) -> int:
        cfg = self.config
        calibration = self.scene.calibration
        if cfg.register:
            version, calibration = register_reference(
                self.settings.db.dsn,
                calibration,
                self.scene.camera,
                cfg.placement,
                {"simulated": True, "seed": cfg.seed, "source": "citystream sim intersection"},
                net_file=self.scene.sim.net_file,
            )
            log.info(
                "registered intersection %s and camera %s (calibration version %d)",
                cfg.intersection_id,
                cfg.camera_id,
                version,
            )
        truth_paths = [p for p in (cfg.truth,) if p is not None]
        if cfg.capture is not None:
            truth_paths.append(truth_path(cfg.capture))
        if truth_paths:
            self.truth = TruthWriter(truth_paths)
            self.truth.write(
                {"kind": "meta", **self._meta(), "calibration": json.loads(calibration.to_json())}
            )
        if cfg.capture is not None:
            # a fixed creation time: the same seed and start give a byte-identical capture
            created_ms = round(cfg.start.timestamp() * 1000)
            self.capture = CaptureOutput(cfg.capture, {**self._meta(), "created_ms": created_ms})
        publisher = None
        if cfg.publish:
            publisher = KafkaFramePublisher(
                self.settings.kafka.bootstrap, client_id=f"citystream-sim-{cfg.camera_id}"
            )
            self.publisher = publisher
            self.controller = SignalController(
                self.settings.mqtt,
                cfg.city,
                cfg.intersection_id,
                self.registry,
                on_plan=self.source.request_plan,
                check=lambda plan: check_plan(plan, cfg.intersection_id, self.known_groups),
                on_invalid=self._dead_letter,
            )
            self.controller.start()
            if self.neighbours:
                self.handoff_feed = HandoffFeed(
                    self.settings.kafka.bootstrap,
                    cfg.intersection_id,
                    self.neighbours,
                    on_handoff=self.source.request_admission,
                    on_invalid=self._dead_letter_handoff,
                )
                self.handoff_feed.start()
        elif self.neighbours:
            log.warning("--no-publish: the corridor's neighbours are not connected")
        self.agent = CameraAgent(
            CameraConfig(
                camera_id=cfg.camera_id,
                fps=cfg.fps,
                width=self.scene.camera.width,
                jpeg_quality=cfg.jpeg_quality,
                blur=cfg.blur,
                speed=cfg.speed,
                progress_interval_s=cfg.progress_interval_s,
            ),
            publisher,
            registry=self.camera_registry,
            on_frame=self._on_frame,
            on_progress=self._on_progress,
        )
        if self._stopping.is_set():
            self.agent.stop()
        t0 = time.perf_counter()
        try:
            rc = self.agent.run(self.source)
        finally:
            self._finish(time.perf_counter() - t0)
        return rc

    def _finish(self, wall_s: float) -> None:
        src = self.source
        delay, n = src.final_delay if src.final_delay is not None else (math.nan, 0)
        plan_id = self.scene.sim.plan.plan_id
        if self.truth is not None:
            self.truth.write_many(
                discharge_records(self.scene.sim.detectors, self._detectors_at_start)
            )
            if not math.isnan(delay):
                self.truth.write(
                    {
                        "kind": "delay",
                        "plan_id": plan_id,
                        "avg_delay_s": round(delay, 2),
                        "vehicles": n,
                        "sim_time": round(self.sim_time.value, 1),
                    }
                )
            self.truth.close()
        if self.capture is not None:
            self.capture.close()
        if self.controller is not None:
            self.controller.stop()
        if self.handoff_feed is not None:
            self.handoff_feed.stop()
        sim_s = self.sim_time.value
        frames = self.frames_rendered.value
        log.info(
            "done: %.0f simulated s, %d frames in %.1f s wall (%.1fx real time); plan %s, "
            "average delay %.1f s over %d vehicles",
            sim_s,
            frames,
            wall_s,
            sim_s / wall_s if wall_s > 0 else 0.0,
            plan_id,
            delay,
            n,
        )

    # --- per frame (capture thread: the thread that steps SUMO) ------------------------------

    def _on_frame(self, frame: EncodedFrame) -> None:
        sf: SimFrame = frame.source.extras
        sim = self.scene.sim
        if not self._announced:
            self._announced = True
            self._applied(None, sim.plan)
            self._detectors_at_start = {k: replace(d) for k, d in sim.detectors.items()}
        for switch in sf.plan_switches:
            self._applied(switch, switch.plan)
        for change in sf.phase_changes:
            if self.controller is not None:
                self.controller.publish_phase(change)
            if self.capture is not None:
                self.capture.phase(change)
        self._handoffs(sf)
        if self.truth is not None:
            self.truth.write_many(phase_record(c) for c in sf.phase_changes)
            self.truth.steps(sf.steps, sim.truth)
            self.truth.write(frame_record(frame.seq, frame.header.captured_at, sf.objects))
        if self.capture is not None:
            self.capture.frame(frame)
        self.frames_rendered.inc()
        t = sf.step.sim_time
        self.sim_time.set(t)
        if self._outcome is not None and t >= self._outcome[1]:
            self._report_outcome(self._outcome[0], t)
            self._outcome = None
        if t >= self._next_delay:
            self._next_delay = t + self.config.delay_report_s
            delay, _ = self.source.delay_under_current_plan()
            self.delay_current.set(round(delay, 2))

    def _applied(self, switch: PlanSwitch | None, plan: SignalPlan) -> None:
        if self.controller is not None:
            self.controller.publish_applied(plan)
        if switch is None:
            log.info("running plan %s (cycle %g s)", plan.plan_id, plan.cycle_s)
            return
        self.plans_applied.inc()
        self.delay_before.set(switch.delay_before_s)
        self._outcome = (switch, switch.sim_time + self.config.outcome_after_s)
        log.info(
            "applied plan %s (cycle %g s) at sim %.1f s; average delay under %s was %.1f s "
            "over %d vehicles",
            plan.plan_id,
            plan.cycle_s,
            switch.sim_time,
            switch.previous_plan_id,
            switch.delay_before_s,
            switch.vehicles_before,
        )
        if self.truth is not None:
            self.truth.write(
                {
                    "kind": "plan_applied",
                    "plan_id": plan.plan_id,
                    "previous_plan_id": switch.previous_plan_id,
                    "at": switch.at.isoformat(),
                    "sim_time": round(switch.sim_time, 1),
                    "delay_before_s": switch.delay_before_s,
                    "vehicles_before": switch.vehicles_before,
                    "plan": plan.model_dump(mode="json"),
                }
            )

    def _report_outcome(self, switch: PlanSwitch, sim_time: float) -> None:
        """The measured delay before and after a plan switch, as a controller's report
        (``.../outcome`` over MQTT -> ``traffic.alerts``): what the operator's approval did."""
        after, n_after = self.source.delay_under_current_plan()
        iid, plan_id = self.config.intersection_id, switch.plan.plan_id
        key = f"{iid}|{plan_id}|{switch.at.isoformat()}"
        alert = Alert(
            alert_id=f"outcome-{hashlib.sha256(key.encode()).hexdigest()[:24]}",
            kind="plan_outcome",
            severity=Severity.info,
            source="traffic",
            subject_id=iid,
            raised_at=datetime.fromtimestamp(self.scene.sim.epoch(sim_time), UTC),
            message=f"measured average delay {switch.delay_before_s:.1f} s per vehicle under "
            f"{switch.previous_plan_id}, {after:.1f} s under {plan_id} "
            f"({sim_time - switch.sim_time:.0f} s after it was installed)",
            details={
                "plan_id": plan_id,
                "previous_plan_id": switch.previous_plan_id,
                "delay_before_s": round(switch.delay_before_s, 2),
                "delay_after_s": round(after, 2),
                "vehicles_before": switch.vehicles_before,
                "vehicles_after": n_after,
                "measured_s": round(sim_time - switch.sim_time, 1),
            },
        )
        log.info("plan %s: %s", plan_id, alert.message)
        if self.controller is not None:
            self.controller.publish_outcome(alert)
        if self.truth is not None:
            self.truth.write({"kind": "plan_outcome", **alert.model_dump(mode="json")})

    def _handoffs(self, sf: SimFrame) -> None:
        """Vehicles admitted from neighbours, and those leaving toward one -> ``sim.handoffs``."""
        for came in sf.admitted:
            self.handoffs_admitted.labels(came.arm).inc()
            if self.truth is not None:
                self.truth.write({"kind": "handoff_in", **came.model_dump(mode="json")})
        if not self.neighbours or self.publisher is None:
            return
        iid = self.config.intersection_id
        for step in sf.steps:
            for exit_ in step.exits:
                h = handoff_for(exit_, iid, self.neighbours, self._run_id, step.t)
                if h is None:
                    continue
                done = self._sent(h)
                try:
                    self.publisher.send_other(
                        HANDOFFS.name, HANDOFFS.key_of(h), HANDOFFS.codec.encode(h), done
                    )
                except Exception as err:  # Kafka away: counted and logged, never fatal
                    done(err)
                if self.truth is not None:
                    self.truth.write({"kind": "handoff_out", **h.model_dump(mode="json")})

    def _sent(self, h: VehicleHandoff) -> Callable[[BaseException | None], None]:
        def done(err: BaseException | None) -> None:
            if err is None:
                self.handoffs_sent.labels(h.to_intersection).inc()
            else:
                self.handoffs_failed.labels(h.to_intersection).inc()
                log.warning("handoff %s to %s not sent: %r", h.vehicle_ref, h.to_intersection, err)

        return done

    def _dead_letter(self, mqtt_topic: str, payload: bytes, exc: Exception) -> None:
        """A refused plan -> ``signal.plans.dlq`` with the reason (paho's thread)."""
        dlq = TOPICS["signal.plans"].dlq
        self._send_dead_letter(dlq, mqtt_topic, payload, exc, self.plans_dead_lettered)

    def _dead_letter_handoff(self, payload: bytes, exc: Exception) -> None:
        """A refused handoff -> ``sim.handoffs.dlq`` with the reason (the feed's thread)."""
        log.warning("handoff refused: %s", exc)
        self._send_dead_letter(
            HANDOFFS.dlq, HANDOFFS.name, payload, exc, self.handoffs_dead_lettered
        )

    def _send_dead_letter(
        self, dlq: str, source: str, payload: bytes, exc: Exception, counter: Any
    ) -> None:
        if self.publisher is None:
            return
        iid = self.config.intersection_id.encode()
        record = dead_letter(
            source_topic=source[:249],
            payload=payload,
            error=exc,
            stage="sim-intersection",
            key=iid,
        )

        def done(err: BaseException | None) -> None:
            if err is None:
                counter.inc()
            else:
                log.warning("refused record not written to %s: %r", dlq, err)

        try:
            self.publisher.send_other(dlq, iid, DEAD_LETTER_CODEC.encode(record), done)
        except Exception as err:  # not connected yet, buffer full: logged, never fatal
            log.warning("refused record not written to %s: %s", dlq, err)

    def _on_progress(self) -> None:
        log.info(
            "sim t=%.0f s plan=%s avg_delay=%.1f s plans_applied=%d%s",
            self.sim_time.value,
            self.scene.sim.plan.plan_id,
            self.delay_current.value,
            self.plans_applied.value,
            ""
            if self.controller is None
            else f" phases_published={self.controller.phases_published.value:.0f}"
            f" acked={self.controller.phases_acked.value:.0f}"
            f" plans_invalid={self.controller.plans_invalid.value:.0f}",
        )


def scaled_demand(total_veh_h: float) -> tuple[tuple[str, float], ...]:
    """The default demand per arm, scaled so the arms add up to ``total_veh_h``."""
    if not 0 < total_veh_h <= 20_000:
        raise ValueError("demand must be within (0, 20000] vehicles/h")
    base = ScenarioConfig().demand_veh_h
    scale = total_veh_h / sum(v for _, v in base)
    return tuple((arm, round(v * scale, 1)) for arm, v in base)


def scenario_rates(scale: float) -> ViolatorRates:
    """The default violator rates times ``scale`` (0: no injected violators)."""
    if scale < 0:
        raise ValueError("violator scale must be >= 0")
    base = ViolatorRates()
    return ViolatorRates(
        red_light=base.red_light * scale,
        speeding=base.speeding * scale,
        wrong_way=base.wrong_way * scale,
        illegal_stop=base.illegal_stop * scale,
        bus_lane=base.bus_lane * scale,
    )
