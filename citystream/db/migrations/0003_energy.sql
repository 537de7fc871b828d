-- Energy hypertables. Unique keys include the time column (TimescaleDB requirement); they are
-- the natural keys the sink's INSERT ... ON CONFLICT DO NOTHING deduplicates on.

-- schemas.messages.MeterReading
CREATE TABLE IF NOT EXISTS meter_readings (
    meter_id    text NOT NULL,
    ts          timestamptz NOT NULL,        -- end of the metering interval
    interval_s  integer NOT NULL DEFAULT 900 CHECK (interval_s > 0),
    import_kwh  double precision NOT NULL CHECK (import_kwh >= 0),
    export_kwh  double precision NOT NULL DEFAULT 0 CHECK (export_kwh >= 0),
    voltage_v   double precision,
    CONSTRAINT meter_readings_pkey PRIMARY KEY (meter_id, ts)
);
SELECT create_hypertable('meter_readings', 'ts',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);

-- schemas.messages.FeederLoad
CREATE TABLE IF NOT EXISTS feeder_load (
    scope             text NOT NULL CHECK (scope IN ('feeder', 'district')),
    scope_id          text NOT NULL,
    window_start      timestamptz NOT NULL,
    window_s          integer NOT NULL DEFAULT 900 CHECK (window_s > 0),
    energy_kwh        double precision NOT NULL,
    avg_kw            double precision NOT NULL,
    meters_reporting  integer NOT NULL CHECK (meters_reporting >= 0),
    late_readings     integer NOT NULL DEFAULT 0 CHECK (late_readings >= 0),
    CONSTRAINT feeder_load_pkey PRIMARY KEY (scope, scope_id, window_start)
);
SELECT create_hypertable('feeder_load', 'window_start',
                         chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS feeder_load_scope_id_time_idx
    ON feeder_load (scope_id, window_start DESC);

-- schemas.messages.Forecast, one row per ForecastPoint. Partitioned by the vintage (issued_at)
-- so retention drops old forecasts as a whole.
CREATE TABLE IF NOT EXISTS energy_forecasts (
    scope      text NOT NULL CHECK (scope IN ('feeder', 'district')),
    scope_id   text NOT NULL,
    model      text NOT NULL,
    issued_at  timestamptz NOT NULL,
    target     timestamptz NOT NULL,
    step_s     integer NOT NULL DEFAULT 900 CHECK (step_s > 0),
    p10        double precision NOT NULL,
    p50        double precision NOT NULL,
    p90        double precision NOT NULL,
    CONSTRAINT energy_forecasts_pkey PRIMARY KEY (scope, scope_id, model, issued_at, target)
);
SELECT create_hypertable('energy_forecasts', 'issued_at',
                         chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS energy_forecasts_scope_id_time_idx
    ON energy_forecasts (scope_id, issued_at DESC);
