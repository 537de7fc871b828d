"""The forecasting stage: feeder/district load history in TimescaleDB → energy.forecasts.

Every ``interval_s`` it reads the recent ``feeder_load`` history of every scope, refits each
scope's :class:`LoadForecaster` when ``retrain_s`` of data time has passed (else only feeds
it the new history), and issues a 48-hour P10/P50/P90 forecast from the end of the last
closed window (data time, so replays and simulations in the past forecast correctly).  Each
forecast carries its issue time (vintage).  A feeder whose P90 exceeds its rated capacity
raises a ``peak_forecast`` alert.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from citystream.metrics import Registry
from citystream.settings import Settings
from schemas.messages import Alert, Forecast, LoadScope, Severity
from schemas.topics import TOPICS

log = logging.getLogger(__name__)
FORECASTS = TOPICS["energy.forecasts"]
ALERTS = TOPICS["energy.alerts"]


@dataclass(frozen=True)
class ForecastConfig:
    interval_s: float = 300.0
    retrain_s: float = 6 * 3600.0
    history_days: int = 84
    horizon_steps: int = 192
    step_s: int = 900
    tz: str = "Asia/Ho_Chi_Minh"
    country: str = "VN"


def peak_alert(forecast: Forecast, rated_kw: float) -> Alert | None:
    """A warning when the forecast's P90 exceeds ``rated_kw`` at any step (pure)."""
    over = [p for p in forecast.points if p.p90 > rated_kw]
    if not over:
        return None
    worst = max(over, key=lambda p: p.p90)
    return Alert(
        alert_id=f"peak-{forecast.scope_id}-{int(forecast.issued_at.timestamp())}"[:64],
        kind="peak_forecast",
        severity=Severity.critical if worst.p50 > rated_kw else Severity.warning,
        source="energy",
        subject_id=forecast.scope_id,
        raised_at=forecast.issued_at,
        message=(
            f"{forecast.scope_id}: forecast P90 {worst.p90:,.0f} kW exceeds rated "
            f"{rated_kw:,.0f} kW at {worst.target:%Y-%m-%d %H:%M} UTC "
            f"({len(over)} of {len(forecast.points)} steps over)"
        ),
        details={
            "rated_kw": rated_kw,
            "p90_kw": worst.p90,
            "p50_kw": worst.p50,
            "steps_over": len(over),
            "first_over": over[0].target.isoformat(),
        },
    )


class ForecastJob:
    def __init__(self, settings: Settings, config: ForecastConfig | None = None) -> None:
        self.settings = settings
        self.config = config or ForecastConfig()
        self.registry = Registry(prefix="citystream_energy_forecaster")
        self.issued = self.registry.counter("forecasts_total", "Forecasts issued", ("scope",))
        self.fits = self.registry.counter("fits_total", "Model (re)fits")
        self.cycle_s = self.registry.summary("cycle_seconds", "Time to forecast every scope")
        self.peaks = self.registry.counter("peak_alerts_total", "Peak alerts raised")
        self._models: dict[tuple[str, str], tuple[Any, datetime]] = {}
        self._last_issue: dict[tuple[str, str], datetime] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap, acks="all")
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                for topic, key, value in self.run_once():
                    producer.send(topic, key=key, value=value)
                producer.flush()
                self.cycle_s.observe(time.monotonic() - started)
                self._stop.wait(self.config.interval_s)
        finally:
            producer.close()

    def run_once(self) -> list[tuple[str, bytes, bytes]]:
        """One cycle: the records to publish (forecasts and peak alerts)."""
        import psycopg

        with psycopg.connect(self.settings.db.dsn) as conn:
            history = self._history(conn)
            rated: dict[str, float] = dict(
                conn.execute("SELECT id, rated_kw FROM feeders").fetchall()
            )
        out: list[tuple[str, bytes, bytes]] = []
        for (scope, scope_id), series in history.items():
            forecast = self.forecast(scope, scope_id, series)
            if forecast is None:
                continue
            out.append((FORECASTS.name, scope_id.encode(), FORECASTS.codec.encode(forecast)))
            self.issued.labels(scope).inc()
            if scope == LoadScope.feeder.value and scope_id in rated:
                alert = peak_alert(forecast, float(rated[scope_id]))
                if alert is not None:
                    self.peaks.inc()
                    out.append((ALERTS.name, ALERTS.key_of(alert), ALERTS.codec.encode(alert)))
        log.info("forecaster: %d forecasts for %d scopes", len(out), len(history))
        return out

    def _history(self, conn: Any) -> dict[tuple[str, str], Any]:
        import pandas as pd

        rows = conn.execute(
            "SELECT scope, scope_id, window_start, avg_kw FROM feeder_load "
            "WHERE window_start > (SELECT max(window_start) FROM feeder_load) - %s "
            "ORDER BY scope, scope_id, window_start",
            (timedelta(days=self.config.history_days),),
        ).fetchall()
        frame = pd.DataFrame(rows, columns=["scope", "scope_id", "window_start", "avg_kw"])
        if frame.empty:
            return {}
        frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
        return {
            (str(scope), str(sid)): g.set_index("window_start")["avg_kw"].astype(float)
            for (scope, sid), g in frame.groupby(["scope", "scope_id"], sort=True)
        }

    def forecast(self, scope: str, scope_id: str, series: Any) -> Forecast | None:
        """Refit or update the scope's model and forecast from the end of its history."""
        from streams.energy.forecasting.base import to_forecast
        from streams.energy.forecasting.gbm import LoadForecaster

        cfg = self.config
        issued_at = series.index[-1].to_pydatetime() + timedelta(seconds=cfg.step_s)
        key = (scope, scope_id)
        if self._last_issue.get(key) == issued_at:
            return None  # no new closed window since the last forecast
        model, fitted_at = self._models.get(key, (None, None))
        if (
            model is None
            or fitted_at is None
            or (issued_at - fitted_at).total_seconds() >= (cfg.retrain_s)
        ):
            model = LoadForecaster(tz=cfg.tz, country=cfg.country).fit(series)
            self._models[key] = (model, issued_at)
            self.fits.inc()
        else:
            model.update(series)
        points = model.predict(issued_at, cfg.horizon_steps)
        self._last_issue[key] = issued_at
        return to_forecast(
            points,
            scope=scope,
            scope_id=scope_id,
            issued_at=issued_at,
            model=model.method,
            step_s=cfg.step_s,
        )
