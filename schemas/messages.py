"""Wire contracts of CityStream: every message type, defined once.

Each model is frozen, rejects unknown fields, NaN and infinity, and carries a
schema version ``v``.  Timestamps are timezone-aware event times; naive
timestamps are rejected and aware ones are normalised to UTC.  Edge agents,
stream processors, simulators and tests all import these classes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

SCHEMA_VERSION = 1


def _to_utc(value: datetime) -> datetime:
    # Hot path (every reading passes here at each stage): a UTC value (offset zero, as our
    # own encoders write it) is kept as parsed instead of being rebuilt by ``astimezone``.
    if not value.utcoffset():
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp is out of range once converted to UTC") from None


#: Event time: aware, stored as UTC.
EventTime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
#: Identifiers of devices and places: short, printable, no spaces or slashes.
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
NonNeg = Annotated[float, Field(ge=0)]
Prob = Annotated[float, Field(ge=0, le=1)]


class Message(BaseModel):
    """Base of every wire message."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=False)

    v: Literal[1] = Field(1, description=f"Schema version ({SCHEMA_VERSION})")


# --- traffic -------------------------------------------------------------------------------


class VehicleClass(StrEnum):
    motorbike = "motorbike"
    car = "car"
    bus = "bus"
    truck = "truck"
    bicycle = "bicycle"
    person = "person"


class FrameHeader(Message):
    """Header sent in front of each JPEG camera frame on ``camera.frames``."""

    camera_id: Ident
    seq: int = Field(ge=0, description="Frame sequence number, per camera, increasing")
    captured_at: EventTime
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    encoding: Literal["jpeg"] = "jpeg"


