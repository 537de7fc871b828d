"""Request and response models: what the OpenAPI document shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(BaseModel):
    detail: str = Field(description="What is wrong, and what would be accepted")


class Page(BaseModel, Generic[T]):
    items: list[T]
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last")


class Me(BaseModel):
    name: str
    role: Literal["operator", "utility", "viewer"]
    city: str
    may: list[str] = Field(description="What this role may do, for the UI")


class Intersection(_Out):
    id: str
    name: str
    lon: float
    lat: float
    district_id: str | None
    cameras: int
    vehicles: int = Field(description="Vehicles counted in the window")
    flow_vph: float = Field(description="Vehicles per hour over the window")
    queue: int = Field(description="Vehicles queued (all lanes) in the latest window")
    last_window: datetime | None
    pending_violations: int
    has_recommendation: bool


class Camera(_Out):
    id: str
    intersection_id: str
    lon: float | None
    lat: float | None


class Violation(_Out):
    violation_id: str
    occurred_at: datetime
    kind: str
    camera_id: str
    intersection_id: str
    track_id: int
    vehicle_class: str
    confidence: float
    review_state: Literal["pending", "confirmed", "rejected"]
    reviewed_at: datetime | None
    reviewed_by: str | None
    details: dict[str, Any] = Field(description="Plates and evidence keys removed for viewers")
    evidence_uri: str | None = Field(None, description="Operators only")
    evidence_sha256: str | None = Field(None, description="Operators only")


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["confirm", "reject"]
    note: str | None = Field(None, max_length=1000)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(None, max_length=1000)


class CountBucket(BaseModel):
    bucket: datetime
    key: str = Field(description="The movement, lane or vehicle class")
    vehicles: int
    occupancy: float
    max_queue: int
    arrivals: int = Field(description="Vehicles that reached the arrival line")
    arrivals_on_red: int = Field(description="Of those, arrived while their signal was red")


class QueueBucket(BaseModel):
    bucket: datetime
    lane_id: str
    avg_queue: float
    max_queue: int


class Plan(_Out):
    intersection_id: str
    plan_id: str
    kind: Literal["current", "recommended"]
    valid_from: datetime
    cycle_s: float
    plan: dict[str, Any]
    review_state: str | None
    predicted_delay_current_s: float | None
    predicted_delay_recommended_s: float | None


class Plans(BaseModel):
    current: Plan | None
    recommended: Plan | None = Field(description="Latest recommendation not yet decided")
    history: list[Plan]


class PlanApproved(BaseModel):
    intersection_id: str
    plan_id: str
    mqtt_topic: str
    valid_from: datetime


class LoadBucket(BaseModel):
    bucket: datetime
    avg_kw: float
    max_kw: float
    energy_kwh: float
    min_meters: int


class ForecastPoint(BaseModel):
    target: datetime
    p10: float
    p50: float
    p90: float


class ForecastOut(BaseModel):
    scope: str
    scope_id: str
    issued_at: datetime | None
    model: str | None
    points: list[ForecastPoint]


class Vintage(BaseModel):
    issued_at: datetime
    model: str
    points: int
    first_target: datetime
    last_target: datetime


class Accuracy(BaseModel):
    n: int = Field(description="Targets with both a forecast and an actual")
    mae_kw: float | None
    mape_pct: float | None
    coverage_p10_p90_pct: float | None
    bias_kw: float | None
    since: datetime
    until: datetime
    lead_h: float


class Feeder(_Out):
    id: str
    district_id: str
    rated_kw: float
    avg_kw: float | None
    utilisation: float | None


class Alert(_Out):
    alert_id: str
    raised_at: datetime
    kind: str
    severity: str
    source: str
    subject_id: str
    message: str
    acknowledged_at: datetime | None
    acknowledged_by: str | None


class AuditEntry(_Out):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    subject: str
    details: dict[str, Any]
