-- schemas.messages.Alert from every source (energy, traffic, camera, platform), plus the
-- operator acknowledgement.
CREATE TABLE IF NOT EXISTS events (
    alert_id         text NOT NULL,
    raised_at        timestamptz NOT NULL,
    kind             text NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    source           text NOT NULL CHECK (source IN ('energy', 'traffic', 'camera', 'platform')),
    subject_id       text NOT NULL,
    message          text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    CONSTRAINT events_pkey PRIMARY KEY (alert_id, raised_at)
);
SELECT create_hypertable('events', 'raised_at',
                         chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS events_subject_time_idx ON events (subject_id, raised_at DESC);
CREATE INDEX IF NOT EXISTS events_source_severity_time_idx
    ON events (source, severity, raised_at DESC);