class BBox(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    x1: float
    y1: float
    x2: float
    y2: float


class TrackObservation(BaseModel):
    """One tracked object in one frame."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    track_id: int = Field(ge=0)
    vehicle_class: VehicleClass
    confidence: Prob
    bbox: BBox
    ground_xy: tuple[float, float] | None = Field(
        None, description="Position on the ground plane (metres), from the homography"
    )
    speed_kmh: NonNeg | None = None


class TrackBatch(Message):
    """All tracks of one camera frame (``traffic.tracks``)."""

    camera_id: Ident
    frame_seq: int = Field(ge=0)
    captured_at: EventTime
    model_version: str = Field(min_length=1, max_length=128)
    tracks: list[TrackObservation] = Field(max_length=2000)


class ViolationKind(StrEnum):
    red_light = "red_light"
    speeding = "speeding"
    wrong_way = "wrong_way"
    illegal_stop = "illegal_stop"
    bus_lane = "bus_lane"


class Violation(Message):
    """A detected traffic violation with a pointer to its evidence bundle."""

    violation_id: Ident
    kind: ViolationKind
    camera_id: Ident
    intersection_id: Ident
    track_id: int = Field(ge=0)
    vehicle_class: VehicleClass
    occurred_at: EventTime
    confidence: Prob
    evidence_uri: str = Field(min_length=1, max_length=1024)
    evidence_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    details: dict[str, float | int | str] = Field(default_factory=dict)


class LaneCount(Message):
    """Vehicles per lane, movement and class in one window (``traffic.counts``)."""

    intersection_id: Ident
    camera_id: Ident
    lane_id: Ident
    movement: Literal["through", "left", "right", "u_turn"]
    vehicle_class: VehicleClass
    window_start: EventTime
    window_s: int = Field(gt=0, le=86400)
    count: int = Field(ge=0)
    occupancy: Prob = Field(description="Share of the window the lane's zone was occupied")
    queue_len: int = Field(ge=0, description="Vehicles queued at the stop line at window end")
    arrivals: int = Field(
        0, ge=0, description="Vehicles that reached the lane's arrival line in the window"
    )
    arrivals_on_red: int = Field(
        0, ge=0, description="Of those, the ones that arrived while the lane's signal was red"
    )
    discharged: int = Field(
        0,
        ge=0,
        description="Of count, the vehicles that crossed while a queue stood in the lane on green",
    )
    discharge_s: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="Seconds of the window the lane had green with a queue standing in it "
        "(the lane's, so the same on each class row of the lane)",
    )

    @model_validator(mode="after")
    def _parts_within_totals(self) -> LaneCount:
        if self.arrivals_on_red > self.arrivals:
            raise ValueError("arrivals_on_red exceeds arrivals")
        if self.discharged > self.count:
            raise ValueError("discharged exceeds count")
        if self.discharge_s > self.window_s:
            raise ValueError("discharge_s exceeds window_s")
        return self


class SignalState(StrEnum):
    green = "green"
    amber = "amber"
    red = "red"
    off = "off"


class SignalPhaseChange(Message):
    """A signal group changed colour (``signal.phases``), as reported by the controller."""

    intersection_id: Ident
    signal_group: Ident = Field(description="Signal group / movement, e.g. 'N_through'")
    state: SignalState
    changed_at: EventTime
    program_id: str = Field("default", min_length=1, max_length=64)


class VehicleHandoff(Message):
    """A simulated vehicle leaving one junction of a corridor for the next (``sim.handoffs``):
    it enters ``to_intersection`` by ``arm`` (the arm facing ``from_intersection``)."""

    vehicle_ref: Ident = Field(description="Unique per vehicle and hop: a repeat is ignored")
    from_intersection: Ident
    to_intersection: Ident
    arm: Literal["N", "E", "S", "W"]
    vehicle_class: VehicleClass
    speed_mps: float = Field(ge=0, le=60)
    left_at: EventTime


class PhaseTiming(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: Ident
    signal_groups: list[Ident] = Field(min_length=1)
    green_s: float = Field(gt=0, le=300)
    amber_s: float = Field(ge=0, le=10)
    all_red_s: float = Field(ge=0, le=10)


class SignalPlan(Message):
    """A fixed-time signal plan for one intersection (``signal.plans``)."""

    intersection_id: Ident
    plan_id: Ident
    cycle_s: float = Field(gt=0, le=600)
    offset_s: float = Field(0, ge=0, le=600)
    phases: list[PhaseTiming] = Field(min_length=1, max_length=16)
    valid_from: EventTime


class SignalRecommendation(Message):
    """Advice computed from measured flows (``signal.recommendations``)."""

    intersection_id: Ident
    issued_at: EventTime
    basis_start: EventTime
    basis_end: EventTime
    current_plan_id: Ident
    recommended: SignalPlan
    predicted_delay_current_s: NonNeg
    predicted_delay_recommended_s: NonNeg
    method: str = Field("webster", max_length=64)


# --- energy --------------------------------------------------------------------------------


class MeterReading(Message):
    """One interval reading of one smart meter (``meter.readings``)."""

    meter_id: Ident
    ts: EventTime = Field(description="End of the metering interval")
    interval_s: int = Field(900, gt=0, le=86400)
    import_kwh: NonNeg = Field(le=1e6, description="Energy drawn from the grid in the interval")
    export_kwh: NonNeg = Field(0.0, le=1e6, description="Energy fed back (rooftop solar)")
    voltage_v: float | None = Field(None, ge=0, le=1000)


class MeterBatch(Message):
    """What a gateway (data concentrator) publishes over MQTT: many readings at once."""

    gateway_id: Ident
    batch_seq: int = Field(ge=0, description="Per-gateway sequence number")
    sent_at: EventTime
    readings: list[MeterReading] = Field(min_length=1, max_length=10000)


class LoadScope(StrEnum):
    feeder = "feeder"
    district = "district"


class FeederLoad(Message):
    """Aggregated load of a feeder or district in one window (``energy.load``)."""

    scope: LoadScope
    scope_id: Ident
    window_start: EventTime
    window_s: int = Field(900, gt=0, le=86400)
    energy_kwh: float = Field(allow_inf_nan=False, description="Net energy (import - export)")
    avg_kw: float
    meters_reporting: int = Field(ge=0)
    late_readings: int = Field(0, ge=0)


class ForecastPoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    target: EventTime
    p10: float
    p50: float
    p90: float


class Forecast(Message):
    """A load forecast issued at ``issued_at`` (its vintage) (``energy.forecasts``)."""

    scope: LoadScope
    scope_id: Ident
    issued_at: EventTime
    model: str = Field(min_length=1, max_length=128)
    step_s: int = Field(900, gt=0, le=86400)
    points: list[ForecastPoint] = Field(min_length=1, max_length=10000)


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class Alert(Message):
    """Something a person should look at (``energy.alerts``, camera health, ...)."""

    alert_id: Ident
    kind: str = Field(pattern=r"^[a-z_]{1,64}$")
    severity: Severity
    source: Literal["energy", "traffic", "camera", "platform"]
    subject_id: Ident
    raised_at: EventTime
    message: str = Field(min_length=1, max_length=2000)
    details: dict[str, float | int | str] = Field(default_factory=dict)


class DeadLetter(Message):
    """A message a stage could not process, with the reason (``<topic>.dlq``)."""

    source_topic: str = Field(min_length=1, max_length=249)
    partition: int | None = None
    offset: int | None = None
    key: str | None = Field(None, description="Original key, UTF-8 with replacement")
    payload_b64: str = Field(description="Original payload, base64, truncated to 512 KiB")
    payload_size: int = Field(ge=0, description="Size of the original payload in bytes")
    reason: str = Field(min_length=1, max_length=4000)
    error_type: str = Field(min_length=1, max_length=128)
    stage: str = Field(min_length=1, max_length=128)
    failed_at: EventTime


#: Every JSON message type, by a stable name used in the registry and the JSON Schema export.
MESSAGE_TYPES: dict[str, type[Message]] = {
    "frame_header": FrameHeader,
    "track_batch": TrackBatch,
    "violation": Violation,
    "lane_count": LaneCount,
    "signal_phase_change": SignalPhaseChange,
    "signal_plan": SignalPlan,
    "vehicle_handoff": VehicleHandoff,
    "signal_recommendation": SignalRecommendation,
    "meter_reading": MeterReading,
    "meter_batch": MeterBatch,
    "feeder_load": FeederLoad,
    "forecast": Forecast,
    "alert": Alert,
    "dead_letter": DeadLetter,
}
