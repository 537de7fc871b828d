-- Traffic hypertables.

-- schemas.messages.LaneCount
CREATE TABLE IF NOT EXISTS traffic_counts (
    intersection_id  text NOT NULL,
    camera_id        text NOT NULL,
    lane_id          text NOT NULL,
    movement         text NOT NULL CHECK (movement IN ('through', 'left', 'right', 'u_turn')),
    vehicle_class    text NOT NULL,
    window_start     timestamptz NOT NULL,
    window_s         integer NOT NULL CHECK (window_s > 0),
    count            integer NOT NULL CHECK (count >= 0),
    occupancy        double precision NOT NULL CHECK (occupancy BETWEEN 0 AND 1),
    queue_len        integer NOT NULL CHECK (queue_len >= 0),
    CONSTRAINT traffic_counts_pkey PRIMARY KEY
        (intersection_id, camera_id, lane_id, movement, vehicle_class, window_start)
);
SELECT create_hypertable('traffic_counts', 'window_start',
                         chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS traffic_counts_intersection_time_idx
    ON traffic_counts (intersection_id, window_start DESC);

-- schemas.messages.Violation, plus the operator review workflow.
CREATE TABLE IF NOT EXISTS violations (
    violation_id     text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    kind             text NOT NULL,
    camera_id        text NOT NULL,
    intersection_id  text NOT NULL,
    track_id         integer NOT NULL CHECK (track_id >= 0),
    vehicle_class    text NOT NULL,
    confidence       double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    evidence_uri     text NOT NULL,
    evidence_sha256  text NOT NULL CHECK (evidence_sha256 ~ '^[0-9a-f]{64}$'),
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    review_state     text NOT NULL DEFAULT 'pending'
                     CHECK (review_state IN ('pending', 'confirmed', 'rejected')),
    reviewed_at      timestamptz,
    reviewed_by      text,
    CONSTRAINT violations_pkey PRIMARY KEY (violation_id, occurred_at)
);
SELECT create_hypertable('violations', 'occurred_at',
                         chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS violations_intersection_time_idx
    ON violations (intersection_id, occurred_at DESC);
CREATE INDEX IF NOT EXISTS violations_camera_time_idx
    ON violations (camera_id, occurred_at DESC);
CREATE INDEX IF NOT EXISTS violations_pending_idx
    ON violations (occurred_at DESC) WHERE review_state = 'pending';

-- schemas.messages.SignalPlan (kind 'current') and SignalRecommendation (kind 'recommended':
-- the recommended plan plus the recommendation's own fields). The full plan is kept as JSON.
CREATE TABLE IF NOT EXISTS signal_plans (
    intersection_id                text NOT NULL,
    plan_id                        text NOT NULL,
    kind                           text NOT NULL CHECK (kind IN ('current', 'recommended')),
    valid_from                     timestamptz NOT NULL,
    cycle_s                        double precision NOT NULL CHECK (cycle_s > 0),
    offset_s                       double precision NOT NULL DEFAULT 0 CHECK (offset_s >= 0),
    plan                           jsonb NOT NULL,
    issued_at                      timestamptz,
    basis_start                    timestamptz,
    basis_end                      timestamptz,
    current_plan_id                text,
    predicted_delay_current_s      double precision,
    predicted_delay_recommended_s  double precision,
    method                         text,
    CONSTRAINT signal_plans_pkey PRIMARY KEY (intersection_id, plan_id, kind, valid_from)
);
SELECT create_hypertable('signal_plans', 'valid_from',
                         chunk_time_interval => INTERVAL '30 days', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS signal_plans_intersection_time_idx
    ON signal_plans (intersection_id, valid_from DESC);

-- schemas.messages.SignalPhaseChange
CREATE TABLE IF NOT EXISTS signal_phases (
    intersection_id  text NOT NULL,
    signal_group     text NOT NULL,
    changed_at       timestamptz NOT NULL,
    state            text NOT NULL CHECK (state IN ('green', 'amber', 'red', 'off')),
    program_id       text NOT NULL DEFAULT 'default',
    CONSTRAINT signal_phases_pkey PRIMARY KEY (intersection_id, signal_group, changed_at)
);
SELECT create_hypertable('signal_phases', 'changed_at',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS signal_phases_intersection_time_idx
    ON signal_phases (intersection_id, changed_at DESC);
